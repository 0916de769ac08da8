"""HTTP routes and access rules of the app, on the built-in emulator."""

from __future__ import annotations

import asyncio
import base64
import os
from typing import Any

import aiohttp
import attrs
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.conftest import MakeClient, make_settings
from tests.voice_client import VoiceSocket
from voicebridge.app import STATE, _warn_about_open_access, create_app
from voicebridge.registry import MemoryRegistry

AnyClient = TestClient[Any, Any]


async def client_for(aiohttp_client: Any, **env: str) -> AnyClient:
    client: AnyClient = await aiohttp_client(create_app(make_settings(**env)))
    return client


async def test_health_reports_healthy(aiohttp_client: Any) -> None:
    """GET /health answers 200 healthy with the backend and the session count."""
    client = await client_for(aiohttp_client)
    resp = await client.get("/health")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "healthy"
    assert body["backend"] == "emulator"
    assert body["sessions"] == 0


async def test_root_redirects_to_the_client_page(aiohttp_client: Any) -> None:
    """GET / redirects to the browser client, which is served from /static/."""
    client = await client_for(aiohttp_client)
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == "/static/index.html"
    page = await client.get("/static/index.html")
    assert page.status == 200
    assert "<html" in (await page.text()).lower()


async def test_config_tells_the_page_about_the_emulator(aiohttp_client: Any) -> None:
    """GET /config says which backend runs and whether a token is needed, and no secret."""
    client = await client_for(aiohttp_client, CLIENT_TOKEN="tok-secret-1")
    body = await (await client.get("/config")).json()
    assert body == {
        "backend": "emulator",
        "client_token_required": True,
        "caller_notice": "",
        "sample_rate": 24000,
        "version": body["version"],
    }
    assert "tok-secret-1" not in str(body)


async def test_docs_describe_routes_and_protocol(aiohttp_client: Any) -> None:
    """GET /docs is an HTML page listing the routes and the WebSocket messages."""
    client = await client_for(aiohttp_client)
    text = await (await client.get("/docs")).text()
    for needle in ("/ws/voice", "/sessions/{id}", "clear_audio", "session_started", "1013"):
        assert needle in text


async def test_session_on_the_builtin_emulator_and_metrics(aiohttp_client: Any) -> None:
    """With no Azure settings a session runs on the emulator; /metrics and /sessions see it."""
    client = await client_for(aiohttp_client)
    voice = VoiceSocket(await client.ws_connect("/ws/voice"))
    started = await voice.until_type("session_started")
    assert started["backend"] == "emulator"
    await voice.ws.send_json({"type": "text", "text": "hello emulator"})
    await voice.until_type("agent_transcript")
    sessions = await (await client.get("/sessions")).json()
    assert sessions["count"] == 1
    entry = sessions["sessions"][0]
    assert entry["session_id"] == started["session_id"]
    assert entry["metrics"]["audio_out"]["bytes"] > 0
    one = await client.get(f"/sessions/{started['session_id']}")
    assert (await one.json())["session_id"] == started["session_id"]
    text = await (await client.get("/metrics")).text()
    assert "voicebridge_active_sessions 1.0" in text
    await voice.ws.close()
    async with asyncio.timeout(10):
        while client.app[STATE].sessions:
            await asyncio.sleep(0.02)
    text = await (await client.get("/metrics")).text()
    assert "voicebridge_active_sessions 0.0" in text
    assert 'voicebridge_sessions_total{channel="browser",reason="client_closed"} 1.0' in text
    audio_out = next(
        line for line in text.splitlines() if line.startswith("voicebridge_audio_out_seconds_total")
    )
    assert float(audio_out.split()[1]) > 0


async def test_admin_delete_ends_the_session(aiohttp_client: Any) -> None:
    """DELETE /sessions/{id} tells the client, closes it with 1000 and forgets it."""
    client = await client_for(aiohttp_client, ADMIN_TOKEN="adm-123")
    voice = VoiceSocket(await client.ws_connect("/ws/voice"))
    started = await voice.until_type("session_started")
    auth = {"Authorization": "Bearer adm-123"}
    resp = await client.delete(f"/sessions/{started['session_id']}", headers=auth)
    assert resp.status == 202
    ended = await voice.until_type("status", status="ended")
    assert ended["code"] == "ended_by_admin"
    assert await voice.until_closed() == 1000
    missing = await client.get(f"/sessions/{started['session_id']}", headers=auth)
    assert missing.status == 404
    assert (await client.delete("/sessions/nope", headers=auth)).status == 404


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic adm-123"])
async def test_admin_routes_need_the_token(aiohttp_client: Any, header: str | None) -> None:
    """With ADMIN_TOKEN set, /sessions answers 401 without the right bearer token."""
    client = await client_for(aiohttp_client, ADMIN_TOKEN="adm-123")
    headers = {"Authorization": header} if header else {}
    resp = await client.get("/sessions", headers=headers)
    assert resp.status == 401
    assert "adm-123" not in await resp.text()
    ok = await client.get("/sessions", headers={"Authorization": "Bearer adm-123"})
    assert ok.status == 200


