"""Limits and faults: frame size, rate, slow readers, time limits, garbage input, Redis loss."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import MakeClient, StartEmulator, relay_settings
from tests.redis_server import RedisServer
from tests.voice_client import StuckClient, silence, started
from voicebridge import protocol
from voicebridge.app import STATE, create_app
from voicebridge.emulator import RunningEmulator
from voicebridge.errors import ProtocolError


async def test_frame_too_large_closes_1009(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A frame over MAX_FRAME_BYTES gets frame_too_large and close 1009."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, MAX_FRAME_BYTES="1000"))
    voice = await started(client)
    await voice.ws.send_bytes(b"\x00" * 960)  # a normal frame is fine
    await voice.ws.send_bytes(b"\x00" * 2000)
    error = await voice.until_type("error")
    assert error["code"] == "frame_too_large"
    assert "1000" in error["message"]
    assert await voice.until_closed() == 1009


async def test_faster_than_real_time_is_rate_limited(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Audio far faster than real time for longer than the window ends with 1008."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, MAX_AUDIO_RATE="1.5", RATE_WINDOW_S="1"))
    voice = await started(client)
    await voice.send_audio(silence(5000))  # 5 s of audio at once; the bucket holds 1.5 s
    error = await voice.until_type("error")
    assert error["code"] == "rate_limited"
    assert await voice.until_closed() == 1008


async def test_client_that_does_not_read_is_ended_and_others_unaffected(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A client that never reads its audio is ended when its buffer stays full; others go on."""
    emu = await start_emu(mirror=True)
    client = await make_client(
        relay_settings(
            emu,
            CLIENT_SEND_BUFFER_MS="1000",
            CLIENT_SEND_TIMEOUT_S="1",
            MAX_AUDIO_RATE="100000",
        )
    )
    other = await started(client)
    app = client.app
    state = app[STATE]
    stuck = await StuckClient.connect(str(client.host), int(client.port))
    overflows_before = state.metrics.send_overflows._value.get()
    frame = b"\x01\x00" * 8000
    try:
        # The stuck client sends audio whose mirrored echo it never reads.
        async with asyncio.timeout(60):
            while len(state.sessions) < 2:
                await asyncio.sleep(0.01)
            while len(state.sessions) == 2:
                with contextlib.suppress(ConnectionError):
                    await stuck.send_binary(frame)
                # The well-behaved session still answers promptly meanwhile.
                await other.ws.send_json({"type": "ping"})
                await other.until_type("pong", timeout=5)
    finally:
        stuck.close()
    assert state.metrics.send_overflows._value.get() == overflows_before + 1
    await other.ws.send_json({"type": "ping"})
    await other.until_type("pong")


