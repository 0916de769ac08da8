"""The AsyncAPI 3.0 description of the ``/ws/voice`` protocol (``GET /asyncapi.yaml``).

Every message is a :class:`Message` in :data:`MESSAGES`: its JSON ``type``, who sends
it, its payload schema and an example. The AsyncAPI document and the plain reference
page (``/docs/protocol``) are both rendered from that list, and
``tests/test_api_docs.py`` checks it against :mod:`voicebridge.protocol`: each client
example parses, each message the server builds validates against its schema, and no
type the protocol knows is missing here.

The document describes the server: it *receives* the client's messages and *sends*
its own.
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs
import yaml

from voicebridge import __version__, errors, protocol
from voicebridge.apidocs.common import (
    CLOSE_CODES,
    Schema,
    close_code_table,
    code_table,
    error_message_schema,
)
from voicebridge.errors import CODES

ASYNCAPI_VERSION: Final = "3.0.0"
WS_BINDING_VERSION: Final = "0.1.0"
CHANNEL: Final = "voice"
CHANNEL_ADDRESS: Final = "/ws/voice"

#: Every ``status`` value the server sends.
STATUSES: Final = (
    "ready",
    "listening",
    "processing",
    "agent_speaking",
    "ending",
    "shutting_down",
    "reconnecting",
    "ended",
)

_AUDIO_FORMAT: Final = {
    "encoding": "pcm_s16le",
    "sample_rate": protocol.SAMPLE_RATE,
    "channels": 1,
}
_PCM_NOTE: Final = (
    f"Raw PCM16 little-endian, {protocol.SAMPLE_RATE // 1000} kHz, mono "
    f"({protocol.BYTES_PER_MS} bytes a millisecond), no header."
)


@attrs.frozen
class Message:
    """One kind of frame on the socket."""

    #: The component name in the AsyncAPI document.
    name: str
    #: Who sends it.
    sender: Literal["client", "server"]
    summary: str
    payload: Schema
    #: The value of the discriminating field (``key``); None for a binary (audio) frame.
    type: str | None = None
    description: str = ""
    examples: tuple[Any, ...] = ()
    #: The channel (``voice``, ``twilio``, ``acs``) and its discriminating field.
    channel: str = "voice"
    key: str = "type"

    @property
    def frame(self) -> Literal["text", "binary"]:
        return "binary" if self.type is None else "text"


def _obj(
    kind: str,
    props: dict[str, Schema] | None = None,
    *,
    optional: tuple[str, ...] = (),
    key: str = "type",
) -> Schema:
    """A JSON message ``{key: kind, ...props}``; every prop required unless optional."""
    props = props or {}
    return {
        "type": "object",
        "required": [key, *(p for p in props if p not in optional)],
        "properties": {key: {"const": kind}, **props},
    }


_STR: Final[Schema] = {"type": "string"}
_RESPONSE_ID: Final[Schema] = {
    "type": "string",
    "minLength": 1,
    "maxLength": protocol.MAX_RESPONSE_ID_CHARS,
    "description": "The response's id, as `audio_start` announced it.",
}
_CODE: Final[Schema] = {
    "type": "string",
    "description": "A stable code (see `x-error-codes` on the channel), or for an "
    "`upstream_error` passed on, the code Voice Live reported.",
    "examples": list(CODES)[:4],
}

MESSAGES: Final[tuple[Message, ...]] = (
    # -- client to server ---------------------------------------------------------------
    Message(
        "ClientAudio",
        "client",
        "Microphone audio (binary frame)",
        {"type": "string", "format": "binary", "description": _PCM_NOTE},
        description=f"{_PCM_NOTE} A frame with an odd byte count keeps its last byte for "
        f"the next one (an `{errors.ERR_ODD_FRAME}` error says so once). A frame larger "
        f"than MAX_FRAME_BYTES closes the session with {errors.CLOSE_TOO_BIG}; audio faster "
        f"than MAX_AUDIO_RATE times real time, or more than MAX_FRAMES_PER_S frames a "
        f"second, closes it with {errors.CLOSE_POLICY} (`{errors.ERR_RATE_LIMITED}`).",
    ),
    Message(
        "Audio",
        "client",
        "Microphone audio as base64 (for clients that cannot send binary frames)",
        _obj(
            "audio",
            {
                "audio": {
                    "type": "string",
                    "contentEncoding": "base64",
                    "description": "Base64 of PCM16 LE, 24 kHz, mono.",
                }
            },
        ),
        type="audio",
        examples=({"type": "audio", "audio": "AAABAAIA"},),
    ),
    Message(
        "Text",
        "client",
        "A typed user message; the agent answers it",
        _obj(
            "text",
            {
                "text": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": protocol.MAX_TEXT_CHARS,
                    "pattern": "\\S",
                    "description": "Not blank; at most CLIENT_TEXT_PER_MIN a minute (more "
                    f"are refused with `{errors.ERR_RATE_LIMITED}`, the session goes on).",
                }
            },
        ),
        type="text",
        examples=({"type": "text", "text": "What are your opening hours?"},),
    ),
    Message(
        "Ping",
        "client",
        "Keep-alive; answered by `pong`",
        _obj("ping"),
        type="ping",
        examples=({"type": "ping"},),
    ),
    Message(
        "Playback",
        "client",
        "How much of a response's audio the client has played (optional)",
        _obj(
            "playback",
            {
                "played_ms": {"type": "integer", "minimum": 0},
                "response_id": {
                    **_RESPONSE_ID,
                    "description": "The response (from its `audio_start`); without it, the "
                    "response written last.",
                },
            },
            optional=("response_id",),
        ),
        type="playback",
        description="Used on a barge-in to truncate the agent's memory of its answer to "
        "what the caller actually heard. Without these reports the server estimates the "
        "played position from the clock.",
        examples=({"type": "playback", "response_id": "resp_1", "played_ms": 1250},),
    ),
    # -- server to client ---------------------------------------------------------------
    Message(
        "AgentAudio",
        "server",
        "The agent's voice (binary frame)",
        {"type": "string", "format": "binary", "description": _PCM_NOTE},
        description=f"{_PCM_NOTE} The frames after an `audio_start` belong to that "
        "response; after `clear_audio`, drop what is queued.",
    ),
    Message(
        "SessionStarted",
        "server",
        "The session is ready: speak or type",
        _obj(
            "session_started",
            {
                "session_id": {
                    "type": "string",
                    "description": "The id `/sessions/{session_id}` and `/calls` know it by.",
                },
                "backend": {"enum": ["azure", "emulator"]},
                "voice": _STR,
                "sample_rate": {"type": "integer", "examples": [protocol.SAMPLE_RATE]},
                "upstream_session_id": {
                    "type": ["string", "null"],
                    "description": "Voice Live's id for the session, for support requests.",
                },
            },
        ),
        type="session_started",
        examples=(
            {
                "type": "session_started",
                "session_id": "5f1c0e6a9b2d4e8f",
                "backend": "emulator",
                "voice": "alloy",
                "sample_rate": protocol.SAMPLE_RATE,
                "upstream_session_id": "sess_1",
            },
        ),
    ),
    Message(
        "Status",
        "server",
        "What the session is doing",
        _obj(
            "status",
            {
                "status": {"enum": list(STATUSES)},
                "code": {**_CODE, "description": "With `ending`, `reconnecting`, `ended`."},
                "message": {"type": "string", "description": "With `ended`."},
                "seconds_left": {
                    "type": "integer",
                    "description": "With `ending`: the time limit is that near.",
                },
                "grace_s": {
                    "type": "number",
                    "description": "With `shutting_down`: the current answer may finish "
                    f"within this, then the socket closes {errors.CLOSE_GOING_AWAY}.",
                },
            },
            optional=("code", "message", "seconds_left", "grace_s"),
        ),
        type="status",
        description="`ready`, `listening`, `processing`, `agent_speaking` follow the "
        "conversation. `ending` warns of the time limit; `shutting_down` says the server is "
        "restarting; `reconnecting` (code `upstream_closed` or `response_interrupted`) says "
        "the Voice Live connection ended and the call goes on over a new one (`ready` "
        "follows); `ended` (by an operator, a time limit, idleness, the agent or shutdown) "
        "comes just before the socket closes.",
        examples=(
            {"type": "status", "status": "listening"},
            {
                "type": "status",
                "status": "ending",
                "code": errors.ERR_SESSION_LIMIT,
                "seconds_left": 60,
            },
            {"type": "status", "status": "shutting_down", "grace_s": 10},
            {"type": "status", "status": "reconnecting", "code": errors.ERR_UPSTREAM_CLOSED},
            {
                "type": "status",
                "status": "ended",
                "code": errors.ERR_ENDED_BY_ADMIN,
                "message": "ended by an operator",
            },
        ),
    ),
    Message(
        "UserTranscript",
        "server",
        "What the caller said, transcribed",
        _obj("user_transcript", {"text": _STR}),
        type="user_transcript",
        examples=({"type": "user_transcript", "text": "What are your opening hours?"},),
    ),
    Message(
        "AgentTranscriptDelta",
        "server",
        "Live captions: a piece of the agent's words as it speaks",
        _obj("agent_transcript_delta", {"text": _STR, "response_id": _RESPONSE_ID}),
        type="agent_transcript_delta",
        examples=({"type": "agent_transcript_delta", "text": "We open", "response_id": "resp_1"},),
    ),
    Message(
        "AgentTranscript",
        "server",
        "The words of one spoken answer, complete",
        _obj("agent_transcript", {"text": _STR}),
        type="agent_transcript",
        examples=({"type": "agent_transcript", "text": "We open at nine."},),
    ),
    Message(
        "AgentText",
        "server",
        "An answer given as text only",
        _obj("agent_text", {"text": _STR}),
        type="agent_text",
        examples=({"type": "agent_text", "text": "We open at nine."},),
    ),
    Message(
        "AudioStart",
        "server",
        "A response's audio begins: the binary frames after it are that response's",
        _obj("audio_start", {"response_id": _RESPONSE_ID}),
        type="audio_start",
        examples=({"type": "audio_start", "response_id": "resp_1"},),
    ),
    Message(
        "ClearAudio",
        "server",
        "Barge-in: stop playback now and drop queued agent audio",
        _obj("clear_audio"),
        type="clear_audio",
        examples=({"type": "clear_audio"},),
    ),
    Message(
        "Tool",
        "server",
        "The agent is using one of the operator's tools (TOOLS_FILE)",
        _obj(
            "tool",
            {
                "name": _STR,
                "call_id": _STR,
                "status": {"enum": ["started", "done", "failed"]},
                "duration_ms": {"type": "integer", "minimum": 0},
                "error": {"type": "string", "description": "With `failed`: what went wrong."},
                "arguments": {
                    "type": "string",
                    "description": "The arguments as JSON text; only with "
                    "TOOLS_SHOW_ARGUMENTS (they may hold personal data).",
                },
                "output": {
                    "type": "string",
                    "description": "The tool's answer as JSON text; only with "
                    "TOOLS_SHOW_ARGUMENTS, when done or failed.",
                },
            },
            optional=("duration_ms", "error", "arguments", "output"),
        ),
        type="tool",
        examples=(
            {"type": "tool", "name": "clock", "call_id": "call_1", "status": "started"},
            {
                "type": "tool",
                "name": "clock",
                "call_id": "call_1",
                "status": "done",
                "duration_ms": 12,
            },
        ),
    ),
    Message(
        "Error",
        "server",
        "Something went wrong; the code says what it does to the session",
        error_message_schema(_CODE),
        type="error",
        description="Bad input (malformed JSON, an unknown type, invalid base64, an odd "
        "byte count) gets an error and the session goes on. An error whose code ends the "
        "session is followed by the close code of the code table.",
        examples=({"type": "error", "message": "message is not valid JSON", "code": "bad_json"},),
    ),
    Message(
        "Pong",
        "server",
        "The answer to `ping`",
        _obj("pong"),
        type="pong",
        examples=({"type": "pong"},),
    ),
)


_B64: Final[Schema] = {"type": "string", "contentEncoding": "base64"}
_SID: Final[Schema] = {"type": "string", "maxLength": 64}


def _twilio(
    name: str,
    kind: str,
    summary: str,
    props: dict[str, Schema],
    example: dict[str, Any],
    *,
    sender: Literal["client", "server"],
    **kw: Any,
) -> Message:
    return Message(
        name,
        sender,
        summary,
        _obj(kind, props, key="event", **kw),
        type=kind,
        examples=(example,),
        channel="twilio",
        key="event",
    )


def _acs(
    name: str,
    kind: str,
    summary: str,
    props: dict[str, Schema],
    example: dict[str, Any],
    *,
    sender: Literal["client", "server"],
) -> Message:
    return Message(
        name,
        sender,
        summary,
        _obj(kind, props, key="kind"),
        type=kind,
        examples=(example,),
        channel="acs",
        key="kind",
    )


def _twilio_in(*args: Any, **kw: Any) -> Message:
    return _twilio(*args, sender="client", **kw)


def _twilio_out(*args: Any, **kw: Any) -> Message:
    return _twilio(*args, sender="server", **kw)


def _acs_in(*args: Any) -> Message:
    return _acs(*args, sender="client")


def _acs_out(*args: Any) -> Message:
    return _acs(*args, sender="server")


_ULAW_NOTE: Final = "Base64 of 8 kHz mono μ-law (audio/x-mulaw)."

#: Twilio Media Streams (``/ws/twilio``) and ACS bidirectional media streaming
#: (``/ws/acs``), as far as the relay reads and writes them. The providers' own
#: documents are the reference; fields the relay ignores are allowed and not listed.
PHONE_MESSAGES: Final[tuple[Message, ...]] = (
    _twilio_in(
        "TwilioConnected",
        "connected",
        "The stream is open (ignored)",
        {"protocol": _STR, "version": _STR},
        {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        optional=("protocol", "version"),
    ),
    _twilio_in(
        "TwilioStart",
        "start",
        "Which call this is; must carry the call's stream token, else close 1008",
        {
            "streamSid": _SID,
            "start": {
                "type": "object",
                "required": ["callSid", "customParameters"],
                "properties": {
                    "streamSid": _SID,
                    "callSid": _SID,
                    "accountSid": _STR,
                    "customParameters": {
                        "type": "object",
                        "required": ["token"],
                        "properties": {
                            "token": {
                                "type": "string",
                                "description": "The per-call stream token the TwiML of "
                                "`POST /twilio/voice` passed.",
                            },
                            "from": {"type": "string", "description": "The caller's number."},
                        },
                    },
                    "mediaFormat": {
                        "type": "object",
                        "description": "Only 8 kHz mono μ-law is accepted.",
                        "properties": {
                            "encoding": {"const": "audio/x-mulaw"},
                            "sampleRate": {"const": 8000},
                            "channels": {"const": 1},
                        },
                    },
                },
            },
        },
        {
            "event": "start",
            "streamSid": "MZ01",
            "start": {
                "streamSid": "MZ01",
                "callSid": "CA01",
                "accountSid": "AC01",
                "customParameters": {"token": "<stream token>", "from": "+447700900123"},
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        },
        optional=("streamSid",),
    ),
    _twilio_in(
        "TwilioMediaIn",
        "media",
        "The caller's audio (only track `inbound`)",
        {
            "streamSid": _SID,
            "media": {
                "type": "object",
                "required": ["payload"],
                "properties": {"track": _STR, "payload": {**_B64, "description": _ULAW_NOTE}},
            },
        },
        {"event": "media", "streamSid": "MZ01", "media": {"track": "inbound", "payload": "//8="}},
        optional=("streamSid",),
    ),
    _twilio_in(
        "TwilioMarkIn",
        "mark",
        "A mark the server sent, echoed once the audio before it has played",
        {"streamSid": _SID, "mark": {"type": "object", "properties": {"name": _STR}}},
        {"event": "mark", "streamSid": "MZ01", "mark": {"name": "resp_1:1200"}},
        optional=("streamSid",),
    ),
    _twilio_in(
        "TwilioDtmf",
        "dtmf",
        "A key the caller pressed",
        {
            "streamSid": _SID,
            "dtmf": {
                "type": "object",
                "required": ["digit"],
                "properties": {
                    "track": _STR,
                    "digit": {"type": "string", "pattern": "^[0-9*#A-D]$"},
                },
            },
        },
        {"event": "dtmf", "streamSid": "MZ01", "dtmf": {"track": "inbound_track", "digit": "5"}},
        optional=("streamSid",),
    ),
    _twilio_in(
        "TwilioStop",
        "stop",
        "The call or stream ended: the session ends",
        {"streamSid": _SID},
        {"event": "stop", "streamSid": "MZ01"},
        optional=("streamSid",),
    ),
    _twilio_out(
        "TwilioMediaOut",
        "media",
        "The agent's voice, 20 ms a message",
        {
            "streamSid": _SID,
            "media": {
                "type": "object",
                "required": ["payload"],
                "properties": {"payload": {**_B64, "description": _ULAW_NOTE}},
            },
        },
        {"event": "media", "streamSid": "MZ01", "media": {"payload": "//8="}},
    ),
    _twilio_out(
        "TwilioMarkOut",
        "mark",
        "After each chunk: `<response id>:<ms sent>`; its echo says how far the caller heard",
        {
            "streamSid": _SID,
            "mark": {"type": "object", "required": ["name"], "properties": {"name": _STR}},
        },
        {"event": "mark", "streamSid": "MZ01", "mark": {"name": "resp_1:1200"}},
    ),
    _twilio_out(
        "TwilioClear",
        "clear",
        "Barge-in: Twilio empties its playback buffer",
        {"streamSid": _SID},
        {"event": "clear", "streamSid": "MZ01"},
    ),
    _acs_in(
        "AcsAudioMetadata",
        "AudioMetadata",
        "First message: the audio format (PCM16 mono, 16 or 24 kHz), else close 1008",
        {
            "audioMetadata": {
                "type": "object",
                "required": ["encoding", "sampleRate"],
                "properties": {
                    "subscriptionId": _STR,
                    "encoding": {"const": "PCM"},
                    "sampleRate": {"enum": [16000, 24000]},
                    "channels": {"const": 1},
                    "length": {"type": "integer"},
                },
            }
        },
        {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": "sub-1",
                "encoding": "PCM",
                "sampleRate": 24000,
                "channels": 1,
                "length": 960,
            },
        },
    ),
    _acs_in(
        "AcsAudioDataIn",
        "AudioData",
        "The caller's audio",
        {
            "audioData": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {**_B64, "description": "Base64 PCM16 LE at the announced rate."},
                    "timestamp": _STR,
                    "participantRawID": _STR,
                    "silent": {"type": "boolean"},
                },
            }
        },
        {"kind": "AudioData", "audioData": {"data": "AAABAA==", "silent": False}},
    ),
    _acs_in(
        "AcsDtmfData",
        "DtmfData",
        "A key the caller pressed",
        {
            "dtmfData": {
                "type": "object",
                "required": ["data"],
                "properties": {"data": {"type": "string", "pattern": "^[0-9*#A-D]$"}},
            }
        },
        {"kind": "DtmfData", "dtmfData": {"data": "5"}},
    ),
    _acs_out(
        "AcsAudioDataOut",
        "AudioData",
        "The agent's voice, 20 ms a message",
        {
            "audioData": {
                "type": "object",
                "required": ["data"],
                "properties": {
                    "data": {**_B64, "description": "Base64 PCM16 LE, the call's rate."}
                },
            }
        },
        {"kind": "AudioData", "audioData": {"data": "AAABAA=="}},
    ),
    _acs_out(
        "AcsStopAudio",
        "StopAudio",
        "Barge-in: ACS stops playback at once",
        {"audioData": {"type": "null"}, "stopAudio": {"type": "object"}},
        {"kind": "StopAudio", "audioData": None, "stopAudio": {}},
    ),
)

#: The phone channels: their address and what the document says of them.
PHONE_CHANNELS: Final[dict[str, Schema]] = {
    "twilio": {
        "address": "/ws/twilio",
        "title": "Twilio Media Streams",
        "summary": "A phone call through Twilio (bidirectional Media Stream).",
        "description": "Opened by Twilio from the TwiML of `POST /twilio/voice`. Upgraded "
        "first; the `start` message must follow within PHONE_START_TIMEOUT_S with the "
        f"call's stream token, else the socket closes {errors.CLOSE_POLICY} and nothing is "
        "relayed. Then the call is a session like any other (limits, records, "
        "`/sessions`); voicebridge's own JSON messages are not sent on it.",
        "externalDocs": {
            "description": "Twilio: Media Streams WebSocket messages",
            "url": "https://www.twilio.com/docs/voice/media-streams/websocket-messages",
        },
    },
    "acs": {
        "address": "/ws/acs",
        "title": "Azure Communication Services media streaming",
        "summary": "A phone call through ACS Call Automation (bidirectional streaming).",
        "description": "`?token=` must hold a stream token for the call (HTTP 401 "
        "before the upgrade otherwise); the first message must be `AudioMetadata`, else "
        f"close {errors.CLOSE_POLICY}. ACS acknowledges nothing it plays: the played "
        "position comes from the clock.",
        "externalDocs": {
            "description": "ACS: bidirectional audio streaming",
            "url": "https://learn.microsoft.com/azure/communication-services/how-tos/"
            "call-automation/audio-streaming-quickstart",
        },
        "bindings": {
            "ws": {
                "method": "GET",
                "query": {
                    "type": "object",
                    "required": ["token"],
                    "properties": {"token": {"type": "string", "description": "The stream token."}},
                },
                "bindingVersion": WS_BINDING_VERSION,
            }
        },
    },
}
ALL_MESSAGES: Final = MESSAGES + PHONE_MESSAGES


def message_types(sender: Literal["client", "server"]) -> set[str]:
    """The JSON ``type`` values ``sender`` sends."""
    return {m.type for m in MESSAGES if m.sender == sender and m.type is not None}


def phone_message_types(channel: str, sender: Literal["client", "server"]) -> set[str]:
    """The ``event`` (Twilio) or ``kind`` (ACS) values ``sender`` sends on ``channel``."""
    return {
        m.type for m in PHONE_MESSAGES if m.channel == channel and m.sender == sender and m.type
    }


def _message_object(m: Message) -> Schema:
    obj: Schema = {
        "name": m.name if m.channel != "voice" else m.type or m.name,
        "title": m.name,
        "summary": m.summary,
        "contentType": "application/octet-stream" if m.type is None else "application/json",
        "payload": m.payload,
        "x-websocket-frame": m.frame,
    }
    if m.description:
        obj["description"] = m.description
    if m.type is None:
        obj["x-audio-format"] = dict(_AUDIO_FORMAT)
    if m.examples:
        obj["examples"] = [
            {"name": f"{m.name}{i + 1}" if len(m.examples) > 1 else m.name, "payload": ex}
            for i, ex in enumerate(m.examples)
        ]
    return obj


def _operation(m: Message) -> tuple[str, Schema]:
    receive = m.sender == "client"
    op_id = ("receive" if receive else "send") + m.name
    return op_id, {
        "action": "receive" if receive else "send",
        "channel": {"$ref": f"#/channels/{m.channel}"},
        "summary": m.summary,
        "messages": [{"$ref": f"#/channels/{m.channel}/messages/{m.name}"}],
    }


_DESCRIPTION: Final = f"""\
One voice session per WebSocket: the client streams microphone audio and gets the agent's \
voice, transcripts and state back. The server relays to Azure AI Voice Live.

