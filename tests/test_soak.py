"""Soak: many sessions opened and closed for minutes; resources return to where they were.

Marked ``soak`` and excluded from ``make test``; ``make soak`` runs it. SOAK_SECONDS sets the
length (default 180), SOAK_CONCURRENCY the sessions open at once (default 20).
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from typing import Any

import psutil
import pytest

from tests.conftest import make_settings
from tests.voice_client import VoiceSocket, silence
from voicebridge.app import STATE, create_app

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
        create_app(make_settings(MAX_SESSIONS=str(concurrency * 2), MAX_AUDIO_RATE="50"))
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
