"""What Azure AI Voice Live accepts, and the rules that tie its options together.

The catalogue (models, voices, transcription models, turn detection types, api-versions)
and :data:`RULES`, the one table of combinations the service documents as invalid (an
``error``) or that are only doubtful (a ``warning``), each row with its source. Both
sides read the same table, so they cannot drift apart:

* :mod:`voicebridge.config` checks the ``session.update`` a configuration would send and
  the connection it would open: errors stop the start-up (exit 2), warnings are logged;
* the emulator (:mod:`voicebridge.emulator`) checks every handshake and ``session.update``
  it receives and refuses what the service refuses.

Pure: no I/O. The sources are the ``SRC_*`` pages below (Microsoft Learn, read for API
version ``2026-07-15``) and the SDK's models; every catalogue entry and rule names its own.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final, Literal

import attrs

_LEARN = "https://learn.microsoft.com/azure/ai-services/speech-service/"
#: Voice Live API reference, version 2026-07-15.
SRC_REFERENCE: Final = _LEARN + "voice-live-api-reference-2026-07-15"
#: How to use the Voice Live API.
SRC_HOW_TO: Final = _LEARN + "voice-live-how-to"
#: Voice Live API supported languages.
SRC_LANGUAGES: Final = _LEARN + "voice-live-language-support"
#: Voice Live API overview (supported models).
SRC_OVERVIEW: Final = _LEARN + "voice-live#supported-models-and-regions"
#: How to build a voice agent (Foundry Agent Service).
SRC_AGENTS: Final = _LEARN + "how-to-voice-agent-integration"
#: High definition voices.
SRC_HD_VOICES: Final = _LEARN + "high-definition-voices"
#: The SDK's own models and connection code (azure-ai-voicelive 1.3.1).
SRC_SDK: Final = "azure-ai-voicelive 1.3.1: azure/ai/voicelive/models/_models.py, aio/_patch.py"

#: The scope of a Microsoft Entra token for Voice Live: the SDK's default
#: (aio/_patch.py, _VoiceLiveConnectionManager); the reference's "Authentication" section
#: also accepts the legacy https://cognitiveservices.azure.com/.default.
ENTRA_SCOPE: Final = "https://ai.azure.com/.default"

#: The api-versions the service answers; any other gets HTTP 400 at the handshake. Each
#: has its own API reference page on Microsoft Learn (voice-live-api-reference-<version>);
#: 2025-05-01-preview is the first public preview (voice-live-how-to, 2025).
API_VERSIONS: Final = frozenset(
    {
        "2025-05-01-preview",
        "2025-10-01",
        "2026-01-01-preview",
        "2026-04-10",
        "2026-06-01-preview",
        "2026-07-15",
    }
)
#: From this version on, session.created / session.updated carry `expires_at`
#: (reference 2026-07-15, "What's new").
EXPIRES_AT_SINCE: Final = "2026-07-15"

# --- models --------------------------------------------------------------------------------

Family = Literal["realtime", "phi", "azure-realtime", "text", "agent", "unknown"]

#: The models Voice Live hosts (overview, "Supported models and regions", and the pricing
#: table, which adds gpt-5-chat; gpt-5.5, gpt-5.4-mini and gpt-5.4-nano are tested but only
#: through bring-your-own-model).
KNOWN_MODELS: Final = frozenset(
    {
        "gpt-realtime-2.1",
        "gpt-realtime-2.1-datazone",
        "gpt-realtime-2.1-mini",
        "gpt-realtime-1.5",
        "gpt-realtime-1.5-datazone",
        "gpt-realtime",
        "gpt-realtime-datazone",
        "gpt-realtime-mini",
        "gpt-4o",
        "gpt-4o-mini",
        "gpt-4.1",
        "gpt-4.1-mini",
        "gpt-4.1-nano",
        "gpt-5.6-terra",
        "gpt-5.6-luna",
        "gpt-5.4",
        "gpt-5.2",
        "gpt-5.1",
        "gpt-5",
        "gpt-5-chat",
        "gpt-5-mini",
        "gpt-5-nano",
        "phi4-mm-realtime",
        "azure-realtime",
        "gpt-5.5",
        "gpt-5.4-mini",
        "gpt-5.4-nano",
    }
)

_OPENAI_REALTIME = re.compile(r"gpt-realtime.*|gpt-4o(-mini)?-realtime.*")


def model_family(model: str | None, *, agent: bool = False, lenient: bool = False) -> Family:
    """How Voice Live treats a model: ``realtime`` (gpt-realtime family: native audio in and
    out, OpenAI voices), ``phi`` (native audio in, Azure voices out), ``azure-realtime``
    (its own native voices), ``text`` (every other model: speech to text in, text to speech
    out), or ``agent`` (a Foundry agent, whose model the relay does not know).

    A model Voice Live does not list is a bring-your-own-model deployment, a text model;
    with ``lenient`` it is ``unknown`` instead, and the model-dependent rules let it pass
    (the emulator's choice: it cannot tell what a deployment name runs).

    Sources: overview (model table), language support ("Speech input", "Speech output").
    """
    if agent:
        return "agent"
    name = (model or "").strip().lower()
    if _OPENAI_REALTIME.fullmatch(name):
        return "realtime"
    if name.startswith("phi") and "realtime" in name:
        return "phi"
    if name.startswith("azure-realtime"):
        return "azure-realtime"
    if lenient and name not in KNOWN_MODELS:
        return "unknown"
    return "text"


# --- voices ----------------------------------------------------------------------------------

#: RealtimeOpenAIVoice names (reference; SDK OpenAIVoiceName).
OPENAI_VOICES: Final = frozenset(
    {"alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"}
)
#: RealtimeAzureRealtimeNativeVoice names (reference; SDK AzureRealtimeNativeVoiceName).
NATIVE_VOICES: Final = frozenset(
    {
        "aarti",
        "andrew",
        "ava",
        "denise",
        "diya",
        "elsa",
        "florian",
        "francisca",
        "meera",
        "ximena",
        "xiaoxiao",
        "yunxi",
    }
)
#: Voice object types (reference RealtimeVoice; SDK AzureVoiceType).
VOICE_TYPES: Final = frozenset(
    {
        "openai",
        "azure-standard",
        "azure-custom",
        "azure-personal",
        "azure-realtime-native",
        "avatar-voice-sync",
    }
)
#: The fields each voice type takes (reference RealtimeOpenAIVoice, RealtimeAzure*Voice).
_AZURE_VOICE_FIELDS = frozenset(
    {
        "type",
        "name",
        "temperature",
        "custom_lexicon_url",
        "custom_text_normalization_url",
        "prefer_locales",
        "locale",
        "style",
        "pitch",
        "rate",
        "volume",
    }
)
VOICE_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "openai": frozenset({"type", "name"}),
    "azure-standard": _AZURE_VOICE_FIELDS,
    "azure-custom": _AZURE_VOICE_FIELDS | {"endpoint_id"},
    "azure-personal": (_AZURE_VOICE_FIELDS - {"style"}) | {"model"},
    "azure-realtime-native": frozenset({"type", "name"}),
    "avatar-voice-sync": frozenset({"type", "name"}),
}
#: The voice each family speaks with when none is configured: the relay's long-standing
#: default for the gpt-realtime family, the reference's default native voice for
#: azure-realtime (how-to, "azure-realtime model"), an Azure standard voice otherwise
#: (how-to, "Azure standard voices").
DEFAULT_VOICE: Final[Mapping[Family, str]] = {
    "realtime": "alloy",
    "phi": "en-US-AvaNeural",
    "azure-realtime": "ava",
    "text": "en-US-AvaNeural",
    "agent": "en-US-AvaNeural",
    "unknown": "alloy",
}

# An Azure voice name starts with its locale: en-US-AvaNeural, zh-CN-sichuan-YunxiNeural,
# sr-Latn-RS-NicholasNeural, en-US-Ava:DragonHDLatestNeural (Speech language support, TTS).
_AZURE_VOICE_NAME = re.compile(r"[a-z]{2,3}(-[A-Z][a-z]{3})?-[A-Z]{2}-\S+")
#: Rate keywords of the SSML prosody element (reference, voice `rate`).
RATE_WORDS: Final = frozenset({"x-slow", "slow", "medium", "fast", "x-fast", "default"})
_RATE_PERCENT = re.compile(r"[+-]\d+(\.\d+)?%")
_RATE_NUMBER = re.compile(r"\d+(\.\d+)?")


def is_azure_voice_name(name: str) -> bool:
    """Shaped like an Azure text to speech voice: a locale, then the voice."""
    return bool(_AZURE_VOICE_NAME.fullmatch(name))


def is_hd_voice(name: str) -> bool:
    """An Azure HD voice (``voicename:basemodel:version``, e.g.
    ``en-US-Ava:DragonHDLatestNeural``; HD voices article, "Supported HD voices")."""
    return ":DragonHD" in name


def rate_multiplier(rate: str) -> float | None:
    """The multiplier a numeric rate asks for, or None for a keyword or percentage.

    Raises ValueError for a value the SSML prosody `rate` does not take.
    """
    if rate in RATE_WORDS or _RATE_PERCENT.fullmatch(rate):
        return None
    if _RATE_NUMBER.fullmatch(rate):
        return float(rate)
    raise ValueError(rate)


# --- transcription, turn detection, audio processing ---------------------------------------

#: The OpenAI transcription models, and the Microsoft ones (reference,
#: RealtimeAudioInputTranscriptionSettings; SDK AudioInputTranscriptionOptions adds
#: mai-transcribe-1, which the language support page pairs with any text model).
OPENAI_TRANSCRIPTION: Final = frozenset(
    {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe", "gpt-4o-transcribe-diarize"}
)
TRANSCRIPTION_MODELS: Final = OPENAI_TRANSCRIPTION | {
    "azure-speech",
    "mai-transcribe",
    "mai-transcribe-1",
    "mai-transcribe-2",
}
#: Which transcription models each family takes. Reference: OpenAI ones plus
#: mai-transcribe(-2) "with gpt-realtime and gpt-realtime-mini"; azure-speech and
#: mai-transcribe(-2) "with all other models and agents". Language support: "Multimodal phi
#: models only support ... azure-speech".
TRANSCRIPTION_FOR: Final[Mapping[Family, frozenset[str]]] = {
    "realtime": OPENAI_TRANSCRIPTION | {"mai-transcribe", "mai-transcribe-2"},
    "phi": frozenset({"azure-speech"}),
    "azure-realtime": frozenset(
        {"azure-speech", "mai-transcribe", "mai-transcribe-1", "mai-transcribe-2"}
    ),
    "text": frozenset({"azure-speech", "mai-transcribe", "mai-transcribe-1", "mai-transcribe-2"}),
    "agent": frozenset({"azure-speech", "mai-transcribe", "mai-transcribe-1", "mai-transcribe-2"}),
    "unknown": TRANSCRIPTION_MODELS,
}
#: The transcription model each family gets when none is configured: whisper-1 for the
#: gpt-realtime family (the relay's long-standing default), azure-speech otherwise (how-to:
#: "automatically active with non-multimodal models").
DEFAULT_TRANSCRIPTION: Final[Mapping[Family, str]] = {
    "realtime": "whisper-1",
    "phi": "azure-speech",
    "azure-realtime": "azure-speech",
    "text": "azure-speech",
    "agent": "azure-speech",
    "unknown": "whisper-1",
}
#: phrase_list: "Supported with azure-speech, mai-transcribe, and mai-transcribe-2" (reference).
PHRASE_LIST_MODELS: Final = frozenset({"azure-speech", "mai-transcribe", "mai-transcribe-2"})
#: azure-speech takes "a maximum of 10 languages" (language support, "Speech input").
MAX_TRANSCRIPTION_LANGUAGES: Final = 10

#: Turn detection types (reference RealtimeTurnDetection; the SDK adds azure_semantic_vad_en).
SEMANTIC_TYPES: Final = frozenset(
    {"azure_semantic_vad", "azure_semantic_vad_en", "azure_semantic_vad_multilingual"}
)
TURN_DETECTION_TYPES: Final = SEMANTIC_TYPES | {"server_vad", "semantic_vad"}
_VAD_COMMON = frozenset({"type", "create_response", "interrupt_response"})
_VAD_ENERGY = _VAD_COMMON | {
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "speech_duration_ms",
    "end_of_utterance_detection",
    "auto_truncate",
}
#: The fields each turn detection type takes (reference RealtimeServerVAD,
#: RealtimeOpenAISemanticVAD, RealtimeAzureSemanticVAD(Multilingual); SDK AzureSemanticVadEn,
#: which has no `languages`).
TURN_DETECTION_FIELDS: Final[Mapping[str, frozenset[str]]] = {
    "server_vad": _VAD_ENERGY,
    "azure_semantic_vad": _VAD_ENERGY | {"remove_filler_words", "languages"},
    "azure_semantic_vad_en": _VAD_ENERGY | {"remove_filler_words"},
    "azure_semantic_vad_multilingual": _VAD_ENERGY | {"remove_filler_words", "languages"},
    "semantic_vad": _VAD_COMMON | {"eagerness"},
}
#: End-of-utterance models and threshold levels (reference RealtimeEOUDetection).
EOU_MODELS: Final = frozenset(
    {"semantic_detection_v1", "semantic_detection_v1_en", "semantic_detection_v1_multilingual"}
)
EOU_THRESHOLD_LEVELS: Final = frozenset({"low", "medium", "high", "default"})
#: The languages azure_semantic_vad_multilingual understands; azure_semantic_vad understands
#: English; "other languages are ignored" (reference RealtimeAzureSemanticVAD*).
MULTILINGUAL_VAD_LANGUAGES: Final = frozenset(
    {"en", "es", "fr", "it", "de", "ja", "pt", "zh", "ko", "hi"}
)

#: Noise reduction types (reference RealtimeInputAudioNoiseReductionSettings); near_field
#: and far_field are OpenAI's, "only available for gpt-realtime and gpt-realtime-mini".
OPENAI_NOISE_REDUCTION: Final = frozenset({"near_field", "far_field"})
NOISE_REDUCTION_TYPES: Final = OPENAI_NOISE_REDUCTION | {"azure_deep_noise_suppression"}


# --- the rules -------------------------------------------------------------------------------


@attrs.frozen
class Target:
    """What a configuration is checked against: the connection it is sent on."""

    model: str | None
    agent: bool = False
    api_version: str | None = None
    #: How the connection signed in: "key" (api-key), "entra" (a bearer token), or None.
    auth: str | None = None
    #: Unlisted models pass the model-dependent rules (see model_family).
    lenient: bool = False

    @property
    def family(self) -> Family:
        return model_family(self.model, agent=self.agent, lenient=self.lenient)


Check = Callable[[Mapping[str, Any], Target], str | None]


@attrs.frozen
class Rule:
    """One thing the service documents. ``check`` returns what is wrong, or None."""

    id: str
    severity: Literal["error", "warning"]
    #: Where it applies: "session" (a session.update, ``param`` names the field) or
    #: "connection" (the handshake: query parameters and credentials).
    scope: Literal["session", "connection"]
    #: The field of the session (``session.voice.temperature``) or the handshake part.
    param: str
    #: The voicebridge settings that decide it, named in start-up messages.
    settings: tuple[str, ...]
    source: str
    check: Check = attrs.field(repr=False)


@attrs.frozen
class Finding:
    """A rule that does not hold for a configuration, and why."""

    rule: Rule
    message: str


def _object(session: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = session.get(key)
    return value if isinstance(value, Mapping) else {}


def _voice(session: Mapping[str, Any]) -> Mapping[str, Any]:
    voice = session.get("voice")
    if isinstance(voice, str):
        return {"type": "openai" if voice in OPENAI_VOICES else "azure-standard", "name": voice}
    return voice if isinstance(voice, Mapping) else {}


def _transcription_model(session: Mapping[str, Any]) -> str | None:
    model = _object(session, "input_audio_transcription").get("model")
    return model if isinstance(model, str) else None


def _family_name(target: Target) -> str:
    return "a Foundry agent" if target.agent else f"model '{target.model}'"


def _check_transcription_model(session: Mapping[str, Any], target: Target) -> str | None:
    model = _transcription_model(session)
    if model is None:
        return None
    if model not in TRANSCRIPTION_MODELS:
        return (
            f"'{model}' is not a transcription model Voice Live offers "
            f"({', '.join(sorted(TRANSCRIPTION_MODELS))})"
        )
    allowed = TRANSCRIPTION_FOR[target.family]
    if model not in allowed:
        return (
            f"'{model}' is not available for {_family_name(target)}, which takes "
            f"{', '.join(sorted(allowed))}"
        )
    return None


def _check_phrase_list(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _object(session, "input_audio_transcription")
    if spec.get("phrase_list") and spec.get("model") not in PHRASE_LIST_MODELS:
        return (
            f"a phrase list works only with {', '.join(sorted(PHRASE_LIST_MODELS))}, "
            f"not '{spec.get('model')}'"
        )
    return None


def _check_custom_speech(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _object(session, "input_audio_transcription")
    if spec.get("custom_speech") and spec.get("model") != "azure-speech":
        return "custom speech models work only with azure-speech"
    return None


def _check_prompt(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _object(session, "input_audio_transcription")
    if spec.get("prompt") and spec.get("model") not in OPENAI_TRANSCRIPTION:
        return f"a transcription prompt works only with {', '.join(sorted(OPENAI_TRANSCRIPTION))}"
    return None


def _languages(spec: Mapping[str, Any]) -> list[str]:
    language = spec.get("language")
    if not isinstance(language, str):
        return []
    return [part.strip() for part in language.split(",") if part.strip()]


def _check_language_count(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _object(session, "input_audio_transcription")
    count = len(_languages(spec))
    if count > MAX_TRANSCRIPTION_LANGUAGES:
        return f"{count} languages given; at most {MAX_TRANSCRIPTION_LANGUAGES} are supported"
    return None


def _check_language_hint(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _object(session, "input_audio_transcription")
    languages = _languages(spec)
    if spec.get("model") in OPENAI_TRANSCRIPTION and (
        len(languages) > 1 or any(len(code) != 2 for code in languages)
    ):
        return (
            f"'{spec.get('model')}' takes a single ISO-639-1 language hint such as 'en', "
            f"not '{spec.get('language')}'"
        )
    return None


def _check_voice_type(session: Mapping[str, Any], target: Target) -> str | None:
    voice = _voice(session)
    kind = voice.get("type")
    if not voice or kind is None:
        return None
    if kind not in VOICE_TYPES:
        return f"'{kind}' is not a voice type ({', '.join(sorted(VOICE_TYPES))})"
    extra = set(voice) - VOICE_FIELDS[kind]
    if extra:
        return f"a voice of type '{kind}' takes no {', '.join(sorted(extra))}"
    name = voice.get("name")
    if not isinstance(name, str) or not name.strip():
        return "the voice needs a name"
    if kind == "openai" and name not in OPENAI_VOICES:
        return f"'{name}' is not an OpenAI voice ({', '.join(sorted(OPENAI_VOICES))})"
    if kind == "azure-realtime-native" and name not in NATIVE_VOICES:
        return f"'{name}' is not an azure-realtime voice ({', '.join(sorted(NATIVE_VOICES))})"
    if kind == "azure-standard" and not is_azure_voice_name(name):
        return (
            f"'{name}' is neither an OpenAI voice ({', '.join(sorted(OPENAI_VOICES))}) nor an "
            "Azure voice name, which starts with its locale (en-US-AvaNeural, "
            "en-US-Ava:DragonHDLatestNeural)"
        )
    if kind == "azure-custom" and not str(voice.get("endpoint_id") or "").strip():
        return "a custom voice (azure-custom) needs the endpoint_id of its deployment"
    return None


def _check_openai_voice(session: Mapping[str, Any], target: Target) -> str | None:
    voice = _voice(session)
    if voice.get("type") == "openai" and target.family not in ("realtime", "agent", "unknown"):
        return (
            f"OpenAI voices ({voice.get('name')}) are spoken by the gpt-realtime models only; "
            f"{_family_name(target)} speaks with Azure voices such as en-US-AvaNeural"
        )
    return None


def _check_openai_voice_agent(session: Mapping[str, Any], target: Target) -> str | None:
    voice = _voice(session)
    if voice.get("type") == "openai" and target.family == "agent":
        return (
            f"an OpenAI voice ({voice.get('name')}) works only if the agent runs a "
            "gpt-realtime model; Azure voices work with any"
        )
    return None


def _check_native_voice(session: Mapping[str, Any], target: Target) -> str | None:
    voice = _voice(session)
    if voice.get("type") == "azure-realtime-native" and target.family not in (
        "azure-realtime",
        "unknown",
    ):
        return "azure-realtime-native voices are accepted by the azure-realtime model only"
    return None


def _check_azure_realtime_voice(session: Mapping[str, Any], target: Target) -> str | None:
    voice = _voice(session)
    if target.family == "azure-realtime" and voice and voice.get("type") != "azure-realtime-native":
        return (
            f"azure-realtime speaks with its own native voices ({', '.join(sorted(NATIVE_VOICES))})"
        )
    return None


def _check_voice_temperature(session: Mapping[str, Any], target: Target) -> str | None:
    value = _voice(session).get("temperature")
    if value is None:
        return None
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        return f"voice temperature {value!r} is outside 0.0..1.0"
    return None


def _check_temperature_hd(session: Mapping[str, Any], target: Target) -> str | None:
    voice = _voice(session)
    name = voice.get("name")
    if voice.get("temperature") is not None and isinstance(name, str) and not is_hd_voice(name):
        return (
            f"voice temperature applies to Azure HD voices (such as "
            f"en-US-Ava:DragonHDLatestNeural); '{name}' is not one"
        )
    return None


def _check_voice_rate(session: Mapping[str, Any], target: Target) -> str | None:
    rate = _voice(session).get("rate")
    if rate is None:
        return None
    if not isinstance(rate, str):
        return f"the voice rate must be a string such as '1.2', not {rate!r}"
    try:
        rate_multiplier(rate)
    except ValueError:
        return (
            f"voice rate '{rate}' is not a multiplier (1.2), a percentage (+20%) or one of "
            f"{', '.join(sorted(RATE_WORDS))}"
        )
    return None


def _check_rate_range(session: Mapping[str, Any], target: Target) -> str | None:
    rate = _voice(session).get("rate")
    try:
        multiplier = rate_multiplier(rate) if isinstance(rate, str) else None
    except ValueError:
        return None
    if multiplier is not None and not 0.5 <= multiplier <= 1.5:
        return f"voice rate {rate} is outside the recommended 0.5..1.5"
    return None


def _turn(session: Mapping[str, Any]) -> Mapping[str, Any]:
    return _object(session, "turn_detection")


def _check_turn_type(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _turn(session)
    kind = spec.get("type")
    if not spec or kind == "none":
        return None
    if kind not in TURN_DETECTION_TYPES:
        return f"'{kind}' is not a turn detection type ({', '.join(sorted(TURN_DETECTION_TYPES))})"
    extra = set(spec) - TURN_DETECTION_FIELDS[kind]
    if extra:
        return f"turn detection '{kind}' takes no {', '.join(sorted(extra))}"
    return None


def _check_semantic_vad(session: Mapping[str, Any], target: Target) -> str | None:
    if _turn(session).get("type") == "semantic_vad" and target.family not in (
        "realtime",
        "unknown",
    ):
        return (
            f"semantic_vad is available with the gpt-realtime models only, not for "
            f"{_family_name(target)}; azure_semantic_vad works with all"
        )
    return None


def _check_eou(session: Mapping[str, Any], target: Target) -> str | None:
    eou = _turn(session).get("end_of_utterance_detection")
    if eou is None:
        return None
    if not isinstance(eou, Mapping) or eou.get("model") not in EOU_MODELS:
        return f"end-of-utterance detection takes a model among {', '.join(sorted(EOU_MODELS))}"
    level = eou.get("threshold_level")
    if level is not None and level not in EOU_THRESHOLD_LEVELS:
        return f"threshold_level '{level}' is not one of {', '.join(sorted(EOU_THRESHOLD_LEVELS))}"
    timeout = eou.get("timeout_ms")
    if timeout is not None and (not _is_number(timeout) or timeout <= 0):
        return f"timeout_ms {timeout!r} must be a positive number"
    extra = set(eou) - {"model", "threshold_level", "timeout_ms"}
    if extra:
        return f"end-of-utterance detection takes no {', '.join(sorted(extra))}"
    return None


def _check_vad_languages(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _turn(session)
    languages = spec.get("languages")
    if not isinstance(languages, list) or not languages:
        return None
    primary = {str(code).split("-")[0].lower() for code in languages}
    understood = {"en"} if spec.get("type") == "azure_semantic_vad" else MULTILINGUAL_VAD_LANGUAGES
    ignored = sorted(primary - understood)
    if ignored:
        return f"{spec.get('type')} ignores the languages {', '.join(ignored)}"
    return None


def _check_noise_reduction(session: Mapping[str, Any], target: Target) -> str | None:
    kind = _object(session, "input_audio_noise_reduction").get("type")
    if kind is None:
        return None
    if kind not in NOISE_REDUCTION_TYPES:
        return (
            f"'{kind}' is not a noise reduction type ({', '.join(sorted(NOISE_REDUCTION_TYPES))})"
        )
    if kind in OPENAI_NOISE_REDUCTION and target.family not in ("realtime", "unknown"):
        return (
            f"noise reduction '{kind}' is available with the gpt-realtime models only; "
            "azure_deep_noise_suppression works with all"
        )
    return None


def _check_echo_reference(session: Mapping[str, Any], target: Target) -> str | None:
    spec = _object(session, "input_audio_echo_cancellation")
    if not spec:
        return None
    source = spec.get("reference_source", "server")
    channels = spec.get("channels", 1)
    if (source, channels) not in (("server", 1), ("client", 2)):
        return (
            f"echo cancellation with reference_source '{source}' and channels {channels!r}: "
            "only server/1 and client/2 are valid"
        )
    return None


def _check_instructions_agent(session: Mapping[str, Any], target: Target) -> str | None:
    if target.agent and session.get("instructions"):
        return "instructions are not supported with a Foundry agent: the agent has its own"
    return None


def _check_session_temperature(session: Mapping[str, Any], target: Target) -> str | None:
    value = session.get("temperature")
    if value is not None and (not _is_number(value) or not 0.6 <= value <= 1.2):
        return f"the model temperature {value!r} is outside 0.6..1.2"
    return None


def _check_modalities(session: Mapping[str, Any], target: Target) -> str | None:
    modalities = session.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities and "text" not in modalities:
        return "modalities cannot be audio alone: use ['text', 'audio']"
    return None


def _check_api_version(session: Mapping[str, Any], target: Target) -> str | None:
    if target.api_version is not None and target.api_version not in API_VERSIONS:
        return (
            f"api-version '{target.api_version}' is not one Voice Live answers "
            f"({', '.join(sorted(API_VERSIONS))})"
        )
    return None


def _check_model_or_agent(session: Mapping[str, Any], target: Target) -> str | None:
    if not target.agent and not target.model:
        return "a connection names a model, or an agent (agent-name and agent-project-name)"
    return None


def _check_agent_auth(session: Mapping[str, Any], target: Target) -> str | None:
    if target.agent and target.auth == "key":
        return "a Foundry agent is reached with Microsoft Entra ID only, not an API key"
    return None


def _check_model_known(session: Mapping[str, Any], target: Target) -> str | None:
    if not target.agent and target.model and target.model not in KNOWN_MODELS:
        return (
            f"'{target.model}' is not a model Voice Live lists (a bring-your-own-model "
            "deployment?); treated as a text model: speech to text in, Azure voices out"
        )
    return None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_S: Literal["session"] = "session"
_C: Literal["connection"] = "connection"
_TRANSCRIPTION = ("TRANSCRIPTION_MODEL",)
_VOICE = ("VOICE_NAME",)
_REF = SRC_REFERENCE

#: Every rule, in the order start-up messages list them. Columns: id, severity, scope,
#: the field, the settings that decide it, the source, the check.
RULES: Final[tuple[Rule, ...]] = (
    # The connection (handshake).
    Rule("api-version", "warning", _C, "api-version", ("AZURE_API_VERSION",),
         _REF + "#endpoint-and-authentication", _check_api_version),
    Rule("model-or-agent", "error", _C, "model", ("AZURE_OPENAI_DEPLOYMENT",
         "VOICELIVE_AGENT_NAME"), _REF + "#websocket-endpoint", _check_model_or_agent),
    Rule("agent-entra-only", "error", _C, "api-key", ("AZURE_AUTH", "VOICELIVE_AGENT_NAME"),
         SRC_AGENTS + " (Python: Authentication model for agent mode)", _check_agent_auth),
    Rule("model-known", "warning", _C, "model", ("AZURE_OPENAI_DEPLOYMENT",), SRC_OVERVIEW,
         _check_model_known),
    # Transcription.
    Rule("transcription-model", "error", _S, "session.input_audio_transcription.model",
         _TRANSCRIPTION, _REF + "#realtimeaudioinputtranscriptionsettings; "
         + SRC_HOW_TO + "#audio-input-transcription; " + SRC_LANGUAGES,
         _check_transcription_model),
    Rule("phrase-list-model", "error", _S, "session.input_audio_transcription.phrase_list",
         ("TRANSCRIPTION_PHRASES", "TRANSCRIPTION_MODEL"),
         _REF + "#realtimeaudioinputtranscriptionsettings", _check_phrase_list),
    Rule("custom-speech-model", "error", _S, "session.input_audio_transcription.custom_speech",
         _TRANSCRIPTION, _REF + "#realtimeaudioinputtranscriptionsettings",
         _check_custom_speech),
    Rule("prompt-model", "error", _S, "session.input_audio_transcription.prompt",
         _TRANSCRIPTION, _REF + "#realtimeaudioinputtranscriptionsettings", _check_prompt),
    Rule("transcription-languages", "error", _S, "session.input_audio_transcription.language",
         ("TRANSCRIPTION_LANGUAGE",), SRC_LANGUAGES + " (Azure speech to text)",
         _check_language_count),
    Rule("transcription-language-hint", "warning", _S,
         "session.input_audio_transcription.language", ("TRANSCRIPTION_LANGUAGE",),
         SRC_LANGUAGES + " (gpt-realtime and gpt-realtime-mini)", _check_language_hint),
    # Voice.
    Rule("voice-shape", "error", _S, "session.voice", ("VOICE_NAME", "VOICE_ENDPOINT_ID",
         "VOICE_TEMPERATURE", "VOICE_RATE"), _REF + "#voice-configuration",
         _check_voice_type),
    Rule("openai-voice-model", "error", _S, "session.voice", _VOICE,
         SRC_LANGUAGES + " (Speech output); " + SRC_OVERVIEW, _check_openai_voice),
    Rule("openai-voice-agent", "warning", _S, "session.voice", _VOICE,
         SRC_LANGUAGES + " (Speech output)", _check_openai_voice_agent),
    Rule("native-voice-model", "error", _S, "session.voice", _VOICE,
         _REF + "#realtimeazurerealtimenativevoice", _check_native_voice),
    Rule("azure-realtime-voice", "warning", _S, "session.voice", _VOICE,
         SRC_HOW_TO + "#azure-realtime-model", _check_azure_realtime_voice),
    Rule("voice-temperature", "error", _S, "session.voice.temperature", ("VOICE_TEMPERATURE",),
         _REF + "#realtimeazurestandardvoice", _check_voice_temperature),
    Rule("voice-temperature-hd", "warning", _S, "session.voice.temperature",
         ("VOICE_TEMPERATURE",), SRC_HOW_TO + "#audio-output-through-azure-text-to-speech; "
         + SRC_HD_VOICES, _check_temperature_hd),
    Rule("voice-rate", "error", _S, "session.voice.rate", ("VOICE_RATE",),
         _REF + "#realtimeazurestandardvoice (SSML prosody rate)", _check_voice_rate),
    Rule("voice-rate-range", "warning", _S, "session.voice.rate", ("VOICE_RATE",),
         SRC_HOW_TO + "#speaking-rate", _check_rate_range),
    # Turn detection.
    Rule("turn-detection-shape", "error", _S, "session.turn_detection", ("TURN_DETECTION",
         "VAD_REMOVE_FILLER_WORDS", "VAD_LANGUAGES", "END_OF_UTTERANCE"),
         _REF + "#turn-detection", _check_turn_type),
    Rule("semantic-vad-model", "error", _S, "session.turn_detection.type", ("TURN_DETECTION",),
         _REF + "#realtimeopenaisemanticvad; " + SRC_HOW_TO + "#turn-detection-parameters",
         _check_semantic_vad),
    Rule("end-of-utterance", "error", _S, "session.turn_detection.end_of_utterance_detection",
         ("END_OF_UTTERANCE",), _REF + "#realtimeeoudetection", _check_eou),
    Rule("vad-languages", "warning", _S, "session.turn_detection.languages",
         ("VAD_LANGUAGES",), _REF + "#realtimeazuresemanticvad", _check_vad_languages),
    # Audio processing.
    Rule("noise-reduction", "error", _S, "session.input_audio_noise_reduction.type",
         ("NOISE_REDUCTION",), _REF + "#realtimeopenainoisereduction",
         _check_noise_reduction),
    Rule("echo-reference", "error", _S, "session.input_audio_echo_cancellation",
         ("ECHO_CANCELLATION",), _REF + "#realtimeinputaudioechocancellationsettings",
         _check_echo_reference),
    # The model.
    Rule("agent-instructions", "error", _S, "session.instructions", ("VOICELIVE_AGENT_NAME",),
         SRC_HOW_TO + "#session-configuration", _check_instructions_agent),
    Rule("model-temperature", "error", _S, "session.temperature", (),
         _REF + "#realtimerequestsession", _check_session_temperature),
    Rule("modalities", "error", _S, "session.modalities", (),
         _REF + "#realtimerequestsession", _check_modalities),
)  # fmt: skip


def check(
    session: Mapping[str, Any],
    target: Target,
    *,
    scope: str | None = None,
    rules: Sequence[Rule] = RULES,
) -> list[Finding]:
    """Every rule of ``scope`` (both when None) that ``session`` on ``target`` breaks."""
    found = []
    for rule in rules:
        if scope is not None and rule.scope != scope:
            continue
        message = rule.check(session, target)
        if message is not None:
            found.append(Finding(rule, message))
    return found


def rule(rule_id: str) -> Rule:
    """The rule with this id (KeyError if none)."""
    for candidate in RULES:
        if candidate.id == rule_id:
            return candidate
    raise KeyError(rule_id)
