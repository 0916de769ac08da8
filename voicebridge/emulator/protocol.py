"""The Voice Live wire protocol as the emulator speaks it: session configuration and events.

Pure functions over JSON-ready dicts: validating `session.update`, and building the server
events whose names and fields follow `azure.ai.voicelive.models` (ServerEvent* classes).
No I/O here and no SDK model objects: the hot path must stay cheap, and the tests check
every event built here against the SDK's deserializer instead.
"""

from __future__ import annotations

import itertools
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

from voicebridge import voicelive
from voicebridge.emulator import formats
from voicebridge.voicelive import OPENAI_VOICES, Target

JSON = dict[str, Any]

# --- error codes -------------------------------------------------------------------------
# The service's codes where its behaviour is known; `emulator_unsupported` marks values the
# service accepts but the emulator does not implement (e.g. a client echo reference).
ERR_INVALID_JSON = "invalid_json"
ERR_INVALID_EVENT = "invalid_event"
ERR_MISSING_PARAMETER = "missing_required_parameter"
ERR_INVALID_VALUE = "invalid_value"
ERR_UNKNOWN_PARAMETER = "unknown_parameter"
ERR_EMULATOR_UNSUPPORTED = "emulator_unsupported"
ERR_COMMIT_EMPTY = "input_audio_buffer_commit_empty"
ERR_BUFFER_FULL = "input_audio_buffer_full"
ERR_CANCEL_NOT_ACTIVE = "response_cancel_not_active"
ERR_ACTIVE_RESPONSE = "conversation_already_has_active_response"
ERR_ITEM_NOT_FOUND = "item_not_found"
ERR_TRUNCATE_INVALID = "item_truncate_invalid_audio_end_ms"
ERR_INJECTED = "emulator_injected_fault"
ERR_TRANSCRIPTION_FAILED = "transcription_failed"
#: A function_call_output whose call_id matches no function_call item: the service's
#: "Tool call ID '...' not found in conversation." (OpenAI Realtime API, as reported in
#: livekit/agents#3344; reference: "the server will check that a function_call item with
#: the same ID exists in the conversation history").
ERR_INVALID_TOOL_CALL_ID = "invalid_tool_call_id"

CLIENT_EVENT_TYPES = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)


@attrs.define
class ProtocolError(Exception):
    """A client event the service would refuse; becomes an `error` event, socket stays open."""

    code: str
    message: str
    param: str | None = None
    type: str = "invalid_request_error"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


@attrs.define
class Ids:
    """Identifier factory for one connection: unique, short, and cheap (a counter)."""

    _prefix: str = attrs.field(factory=lambda: secrets.token_hex(4))
    _counter: itertools.count[int] = attrs.field(factory=itertools.count)

    def new(self, kind: str) -> str:
        """A fresh id such as `item_1a2b3c4d_7` (kind: event, item, resp, sess, conv)."""
        return f"{kind}_{self._prefix}_{next(self._counter)}"


def error_event(event_id: str, error: ProtocolError, client_event_id: str | None) -> JSON:
    """The service's `error` event (SDK: ServerEventError / ServerEventErrorDetails)."""
    return {
        "type": "error",
        "event_id": event_id,
        "error": {
            "type": error.type,
            "code": error.code,
            "message": error.message,
            "param": error.param,
            "event_id": client_event_id,
        },
    }


ERR_SESSION_EXPIRED = "session_expired"


def session_expired_event(event_id: str, cap_s: float) -> JSON:
    """The `error` the service sends when a connection reaches its maximum duration, just
    before it closes the socket with 1001 (Voice Live API reference: the session's
    `expires_at`; the code is `session_expired`)."""
    return error_event(
        event_id,
        ProtocolError(
            ERR_SESSION_EXPIRED,
            f"Your session hit the maximum duration of {cap_s:g} seconds.",
        ),
        None,
    )


def warning_event(event_id: str, message: str, code: str | None = None) -> JSON:
    """The service's `warning` event: informational, the session goes on (reference
    2026-07-15, "warning"; SDK: ServerEventWarning / ServerEventWarningDetails)."""
    return {
        "type": "warning",
        "event_id": event_id,
        "warning": {"message": message, "code": code, "param": None},
    }


