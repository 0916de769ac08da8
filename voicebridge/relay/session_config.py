"""The ``session.update`` payload built from the settings: voice, formats, VAD, processing."""

from __future__ import annotations

from typing import Any

from voicebridge.config import OPENAI_VOICES, Settings


def build_session_config(settings: Settings, instructions: str) -> dict[str, Any]:
    """The ``session`` object of the first ``session.update`` a session sends."""
    voice_name = settings.voice_name
    voice: dict[str, Any]
    if voice_name in OPENAI_VOICES:
        voice = {"type": "openai", "name": voice_name}
    else:
        voice = {"type": "azure-standard", "name": voice_name}
    return {
        "modalities": ["text", "audio"],
        "instructions": instructions,
        "voice": voice,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": {
            "type": "server_vad",
            "threshold": settings.vad_threshold,
            "prefix_padding_ms": settings.vad_prefix_padding_ms,
            "silence_duration_ms": settings.vad_silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        },
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
        "input_audio_transcription": {"model": "whisper-1"},
    }
