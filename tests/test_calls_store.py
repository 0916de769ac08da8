"""The call store contract, against a real SQLite file and a real PostgreSQL server
(a throwaway cluster started here): the same tests on both."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from tests.postgres_server import PostgresServer, free_port
from voicebridge.calls import (
    CallLog,
    CallQuery,
    CallRecord,
    CallRecorder,
    CallSettings,
    CallStore,
    StoreError,
    StoreUnavailable,
    create_store,
    schema,
)
from voicebridge.calls.migrations import LATEST

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC).timestamp()


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/db/calls.sqlite3"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.create_database(f"calls_{uuid.uuid4().hex[:12]}")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[CallStore]:
    store = create_store(store_url, timeout_s=10)
    await store.migrate()
    yield store
    await store.close()


def make_record(
    call_id: str,
    *,
    at: float = T0,
    channel: str = "browser",
    reason: str = "client_closed",
    instance: str = "host-1",
    said: tuple[str, ...] = ("hello",),
) -> CallRecord:
    got: list[CallRecord] = []
    rec = CallRecorder(call_id, channel, instance, "address 127.0.0.1", got.append, started_at=at)
    for i, text in enumerate(said):
        rec.user_said(text, at=at + 2 * i)
        rec.response_latency(400 + i, response_id=f"r{i}", at=at + 2 * i + 1)
        rec.agent_said(f"r{i}", f"answer to {text}", at=at + 2 * i + 1)
        rec.usage(f"r{i}", {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30})
    rec.ended(reason, 1000, at=at + 2 * len(said) + 1)
    return got[0]


async def test_a_call_is_stored_whole(store: CallStore) -> None:
    """A written record comes back equal, turns in order, times in UTC."""
    record = make_record("c1", said=("first", "second ünïcødé ☎", "third"))
    assert await store.write([record]) == 1
    back = await store.get("c1")
    assert back == record
    assert back is not None
    assert [t.text for t in back.turns] == [
        "first", "answer to first", "second ünïcødé ☎", "answer to second ünïcødé ☎",
        "third", "answer to third",
    ]  # fmt: skip
    assert back.started_at.tzinfo is not None and back.started_at.timestamp() == T0
    assert await store.get("nope") is None


async def test_writing_twice_stores_once(store: CallStore) -> None:
    """A record written again (a replay) is skipped, turns and all."""
    record = make_record("c1", said=("a", "b"))
    assert await store.write([record]) == 1
    assert await store.write([record, make_record("c2")]) == 1
    back = await store.get("c1")
    assert back is not None and len(back.turns) == 4
    assert await store.ids() == ["c1", "c2"]


async def test_search_filters_and_pages(store: CallStore) -> None:
    """Time range, channel, end reason, instance and words filter; pages go newest first."""
    hour = 3600.0
    await store.write(
        [
            make_record("a", at=T0, said=("I want the gold plan",)),
            make_record("b", at=T0 + hour, channel="twilio", said=("cancel my contract",)),
            make_record("c", at=T0 + 2 * hour, reason="idle", said=("Gold or silver?",)),
            make_record("d", at=T0 + 3 * hour, instance="host-2", said=("100% sure",)),
        ]
    )

    async def ids(**filters: Any) -> list[str]:
        return [c.call_id for c in (await store.list(CallQuery(**filters))).calls]

    start = dt.datetime.fromtimestamp(T0, dt.UTC)
    assert await ids() == ["d", "c", "b", "a"]
    assert await ids(since=start + dt.timedelta(hours=1)) == ["d", "c", "b"]
    assert await ids(until=start + dt.timedelta(hours=1)) == ["a"]  # `until` is exclusive
    assert await ids(channel="twilio") == ["b"]
    assert await ids(end_reason="idle") == ["c"]
    assert await ids(instance="host-2") == ["d"]
    assert await ids(text="GOLD") == ["c", "a"]
    assert await ids(text="answer to cancel") == ["b"]  # the agent's words count too
    assert await ids(text="100%") == ["d"]  # a LIKE wildcard is searched for literally
    assert await ids(text="_") == []
    page = await store.list(CallQuery(limit=3))
    assert [c.call_id for c in page.calls] == ["d", "c", "b"]
    assert (page.total, page.next_offset) == (4, 3)
    page = await store.list(CallQuery(limit=3, offset=3))
    assert [c.call_id for c in page.calls] == ["a"] and page.next_offset is None
    listed = page.calls[0]
    assert listed.turns == () and listed.n_turns == 2 and listed.preview == "I want the gold plan"


async def test_purge_deletes_old_calls_and_their_turns(store: CallStore) -> None:
    """Calls that started before the cut-off go, turns included; newer ones stay."""
    day = 86400.0
    await store.write([make_record("old", at=T0), make_record("new", at=T0 + 10 * day)])
    cut = dt.datetime.fromtimestamp(T0 + 5 * day, dt.UTC)
    assert await store.purge(cut) == 1
    assert await store.ids() == ["new"]
    assert await store.purge(cut) == 0


async def test_migrations_on_an_empty_database_are_idempotent(store_url: str) -> None:
    """The first run creates the schema; later runs (and concurrent ones) change nothing."""
    stores = [create_store(store_url, timeout_s=10) for _ in range(3)]
    try:
        versions = await asyncio.gather(*(s.migrate() for s in stores))
        assert versions == [LATEST] * 3
        assert await stores[0].migrate() == LATEST
        await stores[1].write([make_record("c1")])
        assert await stores[2].ids() == ["c1"]
    finally:
        for s in stores:
            await s.close()
    url = store_url.replace("postgresql://", "postgresql+asyncpg://").replace(
        "sqlite:///", "sqlite+aiosqlite:///"
    )
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(sa.select(schema.schema_versions.c.version))).all()
            assert [r[0] for r in rows] == [1]
            found = await conn.run_sync(_columns)
    finally:
        await engine.dispose()
    # The migrations build exactly the tables schema.py describes.
    assert found == {
        table.name: {c.name for c in table.columns} for table in schema.metadata.sorted_tables
    }


def _columns(conn: sa.Connection) -> dict[str, set[str]]:
    inspector = sa.inspect(conn)
    return {
        name: {c["name"] for c in inspector.get_columns(name)}
        for name in inspector.get_table_names()
    }


async def test_an_unreachable_database_is_unavailable_and_keeps_its_password() -> None:
    """A refused connection raises StoreUnavailable within the timeout, password masked."""
    url = f"postgresql://vb:hunter2@127.0.0.1:{free_port()}/calls"
    store = create_store(url, timeout_s=3)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.migrate()
    finally:
        await store.close()
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in store.description


async def test_a_wrong_password_is_unavailable_not_echoed(postgres: PostgresServer) -> None:
    """Rejected credentials are reported without the password."""
    url = postgres.url.replace(postgres.password, "wrong-pass-123")
    store = create_store(url, timeout_s=5)
    try:
        with pytest.raises(StoreUnavailable) as caught:
            await store.ping()
    finally:
        await store.close()
    assert "wrong-pass-123" not in str(caught.value)


async def test_two_instances_write_to_one_postgres(
    postgres: PostgresServer, tmp_path: Path
) -> None:
    """Two call logs (two instances) on one PostgreSQL start, write and read together."""
    url = postgres.create_database("shared_calls")
    logs = [
        CallLog(
            CallSettings.from_environ(
                {"CALL_STORE": url, "CALL_SPOOL_FILE": str(tmp_path / f"spool-{name}.jsonl")}
            ),
            instance=name,
        )
        for name in ("host-a", "host-b")
    ]
    await asyncio.gather(*(log.start() for log in logs))
    try:
        for i in range(20):
            log = logs[i % 2]
            rec = log.recorder(f"call-{i:02d}", channel="browser", client="x", started_at=T0 + i)
            rec.user_said(f"caller {i}", at=T0 + i)
            rec.ended("client_closed", 1000, at=T0 + i + 1)
        await asyncio.gather(*(log.writer.idle() for log in logs))
        page = await logs[0].list(CallQuery(limit=200))
        assert page.total == 20
        assert {c.instance for c in page.calls} == {"host-a", "host-b"}
        assert (await logs[1].list(CallQuery(instance="host-a"))).total == 10
        record = await logs[1].get("call-07")
        assert record is not None and record.instance == "host-b"
    finally:
        await asyncio.gather(*(log.close(5) for log in logs))


async def test_a_store_that_can_never_work_fails_the_start(tmp_path: Path) -> None:
    """A SQLite file that cannot be created is a StoreError at start, not a silent loss."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    log = CallLog(
        CallSettings.from_environ(
            {
                "CALL_STORE": str(blocker / "calls.sqlite3"),
                "CALL_SPOOL_FILE": str(tmp_path / "spool.jsonl"),
            }
        )
    )
    with pytest.raises(StoreError, match="cannot create the directory"):
        await log.start()
