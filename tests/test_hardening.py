"""A hostile or broken peer costs bounded resources (issue 17).

One test per finding of the attack run. Where the behaviour depends on the event loop,
the kernel or the process (descriptors, connection handling, logging), the test runs
against a real ``python -m voicebridge serve`` subprocess on uvloop; access rules run
in-process. The hostile clients here are reused by the soak test.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.conftest import make_settings
from tests.server_process import ServerProcess
from tests.voice_client import VoiceSocket, open_voice, silence
from voicebridge.app import create_app

AnyClient = TestClient[Any, Any]
LOOPBACK_2 = "127.0.0.2"  # a second client address on the loopback interface


# -- helpers ----------------------------------------------------------------------------


async def until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def drop(writer: asyncio.StreamWriter) -> None:
    """Reset a connection at once (no FIN handshake) and release its stream writer."""
    writer.transport.abort()
    writer.close()


async def raw_exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a new connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read(-1)
    finally:
        drop(writer)


async def raw_response(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes and return the first response head the server sends back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.readuntil(b"\r\n\r\n")
    finally:
        drop(writer)


def upgrade_request(port: int, *extra: bytes, path: str = "/ws/voice") -> bytes:
    """A WebSocket upgrade request head, with extra raw header lines."""
    key = base64.b64encode(os.urandom(16))
    lines = [
        f"GET {path} HTTP/1.1".encode(),
        f"Host: 127.0.0.1:{port}".encode(),
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Key: " + key,
        b"Sec-WebSocket-Version: 13",
        *extra,
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def closed_by_server(reader: asyncio.StreamReader, timeout: float) -> bool:
    """True when the server closes the connection within ``timeout`` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while await reader.read(4096):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        pass
    return True


def log_lines(server: ServerProcess) -> list[dict[str, Any]]:
    """The server's JSON log lines (other lines, e.g. a raw traceback, as {"raw": ...})."""
    lines = []
    for line in server.log_path.read_text(errors="replace").splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            lines.append({"raw": line})
    return lines


def events(server: ServerProcess, name: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(server) if line.get("event") == name]


@pytest.fixture
async def servers() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        await server.stop()


async def serve(servers: list[ServerProcess], log_dir: Path, **env: str) -> ServerProcess:
    server = await ServerProcess(log_dir, **env).start()
    servers.append(server)
    return server


async def client_for(aiohttp_client: Any, **env: str) -> AnyClient:
    client: AnyClient = await aiohttp_client(create_app(make_settings(**env)))
    return client


# -- 1: a silent upstream --------------------------------------------------------------


