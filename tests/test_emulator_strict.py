"""The emulator refuses what Voice Live refuses and behaves as it does where clients depend
on it: api-versions, agents and Entra tokens at the handshake; models, voices, turn
detection and transcription in session.update; asynchronous transcription, failed and
incomplete responses, warnings. Driven by the real SDK; every new event is checked
against the SDK's deserializer."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import orjson
import pytest
from azure.ai.voicelive.aio import ConnectionError, VoiceLiveConnection, connect
from azure.ai.voicelive.models import InputTextContentPart, ServerEvent, UserMessageItem
from azure.core.credentials import AccessToken, AzureKeyCredential

from tests.voice_client import silence, tone
from voicebridge import voicelive
from voicebridge.emulator import EmulatorOptions, RunningEmulator, start_emulator

KEY = "strict-key-1"
TOKEN = "entra-token-abc"
VERSION = "2026-07-15"


class LocalToken:
    """A local AsyncTokenCredential handing out one token."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> LocalToken:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


@pytest.fixture
async def emulator() -> AsyncIterator[RunningEmulator]:
    options = EmulatorOptions(api_key=KEY, realtime=False, bearer_tokens=(TOKEN,))
    async with await start_emulator(options) as running:
        yield running


def sdk(
    emulator: RunningEmulator,
    model: str | None = "gpt-realtime",
    *,
    api_version: str = VERSION,
    entra: bool = False,
    **agent: Any,
) -> AbstractAsyncContextManager[VoiceLiveConnection]:
    credential: Any = LocalToken() if entra else AzureKeyCredential(KEY)
    return connect(
        endpoint=emulator.url,
        credential=credential,
        model=model,
        api_version=api_version,
        **agent,
    )


async def frames(conn: VoiceLiveConnection, until: str, within_s: float = 10.0) -> list[Any]:
    """Raw server events up to and including the first of type ``until``."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(within_s):
        while True:
            seen.append(orjson.loads(await conn.recv_bytes()))
            if seen[-1]["type"] == until:
                return seen


def typed(payload: dict[str, Any]) -> ServerEvent:
    """The SDK's own model of a raw event; every field must be one the SDK knows."""
    event = ServerEvent._deserialize(payload, [])
    assert type(event) is ServerEvent.__mapping__[payload["type"]], payload["type"]
    fields = {f._rest_name: attr for attr, f in type(event)._attr_to_rest_field.items()}
    assert set(payload) <= set(fields), (payload["type"], set(payload) - set(fields))
    for attr in fields.values():
        getattr(event, attr)
    return event


async def update(conn: VoiceLiveConnection, session: dict[str, Any]) -> dict[str, Any]:
    """Send session.update (event id ``cfg-1``); the session.updated or error answering it."""
    await frames(conn, "session.created")
    await conn.session.update(session=session, event_id="cfg-1")
    async with asyncio.timeout(10):
        while True:
            event = orjson.loads(await conn.recv_bytes())
            if event["type"] in ("session.updated", "error"):
                typed(event)
                return event  # type: ignore[no-any-return]


async def speak(conn: VoiceLiveConnection) -> None:
    """One loud turn between silences, in 20 ms appends: enough for the energy VAD."""
    pcm = silence(300) + tone(800) + silence(1200)
    for offset in range(0, len(pcm), 960):
        chunk = base64.b64encode(pcm[offset : offset + 960]).decode()
        await conn.input_audio_buffer.append(audio=chunk)


# --- the handshake -------------------------------------------------------------------------


async def test_unknown_api_version_is_refused_at_the_handshake(emulator: RunningEmulator) -> None:
    """An api-version the service does not answer gets HTTP 400, naming the real ones."""
    with pytest.raises(ConnectionError, match="400"):
        async with sdk(emulator, api_version="2024-10-01-preview"):
            pass
    url = f"{emulator.url}/voice-live/realtime?api-version=v1&model=gpt-realtime"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"api-key": KEY}) as response,
    ):
        assert response.status == 400
        assert "2026-07-15" in await response.text()
    assert emulator.connections_accepted == 0


