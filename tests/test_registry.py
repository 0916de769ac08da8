"""The session registry: the contract both backends honour, and what only Redis adds
(several instances, the cap across them, crashes, outages)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest
import redis.asyncio as aioredis
import structlog

from tests.redis_server import RedisServer, free_port
from voicebridge.config import mask_url
from voicebridge.registry import (
    MemoryRegistry,
    RegistryError,
    SessionRecord,
    SessionRegistry,
    SessionSnapshot,
    create_registry,
    redis_registry,
)
from voicebridge.registry import base as registry_base
from voicebridge.registry.redis_registry import RedisRegistry

# Short timings keep the expiry and outage tests fast; production defaults are 15 s / 5 s.
TTL_S = 1.0
HEARTBEAT_S = 0.2
RETRY_S = 0.1
# The socket timeout of the tests where Redis goes silent: every call must give up on it
# after about this long.
SILENT_TIMEOUT_S = 1.0
# Slack for scheduling on a busy machine, still well under a second socket timeout (the
# retry on timeout that these tests guard against doubled the wait).
SLACK_S = 0.8

MakeRedis = Callable[..., Awaitable[RedisRegistry]]


def record(session_id: str, instance: str, *, state: str = "connecting") -> SessionRecord:
    return SessionRecord(
        session_id=session_id,
        instance=instance,
        state=state,
        started_at=time.time(),
        client="127.0.0.1",
        metrics={"frames_in": 0},
    )


async def eventually(
    check: Callable[[], Awaitable[bool]], *, within: float = 5.0, what: str = "condition"
) -> float:
    """Poll `check` until it holds; return the seconds it took. Fails after `within` s."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > within:
            pytest.fail(f"{what} did not hold within {within} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


class EndRecorder:
    """An end handler that records its calls and unregisters the session, as a server's
    would."""

    def __init__(self, registry: SessionRegistry) -> None:
        self.registry = registry
        self.calls: list[tuple[str, str]] = []
        self.called = asyncio.Event()

    async def __call__(self, session_id: str, reason: str) -> None:
        self.calls.append((session_id, reason))
        await self.registry.unregister(session_id)
        self.called.set()

    async def wait(self) -> None:
        await asyncio.wait_for(self.called.wait(), 5.0)


class StallingProxy:
    """A TCP proxy in front of Redis that can go silent on the connections that subscribed
    to a channel: it stops forwarding in both directions and closes nothing, as a NAT or
    firewall that forgot the connection would. Other and new connections keep working."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._links: list[_Link] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> StallingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stall_subscribers(self) -> int:
        """Go silent on every connection that subscribed so far; how many there were."""
        stalled = [link for link in self._links if link.subscriber and not link.stalled]
        for link in stalled:
            link.stalled = True
        return len(stalled)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            link.close()
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        link = _Link(writer, up_writer)
        self._links.append(link)
        await asyncio.gather(
            link.pipe(reader, up_writer, from_client=True),
            link.pipe(up_reader, writer, from_client=False),
            return_exceptions=True,
        )


class _Link:
    def __init__(self, client: asyncio.StreamWriter, server: asyncio.StreamWriter) -> None:
        self.client = client
        self.server = server
        self.subscriber = False
        self.stalled = False

    async def pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, from_client: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if from_client and b"SUBSCRIBE" in data.upper():
                    self.subscriber = True
                if not self.stalled:  # a stalled link swallows everything
                    writer.write(data)
                    await writer.drain()
        finally:
            self.close()

    def close(self) -> None:
        self.client.close()
        self.server.close()


# fixtures -------------------------------------------------------------------------------


@pytest.fixture
def captured_logs(monkeypatch: pytest.MonkeyPatch) -> list[MutableMapping[str, Any]]:
    """The registry's log events, whatever structlog configuration the session has (a
    cached logger would escape structlog.testing.capture_logs)."""
    capture = structlog.testing.LogCapture()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(), processors=[capture], wrapper_class=structlog.BoundLogger
    )
    monkeypatch.setattr(registry_base, "log", logger)
    monkeypatch.setattr(redis_registry, "log", logger)
    return capture.entries


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def start_redis(url: str, prefix: str, **kwargs: Any) -> RedisRegistry:
    """A started RedisRegistry with the tests' short timings."""
    options: dict[str, Any] = {
        "ttl_s": TTL_S,
        "heartbeat_s": HEARTBEAT_S,
        "retry_s": RETRY_S,
        "prefix": prefix,
    }
    options.update(kwargs)
    registry = RedisRegistry(url, **options)
    await registry.start()
    return registry


