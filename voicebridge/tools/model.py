"""The values tool calling passes around: what the model asked for, what came of it, and
what a python tool is handed. No I/O."""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

#: Why a call ended as it did (the ``reason`` of a :class:`ToolOutcome`, a metrics label).
Reason = Literal["ok", "unknown_tool", "bad_arguments", "timeout", "failed"]
REASONS: Final = ("ok", "unknown_tool", "bad_arguments", "timeout", "failed")


@attrs.frozen
class ToolCall:
    """A function call the model made (``response.function_call_arguments.done``)."""

    call_id: str
    name: str
    #: The raw JSON text the model wrote; parsed and checked only by Toolbox.run.
    arguments: str = attrs.field(repr=False)


@attrs.frozen
class ToolOutcome:
    """What one call came to: the ``function_call_output`` for the model, and how it went.

    ``output`` is JSON text: the tool's answer, or ``{"error": "..."}`` which the model can
    recover from (apologise, ask again). ``error`` is the short, secret-free account for
    logs, metrics and the client: "timed out after 5 s", "bad arguments: $.name: required",
    "http 502". Neither ever holds a header value.
    """

    call_id: str
    name: str
    output: str = attrs.field(repr=False)
    ok: bool
    error: str | None
    duration_ms: float
    #: The built-in end_call was called: the relay ends the call once the agent has spoken.
    end_call: bool = False
    reason: Reason = "ok"


@attrs.frozen
class ToolContext:
    """The second argument of a python tool: whose call this is, and a logger for it.

    ``log`` is a structlog logger bound to ``session_id``, ``tool`` and ``call_id``. A
    tool should not log its arguments either: they may hold the caller's personal data.
    """

    session_id: str
    call_id: str
    tool: str
    log: Any = attrs.field(repr=False, eq=False)


class ToolError(Exception):
    """Raised by a python tool for a failure the model should be told in these words
    ("no customer with that number"): the message becomes the ``{"error": ...}`` output
    and the outcome's ``error``, so it must hold nothing secret."""
