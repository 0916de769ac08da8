"""The Voice Live emulator, driven by the real azure-ai-voicelive SDK over loopback sockets."""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson
import pytest
from azure.ai.voicelive.aio import ConnectionClosed, ConnectionError, VoiceLiveConnection, connect
from azure.ai.voicelive.models import (
    InputTextContentPart,
    ResponseMessageItem,
    ServerEvent,
    ServerEventError,
    ServerEventInputAudioBufferSpeechStarted,
    ServerEventInputAudioBufferSpeechStopped,
    ServerEventResponseAudioDelta,
    ServerEventResponseDone,
    ServerEventSessionUpdated,
    UserMessageItem,
)
from azure.core.credentials import AzureKeyCredential

from tests.speech import (
    duration_ms,
    make_speech_pcm,
    silence_pcm,
    speech_bounds_ms,
    tools_available,
)
from voicebridge.emulator import (
    EmulatorOptions,
    RunningEmulator,
    add_emulator_arguments,
    options_from_args,
    running_emulator,
    start_emulator,
)
from voicebridge.emulator.audio import greeting_audio

pytestmark = pytest.mark.skipif(not tools_available(), reason="needs espeak-ng and sox")

KEY = "test-key-123"
MODEL = "gpt-4o-realtime"
SENTENCE = "Hello there. I would like to book a table for two tonight."
LONG_TEXT = "Please read me a long and detailed story about the sea, the wind and the stars."


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    """A fast emulator (no real-time pacing) on a free port."""
    async with await start_emulator(EmulatorOptions(api_key=KEY, realtime=False)) as running:
        yield running
        async with asyncio.timeout(5):
            await running.wait_connections(0)


def sdk_connect(
    emulator: RunningEmulator, key: str = KEY, model: str | None = MODEL
) -> AbstractAsyncContextManager[VoiceLiveConnection]:
    return connect(endpoint=emulator.url, credential=AzureKeyCredential(key), model=model)


async def recv_until(
    conn: VoiceLiveConnection, *types: str, within_s: float = 10.0
) -> list[ServerEvent]:
    """Receive events up to and including the first one whose type is in `types`."""
    events: list[ServerEvent] = []
    async with asyncio.timeout(within_s):
        while True:
            event = await conn.recv()
            events.append(event)
            if event.type in types:
                return events


async def send_pcm(conn: VoiceLiveConnection, pcm: bytes, chunk_ms: int = 100) -> None:
    step = chunk_ms * 48
    for offset in range(0, len(pcm), step):
        await conn.input_audio_buffer.append(
            audio=base64.b64encode(pcm[offset : offset + step]).decode()
        )


def user_text(text: str) -> UserMessageItem:
    return UserMessageItem(content=[InputTextContentPart(text=text)])


def types_of(events: Sequence[ServerEvent]) -> list[str]:
    return [str(e.type) for e in events]


def audio_ms(events: Sequence[ServerEvent]) -> float:
    return sum(len(e.delta) for e in events if isinstance(e, ServerEventResponseAudioDelta)) / 48


async def open_session(conn: VoiceLiveConnection, **session: Any) -> None:
    await recv_until(conn, "session.created")
    if session:
        await conn.session.update(session=session)
        await recv_until(conn, "session.updated")


async def expect_error(conn: VoiceLiveConnection) -> ServerEventError:
    events = await recv_until(conn, "error")
    error = events[-1]
    assert isinstance(error, ServerEventError)
    return error


def raw_url(emulator: RunningEmulator, query: str = f"api-version=2026-07-15&model={MODEL}") -> str:
    return f"{emulator.url}/voice-live/realtime?{query}"


# --- handshake -----------------------------------------------------------------------------


async def test_session_created_on_connect(emulator: RunningEmulator) -> None:
    """A new connection gets session.created with the default configuration."""
    async with sdk_connect(emulator) as conn:
        event = await conn.recv()
        assert event.type == "session.created"
        session = event.session
        assert session.model == MODEL
        assert session.input_audio_format == "pcm16"
        assert session.turn_detection.type == "server_vad"
        assert session.turn_detection.threshold == 0.5
        assert session.voice == {"type": "openai", "name": "alloy"}
    assert emulator.connections_accepted == 1


