"""Soak: many sessions opened and closed for minutes; resources return to where they were.

Marked ``soak`` and excluded from ``make test``; ``make soak`` runs it. SOAK_SECONDS sets the
length (default 180), SOAK_CONCURRENCY the sessions open at once (default 20).

The hostile mix (issue 17) runs every attack of the attack run against a ``serve`` process
at once, next to SOAK_NORMAL_SESSIONS (default 10) real-time load-test sessions on a
mirroring emulator, for SOAK_HOSTILE_SECONDS (default 120): every normal frame must come
back and /health must keep answering. SOAK_RETRY_S (default 60) is how long clients retry
against a silent upstream.
"""

from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from tests.conftest import ROOT, clean_environ, make_settings
from tests.redis_server import free_port
from tests.server_process import ServerProcess
from tests.test_hardening import (
    MALFORMED,
    check_silent_upstream,
    closed_by_server,
    drop,
    log_lines,
    raw_exchange,
    until,
    upgrade_request,
)
from tests.voice_client import VoiceSocket, silence
from voicebridge.app import STATE, create_app
from voicebridge.loadtest import LoadTestConfig, run

pytestmark = pytest.mark.soak


def _resources() -> tuple[int, int, int]:
    gc.collect()
    proc = psutil.Process()
    return proc.num_fds(), len(asyncio.all_tasks()), proc.memory_info().rss


@pytest.mark.timeout(3600)
async def test_sessions_open_and_close_for_minutes(aiohttp_client: Any) -> None:
    """File descriptors, tasks and RSS come back to their level after thousands of sessions."""
    seconds = float(os.environ.get("SOAK_SECONDS", "180"))
    concurrency = int(os.environ.get("SOAK_CONCURRENCY", "20"))
    client = await aiohttp_client(
        create_app(
            make_settings(
                MAX_SESSIONS=str(concurrency * 2),
                MAX_SESSIONS_PER_CLIENT="0",
                MAX_AUDIO_RATE="50",
            )
        )
    )

    async def one_session(n: int) -> None:
        voice = VoiceSocket(await client.ws_connect("/ws/voice"))
        await voice.until_type("session_started")
        await voice.send_audio(silence(200))
        if n % 3 == 0:
            await voice.ws.send_json({"type": "text", "text": f"message {n}"})
            await voice.until(lambda e: e[0] == "audio")
        await voice.ws.close()

    # Warm up so lazily created pools and caches count in the baseline.
    await asyncio.gather(*(one_session(i) for i in range(concurrency)))
    fds0, tasks0, rss0 = _resources()
    deadline = time.monotonic() + seconds
    total = 0
    while time.monotonic() < deadline:
        await asyncio.gather(*(one_session(total + i) for i in range(concurrency)))
        total += concurrency
    async with asyncio.timeout(10):
        while client.app[STATE].sessions:
            await asyncio.sleep(0.05)
    fds1, tasks1, rss1 = _resources()
    print(
        f"soak: {total} sessions; fds {fds0}->{fds1} tasks {tasks0}->{tasks1} "
        f"rss {rss0 >> 20}->{rss1 >> 20} MiB"
    )
    assert total > concurrency
    assert fds1 <= fds0 + 2
    assert tasks1 <= tasks0
    assert rss1 < rss0 + 40 * 1024 * 1024


# -- hostile clients next to normal ones (issue 17) ---------------------------------------

HOSTILE_A = "127.0.0.2"  # holds session slots
HOSTILE_B = "127.0.0.3"  # everything else


@pytest.fixture
async def servers() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        await server.stop()


@pytest.mark.timeout(900)
async def test_silent_upstream_for_a_minute(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """Clients retrying for a minute against a silent upstream keep descriptors bounded."""
    await check_silent_upstream(servers, artifacts_dir, float(os.environ.get("SOAK_RETRY_S", "60")))


class MirrorEmulator:
    """The Voice Live emulator in mirror mode, as a process of its own."""

    def __init__(self, log_dir: Path) -> None:
        self.port = free_port()
        self.key = "soak-mirror-key"
        self.log_path = log_dir / f"emulator-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> MirrorEmulator:
        argv = [sys.executable, "-m", "voicebridge", "emulator", "--mirror"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), "--api-key", self.key]
        with self.log_path.open("wb") as out:
            self.proc = subprocess.Popen(
                argv, cwd=ROOT, env=clean_environ(), stdout=out, stderr=subprocess.STDOUT
            )

        async def listening() -> bool:
            try:
                _reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            drop(writer)
            return True

        await until(listening, 30, "the emulator to listen")
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        self.proc.terminate()
        await asyncio.to_thread(self.proc.wait, 20)