class SilentUpstream:
    """Accepts TCP connections and never answers: Voice Live hanging during an outage."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> SilentUpstream:
        async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.writers.append(writer)

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            drop(writer)
        await self.server.wait_closed()


async def retry_against_silent_upstream(url: str, seconds: float, clients: int) -> int:
    """``clients`` clients reconnect for ``seconds``; each attempt must end with 1011."""
    attempts = 0
    deadline = time.monotonic() + seconds

    async def one_client() -> None:
        nonlocal attempts
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                voice = VoiceSocket(await http.ws_connect(url))
                assert await voice.until_closed(30) == 1011
                attempts += 1

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return attempts


async def check_silent_upstream(
    servers: list[ServerProcess], log_dir: Path, seconds: float
) -> None:
    """Clients retry for ``seconds`` against a server whose upstream never answers: its
    descriptors stay bounded and come back, and it shuts down without a leak warning."""
    async with SilentUpstream() as upstream:
        server = await serve(
            servers,
            log_dir,
            VOICELIVE_BACKEND="azure",
            AZURE_OPENAI_ENDPOINT=f"ws://127.0.0.1:{upstream.port}",
            AZURE_OPENAI_KEY="silent-key",
            AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
            UPSTREAM_CONNECT_TIMEOUT_S="0.5",
            MAX_SESSIONS="4",
        )
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        baseline = proc.num_fds()
        peak = baseline

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, proc.num_fds())
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample())
        try:
            attempts = await retry_against_silent_upstream(server.ws_url, seconds, clients=4)
        finally:
            sampler.cancel()
        assert attempts >= 4
        # Four clients, each with at most one socket and one upstream connect at a time.
        assert peak <= baseline + 24, (baseline, peak)
        await until(lambda: proc.num_fds() <= baseline + 2, 10, "descriptors to come back")
        server.signal(signal.SIGTERM)
        assert await server.wait(20) == 0
    text = server.log_path.read_text(errors="replace")
    for leak in ("Unclosed client session", "Unclosed connector", "Traceback"):
        assert leak not in text, server.log()


async def test_silent_upstream_keeps_descriptors_bounded_and_shuts_down_clean(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """Clients retrying against a silent upstream leave no descriptors or sessions behind."""
    await check_silent_upstream(servers, artifacts_dir, seconds=6.0)


# -- 2: idle and half-sent connections, the connection cap ------------------------------


async def test_idle_and_half_sent_connections_are_closed(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """A silent socket, a header sent a byte at a time and a partial upgrade are all closed."""
    server = await serve(servers, artifacts_dir, REQUEST_TIMEOUT_S="1")
    silent_reader, silent = await asyncio.open_connection("127.0.0.1", server.port)
    slow_reader, slow = await asyncio.open_connection("127.0.0.1", server.port)
    partial_reader, partial = await asyncio.open_connection("127.0.0.1", server.port)
    partial.write(upgrade_request(server.port)[:-4])  # the head never ends
    await partial.drain()

    async def trickle() -> None:
        head = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Pad: ".encode()
        try:
            for byte in head + b"a" * 1000:
                slow.write(bytes([byte]))
                await slow.drain()
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass

    trickler = asyncio.create_task(trickle())
    try:
        results = await asyncio.gather(
            closed_by_server(silent_reader, 6),
            closed_by_server(slow_reader, 6),
            closed_by_server(partial_reader, 6),
        )
    finally:
        trickler.cancel()
        for writer in (silent, slow, partial):
            drop(writer)
    assert results == [True, True, True]
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as resp:
        assert resp.status == 200


async def test_connections_past_the_cap_are_refused_politely_and_health_answers(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """Past MAX_CONNECTIONS a request gets 503 (logged once), /health still answers 200."""
    server = await serve(servers, artifacts_dir, MAX_CONNECTIONS="8", REQUEST_TIMEOUT_S="30")
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(8)]
    get = f"GET /docs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    try:

        async def refused() -> bool:
            return (await raw_response(server.port, get)).startswith(b"HTTP/1.1 503")

        await until(refused, 10, "a request past the cap to be refused")
        answer = await raw_exchange(server.port, get)
        assert answer.startswith(b"HTTP/1.1 503"), answer
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Connection: close" in head
        assert b"X-Content-Type-Options: nosniff" in head
        assert json.loads(body)["code"] == "at_capacity"
        health = f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
        for _ in range(3):
            head = await raw_response(server.port, health)
            assert head.startswith(b"HTTP/1.1 200"), head
        await until(lambda: events(server, "http.connection_refused"), 10, "the refusal log")
        assert len(events(server, "http.connection_refused")) == 1
    finally:
        for _reader, writer in idle:
            drop(writer)
    # The idle sockets gone, requests are served again.
    await until(
        lambda: _status_is(server, "/docs", 200), 10, "requests to be served again after the flood"
    )


async def _status_is(server: ServerProcess, path: str, status: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}{path}") as resp:
        return resp.status == status


# -- 3: DNS rebinding -------------------------------------------------------------------


async def test_foreign_host_is_refused_before_anything_else(aiohttp_client: Any) -> None:
    """A rebound Host with a matching Origin gets 421 on every route but /health."""
    client = await client_for(aiohttp_client)
    rebound = {"Host": "rebind.attacker.example", "Origin": "http://rebind.attacker.example"}
    for path in ("/sessions", "/config", "/static/index.html", "/nope"):
        resp = await client.get(path, headers=rebound)
        assert resp.status == 421, path
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/ws/voice", headers=rebound)
    assert info.value.status == 421
    assert (await client.get("/health", headers=rebound)).status == 200
    assert (await client.get("/sessions", headers={"Host": "localhost:8000"})).status == 200


async def test_non_loopback_host_is_never_loopback_admin(aiohttp_client: Any) -> None:
    """Without ADMIN_TOKEN a loopback peer naming a public Host is not an admin."""
    client = await client_for(aiohttp_client, ALLOWED_HOSTS="voice.example.com,localhost")
    assert (await client.get("/sessions", headers={"Host": "voice.example.com"})).status == 401
    assert (await client.get("/sessions", headers={"Host": "localhost"})).status == 200
    assert (await client.get("/sessions", headers={"Host": "127.0.0.1"})).status == 421


async def test_allowed_hosts_star_allows_any_host(aiohttp_client: Any) -> None:
    """ALLOWED_HOSTS=* turns the Host check off (admin still needs a loopback Host)."""
    client = await client_for(aiohttp_client, ALLOWED_HOSTS="*")
    assert (await client.get("/config", headers={"Host": "anything.example"})).status == 200
    assert (await client.get("/sessions", headers={"Host": "anything.example"})).status == 401


# -- 6: one client cannot hold every slot ------------------------------------------------


async def _first_message(http: aiohttp.ClientSession, url: str) -> tuple[VoiceSocket, str]:
    voice = VoiceSocket(await http.ws_connect(url))
    first = await voice.until(
        lambda e: e[0] == "json" and e[1]["type"] in {"session_started", "error"}
    )
    msg = first[-1][1]
    return voice, str(msg.get("code") or msg["type"])


async def test_one_client_cannot_hold_every_session_slot(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """Past MAX_SESSIONS_PER_CLIENT an address gets at_capacity; another address gets in."""
    server = await serve(servers, artifacts_dir, MAX_SESSIONS="5", MAX_SESSIONS_PER_CLIENT="2")
    async with (
        aiohttp.ClientSession() as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(LOOPBACK_2, 0))) as other,
    ):
        held = [await _first_message(http, server.ws_url) for _ in range(2)]
        assert [code for _voice, code in held] == ["session_started"] * 2
        extra, code = await _first_message(http, server.ws_url)
        assert code == "at_capacity"
        assert await extra.until_closed() == 1013
        _voice, code = await _first_message(other, server.ws_url)
        assert code == "session_started"
        # A slot the client gives back is its own again.
        await held[0][0].ws.close()

        async def admitted() -> bool:
            voice, code = await _first_message(http, server.ws_url)
            if code != "session_started":
                await voice.ws.close()
            return code == "session_started"

        await until(admitted, 10, "the freed slot to be usable")


async def test_per_client_limit_counts_by_token_when_each_client_has_one(
    aiohttp_client: Any,
) -> None:
    """With one token per client the limit counts per token, not per address."""
    client = await client_for(
        aiohttp_client, CLIENT_TOKEN="tok-a,tok-b", MAX_SESSIONS_PER_CLIENT="1"
    )
    first = await open_voice(client, params={"token": "tok-a"})
    await first.until_type("session_started")
    again = await open_voice(client, params={"token": "tok-a"})
    assert (await again.until_type("error"))["code"] == "at_capacity"
    assert await again.until_closed() == 1013
    other = await open_voice(client, params={"token": "tok-b"})
    await other.until_type("session_started")


# -- 7: non-UTF-8 header bytes ----------------------------------------------------------


async def test_non_utf8_credentials_get_401_and_one_log_line(
    aiohttp_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A \\xff byte in the offered token or the bearer token is a 401, not a 500."""
    client = await client_for(aiohttp_client, CLIENT_TOKEN="tok-1", ADMIN_TOKEN="adm-1")
    port = client.port
    assert port is not None
    with capture_logs() as logs, caplog.at_level(logging.WARNING):
        ws = await raw_exchange(port, upgrade_request(port, b"Sec-WebSocket-Protocol: token.\xff"))
        admin = await raw_exchange(
            port,
            f"GET /sessions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
            + b"Authorization: Bearer \xff\r\nConnection: close\r\n\r\n",
        )
    assert ws.startswith(b"HTTP/1.1 401"), ws
    assert admin.startswith(b"HTTP/1.1 401"), admin
    assert [e["event"] for e in logs] == ["ws.rejected"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# -- 8: credentials in the endpoint -------------------------------------------------------


async def test_endpoint_credentials_never_reach_the_log(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """A user:password or ?api-key= inside AZURE_OPENAI_ENDPOINT is masked in every line."""
    async with SilentUpstream() as upstream:
        endpoint = f"ws://vb-user:pw-leak-1@127.0.0.1:{upstream.port}/?api-key=k-leak-2"
        server = await serve(
            servers,
            artifacts_dir,
            VOICELIVE_BACKEND="azure",
            AZURE_OPENAI_ENDPOINT=endpoint,
            AZURE_OPENAI_KEY="silent-key",
            AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
            UPSTREAM_CONNECT_TIMEOUT_S="0.5",
        )
        async with aiohttp.ClientSession() as http:
            voice = VoiceSocket(await http.ws_connect(server.ws_url))
            assert await voice.until_closed() == 1011
        await server.stop()
    text = server.log_path.read_text(errors="replace")
    assert "app.upstream" in text
    assert "pw-leak-1" not in text
    assert "k-leak-2" not in text


# -- 9: malformed HTTP ---------------------------------------------------------------------

MALFORMED = {
    "duplicate content-length": b"POST /health HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
    b"Content-Length: 2\r\n\r\nab",
    "content-length and chunked": b"POST /health HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "oversized header": b"GET /health HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
    "bare LF": b"GET /health HTTP/1.1\nHost: h\n\n",
}


async def test_malformed_http_logs_one_warning_line_each(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """Each kind of malformed request is a 400 and one WARNING line, repeats rate-limited."""
    server = await serve(servers, artifacts_dir)
    for _ in range(3):
        for request in MALFORMED.values():
            answer = await raw_exchange(server.port, request)
            assert answer.split(b" ", 2)[1] == b"400", answer[:200]
    await until(
        lambda: len(events(server, "http.bad_request")) >= len(MALFORMED), 10, "the warnings"
    )
    await server.stop()
    lines = log_lines(server)
    assert not [line for line in lines if "raw" in line], server.log()
    assert not [line for line in lines if line.get("level") in {"error", "critical"}]
    bad = events(server, "http.bad_request")
    assert len(bad) == len(MALFORMED), bad
    assert {line["level"] for line in bad} == {"warning"}


# -- 10: the smaller findings ---------------------------------------------------------------


async def test_allowed_origins_add_to_the_own_origin(aiohttp_client: Any) -> None:
    """With ALLOWED_ORIGINS set, the server's own page and the listed origins get in."""
    client = await client_for(aiohttp_client, ALLOWED_ORIGINS="https://app.example.com")
    own = f"http://127.0.0.1:{client.port}"
    for origin in (own, "https://app.example.com"):
        voice = await open_voice(client, headers={"Origin": origin})
        await voice.until_type("session_started")
        await voice.ws.close()
    for origin in ("http://localhost:3000", "https://evil.example"):
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await client.ws_connect("/ws/voice", headers={"Origin": origin})
        assert info.value.status == 403


async def test_error_responses_carry_the_security_headers(aiohttp_client: Any) -> None:
    """401, 404 and 421 responses raised as exceptions have the same headers as the rest."""
    client = await client_for(aiohttp_client, ADMIN_TOKEN="adm-1")
    answers = [
        await client.get("/sessions"),
        await client.get("/no-such-page"),
        await client.get("/config", headers={"Host": "rebind.attacker.example"}),
        await client.get("/health"),
    ]
    assert [r.status for r in answers] == [401, 404, 421, 200]
    for resp in answers:
        assert resp.headers.get("X-Content-Type-Options") == "nosniff", resp.status
        assert resp.headers.get("Referrer-Policy") == "no-referrer", resp.status


async def test_only_known_subprotocols_are_selected(aiohttp_client: Any) -> None:
    """An unknown offer is not echoed; a browser offering only token.<TOKEN> still gets it."""
    client = await client_for(aiohttp_client, CLIENT_TOKEN="tok-1")
    unknown = await client.ws_connect("/ws/voice?token=tok-1", protocols=("evil", "chat"))
    assert unknown.protocol is None
    await unknown.close()
    only_token = await client.ws_connect("/ws/voice", protocols=("token.tok-1",))
    assert only_token.protocol == "token.tok-1"
    await only_token.close()
    both = await client.ws_connect("/ws/voice", protocols=("voicebridge", "token.tok-1"))
    assert both.protocol == "voicebridge"
    await both.close()


async def test_quiet_session_still_works_with_hardened_defaults(aiohttp_client: Any) -> None:
    """A normal session (own origin, loopback Host, one socket) is unaffected."""
    client = await client_for(aiohttp_client)
    voice = await open_voice(client, headers={"Origin": f"http://127.0.0.1:{client.port}"})
    await voice.until_type("session_started")
    await voice.send_audio(silence(200))
    await voice.ws.send_json({"type": "text", "text": "hello"})
    await voice.until(lambda e: e[0] == "audio")
    await voice.ws.close()


async def test_behind_a_trusted_proxy_limits_and_admin_see_the_caller(
    aiohttp_client: Any,
) -> None:
    """With TRUSTED_PROXIES, the client is the one X-Forwarded-For names: the per-client
    limit counts callers, not the proxy; /sessions shows them; a forwarded caller is not
    "loopback" for the admin routes. Without it the header is ignored."""
    client = await client_for(
        aiohttp_client, TRUSTED_PROXIES="127.0.0.1", MAX_SESSIONS_PER_CLIENT="1"
    )
    alice = {"X-Forwarded-For": "203.0.113.9"}
    first = VoiceSocket(await client.ws_connect("/ws/voice", headers=alice))
    await first.until_type("session_started")
    again = VoiceSocket(await client.ws_connect("/ws/voice", headers=alice))
    assert (await again.until_type("error"))["code"] == "at_capacity"
    bob = VoiceSocket(await client.ws_connect("/ws/voice", headers={"X-Forwarded-For": "::1"}))
    await bob.until_type("session_started")  # another caller (the loopback one) gets in
    sessions = await (await client.get("/sessions")).json()  # the proxy itself: loopback
    assert {s["client"] for s in sessions["sessions"]} == {"203.0.113.9", "::1"}
    forwarded = await client.get("/sessions", headers=alice)
    assert forwarded.status == 401  # a caller through the proxy is no local admin

    plain = await client_for(aiohttp_client, MAX_SESSIONS_PER_CLIENT="1")
    one = VoiceSocket(await plain.ws_connect("/ws/voice", headers=alice))
    await one.until_type("session_started")
    other = VoiceSocket(
        await plain.ws_connect("/ws/voice", headers={"X-Forwarded-For": "198.51.100.4"})
    )
    assert (await other.until_type("error"))["code"] == "at_capacity"  # same peer: refused