async def test_wrong_api_key_is_refused(emulator: RunningEmulator) -> None:
    """A wrong key fails the SDK's handshake; a missing one gets HTTP 401."""
    with pytest.raises(ConnectionError, match="401"):
        async with sdk_connect(emulator, key="wrong-key"):
            pass
    async with aiohttp.ClientSession() as http, http.get(raw_url(emulator)) as response:
        assert response.status == 401
        assert KEY not in await response.text()
    assert emulator.connections_accepted == 0


async def test_bearer_token_equal_to_key_is_accepted(emulator: RunningEmulator) -> None:
    """`Authorization: Bearer <key>` is accepted like the api-key header."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(raw_url(emulator), headers=headers) as ws,
    ):
        assert (await ws.receive_json())["type"] == "session.created"
    async with (
        aiohttp.ClientSession() as http,
        http.get(raw_url(emulator), headers={"Authorization": "Bearer nope"}) as response,
    ):
        assert response.status == 401


async def test_missing_query_parameters_are_refused(emulator: RunningEmulator) -> None:
    """No model (or no api-version) fails the handshake with HTTP 400."""
    with pytest.raises(ConnectionError, match="400"):
        async with sdk_connect(emulator, model=None):
            pass
    headers = {"api-key": KEY}
    async with (
        aiohttp.ClientSession() as http,
        http.get(raw_url(emulator, f"model={MODEL}"), headers=headers) as response,
    ):
        assert response.status == 400
        assert "api-version" in await response.text()


async def test_refuse_connections_fault(emulator: RunningEmulator) -> None:
    """With refuse_connections every handshake gets 503, and switching it off restores service."""
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, refuse_connections=True))
    with pytest.raises(ConnectionError, match="503"):
        async with sdk_connect(emulator):
            pass
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False))
    async with sdk_connect(emulator) as conn:
        assert (await conn.recv()).type == "session.created"


# --- session.update ------------------------------------------------------------------------


async def test_session_update_echoes_applied_configuration(emulator: RunningEmulator) -> None:
    """session.updated carries voice, formats, VAD, echo cancellation, noise reduction, ..."""
    async with sdk_connect(emulator) as conn:
        await recv_until(conn, "session.created")
        await conn.session.update(
            session={
                "voice": "en-US-AvaNeural",
                "instructions": "Be brief.",
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.7,
                    "prefix_padding_ms": 200,
                    "silence_duration_ms": 800,
                    "interrupt_response": False,
                    "create_response": True,
                },
                "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
                "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
                "input_audio_transcription": {"model": "whisper-1"},
            },
            event_id="evt-1",
        )
        event = (await recv_until(conn, "session.updated"))[-1]
        assert isinstance(event, ServerEventSessionUpdated)
        session = event.session
        assert session.voice == {"type": "azure-standard", "name": "en-US-AvaNeural"}
        assert session.instructions == "Be brief."
        vad = session.turn_detection
        assert (vad.threshold, vad.prefix_padding_ms, vad.silence_duration_ms) == (0.7, 200, 800)
        assert vad.interrupt_response is False
        assert session.input_audio_echo_cancellation.type == "server_echo_cancellation"
        assert session.input_audio_noise_reduction.type == "azure_deep_noise_suppression"
        assert session.input_audio_transcription.model == "whisper-1"

        await conn.session.update(session={"voice": {"type": "openai", "name": "shimmer"}})
        event = (await recv_until(conn, "session.updated"))[-1]
        assert event.session.voice == {"type": "openai", "name": "shimmer"}
        assert event.session.turn_detection.threshold == 0.7  # earlier fields are kept


@pytest.mark.parametrize(
    ("session", "code", "param"),
    [
        ({"turn_detection": {"type": "server_vad", "threshold": 1.5}}, "invalid_value",
         "session.turn_detection.threshold"),
        ({"turn_detection": {"type": "server_vad", "prefix_padding_ms": -1}}, "invalid_value",
         "session.turn_detection.prefix_padding_ms"),
        ({"turn_detection": {"type": "server_vad", "silence_duration_ms": -20}}, "invalid_value",
         "session.turn_detection.silence_duration_ms"),
        ({"turn_detection": {"type": "clap_detection"}}, "invalid_value",
         "session.turn_detection.type"),
        ({"input_audio_format": "mp3"}, "invalid_value", "session.input_audio_format"),
        ({"input_audio_format": "g711_ulaw", "input_audio_sampling_rate": 16000},
         "invalid_value", "session.input_audio_sampling_rate"),
        ({"output_audio_format": "wav"}, "invalid_value", "session.output_audio_format"),
        ({"voice": {"type": "openai", "name": "nobody"}}, "invalid_value", "session.voice.name"),
        ({"input_audio_noise_reduction": {"type": "magic"}}, "invalid_value",
         "session.input_audio_noise_reduction.type"),
        ({"colour": "blue"}, "unknown_parameter", "session.colour"),
    ],
)  # fmt: skip
async def test_session_update_rejects_invalid_values(
    emulator: RunningEmulator, session: dict[str, Any], code: str, param: str
) -> None:
    """An invalid session.update gets the service's error shape and changes nothing."""
    async with sdk_connect(emulator) as conn:
        await recv_until(conn, "session.created")
        await conn.session.update(session=session, event_id="client-evt-7")
        error = await expect_error(conn)
        assert error.error.type == "invalid_request_error"
        assert error.error.code == code
        assert error.error.param == param
        assert error.error.event_id == "client-evt-7"
        assert error.error.message
        assert error.event_id  # the server's own id for the error event
        await conn.session.update(session={"instructions": "still here"})
        updated = (await recv_until(conn, "session.updated"))[-1]
        assert updated.session.turn_detection.threshold == 0.5
        assert updated.session.input_audio_format == "pcm16"


