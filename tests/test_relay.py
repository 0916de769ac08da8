"""The voice relay end to end: a client on /ws/voice, the real SDK, the emulator upstream."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import KEY, MakeClient, StartEmulator, make_settings, relay_settings
from tests.speech import make_speech_pcm
from tests.voice_client import is_msg, open_voice, silence, started, tone
from voicebridge import errors
from voicebridge.app import STATE
from voicebridge.emulator import RunningEmulator
from voicebridge.relay import Session


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """About two seconds of real speech with silence either side, PCM16 24 kHz mono."""
    path = tmp_path_factory.mktemp("speech") / "hello.raw"
    pcm = make_speech_pcm("Hello, I would like to hear about your offer.", path)
    return silence(600) + pcm + silence(1500)


async def no_sessions_left(app: web.Application, emu: RunningEmulator) -> None:
    """Wait until the app holds no session and the emulator no connection."""
    async with asyncio.timeout(10):
        while app[STATE].sessions or emu.connections:
            await asyncio.sleep(0.02)
    assert await app[STATE].registry.count() == 0


async def test_full_spoken_turn(
    start_emu: StartEmulator, make_client: MakeClient, speech: bytes
) -> None:
    """Speech in gives listening, processing, the user transcript, agent audio, then ready."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    started_msg = voice.messages("session_started")[0]
    assert started_msg["session_id"] and started_msg["backend"] == "azure"
    await voice.send_audio(speech)
    await voice.until_type("agent_transcript")
    await voice.until_type("status", status="ready")
    statuses = voice.statuses()
    assert statuses[:5] == ["ready", "listening", "processing", "agent_speaking", "ready"]
    kinds = [e[1]["type"] if e[0] == "json" else e[0] for e in voice.events]
    assert kinds.index("user_transcript") < kinds.index("audio")
    first_audio = kinds.index("audio")
    # agent_speaking, then the response's id, then its voice.
    assert kinds[first_audio - 2 : first_audio] == ["status", "audio_start"]
    assert voice.messages("audio_start")[0]["response_id"].startswith("resp_")
    # The emulator echoes the utterance: the agent's audio is about as long as the speech.
    assert voice.audio_bytes() > 0.5 * 48 * 1000
    assert "heard" in voice.messages("user_transcript")[0]["text"]
    await voice.ws.close()
    await no_sessions_left(client.app, emu)


