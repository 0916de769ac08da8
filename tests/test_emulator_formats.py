"""The emulator in every audio format Voice Live takes, driven by the real SDK over sockets.

Input speech is espeak-ng's, converted to each format by SoX (not by our codec), and the
answers are decoded by SoX too, so the emulator's G.711 and resampling are checked against
an independent implementation. Formats and rates: the SDK's InputAudioFormat,
OutputAudioFormat and input_audio_sampling_rate (see voicebridge/emulator/formats.py).
"""

from __future__ import annotations

import asyncio
import base64
import math
import subprocess
from array import array
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import attrs
import pytest
from azure.ai.voicelive.aio import VoiceLiveConnection, connect
from azure.ai.voicelive.models import (
    InputTextContentPart,
    ServerEvent,
    ServerEventError,
    ServerEventInputAudioBufferSpeechStarted,
    ServerEventInputAudioBufferSpeechStopped,
    ServerEventResponseAudioDelta,
    ServerEventResponseDone,
    UserMessageItem,
)
from azure.core.credentials import AzureKeyCredential

from tests.speech import make_speech_pcm, speech_bounds_ms, tools_available
from voicebridge.emulator import EmulatorOptions, RunningEmulator, formats, start_emulator

pytestmark = pytest.mark.skipif(not tools_available(), reason="needs espeak-ng and sox")

KEY = "test-key-formats"
MODEL = "gpt-4o-realtime"
SENTENCE = "Hello there. I would like to book a table for two tonight."
CHUNK_MS = 100  # EmulatorOptions.chunk_ms, the default
SOX_ENCODING = {"pcm16": "signed-integer", "g711_ulaw": "u-law", "g711_alaw": "a-law"}


@attrs.frozen
class Fmt:
    """One side's format: the session fields' values and what they mean on the wire."""

    codec: str
    rate: int

    @property
    def bytes_per_ms(self) -> int:
        return self.rate * (2 if self.codec == "pcm16" else 1) // 1000

    @property
    def output_name(self) -> str:
        if self.codec != "pcm16" or self.rate == 24000:
            return self.codec
        return f"pcm16_{self.rate}hz"

    def sox_args(self) -> list[str]:
        bits = ["-b", "16", "-L"] if self.codec == "pcm16" else []
        return ["-t", "raw", "-r", str(self.rate), "-e", SOX_ENCODING[self.codec], *bits, "-c", "1"]

    def __str__(self) -> str:
        return f"{self.codec}@{self.rate}"


PCM24 = Fmt("pcm16", 24000)
FORMATS = [
    Fmt("g711_ulaw", 8000),
    Fmt("g711_alaw", 8000),
    Fmt("pcm16", 8000),
    Fmt("pcm16", 16000),
    PCM24,
]


def sox_convert(data: bytes, source: Fmt, target: Fmt) -> bytes:
    """`data` from one raw format to another, by SoX (no dither, for repeatable bytes)."""
    args = ["sox", "-D", *source.sox_args(), "-", *target.sox_args(), "-"]
    return subprocess.run(args, input=data, capture_output=True, check=True).stdout


def dbfs(pcm: bytes) -> float:
    values = array("h")
    values.frombytes(pcm)
    energy = sum(v * v for v in values) / max(len(values), 1)
    return 10 * math.log10(energy / 32768**2) if energy else -120.0


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """A fast emulator (no real-time pacing) on a free port."""
    async with await start_emulator(EmulatorOptions(api_key=KEY, realtime=False)) as running:
        yield running
        async with asyncio.timeout(5):
            await running.wait_connections(0)


def sdk_connect(emulator: RunningEmulator) -> AbstractAsyncContextManager[VoiceLiveConnection]:
    return connect(endpoint=emulator.url, credential=AzureKeyCredential(KEY), model=MODEL)


async def recv_until(conn: VoiceLiveConnection, *types: str) -> list[ServerEvent]:
    """Receive events up to and including the first one whose type is in `types`."""
    events: list[ServerEvent] = []
    async with asyncio.timeout(10):
        while True:
            events.append(await conn.recv())
            if events[-1].type in types:
                return events


async def expect_error(conn: VoiceLiveConnection) -> ServerEventError:
    error = (await recv_until(conn, "error"))[-1]
    assert isinstance(error, ServerEventError)
    return error


async def open_session(
    conn: VoiceLiveConnection, source: Fmt, target: Fmt, **session: Any
) -> ServerEvent:
    """Set the formats (as the relay does) and return session.updated."""
    await recv_until(conn, "session.created")
    fields = {
        "input_audio_format": source.codec,
        "input_audio_sampling_rate": source.rate,
        "output_audio_format": target.output_name,
        **session,
    }
    await conn.session.update(session=fields)
    return (await recv_until(conn, "session.updated"))[-1]