# --- a full spoken turn --------------------------------------------------------------------


async def test_spoken_turn_is_detected_committed_transcribed_and_echoed(
    emulator: RunningEmulator,
) -> None:
    """Speech on silence gives VAD events at the right positions and an echo of the turn."""
    pcm = make_speech_pcm(SENTENCE, lead_s=1.0, trail_s=1.5)
    speech_start, speech_end = speech_bounds_ms(pcm)
    async with sdk_connect(emulator) as conn:
        await open_session(conn, input_audio_transcription={"model": "whisper-1"})
        await send_pcm(conn, pcm, chunk_ms=20)
        events = await recv_until(conn, "response.done")

    order = [t for t in types_of(events) if not t.endswith(".delta")]
    assert order == [
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "conversation.item.created",
        "response.content_part.added",
        "response.audio.done",
        "response.audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.done",
    ]
    by_type = {e.type: e for e in events}
    started = by_type["input_audio_buffer.speech_started"]
    stopped = by_type["input_audio_buffer.speech_stopped"]
    assert isinstance(started, ServerEventInputAudioBufferSpeechStarted)
    assert isinstance(stopped, ServerEventInputAudioBufferSpeechStopped)
    assert started.audio_start_ms == pytest.approx(speech_start - 300, abs=100)
    assert stopped.audio_end_ms == pytest.approx(speech_end + 500, abs=100)
    assert started.item_id == stopped.item_id == by_type["input_audio_buffer.committed"].item_id

    user_item = events[3].item
    assert isinstance(user_item, ResponseMessageItem)
    assert user_item.role == "user"
    assert user_item.id == started.item_id
    assert user_item.content[0].type == "input_audio"
    turn_s = (stopped.audio_end_ms - started.audio_start_ms) / 1000
    transcription = by_type["conversation.item.input_audio_transcription.completed"]
    assert transcription.item_id == started.item_id
    assert transcription.content_index == 0
    assert transcription.transcript == f"[emulator heard {turn_s:.2f} s of audio]"

    # The agent's voice is the turn echoed back: same duration, within one 100 ms chunk.
    assert audio_ms(events) == pytest.approx(stopped.audio_end_ms - started.audio_start_ms, abs=100)
    done = by_type["response.done"]
    assert isinstance(done, ServerEventResponseDone)
    assert done.response.status == "completed"
    assert done.response.usage.total_tokens > 0
    transcript = by_type["response.audio_transcript.done"].transcript
    assert transcript == f"This is the voicebridge emulator echoing {turn_s:.2f} s of your audio."
    deltas = "".join(e.delta for e in events if e.type == "response.audio_transcript.delta")
    assert deltas == transcript
    response_id = done.response.id
    assert all(e.response_id == response_id for e in events if e.type.startswith("response.") and
               e.type not in ("response.created", "response.done"))  # fmt: skip
    assert done.response.output[0].id == by_type["response.output_item.added"].item.id


async def test_transcription_only_when_configured(emulator: RunningEmulator) -> None:
    """Without input_audio_transcription no transcription event is sent, as in the service."""
    pcm = make_speech_pcm("Good morning", lead_s=0.5, trail_s=1.0)
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await send_pcm(conn, pcm)
        events = await recv_until(conn, "response.done")
    assert "conversation.item.input_audio_transcription.completed" not in types_of(events)


