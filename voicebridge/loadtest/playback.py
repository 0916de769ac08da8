"""A phone provider's playback buffer, modelled: what the caller hears, and when.

Twilio and Azure Communication Services queue the audio a media-stream server sends and
play it into the call in real time; the fake providers of :mod:`voicebridge.loadtest.phone`
use this model to say what was played, when a mark was reached and what a barge-in
discarded. Pure and clock-free: every method takes the time (``now``, integer ns on any
monotonic clock), so tests drive it with a fake one.

As Twilio documents it (Media Streams, "WebSocket messages": *mark* and *clear*): audio is
played in the order received; a mark sent after some audio is sent back when playback
reaches it (at once when nothing is queued before it); a *clear* empties the buffer and
every mark not yet reached is sent back at once. ACS's *StopAudio* empties the buffer the
same way (ACS has no marks).

Positions are counted in bytes (``rate`` bytes a millisecond: 8 for μ-law at 8 kHz, 32 for
PCM16 at 16 kHz), so the arithmetic is exact integers: audio ``pushed`` is played from
``anchor_bytes`` at ``anchor_ns`` on, one byte every ``1e6 / rate`` ns, until it runs out.
"""

from __future__ import annotations

from collections import deque

import attrs

_MS = 1_000_000


@attrs.frozen
class PlayedMark:
    """A mark the buffer reached (or a clear dropped), with the time it was sent back."""

    name: str
    queued_ns: int  # when the server's mark message arrived
    played_ns: int  # when playback reached it (or the clear that dropped it came)
    position: int  # bytes of audio played before it
    cleared: bool  # dropped by a clear rather than reached


@attrs.define(eq=False)
class Playback:
    """The buffer of one call: audio queued, played, discarded; marks pending and done."""

    rate: int  # bytes of audio a millisecond
    pushed: int = 0  # bytes queued since the call began (discarded ones excluded)
    discarded: int = 0  # bytes a clear dropped before they were played
    anchor_ns: int = 0
    anchor_bytes: int = 0
    pending: deque[tuple[str, int, int]] = attrs.field(factory=deque)  # name, position, queued
    done: list[PlayedMark] = attrs.field(factory=list)
    clears: int = 0

    def played(self, now: int) -> int:
        """Bytes played by ``now`` (all of them once the buffer has run dry)."""
        elapsed = max(now - self.anchor_ns, 0)
        return min(self.pushed, self.anchor_bytes + elapsed * self.rate // _MS)

    def queued(self, now: int) -> int:
        """Bytes waiting to be played."""
        return self.pushed - self.played(now)

    def push(self, n: int, now: int) -> None:
        """``n`` bytes of audio arrive; playback starts now if the buffer had run dry."""
        if n <= 0:
            return
        if self.played(now) == self.pushed:
            self.anchor_ns, self.anchor_bytes = now, self.pushed
        self.pushed += n

    def mark(self, name: str, now: int) -> list[PlayedMark]:
        """A mark arrives after the audio queued so far; reached at once if none is."""
        self.pending.append((name, self.pushed, now))
        return self.advance(now)

    def advance(self, now: int) -> list[PlayedMark]:
        """The marks playback has reached by ``now``, in order (each returned once)."""
        played = self.played(now)
        reached = []
        while self.pending and self.pending[0][1] <= played:
            name, position, queued = self.pending.popleft()
            reached.append(PlayedMark(name, queued, max(now, queued), position, cleared=False))
        self.done.extend(reached)
        return reached

    def clear(self, now: int) -> list[PlayedMark]:
        """Empty the buffer: the marks already reached, then every pending one, at once."""
        reached = self.advance(now)
        played = self.played(now)
        self.clears += 1
        self.discarded += self.pushed - played
        self.pushed = played
        self.anchor_ns, self.anchor_bytes = now, played
        dropped = [
            PlayedMark(name, queued, now, played, cleared=True)
            for name, _position, queued in self.pending
        ]
        self.pending.clear()
        self.done.extend(dropped)
        return reached + dropped

    def next_due(self) -> int | None:
        """When playback reaches the first pending mark (ns), or None without one."""
        if not self.pending:
            return None
        position = self.pending[0][1]
        if position <= self.anchor_bytes:
            return self.anchor_ns
        # Ceiling division: the mark is due once its last byte before it has played.
        return self.anchor_ns + -(-(position - self.anchor_bytes) * _MS // self.rate)

    def drained_at(self) -> int:
        """When the queued audio will have played (ns; the past once it has)."""
        return self.anchor_ns + -(-(self.pushed - self.anchor_bytes) * _MS // self.rate)