async def test_proactive_greeting(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """With ENABLE_PROACTIVE_GREETING the agent speaks first, with no user input."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, ENABLE_PROACTIVE_GREETING="true"))
    voice = await started(client)
    await voice.until_type("agent_transcript")
    assert voice.audio_bytes() > 0
    assert "agent_speaking" in voice.statuses()


async def test_text_message_is_answered(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """A typed message becomes a user item and the agent answers it."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "What does the premium plan cost?"})
    answer = await voice.until_type("agent_transcript")
    assert "premium plan" in answer["text"]
    assert voice.audio_bytes() > 0


@pytest.mark.parametrize(
    ("frame", "code", "words"),
    [
        ("{not json", "bad_json", "not valid JSON"),
        ("[1, 2]", "bad_message", "JSON object"),
        ('{"type": "dance"}', "unknown_type", "dance"),
        ('{"no_type": 1}', "bad_message", "no 'type'"),
        ('{"type": "audio"}', "bad_audio", "base64"),
        ('{"type": "audio", "audio": "***"}', "bad_audio", "not valid base64"),
        ('{"type": "text", "text": ""}', "bad_message", "non-empty"),
    ],
)
async def test_bad_input_gets_an_error_and_the_session_goes_on(
    start_emu: StartEmulator, make_client: MakeClient, frame: str, code: str, words: str
) -> None:
    """Each kind of bad input is answered with a clear error; ping still works after."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_str(frame)
    error = await voice.until_type("error")
    assert error["code"] == code
    assert words in error["message"]
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")
    assert not voice.ws.closed


async def test_odd_frames_lose_no_sample(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """Odd-length binary frames are re-aligned: every byte reaches the upstream in order."""
    emu = await start_emu(mirror=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    sent = bytes(range(256)) * 8
    pieces = [sent[:3], sent[3:100], sent[100:101], sent[101:1001], sent[1001:]]
    for piece in pieces:
        await voice.ws.send_bytes(piece)
    b64 = base64.b64encode(b"\x01\x02\x03").decode()  # odd base64 audio is aligned too
    await voice.ws.send_json({"type": "audio", "audio": b64})
    expected = sent + b"\x01\x02"
    got = b""
    while len(got) < len(expected):
        kind, data = await voice.next()
        if kind == "audio":
            got += data
    assert got == expected
    odd = voice.messages("error")
    assert [e["code"] for e in odd] == ["odd_frame"]  # told once, not per frame


async def test_typed_messages_are_rate_limited(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Typed messages beyond CLIENT_TEXT_PER_MIN get rate_limited; the session goes on."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, CLIENT_TEXT_PER_MIN="4"))
    voice = await started(client)
    for n in range(3):
        await voice.ws.send_json({"type": "text", "text": f"message number {n}"})
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")
    limited = [e for e in voice.messages("error") if e["code"] == "rate_limited"]
    assert len(limited) == 2
    assert "a minute" in limited[0]["message"]
    await voice.until_type("agent_transcript")


async def test_barge_in_clears_audio_and_nothing_of_it_follows(
    start_emu: StartEmulator, make_client: MakeClient, speech: bytes
) -> None:
    """Speaking over the agent: clear_audio, then no audio of that response reaches the client."""
    emu = await start_emu(realtime=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.send_audio(speech)
    # Let the agent start speaking, then talk over it.
    await voice.until(lambda e: e[0] == "audio")
    await voice.send_audio(speech)
    await voice.until(lambda e: is_msg(e, "clear_audio"))
    # Everything after clear_audio until the next answer starts must be silence.
    after = await voice.until(lambda e: is_msg(e, "status", status="agent_speaking"), timeout=30)
    assert not [e for e in after if e[0] == "audio"]
    assert is_msg(after[0], "status", status="listening")
    errors = voice.messages("error")
    assert errors == [], errors  # response_cancel_not_active races are not shown
    session = next(iter(client.app[STATE].sessions.values()))
    assert session.stats.barge_ins == 1


async def test_upstream_refused(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """An upstream that refuses: the client is told why (no key) and closed with 1011."""
    emu = await start_emu(refuse_connections=True)
    client = await make_client(relay_settings(emu))
    voice = await open_voice(client)
    error = await voice.until_type("error")
    assert error["code"] == "upstream_connect_failed"
    assert "503" in error["message"]
    assert KEY not in json.dumps(error)
    assert await voice.until_closed() == 1011
    await no_sessions_left(client.app, emu)


async def test_upstream_wrong_key(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """A rejected API key is reported as such, without the key."""
    emu = await start_emu()
    settings = relay_settings(emu)
    client = await make_client(
        make_settings(
            VOICELIVE_BACKEND="azure",
            AZURE_OPENAI_ENDPOINT=emu.url,
            AZURE_OPENAI_KEY="wrong-key-42",
            AZURE_OPENAI_DEPLOYMENT=settings.azure_openai_deployment,
        )
    )
    voice = await open_voice(client)
    error = await voice.until_type("error")
    assert "401" in error["message"] and "wrong-key-42" not in error["message"]
    # Permanent until the operator fixes the key: a code clients do not retry on.
    assert error["code"] == "upstream_auth_rejected"
    assert not errors.CODES[error["code"]].retry
    assert await voice.until_closed() == 1011
    health = await (await client.get("/health")).json()
    assert health["upstream"]["consecutive_connect_failures"] == 1


async def test_unreadable_instructions_end_the_session_with_a_permanent_code(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path
) -> None:
    """A prompt file deleted after start-up: the caller is told once, with a code clients
    do not retry on (retrying would fail the same way), and the operator's log says why."""
    emu = await start_emu()
    prompt = tmp_path / "prompt.md"
    prompt.write_text("Be brief.")
    client = await make_client(relay_settings(emu, AGENT_INSTRUCTIONS_FILE=str(prompt)))
    prompt.unlink()
    voice = await open_voice(client)
    error = await voice.until_type("error")
    assert error["code"] == "server_misconfigured"
    assert not errors.CODES[error["code"]].retry
    assert await voice.until_closed() == 1011


async def test_upstream_connect_timeout(make_client: MakeClient) -> None:
    """An upstream that accepts TCP but never answers times out: error, close 1011."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = await make_client(
            make_settings(
                VOICELIVE_BACKEND="azure",
                AZURE_OPENAI_ENDPOINT=f"ws://127.0.0.1:{port}",
                AZURE_OPENAI_KEY=KEY,
                AZURE_OPENAI_DEPLOYMENT="x",
                UPSTREAM_CONNECT_TIMEOUT_S="0.5",
            )
        )
        voice = await open_voice(client)
        error = await voice.until_type("error")
        assert error["code"] == "upstream_connect_failed"
        assert "did not answer within 0.5 s" in error["message"]
        assert await voice.until_closed() == 1011
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_upstream_drops_mid_response(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """With reconnection off, the upstream vanishing mid-response: told, closed with 1011."""
    emu = await start_emu(close_after_events=12, realtime=True)
    client = await make_client(relay_settings(emu, UPSTREAM_RECONNECT_S="0"))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Tell me a long story please."})
    error = await voice.until_type("error")
    assert error["code"] == "upstream_closed"
    assert await voice.until_closed() == 1011
    await no_sessions_left(client.app, emu)


async def test_upstream_error_mid_response_is_relayed(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A service error during a response reaches the client and the session goes on."""
    emu = await start_emu(error_mid_response=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Hello there, how are you today?"})
    error = await voice.until_type("error")
    assert error["code"] and error["message"]
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")


async def test_client_vanishes_mid_response(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A client that disconnects mid-response leaves no session or upstream behind."""
    emu = await start_emu(realtime=True)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Tell me a long story please."})
    await voice.until(lambda e: e[0] == "audio")
    assert emu.connections == 1
    await voice.ws.close()
    await no_sessions_left(client.app, emu)


async def test_instructions_file_is_read_per_session(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path
) -> None:
    """Editing the instructions file changes the next session without a restart."""
    emu = await start_emu()
    prompt = tmp_path / "agent.md"
    prompt.write_text("first prompt")
    client = await make_client(relay_settings(emu, AGENT_INSTRUCTIONS_FILE=str(prompt)))
    voice = await started(client)
    config = emu.last_session_config()
    assert config is not None
    assert config["instructions"] == "first prompt"
    await voice.ws.close()
    prompt.write_text("second prompt")
    await started(client)
    config = emu.last_session_config()
    assert config is not None
    assert config["instructions"] == "second prompt"


@pytest.mark.parametrize(
    ("voice", "kind"), [("alloy", "openai"), ("en-US-AvaNeural", "azure-standard")]
)
async def test_session_is_configured_from_settings(
    start_emu: StartEmulator, make_client: MakeClient, voice: str, kind: str
) -> None:
    """The voice, VAD settings, audio processing and transcription reach the service."""
    emu = await start_emu()
    client = await make_client(
        relay_settings(
            emu,
            VOICE_NAME=voice,
            VAD_THRESHOLD="0.65",
            VAD_PREFIX_PADDING_MS="250",
            VAD_SILENCE_DURATION_MS="700",
        )
    )
    await started(client)
    config = emu.last_session_config()
    assert config is not None
    assert config["voice"]["type"] == kind and config["voice"]["name"] == voice
    vad = config["turn_detection"]
    assert (vad["type"], vad["threshold"], vad["prefix_padding_ms"]) == ("server_vad", 0.65, 250)
    assert vad["silence_duration_ms"] == 700 and vad["interrupt_response"] is True
    assert config["input_audio_noise_reduction"]["type"] == "azure_deep_noise_suppression"
    assert config["input_audio_echo_cancellation"]["type"] == "server_echo_cancellation"
    assert config["input_audio_transcription"]["model"]
    assert (config["input_audio_format"], config["output_audio_format"]) == ("pcm16", "pcm16")


async def test_barge_in_after_the_response_was_fully_sent(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Like Azure, all audio arrives early: speaking over it still clears and truncates."""
    emu = await start_emu(realtime=False)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Tell me all about the offer today."})
    await voice.until_type("status", status="ready")  # response.done: audio all sent
    sent_ms = voice.audio_bytes() // 48
    assert sent_ms > 1000
    # The client says it has played 400 ms so far; then the caller talks over the agent.
    await voice.ws.send_json({"type": "playback", "played_ms": 400})
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")
    await voice.send_audio(silence(100) + tone(600) + silence(700))
    await voice.until_type("clear_audio")
    async with asyncio.timeout(5):
        while emu.event_count("conversation.item.truncated") == 0:
            await asyncio.sleep(0.01)
    truncated = emu.last_event("conversation.item.truncated")
    assert truncated is not None
    # What was heard: the report plus the time since, never all that was sent.
    assert 400 <= truncated["audio_end_ms"] < sent_ms
    assert voice.messages("error") == []


async def test_speaking_before_the_agent_makes_a_sound(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Talking over a response that has no audio yet cancels it; nothing to clear or cut."""
    emu = await start_emu(realtime=False, first_audio_delay_s=2.0)
    client = await make_client(relay_settings(emu))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Tell me all about the offer today."})
    async with asyncio.timeout(5):
        while emu.event_count("response.created") == 0:
            await asyncio.sleep(0.01)
    await voice.send_audio(tone(600) + silence(700))
    await voice.until_type("status", status="listening")
    async with asyncio.timeout(5):
        while (emu.last_event("response.done") or {}).get("response", {}).get("status") != (
            "cancelled"
        ):
            await asyncio.sleep(0.01)
    assert not voice.messages("clear_audio")
    assert emu.event_count("conversation.item.truncated") == 0
    assert emu.event_count("conversation.item.deleted") == 0
    assert voice.messages("error") == []


class _BuggySession(Session):
    """A relay whose handling of response.created has a bug (a stand-in for any bug)."""

    async def _on_response_created(self, event: Any) -> None:
        raise ValueError("a bug in the relay, not a bad frame")


async def test_bug_in_event_handling_ends_the_session_as_internal_error(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A relay bug is not mistaken for a bad upstream frame: internal_error, close 1011."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu))
    client.app[STATE].session_class = _BuggySession
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Hello?"})
    error = await voice.until_type("error")
    assert error["code"] == "internal_error"
    assert await voice.until_closed() == 1011
    await no_sessions_left(client.app, emu)