@pytest.mark.parametrize(("version", "expires"), [("2026-07-15", True), ("2026-04-10", False)])
async def test_expires_at_comes_with_2026_07_15(
    emulator: RunningEmulator, version: str, expires: bool
) -> None:
    """session.created carries expires_at (about 30 minutes ahead) from 2026-07-15 on."""
    async with sdk(emulator, api_version=version) as conn:
        created = (await frames(conn, "session.created"))[-1]
    typed(created)
    assert ("expires_at" in created["session"]) is expires
    if expires:
        assert created["session"]["expires_at"] - time.time() == pytest.approx(1800, abs=60)


async def test_bearer_token_is_accepted_only_when_configured(emulator: RunningEmulator) -> None:
    """A configured Entra token signs in (as entra); any other token is refused with 401."""
    async with sdk(emulator, entra=True) as conn:
        await frames(conn, "session.created")
    handshake = emulator.last_handshake()
    assert handshake is not None and handshake["auth"] == "entra"
    url = f"{emulator.url}/voice-live/realtime?api-version={VERSION}&model=gpt-realtime"
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers={"Authorization": "Bearer forged"}) as response,
    ):
        assert response.status == 401


async def test_agent_connection_needs_a_project_and_a_token(emulator: RunningEmulator) -> None:
    """An agent needs agent-project-name (400) and a token (401); its session names it."""
    agent = {"agent_name": "helpdesk", "project_name": "support", "agent_version": "3"}
    async with sdk(emulator, None, entra=True, **agent) as conn:
        created = (await frames(conn, "session.created"))[-1]
    typed(created)
    assert created["session"]["agent"]["name"] == "helpdesk"
    assert created["session"]["agent"]["agent_id"] == "helpdesk:3"
    handshake = emulator.last_handshake()
    assert handshake is not None
    assert handshake["query"]["agent-version"] == "3" and "model" not in handshake["query"]
    with pytest.raises(ConnectionError, match="401"):
        async with sdk(emulator, None, **agent):
            pass
    base = f"{emulator.url}/voice-live/realtime?api-version={VERSION}"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession() as http:
        for query, status in (("&agent-name=helpdesk", 400), ("", 400)):
            async with http.get(base + query, headers=headers) as response:
                assert response.status == status
                assert "Missing query parameter" in await response.text()


async def test_agent_session_refuses_instructions(emulator: RunningEmulator) -> None:
    """A Foundry agent has its own instructions: session.update with some is an error."""
    agent = {"agent_name": "helpdesk", "project_name": "support"}
    async with sdk(emulator, None, entra=True, **agent) as conn:
        error = await update(conn, {"instructions": "Be brief."})
        assert error["type"] == "error"
        assert error["error"]["param"] == "session.instructions"
        assert error["error"]["event_id"] == "cfg-1"
        await conn.session.update(session={"voice": "en-US-AvaNeural"})
        assert (await frames(conn, "session.updated"))[-1]["session"]["agent"]


# --- session.update: what each model takes ---------------------------------------------------

ELEVEN = ",".join(["en-US", "fr-FR", "de-DE", "es-ES", "it-IT", "ja-JP", "ko-KR", "hi-IN",
                   "zh-CN", "pt-BR", "nl-NL"])  # fmt: skip


