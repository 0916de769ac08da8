"""The conversation so far, as text: what a new upstream connection is given to carry on.

Pure: no I/O. The session records what the caller said (transcripts) and typed, and what
the agent said; an agent turn the caller interrupted keeps only the share of its words the
caller heard (the played share of its audio), so a replayed conversation matches what the
caller heard, as the truncation after a barge-in does on the service. Audio itself is not
carried, only text. The record is bounded: past ``max_chars`` the oldest turns are dropped
(and counted).
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

Role = Literal["user", "assistant", "tool", "system"]


@attrs.define
class Turn:
    role: Role
    text: str = ""
    response_id: str | None = None
    heard_share: float | None = None  # an interrupted agent turn: share of its audio played
    call: tuple[str, str, str] | None = None  # a tool turn: call_id, name, arguments

    def heard_text(self) -> str:
        if self.heard_share is None:
            return self.text
        words = self.text.split()
        kept = round(len(words) * max(0.0, min(1.0, self.heard_share)))
        return " ".join(words[:kept])


class ConversationRecord:
    """Turns in the order they happened, replayable as ``conversation.item.create`` items."""

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.turns: list[Turn] = []
        self.dropped = 0

    def user(self, text: str) -> None:
        """The caller said (a final transcript) or typed ``text``."""
        if text.strip():
            self.turns.append(Turn("user", text.strip()))
            self._bound()

    def system(self, text: str) -> None:
        """A note for the agent that is no one's words (keys pressed on a phone keypad)."""
        if text.strip():
            self.turns.append(Turn("system", text.strip()))
            self._bound()

    def agent(self, response_id: str | None, text: str) -> None:
        """The agent's final transcript (or text) of one response."""
        turn = self._agent_turn(response_id)
        turn.text = text.strip()
        self._bound()

    def tool(self, call_id: str, name: str, arguments: str, output: str) -> None:
        """A function the model called, and what it returned."""
        self.turns.append(Turn("tool", output, call=(call_id, name, arguments)))
        self._bound()

    def agent_interrupted(self, response_id: str, played_ms: int, sent_ms: int) -> None:
        """The caller barged in: of ``sent_ms`` of this response's audio, ``played_ms``
        were heard. Called before or after the response's transcript arrives."""
        share = played_ms / sent_ms if sent_ms > 0 else 0.0
        self._agent_turn(response_id).heard_share = share

    def items(self) -> list[dict[str, Any]]:
        """The turns as the items to create on a new connection, oldest first."""
        items: list[dict[str, Any]] = []
        for turn in self.turns:
            if turn.call is not None:
                call_id, name, arguments = turn.call
                items.append(
                    {
                        "type": "function_call",
                        "call_id": call_id,
                        "name": name,
                        "arguments": arguments,
                    }
                )
                items.append(
                    {"type": "function_call_output", "call_id": call_id, "output": turn.text}
                )
                continue
            text = turn.heard_text()
            if not text:
                continue
            part_type = "text" if turn.role == "assistant" else "input_text"
            items.append(
                {
                    "type": "message",
                    "role": turn.role,
                    "content": [{"type": part_type, "text": text}],
                }
            )
        return items

    @property
    def chars(self) -> int:
        return sum(len(turn.text) for turn in self.turns)

    def _agent_turn(self, response_id: str | None) -> Turn:
        if response_id is not None:
            for turn in reversed(self.turns[-8:]):
                if turn.role == "assistant" and turn.response_id == response_id:
                    return turn
        turn = Turn("assistant", response_id=response_id)
        self.turns.append(turn)
        return turn

    def _bound(self) -> None:
        total = self.chars
        while total > self.max_chars and len(self.turns) > 1:
            total -= len(self.turns.pop(0).text)
            self.dropped += 1