async def _hostile(
    stop: asyncio.Event, port: int, counts: dict[str, int], failures: list[str]
) -> None:
    """Every hostile client of the attack run, in loops, until ``stop`` is set."""
    host = f"127.0.0.1:{port}"

    async def looping(name: str, attack: Callable[[], Awaitable[None]]) -> None:
        while not stop.is_set():
            try:
                await attack()
            except (OSError, TimeoutError, aiohttp.ClientError):
                pass  # the server closing on a hostile client is what it should do
            except AssertionError as exc:
                failures.append(f"{name}: {exc}")
            counts[name] = counts.get(name, 0) + 1

    async def connection(local: str = HOSTILE_B) -> tuple[asyncio.StreamReader, Any]:
        return await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))

    async def idle() -> None:
        reader, writer = await connection()
        try:
            await closed_by_server(reader, 30)
        finally:
            drop(writer)

    async def slowloris() -> None:
        _reader, writer = await connection()
        try:
            for byte in f"GET /health HTTP/1.1\r\nHost: {host}\r\nX-Pad: ".encode() + b"a" * 200:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
        finally:
            drop(writer)

    async def partial_upgrade() -> None:
        reader, writer = await connection()
        try:
            writer.write(upgrade_request(port)[:-4])
            await closed_by_server(reader, 30)
        finally:
            drop(writer)

    async def slot_holder() -> None:
        # Upgrades and never speaks: holds a slot until the server lets it go.
        local = aiohttp.TCPConnector(local_addr=(HOSTILE_A, 0))
        async with aiohttp.ClientSession(connector=local) as http:
            ws = await http.ws_connect(f"ws://{host}/ws/voice?token={SOAK_TOKEN}")
            async with asyncio.timeout(60):
                async for _msg in ws:
                    pass

    async def rebinding() -> None:
        request = (
            b"GET /sessions HTTP/1.1\r\nHost: rebind.attacker.example\r\n"
            b"Origin: http://rebind.attacker.example\r\nConnection: close\r\n\r\n"
        )
        answer = await raw_exchange(port, request)
        assert answer.startswith((b"HTTP/1.1 421", BUSY)), answer[:100]
        await asyncio.sleep(0.2)

    async def bad_bytes() -> None:
        answer = await raw_exchange(
            port, upgrade_request(port, b"Sec-WebSocket-Protocol: token.\xff")
        )
        assert answer.startswith((b"HTTP/1.1 401", BUSY)), answer[:100]
        await asyncio.sleep(0.2)

    async def malformed() -> None:
        for request in MALFORMED.values():
            await raw_exchange(port, request)
        await asyncio.sleep(0.5)

    async def flood() -> None:
        # Past MAX_CONNECTIONS for a few seconds, every few seconds.
        held = []
        try:
            for _ in range(SOAK_MAX_CONNECTIONS):
                held.append(await connection())
            await asyncio.sleep(3)
        finally:
            for _reader, writer in held:
                drop(writer)
        await asyncio.sleep(5)

    attacks: dict[str, Callable[[], Awaitable[None]]] = {
        "idle": idle,
        "slowloris": slowloris,
        "partial_upgrade": partial_upgrade,
        "slot_holder": slot_holder,
        "rebinding": rebinding,
        "bad_bytes": bad_bytes,
        "malformed": malformed,
        "flood": flood,
    }
    tasks = [asyncio.create_task(looping(name, attack)) for name, attack in attacks.items()]
    tasks += [asyncio.create_task(looping("slot_holder", slot_holder)) for _ in range(4)]
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


SOAK_TOKEN = "soak-token-1"
BUSY = b"HTTP/1.1 503"  # past MAX_CONNECTIONS (during the flood), before anything else
SOAK_MAX_CONNECTIONS = 64