async def test_create_response_false_waits_for_response_create(emulator: RunningEmulator) -> None:
    """With create_response off a turn is committed but answered only on response.create."""
    pcm = make_speech_pcm("Good morning", lead_s=0.5, trail_s=1.0)
    async with sdk_connect(emulator) as conn:
        await open_session(conn, turn_detection={"type": "server_vad", "create_response": False})
        await send_pcm(conn, pcm)
        events = await recv_until(conn, "conversation.item.created")
        await conn.response.create()
        events = await recv_until(conn, "response.done")
        assert "input_audio_buffer.speech_started" not in types_of(events)
        assert events[0].type == "response.created"
        assert "echoing" in events[-1].response.output[0].content[0].transcript


async def test_long_utterance_is_ended_by_the_server() -> None:
    """An utterance longer than max_utterance_s is committed at that length (bounded memory)."""
    options = EmulatorOptions(api_key=KEY, realtime=False, max_utterance_s=1.0)
    tone = greeting_audio() * 3  # 2.7 s without a 500 ms pause
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await open_session(conn)
        await send_pcm(conn, tone + silence_pcm(1.0))
        events = await recv_until(conn, "input_audio_buffer.speech_stopped")
        started, stopped = events[-2], events[-1]
        # The limit is checked after each append, so the turn ends within one 100 ms append.
        assert 1000 <= stopped.audio_end_ms - started.audio_start_ms <= 1100


# --- responses -----------------------------------------------------------------------------


async def test_response_create_without_input_greets(emulator: RunningEmulator) -> None:
    """response.create with nothing to answer plays a short greeting chime."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        events = await recv_until(conn, "response.done")
    transcript = events[-1].response.output[0].content[0].transcript
    assert transcript.startswith("Hello, this is the voicebridge emulator")
    assert audio_ms(events) == pytest.approx(duration_ms(greeting_audio()), abs=1)


async def test_text_item_is_answered_with_proportional_audio(emulator: RunningEmulator) -> None:
    """A typed message is answered "You said: ..." with audio as long as the answer."""
    lengths = []
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        for text in ("Hi.", LONG_TEXT):
            await conn.conversation.item.create(item=user_text(text))
            created = (await recv_until(conn, "conversation.item.created"))[-1]
            assert created.item.role == "user"
            await conn.response.create()
            events = await recv_until(conn, "response.done")
            assert events[-1].response.output[0].content[0].transcript == f"You said: {text}"
            assert events[-1].response.output[0].role == "assistant"
            lengths.append(audio_ms(events))
    assert 0 < lengths[0] < lengths[1] / 3


async def test_text_only_response(emulator: RunningEmulator) -> None:
    """response.create with modalities ["text"] streams response.text.* and no audio."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.conversation.item.create(item=user_text("ping"))
        await conn.response.create(response={"modalities": ["text"]})
        events = await recv_until(conn, "response.done")
    kinds = types_of(events)
    assert "response.audio.delta" not in kinds
    assert "response.text.delta" in kinds
    assert events[kinds.index("response.text.done")].text == "You said: ping"


async def test_response_cancel_stops_the_response() -> None:
    """response.cancel stops the audio at once and ends with status cancelled."""
    options = EmulatorOptions(api_key=KEY, realtime=True)
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.conversation.item.create(item=user_text(LONG_TEXT))
        await conn.response.create()
        before = await recv_until(conn, "response.audio.delta")
        response_id = before[-1].response_id
        await conn.response.cancel(response_id=response_id)
        after = await recv_until(conn, "response.done")
        done = after[-1]
        assert done.response.status == "cancelled"
        assert done.response.status_details.reason == "client_cancelled"
        assert done.response.output[0].status == "incomplete"
        # Real-time pacing means well under the ~6 s of answer audio was sent.
        assert audio_ms(before + after) < 1000
        # Nothing of that response arrives after response.done.
        await conn.session.update(session={"instructions": "after"})
        assert types_of(await recv_until(conn, "session.updated")) == ["session.updated"]


