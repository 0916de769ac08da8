"""The upstream's events, parsed: pure, no I/O, fuzzed like the client protocol.

:func:`parse_event` turns one Voice Live server frame into a small typed value, or None for
an event the relay does not use. Anything malformed raises :class:`BadUpstreamEvent` and
nothing else, so the session can tell a bad frame (logged, skipped) from a bug in its own
handling (which ends the session as ``internal_error``). Event names and fields follow the
SDK's models (``azure.ai.voicelive.models``: ``ServerEventResponseAudioDelta`` and friends).
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from collections.abc import Callable
from typing import Any

import attrs
import orjson


class BadUpstreamEvent(ValueError):
    """A frame from the upstream that is not a usable event."""


@attrs.frozen
class SessionCreated:
    session_id: str | None
    expires_at: float | None  # unix time the service will end this connection


@attrs.frozen
class SessionUpdated:
    session_id: str | None
    expires_at: float | None


@attrs.frozen
class SpeechStarted:
    pass


@attrs.frozen
class SpeechStopped:
    pass


@attrs.frozen
class UserTranscript:
    text: str


@attrs.frozen
class ResponseCreated:
    response_id: str | None


@attrs.frozen
class OutputItemAdded:
    response_id: str | None
    item_id: str | None
    item_type: str | None = None  # "message" carries the audio; a function call does not


@attrs.frozen
class AudioDelta:
    response_id: str | None
    item_id: str | None
    pcm: bytes


@attrs.frozen
class AgentTranscript:
    text: str
    response_id: str | None = None


@attrs.frozen
class AgentText:
    text: str
    response_id: str | None = None


@attrs.frozen
class ResponseDone:
    response_id: str | None
    status: str | None = None  # completed, cancelled, failed, incomplete
    reason: str | None = None  # incomplete: max_output_tokens, content_filter; failed: error
    usage: dict[str, Any] | None = None  # token counts (ResponseUsage in the SDK's models)
    mcp_answered: bool = False  # its output holds an MCP call with a result to speak about


@attrs.frozen
class ServiceError:
    code: str
    message: str
    event_id: str | None = None  # the client event it answers, when the service names one


@attrs.frozen
class ServiceWarning:
    code: str
    message: str


@attrs.frozen
class AgentTranscriptDelta:
    text: str
    response_id: str | None = None


@attrs.frozen
class FunctionCall:
    """The model calls a function: ``response.function_call_arguments.done``."""

    response_id: str | None
    item_id: str | None
    call_id: str
    name: str
    arguments: str


@attrs.frozen
class McpApprovalRequest:
    """Voice Live asks whether the agent may call a service-side MCP tool."""

    item_id: str
    server_label: str
    name: str


@attrs.frozen
class TranscriptionFailed:
    item_id: str | None
    message: str


UpstreamEvent = (
    SessionCreated
    | SessionUpdated
    | SpeechStarted
    | SpeechStopped
    | UserTranscript
    | ResponseCreated
    | OutputItemAdded
    | AudioDelta
    | AgentTranscript
    | AgentText
    | ResponseDone
    | ServiceError
    | ServiceWarning
    | AgentTranscriptDelta
    | TranscriptionFailed
    | FunctionCall
    | McpApprovalRequest
)

_SPEECH_STARTED = SpeechStarted()
_SPEECH_STOPPED = SpeechStopped()


def parse_event(raw: str | bytes) -> UpstreamEvent | None:
    """One server frame as a typed event; None for event types the relay ignores."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BadUpstreamEvent("not valid JSON") from None
    if not isinstance(event, dict):
        raise BadUpstreamEvent(f"not a JSON object but {type(event).__name__}")
    kind = event.get("type")
    if kind == "response.audio.delta":  # the hot path: most frames are audio
        delta = event.get("delta")
        if not isinstance(delta, str):
            raise BadUpstreamEvent("response.audio.delta without a base64 'delta'")
        try:
            pcm = b64decode(delta, validate=True)
        except (binascii.Error, ValueError):
            raise BadUpstreamEvent("response.audio.delta with invalid base64") from None
        return AudioDelta(_opt_str(event, "response_id"), _opt_str(event, "item_id"), pcm)
    parse = _PARSERS.get(kind) if isinstance(kind, str) else None
    if parse is None:
        if not isinstance(kind, str):
            raise BadUpstreamEvent("event without a string 'type'")
        return None
    return parse(event)


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadUpstreamEvent(f"'{key}' is not a string")
    return value or None


def _text(obj: dict[str, Any], key: str) -> str:
    return _opt_str(obj, key) or ""