async def test_client_token_is_required_when_set(aiohttp_client: Any) -> None:
    """CLIENT_TOKEN: no or wrong token gets 401 before the upgrade; query or subprotocol works."""
    client = await client_for(aiohttp_client, CLIENT_TOKEN="tok-123")
    for url in ("/ws/voice", "/ws/voice?token=bad"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect(url)
        assert info.value.status == 401
    ws = await client.ws_connect("/ws/voice?token=tok-123")
    await VoiceSocket(ws).until_type("session_started")
    await ws.close()
    ws = await client.ws_connect("/ws/voice", protocols=("voicebridge", "token.tok-123"))
    assert ws.protocol == "voicebridge"
    await VoiceSocket(ws).until_type("session_started")
    await ws.close()
    # A browser offering only the token must get it selected, or it fails the handshake.
    ws = await client.ws_connect("/ws/voice", protocols=("token.tok-123",))
    assert ws.protocol == "token.tok-123"
    await VoiceSocket(ws).until_type("session_started")
    await ws.close()


async def test_foreign_origin_is_refused(aiohttp_client: Any) -> None:
    """A browser page from another site cannot open a session (403); localhost can."""
    client = await client_for(aiohttp_client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws/voice", headers={"Origin": "https://evil.example"})
    assert info.value.status == 403
    ws = await client.ws_connect("/ws/voice", headers={"Origin": "http://localhost:8000"})
    await VoiceSocket(ws).until_type("session_started")
    await ws.close()


async def test_allowed_origins_list(aiohttp_client: Any) -> None:
    """ALLOWED_ORIGINS admits the listed origins (besides the own one), not localhost."""
    client = await client_for(aiohttp_client, ALLOWED_ORIGINS="https://app.example.com")
    ws = await client.ws_connect("/ws/voice", headers={"Origin": "https://app.example.com"})
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect("/ws/voice", headers={"Origin": "http://localhost:8000"})


async def test_capacity_limit_closes_with_1013(aiohttp_client: Any) -> None:
    """Past MAX_SESSIONS a new client gets an at_capacity error and close 1013."""
    client = await client_for(aiohttp_client, MAX_SESSIONS="1")
    first = VoiceSocket(await client.ws_connect("/ws/voice"))
    await first.until_type("session_started")
    second = VoiceSocket(await client.ws_connect("/ws/voice"))
    error = await second.until_type("error")
    assert error["code"] == "at_capacity"
    assert await second.until_closed() == 1013
    assert len(client.app[STATE].sessions) == 1
    await first.ws.close()


async def test_websocket_is_not_compressed(aiohttp_client: Any) -> None:
    """A browser offering permessage-deflate gets a 101 without it: audio goes uncompressed."""
    client = await client_for(aiohttp_client)
    handshake = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        # What Chromium and Firefox offer on every WebSocket.
        "Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits",
    }
    resp = await client.get("/ws/voice", headers=handshake)
    try:
        assert resp.status == 101
        assert "Sec-WebSocket-Extensions" not in resp.headers
    finally:
        resp.close()
    # aiohttp's own client asks for deflate too and ends up without it.
    ws = await client.ws_connect("/ws/voice", compress=15)
    assert ws.compress == 0
    await VoiceSocket(ws).until_type("session_started")
    await ws.close()


@attrs.define
class UnforgettingRegistry(MemoryRegistry):
    """A memory registry whose unregister always fails; each attempt is queued."""

    attempts: asyncio.Queue[str] = attrs.field(factory=asyncio.Queue)

    async def unregister(self, session_id: str) -> None:
        self.attempts.put_nowait(session_id)
        raise RuntimeError("registry unreachable")


async def test_failed_unregister_is_logged_once(aiohttp_client: Any) -> None:
    """A registry that cannot forget sessions is logged as a warning, once, not per session."""
    registry = UnforgettingRegistry()
    client: AnyClient = await aiohttp_client(create_app(make_settings(), registry=registry))
    ids: list[str] = []
    with capture_logs() as logs:
        for _ in range(2):
            voice = VoiceSocket(await client.ws_connect("/ws/voice"))
            ids.append((await voice.until_type("session_started"))["session_id"])
            await voice.ws.close()
            # The handler logs in the same step that fails the unregister, so the line is
            # there once the attempt is seen.
            async with asyncio.timeout(10):
                assert await registry.attempts.get() == ids[-1]
    failures = [e for e in logs if e["event"] == "ws.unregister_failed"]
    assert failures == [
        {
            "event": "ws.unregister_failed",
            "log_level": "warning",
            "session_id": ids[0],
            "error": "RuntimeError",
        }
    ]
    assert (await client.get("/health")).status == 200


def test_start_up_warns_about_open_access() -> None:
    """Listening publicly without CLIENT_TOKEN or ADMIN_TOKEN is called out in the log."""

    azure = {
        "AZURE_OPENAI_ENDPOINT": "https://res.example.com",
        "AZURE_OPENAI_KEY": "k",
        "AZURE_OPENAI_DEPLOYMENT": "d",
    }

    def warnings(**env: str) -> set[str]:
        with capture_logs() as logs:
            _warn_about_open_access(make_settings(**env))
        return {e["event"] for e in logs if e["log_level"] == "warning"}

    assert warnings(APP_HOST="0.0.0.0", **azure) == {
        "app.open_sessions",
        "app.admin_loopback_only",
    }
    assert warnings(APP_HOST="0.0.0.0", CLIENT_TOKEN="t", ADMIN_TOKEN="a", **azure) == set()
    assert warnings(ALLOWED_HOSTS="*", CLIENT_TOKEN="t", ADMIN_TOKEN="a") == {"app.any_host"}


async def test_config_carries_the_caller_notice(aiohttp_client: Any) -> None:
    """CALLER_NOTICE reaches the page through GET /config."""
    client = await client_for(aiohttp_client, CALLER_NOTICE="You are talking to an AI.")
    body = await (await client.get("/config")).json()
    assert body["caller_notice"] == "You are talking to an AI."


async def test_server_header_names_no_versions(make_client: MakeClient) -> None:
    """The Server header says voicebridge, without Python's or aiohttp's version."""
    client = await make_client(make_settings())
    for path in ("/health", "/does-not-exist"):
        resp = await client.get(path)
        assert resp.headers["Server"] == "voicebridge", path
