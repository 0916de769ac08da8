"""What one message may cost: frame rate limits, tiny frames, ping floods, a silent start."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import MakeClient, StartEmulator, relay_settings
from tests.voice_client import open_voice, started
from voicebridge.relay.limits import AppendCoalescer


async def test_tiny_frames_are_gathered_into_normal_appends(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """480 two-byte frames (20 ms of audio) reach Voice Live as one or two appends."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, MAX_FRAMES_PER_S="100000"))
    voice = await started(client)
    before = emu.events_received
    for _ in range(480):
        await voice.ws.send_bytes(b"\x01\x00")
    await voice.ws.send_json({"type": "ping"})  # ordered after the frames
    await voice.until_type("pong")
    async with asyncio.timeout(5):
        while emu.events_received == before:  # the last partial append is flushed in 20 ms
            await asyncio.sleep(0.01)
    assert 1 <= emu.events_received - before <= 3


@pytest.mark.parametrize(
    ("frame", "label"),
    [(b"\x01\x00", "two-byte frames"), (b"", "empty frames")],
)
async def test_frame_flood_is_rate_limited(
    start_emu: StartEmulator, make_client: MakeClient, frame: bytes, label: str
) -> None:
    """Frames far beyond MAX_FRAMES_PER_S end the session (empty ones count too)."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, MAX_FRAMES_PER_S="50", RATE_WINDOW_S="1"))
    voice = await started(client)
    for _ in range(500):
        if voice.ws.closed:
            break
        await voice.ws.send_bytes(frame)
    error = await voice.until_type("error")
    assert error["code"] == "rate_limited", label
    assert "frames a second" in error["message"]
    assert await voice.until_closed() == 1008


async def test_ping_flood_is_rate_limited(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """WebSocket pings count as frames: a flood of them ends the session."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, MAX_FRAMES_PER_S="50", RATE_WINDOW_S="1"))
    voice = await started(client)
    for _ in range(500):
        if voice.ws.closed:
            break
        await voice.ws.ping()
    error = await voice.until_type("error")
    assert error["code"] == "rate_limited"
    assert await voice.until_closed() == 1008


async def test_pings_are_answered(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """A WebSocket ping from the client gets its pong."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.ping(b"hello")
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")  # the session is alive and answered both


async def test_a_session_that_never_speaks_is_closed(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """No audio or text within SESSION_START_TIMEOUT_S: status ended, close 1000."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, SESSION_START_TIMEOUT_S="0.5"))
    voice = await open_voice(client)
    await voice.ws.send_json({"type": "ping"})  # a ping is not input
    ended = await voice.until_type("status", status="ended")
    assert ended["code"] == "idle_timeout"
    assert "no audio or text" in ended["message"]
    assert await voice.until_closed() == 1000


async def test_unreachable_service_is_not_named_to_clients(make_client: MakeClient) -> None:
    """A refused upstream connection tells the client nothing of the service's address."""
    from tests.conftest import KEY, make_settings
    from tests.redis_server import free_port

    port = free_port()  # nothing listens there
    client = await make_client(
        make_settings(
            VOICELIVE_BACKEND="azure",
            AZURE_OPENAI_ENDPOINT=f"ws://127.0.0.1:{port}",
            AZURE_OPENAI_KEY=KEY,
            AZURE_OPENAI_DEPLOYMENT="x",
        )
    )
    voice = await open_voice(client)
    error = await voice.until_type("error")
    assert error["code"] == "upstream_connect_failed"
    assert str(port) not in error["message"] and "127.0.0.1" not in error["message"]
    assert "cannot reach the voice service" in error["message"]


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        ([(960, 0.0)], [960]),  # a normal frame goes straight through
        ([(2, 0.0)] * 3, [0, 0, 0]),  # tiny frames wait ...
        ([(500, 0.0), (500, 0.001)], [0, 1000]),  # ... until 20 ms of audio gathered
        ([(2, 0.0), (2, 0.025)], [0, 4]),  # ... or the oldest waited 20 ms
    ],
)
def test_coalescer_rules(frames: list[tuple[int, float]], expected: list[int]) -> None:
    """What the coalescer sends for each frame, by size and age."""
    coalescer = AppendCoalescer(960)
    assert [len(coalescer.add(b"\x00" * n, at)) for n, at in frames] == expected


def test_coalescer_flush_deadline() -> None:
    """The flush deadline runs from the oldest waiting byte; nothing waiting, no deadline."""
    coalescer = AppendCoalescer(960)
    assert coalescer.flush_in(0.0) is None
    coalescer.add(b"\x00\x00", 1.0)
    assert coalescer.flush_in(1.005) == pytest.approx(0.015)
    assert coalescer.take() == b"\x00\x00"
    assert coalescer.flush_in(1.1) is None and coalescer.pending == 0