def unique_prefix() -> str:
    # Each test gets its own keys on the shared server.
    return f"vbtest:{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def make_redis(redis_server: RedisServer) -> AsyncIterator[MakeRedis]:
    """Started RedisRegistry instances sharing a key prefix unique to the test."""
    prefix = unique_prefix()
    made: list[RedisRegistry] = []

    async def make(url: str | None = None, **kwargs: Any) -> RedisRegistry:
        registry = await start_redis(url or redis_server.url, prefix, **kwargs)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.close()


@pytest.fixture
async def acl_user(redis_server: RedisServer) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Makes Redis users allowed everything but what the given ACL rules take away, and
    returns a URL (password included) that logs in as one."""
    admin = aioredis.from_url(redis_server.url)
    made: list[str] = []

    async def make(*rules: str) -> str:
        name = f"vbtest-{uuid.uuid4().hex[:8]}"
        password = f"pw-{uuid.uuid4().hex}"
        await admin.execute_command(
            "ACL", "SETUSER", name, "on", f">{password}", "~*", "&*", "+@all", *rules
        )
        made.append(name)
        return f"redis://{name}:{password}@127.0.0.1:{redis_server.port}/0"

    yield make
    for name in made:
        await admin.execute_command("ACL", "DELUSER", name)
    await admin.aclose()


@pytest.fixture(params=["memory", "redis"])
async def registry(request: pytest.FixtureRequest) -> AsyncIterator[SessionRegistry]:
    """A started registry of each backend."""
    started: SessionRegistry
    if request.param == "memory":
        started = MemoryRegistry(instance_id="solo")
        await started.start()
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        started = await start_redis(server.url, unique_prefix(), instance_id="solo")
    yield started
    await started.close()


# the contract, both backends ------------------------------------------------------------


async def test_register_get_list_update_unregister(registry: SessionRegistry) -> None:
    """A registered session can be read, listed, updated and removed."""
    first = record("s1", registry.instance_id)
    second = record("s2", registry.instance_id)
    assert await registry.register(first, max_sessions=0)
    assert await registry.register(second, max_sessions=0)

    assert await registry.get("s1") == first
    assert [r.session_id for r in await registry.list()] == ["s1", "s2"]
    assert await registry.count() == 2

    await registry.update("s1", state="listening", metrics={"frames_in": 50, "rtt_ms": 12.5})
    updated = await registry.get("s1")
    assert updated is not None
    assert updated.state == "listening"
    assert updated.metrics == {"frames_in": 50, "rtt_ms": 12.5}
    assert updated.as_dict() == {
        "session_id": "s1",
        "instance": registry.instance_id,
        "state": "listening",
        "started_at": first.started_at,
        "client": "127.0.0.1",
        "metrics": {"frames_in": 50, "rtt_ms": 12.5},
    }

    await registry.unregister("s1")
    assert await registry.get("s1") is None
    assert [r.session_id for r in await registry.list()] == ["s2"]
    assert await registry.count() == 1
    assert registry.healthy()


async def test_unknown_ids_are_harmless(registry: SessionRegistry) -> None:
    """Updating or unregistering an unknown session neither raises nor creates it."""
    await registry.update("ghost", state="ready", metrics={})
    await registry.unregister("ghost")
    assert await registry.get("ghost") is None
    assert await registry.list() == []


async def test_cap_is_enforced(registry: SessionRegistry) -> None:
    """At the cap, register refuses; a slot freed by unregister can be taken again."""
    for i in range(3):
        assert await registry.register(record(f"s{i}", registry.instance_id), max_sessions=3)
    assert not await registry.register(record("s3", registry.instance_id), max_sessions=3)
    assert await registry.get("s3") is None
    assert await registry.count() == 3

    await registry.unregister("s0")
    assert await registry.register(record("s3", registry.instance_id), max_sessions=3)
    assert await registry.count() == 3


async def test_zero_cap_means_unlimited(registry: SessionRegistry) -> None:
    """max_sessions <= 0 admits everyone."""
    for i in range(25):
        assert await registry.register(record(f"s{i}", registry.instance_id), max_sessions=0)
    assert await registry.register(record("neg", registry.instance_id), max_sessions=-1)
    assert await registry.count() == 26


async def test_request_end_calls_the_holders_handler(registry: SessionRegistry) -> None:
    """request_end on a live session calls the end handler with its id and reason."""
    handler = EndRecorder(registry)
    registry.set_end_handler(handler)
    await registry.register(record("s1", registry.instance_id), max_sessions=0)

    assert await registry.request_end("s1", "maintenance")
    await handler.wait()
    assert handler.calls == [("s1", "maintenance")]
    assert await registry.get("s1") is None


async def test_request_end_unknown_session_is_false(registry: SessionRegistry) -> None:
    """request_end for an id no one holds returns False and calls nothing."""
    handler = EndRecorder(registry)
    registry.set_end_handler(handler)
    assert not await registry.request_end("nope")
    await asyncio.sleep(0)
    assert handler.calls == []


async def test_request_end_does_not_wait_for_the_handler(registry: SessionRegistry) -> None:
    """A handler that waits for something the caller does after request_end cannot
    deadlock it: request_end returns once the end is scheduled."""
    caller_done = asyncio.Event()
    ended = asyncio.Event()

    async def handler(session_id: str, reason: str) -> None:
        await caller_done.wait()
        await registry.unregister(session_id)
        ended.set()

    registry.set_end_handler(handler)
    await registry.register(record("s1", registry.instance_id), max_sessions=0)
    assert await asyncio.wait_for(registry.request_end("s1"), 2.0)
    caller_done.set()
    await asyncio.wait_for(ended.wait(), 5.0)


async def test_failing_handler_is_contained(
    registry: SessionRegistry, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """An end handler that raises is logged; the registry goes on serving."""
    failed = asyncio.Event()

    async def handler(session_id: str, reason: str) -> None:
        failed.set()
        raise RuntimeError("boom")

    registry.set_end_handler(handler)
    await registry.register(record("s1", registry.instance_id), max_sessions=0)
    assert await registry.request_end("s1")
    await asyncio.wait_for(failed.wait(), 5.0)
    await eventually(
        lambda: _logged(captured_logs, "registry.end_handler_failed"), what="failure logged"
    )
    assert await registry.count() == 1


async def test_close_removes_this_instances_sessions(registry: SessionRegistry) -> None:
    """After close, this instance's sessions are gone, for everyone."""
    await registry.register(record("s1", registry.instance_id), max_sessions=0)
    await registry.register(record("s2", registry.instance_id), max_sessions=0)
    if not isinstance(registry, RedisRegistry):
        await registry.close()
        assert await registry.list() == []
        return
    observer = await start_redis(registry.url, registry.prefix, instance_id="observer")
    try:
        assert await observer.count() == 2
        await registry.close()
        assert await observer.list() == []
        assert await observer.count() == 0
    finally:
        await observer.close()


