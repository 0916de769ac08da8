"""Keys a phone caller presses, gathered into one message for the agent.

Callers key in numbers a digit at a time (an account number, a menu choice), so digits
within ``gap_s`` of each other go to the agent together, as one text item; ``#`` (the
"done" key by convention) sends at once. Pure: the caller of :meth:`add` and
:meth:`take_due` passes the time.
"""

from __future__ import annotations

#: Keys a keypad sends (RFC 4733 events 0-15; Twilio and ACS name them this way).
KEYS = frozenset("0123456789*#ABCD")
#: Digits held at most; a caller (or a client) pressing more sends what is held at once.
MAX_DIGITS = 32
#: The shortest wait :meth:`DtmfBuffer.due_in` gives.
MIN_WAIT_S = 0.001


class DtmfBuffer:
    """Digits pressed and not yet sent to the agent."""

    def __init__(self, gap_s: float) -> None:
        self.gap_s = gap_s
        self._digits: list[str] = []
        self._due: float | None = None

    def add(self, digit: str, now: float) -> str | None:
        """Hold ``digit``; the digits to send now (``#``, or the buffer full), else None."""
        self._digits.append(digit)
        if digit == "#" or len(self._digits) >= MAX_DIGITS:
            return self._take()
        self._due = now + self.gap_s
        return None

    @property
    def held(self) -> bool:
        """Whether digits wait to be sent."""
        return self._due is not None

    def due_in(self, now: float) -> float | None:
        """Seconds until the held digits are due (a millisecond at least, as a receive
        timeout of 0 would mean none); None when none are held."""
        return None if self._due is None else max(MIN_WAIT_S, self._due - now)

    def take_due(self, now: float) -> str | None:
        """The held digits, once the gap after the last one has passed."""
        if self._due is None or now < self._due:
            return None
        return self._take()

    def _take(self) -> str:
        digits = "".join(self._digits)
        self._digits.clear()
        self._due = None
        return digits