async def test_response_cancel_without_active_response_is_an_error(
    emulator: RunningEmulator,
) -> None:
    """Cancelling with nothing active gets response_cancel_not_active."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.cancel(event_id="c1")
        error = await expect_error(conn)
        assert error.error.code == "response_cancel_not_active"
        assert error.error.event_id == "c1"


async def test_response_create_while_active_is_an_error(emulator: RunningEmulator) -> None:
    """A second response.create while one is in progress is refused, as by the service."""
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, first_audio_delay_s=30))
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        await recv_until(conn, "response.content_part.added")
        await conn.response.create()
        error = await expect_error(conn)
        assert error.error.code == "conversation_already_has_active_response"
        await conn.response.cancel()
        assert (await recv_until(conn, "response.done"))[-1].response.status == "cancelled"


async def test_truncate_delete_and_retrieve_items(emulator: RunningEmulator) -> None:
    """Truncation within the sent audio works; 0, too far or unknown items are errors."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        done = (await recv_until(conn, "response.done"))[-1]
        item_id = done.response.output[0].id
        sent_ms = int(duration_ms(greeting_audio()))

        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=400)
        truncated = (await recv_until(conn, "conversation.item.truncated"))[-1]
        assert (truncated.item_id, truncated.content_index, truncated.audio_end_ms) == (
            item_id,
            0,
            400,
        )

        for end_ms in (0, sent_ms + 1):
            await conn.conversation.item.truncate(
                item_id=item_id, content_index=0, audio_end_ms=end_ms
            )
            error = await expect_error(conn)
            assert error.error.code == "item_truncate_invalid_audio_end_ms"
            assert error.error.param == "audio_end_ms"
        await conn.conversation.item.truncate(item_id="item_nope", content_index=0, audio_end_ms=10)
        assert (await expect_error(conn)).error.code == "item_not_found"

        await conn.conversation.item.retrieve(item_id=item_id)
        retrieved = (await recv_until(conn, "conversation.item.retrieved"))[-1]
        assert retrieved.item.id == item_id
        await conn.conversation.item.delete(item_id=item_id)
        assert (await recv_until(conn, "conversation.item.deleted"))[-1].item_id == item_id
        await conn.conversation.item.delete(item_id=item_id)
        assert (await expect_error(conn)).error.code == "item_not_found"


async def test_manual_commit_and_clear(emulator: RunningEmulator) -> None:
    """Without turn detection audio waits for commit; clear empties it; empty commits fail."""
    pcm = make_speech_pcm("One two three", lead_s=0.2, trail_s=0.2)
    async with sdk_connect(emulator) as conn:
        await open_session(
            conn, turn_detection=None, input_audio_transcription={"model": "whisper-1"}
        )
        await send_pcm(conn, pcm)
        await conn.input_audio_buffer.commit()
        events = await recv_until(conn, "conversation.item.input_audio_transcription.completed")
        assert [t for t in types_of(events) if not t.endswith(".delta")] == [
            "input_audio_buffer.committed",
            "conversation.item.created",
            "conversation.item.input_audio_transcription.completed",
        ]
        await conn.response.create()
        response = await recv_until(conn, "response.done")
        assert audio_ms(response) == pytest.approx(duration_ms(pcm), abs=1)

        await send_pcm(conn, pcm)
        await conn.input_audio_buffer.clear()
        assert types_of(await recv_until(conn, "input_audio_buffer.cleared")) == [
            "input_audio_buffer.cleared"
        ]
        await conn.input_audio_buffer.commit(event_id="commit-2")
        error = await expect_error(conn)
        assert error.error.code == "input_audio_buffer_commit_empty"
        assert error.error.event_id == "commit-2"


async def test_commit_during_speech_with_server_vad_responds(emulator: RunningEmulator) -> None:
    """A manual commit in the middle of speech commits it and (create_response) answers it."""
    pcm = make_speech_pcm(SENTENCE, lead_s=0.5)
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await send_pcm(conn, pcm)
        started = (await recv_until(conn, "input_audio_buffer.speech_started"))[-1]
        await conn.input_audio_buffer.commit()
        events = await recv_until(conn, "response.done")
        assert events[0].type == "input_audio_buffer.committed"
        assert events[0].item_id == started.item_id
        assert audio_ms(events) == pytest.approx(duration_ms(pcm) - started.audio_start_ms, abs=100)


# --- barge-in ------------------------------------------------------------------------------