@pytest.mark.parametrize(
    ("model", "session", "code", "param"),
    [
        ("gpt-4.1", {"input_audio_transcription": {"model": "whisper-1"}},
         "invalid_value", "session.input_audio_transcription.model"),
        ("gpt-realtime", {"input_audio_transcription": {"model": "azure-speech"}},
         "invalid_value", "session.input_audio_transcription.model"),
        ("phi4-mm-realtime", {"input_audio_transcription": {"model": "mai-transcribe"}},
         "invalid_value", "session.input_audio_transcription.model"),
        ("gpt-realtime", {"input_audio_transcription": {"model": "whisper-2"}},
         "invalid_value", "session.input_audio_transcription.model"),
        ("gpt-realtime", {"input_audio_transcription": {"model": "whisper-1",
                                                         "phrase_list": ["Contoso"]}},
         "invalid_value", "session.input_audio_transcription.phrase_list"),
        ("gpt-4.1", {"input_audio_transcription": {"model": "azure-speech", "prompt": "IT"}},
         "invalid_value", "session.input_audio_transcription.prompt"),
        ("gpt-realtime", {"input_audio_transcription": {"model": "whisper-1",
                                                         "custom_speech": {"en-US": "id"}}},
         "invalid_value", "session.input_audio_transcription.custom_speech"),
        ("gpt-4.1", {"input_audio_transcription": {"model": "azure-speech", "language": ELEVEN}},
         "invalid_value", "session.input_audio_transcription.language"),
        ("gpt-4.1", {"voice": {"type": "openai", "name": "alloy"}},
         "invalid_value", "session.voice"),
        ("gpt-realtime", {"voice": {"type": "azure-realtime-native", "name": "ava"}},
         "invalid_value", "session.voice"),
        ("gpt-realtime", {"voice": {"type": "openai", "name": "alloy", "temperature": 0.5}},
         "unknown_parameter", "session.voice.temperature"),
        ("gpt-4.1", {"voice": {"type": "azure-custom", "name": "my-voice"}},
         "invalid_value", "session.voice"),
        ("gpt-4.1", {"voice": {"type": "azure-standard", "name": "Ava"}},
         "invalid_value", "session.voice"),
        ("gpt-4.1", {"voice": {"type": "azure-standard", "name": "en-US-AvaNeural",
                               "temperature": 1.5}},
         "invalid_value", "session.voice.temperature"),
        ("gpt-4.1", {"voice": {"type": "azure-standard", "name": "en-US-AvaNeural",
                               "rate": "fastest"}},
         "invalid_value", "session.voice.rate"),
        ("gpt-4.1", {"turn_detection": {"type": "semantic_vad"}},
         "invalid_value", "session.turn_detection.type"),
        ("gpt-realtime", {"turn_detection": {"type": "server_vad", "remove_filler_words": True}},
         "unknown_parameter", "session.turn_detection.remove_filler_words"),
        ("gpt-realtime", {"turn_detection": {"type": "azure_semantic_vad_en",
                                             "languages": ["en"]}},
         "unknown_parameter", "session.turn_detection.languages"),
        ("gpt-realtime", {"turn_detection": {"type": "semantic_vad", "threshold": 0.5}},
         "unknown_parameter", "session.turn_detection.threshold"),
        ("gpt-realtime", {"turn_detection": {"type": "server_vad", "end_of_utterance_detection":
                                             {"model": "semantic_detection_v2"}}},
         "invalid_value", "session.turn_detection.end_of_utterance_detection"),
        ("gpt-4.1", {"input_audio_noise_reduction": {"type": "near_field"}},
         "invalid_value", "session.input_audio_noise_reduction.type"),
        ("gpt-realtime", {"input_audio_echo_cancellation": {"type": "server_echo_cancellation",
                                                            "channels": 2}},
         "invalid_value", "session.input_audio_echo_cancellation"),
        ("gpt-realtime", {"temperature": 0.3}, "invalid_value", "session.temperature"),
        ("gpt-realtime", {"modalities": ["audio"]}, "invalid_value", "session.modalities"),
    ],
)  # fmt: skip
async def test_session_update_refuses_what_the_service_refuses(
    emulator: RunningEmulator, model: str, session: dict[str, Any], code: str, param: str
) -> None:
    """Each documented invalid combination is an error naming the field and event; no change."""
    async with sdk(emulator, model) as conn:
        error = await update(conn, session)
        assert error["type"] == "error", error
        assert (error["error"]["code"], error["error"]["param"]) == (code, param)
        assert error["error"]["event_id"] == "cfg-1"
        assert error["error"]["type"] == "invalid_request_error"
        await conn.session.update(session={"modalities": ["text", "audio"]})
        updated = (await frames(conn, "session.updated"))[-1]
    assert updated["session"]["input_audio_transcription"] is None
    assert emulator.last_session_config() == updated["session"]