async def append(conn: VoiceLiveConnection, data: bytes, fmt: Fmt, chunk_ms: int = 20) -> None:
    step = chunk_ms * fmt.bytes_per_ms
    for offset in range(0, len(data), step):
        chunk = data[offset : offset + step]
        await conn.input_audio_buffer.append(audio=base64.b64encode(chunk).decode())


def audio_deltas(events: Sequence[ServerEvent]) -> list[bytes]:
    return [e.delta for e in events if isinstance(e, ServerEventResponseAudioDelta)]


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
async def test_speech_is_detected_and_echoed_in_the_format(
    emulator: RunningEmulator, fmt: Fmt
) -> None:
    """Speech in the format is found by the VAD where it is, and echoed in the same format."""
    pcm = make_speech_pcm(SENTENCE, lead_s=1.0, trail_s=1.5)
    speech_start, speech_end = speech_bounds_ms(pcm)
    wire = sox_convert(pcm, PCM24, fmt)
    assert len(wire) == pytest.approx(len(pcm) / PCM24.bytes_per_ms * fmt.bytes_per_ms, abs=4)
    async with sdk_connect(emulator) as conn:
        updated = await open_session(conn, fmt, fmt)
        assert updated.session.input_audio_format == fmt.codec
        assert updated.session.input_audio_sampling_rate == fmt.rate
        assert updated.session.output_audio_format == fmt.output_name
        await append(conn, wire, fmt)
        events = await recv_until(conn, "response.done")

    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
    assert isinstance(started, ServerEventInputAudioBufferSpeechStarted)
    assert isinstance(stopped, ServerEventInputAudioBufferSpeechStopped)
    assert started.audio_start_ms == pytest.approx(speech_start - 300, abs=100)
    assert stopped.audio_end_ms == pytest.approx(speech_end + 500, abs=100)
    done = events[-1]
    assert isinstance(done, ServerEventResponseDone)
    assert done.response.status == "completed"
    assert done.response.output_audio_format == fmt.output_name

    # The echo is the turn, in the output format: whole 100 ms deltas but the last.
    deltas = audio_deltas(events)
    assert {len(d) for d in deltas[:-1]} == {CHUNK_MS * fmt.bytes_per_ms}
    echo = b"".join(deltas)
    turn_ms = stopped.audio_end_ms - started.audio_start_ms
    assert len(echo) / fmt.bytes_per_ms == pytest.approx(turn_ms, abs=CHUNK_MS)
    decoded = sox_convert(echo, fmt, PCM24)
    assert dbfs(decoded) > -40  # speech, not silence
    # The speech sits where it was in the turn: it began prefix_padding_ms into the echo.
    echo_start, _ = speech_bounds_ms(decoded)
    assert echo_start == pytest.approx(speech_start - started.audio_start_ms, abs=30)


@pytest.mark.parametrize(
    ("source", "target"),
    [(Fmt("g711_ulaw", 8000), PCM24), (Fmt("pcm16", 16000), Fmt("g711_alaw", 8000))],
    ids=str,
)
async def test_echo_crosses_formats(emulator: RunningEmulator, source: Fmt, target: Fmt) -> None:
    """Input in one format is answered in the session's other output format."""
    pcm = make_speech_pcm("Good morning", lead_s=0.5, trail_s=1.0)
    async with sdk_connect(emulator) as conn:
        await open_session(conn, source, target)
        await append(conn, sox_convert(pcm, PCM24, source), source)
        events = await recv_until(conn, "response.done")
    stopped = next(e for e in events if e.type == "input_audio_buffer.speech_stopped")
    started = next(e for e in events if e.type == "input_audio_buffer.speech_started")
    echo = b"".join(audio_deltas(events))
    turn_ms = stopped.audio_end_ms - started.audio_start_ms
    assert len(echo) / target.bytes_per_ms == pytest.approx(turn_ms, abs=CHUNK_MS)
    assert dbfs(sox_convert(echo, target, PCM24)) > -40