async def test_speech_during_a_response_cancels_it() -> None:
    """Barge-in: speech while the agent talks stops its audio and cancels the response."""
    options = EmulatorOptions(api_key=KEY, realtime=True)
    pcm = make_speech_pcm("Stop, wait a moment.", trail_s=1.0)
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.conversation.item.create(item=user_text(LONG_TEXT))
        await conn.response.create()
        first = await recv_until(conn, "response.audio.delta")
        await send_pcm(conn, pcm)
        events = await recv_until(conn, "response.done")
        kinds = types_of(events)
        assert kinds.index("input_audio_buffer.speech_started") < kinds.index("response.done")
        done = events[-1]
        assert done.response.id == first[-1].response_id
        assert done.response.status == "cancelled"
        assert done.response.status_details.reason == "turn_detected"
        # The interrupting turn is answered next.
        events = await recv_until(conn, "response.done", within_s=15)
        assert "input_audio_buffer.speech_stopped" in types_of(events)
        assert events[-1].response.status == "completed"


async def test_speech_does_not_cancel_when_interrupt_response_is_off() -> None:
    """With interrupt_response false the response plays on, and the turn is answered after."""
    options = EmulatorOptions(api_key=KEY, realtime=True)
    pcm = make_speech_pcm("Stop", trail_s=0.6)
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await open_session(conn, turn_detection={"type": "server_vad", "interrupt_response": False})
        await conn.response.create()
        await recv_until(conn, "response.audio.delta")
        await send_pcm(conn, pcm)
        events = await recv_until(conn, "response.done")
        assert "input_audio_buffer.speech_started" in types_of(events)
        assert events[-1].response.status == "completed"
        events = await recv_until(conn, "response.done")
        assert "echoing" in events[-1].response.output[0].content[0].transcript


# --- bad input -----------------------------------------------------------------------------


async def test_bad_frames_get_errors_and_the_socket_stays_open(emulator: RunningEmulator) -> None:
    """Malformed JSON, non-objects, unknown types and bad base64 each get an error event."""
    frames = {
        "{not json": "invalid_json",
        "[1, 2, 3]": "invalid_event",
        '{"event_id": "x"}': "missing_required_parameter",
        '{"type": "session.explode", "event_id": "e9"}': "invalid_value",
        '{"type": "input_audio_buffer.append", "audio": "***"}': "invalid_value",
        '{"type": "input_audio_buffer.append", "audio": "AAAA"}': "invalid_value",  # 3 bytes
        '{"type": "input_audio_buffer.append"}': "missing_required_parameter",
    }
    headers = {"api-key": KEY}
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(raw_url(emulator), headers=headers) as ws,
    ):
        assert (await ws.receive_json())["type"] == "session.created"
        for frame, code in frames.items():
            await ws.send_str(frame)
            event = orjson.loads(await ws.receive_str())
            assert event["type"] == "error", frame
            assert event["error"]["code"] == code, frame
            assert event["error"]["type"] == "invalid_request_error"
        await ws.send_str('{"type": "input_audio_buffer.clear"}')
        assert (await ws.receive_json())["type"] == "input_audio_buffer.cleared"


async def test_unknown_event_error_names_the_client_event(emulator: RunningEmulator) -> None:
    """The error for an unknown event type carries the client's event_id and param 'type'."""
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.send({"type": "session.explode", "event_id": "e9"})
        error = await expect_error(conn)
        assert (error.error.code, error.error.param, error.error.event_id) == (
            "invalid_value",
            "type",
            "e9",
        )


# --- fault injection -----------------------------------------------------------------------


async def test_close_after_s_drops_the_connection() -> None:
    """close_after_s aborts the socket (no close frame) that many seconds after connect."""
    options = EmulatorOptions(api_key=KEY, realtime=False, close_after_s=0.3)
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await recv_until(conn, "session.created")
        started = time.monotonic()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                await conn.recv()
        assert 0.2 < time.monotonic() - started < 2.0
        async with asyncio.timeout(5):
            await emulator.wait_connections(0)


async def test_close_after_events_drops_the_connection() -> None:
    """close_after_events aborts the socket right after the Nth server event."""
    options = EmulatorOptions(api_key=KEY, realtime=False, close_after_events=3)
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await conn.session.update(session={"instructions": "a"})
        await conn.session.update(session={"instructions": "b"})
        received = []
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    received.append((await conn.recv()).type)
        assert received == ["session.created", "session.updated", "session.updated"]


async def test_first_audio_delay(emulator: RunningEmulator) -> None:
    """first_audio_delay_s holds back the first audio delta of each response."""
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, first_audio_delay_s=0.4))
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        await recv_until(conn, "response.created")
        started = time.monotonic()
        await recv_until(conn, "response.audio.delta")
        assert time.monotonic() - started >= 0.35


