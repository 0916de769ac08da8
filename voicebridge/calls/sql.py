"""The call store on a SQL database: SQLAlchemy 2 async Core, on a SQLite file
(``aiosqlite``, the default) or PostgreSQL (``asyncpg``, for several instances).

Every operation is bounded by ``timeout_s``: a database that is down, refuses, or hangs
(a stopped server, a network black hole) raises :class:`StoreUnavailable` within it,
never later. Failures the database reports about the data itself raise
:class:`StoreError`. Error texts name the driver's exception, never the statement or its
parameters (they hold transcripts) or the URL's password.

SQLite runs in WAL mode (the routes read while the writer writes) with a busy timeout,
and SQLAlchemy emits ``BEGIN`` itself, so DDL is transactional too (the stdlib driver
would otherwise commit each ``CREATE`` on its own).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import datetime as dt
import importlib.util
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Final

import structlog
from sqlalchemy import delete, event, func, or_, select
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, RowMapping, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from voicebridge.calls import migrations
from voicebridge.calls.record import (
    RECORD_VERSION,
    UTC,
    CallRecord,
    Latency,
    Turn,
    Usage,
)
from voicebridge.calls.schema import USAGE_COLUMNS, call_turns, calls
from voicebridge.calls.settings import store_kind
from voicebridge.calls.store import MAX_PAGE, CallPage, CallQuery, StoreError, StoreUnavailable
from voicebridge.config import mask_url

log = structlog.get_logger(__name__)


def _utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC time. SQLite stores the UTC wall time it is given and hands it back
    naive; PostgreSQL (``timestamptz``) hands back an aware one."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: PostgreSQL error classes (SQLSTATE's first two characters) that say the database
#: cannot take the write now rather than that the record is wrong: connection (08),
#: credentials (28), resources (53), operator intervention (57), system (58), no such
#: database (3D), transaction rollback (40), lock not available (55); and a table that
#: is gone (42P01), which the next check's migrations create again.
_TRANSIENT_CLASSES: Final = frozenset({"08", "28", "53", "57", "58", "3D", "40", "55"})


def _transient(exc: sa_exc.DBAPIError) -> bool:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return isinstance(code, str) and (code[:2] in _TRANSIENT_CLASSES or code == "42P01")


def _describe(exc: BaseException) -> str:
    """The exception's type and first line, without SQL, parameters or a URL."""
    inner = getattr(exc, "orig", None) or exc
    first = str(inner).strip().splitlines()[0][:200] if str(inner).strip() else ""
    return f"{type(inner).__name__}: {first}" if first else type(inner).__name__