@pytest.mark.parametrize("fmt", [Fmt("g711_ulaw", 8000), Fmt("pcm16", 16000)], ids=str)
async def test_greeting_and_typed_answers_come_in_the_output_format(
    emulator: RunningEmulator, fmt: Fmt
) -> None:
    """Synthesized audio (the chime, a typed message's answer) is sent in the output format."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn, fmt, fmt)
        await conn.response.create()
        greeting = await recv_until(conn, "response.done")
        await conn.conversation.item.create(
            item=UserMessageItem(content=[InputTextContentPart(text="What time is it?")])
        )
        await conn.response.create()
        answer = await recv_until(conn, "response.done")
    for events in (greeting, answer):
        echo = b"".join(audio_deltas(events))
        assert len(echo) > 500 * fmt.bytes_per_ms
        assert dbfs(sox_convert(echo, fmt, PCM24)) > -30


@pytest.mark.parametrize(
    ("session", "param"),
    [
        ({"input_audio_format": "g711_ulaw", "input_audio_sampling_rate": 16000},
         "session.input_audio_sampling_rate"),
        ({"input_audio_format": "g711_alaw", "input_audio_sampling_rate": 24000},
         "session.input_audio_sampling_rate"),
        ({"input_audio_format": "pcm16", "input_audio_sampling_rate": 44100},
         "session.input_audio_sampling_rate"),
        ({"input_audio_sampling_rate": "16000"}, "session.input_audio_sampling_rate"),
        ({"input_audio_format": "opus"}, "session.input_audio_format"),
        ({"input_audio_format": "pcm16_16000hz"}, "session.input_audio_format"),
        ({"output_audio_format": "pcm16_44100hz"}, "session.output_audio_format"),
        # The SDK's legacy spelling: deserialized by the SDK, not what the service takes.
        ({"output_audio_format": "pcm16-8000hz"}, "session.output_audio_format"),
    ],
)  # fmt: skip
async def test_bad_formats_are_refused_naming_the_field(
    emulator: RunningEmulator, session: dict[str, Any], param: str
) -> None:
    """A format or rate the service does not take is an invalid_request_error naming it."""
    async with sdk_connect(emulator) as conn:
        await recv_until(conn, "session.created")
        await conn.session.update(session=session, event_id="client-evt-9")
        error = await expect_error(conn)
        assert error.error.type == "invalid_request_error"
        assert error.error.code == "invalid_value"
        assert error.error.param == param
        assert error.error.event_id == "client-evt-9"
        await conn.session.update(session={"instructions": "unchanged"})
        updated = (await recv_until(conn, "session.updated"))[-1]
    assert updated.session.input_audio_format == "pcm16"
    assert updated.session.input_audio_sampling_rate == 24000
    assert updated.session.output_audio_format == "pcm16"


async def test_rate_follows_the_format_unless_given(emulator: RunningEmulator) -> None:
    """g711 without a rate means 8000; back to pcm16 means 24000; a rate g711 lacks is refused."""
    async with sdk_connect(emulator) as conn:
        await recv_until(conn, "session.created")
        await conn.session.update(session={"input_audio_format": "g711_ulaw"})
        updated = (await recv_until(conn, "session.updated"))[-1]
        assert updated.session.input_audio_sampling_rate == 8000
        await conn.session.update(session={"input_audio_sampling_rate": 16000})
        error = await expect_error(conn)
        assert error.error.param == "session.input_audio_sampling_rate"
        assert "g711_ulaw" in error.error.message
        await conn.session.update(session={"input_audio_format": "pcm16"})
        updated = (await recv_until(conn, "session.updated"))[-1]
        assert updated.session.input_audio_sampling_rate == 24000
        await conn.session.update(session={"input_audio_sampling_rate": 16000})
        updated = (await recv_until(conn, "session.updated"))[-1]
        assert (updated.session.input_audio_format, updated.session.input_audio_sampling_rate) == (
            "pcm16",
            16000,
        )


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
async def test_commit_minimum_is_measured_in_the_input_format(
    emulator: RunningEmulator, fmt: Fmt
) -> None:
    """100 ms of input is enough to commit, a sample less is not, in every format."""
    pcm = make_speech_pcm("Yes", lead_s=0.2, trail_s=0.2)
    wire = sox_convert(pcm, PCM24, fmt)
    sample = fmt.bytes_per_ms * 1000 // fmt.rate
    async with sdk_connect(emulator) as conn:
        await open_session(conn, fmt, fmt, turn_detection=None)
        await append(conn, wire[: 100 * fmt.bytes_per_ms - sample], fmt)
        await conn.input_audio_buffer.commit()
        error = await expect_error(conn)
        assert error.error.code == "input_audio_buffer_commit_empty"
        assert "buffer only has 99." in error.error.message
        await append(conn, wire[: 100 * fmt.bytes_per_ms], fmt)
        await conn.input_audio_buffer.commit()
        await recv_until(conn, "input_audio_buffer.committed")


async def test_g711_takes_any_byte_count_pcm16_only_whole_samples(
    emulator: RunningEmulator,
) -> None:
    """An odd append is fine in G.711 (a byte a sample) and an error in pcm16."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn, Fmt("g711_alaw", 8000), PCM24, turn_detection=None)
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\xd5" * 801).decode())
        await conn.input_audio_buffer.commit()  # 801 samples: 100.125 ms
        await recv_until(conn, "input_audio_buffer.committed")
        await conn.session.update(session={"input_audio_format": "pcm16"})
        await recv_until(conn, "session.updated")
        await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00" * 801).decode())
        error = await expect_error(conn)
        assert (error.error.code, error.error.param) == ("invalid_value", "audio")


