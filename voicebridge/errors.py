"""Stable error codes and close codes: what clients and ops scripts rely on.

:data:`CODES` is the one table of every code a client can receive: the close code a
session ends with when that code ends it, and whether a client should reconnect. The
browser client mirrors it in ``static/js/errors.js`` (a test keeps the two equal).
"""

from __future__ import annotations

from typing import Final

import attrs

# WebSocket close codes (RFC 6455 section 7.4.1 plus 1013 from the IANA registry).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # server shutting down
CLOSE_POLICY: Final = 1008  # auth or origin, rate limit
CLOSE_TOO_BIG: Final = 1009  # frame larger than MAX_FRAME_BYTES
CLOSE_UPSTREAM: Final = 1011  # upstream failure
CLOSE_TRY_AGAIN: Final = 1013  # at capacity, or a network too slow for the audio

# Error codes sent in {"type": "error", "code": ...} and {"type": "status", "code": ...}.
ERR_BAD_JSON: Final = "bad_json"
ERR_BAD_MESSAGE: Final = "bad_message"
ERR_UNKNOWN_TYPE: Final = "unknown_type"
ERR_BAD_AUDIO: Final = "bad_audio"
ERR_ODD_FRAME: Final = "odd_frame"
ERR_FRAME_TOO_LARGE: Final = "frame_too_large"
ERR_RATE_LIMITED: Final = "rate_limited"
ERR_SLOW_CONSUMER: Final = "slow_consumer"
ERR_UPSTREAM_CONNECT: Final = "upstream_connect_failed"
ERR_UPSTREAM_CLOSED: Final = "upstream_closed"
ERR_UPSTREAM: Final = "upstream_error"
ERR_CAPACITY: Final = "at_capacity"
ERR_SESSION_LIMIT: Final = "session_time_limit"
ERR_IDLE: Final = "idle_timeout"
ERR_ENDED_BY_ADMIN: Final = "ended_by_admin"
ERR_SHUTDOWN: Final = "server_shutdown"
ERR_INTERNAL: Final = "internal_error"
ERR_UNAUTHORIZED: Final = "unauthorized"
ERR_FORBIDDEN_ORIGIN: Final = "forbidden_origin"
ERR_NOT_FOUND: Final = "not_found"
ERR_RESPONSE_INTERRUPTED: Final = "response_interrupted"
ERR_UPSTREAM_CONFIG_REJECTED: Final = "upstream_config_rejected"
ERR_RESPONSE_FAILED: Final = "response_failed"
ERR_RESPONSE_INCOMPLETE: Final = "response_incomplete"
ERR_TRANSCRIPTION_FAILED: Final = "transcription_failed"
ERR_AGENT_ENDED: Final = "agent_ended"
ERR_CALLS_UNAVAILABLE: Final = "calls_unavailable"
ERR_BAD_QUERY: Final = "bad_query"
ERR_HOST_NOT_ALLOWED: Final = "host_not_allowed"
ERR_PHONE_OFF: Final = "phone_off"
ERR_UPSTREAM_AUTH: Final = "upstream_auth_rejected"
ERR_MISCONFIGURED: Final = "server_misconfigured"


@attrs.frozen
class CodeInfo:
    """What a code means for the connection.

    ``close`` is the WebSocket close code when this code ends the session (None: the
    session goes on). ``retry`` says whether a client should reconnect on its own.
    """

    close: int | None
    retry: bool
    summary: str


