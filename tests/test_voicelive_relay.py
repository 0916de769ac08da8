"""Each Voice Live configuration through the relay's own session path: create_app, the real
SDK's connection, the strict emulator. What the emulator accepted is what the settings
ask; what it refuses reaches the client; Entra ID runs the production path with only the
token source substituted."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import attrs
import pytest
from aiohttp.test_utils import TestClient
from azure.core.credentials import AccessToken

from tests.conftest import KEY, StartEmulator, make_settings
from tests.voice_client import open_voice, started
from voicebridge.app import create_app
from voicebridge.config import Settings
from voicebridge.emulator import RunningEmulator
from voicebridge.voicelive import ENTRA_SCOPE

TOKEN = "entra-token-for-tests"


class LocalCredential:
    """A local AsyncTokenCredential standing in where DefaultAzureCredential would be: no
    Entra endpoint is reachable from tests, so only the token source is substituted."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.requests: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.requests.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> LocalCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def voicelive_settings(emu: RunningEmulator, model: str = "gpt-realtime", **env: str) -> Settings:
    """Settings for the azure backend pointing at ``emu``, with a key unless entra."""
    base = {
        "VOICELIVE_BACKEND": "azure",
        "AZURE_OPENAI_ENDPOINT": emu.url,
        "UPSTREAM_CONNECT_TIMEOUT_S": "3",
    }
    if model:
        base["AZURE_OPENAI_DEPLOYMENT"] = model
    if env.get("AZURE_AUTH") != "entra" and "VOICELIVE_AGENT_NAME" not in env:
        base["AZURE_OPENAI_KEY"] = KEY
    return make_settings(**{**base, **env})


async def client_for(
    aiohttp_client: Any, settings: Settings, credential: Any = None
) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = await aiohttp_client(create_app(settings, credential=credential))
    return client


async def answered(client: TestClient[Any, Any]) -> dict[str, Any]:
    """A session: started, a typed question, the agent's answer. The session.started msg."""
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "Hello there."})
    await voice.until_type("agent_transcript")
    assert voice.messages("error") == []
    await voice.ws.close()
    return voice.messages("session_started")[0]


