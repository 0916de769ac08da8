"""What the OpenAPI and AsyncAPI documents (and the plain reference page) share: the error
message's shape, the error-code table and the WebSocket close codes."""

from __future__ import annotations

from typing import Any, Final

from voicebridge import errors
from voicebridge.errors import CODES

Schema = dict[str, Any]

#: The close codes a ``/ws/voice`` session can end with, and what each means.
CLOSE_CODES: Final[tuple[tuple[int, str], ...]] = (
    (errors.CLOSE_NORMAL, "normal: client, operator, agent, time limit or idle timeout"),
    (errors.CLOSE_GOING_AWAY, "server shutting down; reconnecting shortly should work"),
    (errors.CLOSE_POLICY, "policy: audio rate limit, client token or origin"),
    (errors.CLOSE_TOO_BIG, "a frame larger than MAX_FRAME_BYTES"),
    (errors.CLOSE_UPSTREAM, "upstream (Voice Live) or internal failure"),
    (
        errors.CLOSE_TRY_AGAIN,
        "try again later: at capacity (MAX_SESSIONS, MAX_SESSIONS_PER_CLIENT) or a network "
        "too slow for the audio",
    ),
)


def code_table() -> str:
    """The error codes as a Markdown table: what each does to a session and whether a
    client should reconnect on its own (the browser client follows this table)."""
    rows = [
        "| code | ends the session with | reconnect | meaning |",
        "|---|---|---|---|",
    ]
    for code, info in CODES.items():
        closes = "goes on" if info.close is None else f"close {info.close}"
        rows.append(f"| `{code}` | {closes} | {'yes' if info.retry else 'no'} | {info.summary} |")
    return "\n".join(rows)


def close_code_table() -> str:
    """The close codes as a Markdown table."""
    rows = ["| close code | meaning |", "|---|---|"]
    rows.extend(f"| {code} | {meaning} |" for code, meaning in CLOSE_CODES)
    return "\n".join(rows)


def error_message_schema(code: Schema) -> Schema:
    """``{"type": "error", "message", "code"}``: the protocol's error message, which is also
    the body of the HTTP errors (``ops.json_error``)."""
    return {
        "type": "object",
        "required": ["type", "message", "code"],
        "properties": {
            "type": {"const": "error"},
            "message": {
                "type": "string",
                "description": "For people; never holds a secret. Do not parse it: use `code`.",
            },
            "code": code,
        },
        "examples": [
            {"type": "error", "message": "no live session 1234", "code": errors.ERR_NOT_FOUND}
        ],
    }