HD_VOICE = {
    "type": "azure-standard",
    "name": "en-US-Ava:DragonHDLatestNeural",
    "temperature": 0.7,
    "rate": "1.2",
}
SEMANTIC = {
    "type": "azure_semantic_vad_multilingual",
    "threshold": 0.5,
    "silence_duration_ms": 600,
    "end_of_utterance_detection": {
        "model": "semantic_detection_v1_multilingual",
        "threshold_level": "low",
        "timeout_ms": 800,
    },
    "remove_filler_words": True,
    "languages": ["en", "fr"],
}


@pytest.mark.parametrize(
    ("model", "session"),
    [
        ("gpt-4.1", {"voice": HD_VOICE, "turn_detection": SEMANTIC,
                     "input_audio_transcription": {"model": "azure-speech",
                                                   "language": "en-US,fr-FR",
                                                   "phrase_list": ["Contoso", "Fabrikam"]},
                     "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
                     "input_audio_echo_cancellation": {"type": "server_echo_cancellation"}}),
        ("gpt-5", {"voice": {"type": "azure-custom", "name": "my-brand-voice",
                             "endpoint_id": "12345678-1234-1234-1234-123456789012",
                             "rate": "+10%"},
                   "input_audio_transcription": {"model": "mai-transcribe-2"}}),
        ("gpt-realtime-mini", {"voice": {"type": "openai", "name": "marin"},
                               "turn_detection": {"type": "semantic_vad", "eagerness": "low"},
                               "input_audio_noise_reduction": {"type": "far_field"},
                               "input_audio_transcription": {"model": "gpt-4o-transcribe",
                                                             "language": "en",
                                                             "prompt": "Contoso"}}),
        ("azure-realtime", {"voice": {"type": "azure-realtime-native", "name": "andrew"},
                            "input_audio_transcription": {"model": "azure-speech"}}),
        ("phi4-mm-realtime", {"voice": {"type": "azure-standard", "name": "en-US-AvaNeural"},
                              "turn_detection": {"type": "azure_semantic_vad",
                                                 "remove_filler_words": True},
                              "input_audio_transcription": {"model": "azure-speech"},
                              "input_audio_noise_reduction": None,
                              "input_audio_echo_cancellation": None}),
    ],
)  # fmt: skip
async def test_session_update_accepts_each_documented_shape(
    emulator: RunningEmulator, model: str, session: dict[str, Any]
) -> None:
    """Each voice, turn detection and transcription shape a model takes is accepted and echoed."""
    async with sdk(emulator, model) as conn:
        updated = await update(conn, session)
    assert updated["type"] == "session.updated", updated
    applied = updated["session"]
    for key, value in session.items():
        if isinstance(value, dict):
            assert value.items() <= applied[key].items(), key
        else:
            assert applied[key] == value, key


@pytest.mark.parametrize(
    ("model", "voice"),
    [
        ("gpt-realtime", {"type": "openai", "name": "alloy"}),
        ("gpt-4.1", {"type": "azure-standard", "name": "en-US-AvaNeural"}),
        ("azure-realtime", {"type": "azure-realtime-native", "name": "ava"}),
    ],
)
async def test_a_new_session_speaks_with_the_models_own_voice(
    emulator: RunningEmulator, model: str, voice: dict[str, str]
) -> None:
    """session.created starts with a voice the model takes: OpenAI, Azure or native."""
    async with sdk(emulator, model) as conn:
        created = (await frames(conn, "session.created"))[-1]
    assert created["session"]["voice"] == voice


def test_every_rule_names_a_source() -> None:
    """The rules table has unique ids, and each row names the page it comes from."""
    ids = [rule.id for rule in voicelive.RULES]
    assert len(ids) == len(set(ids))
    for rule in voicelive.RULES:
        assert rule.source.startswith(("https://learn.microsoft.com/", "azure-ai-voicelive"))
        assert rule.param


# --- behaviours ------------------------------------------------------------------------------