class SqlCallStore:
    """Call records in ``calls`` and ``call_turns`` (see :mod:`voicebridge.calls.schema`)."""

    def __init__(self, url: str, *, timeout_s: float = 5.0) -> None:
        self.kind = store_kind(url)
        self.timeout_s = timeout_s
        parsed = make_url(url)
        self._sqlite_path: Path | None = None
        if self.kind == "sqlite":
            database = parsed.database or ""
            self._sqlite_path = Path(database).expanduser().resolve()
            self.description = f"sqlite {self._sqlite_path}"
            self.engine = self._sqlite_engine(self._sqlite_path)
        else:
            self.description = f"postgresql {mask_url(url)}"
            query = dict(parsed.query)
            if "sslmode" in query:  # libpq's name; asyncpg calls it ssl
                query["ssl"] = query.pop("sslmode")
            self.engine = self._postgres_engine(
                parsed.set(drivername="postgresql+asyncpg", query=query)
            )

    # -- engines ------------------------------------------------------------------------

    def _sqlite_engine(self, path: Path) -> AsyncEngine:
        engine = create_async_engine(
            f"sqlite+aiosqlite:///{path}",
            connect_args={"timeout": self.timeout_s},
        )

        @event.listens_for(engine.sync_engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy, not the driver, begins transactions (see the module docstring).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                _switch_to_wal(cursor, self.timeout_s)
                for pragma in ("synchronous=NORMAL", "foreign_keys=ON"):
                    cursor.execute(f"PRAGMA {pragma}")
            finally:
                cursor.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = conn.get_execution_options().get("vb_begin", "")
            conn.exec_driver_sql(f"BEGIN {mode}".strip())

        return engine

    def _postgres_engine(self, url: Any) -> AsyncEngine:
        if importlib.util.find_spec("asyncpg") is None:
            raise StoreError(
                "CALL_STORE is a PostgreSQL URL but asyncpg is not installed; "
                "install it with: pip install 'voicebridge[postgres]'"
            )
        return create_async_engine(
            url,
            pool_size=3,
            max_overflow=2,
            pool_timeout=self.timeout_s,
            pool_pre_ping=True,
            pool_recycle=1800,
            connect_args={
                "timeout": self.timeout_s,
                "command_timeout": self.timeout_s,
                "server_settings": {"application_name": "voicebridge-calls"},
            },
        )

    # -- bounded operations -------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _bounded(self, what: str) -> AsyncIterator[None]:
        """Within ``timeout_s``, with the database's failures as the store's errors."""
        try:
            async with asyncio.timeout(self.timeout_s):
                yield
        except TimeoutError:
            raise StoreUnavailable(f"{what}: no answer within {self.timeout_s:g} s") from None
        except (
            OSError,
            sa_exc.TimeoutError,
            sa_exc.OperationalError,
            sa_exc.InterfaceError,
        ) as exc:
            raise StoreUnavailable(f"{what}: {_describe(exc)}") from None
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated or _transient(exc):
                raise StoreUnavailable(f"{what}: {_describe(exc)}") from None
            raise StoreError(f"{what}: {_describe(exc)}") from None
        except sa_exc.SQLAlchemyError as exc:
            raise StoreError(f"{what}: {_describe(exc)}") from None

    async def migrate(self) -> int:
        if self._sqlite_path is not None:
            try:
                await asyncio.to_thread(self._sqlite_path.parent.mkdir, parents=True, exist_ok=True)
            except OSError as exc:
                raise StoreError(
                    f"cannot create the directory of {self._sqlite_path}: {exc.strerror}"
                ) from None
        async with self._bounded("migrate"):
            return await migrations.migrate(self.engine)

    async def ping(self) -> None:
        async with self._bounded("ping"), self.engine.connect() as conn:
            await conn.execute(select(1))

    async def write(self, records: Sequence[CallRecord]) -> int:
        if not records:
            return 0
        new = 0
        async with self._bounded("write"), self.engine.begin() as conn:
            for record in records:
                new += await self._write_one(conn, record)
        return new

    async def _write_one(self, conn: AsyncConnection, record: CallRecord) -> int:
        insert = pg_insert if self.kind == "postgresql" else sqlite_insert
        stmt = (
            insert(calls)
            .values(**_call_row(record))
            .on_conflict_do_nothing(index_elements=[calls.c.call_id])
        )
        result = await conn.execute(stmt)
        if not result.rowcount:
            return 0  # already stored (a replay of a record that did arrive)
        if record.turns:
            await conn.execute(
                insert(call_turns), [_turn_row(record.call_id, turn) for turn in record.turns]
            )
        return 1

    async def list(self, query: CallQuery) -> CallPage:
        where = _conditions(query)
        limit = max(1, min(query.limit, MAX_PAGE))
        offset = max(0, query.offset)
        page = (
            select(calls)
            .where(*where)
            .order_by(calls.c.started_at.desc(), calls.c.call_id.desc())
            .limit(limit)
            .offset(offset)
        )
        count = select(func.count()).select_from(calls).where(*where)
        async with self._bounded("list"), self.engine.connect() as conn:
            rows = (await conn.execute(page)).mappings().all()
            total = (await conn.execute(count)).scalar_one()
        return CallPage(
            calls=tuple(_record(row, ()) for row in rows),
            total=int(total),
            offset=offset,
            limit=limit,
        )

    async def get(self, call_id: str) -> CallRecord | None:
        async with self._bounded("get"), self.engine.connect() as conn:
            row = (
                (await conn.execute(select(calls).where(calls.c.call_id == call_id)))
                .mappings()
                .first()
            )
            if row is None:
                return None
            turn_rows = (
                (
                    await conn.execute(
                        select(call_turns)
                        .where(call_turns.c.call_id == call_id)
                        .order_by(call_turns.c.seq)
                    )
                )
                .mappings()
                .all()
            )
        return _record(row, tuple(_turn(t) for t in turn_rows))

    async def purge(self, before: dt.datetime) -> int:
        old = select(calls.c.call_id).where(calls.c.started_at < _utc(before))
        async with self._bounded("purge"), self.engine.begin() as conn:
            await conn.execute(delete(call_turns).where(call_turns.c.call_id.in_(old)))
            result = await conn.execute(delete(calls).where(calls.c.started_at < _utc(before)))
        return int(result.rowcount or 0)

    async def ids(self) -> builtins.list[str]:
        async with self._bounded("ids"), self.engine.connect() as conn:
            rows = (await conn.execute(select(calls.c.call_id).order_by(calls.c.call_id))).all()
        return [str(row[0]) for row in rows]

    async def close(self) -> None:
        try:
            async with asyncio.timeout(self.timeout_s):
                await self.engine.dispose()
        except TimeoutError:
            # A hung database: give up on its connections rather than on the shutdown.
            log.warning("calls.store_close_timeout", store=self.description)
            await self.engine.dispose(close=False)


# -- rows -----------------------------------------------------------------------------


def _call_row(record: CallRecord) -> dict[str, Any]:
    usage = record.usage.as_dict()
    return {
        "call_id": record.call_id,
        "channel": record.channel,
        "instance": record.instance,
        "client": record.client,
        "started_at": _utc(record.started_at),
        "ended_at": _utc(record.ended_at),
        "duration_s": record.duration_s,
        "end_reason": record.end_reason,
        "close_code": record.close_code,
        "turns": len(record.turns),
        "barge_ins": record.barge_ins,
        "reconnects": record.reconnects,
        "tool_calls": record.tool_calls,
        "latency_count": record.latency.count,
        "latency_p50_ms": record.latency.p50_ms,
        "latency_p95_ms": record.latency.p95_ms,
        "latency_max_ms": record.latency.max_ms,
        **{f"tokens_{name}": usage[name] for name in USAGE_COLUMNS},
        "cost_usd": record.cost_usd,
        "metadata": dict(record.metadata),
        "dropped_turns": record.dropped_turns,
        "redaction": record.redaction,
        "preview": record.preview,
        "record_version": RECORD_VERSION,
        "written_at": dt.datetime.now(UTC),
    }


def _turn_row(call_id: str, turn: Turn) -> dict[str, Any]:
    return {
        "call_id": call_id,
        "seq": turn.seq,
        "at": _utc(turn.at),
        "kind": turn.kind,
        "text": turn.text,
        "unheard": turn.unheard,
        "response_id": turn.response_id,
        "interrupted": turn.interrupted,
        "heard_share": turn.heard_share,
        "latency_ms": turn.latency_ms,
        "input_tokens": turn.input_tokens,
        "output_tokens": turn.output_tokens,
        "name": turn.name,
        "outcome": turn.outcome,
        "duration_ms": turn.duration_ms,
    }


def _record(row: RowMapping, turns: tuple[Turn, ...]) -> CallRecord:
    return CallRecord(
        call_id=row["call_id"],
        channel=row["channel"],
        instance=row["instance"],
        client=row["client"],
        started_at=_utc(row["started_at"]),
        ended_at=_utc(row["ended_at"]),
        end_reason=row["end_reason"],
        close_code=row["close_code"],
        metadata={str(k): str(v) for k, v in (row["metadata"] or {}).items()},
        turns=turns,
        barge_ins=row["barge_ins"],
        reconnects=row["reconnects"],
        tool_calls=row["tool_calls"],
        latency=Latency(
            count=row["latency_count"],
            p50_ms=row["latency_p50_ms"],
            p95_ms=row["latency_p95_ms"],
            max_ms=row["latency_max_ms"],
        ),
        usage=Usage(**{name: int(row[f"tokens_{name}"]) for name in USAGE_COLUMNS}),
        cost_usd=row["cost_usd"],
        dropped_turns=row["dropped_turns"],
        redaction=row["redaction"],
        preview=row["preview"],
        turn_count=row["turns"],
    )


def _turn(row: RowMapping) -> Turn:
    return Turn(
        seq=row["seq"],
        at=_utc(row["at"]),
        kind=row["kind"],
        text=row["text"],
        unheard=row["unheard"],
        response_id=row["response_id"],
        interrupted=bool(row["interrupted"]),
        heard_share=row["heard_share"],
        latency_ms=row["latency_ms"],
        input_tokens=row["input_tokens"],
        output_tokens=row["output_tokens"],
        name=row["name"],
        outcome=row["outcome"],
        duration_ms=row["duration_ms"],
    )


def _conditions(query: CallQuery) -> list[Any]:
    where: list[Any] = []
    if query.since is not None:
        where.append(calls.c.started_at >= _utc(query.since))
    if query.until is not None:
        where.append(calls.c.started_at < _utc(query.until))
    if query.channel:
        where.append(calls.c.channel == query.channel)
    if query.end_reason:
        where.append(calls.c.end_reason == query.end_reason)
    if query.instance:
        where.append(calls.c.instance == query.instance)
    if query.text:
        words = (
            select(call_turns.c.call_id)
            .where(call_turns.c.call_id == calls.c.call_id)
            .where(
                or_(
                    call_turns.c.text.icontains(query.text, autoescape=True),
                    call_turns.c.unheard.icontains(query.text, autoescape=True),
                )
            )
        )
        where.append(words.exists())
    return where


def _switch_to_wal(cursor: Any, timeout_s: float) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock.

    Switching a new database's journal needs an exclusive lock, and SQLite answers
    "database is locked" at once instead of waiting on the busy timeout when several
    connections (instances starting together) switch it at the same moment. It happens
    only while a new database file is set up, so the waits (at most 0.2 s each, bounded by
    the store's timeout) are short and rare; the connect hook cannot await.
    """
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)