CODES: Final[dict[str, CodeInfo]] = {
    # Bad input: answered with an error, the session goes on.
    ERR_BAD_JSON: CodeInfo(None, False, "a text frame was not valid JSON"),
    ERR_BAD_MESSAGE: CodeInfo(None, False, "a message is missing a field or has a bad value"),
    ERR_UNKNOWN_TYPE: CodeInfo(None, False, "a message type the server does not know"),
    ERR_BAD_AUDIO: CodeInfo(None, False, "'audio' was not valid base64"),
    ERR_ODD_FRAME: CodeInfo(None, False, "an audio frame with an odd byte count"),
    ERR_UPSTREAM: CodeInfo(None, False, "Voice Live reported an error; the session goes on"),
    # Typed text over the limit is refused and the session goes on; audio faster than the
    # limit ends it (the client is broken or hostile: reconnecting would do the same).
    ERR_RATE_LIMITED: CodeInfo(CLOSE_POLICY, False, "messages or audio arrive too fast"),
    ERR_FRAME_TOO_LARGE: CodeInfo(CLOSE_TOO_BIG, False, "a frame larger than the limit"),
    ERR_UNAUTHORIZED: CodeInfo(CLOSE_POLICY, False, "a valid client token is required"),
    ERR_FORBIDDEN_ORIGIN: CodeInfo(CLOSE_POLICY, False, "the page's origin is not allowed"),
    ERR_NOT_FOUND: CodeInfo(None, False, "an admin route named no live session (HTTP 404)"),
    ERR_CALLS_UNAVAILABLE: CodeInfo(
        None, True, "call records are off or the store cannot be reached (HTTP 503)"
    ),
    ERR_BAD_QUERY: CodeInfo(None, False, "a bad filter on GET /calls (HTTP 400)"),
    ERR_PHONE_OFF: CodeInfo(
        None, False, "POST /twilio/voice while TWILIO_AUTH_TOKEN is not set (HTTP 503)"
    ),
    ERR_HOST_NOT_ALLOWED: CodeInfo(
        None, False, "the request's Host is not in ALLOWED_HOSTS (HTTP 421)"
    ),
    # The network, not the client, is at fault: a reconnect may well work.
    ERR_SLOW_CONSUMER: CodeInfo(CLOSE_TRY_AGAIN, True, "the client did not read its audio"),
    ERR_CAPACITY: CodeInfo(CLOSE_TRY_AGAIN, True, "the server is at its session limit"),
    ERR_UPSTREAM_CONNECT: CodeInfo(CLOSE_UPSTREAM, True, "Voice Live could not be reached"),
    ERR_UPSTREAM_CLOSED: CodeInfo(CLOSE_UPSTREAM, True, "the Voice Live connection closed"),
    # In `status: reconnecting`: the call goes on over a new connection; the answer that was
    # playing is cut short.
    ERR_RESPONSE_INTERRUPTED: CodeInfo(None, False, "an answer was cut by a lost connection"),
    ERR_RESPONSE_FAILED: CodeInfo(None, False, "Voice Live could not produce an answer"),
    ERR_RESPONSE_INCOMPLETE: CodeInfo(
        None, False, "an answer was cut short (content filter or token limit)"
    ),
    ERR_TRANSCRIPTION_FAILED: CodeInfo(None, False, "the caller's words could not be transcribed"),
    # Permanent until an operator changes the settings: reconnecting would fail the same way.
    ERR_UPSTREAM_CONFIG_REJECTED: CodeInfo(
        CLOSE_UPSTREAM, False, "Voice Live refused the session's configuration"
    ),
    # Permanent until an operator acts: retrying would fail the same way.
    ERR_UPSTREAM_AUTH: CodeInfo(
        CLOSE_UPSTREAM, False, "Voice Live refused the server's API key or identity"
    ),
    ERR_MISCONFIGURED: CodeInfo(
        CLOSE_UPSTREAM, False, "the server cannot run a session as configured (its log says why)"
    ),
    ERR_INTERNAL: CodeInfo(CLOSE_UPSTREAM, True, "an unexpected server error"),
    ERR_SHUTDOWN: CodeInfo(CLOSE_GOING_AWAY, True, "the server is restarting"),
    # Ended on purpose: a new conversation is the user's choice.
    ERR_SESSION_LIMIT: CodeInfo(CLOSE_NORMAL, False, "the session reached its time limit"),
    ERR_IDLE: CodeInfo(CLOSE_NORMAL, False, "nothing was received for too long"),
    ERR_ENDED_BY_ADMIN: CodeInfo(CLOSE_NORMAL, False, "an operator ended the session"),
    ERR_AGENT_ENDED: CodeInfo(CLOSE_NORMAL, False, "the agent ended the call (end_call tool)"),
}


def close_code(code: str) -> int:
    """The close code a session ends with for ``code`` (1011 for a code that ends nothing)."""
    info = CODES.get(code)
    return info.close if info is not None and info.close is not None else CLOSE_UPSTREAM


class VoicebridgeError(Exception):
    """Base of the project's own errors; ``code`` is safe to show to a client."""

    code: str = ERR_INTERNAL

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class ProtocolError(VoicebridgeError):
    """A client message that cannot be used; the session answers it and goes on."""

    code = ERR_BAD_MESSAGE
