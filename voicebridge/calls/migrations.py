"""Schema migrations, run at start-up: numbered steps, each applied once, in one
transaction with its row in ``call_schema_versions``.

A small equivalent of Alembic rather than Alembic itself: the schema is two tables, the
steps must run unattended at start-up from several instances at once (PostgreSQL: a
transaction-level advisory lock; SQLite: ``BEGIN IMMEDIATE``, its write lock, taken
before the version is read), and both databases run DDL inside a transaction, so a
step that fails leaves nothing half done. An operator can see the state with
``SELECT * FROM call_schema_versions``.

Adding a step: append ``Migration(N, "what", function)`` where the function issues the
DDL (``op(conn)`` gets a synchronous SQLAlchemy ``Connection``), and change
:mod:`voicebridge.calls.schema` to match. Step 1 creates the tables as ``schema``
defines them: once a step 2 exists, give step 1 a frozen copy of the version-1 tables.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Final

import attrs
import structlog
from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from voicebridge.calls import schema

log = structlog.get_logger(__name__)

#: The key of PostgreSQL's advisory lock that serialises migrations between instances.
PG_LOCK_KEY: Final = 0x766263616C6C73  # "vbcalls"


@attrs.frozen
class Migration:
    version: int
    description: str
    op: Callable[[Connection], None]


def _v1(conn: Connection) -> None:
    schema.metadata.create_all(conn, tables=[schema.calls, schema.call_turns], checkfirst=False)


MIGRATIONS: Final[Sequence[Migration]] = (Migration(1, "calls and call_turns", _v1),)
LATEST: Final = MIGRATIONS[-1].version


def _apply(conn: Connection) -> tuple[int, list[int]]:
    """Inside one transaction holding the migration lock: apply what is missing."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    schema.schema_versions.create(conn, checkfirst=True)
    current = conn.execute(select(func.max(schema.schema_versions.c.version))).scalar() or 0
    applied = []
    for step in MIGRATIONS:
        if step.version <= current:
            continue
        step.op(conn)
        conn.execute(
            insert(schema.schema_versions).values(
                version=step.version,
                description=step.description,
                applied_at=dt.datetime.now(dt.UTC),
            )
        )
        applied.append(step.version)
    return max(current, *applied) if applied else current, applied


async def migrate(engine: AsyncEngine) -> int:
    """Bring the database up to the latest schema; its version. Idempotent, and safe
    when several processes start at once."""
    async with engine.connect() as plain:
        # SQLite: take the write lock before reading the version (see SqlCallStore).
        conn = await plain.execution_options(vb_begin="IMMEDIATE")
        async with conn.begin():
            version, applied = await conn.run_sync(_apply)
    if applied:
        log.info("calls.migrated", version=version, applied=applied)
    if version > LATEST:
        log.warning(
            "calls.schema_newer",
            version=version,
            known=LATEST,
            note="the database was migrated by a newer voicebridge; records are still written",
        )
    return version
