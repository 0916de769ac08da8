"""Stable error codes and close codes: what clients and ops scripts rely on."""

from __future__ import annotations

from typing import Final

# WebSocket close codes (RFC 6455 section 7.4.1 plus 1013 from the IANA registry).
CLOSE_NORMAL: Final = 1000
CLOSE_GOING_AWAY: Final = 1001  # server shutting down
CLOSE_POLICY: Final = 1008  # auth or origin, rate limit
CLOSE_TOO_BIG: Final = 1009  # frame larger than MAX_FRAME_BYTES
CLOSE_UPSTREAM: Final = 1011  # upstream failure
CLOSE_TRY_AGAIN: Final = 1013  # at capacity

# Error codes sent in {"type": "error", "code": ...}.
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


class UpstreamError(VoicebridgeError):
    """The Voice Live connection failed or broke; the session ends with 1011."""

    code = ERR_UPSTREAM
