"""The ``session.update`` payload built from the settings: voice, formats, turn detection,
transcription, audio processing.

What each setting sends is listed in docs/voice-live.md; which
combinations Voice Live accepts is :data:`voicebridge.voicelive.RULES`, checked against
this very payload at start-up. The payload is built as the settings say, without
second-guessing them: a setting the chosen voice or turn detection type does not take is
sent anyway, so the rule that forbids it names it at start-up instead of it being dropped
in silence.
"""

from __future__ import annotations

from typing import Any

from voicebridge.audio_format import PCM16_24K, AudioFormat
from voicebridge.config import OFF, Settings
from voicebridge.voicelive import NATIVE_VOICES, OPENAI_VOICES, model_family


def build_session_config(
    settings: Settings,
    instructions: str,
    audio: AudioFormat = PCM16_24K,
    *,
    tools: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The ``session`` object of the first ``session.update`` a session sends, for a caller
    whose audio is ``audio`` (in and out: the relay never transcodes), offering ``tools``
    (the model picks when to call them) when there are any.

    In agent mode the instructions are not sent: a Foundry agent has its own, and the
    service refuses them (how-to, "Session configuration").
    """
    session: dict[str, Any] = {"modalities": ["text", "audio"]}
    if not settings.agent_mode:
        session["instructions"] = instructions
    session.update(
        {
            "voice": voice_config(settings),
            **audio.session_fields(),
            "turn_detection": turn_detection_config(settings),
        }
    )
    if settings.echo_cancellation:
        session["input_audio_echo_cancellation"] = {"type": "server_echo_cancellation"}
    else:
        session["input_audio_echo_cancellation"] = None
    if settings.noise_reduction:
        session["input_audio_noise_reduction"] = {"type": settings.noise_reduction}
    else:
        session["input_audio_noise_reduction"] = None
    session["input_audio_transcription"] = transcription_config(settings)
    if tools is not None:
        session["tools"] = tools
        session["tool_choice"] = "auto"
    return session


def voice_config(settings: Settings) -> dict[str, Any]:
    """``voice``: an OpenAI voice, an azure-realtime native voice, an Azure standard or HD
    voice, or (with ``VOICE_ENDPOINT_ID``) a custom voice; with temperature and rate."""
    name = settings.voice_name
    voice: dict[str, Any]
    if settings.voice_endpoint_id:
        voice = {"type": "azure-custom", "name": name, "endpoint_id": settings.voice_endpoint_id}
    elif name in OPENAI_VOICES:
        voice = {"type": "openai", "name": name}
    elif name in NATIVE_VOICES and model_family(settings.voicelive_model) == "azure-realtime":
        voice = {"type": "azure-realtime-native", "name": name}
    else:
        voice = {"type": "azure-standard", "name": name}
    if settings.voice_temperature is not None:
        voice["temperature"] = settings.voice_temperature
    if settings.voice_rate:
        voice["rate"] = settings.voice_rate
    return voice


def turn_detection_config(settings: Settings) -> dict[str, Any]:
    """``turn_detection``: the type with the fields it takes, plus what the settings ask."""
    kind = settings.turn_detection
    spec: dict[str, Any] = {"type": kind}
    if kind != "semantic_vad":
        # semantic_vad decides with a model, not a level (reference, RealtimeOpenAISemanticVAD).
        spec.update(
            {
                "threshold": settings.vad_threshold,
                "prefix_padding_ms": settings.vad_prefix_padding_ms,
                "silence_duration_ms": settings.vad_silence_duration_ms,
            }
        )
    spec["create_response"] = True
    spec["interrupt_response"] = True
    if settings.end_of_utterance != OFF:
        spec["end_of_utterance_detection"] = {"model": settings.end_of_utterance}
    if settings.vad_remove_filler_words:
        spec["remove_filler_words"] = True
    if settings.vad_languages:
        spec["languages"] = list(settings.vad_languages)
    return spec


def transcription_config(settings: Settings) -> dict[str, Any] | None:
    """``input_audio_transcription``: model, language, phrase list; None when off."""
    if not settings.transcription_model:
        return None
    spec: dict[str, Any] = {"model": settings.transcription_model}
    if settings.transcription_language:
        spec["language"] = settings.transcription_language
    if settings.transcription_phrases:
        spec["phrase_list"] = list(settings.transcription_phrases)
    return spec