async def test_format_change_keeps_buffered_audio(emulator: RunningEmulator) -> None:
    """Audio buffered before an input format change is echoed as it was, then the new."""
    pcm = make_speech_pcm(SENTENCE)
    first, second = pcm[: 500 * 48], pcm[500 * 48 : 1000 * 48]
    ulaw = Fmt("g711_ulaw", 8000)
    async with sdk_connect(emulator) as conn:
        await open_session(conn, PCM24, PCM24, turn_detection=None)
        await append(conn, first, PCM24)
        await conn.session.update(session={"input_audio_format": "g711_ulaw"})
        updated = (await recv_until(conn, "session.updated"))[-1]
        assert updated.session.input_audio_sampling_rate == 8000
        await append(conn, sox_convert(second, PCM24, ulaw), ulaw)
        await conn.input_audio_buffer.commit()
        await recv_until(conn, "input_audio_buffer.committed")
        await conn.response.create()
        events = await recv_until(conn, "response.done")
    echo = b"".join(audio_deltas(events))
    assert len(echo) == 1000 * 48
    # The pcm16 half is echoed bit for bit; the μ-law half as μ-law decoded.
    assert echo[: 500 * 48] == first
    assert dbfs(echo[500 * 48 :]) == pytest.approx(dbfs(second), abs=1.0)


async def test_truncate_is_checked_in_the_output_format(emulator: RunningEmulator) -> None:
    """audio_end_ms is checked against the ms of G.711 sent (8 bytes a ms), not pcm16's."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn, PCM24, Fmt("g711_ulaw", 8000))
        await conn.response.create()
        events = await recv_until(conn, "response.done")
        done = events[-1]
        assert isinstance(done, ServerEventResponseDone)
        item_id = done.response.output[0].id
        sent_ms = len(b"".join(audio_deltas(events))) // 8
        assert sent_ms > 500
        await conn.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=sent_ms + 1
        )
        error = await expect_error(conn)
        assert error.error.code == "item_truncate_invalid_audio_end_ms"
        assert f"the {sent_ms} ms of audio sent" in error.error.message
        await conn.conversation.item.truncate(
            item_id=item_id, content_index=0, audio_end_ms=sent_ms
        )
        truncated = (await recv_until(conn, "conversation.item.truncated"))[-1]
        assert truncated.audio_end_ms == sent_ms


async def test_mirror_mode_converts_between_formats(emulator: RunningEmulator) -> None:
    """In mirror mode μ-law in, pcm16 24 kHz out: each delta is its append, decoded."""
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, mirror=True))
    ulaw = Fmt("g711_ulaw", 8000)
    wire = sox_convert(make_speech_pcm("Hello"), PCM24, ulaw)
    frames = [wire[i : i + 160] for i in range(0, len(wire) - 160, 160)]
    async with sdk_connect(emulator) as conn:
        await open_session(conn, ulaw, PCM24)
        for frame in frames:
            await conn.input_audio_buffer.append(audio=base64.b64encode(frame).decode())
        events = [await conn.recv() for _ in frames]
    deltas = audio_deltas(events)
    assert [len(d) for d in deltas] == [160 * 6] * len(frames)
    assert dbfs(b"".join(deltas)) == pytest.approx(dbfs(sox_convert(wire, ulaw, PCM24)), abs=1.0)


@pytest.mark.parametrize("rate", [8000, 16000])
def test_phone_rate_conversions_are_exact_round_trips(rate: int) -> None:
    """8 or 16 kHz audio taken to 24 kHz and back is what it was, sample for sample, and
    three times (or one and a half times) as long in between."""
    values = (-32768, -1, 0, 1, 32767, 5)
    pcm = b"".join(v.to_bytes(2, "little", signed=True) for v in values)
    up = formats.to_24k(pcm, rate)
    assert len(up) == len(pcm) * 24000 // rate
    assert formats.from_24k(up, rate) == pcm
    assert up[:6] == (pcm[:2] * 3 if rate == 8000 else pcm[:2] * 2 + pcm[2:4])
