"""The session registry: the contract both backends honour, and what only Redis adds
(several instances, the cap across them, crashes, outages)."""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from typing import Any

import pytest
import structlog

from tests.redis_server import RedisServer, free_port
from voicebridge.registry import (
    MemoryRegistry,
    RegistryError,
    SessionRecord,
    SessionRegistry,
    create_registry,
    redis_registry,
)
from voicebridge.registry import base as registry_base
from voicebridge.registry.redis_registry import RedisRegistry, mask_url

# Short timings keep the expiry and outage tests fast; production defaults are 15 s / 5 s.
TTL_S = 1.0
HEARTBEAT_S = 0.2
RETRY_S = 0.1

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


# Redis only ----------------------------------------------------------------------------


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


async def test_heartbeat_keeps_sessions_past_their_ttl(make_redis: MakeRedis) -> None:
    """A live instance's sessions outlast several TTLs: the heartbeat renews them."""
    a = await make_redis(instance_id="a")
    observer = await make_redis(instance_id="observer")
    await a.register(record("a1", "a"), max_sessions=0)
    await asyncio.sleep(TTL_S * 2.5)
    assert await observer.get("a1") is not None
    assert await observer.count() == 1


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
    await registry.close()
    assert await _logged(captured_logs, "registry.redis_unavailable")
    assert "s3cret-pw" not in repr(captured_logs)
    assert "s3cret-pw" not in repr(registry)


def test_redis_server_helper_restarts_on_the_same_port() -> None:
    """The test helper's server can be killed and started again on its port."""
    with RedisServer() as server:
        port = server.port
        assert server.running
        server.kill()
        assert not server.running
        server.start()
        assert server.running
        assert server.port == port
        assert server.url == f"redis://127.0.0.1:{port}/0"


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