async def test_snapshot_source_is_pulled_without_update(
    registry: SessionRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a snapshot source installed, list() and get() show each session's latest state
    and metrics from it without any update() call; on Redis, another instance sees them
    after a heartbeat, and sees them change with the source."""

    async def no_update(self: object, session_id: str, **_: object) -> None:
        raise AssertionError("the registry must not need update()")

    monkeypatch.setattr(type(registry), "update", no_update)
    snapshots: dict[str, SessionSnapshot] = {}
    registry.set_snapshot_source(lambda: snapshots)
    await registry.register(record("s1", registry.instance_id), max_sessions=0)
    await registry.register(record("s2", registry.instance_id), max_sessions=0)
    snapshots["s1"] = SessionSnapshot(state="listening", metrics={"frames_in": 50})
    # Snapshots of sessions that are not (or no longer) registered are ignored.
    snapshots["ghost"] = SessionSnapshot(state="ready", metrics={})
    snapshots["s2"] = SessionSnapshot(state="ready", metrics={})
    await registry.unregister("s2")

    assert await _shows(registry, "s1", "listening", {"frames_in": 50})
    assert [(r.session_id, r.state) for r in await registry.list()] == [("s1", "listening")]
    assert await registry.get("ghost") is None
    if not isinstance(registry, RedisRegistry):
        return
    observer = await start_redis(registry.url, registry.prefix, instance_id="observer")
    try:
        await eventually(
            lambda: _shows(observer, "s1", "listening", {"frames_in": 50}),
            within=HEARTBEAT_S + 3.0,
            what="the snapshot written by a heartbeat",
        )
        snapshots["s1"] = SessionSnapshot(state="agent_speaking", metrics={"frames_in": 80})
        await eventually(
            lambda: _shows(observer, "s1", "agent_speaking", {"frames_in": 80}),
            within=HEARTBEAT_S + 3.0,
            what="the next snapshot written by a heartbeat",
        )
        assert await observer.count() == 1
    finally:
        await observer.close()


async def test_a_failing_snapshot_source_is_logged_once(
    registry: SessionRegistry, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """A snapshot source that raises leaves the records as they were, and is logged once
    (rate-limited) however often it is pulled."""
    pulls = 0

    def broken() -> dict[str, SessionSnapshot]:
        nonlocal pulls
        pulls += 1
        raise RuntimeError("boom")

    registry.set_snapshot_source(broken)
    await registry.register(record("s1", registry.instance_id), max_sessions=0)
    for _ in range(3):
        assert [r.state for r in await registry.list()] == ["connecting"]
    assert pulls >= 3
    failures = [e for e in captured_logs if e["event"] == "registry.snapshot_source_failed"]
    assert len(failures) == 1
    assert failures[0]["log_level"] == "warning"
    assert failures[0]["error"] == "RuntimeError: boom"
    assert registry.healthy()


# Redis only ----------------------------------------------------------------------------


async def test_handoffs_are_kept_read_removed_and_expire(registry: SessionRegistry) -> None:
    """A call's handoff: read as saved, gone once read with ``remove``, gone after its TTL."""
    data = {"reason": "shutdown", "items": [{"type": "message", "role": "user"}], "moves": 1}
    await registry.save_handoff("twilio:CA1", data, ttl_s=30)
    assert await registry.load_handoff("twilio:CA1") == data
    assert await registry.load_handoff("twilio:CA1", remove=True) == data
    assert await registry.load_handoff("twilio:CA1") is None
    assert await registry.load_handoff("twilio:unknown") is None
    await registry.save_handoff("twilio:CA2", data, ttl_s=0.05)
    async with asyncio.timeout(5):
        while await registry.load_handoff("twilio:CA2") is not None:
            await asyncio.sleep(0.02)


async def test_a_handoff_saved_by_one_instance_is_read_by_another(make_redis: MakeRedis) -> None:
    """A Twilio call moved off a restarting instance lands on another: it reads the call's
    conversation from Redis."""
    a = await make_redis(instance_id="a")
    b = await make_redis(instance_id="b")
    await a.save_handoff("twilio:CA9", {"reason": "shutdown", "moves": 0}, ttl_s=30)
    assert await b.load_handoff("twilio:CA9", remove=True) == {"reason": "shutdown", "moves": 0}
    assert await a.load_handoff("twilio:CA9") is None


async def test_instances_share_one_view(make_redis: MakeRedis) -> None:
    """Two instances see each other's sessions, updates included."""
    a = await make_redis(instance_id="a")
    b = await make_redis(instance_id="b")
    await a.register(record("a1", "a"), max_sessions=0)
    await b.register(record("b1", "b"), max_sessions=0)

    for registry in (a, b):
        assert {(r.session_id, r.instance) for r in await registry.list()} == {
            ("a1", "a"),
            ("b1", "b"),
        }
        assert await registry.count() == 2

    await b.update("b1", state="agent_speaking", metrics={"latency_ms": 420})
    seen = await a.get("b1")
    assert seen is not None
    assert (seen.state, seen.metrics) == ("agent_speaking", {"latency_ms": 420})


async def test_cap_is_atomic_across_instances(make_redis: MakeRedis) -> None:
    """Twenty concurrent registrations from two instances under a cap of 5 admit exactly 5."""
    a = await make_redis(instance_id="a")
    b = await make_redis(instance_id="b")
    attempts = [
        (a if i % 2 else b).register(record(f"s{i}", "a" if i % 2 else "b"), max_sessions=5)
        for i in range(20)
    ]
    results = await asyncio.gather(*attempts)
    assert sum(results) == 5
    assert await a.count() == 5
    assert len(await b.list()) == 5


async def test_request_end_reaches_another_instance(make_redis: MakeRedis) -> None:
    """request_end on instance A ends a session held by B through B's handler."""
    a = await make_redis(instance_id="a")
    b = await make_redis(instance_id="b")
    a_handler, b_handler = EndRecorder(a), EndRecorder(b)
    a.set_end_handler(a_handler)
    b.set_end_handler(b_handler)
    await b.register(record("b1", "b"), max_sessions=0)

    assert await a.request_end("b1", "ended by admin")
    await b_handler.wait()
    assert b_handler.calls == [("b1", "ended by admin")]
    assert a_handler.calls == []
    await eventually(lambda: _absent(a, "b1"), what="b1 gone")


async def test_heartbeat_keeps_sessions_past_their_ttl(
    make_redis: MakeRedis, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """A live instance's sessions outlast several TTLs: the heartbeat renews them. The
    idle observer's subscription answers its pings all along."""
    a = await make_redis(instance_id="a")
    observer = await make_redis(instance_id="observer", socket_timeout_s=SILENT_TIMEOUT_S)
    await a.register(record("a1", "a"), max_sessions=0)
    await asyncio.sleep(TTL_S * 2.5)
    assert await observer.get("a1") is not None
    assert await observer.count() == 1
    assert a.healthy()
    assert observer.healthy()
    assert not await _logged(captured_logs, "registry.pubsub_stalled")


CRASHING_INSTANCE = """
import asyncio, sys, time
from voicebridge.registry import SessionRecord
from voicebridge.registry.redis_registry import RedisRegistry

async def main():
    registry = RedisRegistry(
        sys.argv[1], instance_id="doomed", ttl_s=float(sys.argv[3]),
        heartbeat_s=float(sys.argv[4]), prefix=sys.argv[2],
    )
    await registry.start()
    for i in range(3):
        session = SessionRecord(f"doomed-{i}", "doomed", "ready", time.time(), "10.0.0.1")
        await registry.register(session, max_sessions=0)
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_crashed_instance_sessions_expire(make_redis: MakeRedis) -> None:
    """Sessions of an instance killed with SIGKILL expire after the TTL, and stop counting
    against the cap."""
    observer = await make_redis(instance_id="observer")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_INSTANCE,
        observer.url,
        observer.prefix,
        str(TTL_S),
        str(HEARTBEAT_S),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        # The child's own log lines come first; "ready" follows its registrations.
        while (line := await asyncio.wait_for(proc.stdout.readline(), 15.0)) != b"ready\n":
            assert line, "the crashing instance exited early"
        assert await observer.count() == 3
        assert not await observer.register(record("o1", "observer"), max_sessions=3)
    finally:
        proc.kill()
        await proc.wait()

    took = await eventually(
        lambda: _count_is(observer, 0), within=TTL_S + 3.0, what="doomed sessions expired"
    )
    assert took <= TTL_S + 2.0
    assert await observer.list() == []
    assert await observer.register(record("o1", "observer"), max_sessions=3)


async def test_survives_a_redis_outage(
    make_redis: MakeRedis, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """With Redis down the instance keeps serving its own sessions and reports unhealthy;
    when Redis is back it re-registers them and is healthy again."""
    with RedisServer() as server:
        a = await make_redis(server.url, instance_id="a")
        b = await make_redis(server.url, instance_id="b")
        a_handler = EndRecorder(a)
        a.set_end_handler(a_handler)
        assert await a.register(record("a1", "a"), max_sessions=3)
        assert await b.register(record("b1", "b"), max_sessions=3)

        server.stop()
        await eventually(_unhealthy(a), what="a notices the outage")
        # Fail open: admitted against the local count (a holds 1, cap 3).
        assert await a.register(record("a2", "a"), max_sessions=3)
        assert await a.register(record("a3", "a"), max_sessions=3)
        assert not await a.register(record("a4", "a"), max_sessions=3)
        await a.update("a1", state="listening", metrics={"frames_in": 7})
        await a.unregister("a3")
        assert [r.session_id for r in await a.list()] == ["a1", "a2"]
        local = await a.get("a1")
        assert local is not None
        assert local.state == "listening"
        assert await a.count() == 2
        assert not a.healthy()

        server.start()
        await eventually(_healthy(a), what="a restored")
        await eventually(_healthy(b), what="b restored")

        events = [e["event"] for e in captured_logs if e.get("instance") == "a"]
        assert events.count("registry.redis_unavailable") == 1
        assert events.count("registry.redis_restored") == 1

        # The restarted Redis was empty: a re-created its live sessions, b did its own.
        await eventually(
            lambda: _ids_are(b, {"a1", "a2", "b1"}), what="a's sessions visible from b"
        )
        seen = await b.get("a1")
        assert seen is not None
        assert seen.state == "listening"
        # And a is subscribed again: an end request from b reaches it.
        assert await b.request_end("a2")
        await a_handler.wait()
        assert a_handler.calls == [("a2", "ended by admin")]
        await a.close()
        await b.close()


async def test_starts_without_redis_and_never_logs_the_password(
    make_redis: MakeRedis, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """An unreachable Redis at start-up leaves the registry working locally and unhealthy;
    the password in its URL appears in no log line."""
    url = f"redis://user:s3cret-pw@127.0.0.1:{free_port()}/0"
    registry = await make_redis(url, instance_id="lonely")
    assert not registry.healthy()
    assert await registry.register(record("l1", "lonely"), max_sessions=1)
    assert not await registry.register(record("l2", "lonely"), max_sessions=1)
    assert [r.session_id for r in await registry.list()] == ["l1"]
    assert not await registry.request_end("elsewhere")
    assert await _logged_for(captured_logs, "registry.end_request_failed", session_id="elsewhere")
    await registry.close()
    assert await _logged(captured_logs, "registry.redis_unavailable")
    assert "s3cret-pw" not in repr(captured_logs)
    assert "s3cret-pw" not in repr(registry)


async def test_an_idle_instance_notices_a_silent_redis(make_redis: MakeRedis) -> None:
    """An instance holding no sessions still probes Redis: when Redis stops answering
    without closing anything it turns unhealthy, and healthy again once Redis answers."""
    with RedisServer() as server:
        a = await make_redis(server.url, instance_id="a", socket_timeout_s=SILENT_TIMEOUT_S)
        assert a.healthy()
        server.pause()
        try:
            await eventually(
                _unhealthy(a),
                within=HEARTBEAT_S + SILENT_TIMEOUT_S + 3.0,
                what="an idle instance notices the silence",
            )
        finally:
            server.resume()
        await eventually(_healthy(a), what="a healthy again")
        await a.close()


async def test_calls_give_up_on_a_silent_redis(make_redis: MakeRedis) -> None:
    """While Redis is silent but not yet known to be down, a call waits at most about
    one socket timeout, then serves from the local copy (fail open)."""
    with RedisServer() as server:
        a = await make_redis(server.url, instance_id="a", socket_timeout_s=SILENT_TIMEOUT_S)
        observer = await make_redis(server.url, instance_id="observer")
        assert a.healthy()
        server.pause()
        try:
            started = time.monotonic()
            assert await a.register(record("a1", "a"), max_sessions=1)
            assert time.monotonic() - started < SILENT_TIMEOUT_S + SLACK_S
            await eventually(_unhealthy(a), what="a marks Redis down")
            # Known to be down: answered from the local copy without waiting.
            started = time.monotonic()
            assert not await a.register(record("a2", "a"), max_sessions=1)
            assert [r.session_id for r in await a.list()] == ["a1"]
            assert await a.count() == 1
            assert time.monotonic() - started < SLACK_S
        finally:
            server.resume()
        await eventually(_healthy(a), what="a healthy again")
        await eventually(lambda: _ids_are(observer, {"a1"}), what="a1 shared again")
        await a.close()
        await observer.close()


async def test_close_does_not_wait_on_a_silent_redis(make_redis: MakeRedis) -> None:
    """Shutting down while Redis is silent gives up on removing the sessions after about
    one socket timeout (they expire with their TTL)."""
    with RedisServer() as server:
        # A slow heartbeat: Redis is still believed reachable when close() runs.
        a = await make_redis(
            server.url, instance_id="a", ttl_s=30.0, heartbeat_s=10.0,
            socket_timeout_s=SILENT_TIMEOUT_S,
        )  # fmt: skip
        assert await a.register(record("a1", "a"), max_sessions=0)
        server.pause()
        try:
            started = time.monotonic()
            await a.close()
            assert time.monotonic() - started < SILENT_TIMEOUT_S + SLACK_S
        finally:
            server.resume()


async def test_close_stops_a_task_that_lost_its_cancellation(
    make_redis: MakeRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Python 3.11, asyncio.wait_for inside redis-py drops a cancellation that arrives
    just as a command's send completes, and the heartbeat carries on; close() still
    stops it rather than waiting forever."""
    beating = asyncio.Event()
    heartbeat = RedisRegistry._heartbeat

    async def heartbeat_dropping_a_cancellation(self: RedisRegistry, redis: Any) -> None:
        beating.set()
        # Swallowed, as asyncio.wait_for does when the awaited send has just completed.
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.Event().wait()
        await heartbeat(self, redis)

    monkeypatch.setattr(RedisRegistry, "_heartbeat", heartbeat_dropping_a_cancellation)
    a = await make_redis(instance_id="a")
    await asyncio.wait_for(beating.wait(), 5.0)
    await asyncio.wait_for(a.close(), 5.0)


async def test_a_silently_dropped_subscription_is_replaced(
    redis_server: RedisServer,
    make_redis: MakeRedis,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    """When the pub/sub connection goes silent (Redis itself answering on others), the
    subscriber notices its pings go unanswered and subscribes on a new connection, so end
    requests reach the instance again."""
    proxy = await StallingProxy(redis_server.port).start()
    try:
        a = await make_redis(proxy.url, instance_id="a", socket_timeout_s=SILENT_TIMEOUT_S)
        b = await make_redis(instance_id="b")
        handler = EndRecorder(a)
        a.set_end_handler(handler)
        assert await a.register(record("a1", "a"), max_sessions=0)
        assert a.healthy()

        assert proxy.stall_subscribers() == 1
        await eventually(
            lambda: _logged(captured_logs, "registry.pubsub_stalled"),
            within=HEARTBEAT_S + SILENT_TIMEOUT_S + 3.0,
            what="the stalled subscription noticed",
        )
        await eventually(_healthy(a), what="a subscribed again")
        assert await b.request_end("a1")
        await handler.wait()
        assert handler.calls == [("a1", "ended by admin")]
        # Only the subscription was lost: Redis was never considered down.
        assert not await _logged(captured_logs, "registry.redis_unavailable")
        await a.close()
    finally:
        await proxy.close()


async def test_error_replies_are_not_outages(
    acl_user: Callable[..., Awaitable[str]],
    make_redis: MakeRedis,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    """Redis refusing a command (here: scripts denied by ACL) is logged as an error with
    Redis's message, never the password; the registry neither reports Redis as down nor
    turns unhealthy, and admits sessions against the local count (fail open)."""
    url = await acl_user("-@scripting")
    password = url.split(":")[2].split("@")[0]
    a = await make_redis(url, instance_id="a")
    assert a.healthy()
    assert await a.register(record("a1", "a"), max_sessions=1)
    assert not await a.register(record("a2", "a"), max_sessions=1)
    assert await a.count() == 1
    assert [r.session_id for r in await a.list()] == ["a1"]
    await asyncio.sleep(0)
    # Heartbeats meet the same refusal; Redis still answers, so a stays healthy.
    await eventually(
        lambda: _logged_for(captured_logs, "registry.redis_error", op="heartbeat"),
        what="the heartbeat's refusal logged",
    )
    assert a.healthy()
    assert not await _logged(captured_logs, "registry.redis_unavailable")
    errors = [e for e in captured_logs if e["event"] == "registry.redis_error"]
    assert {e["op"] for e in errors} >= {"register", "count", "heartbeat"}
    # Redis's message, as redis-py words it (its NOPERM reply is a NoPermissionError).
    assert all(e["log_level"] == "error" and "no permissions" in e["error"] for e in errors)
    await a.close()
    assert password not in repr(captured_logs)


async def test_a_denied_subscription_is_not_an_outage(
    acl_user: Callable[..., Awaitable[str]],
    make_redis: MakeRedis,
    captured_logs: list[MutableMapping[str, Any]],
) -> None:
    """A SUBSCRIBE refused by ACL leaves the instance unhealthy (end requests cannot reach
    it) but still sharing its sessions through Redis."""
    url = await acl_user("-subscribe")
    a = await make_redis(url, instance_id="a", socket_timeout_s=SILENT_TIMEOUT_S)
    observer = await make_redis(instance_id="observer")
    assert not a.healthy()
    assert await a.register(record("a1", "a"), max_sessions=1)
    assert not await observer.register(record("o1", "observer"), max_sessions=1)
    seen = await observer.get("a1")
    assert seen is not None
    assert seen.instance == "a"
    assert await _logged_for(captured_logs, "registry.redis_error", op="subscribe")
    assert not await _logged(captured_logs, "registry.redis_unavailable")
    assert not a.healthy()


async def test_orphans_are_bounded(
    make_redis: MakeRedis, captured_logs: list[MutableMapping[str, Any]]
) -> None:
    """Sessions unregistered while Redis is silent are remembered up to max_orphans, the
    oldest dropped beyond that (counted, and logged once); once Redis answers, the kept
    ones are deleted from it at once and the dropped ones are left to expire."""
    with RedisServer() as server:
        # A long TTL: what is still in Redis at the end was not deleted, not yet expired.
        a = await make_redis(
            server.url, instance_id="a", ttl_s=30.0, max_orphans=2,
            socket_timeout_s=SILENT_TIMEOUT_S,
        )  # fmt: skip
        observer = await make_redis(
            server.url, instance_id="observer", socket_timeout_s=SILENT_TIMEOUT_S
        )
        for i in range(1, 5):
            assert await a.register(record(f"o{i}", "a"), max_sessions=0)
        server.pause()
        try:
            # Known to be down, so the unregisters below send nothing a resumed Redis
            # would still run.
            await eventually(
                lambda: _logged_for(captured_logs, "registry.redis_unavailable", instance="a"),
                within=HEARTBEAT_S + SILENT_TIMEOUT_S + 3.0,
                what="a marks Redis down",
            )
            for i in range(1, 5):
                await a.unregister(f"o{i}")
            assert a.orphans_dropped == 2
        finally:
            server.resume()
        await eventually(_healthy(a), what="a healthy again")
        await eventually(lambda: _ids_are(observer, {"o1", "o2"}), what="the kept orphans deleted")
        deferred = [e for e in captured_logs if e["event"] == "registry.unregister_deferred"]
        dropped = [e for e in captured_logs if e["event"] == "registry.orphans_dropped"]
        assert [e["session_id"] for e in deferred] == ["o1"]
        assert [(e["max_orphans"], e["dropped_total"]) for e in dropped] == [(2, 1)]
        assert all(e["log_level"] == "warning" for e in deferred + dropped)


async def test_logged_messages_mask_the_url_and_password(
    acl_user: Callable[..., Awaitable[str]], make_redis: MakeRedis
) -> None:
    """A URL in an error message that reaches the log is masked as config.mask_url masks
    it, and the password is blanked wherever else it appears."""
    url = await acl_user()
    password = url.split(":")[2].split("@")[0]
    a = await make_redis(url, instance_id="a")
    described = a._describe(OSError(f"cannot reach {url} (auth {password})"))
    assert described == f"OSError: cannot reach {mask_url(url)} (auth ***)"
    assert password not in described


def test_redis_server_helper_restarts_on_the_same_port() -> None:
    """The test helper's server can be killed and started again on its port, and paused
    (silent, connections open) and resumed."""
    with RedisServer() as server:
        port = server.port
        assert server.running
        server.kill()
        assert not server.running
        server.start()
        assert server.running
        assert server.port == port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        server.pause()
        assert server.paused
        server.resume()
        assert not server.paused
        assert server.running
        server.pause()
    # Stopping a paused server does not hang.
    assert not server.running


# construction ---------------------------------------------------------------------------


def test_mask_url_hides_passwords() -> None:
    """Passwords in the userinfo or the query string are masked; the rest is kept."""
    assert mask_url("redis://:pw@host:6379/0") == "redis://:***@host:6379/0"
    assert mask_url("rediss://alice:pw@host/1") == "rediss://alice:***@host/1"
    assert mask_url("redis://host:6379/0?password=pw&db=2") == (
        "redis://host:6379/0?password=%2A%2A%2A&db=2"
    )
    assert mask_url("redis://host:6379") == "redis://host:6379"


def test_create_registry_picks_the_backend() -> None:
    """'memory' gives a MemoryRegistry, redis:// and rediss:// URLs a RedisRegistry."""
    memory = create_registry("memory", instance_id="i1")
    assert isinstance(memory, MemoryRegistry)
    assert memory.instance_id == "i1"
    redis = create_registry("redis://127.0.0.1:1/0", ttl_s=9, heartbeat_s=3)
    assert isinstance(redis, RedisRegistry)
    assert (redis.ttl_s, redis.heartbeat_s) == (9, 3)
    assert isinstance(create_registry("rediss://h:1/0"), RedisRegistry)
    assert isinstance(redis, SessionRegistry)
    assert isinstance(memory, SessionRegistry)
    # The default instance id: host-pid-random, unique per registry.
    assert str(create_registry("memory").instance_id).count("-") >= 2
    assert create_registry("memory").instance_id != create_registry("memory").instance_id


def test_create_registry_rejects_bad_settings() -> None:
    """Unknown schemes and a heartbeat slower than the TTL are refused, without echoing
    credentials."""
    with pytest.raises(RegistryError) as info:
        create_registry("postgres://user:pw@db/x")
    assert "pw" not in str(info.value)
    with pytest.raises(RegistryError):
        create_registry("redis://h/0", ttl_s=2, heartbeat_s=5)
    with pytest.raises(RegistryError, match="max_orphans"):
        create_registry("redis://h/0", max_orphans=0)


def test_create_registry_without_redis_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Redis URL without the redis package names the extra to install."""
    monkeypatch.delitem(sys.modules, "voicebridge.registry.redis_registry")
    # None in sys.modules makes an import fail; cached submodules would bypass "redis".
    for name in [m for m in sys.modules if m == "redis" or m.startswith("redis.")]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(RegistryError, match=r"voicebridge\[redis\]"):
        create_registry("redis://127.0.0.1:6379/0")


# helpers --------------------------------------------------------------------------------


async def _logged(logs: list[MutableMapping[str, Any]], event: str) -> bool:
    return any(e["event"] == event for e in logs)


async def _logged_for(logs: list[MutableMapping[str, Any]], event: str, **fields: object) -> bool:
    return any(e["event"] == event and all(e.get(k) == v for k, v in fields.items()) for e in logs)


async def _shows(
    registry: SessionRegistry, session_id: str, state: str, metrics: dict[str, Any]
) -> bool:
    seen = await registry.get(session_id)
    return seen is not None and (seen.state, dict(seen.metrics)) == (state, metrics)


async def _absent(registry: SessionRegistry, session_id: str) -> bool:
    return await registry.get(session_id) is None


async def _count_is(registry: SessionRegistry, expected: int) -> bool:
    return await registry.count() == expected


async def _ids_are(registry: SessionRegistry, expected: set[str]) -> bool:
    return {r.session_id for r in await registry.list()} == expected


def _healthy(registry: SessionRegistry) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return registry.healthy()

    return check


def _unhealthy(registry: SessionRegistry) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not registry.healthy()

    return check
