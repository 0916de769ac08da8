"""The background writer against databases that fail for real: a PostgreSQL server
stopped with ``pg_ctl`` mid-call and started again, one frozen with SIGSTOP, a full
queue, a shutdown; records spool to the file and arrive once the database is back."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from tests.postgres_server import PostgresServer
from voicebridge.calls import CallLog, CallRecord, CallRecorder, CallSettings, create_store

WAIT_S = 30.0


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """A fresh database; the server is running again after the test whatever it did."""
    yield postgres.create_database(f"calls_{uuid.uuid4().hex[:12]}")
    postgres.resume()
    postgres.start()


def settings(store: str, tmp_path: Path, **extra: str) -> CallSettings:
    env = {
        "CALL_STORE": store,
        "CALL_SPOOL_FILE": str(tmp_path / "spool" / "calls.spool.jsonl"),
        "CALL_WRITE_TIMEOUT_S": "1.5",
        "CALL_RETRY_S": "0.2",
        **extra,
    }
    return CallSettings.from_environ(env)


MakeLog = Callable[..., Awaitable[CallLog]]


@pytest.fixture
async def make_log() -> AsyncIterator[MakeLog]:
    logs: list[CallLog] = []

    async def make(
        call_settings: CallSettings, registry: CollectorRegistry | None = None
    ) -> CallLog:
        log = CallLog(call_settings, instance="test-host", registry=registry)
        await log.start()
        logs.append(log)
        return log

    yield make
    for log in logs:
        await log.close(5)


def talk(recorder: CallRecorder, n: int = 2, first: int = 0) -> None:
    """A few turns of conversation, as a session would report them."""
    now = time.time()
    for i in range(first, first + n):
        recorder.user_said(f"question {i}", at=now + i)
        recorder.response_latency(450, response_id=f"r{i}", at=now + i + 0.5)
        recorder.agent_said(f"r{i}", f"answer {i}", at=now + i + 0.5)
        recorder.usage(f"r{i}", {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12})


async def wait(awaitable: Awaitable[object], what: str) -> None:
    try:
        async with asyncio.timeout(WAIT_S):
            await awaitable
    except TimeoutError:
        pytest.fail(f"timed out waiting for {what}")


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def spooled_ids(path: Path) -> list[str]:
    ids = []
    for file in sorted(path.parent.glob(path.name + "*")):
        if file.name.endswith((".lock", ".rejected")):
            continue
        for line in file.read_bytes().splitlines():
            ids.append(orjson.loads(line)["record"]["call_id"])
    return ids


async def test_database_stopped_mid_call_spools_and_arrives_after_restart(
    postgres: PostgresServer, pg_url: str, tmp_path: Path, make_log: MakeLog
) -> None:
    """pg_ctl stop mid-call: the record goes to the spool; after start it is stored."""
    log: CallLog = await make_log(settings(pg_url, tmp_path))
    before = log.recorder("before-outage", channel="browser", client="a")
    talk(before)
    before.ended("client_closed", 1000)
    await wait(log.writer.idle(), "the first record to be written")

    during = log.recorder("during-outage", channel="browser", client="b")
    talk(during, 1)
    postgres.stop()  # the database goes away in the middle of this call
    talk(during, 2, first=1)
    during.ended("client_closed", 1000)
    await wait(log.writer.idle(), "the writer to give up on the record")
    assert log.writer.up is False and not log.healthy()
    assert spooled_ids(log.spool.path) == ["during-outage"]

    postgres.start()
    await wait(log.writer.caught_up(), "the spool to be replayed")
    assert log.healthy()
    stored = await log.get("during-outage")
    assert stored is not None and len(stored.turns) == 6
    assert await log.store.ids() == ["before-outage", "during-outage"]
    assert spooled_ids(log.spool.path) == []


async def test_recorder_never_waits_for_a_hung_database(
    postgres: PostgresServer, pg_url: str, tmp_path: Path, make_log: MakeLog
) -> None:
    """With the database frozen (SIGSTOP), recorders return at once and the loop runs on."""
    # The writer waits up to 3 s for the frozen database: anything in the calls' path that
    # waited for it would take that long; the bounds below are far under it and far over
    # what a busy shared machine adds.
    log: CallLog = await make_log(settings(pg_url, tmp_path, CALL_WRITE_TIMEOUT_S="3"))
    lags: list[float] = []
    probing = True

    async def probe() -> None:
        # How late the loop wakes a 10 ms timer: a blocked loop shows up here.
        loop = asyncio.get_running_loop()
        while probing:
            started = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - started - 0.01)

    prober = asyncio.create_task(probe())
    postgres.pause()
    slowest = 0.0
    for i in range(100):
        started = time.perf_counter()
        rec = log.recorder(f"frozen-{i:03d}", channel="browser", client="c")
        talk(rec, 3)
        rec.barge_in()
        rec.ended("client_closed", 1000)
        slowest = max(slowest, time.perf_counter() - started)
        await asyncio.sleep(0)  # let the writer take what it can
    await wait(log.writer.idle(), "the writer to spool the records")
    probing = False
    await prober
    assert log.writer.up is False  # the writer did wait for the database, and gave up
    assert slowest < 0.2, f"a recorder took {slowest * 1000:.1f} ms"
    assert max(lags) < 1.0, f"the event loop stalled for {max(lags) * 1000:.0f} ms"

    postgres.resume()
    await wait(log.writer.caught_up(), "the spool to be replayed")
    assert len(await log.store.ids()) == 100


async def test_a_full_queue_spools_without_waiting(
    postgres: PostgresServer, pg_url: str, tmp_path: Path, make_log: MakeLog
) -> None:
    """Past CALL_QUEUE_MAX records go straight to the spool, counted; none is lost."""
    registry = CollectorRegistry()
    log: CallLog = await make_log(settings(pg_url, tmp_path, CALL_QUEUE_MAX="2"), registry=registry)
    postgres.pause()
    for i in range(10):
        rec = log.recorder(f"q-{i}", channel="browser", client="d")
        rec.user_said("hi")
        rec.ended("client_closed", 1000)
    # Two fit the queue, the writer may have taken one batch: the rest overflowed.
    assert (registry.get_sample_value("voicebridge_call_queue_overflows_total") or 0) >= 7
    postgres.resume()
    await wait(log.writer.caught_up(), "every record to arrive")
    assert await log.store.ids() == [f"q-{i}" for i in range(10)]
    assert registry.get_sample_value("voicebridge_call_records_total", {"outcome": "lost"}) == 0


async def test_store_down_at_start_is_not_fatal(
    postgres: PostgresServer, pg_url: str, tmp_path: Path, make_log: MakeLog
) -> None:
    """A database that is down at start-up: calls are spooled, then stored once it is up."""
    postgres.stop()
    log: CallLog = await make_log(settings(pg_url, tmp_path))
    assert not log.healthy()
    rec = log.recorder("early", channel="browser", client="e")
    talk(rec)
    rec.ended("client_closed", 1000)
    await wait(log.writer.idle(), "the record to be spooled")
    postgres.start()
    await wait(log.writer.caught_up(), "the record to arrive")
    assert await log.store.ids() == ["early"]


async def test_shutdown_spools_what_a_frozen_database_cannot_take(
    postgres: PostgresServer, pg_url: str, tmp_path: Path
) -> None:
    """close() is bounded with the database frozen; the next start replays the spool."""
    call_settings = settings(pg_url, tmp_path)
    log = CallLog(call_settings, instance="one")
    await log.start()
    postgres.pause()
    for i in range(5):
        rec = log.recorder(f"s-{i}", channel="browser", client="f")
        talk(rec)
        rec.ended("shutdown", 1001)
    started = time.monotonic()
    await log.close(timeout=1)
    assert time.monotonic() - started < 10
    assert sorted(spooled_ids(log.spool.path)) == [f"s-{i}" for i in range(5)]

    postgres.resume()
    again = CallLog(call_settings, instance="two")
    await again.start()
    try:
        await wait(again.writer.caught_up(), "the spool to be replayed at start-up")
        assert await again.store.ids() == [f"s-{i}" for i in range(5)]
    finally:
        await again.close(5)


async def test_graceful_shutdown_writes_the_queue(tmp_path: Path) -> None:
    """Records still queued at close() are in the store afterwards (SQLite)."""
    call_settings = settings(f"sqlite:///{tmp_path}/calls.sqlite3", tmp_path)
    log = CallLog(call_settings, instance="x")
    await log.start()
    for i in range(30):
        rec = log.recorder(f"g-{i:02d}", channel="browser", client="g")
        talk(rec)
        rec.ended("shutdown", 1001)
    await log.close()
    store = create_store(call_settings.store)
    try:
        assert await store.ids() == [f"g-{i:02d}" for i in range(30)]
    finally:
        await store.close()
    assert spooled_ids(log.spool.path) == []


async def test_unreadable_spool_lines_are_kept_aside(tmp_path: Path, make_log: MakeLog) -> None:
    """A torn line in the spool goes to the .rejected file; the good records are stored."""
    call_settings = settings(f"sqlite:///{tmp_path}/calls.sqlite3", tmp_path)
    got: list[CallRecord] = []
    rec = CallRecorder("from-spool", "browser", "old", "h", got.append)
    talk(rec)
    rec.ended("client_closed", 1000)
    good = orjson.dumps({"v": 1, "record": got[0].as_dict()})
    # A crash cut the second line short.
    write_file(Path(call_settings.spool_file), good + b"\n" + good[:40])
    log: CallLog = await make_log(call_settings)
    await wait(log.writer.caught_up(), "the spool to be replayed")
    assert await log.store.ids() == ["from-spool"]
    assert log.spool.rejected_path.read_bytes() == good[:40] + b"\n"


def aged(name: str, age_days: float) -> CallRecord:
    """A finished call that started ``age_days`` ago."""
    got: list[CallRecord] = []
    started = time.time() - age_days * 86400
    rec = CallRecorder(name, "browser", "h", "i", got.append, started_at=started)
    rec.user_said("hello", at=started + 1)
    rec.ended("client_closed", 1000, at=started + 60)
    return got[0]


async def test_retention_purges_old_calls(tmp_path: Path) -> None:
    """purge_now() deletes calls older than CALL_RETENTION_DAYS and keeps the rest."""
    call_settings = settings(
        f"sqlite:///{tmp_path}/calls.sqlite3", tmp_path, CALL_RETENTION_DAYS="7"
    )
    log = CallLog(call_settings)  # not started: no periodic purge runs meanwhile
    try:
        await log.store.migrate()
        await log.store.write([aged("old", 8), aged("recent", 6)])
        assert await log.purge_now() == 1
        assert await log.store.ids() == ["recent"]
    finally:
        await log.close()


async def test_the_periodic_purge_runs_from_start_up(tmp_path: Path, make_log: MakeLog) -> None:
    """A started log purges at once and then every purge_every_s."""
    call_settings = settings(
        f"sqlite:///{tmp_path}/calls.sqlite3", tmp_path, CALL_RETENTION_DAYS="0.5"
    )
    store = create_store(call_settings.store)
    await store.migrate()
    await store.write([aged("a", 2), aged("b", 0.1)])
    log: CallLog = await make_log(call_settings)
    await wait(log.purged.wait(), "the start-up purge")
    assert await store.ids() == ["b"]
    await store.close()


async def test_tokens_and_cost_are_counted_for_prometheus(
    tmp_path: Path, make_log: MakeLog
) -> None:
    """Each response's tokens and estimated cost are added to the counters as they arrive."""
    registry = CollectorRegistry()
    log: CallLog = await make_log(
        settings(f"sqlite:///{tmp_path}/calls.sqlite3", tmp_path), registry=registry
    )
    rec = log.recorder("m", channel="browser", client="j")
    rec.usage(
        "r1",
        {
            "input_tokens": 300,
            "output_tokens": 500,
            "input_token_details": {"text_tokens": 100, "audio_tokens": 200},
            "output_token_details": {"text_tokens": 0, "audio_tokens": 500},
        },
    )
    rec.ended("client_closed", 1000)
    await wait(log.writer.idle(), "the record to be written")

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("voicebridge_call_tokens_total", kind="text_in") == 100
    assert sample("voicebridge_call_tokens_total", kind="audio_in") == 200
    assert sample("voicebridge_call_tokens_total", kind="audio_out") == 500
    expected = (100 * 4 + 200 * 32 + 500 * 64) / 1_000_000
    assert sample("voicebridge_call_cost_usd_total") == pytest.approx(expected)
    assert sample("voicebridge_call_records_total", outcome="written") == 1
    assert sample("voicebridge_call_store_up") == 1