def _object(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadUpstreamEvent(f"'{key}' is not an object")
    return value


def _expires_at(session: dict[str, Any]) -> float | None:
    value = session.get("expires_at")
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        raise BadUpstreamEvent("'expires_at' is not a unix time")
    return float(value)


def _session_created(event: dict[str, Any]) -> SessionCreated:
    session = _object(event, "session")
    return SessionCreated(_opt_str(session, "id"), _expires_at(session))


def _session_updated(event: dict[str, Any]) -> SessionUpdated:
    session = _object(event, "session")
    return SessionUpdated(_opt_str(session, "id"), _expires_at(session))


def _response_created(event: dict[str, Any]) -> ResponseCreated:
    return ResponseCreated(_opt_str(_object(event, "response"), "id"))


def _output_item(event: dict[str, Any]) -> OutputItemAdded:
    item = _object(event, "item")
    return OutputItemAdded(
        _opt_str(event, "response_id"), _opt_str(item, "id"), _opt_str(item, "type")
    )


def _response_done(event: dict[str, Any]) -> ResponseDone:
    response = _object(event, "response")
    details = _object(response, "status_details")
    reason = details.get("reason")
    if reason is None and isinstance(details.get("error"), dict):
        reason = details["error"].get("message") or details["error"].get("code")
    usage = response.get("usage")
    output = response.get("output")
    mcp_answered = isinstance(output, list) and any(
        isinstance(item, dict) and item.get("type") == "mcp_call" and item.get("output") is not None
        for item in output
    )
    return ResponseDone(
        _opt_str(response, "id"),
        _opt_str(response, "status"),
        None if reason is None else str(reason)[:200],
        usage if isinstance(usage, dict) else None,
        mcp_answered,
    )


def _output_item_done(event: dict[str, Any]) -> McpApprovalRequest | None:
    item = _object(event, "item")
    if item.get("type") != "mcp_approval_request":
        return None  # the relay needs nothing else from a finished item
    item_id = _opt_str(item, "id")
    if not item_id:
        raise BadUpstreamEvent("mcp_approval_request without an id")
    return McpApprovalRequest(item_id, _text(item, "server_label"), _text(item, "name"))


def _function_call(event: dict[str, Any]) -> FunctionCall:
    call_id, name = _opt_str(event, "call_id"), _opt_str(event, "name")
    if not call_id or not name:
        raise BadUpstreamEvent("function call without call_id or name")
    return FunctionCall(
        _opt_str(event, "response_id"),
        _opt_str(event, "item_id"),
        call_id,
        name,
        _text(event, "arguments"),
    )


def _warning(event: dict[str, Any]) -> ServiceWarning:
    warning = _object(event, "warning")
    return ServiceWarning(
        str(warning.get("code") or "warning")[:100], str(warning.get("message") or "")[:1000]
    )


def _transcription_failed(event: dict[str, Any]) -> TranscriptionFailed:
    err = _object(event, "error")
    return TranscriptionFailed(
        _opt_str(event, "item_id"), str(err.get("message") or "transcription failed")[:500]
    )


def _error(event: dict[str, Any]) -> ServiceError:
    err = event.get("error")
    if not isinstance(err, dict):
        err = {"message": str(err)} if err else {}
    code = err.get("code") or err.get("type") or "upstream_error"
    message = err.get("message") or "Voice Live reported an error"
    event_id = err.get("event_id")
    return ServiceError(
        str(code)[:100], str(message)[:1000], event_id if isinstance(event_id, str) else None
    )


_PARSERS: dict[str, Callable[[dict[str, Any]], UpstreamEvent | None]] = {
    "session.created": _session_created,
    "session.updated": _session_updated,
    "input_audio_buffer.speech_started": lambda e: _SPEECH_STARTED,
    "input_audio_buffer.speech_stopped": lambda e: _SPEECH_STOPPED,
    "conversation.item.input_audio_transcription.completed": lambda e: UserTranscript(
        _text(e, "transcript")
    ),
    "response.created": _response_created,
    "response.output_item.added": _output_item,
    "response.audio_transcript.done": lambda e: AgentTranscript(
        _text(e, "transcript"), _opt_str(e, "response_id")
    ),
    "response.text.done": lambda e: AgentText(_text(e, "text"), _opt_str(e, "response_id")),
    "response.done": _response_done,
    "warning": _warning,
    "response.function_call_arguments.done": _function_call,
    "response.output_item.done": _output_item_done,
    "conversation.item.input_audio_transcription.failed": _transcription_failed,
    "response.audio_transcript.delta": lambda e: AgentTranscriptDelta(
        _text(e, "delta"), _opt_str(e, "response_id")
    ),
    "error": _error,
}