async def test_session_time_limit_warns_then_closes(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """SESSION_MAX_DURATION_S: a warning SESSION_WARNING_S before, then ended and 1000."""
    emu = await start_emu()
    client = await make_client(
        relay_settings(emu, SESSION_MAX_DURATION_S="1.5", SESSION_WARNING_S="1")
    )
    voice = await started(client)
    warning = await voice.until_type("status", status="ending")
    assert warning["code"] == "session_time_limit" and warning["seconds_left"] == 1
    ended = await voice.until_type("status", status="ended")
    assert ended["code"] == "session_time_limit"
    assert await voice.until_closed() == 1000


async def test_idle_session_is_closed(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """A session that receives nothing for SESSION_IDLE_TIMEOUT_S ends with idle_timeout."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, SESSION_IDLE_TIMEOUT_S="0.5"))
    voice = await started(client)
    ended = await voice.until_type("status", status="ended")
    assert ended["code"] == "idle_timeout"
    assert await voice.until_closed() == 1000
    assert emu.connections == 0 or await _no_upstream(emu)


async def _no_upstream(emu: RunningEmulator) -> bool:
    async with asyncio.timeout(5):
        while emu.connections:
            await asyncio.sleep(0.02)
    return True


# -- the parser never raises anything but ProtocolError ----------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["audio", "text", "ping", "playback", "x", ""])},
    optional={"audio": json_values | st.text(), "text": json_values, "played_ms": json_values},
)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary().map(lambda b: b.decode("latin-1")),
        json_values.map(json.dumps),
        messages.map(json.dumps),
    )
)
def test_parser_fuzz_only_raises_protocol_errors(frame: str) -> None:
    """Random text and random JSON either parse or raise ProtocolError with a code."""
    try:
        parsed = protocol.parse_text(frame)
    except ProtocolError as exc:
        assert exc.code and exc.message
    else:
        assert isinstance(
            parsed, protocol.AudioIn | protocol.TextIn | protocol.PingIn | protocol.PlaybackIn
        )


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=7), max_size=20))
def test_aligner_keeps_every_byte_in_order(chunks: list[bytes]) -> None:
    """Whatever the frame sizes, aligned output is the input minus at most one carried byte."""
    aligner = protocol.SampleAligner()
    out = b"".join(aligner.feed(c) for c in chunks)
    total = b"".join(chunks)
    assert len(out) % 2 == 0
    assert out + aligner.carry == total


async def test_garbage_frames_never_end_a_session(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Hundreds of random frames each get an answer and the session stays open."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    rng = random.Random(1234)
    bad = 0
    for _ in range(300):
        kind = rng.random()
        if kind < 0.4:
            frame = "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 40)))
        elif kind < 0.8:
            frame = json.dumps(
                {
                    "type": rng.choice(["audio", "text", "nope", 7, None]),
                    "audio": rng.choice(["", "@@", 3, None]),
                }
            )
        else:
            frame = json.dumps(rng.choice([[], 1, "s", None, {"type": {"nested": 1}}]))
        try:
            protocol.parse_text(frame)
        except ProtocolError:
            bad += 1
        await voice.ws.send_str(frame)
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")
    assert len(voice.messages("error")) == bad
    assert not voice.ws.closed


# -- Redis goes away while the server runs -------------------------------------------------


@pytest.fixture(scope="module")
def flaky_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


async def test_redis_outage_keeps_serving_and_reregisters(
    start_emu: StartEmulator, aiohttp_client: Any, flaky_redis: RedisServer
) -> None:
    """Redis stops: sessions go on and new ones open; Redis returns: they are re-registered."""
    emu = await start_emu()
    s = relay_settings(
        emu,
        SESSION_REGISTRY=flaky_redis.url,
        REGISTRY_HEARTBEAT_S="0.2",
        REGISTRY_TTL_S="2",
    )
    client = await aiohttp_client(create_app(s))
    first = await started(client)
    flaky_redis.stop()
    second = await started(client)  # admitted while Redis is down
    await first.ws.send_json({"type": "text", "text": "still there?"})
    await first.until_type("agent_transcript")
    async with asyncio.timeout(10):
        while (await (await client.get("/health")).json())["registry"] != "degraded":
            await asyncio.sleep(0.05)
    listing = await (await client.get("/sessions")).json()
    assert listing["count"] == 2  # this instance still knows its own sessions
    flaky_redis.start()
    import redis.asyncio as aioredis

    direct = aioredis.from_url(flaky_redis.url)
    try:
        async with asyncio.timeout(15):
            while len(await direct.keys("*session:*")) < 2:
                await asyncio.sleep(0.05)
    finally:
        await direct.aclose()
    async with asyncio.timeout(10):
        while (await (await client.get("/health")).json())["registry"] != "ok":
            await asyncio.sleep(0.05)
    await second.ws.send_json({"type": "ping"})
    await second.until_type("pong")


async def test_client_dropping_while_backed_up_is_a_plain_disconnect(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A client whose connection dies with agent audio pending ends cleanly, not as a failure."""
    emu = await start_emu(mirror=True)
    client = await make_client(relay_settings(emu, MAX_AUDIO_RATE="100000"))
    state = client.app[STATE]
    stuck = await StuckClient.connect(str(client.host), int(client.port))
    async with asyncio.timeout(10):
        while not state.sessions:
            await asyncio.sleep(0.01)
    session = next(iter(state.sessions.values()))
    async with asyncio.timeout(10):
        while session.stats.state != "ready":
            await asyncio.sleep(0.01)
    frame = b"\x02\x00" * 12000
    for _ in range(60):
        await stuck.send_binary(frame)
    stuck.close()
    await asyncio.wait_for(session.done.wait(), 15)
    assert session.end is not None
    assert session.end.reason != "internal_error", session.end
    assert (
        state.metrics.sessions.labels(reason="internal_error", channel="browser")._value.get() == 0
    )


async def test_drain_returns_as_soon_as_its_session_ends(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Shutdown does not wait out the grace for a session that has already gone."""
    emu = await start_emu(realtime=True)
    client = await make_client(relay_settings(emu))
    state = client.app[STATE]
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Tell me a long story please."})
    await voice.until(lambda e: e[0] == "audio")
    session = next(iter(state.sessions.values()))
    assert session.turns.response_active
    drain = asyncio.create_task(session.drain(60.0))
    await voice.until_type("status", status="shutting_down")
    await voice.ws.close()
    await asyncio.wait_for(drain, 10)  # far less than the 60 s grace
    assert session.done.is_set()