@pytest.mark.timeout(3600)
async def test_hostile_clients_next_to_normal_ones(
    servers: list[ServerProcess], artifacts_dir: Path
) -> None:
    """Every attack of the attack run at once: normal sessions lose no frame, /health answers."""
    seconds = float(os.environ.get("SOAK_HOSTILE_SECONDS", "120"))
    normal = int(os.environ.get("SOAK_NORMAL_SESSIONS", "10"))
    async with MirrorEmulator(artifacts_dir) as emulator:
        server = await ServerProcess(
            artifacts_dir,
            VOICELIVE_BACKEND="azure",
            AZURE_OPENAI_ENDPOINT=f"ws://127.0.0.1:{emulator.port}",
            AZURE_OPENAI_KEY=emulator.key,
            AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
            CLIENT_TOKEN=SOAK_TOKEN,
            MAX_SESSIONS=str(normal + 10),
            MAX_SESSIONS_PER_CLIENT=str(normal),
            MAX_CONNECTIONS=str(SOAK_MAX_CONNECTIONS),
            REQUEST_TIMEOUT_S="2",
            SESSION_START_TIMEOUT_S="5",
        ).start()
        servers.append(server)
        assert server.proc is not None
        proc = psutil.Process(server.proc.pid)
        fds0 = proc.num_fds()
        config = LoadTestConfig(
            url=server.ws_url,
            sessions=normal,
            seconds=seconds,
            ramp=1.0,
            token=SOAK_TOKEN,
            progress=False,
        )
        load = asyncio.create_task(run(config))

        async def health() -> dict[str, Any]:
            async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as resp:
                assert resp.status == 200
                body: dict[str, Any] = await resp.json()
                return body

        async def all_normal_started() -> bool:
            return int((await health())["sessions"]) >= normal

        await until(all_normal_started, 30, "the normal sessions to start")
        stop = asyncio.Event()
        counts: dict[str, int] = {}
        failures: list[str] = []
        hostile = asyncio.create_task(_hostile(stop, server.port, counts, failures))
        slowest = 0.0
        while not load.done():
            started = time.monotonic()
            await health()
            slowest = max(slowest, time.monotonic() - started)
            await asyncio.sleep(0.5)
        stop.set()
        await hostile
        report = load.result()
        await until(lambda: proc.num_fds() <= fds0 + 4, 30, "descriptors to come back")
        await server.stop()
    print(f"soak hostile: {counts}; /health slowest {slowest * 1000:.0f} ms; {report}")
    assert not failures, failures[:10]
    assert report.sessions_failed == 0
    assert report.sessions_dropped == 0
    assert report.frames_sent > 0
    assert report.frames_lost == 0
    assert slowest < 2.0
    assert all(counts.get(name, 0) > 0 for name in ("idle", "slot_holder", "flood", "malformed"))
    lines = log_lines(server)
    assert not [line for line in lines if "raw" in line], server.log()
    assert not [line for line in lines if line.get("level") in {"error", "critical"}], server.log()


@pytest.mark.timeout(1800)
async def test_random_upstream_aborts_across_many_sessions(
    start_emu: Any, make_client: Any
) -> None:
    """Upstreams aborted at random under 100 sessions: no session lost, nothing leaked."""
    from tests.conftest import relay_settings
    from tests.voice_client import started
    from voicebridge.app import STATE

    sessions = int(os.environ.get("SOAK_ABORT_SESSIONS", "100"))
    seconds = float(os.environ.get("SOAK_ABORT_SECONDS", "60"))
    emu = await start_emu()
    client = await make_client(
        relay_settings(
            emu,
            MAX_SESSIONS_PER_CLIENT="0",
            MAX_SESSIONS=str(sessions + 10),
            CLIENT_TEXT_PER_MIN="100000",
        )
    )
    state = client.app[STATE]
    tasks_before = len(asyncio.all_tasks())
    fds_before = psutil.Process().num_fds()
    voices = [await started(client) for _ in range(sessions)]
    deadline = time.monotonic() + seconds
    dropped = 0
    asked = 0
    while time.monotonic() < deadline:
        dropped += emu.drop_connections(max(1, sessions // 20))
        # Every session is asked something and answers it, across the aborts.
        for voice in voices:
            await voice.ws.send_json({"type": "text", "text": f"Question {asked}?"})
        asked += 1
        for voice in voices:
            async with asyncio.timeout(60):
                answers = voice.messages("agent_text") + voice.messages("agent_transcript")
                while len(answers) < asked:
                    await voice.until(lambda e: e[0] == "json")
                    answers = voice.messages("agent_text") + voice.messages("agent_transcript")
    assert dropped > sessions // 2
    assert len(state.sessions) == sessions  # none lost
    for voice in voices:
        assert voice.messages("error") == []
        await voice.ws.close()
    await until(lambda: not state.sessions and emu.connections == 0, 30, "sessions to end")
    assert await state.registry.count() == 0
    gc.collect()
    assert len(asyncio.all_tasks()) <= tasks_before + 2
    assert psutil.Process().num_fds() <= fds_before + 5
