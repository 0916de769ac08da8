"""Ops behaviour of real server processes: graceful shutdown, several instances on Redis."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from tests.conftest import MakeClient, StartEmulator, relay_settings
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess
from tests.voice_client import VoiceSocket, open_voice, started


@pytest.fixture(scope="module")
def redis_for_ops() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def servers(tmp_path: Path) -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        await server.stop()


async def start_server(servers: list[ServerProcess], log_dir: Path, **env: str) -> ServerProcess:
    server = await ServerProcess(log_dir, **env).start()
    servers.append(server)
    return server


async def open_session(
    http: aiohttp.ClientSession, server: ServerProcess
) -> tuple[VoiceSocket, str]:
    voice = VoiceSocket(await http.ws_connect(server.ws_url))
    first = await voice.until(
        lambda e: e[0] == "json" and e[1]["type"] in {"session_started", "error"}
    )
    msg = first[-1][1]
    return voice, str(msg.get("session_id", ""))


async def sessions_of(http: aiohttp.ClientSession, server: ServerProcess) -> dict[str, Any]:
    async with http.get(f"{server.url}/sessions") as resp:
        assert resp.status == 200
        body: dict[str, Any] = await resp.json()
        return body


async def test_sigterm_drains_live_sessions(
    http: aiohttp.ClientSession,
    servers: list[ServerProcess],
    tmp_path: Path,
    redis_for_ops: RedisServer,
) -> None:
    """SIGTERM: sessions are told, /health turns 503, close 1001, exit 0 within the grace."""
    prefix_check = aioredis.from_url(redis_for_ops.url)
    server = await start_server(
        servers, tmp_path, SHUTDOWN_GRACE_S="3", SESSION_REGISTRY=redis_for_ops.url
    )
    voice, session_id = await open_session(http, server)
    assert session_id
    # A long answer is playing when the signal arrives.
    await voice.ws.send_json({"type": "text", "text": "Please tell me everything about it. " * 6})
    await voice.until(lambda e: e[0] == "audio")
    assert await prefix_check.keys("*session*")  # registered in Redis
    started = time.monotonic()
    server.signal(signal.SIGTERM)
    await voice.until_type("status", status="shutting_down")
    async with http.get(f"{server.url}/health") as resp:
        assert resp.status == 503
        assert (await resp.json())["status"] == "draining"
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(server.ws_url)
    assert refused.value.status == 503
    assert await voice.until_closed(timeout=10) == 1001
    assert await server.wait(timeout=10) == 0
    assert time.monotonic() - started < 3 + 3  # the grace, plus start-up of the close
    assert await prefix_check.keys("*session*") == []
    await prefix_check.aclose()


async def test_two_instances_share_one_view_and_one_cap(
    http: aiohttp.ClientSession,
    servers: list[ServerProcess],
    tmp_path: Path,
    redis_for_ops: RedisServer,
) -> None:
    """Two servers on one Redis see each other's sessions, enforce one cap, end each other's."""
    await _flush(redis_for_ops)
    env = {"SESSION_REGISTRY": redis_for_ops.url, "MAX_SESSIONS": "2"}
    a = await start_server(servers, tmp_path, **env)
    b = await start_server(servers, tmp_path, **env)
    voice_a, id_a = await open_session(http, a)
    voice_b, id_b = await open_session(http, b)
    for server in (a, b):
        listing = await sessions_of(http, server)
        assert {s["session_id"] for s in listing["sessions"]} == {id_a, id_b}
        assert len({s["instance"] for s in listing["sessions"]}) == 2
    # The cap counts both instances: a third session on either is refused.
    third = VoiceSocket(await http.ws_connect(a.ws_url))
    error = await third.until_type("error")
    assert error["code"] == "at_capacity"
    assert await third.until_closed() == 1013
    # B ends the session that A holds.
    async with http.delete(f"{b.url}/sessions/{id_a}") as resp:
        assert resp.status == 202
    ended = await voice_a.until_type("status", status="ended")
    assert ended["code"] == "ended_by_admin"
    assert await voice_a.until_closed() == 1000
    async with asyncio.timeout(10):
        while id_a in {s["session_id"] for s in (await sessions_of(http, b))["sessions"]}:
            await asyncio.sleep(0.05)
    await voice_b.ws.close()


async def test_killed_instance_entries_expire(
    http: aiohttp.ClientSession,
    servers: list[ServerProcess],
    tmp_path: Path,
    redis_for_ops: RedisServer,
) -> None:
    """kill -9 of one instance: its sessions vanish from the shared view after the TTL."""
    await _flush(redis_for_ops)
    env = {
        "SESSION_REGISTRY": redis_for_ops.url,
        "REGISTRY_HEARTBEAT_S": "0.3",
        "REGISTRY_TTL_S": "1.5",
    }
    a = await start_server(servers, tmp_path, **env)
    b = await start_server(servers, tmp_path, **env)
    _voice, id_a = await open_session(http, a)
    assert id_a in {s["session_id"] for s in (await sessions_of(http, b))["sessions"]}
    a.signal(signal.SIGKILL)
    await a.wait(10)
    async with asyncio.timeout(10):
        while (await sessions_of(http, b))["count"]:
            await asyncio.sleep(0.1)


async def _flush(server: RedisServer) -> None:
    client = aioredis.from_url(server.url)
    await client.flushdb()
    await client.aclose()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP])
async def test_delete_for_a_session_on_a_dead_instance_is_404(
    http: aiohttp.ClientSession,
    servers: list[ServerProcess],
    tmp_path: Path,
    redis_for_ops: RedisServer,
    sig: signal.Signals,
) -> None:
    """DELETE of a session whose instance was just killed (or hangs) answers 404, not 202."""
    await _flush(redis_for_ops)
    env = {"SESSION_REGISTRY": redis_for_ops.url, "REGISTRY_TTL_S": "30"}
    a = await start_server(servers, tmp_path, **env)
    b = await start_server(servers, tmp_path, **env)
    _voice, id_a = await open_session(http, a)
    assert id_a in {s["session_id"] for s in (await sessions_of(http, b))["sessions"]}
    a.signal(sig)
    try:
        async with http.delete(f"{b.url}/sessions/{id_a}") as resp:
            assert resp.status == 404
            assert (await resp.json())["code"] == "not_found"
    finally:
        if sig == signal.SIGSTOP:
            a.signal(signal.SIGKILL)
        await a.wait(10)


async def test_sessions_show_iso_times(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """/sessions shows when a session started as an ISO 8601 time, not an epoch float."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    resp = await client.get("/sessions")
    body = await resp.json()
    started_at = body["sessions"][0]["started_at"]
    assert isinstance(started_at, str) and started_at.endswith("+00:00") and "T" in started_at
    assert isinstance(body["sessions"][0]["metrics"]["started_at"], str)
    await voice.ws.close()


