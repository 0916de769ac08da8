"""Live checks against a real Azure Voice Live resource (``make test-azure``).

Each runs when its settings exist in the environment (the seed names or the SDK samples'
AZURE_VOICELIVE_* aliases), and is skipped otherwise:

* key mode: endpoint, key and model;
* Entra ID mode: endpoint and model, and an identity DefaultAzureCredential can use here
  (``az login``, a managed identity, ...) holding the Cognitive Services User and Foundry
  User roles on the resource;
* agent mode: as Entra ID, plus VOICELIVE_AGENT_NAME and VOICELIVE_AGENT_PROJECT.

The optional Voice Live settings (VOICE_NAME, TURN_DETECTION, TRANSCRIPTION_MODEL, ...) are
passed on, so a configuration can be tried against the service as it is.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.voice_client import VoiceSocket
from voicebridge.app import create_app
from voicebridge.voicelive import ENTRA_SCOPE

pytestmark = pytest.mark.azure

_PASSED_ON = (
    "AZURE_API_VERSION",
    "VOICE_NAME",
    "VOICE_TEMPERATURE",
    "VOICE_ENDPOINT_ID",
    "VOICE_RATE",
    "TURN_DETECTION",
    "END_OF_UTTERANCE",
    "VAD_REMOVE_FILLER_WORDS",
    "VAD_LANGUAGES",
    "TRANSCRIPTION_MODEL",
    "TRANSCRIPTION_LANGUAGE",
    "TRANSCRIPTION_PHRASES",
    "NOISE_REDUCTION",
    "ECHO_CANCELLATION",
    "VOICELIVE_AGENT_VERSION",
)


def _setting(name: str, alias: str) -> str:
    return os.environ.get(name) or os.environ.get(alias) or ""


ENDPOINT = _setting("AZURE_OPENAI_ENDPOINT", "AZURE_VOICELIVE_ENDPOINT")
KEY = _setting("AZURE_OPENAI_KEY", "AZURE_VOICELIVE_API_KEY")
MODEL = _setting("AZURE_OPENAI_DEPLOYMENT", "AZURE_VOICELIVE_MODEL")
AGENT = os.environ.get("VOICELIVE_AGENT_NAME", "")
PROJECT = os.environ.get("VOICELIVE_AGENT_PROJECT", "")


def _live_env(**env: str) -> dict[str, str]:
    passed = {name: os.environ[name] for name in _PASSED_ON if os.environ.get(name)}
    return {"VOICELIVE_BACKEND": "azure", "AZURE_OPENAI_ENDPOINT": ENDPOINT, **passed, **env}


async def _conversation(client: Any) -> None:
    """A short typed turn: a transcript and audio come back, and no error."""
    voice = VoiceSocket(await client.ws_connect("/ws/voice"))
    started = await voice.until_type("session_started", timeout=30)
    assert started["backend"] == "azure"
    await voice.ws.send_json({"type": "text", "text": "Say hello in five words or fewer."})
    answer = await voice.until_type("agent_transcript", timeout=60)
    assert answer["text"].strip()
    assert voice.audio_bytes() > 0
    assert voice.messages("error") == []
    await voice.ws.close()


async def _require_entra_identity() -> None:
    """Skip unless DefaultAzureCredential finds an identity here."""
    identity = pytest.importorskip("azure.identity.aio")
    credential = identity.DefaultAzureCredential()
    try:
        await credential.get_token(ENTRA_SCOPE)
    except Exception as exc:
        pytest.skip(f"no Microsoft Entra identity for DefaultAzureCredential: {type(exc).__name__}")
    finally:
        await credential.close()


@pytest.mark.skipif(not (ENDPOINT and KEY and MODEL), reason="needs endpoint, key and model")
async def test_key_mode_typed_message_gets_a_spoken_answer(aiohttp_client: Any) -> None:
    """API key: a short typed turn against the real service is answered in voice and text."""
    settings = make_settings(
        **_live_env(AZURE_OPENAI_KEY=KEY, AZURE_OPENAI_DEPLOYMENT=MODEL, AZURE_AUTH="key")
    )
    await _conversation(await aiohttp_client(create_app(settings)))


@pytest.mark.skipif(not (ENDPOINT and MODEL), reason="needs endpoint and model")
async def test_entra_mode_typed_message_gets_a_spoken_answer(aiohttp_client: Any) -> None:
    """Entra ID: the app's own DefaultAzureCredential signs in and a turn is answered."""
    await _require_entra_identity()
    settings = make_settings(**_live_env(AZURE_OPENAI_DEPLOYMENT=MODEL, AZURE_AUTH="entra"))
    await _conversation(await aiohttp_client(create_app(settings)))


@pytest.mark.skipif(not (ENDPOINT and AGENT and PROJECT), reason="needs endpoint and agent")
async def test_agent_mode_typed_message_gets_a_spoken_answer(aiohttp_client: Any) -> None:
    """A Foundry agent, reached with Entra ID, answers a typed turn in voice."""
    await _require_entra_identity()
    settings = make_settings(
        **_live_env(VOICELIVE_AGENT_NAME=AGENT, VOICELIVE_AGENT_PROJECT=PROJECT)
    )
    await _conversation(await aiohttp_client(create_app(settings)))
