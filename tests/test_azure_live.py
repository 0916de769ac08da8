"""A live check against a real Azure Voice Live resource (``make test-azure``).

Skipped unless AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_KEY and AZURE_OPENAI_DEPLOYMENT are set.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.conftest import make_settings
from tests.voice_client import VoiceSocket
from voicebridge.app import create_app

AZURE_VARS = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_KEY", "AZURE_OPENAI_DEPLOYMENT")

pytestmark = [
    pytest.mark.azure,
    pytest.mark.skipif(
        not all(os.environ.get(v) for v in AZURE_VARS),
        reason="needs AZURE_OPENAI_ENDPOINT, AZURE_OPENAI_KEY and AZURE_OPENAI_DEPLOYMENT",
    ),
]


async def test_typed_message_gets_a_spoken_answer(aiohttp_client: Any) -> None:
    """A short typed turn against the real service: transcript and audio come back."""
    settings = make_settings(
        **{v: os.environ[v] for v in AZURE_VARS},
        VOICELIVE_BACKEND="azure",
        AZURE_API_VERSION=os.environ.get("AZURE_API_VERSION", "2026-07-15"),
        VOICE_NAME=os.environ.get("VOICE_NAME", "alloy"),
    )
    client = await aiohttp_client(create_app(settings))
    voice = VoiceSocket(await client.ws_connect("/ws/voice"))
    started = await voice.until_type("session_started", timeout=30)
    assert started["backend"] == "azure"
    await voice.ws.send_json({"type": "text", "text": "Say hello in five words or fewer."})
    answer = await voice.until_type("agent_transcript", timeout=60)
    assert answer["text"].strip()
    assert voice.audio_bytes() > 0
    assert voice.messages("error") == []
    await voice.ws.close()