async def test_health_reports_a_failing_upstream(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """After connects in a row fail, /health says the upstream is degraded (503 when asked
    to) and new calls are refused with 503 so a proxy tries another instance; once the
    service answers again the instance recovers by itself, with no call needed."""
    emu = await start_emu()
    client = await make_client(
        relay_settings(
            emu,
            UPSTREAM_DEGRADED_AFTER="2",
            HEALTH_FAILS_WHEN_DEGRADED="true",
            UPSTREAM_PROBE_S="0.2",
        )
    )
    emu.refuse_next(1000)  # every handshake, probes included, until the service is back
    for _ in range(2):
        voice = await open_voice(client)
        assert (await voice.until_type("error"))["code"] == "upstream_connect_failed"
        await voice.until_closed()
    async with asyncio.timeout(10):
        while (resp := await client.get("/health")).status != 503:
            await asyncio.sleep(0.02)  # the session's end is counted as it unwinds
    body = await resp.json()
    assert body["status"] == "degraded"
    assert body["upstream"] == {"status": "degraded", "consecutive_connect_failures": 2}
    refused = await client.get("/ws/voice", headers=_UPGRADE)
    assert refused.status == 503
    assert (await refused.json())["code"] == "upstream_connect_failed"
    accepted = emu.connections_accepted
    emu.refuse_next(0)  # the service is back
    async with asyncio.timeout(10):
        while (resp := await client.get("/health")).status != 200:
            await asyncio.sleep(0.02)
    assert (await resp.json())["upstream"]["status"] == "ok"
    assert emu.connections_accepted == accepted + 1  # the probe's session, not a caller's
    ok = await started(client)
    await ok.ws.close()


_UPGRADE = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}