def transcription_failed_event(event_id: str, item_id: str, message: str) -> JSON:
    """`conversation.item.input_audio_transcription.failed` (reference 2026-07-15; SDK:
    ServerEventConversationItemInputAudioTranscriptionFailed, VoiceLiveErrorDetails)."""
    return {
        "type": "conversation.item.input_audio_transcription.failed",
        "event_id": event_id,
        "item_id": item_id,
        "content_index": 0,
        "error": {
            "type": "server_error",
            "code": ERR_TRANSCRIPTION_FAILED,
            "message": message,
            "param": None,
        },
    }


# --- session configuration ---------------------------------------------------------------

AZURE_VOICE_TYPES = voicelive.VOICE_TYPES - {"openai"}
# Semantic VADs are emulated with the same energy detector.
VAD_TYPES = voicelive.TURN_DETECTION_TYPES
NOISE_REDUCTION_TYPES = voicelive.NOISE_REDUCTION_TYPES
#: semantic_vad's `eagerness` (reference, RealtimeOpenAISemanticVAD).
EAGERNESS = frozenset({"auto", "low", "medium", "high"})
MODALITIES = frozenset({"text", "audio", "animation", "avatar"})
# Audio formats and the rates each takes (SDK InputAudioFormat / OutputAudioFormat and the
# input_audio_sampling_rate docstring; see emulator/formats.py, which cites them).
KNOWN_INPUT_FORMATS = frozenset(formats.INPUT_RATES)
KNOWN_OUTPUT_FORMATS = frozenset(formats.OUTPUT_FORMATS)
KNOWN_SAMPLING_RATES = frozenset(rate for rates in formats.INPUT_RATES.values() for rate in rates)

# Fields of the SDK's RequestSession; the emulator stores and echoes the ones it does not act
# on (tools, avatar, ...), and refuses anything else as the service does.
SESSION_FIELDS = frozenset(
    {
        "model",
        "modalities",
        "animation",
        "voice",
        "instructions",
        "input_audio_sampling_rate",
        "input_audio_format",
        "output_audio_format",
        "turn_detection",
        "input_audio_noise_reduction",
        "input_audio_echo_cancellation",
        "avatar",
        "input_audio_transcription",
        "output_audio_timestamp_types",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "temperature",
        "max_response_output_tokens",
        "reasoning_effort",
        "interim_response",
        "include",
        "metadata",
    }
)

DEFAULT_TURN_DETECTION: JSON = {
    "type": "server_vad",
    "threshold": 0.5,
    "prefix_padding_ms": 300,
    "silence_duration_ms": 500,
    "create_response": True,
    "interrupt_response": True,
    "auto_truncate": False,
}


def default_voice(target: Target) -> JSON:
    """The voice a connection starts with: the model's own (see voicelive.DEFAULT_VOICE)."""
    name = voicelive.DEFAULT_VOICE[target.family]
    if name in OPENAI_VOICES:
        return {"type": "openai", "name": name}
    if target.family == "azure-realtime":
        return {"type": "azure-realtime-native", "name": name}
    return {"type": "azure-standard", "name": name}


def default_session(session_id: str, model: str | None, target: Target | None = None) -> JSON:
    """The configuration a new connection starts with (echoed in `session.created`)."""
    target = target or Target(model=model, lenient=True)
    return {
        "id": session_id,
        "object": "realtime.session",
        "model": model,
        "modalities": ["text", "audio"],
        "voice": default_voice(target),
        "instructions": "",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "input_audio_sampling_rate": 24000,
        "turn_detection": dict(DEFAULT_TURN_DETECTION),
        "input_audio_noise_reduction": None,
        "input_audio_echo_cancellation": None,
        "input_audio_transcription": None,
        "tools": [],
        "tool_choice": "auto",
        "temperature": 0.8,
        "max_response_output_tokens": "inf",
    }


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _invalid(param: str, message: str) -> ProtocolError:
    return ProtocolError(ERR_INVALID_VALUE, message, param)