@pytest.mark.parametrize("after", [False, True])
async def test_transcription_arrives_before_or_after_the_response(after: bool) -> None:
    """Input transcription streams deltas then completed, before or after response.created."""
    options = EmulatorOptions(api_key=KEY, realtime=False, transcription_after_response=after)
    async with await start_emulator(options) as emulator, sdk(emulator) as conn:
        await update(conn, {"input_audio_transcription": {"model": "whisper-1"}})
        await speak(conn)
        events = await frames(conn, "response.done")
    for event in events:
        typed(event)
    kinds = [e["type"] for e in events]
    completed = kinds.index("conversation.item.input_audio_transcription.completed")
    assert (completed > kinds.index("response.created")) is after
    deltas = [e for e in events if e["type"].endswith("input_audio_transcription.delta")]
    assert "".join(e["delta"] for e in deltas) == events[completed]["transcript"]
    assert kinds.index(deltas[0]["type"]) < completed
    committed = next(e for e in events if e["type"] == "input_audio_buffer.committed")
    assert {e["item_id"] for e in deltas} == {committed["item_id"]}


async def test_failed_transcription_is_its_own_event() -> None:
    """An injected transcription failure is a .failed event for the item; the response goes on."""
    options = EmulatorOptions(api_key=KEY, realtime=False, fail_transcription=True)
    async with await start_emulator(options) as emulator, sdk(emulator) as conn:
        await update(conn, {"input_audio_transcription": {"model": "whisper-1"}})
        await speak(conn)
        events = await frames(conn, "response.done")
    failed = [e for e in events if e["type"].endswith("input_audio_transcription.failed")]
    assert len(failed) == 1
    typed(failed[0])
    assert failed[0]["error"]["code"] == "transcription_failed"
    assert not [e for e in events if e["type"].endswith("input_audio_transcription.completed")]
    assert events[-1]["response"]["status"] == "completed"


@pytest.mark.parametrize("reason", ["content_filter", "max_output_tokens"])
async def test_incomplete_response_stops_halfway_with_its_reason(reason: str) -> None:
    """An incomplete response stops halfway; response.done says incomplete with the reason."""
    options = EmulatorOptions(
        api_key=KEY, realtime=False, response_outcome="incomplete", incomplete_reason=reason
    )
    async with await start_emulator(options) as emulator, sdk(emulator) as conn:
        await frames(conn, "session.created")
        text = InputTextContentPart(text="Tell me a long story please.")
        await conn.conversation.item.create(item=UserMessageItem(content=[text]))
        await conn.response.create()
        events = await frames(conn, "response.done")
    for event in events:
        typed(event)
    done = events[-1]["response"]
    assert done["status"] == "incomplete"
    assert done["status_details"] == {"type": "incomplete", "reason": reason}
    assert done["output"][0]["status"] == "incomplete"
    spoken = "".join(e["delta"] for e in events if e["type"] == "response.audio_transcript.delta")
    assert 0 < len(spoken) < len("You said: Tell me a long story please.")


async def test_failed_response_has_no_audio_and_an_error() -> None:
    """response_outcome failed: no audio, response.done failed with the error."""
    options = EmulatorOptions(api_key=KEY, realtime=False, response_outcome="failed")
    async with await start_emulator(options) as emulator, sdk(emulator) as conn:
        await frames(conn, "session.created")
        await conn.response.create()
        events = await frames(conn, "response.done")
    for event in events:
        typed(event)
    assert not [e for e in events if e["type"] == "response.audio.delta"]
    done = events[-1]["response"]
    assert done["status"] == "failed"
    assert done["status_details"]["type"] == "failed"
    assert done["status_details"]["error"]["message"]


async def test_warning_follows_session_updated_on_demand() -> None:
    """session_warning: a warning event after each session.updated; the session goes on."""
    options = EmulatorOptions(api_key=KEY, realtime=False, session_warning="Voice is slow")
    async with await start_emulator(options) as emulator, sdk(emulator) as conn:
        await update(conn, {"instructions": "Hi."})
        warning = (await frames(conn, "warning"))[-1]
        typed(warning)
        assert warning["warning"]["message"] == "Voice is slow"
        await conn.response.create()
        await frames(conn, "response.done")
    assert emulator.event_count("warning") == 1