async def test_error_mid_response(emulator: RunningEmulator) -> None:
    """error_mid_response sends a server_error between audio deltas; the response completes."""
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, error_mid_response=True))
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        events = await recv_until(conn, "response.done")
    kinds = types_of(events)
    error = events[kinds.index("error")]
    assert isinstance(error, ServerEventError)
    assert error.error.type == "server_error"
    assert error.error.code == "emulator_injected_fault"
    deltas = [i for i, kind in enumerate(kinds) if kind == "response.audio.delta"]
    assert deltas[0] < kinds.index("error") < deltas[-1]
    assert events[-1].response.status == "completed"


async def test_mirror_mode_echoes_each_append(emulator: RunningEmulator) -> None:
    """In mirror mode every append is answered by one delta with the same bytes, no VAD."""
    emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, mirror=True))
    pcm = make_speech_pcm(SENTENCE, lead_s=0.5, trail_s=1.0)
    frames = [pcm[i : i + 960] for i in range(0, len(pcm), 960)]
    async with sdk_connect(emulator) as conn:
        await recv_until(conn, "session.created")
        for frame in frames:
            await conn.input_audio_buffer.append(audio=base64.b64encode(frame).decode())
        events = [await conn.recv() for _ in frames]
    assert {e.type for e in events} == {"response.audio.delta"}
    assert [e.delta for e in events] == frames
    assert len({e.response_id for e in events}) == 1


async def test_realtime_pacing() -> None:
    """With realtime on, a response takes about as long to arrive as it lasts."""
    options = EmulatorOptions(api_key=KEY, realtime=True)
    async with await start_emulator(options) as emulator, sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        await recv_until(conn, "response.audio.delta")
        started = time.monotonic()
        await recv_until(conn, "response.done")
        expected = (duration_ms(greeting_audio()) - 100) / 1000
        assert time.monotonic() - started == pytest.approx(expected, abs=0.25)


# --- lifecycle -----------------------------------------------------------------------------


async def test_emulator_close_closes_sockets_with_1001() -> None:
    """Closing the emulator closes live sockets promptly with 1001 (going away)."""
    emulator = await start_emulator(EmulatorOptions(api_key=KEY, realtime=True))
    async with sdk_connect(emulator) as conn:
        await open_session(conn)
        await conn.response.create()
        await recv_until(conn, "response.audio.delta")
        started = time.monotonic()
        closing = asyncio.create_task(emulator.close())
        with pytest.raises(ConnectionClosed) as raised:
            await recv_until(conn, "never")
        assert raised.value.code == 1001
        async with asyncio.timeout(5):
            await closing
        assert time.monotonic() - started < 2.0
    assert emulator.connections == 0


async def test_running_emulator_context_manager() -> None:
    """running_emulator serves inside the block and is closed after it."""
    async with running_emulator(EmulatorOptions(api_key=KEY)) as emulator:
        async with sdk_connect(emulator) as conn:
            assert (await conn.recv()).type == "session.created"
        url = emulator.url
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(url.replace("ws", "http", 1)):
            pass


async def test_client_disconnect_cancels_the_player() -> None:
    """When the client goes away mid-response, the player task is cancelled and awaited."""
    options = EmulatorOptions(api_key=KEY, realtime=True)
    async with await start_emulator(options) as emulator:
        async with sdk_connect(emulator) as conn:
            await open_session(conn)
            await conn.response.create()
            await recv_until(conn, "response.audio.delta")
        async with asyncio.timeout(5):
            await emulator.wait_connections(0)
        players = [t for t in asyncio.all_tasks() if t.get_name().startswith("emulator-")]
        assert players == []


# --- every event matches the SDK's models --------------------------------------------------


def _check_typed(payload: dict[str, Any]) -> ServerEvent:
    event = ServerEvent._deserialize(payload, [])
    expected = ServerEvent.__mapping__[payload["type"]]
    assert type(event) is expected, payload["type"]
    fields = {f._rest_name: attr for attr, f in type(event)._attr_to_rest_field.items()}
    assert set(payload) <= set(fields), (payload["type"], set(payload) - set(fields))
    for attr in fields.values():
        getattr(event, attr)  # deserializes nested models and base64 fields
    return event