This document describes the server: operations that *receive* are the client's messages, \
those that *send* are the server's. Binary frames, both ways, are audio: {_PCM_NOTE} \
Text frames are JSON objects with a `type`. The HTTP side of the upgrade (status codes \
before it, the token) is in the OpenAPI document, `/openapi.json`.

## Close codes

{close_code_table()}

## Error codes

Sent in `error` and `status` messages. "Reconnect" says whether a client should \
reconnect on its own (the browser client follows this table).

{code_table()}
"""


def asyncapi_document() -> dict[str, Any]:
    """The whole document, as a JSON-able dict (a new one on each call)."""
    security = [
        {"$ref": "#/components/securitySchemes/clientToken"},
        {"$ref": "#/components/securitySchemes/clientTokenSubprotocol"},
    ]
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "id": "urn:voicebridge:voice",
        "info": {
            "title": "voicebridge voice session",
            "version": __version__,
            "description": _DESCRIPTION,
            "license": {"name": "MIT"},
            "externalDocs": {"description": "The HTTP routes", "url": "/openapi.json"},
        },
        "defaultContentType": "application/json",
        "servers": {
            "local": {
                "host": "localhost:8000",
                "protocol": "ws",
                "description": "`make run` on this machine (APP_HOST, APP_PORT).",
                "security": security,
            },
            "public": {
                "host": "{host}",
                "protocol": "wss",
                "description": "Behind TLS: TLS_CERT_FILE / TLS_KEY_FILE, or a reverse proxy.",
                "variables": {
                    "host": {
                        "default": "voice.example.com",
                        "description": "The name in ALLOWED_HOSTS.",
                    }
                },
                "security": security,
            },
        },
        "channels": {
            CHANNEL: {
                "address": CHANNEL_ADDRESS,
                "title": "Voice session",
                "summary": "One conversation with the agent.",
                "description": "Closes with one of `x-close-codes`; an `error` or "
                "`status: ended` message says why first.",
                "messages": {m.name: {"$ref": f"#/components/messages/{m.name}"} for m in MESSAGES},
                "bindings": {
                    "ws": {
                        "method": "GET",
                        "query": {
                            "type": "object",
                            "properties": {
                                "token": {
                                    "type": "string",
                                    "description": "The client token, while CLIENT_TOKEN is set.",
                                }
                            },
                        },
                        "headers": {
                            "type": "object",
                            "properties": {
                                "Sec-WebSocket-Protocol": {
                                    "type": "string",
                                    "description": "`voicebridge`, and/or `token.<TOKEN>` "
                                    "to present the client token.",
                                },
                                "Origin": {
                                    "type": "string",
                                    "description": "A browser page's origin must be this "
                                    "server's or in ALLOWED_ORIGINS (else HTTP 403).",
                                },
                            },
                        },
                        "bindingVersion": WS_BINDING_VERSION,
                    }
                },
                "x-close-codes": [{"code": code, "meaning": text} for code, text in CLOSE_CODES],
                "x-error-codes": {
                    code: {"close": info.close, "retry": info.retry, "summary": info.summary}
                    for code, info in CODES.items()
                },
            },
            **{
                name: {
                    **channel,
                    "messages": {
                        m.name: {"$ref": f"#/components/messages/{m.name}"}
                        for m in PHONE_MESSAGES
                        if m.channel == name
                    },
                }
                for name, channel in PHONE_CHANNELS.items()
            },
        },
        "operations": dict(_operation(m) for m in ALL_MESSAGES),
        "components": {
            "messages": {m.name: _message_object(m) for m in ALL_MESSAGES},
            "securitySchemes": {
                "clientToken": {
                    "type": "httpApiKey",
                    "name": "token",
                    "in": "query",
                    "description": "One of the CLIENT_TOKEN tokens; needed only while it is "
                    "set. Without it the upgrade is refused with HTTP 401.",
                },
                "clientTokenSubprotocol": {
                    "type": "httpApiKey",
                    "name": "Sec-WebSocket-Protocol",
                    "in": "header",
                    "description": "The client token offered as the subprotocol "
                    "`token.<TOKEN>` (browsers cannot set other headers).",
                },
            },
        },
    }


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper, writing text of several lines as literal blocks (``|``)."""


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)


def asyncapi_yaml() -> str:
    """The document as YAML (block style, keys in the order written here)."""
    return yaml.dump(
        asyncapi_document(),
        Dumper=_Dumper,
        sort_keys=False,
        allow_unicode=True,
        width=100,
        indent=2,
    )