def _require_object(value: object, param: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(param, f"Invalid type for '{param}': expected an object.")
    return value


def _normalize_voice(value: object) -> JSON:
    """A voice as an object (the string form names an OpenAI or Azure standard voice);
    the combination with the model is the rules' (voice-shape, openai-voice-model, ...)."""
    param = "session.voice"
    if isinstance(value, str):
        if value in OPENAI_VOICES:
            return {"type": "openai", "name": value}
        if voicelive.is_azure_voice_name(value):
            return {"type": "azure-standard", "name": value}
        raise _invalid(param, f"Invalid value: '{value}' is not a known voice name.")
    voice = _require_object(value, param)
    kind = voice.get("type")
    name = voice.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(ERR_MISSING_PARAMETER, "Missing required parameter: 'name'.", param)
    if kind == "openai":
        if name not in OPENAI_VOICES:
            raise _invalid(
                f"{param}.name",
                f"Invalid value: '{name}'. Supported values are: {sorted(OPENAI_VOICES)}.",
            )
    elif kind not in AZURE_VOICE_TYPES:
        raise _invalid(f"{param}.type", f"Invalid value: '{kind}' is not a supported voice type.")
    # Each voice type takes its own fields (reference 2026-07-15, "Voice Configuration").
    for field in sorted(set(voice) - voicelive.VOICE_FIELDS[kind]):
        raise ProtocolError(
            ERR_UNKNOWN_PARAMETER,
            f"Unknown parameter for a voice of type '{kind}': '{field}'.",
            f"{param}.{field}",
        )
    return dict(voice)


def _normalize_turn_detection(value: object) -> JSON | None:
    param = "session.turn_detection"
    if value is None:
        return None
    spec = _require_object(value, param)
    kind = spec.get("type")
    if kind == "none":
        return None
    if kind not in VAD_TYPES:
        raise _invalid(
            f"{param}.type", f"Invalid value: '{kind}'. Supported values are: {sorted(VAD_TYPES)}."
        )
    extra = set(spec) - voicelive.TURN_DETECTION_FIELDS[kind]
    if extra:
        # Each type takes its own fields (reference 2026-07-15, "Turn Detection").
        name = sorted(extra)[0]
        raise ProtocolError(
            ERR_UNKNOWN_PARAMETER,
            f"Unknown parameter for turn detection '{kind}': '{name}'.",
            f"{param}.{name}",
        )
    if kind == "semantic_vad":
        merged = {"type": kind, "create_response": True, "interrupt_response": True, **spec}
    else:
        merged = {**DEFAULT_TURN_DETECTION, **spec}
    threshold = merged.get("threshold", 0.5)
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise _invalid(
            f"{param}.threshold", f"Invalid 'threshold': {threshold!r}; expected 0.0 to 1.0."
        )
    for key in ("prefix_padding_ms", "silence_duration_ms", "speech_duration_ms"):
        ms = merged.get(key, 0)
        if not isinstance(ms, int) or isinstance(ms, bool) or ms < 0:
            raise _invalid(f"{param}.{key}", f"Invalid '{key}': {ms!r}; expected an integer >= 0.")
    for key in ("create_response", "interrupt_response", "auto_truncate", "remove_filler_words"):
        if not isinstance(merged.get(key, False), bool):
            raise _invalid(f"{param}.{key}", f"Invalid '{key}': expected a boolean.")
    languages = merged.get("languages", [])
    if not isinstance(languages, list) or not all(isinstance(x, str) for x in languages):
        raise _invalid(f"{param}.languages", "Invalid 'languages': expected a list of strings.")
    if merged.get("eagerness", "auto") not in EAGERNESS:
        raise _invalid(
            f"{param}.eagerness", f"Invalid 'eagerness'. Supported values are: {sorted(EAGERNESS)}."
        )
    return merged


def _check_format(value: object, param: str, known: frozenset[str]) -> str:
    # Exact values only: not the SDK's legacy "pcm16-8000hz" spellings (formats.py says why).
    if isinstance(value, str) and value in known:
        return value
    raise _invalid(param, f"Invalid value: {value!r}. Supported values are: {sorted(known)}.")


def _check_sampling_rate(current: Mapping[str, Any], fields: Mapping[str, Any], new: JSON) -> None:
    """Settle `input_audio_sampling_rate` against the merged `input_audio_format`.

    The SDK's rule (RequestSession.input_audio_sampling_rate): "For pcm16: 8000, 16000,
    24000; For g711_alaw/g711_ulaw: 8000". An update that changes the format without
    naming a rate gets the new format's own (g711: 8000; pcm16: its default 24000,
    InputAudioFormat.PCM16); one that names a rate the format does not take is refused,
    naming the rate.
    """
    codec = new["input_audio_format"]
    rates = formats.INPUT_RATES[codec]
    param = "session.input_audio_sampling_rate"
    if "input_audio_sampling_rate" not in fields:
        if codec != current.get("input_audio_format"):
            new["input_audio_sampling_rate"] = rates[0]
        return
    rate = new["input_audio_sampling_rate"]
    if rate not in rates:
        allowed = " or ".join(str(r) for r in sorted(rates))
        raise _invalid(
            param,
            f"Invalid value: {rate!r}; input_audio_format '{codec}' takes {allowed} Hz.",
        )


def _check_typed(value: object, param: str, types: frozenset[str]) -> JSON | None:
    if value is None:
        return None
    spec = _require_object(value, param)
    if spec.get("type") not in types:
        raise _invalid(
            f"{param}.type",
            f"Invalid value: {spec.get('type')!r}. Supported values are: {sorted(types)}.",
        )
    return dict(spec)


_TRANSCRIPTION_FIELDS = frozenset({"model", "language", "custom_speech", "phrase_list", "prompt"})


def _check_transcription(value: object, param: str) -> JSON | None:
    if value is None:
        return None
    spec = _require_object(value, param)
    if not isinstance(spec.get("model"), str) or not spec["model"]:
        raise ProtocolError(ERR_MISSING_PARAMETER, "Missing required parameter: 'model'.", param)
    for key in sorted(set(spec) - _TRANSCRIPTION_FIELDS):
        raise ProtocolError(ERR_UNKNOWN_PARAMETER, f"Unknown parameter: '{key}'.", f"{param}.{key}")
    for key in ("language", "prompt"):
        if key in spec and not isinstance(spec[key], str):
            raise _invalid(f"{param}.{key}", f"Invalid type for '{key}': expected a string.")
    phrases = spec.get("phrase_list", [])
    if not isinstance(phrases, list) or not all(isinstance(p, str) for p in phrases):
        raise _invalid(f"{param}.phrase_list", "Invalid 'phrase_list': expected a list of strings.")
    return dict(spec)


def check_rules(session: Mapping[str, Any], target: Target) -> None:
    """Refuse a session the service documents as invalid for this connection's model or
    agent (voicebridge.voicelive.RULES, errors of the "session" scope)."""
    for finding in voicelive.check(session, target, scope="session"):
        if finding.rule.severity == "error":
            message = finding.message[:1].upper() + finding.message[1:] + "."
            raise ProtocolError(ERR_INVALID_VALUE, message, finding.rule.param)


def apply_session_update(
    current: Mapping[str, Any], update: object, target: Target | None = None
) -> JSON:
    """The session after `update` (a `session.update` event's `session`), all or nothing.

    Raises ProtocolError for the first invalid or unknown field, then for the first rule
    the merged session breaks on ``target`` (the connection's model or agent).
    """
    target = target or Target(model=current.get("model"), lenient=True)
    new = _merge_session_update(current, update, target)
    check_rules(new, target)
    return new


def _merge_session_update(current: Mapping[str, Any], update: object, target: Target) -> JSON:
    fields = _require_object(update, "session")
    new = dict(current)
    for key, value in fields.items():
        param = f"session.{key}"
        if key not in SESSION_FIELDS:
            raise ProtocolError(ERR_UNKNOWN_PARAMETER, f"Unknown parameter: '{param}'.", param)
        if key == "tools":
            new[key] = check_tools(value, target)
        elif key == "tool_choice":
            new[key] = value  # checked below, against the merged tools
        elif key == "voice":
            new[key] = _normalize_voice(value)
        elif key == "turn_detection":
            new[key] = _normalize_turn_detection(value)
        elif key == "input_audio_format":
            new[key] = _check_format(value, param, KNOWN_INPUT_FORMATS)
        elif key == "output_audio_format":
            new[key] = _check_format(value, param, KNOWN_OUTPUT_FORMATS)
        elif key == "input_audio_sampling_rate":
            if type(value) is not int or value not in KNOWN_SAMPLING_RATES:
                raise _invalid(param, f"Invalid value: {value!r}; expected 8000, 16000 or 24000.")
            new[key] = value  # against the format once every field is merged
        elif key == "input_audio_noise_reduction":
            new[key] = _check_typed(value, param, NOISE_REDUCTION_TYPES)
        elif key == "input_audio_echo_cancellation":
            spec = _check_typed(value, param, frozenset({"server_echo_cancellation"}))
            if spec is not None and spec.get("reference_source") == "client":
                # A client echo reference is stereo input, which the emulator does not take;
                # an invalid combination of source and channels is the rules' to refuse.
                rule = voicelive.rule("echo-reference")
                if rule.check({key: spec}, Target(model=None)) is None:
                    raise ProtocolError(
                        ERR_EMULATOR_UNSUPPORTED,
                        "The emulator handles mono input only (reference_source server).",
                        f"{param}.reference_source",
                    )
            new[key] = spec
        elif key == "input_audio_transcription":
            new[key] = _check_transcription(value, param)
        elif key == "modalities":
            if (
                not isinstance(value, list)
                or not value
                or not all(isinstance(m, str) and m in MODALITIES for m in value)
            ):
                raise _invalid(param, f"Invalid value: {value!r}; expected a list of modalities.")
            new[key] = list(value)
        elif key == "instructions":
            if not isinstance(value, str):
                raise _invalid(param, "Invalid type for 'instructions': expected a string.")
            new[key] = value
        elif key == "temperature":
            if not _is_number(value):
                raise _invalid(param, f"Invalid 'temperature': {value!r}.")
            new[key] = value
        elif key == "max_response_output_tokens":
            valid_int = isinstance(value, int) and not isinstance(value, bool) and value > 0
            if not valid_int and value != "inf":
                raise _invalid(param, f"Invalid value: {value!r}; expected a positive integer.")
            new[key] = value
        else:
            new[key] = value
    if "tools" in fields or "tool_choice" in fields:
        check_tool_choice(new.get("tool_choice", "auto"), new.get("tools") or [])
    _check_sampling_rate(current, fields, new)
    return new


# --- tools ---------------------------------------------------------------------------------
# What session.update's `tools` takes. Sources: Voice Live API reference 2026-07-15
# ("RealtimeFunctionTool", "MCPServer"), the SDK models (FunctionTool, MCPServer), the OpenAI
# Realtime API's session.update `tools` and `tool_choice`, OpenAI function calling
# (FunctionObject: the name pattern), and "How to add an MCP server to Voice Live"
# (how-to-voice-live-mcp-server: the fields, require_approval, the api-version).

#: "Must be a-z, A-Z, 0-9, or contain underscores and dashes, with a maximum length of 64"
#: (OpenAI function calling, FunctionObject.name).
TOOL_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
FUNCTION_TOOL_FIELDS = frozenset({"type", "name", "description", "parameters"})
MCP_TOOL_FIELDS = frozenset(
    {
        "type",
        "server_label",
        "server_url",
        "authorization",
        "headers",
        "allowed_tools",
        "require_approval",
    }
)
#: MCPApprovalType (SDK): "always" (the service's default) or "never"; or tool names per
#: mode, {"always": [...], "never": [...]} (how-to, "Approval modes").
MCP_APPROVAL_MODES = frozenset({"always", "never"})
#: "API version required: 2026-04-10 or later" for MCP servers (how-to, first table).
MCP_SINCE = "2026-04-10"
TOOL_CHOICES = frozenset({"auto", "none", "required"})


def _string_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def check_tools(value: object, target: Target) -> list[JSON]:
    """`session.tools`: function tools (name, description, parameters: an object schema)
    and MCP servers (server_label, server_url, and the optional fields), names unique."""
    param = "session.tools"
    if not isinstance(value, list):
        raise _invalid(param, "Invalid type for 'session.tools': expected an array.")
    names: set[str] = set()
    labels: set[str] = set()
    tools: list[JSON] = []
    for index, tool in enumerate(value):
        where = f"{param}[{index}]"
        spec = _require_object(tool, where)
        kind = spec.get("type")
        if kind == "function":
            tools.append(_check_function_tool(spec, where, names))
        elif kind == "mcp":
            if (target.api_version or MCP_SINCE) < MCP_SINCE:
                raise _invalid(
                    f"{where}.type",
                    f"MCP servers need api-version {MCP_SINCE} or later, not "
                    f"'{target.api_version}'.",
                )
            tools.append(_check_mcp_tool(spec, where, labels))
        else:
            raise _invalid(
                f"{where}.type",
                f"Invalid value: {kind!r}. Supported values are: 'function', 'mcp'.",
            )
    return tools


def _check_function_tool(spec: Mapping[str, Any], where: str, names: set[str]) -> JSON:
    for key in sorted(set(spec) - FUNCTION_TOOL_FIELDS):
        raise ProtocolError(ERR_UNKNOWN_PARAMETER, f"Unknown parameter: '{key}'.", f"{where}.{key}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(ERR_MISSING_PARAMETER, "Missing required parameter: 'name'.", where)
    if not TOOL_NAME.fullmatch(name):
        raise _invalid(
            f"{where}.name",
            f"Invalid 'name': '{name}'. Expected a string that matches the pattern "
            "'^[a-zA-Z0-9_-]{1,64}$'.",
        )
    if name in names:
        raise _invalid(f"{where}.name", f"Duplicate tool name: '{name}'.")
    names.add(name)
    if not isinstance(spec.get("description"), str):
        raise ProtocolError(
            ERR_MISSING_PARAMETER, "Missing required parameter: 'description'.", where
        )
    parameters = spec.get("parameters")
    if not isinstance(parameters, Mapping):
        raise ProtocolError(
            ERR_MISSING_PARAMETER, "Missing required parameter: 'parameters'.", where
        )
    if parameters.get("type") != "object":
        # Function arguments are a JSON object; its schema must say so.
        raise _invalid(
            f"{where}.parameters",
            "Invalid schema for function parameters: schema must be a JSON Schema of "
            "'type: \"object\"'.",
        )
    return dict(spec)


def _check_mcp_tool(spec: Mapping[str, Any], where: str, labels: set[str]) -> JSON:
    for key in sorted(set(spec) - MCP_TOOL_FIELDS):
        raise ProtocolError(ERR_UNKNOWN_PARAMETER, f"Unknown parameter: '{key}'.", f"{where}.{key}")
    for key in ("server_label", "server_url"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise ProtocolError(
                ERR_MISSING_PARAMETER, f"Missing required parameter: '{key}'.", where
            )
    label = spec["server_label"]
    if label in labels:
        raise _invalid(f"{where}.server_label", f"Duplicate server_label: '{label}'.")
    labels.add(label)
    url = urlsplit(spec["server_url"])
    if url.scheme not in ("http", "https") or not url.netloc:
        raise _invalid(f"{where}.server_url", "Invalid 'server_url': expected an http(s) URL.")
    if "allowed_tools" in spec and not _string_list(spec["allowed_tools"]):
        raise _invalid(
            f"{where}.allowed_tools", "Invalid 'allowed_tools': expected a list of strings."
        )
    headers = spec.get("headers", {})
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise _invalid(f"{where}.headers", "Invalid 'headers': expected string values.")
    if "authorization" in spec and not isinstance(spec["authorization"], str):
        raise _invalid(f"{where}.authorization", "Invalid 'authorization': expected a string.")
    policy = spec.get("require_approval", "always")
    valid = (isinstance(policy, str) and policy in MCP_APPROVAL_MODES) or (
        isinstance(policy, Mapping)
        and set(policy) <= MCP_APPROVAL_MODES
        and all(_string_list(v) for v in policy.values())
    )
    if not valid:
        raise _invalid(
            f"{where}.require_approval",
            "Invalid 'require_approval': expected 'always', 'never', or an object of tool "
            "name lists by mode.",
        )
    return dict(spec)


def check_tool_choice(choice: object, tools: list[JSON]) -> None:
    """`tool_choice`: auto, none, required, or {"type": "function", "name": <a tool>}
    (SDK ToolChoiceLiteral, ToolChoiceFunctionSelection)."""
    param = "session.tool_choice"
    if isinstance(choice, str):
        if choice not in TOOL_CHOICES:
            raise _invalid(
                param, f"Invalid value: '{choice}'. Supported values are: {sorted(TOOL_CHOICES)}."
            )
        return
    spec = _require_object(choice, param)
    if spec.get("type") != "function" or not isinstance(spec.get("name"), str):
        raise _invalid(param, "Invalid 'tool_choice': expected {'type': 'function', 'name': ...}.")
    if not any(t.get("type") == "function" and t["name"] == spec["name"] for t in tools):
        raise _invalid(f"{param}.name", f"Tool '{spec['name']}' not found in 'tools'.")


def needs_approval(server: Mapping[str, Any], tool_name: str) -> bool:
    """Whether Voice Live asks the client before calling ``tool_name`` on ``server``:
    "always" (the default) asks, "never" does not; per tool, names under "never" are not
    asked about, every other is (how-to, "Approval modes")."""
    policy = server.get("require_approval", "always")
    if isinstance(policy, str):
        return policy == "always"
    return tool_name not in policy.get("never", [])


@attrs.frozen
class TurnSettings:
    """The parts of `turn_detection` the emulator acts on."""

    threshold: float
    prefix_padding_ms: int
    silence_duration_ms: int
    create_response: bool
    interrupt_response: bool


def turn_settings(session: Mapping[str, Any]) -> TurnSettings | None:
    """Server VAD settings of a validated session, or None for manual turns. Every type is
    emulated by the energy detector; semantic_vad, which has no levels, with the defaults."""
    spec = session.get("turn_detection")
    if spec is None:
        return None
    return TurnSettings(
        threshold=float(spec.get("threshold", DEFAULT_TURN_DETECTION["threshold"])),
        prefix_padding_ms=spec.get(
            "prefix_padding_ms", DEFAULT_TURN_DETECTION["prefix_padding_ms"]
        ),
        silence_duration_ms=spec.get(
            "silence_duration_ms", DEFAULT_TURN_DETECTION["silence_duration_ms"]
        ),
        create_response=spec["create_response"],
        interrupt_response=spec["interrupt_response"],
    )


# --- items and responses -----------------------------------------------------------------


def user_audio_item(item_id: str) -> JSON:
    """A committed user turn (SDK: ResponseMessageItem with an input_audio part)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "completed",
        "role": "user",
        "content": [{"type": "input_audio", "transcript": None}],
    }


def assistant_item(item_id: str, status: str, part: JSON | None) -> JSON:
    """The assistant message a response produces (content empty while in progress)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": [] if part is None else [part],
    }


def response_object(
    response_id: str,
    status: str,
    session: Mapping[str, Any],
    modalities: list[str],
    *,
    output: list[JSON] | None = None,
    status_details: JSON | None = None,
    usage: JSON | None = None,
) -> JSON:
    """The `response` of response.created / response.done (SDK: Response)."""
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": status_details,
        "output": output or [],
        "usage": usage,
        "modalities": modalities,
        "voice": session.get("voice"),
        "output_audio_format": session.get("output_audio_format", "pcm16"),
        "temperature": session.get("temperature"),
        "max_output_tokens": session.get("max_response_output_tokens", "inf"),
    }


def usage(input_audio_ms: int, input_text: str, output_audio_ms: int, output_text: str) -> JSON:
    """Token usage with the service's shape; the counts are rough estimates.

    Audio is counted at 10 tokens/s in and 20 tokens/s out, text at 4 characters a token.
    """
    audio_in = -(-input_audio_ms // 100)
    text_in = -(-len(input_text) // 4)
    audio_out = -(-output_audio_ms // 50)
    text_out = -(-len(output_text) // 4)
    total_in = audio_in + text_in
    total_out = audio_out + text_out
    return {
        "total_tokens": total_in + total_out,
        "input_tokens": total_in,
        "output_tokens": total_out,
        "input_token_details": {
            "cached_tokens": 0,
            "text_tokens": text_in,
            "audio_tokens": audio_in,
            "image_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


# --- tool items ------------------------------------------------------------------------------
# Output items of a response that calls tools (SDK: ResponseFunctionCallItem,
# ResponseMCPApprovalRequestItem, ResponseMCPCallItem, ResponseMCPListToolItem). Only the
# function call item has a status.


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JSON:
    """A function call the model makes (SDK: ResponseFunctionCallItem)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "function_call",
        "status": status,
        "name": name,
        "call_id": call_id,
        "arguments": arguments,
    }


def mcp_approval_request_item(item_id: str, server_label: str, name: str, arguments: str) -> JSON:
    """Voice Live asking the client whether it may call an MCP tool (SDK:
    ResponseMCPApprovalRequestItem; how-to, "Approval flow")."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "mcp_approval_request",
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
    }


def mcp_call_item(
    item_id: str,
    server_label: str,
    name: str,
    arguments: str,
    *,
    approval_request_id: str | None,
    output: str | None = None,
) -> JSON:
    """An MCP tool call the service makes itself (SDK: ResponseMCPCallItem)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "mcp_call",
        "server_label": server_label,
        "name": name,
        "arguments": arguments,
        "approval_request_id": approval_request_id,
        "output": output,
        "error": None,
    }


def mcp_list_tools_item(item_id: str, server_label: str, tools: list[JSON]) -> JSON:
    """The tools an MCP server offers (SDK: ResponseMCPListToolItem, MCPTool)."""
    return {
        "id": item_id,
        "object": "realtime.item",
        "type": "mcp_list_tools",
        "server_label": server_label,
        "tools": tools,
    }