async def test_every_server_event_parses_into_its_sdk_model(emulator: RunningEmulator) -> None:
    """Each raw frame the emulator sends deserializes into the matching typed ServerEvent."""
    pcm = make_speech_pcm(SENTENCE, lead_s=0.5, trail_s=1.0)
    frames: list[dict[str, Any]] = []

    async def collect(conn: VoiceLiveConnection, until: str) -> dict[str, Any]:
        async with asyncio.timeout(10):
            while True:
                payload = orjson.loads(await conn.recv_bytes())
                frames.append(payload)
                if payload["type"] == until:
                    return payload

    async with sdk_connect(emulator) as conn:
        await collect(conn, "session.created")
        await conn.session.update(session={"input_audio_transcription": {"model": "whisper-1"}})
        await collect(conn, "session.updated")
        await send_pcm(conn, pcm)
        done = await collect(conn, "response.done")
        item_id = done["response"]["output"][0]["id"]
        await conn.conversation.item.truncate(item_id=item_id, content_index=0, audio_end_ms=100)
        await collect(conn, "conversation.item.truncated")
        await conn.conversation.item.retrieve(item_id=item_id)
        await collect(conn, "conversation.item.retrieved")
        await conn.conversation.item.create(item=user_text("hi"))
        await conn.response.create(response={"modalities": ["text"]})
        await collect(conn, "response.done")
        await conn.input_audio_buffer.clear()
        await collect(conn, "input_audio_buffer.cleared")
        await conn.output_audio_buffer.clear()
        await collect(conn, "output_audio_buffer.cleared")
        await conn.conversation.item.delete(item_id=item_id)
        await collect(conn, "conversation.item.deleted")
        emulator.set_options(EmulatorOptions(api_key=KEY, realtime=False, first_audio_delay_s=30))
        await conn.response.create()
        await collect(conn, "response.content_part.added")
        await conn.response.cancel()
        await collect(conn, "response.done")
        await conn.response.cancel()
        await collect(conn, "error")

    seen = set()
    for payload in frames:
        _check_typed(payload)
        seen.add(payload["type"])
    assert seen >= {
        "session.created", "session.updated", "error",
        "input_audio_buffer.speech_started", "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed", "input_audio_buffer.cleared",
        "conversation.item.created", "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.truncated", "conversation.item.retrieved", "conversation.item.deleted",
        "response.created", "response.output_item.added", "response.content_part.added",
        "response.audio.delta", "response.audio_transcript.delta", "response.audio.done",
        "response.audio_transcript.done", "response.text.delta", "response.text.done",
        "response.content_part.done", "response.output_item.done", "response.done",
        "output_audio_buffer.cleared",
    }  # fmt: skip


# --- command line --------------------------------------------------------------------------


def test_cli_flags_build_options() -> None:
    """add_emulator_arguments / options_from_args map every flag onto EmulatorOptions."""
    parser = argparse.ArgumentParser()
    add_emulator_arguments(parser)
    args = parser.parse_args(
        [
            "--api-key", "secret-xyz", "--fast", "--mirror", "--refuse", "--close-after-s", "2.5",
            "--close-after-events", "7", "--first-audio-delay-s", "0.5", "--error-mid-response",
            "--chunk-ms", "40", "--bearer-token", "tok-1", "--bearer-token", "tok-2",
            "--transcription-after-response", "--fail-transcription", "--response-outcome",
            "incomplete", "--incomplete-reason", "max_output_tokens", "--session-warning", "hm",
        ]
    )  # fmt: skip
    assert options_from_args(args) == EmulatorOptions(
        api_key="secret-xyz",
        realtime=False,
        mirror=True,
        refuse_connections=True,
        close_after_s=2.5,
        close_after_events=7,
        first_audio_delay_s=0.5,
        error_mid_response=True,
        chunk_ms=40,
        bearer_tokens=("tok-1", "tok-2"),
        transcription_after_response=True,
        fail_transcription=True,
        response_outcome="incomplete",
        incomplete_reason="max_output_tokens",
        session_warning="hm",
    )
    assert options_from_args(parser.parse_args([])) == EmulatorOptions()
    assert "secret-xyz" not in repr(options_from_args(args))
    assert "tok-1" not in repr(options_from_args(args))


def test_options_validate_values() -> None:
    """Out-of-range options are refused when built."""
    with pytest.raises(ValueError, match="close_after_s"):
        EmulatorOptions(close_after_s=0)
    with pytest.raises(ValueError, match="first_audio_delay_s"):
        EmulatorOptions(first_audio_delay_s=-1)
    with pytest.raises(ValueError, match="response_outcome"):
        EmulatorOptions(response_outcome="exploded")