CONFIGURATIONS = [
    pytest.param(
        "gpt-realtime",
        {},
        {
            "voice": {"type": "openai", "name": "alloy"},
            "input_audio_transcription": {"model": "whisper-1"},
            "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
            "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        },
        id="defaults",
    ),
    pytest.param(
        "gpt-4.1",
        {
            "VOICE_NAME": "en-US-Ava:DragonHDLatestNeural",
            "VOICE_TEMPERATURE": "0.7",
            "VOICE_RATE": "1.1",
            "TURN_DETECTION": "azure_semantic_vad_multilingual",
            "END_OF_UTTERANCE": "semantic_detection_v1_multilingual",
            "VAD_REMOVE_FILLER_WORDS": "true",
            "VAD_LANGUAGES": "en,fr",
            "TRANSCRIPTION_LANGUAGE": "en-US,fr-FR",
            "TRANSCRIPTION_PHRASES": "Contoso, Fabrikam",
        },
        {
            "voice": {
                "type": "azure-standard",
                "name": "en-US-Ava:DragonHDLatestNeural",
                "temperature": 0.7,
                "rate": "1.1",
            },
            "turn_detection": {
                "type": "azure_semantic_vad_multilingual",
                "end_of_utterance_detection": {"model": "semantic_detection_v1_multilingual"},
                "remove_filler_words": True,
                "languages": ["en", "fr"],
            },
            "input_audio_transcription": {
                "model": "azure-speech",
                "language": "en-US,fr-FR",
                "phrase_list": ["Contoso", "Fabrikam"],
            },
        },
        id="text-model-hd-voice-semantic-vad",
    ),
    pytest.param(
        "gpt-5",
        {
            "VOICE_NAME": "my-brand-voice",
            "VOICE_ENDPOINT_ID": "12345678-1234-1234-1234-123456789012",
            "TRANSCRIPTION_MODEL": "mai-transcribe-2",
            "NOISE_REDUCTION": "off",
            "ECHO_CANCELLATION": "false",
        },
        {
            "voice": {
                "type": "azure-custom",
                "name": "my-brand-voice",
                "endpoint_id": "12345678-1234-1234-1234-123456789012",
            },
            "input_audio_transcription": {"model": "mai-transcribe-2"},
            "input_audio_noise_reduction": None,
            "input_audio_echo_cancellation": None,
        },
        id="custom-voice-no-processing",
    ),
    pytest.param(
        "gpt-realtime-mini",
        {
            "VOICE_NAME": "marin",
            "TURN_DETECTION": "semantic_vad",
            "NOISE_REDUCTION": "near_field",
            "TRANSCRIPTION_MODEL": "gpt-4o-mini-transcribe",
            "TRANSCRIPTION_LANGUAGE": "en",
        },
        {
            "voice": {"type": "openai", "name": "marin"},
            "turn_detection": {"type": "semantic_vad"},
            "input_audio_noise_reduction": {"type": "near_field"},
            "input_audio_transcription": {"model": "gpt-4o-mini-transcribe", "language": "en"},
        },
        id="openai-semantic-vad",
    ),
    pytest.param(
        "azure-realtime",
        {"TURN_DETECTION": "azure_semantic_vad", "END_OF_UTTERANCE": "semantic_detection_v1"},
        {
            "voice": {"type": "azure-realtime-native", "name": "ava"},
            "turn_detection": {
                "type": "azure_semantic_vad",
                "end_of_utterance_detection": {"model": "semantic_detection_v1"},
            },
            "input_audio_transcription": {"model": "azure-speech"},
        },
        id="azure-realtime-native-voice",
    ),
    pytest.param(
        "phi4-mm-realtime",
        {"VOICE_NAME": "en-GB-SoniaNeural", "VOICE_RATE": "slow"},
        {
            "voice": {"type": "azure-standard", "name": "en-GB-SoniaNeural", "rate": "slow"},
            "input_audio_transcription": {"model": "azure-speech"},
        },
        id="phi-azure-voice",
    ),
]


def _contains(applied: dict[str, Any], expected: dict[str, Any]) -> None:
    for key, value in expected.items():
        if isinstance(value, dict):
            assert isinstance(applied.get(key), dict), (key, applied.get(key))
            _contains(applied[key], value)
        else:
            assert applied.get(key) == value, (key, applied.get(key), value)


@pytest.mark.parametrize(("model", "env", "expected"), CONFIGURATIONS)
async def test_each_configuration_is_accepted_and_answers(
    start_emu: StartEmulator,
    aiohttp_client: Any,
    model: str,
    env: dict[str, str],
    expected: dict[str, Any],
) -> None:
    """Each documented configuration is sent as set, accepted by the emulator, and answers."""
    emu = await start_emu()
    settings = voicelive_settings(emu, model, **env)
    client = await client_for(aiohttp_client, settings)
    session_started = await answered(client)
    applied = emu.last_session_config()
    assert applied is not None
    _contains(applied, expected)
    assert applied["instructions"] == settings.read_instructions()
    assert session_started["voice"] == settings.voice_name


async def test_a_refused_configuration_ends_the_session_with_the_services_reason(
    start_emu: StartEmulator, aiohttp_client: Any
) -> None:
    """A configuration Voice Live refuses ends the session: upstream_config_rejected, 1011."""
    emu = await start_emu()
    valid = voicelive_settings(emu, "gpt-4.1")
    settings = attrs.evolve(valid, transcription_model="whisper-1")
    assert settings.voicelive_findings()[0]  # the start-up check would have refused it
    client = await client_for(aiohttp_client, settings)
    voice = await open_voice(client)
    error = await voice.until_type("error")
    async with asyncio.timeout(5):
        refusal = await emu.wait_event("error")
    assert refusal is not None
    assert refusal["error"]["param"] == "session.input_audio_transcription.model"
    assert refusal["error"]["event_id"] == "vb-session-config"
    assert emu.last_session_config() is None
    assert error["code"] == "upstream_config_rejected"
    assert "whisper-1" in error["message"]
    assert await voice.until_closed() == 1011
    assert voice.messages("session_started") == []


async def test_entra_mode_signs_in_with_the_apps_credential(
    start_emu: StartEmulator, aiohttp_client: Any
) -> None:
    """Entra mode: the app's credential signs every session in with one token, closed at stop."""
    emu = await start_emu(bearer_tokens=(TOKEN,))
    settings = voicelive_settings(emu, AZURE_AUTH="entra")
    assert (settings.azure_auth, settings.azure_openai_key) == ("entra", "")
    credential = LocalCredential()
    client = await client_for(aiohttp_client, settings, credential)
    for _ in range(2):
        await answered(client)
    handshake = emu.last_handshake()
    assert handshake is not None and handshake["auth"] == "entra"
    assert credential.requests == [(ENTRA_SCOPE,)]
    assert emu.connections_accepted == 2
    await client.close()
    assert credential.closed


async def test_entra_token_refused_names_the_roles(
    start_emu: StartEmulator, aiohttp_client: Any
) -> None:
    """A refused Entra token fails the session naming Entra ID and the roles, not the token."""
    emu = await start_emu(bearer_tokens=("some-other-token",))
    settings = voicelive_settings(emu, AZURE_AUTH="entra")
    client = await client_for(aiohttp_client, settings, LocalCredential())
    voice = await open_voice(client)
    error = await voice.until_type("error")
    assert error["code"] == "upstream_auth_rejected"  # permanent: clients do not retry
    assert "Entra" in error["message"] and "Foundry User" in error["message"]
    assert TOKEN not in error["message"]
    assert await voice.until_closed() == 1011


async def test_agent_mode_reaches_the_agent_without_instructions(
    start_emu: StartEmulator, aiohttp_client: Any
) -> None:
    """Agent mode connects with the agent's name, project and version and sends no instructions."""
    emu = await start_emu(bearer_tokens=(TOKEN,))
    settings = voicelive_settings(
        emu,
        "",
        VOICELIVE_AGENT_NAME="helpdesk",
        VOICELIVE_AGENT_PROJECT="support",
        VOICELIVE_AGENT_VERSION="2",
    )
    assert settings.azure_auth == "entra" and settings.voicelive_model is None
    client = await client_for(aiohttp_client, settings, LocalCredential())
    await answered(client)
    handshake = emu.last_handshake()
    assert handshake is not None
    query = handshake["query"]
    assert (query["agent-name"], query["agent-project-name"], query["agent-version"]) == (
        "helpdesk",
        "support",
        "2",
    )
    assert "model" not in query
    applied = emu.last_session_config()
    assert applied is not None
    assert "instructions" not in applied or applied["instructions"] == ""
    assert applied["agent"]["name"] == "helpdesk"
    assert applied["voice"] == {"type": "azure-standard", "name": "en-US-AvaNeural"}
    assert applied["input_audio_transcription"] == {"model": "azure-speech"}


async def test_built_in_emulator_runs_agent_mode_with_a_token(aiohttp_client: Any) -> None:
    """Without Azure settings, agent mode runs on the built-in emulator with its own token."""
    settings = make_settings(VOICELIVE_AGENT_NAME="helpdesk", VOICELIVE_AGENT_PROJECT="support")
    assert settings.uses_emulator and settings.azure_auth == "entra"
    client = await client_for(aiohttp_client, settings)
    await answered(client)


@pytest.mark.parametrize("after", [False, True])
async def test_caller_transcript_arrives_either_side_of_the_response(
    start_emu: StartEmulator, aiohttp_client: Any, after: bool
) -> None:
    """The caller's transcript reaches the client before or after the response starts."""
    from tests.voice_client import silence, tone

    emu = await start_emu(transcription_after_response=after)
    client = await client_for(aiohttp_client, voicelive_settings(emu))
    voice = await started(client)
    await voice.send_audio(silence(300) + tone(800) + silence(1200))
    transcript = await voice.until_type("user_transcript")
    assert transcript["text"].startswith("[emulator heard")
    await voice.until_type("agent_transcript")
    await voice.ws.close()
