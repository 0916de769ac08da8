"""A Twilio call that outlives its stream: moved to a new stream, its conversation with it.

A stream ends with its session: the caller hung up, the agent ended the call, a limit was
reached, or the instance is restarting. The TwiML that starts a stream says
``<Connect action=".../twilio/voice/continue">``, so when the stream ends Twilio asks
what to do next, and the answer depends on why it ended:

* the instance drained (``shutdown``), its session was cut short (``cancelled``), or the
  stream ended with no session to say why (``unknown``: an instance that crashed): the
  call is moved to a new stream, which the load balancer gives to a running instance, and
  that stream's session starts with the conversation so far (the call's *handoff*, kept
  in the registry for ``PHONE_TOKEN_TTL_S``, so any instance can read it);
* anything else: ``<Hangup/>``.

At most :data:`MAX_MOVES` moves per call, so a call that fails on every instance ends
rather than loops. Pure, but for the key and the record it reads from a session.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from voicebridge.relay import Session

#: Why a stream ended that moves its call to a new stream rather than hanging up.
MOVE_REASONS: Final = frozenset({"shutdown", "cancelled", "unknown"})
MAX_MOVES: Final = 3
#: The ``<Parameter>`` that tells a stream it continues a call.
CONTINUED_PARAMETER: Final = "continued"


def key(call_sid: str) -> str:
    return f"twilio:{call_sid}"


def started() -> dict[str, Any]:
    """A call's first stream is starting: how it will end is not known yet."""
    return {"reason": "unknown", "items": [], "moves": 0}


def record(session: Session, moves: int) -> dict[str, Any]:
    """What a call's next stream needs of the session that just ended: the conversation
    only when the call moves (a call that ends leaves no transcript behind)."""
    reason = session.end.reason if session.end is not None else "unknown"
    items = session.conversation_items() if reason in MOVE_REASONS else []
    return {"reason": reason, "items": items, "moves": moves}


def refused(moves: int) -> dict[str, Any]:
    """A stream whose session never ran (refused at a cap): the call is not moved again."""
    return {"reason": "refused", "items": [], "moves": moves}


def decide(saved: dict[str, Any] | None) -> dict[str, Any] | None:
    """The handoff to keep for the call's next stream, or None: hang up. No record at all
    (none was ever written, or it expired) hangs up too: nothing says the call may go on."""
    if saved is None:
        return None
    moves = saved.get("moves")
    moves = moves if isinstance(moves, int) else MAX_MOVES
    if saved.get("reason") not in MOVE_REASONS or moves >= MAX_MOVES:
        return None
    items = saved.get("items")
    return {
        "reason": "unknown",  # until the next stream's session says how it ended
        "items": items if isinstance(items, list) else [],
        "moves": moves + 1,
    }


def carried_items(saved: dict[str, Any] | None) -> tuple[list[dict[str, Any]], int]:
    """The conversation a continuing stream starts with, and the moves so far."""
    if not saved:
        return [], 0
    items = saved.get("items")
    moves = saved.get("moves")
    return (
        [item for item in items if isinstance(item, dict)] if isinstance(items, list) else [],
        moves if isinstance(moves, int) else 0,
    )
