"""A client that sends but never reads, against a real `serve` process on uvloop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from tests.server_process import ServerProcess
from tests.speech import make_speech_pcm
from tests.voice_client import StuckClient

FRAME_MS = 20
FRAME_BYTES = 48 * FRAME_MS


async def _sessions(http: aiohttp.ClientSession, server: ServerProcess) -> int:
    async with http.get(f"{server.url}/health") as resp:
        return int((await resp.json())["sessions"])


async def _ended_by(http: aiohttp.ClientSession, server: ServerProcess, reason: str) -> float:
    async with http.get(f"{server.url}/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith(f'voicebridge_sessions_total{{channel="browser",reason="{reason}"}}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_client_that_never_reads_is_cut_off_on_uvloop(
    tmp_path: Path, artifacts_dir: Path
) -> None:
    """Real-time speech in, agent answers never read: ended as slow_consumer, not kept open."""
    speech = make_speech_pcm(
        "Hello, I would like to hear about your offer today.",
        tmp_path / "offer.raw",
        lead_s=0.3,
        trail_s=3.5,
    )
    server = await ServerProcess(
        artifacts_dir, CLIENT_SEND_BUFFER_MS="1000", CLIENT_SEND_TIMEOUT_S="3"
    ).start()
    stuck: StuckClient | None = None
    try:
        async with aiohttp.ClientSession() as http:
            stuck = await StuckClient.connect("127.0.0.1", server.port)
            started = time.monotonic()
            gone = False
            # Stream the utterance in a loop, in real time, the way a microphone does; the
            # emulator answers each one with as much audio, which this client never reads.
            while time.monotonic() - started < 40:
                for offset in range(0, len(speech) - FRAME_BYTES + 1, FRAME_BYTES):
                    try:
                        await stuck.send_binary(speech[offset : offset + FRAME_BYTES])
                    except (ConnectionError, OSError):
                        gone = True
                        break
                    await asyncio.sleep(FRAME_MS / 1000)  # real-time pacing, not a sync
                if gone or await _sessions(http, server) == 0:
                    break
            elapsed = time.monotonic() - started
            assert await _sessions(http, server) == 0, server.log()
            assert await _ended_by(http, server, "slow_consumer") == 1, server.log()
            # A few answers fill the bounded buffers; then the 3 s stall clock runs out.
            assert elapsed < 30, f"cut off only after {elapsed:.0f} s"
    finally:
        if stuck is not None:
            stuck.close()
        await server.stop()
