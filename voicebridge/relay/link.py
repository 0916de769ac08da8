"""The session's link to Voice Live across connections: reconnects and rotations.

The session talks to the service through this link, not through one connection, so a
connection can be replaced under it. While no connection takes input (reconnecting, or
switching to the next one), the caller's audio is held up to a bound (the oldest dropped
and counted past it) and typed messages are held too; both go to the next connection once
it is configured. Control events that only make sense on the old connection (cancel,
truncate) are dropped while the link is down: the new connection has nothing to cancel.
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any

from voicebridge.relay.upstream import Upstream

#: Typed messages held while the link is down, at most.
MAX_HELD_EVENTS = 32
#: Held audio goes out in appends of at most this many bytes (500 ms of PCM16 24 kHz).
FLUSH_CHUNK = 24_000


class UpstreamLink:
    """The current connection (where events come from) and whether it takes input."""

    def __init__(self, hold_bytes: int) -> None:
        self.hold_bytes = hold_bytes
        self.current: Upstream | None = None
        self.accepting = False
        self.generation = 0
        self.held_bytes = 0
        self.dropped_bytes = 0
        self.dropped_events = 0
        self._held_audio: deque[bytes] = deque()
        self._held_events: list[dict[str, Any]] = []

    def attach(self, upstream: Upstream) -> Upstream | None:
        """Make ``upstream`` the connection; returns the one it replaces (to close)."""
        previous, self.current = self.current, upstream
        self.accepting = True
        self.generation += 1
        return previous

    def detach(self) -> Upstream | None:
        """The connection is gone: hold input until the next one; returns the old one."""
        previous, self.current = self.current, None
        self.accepting = False
        return previous

    def pause(self) -> None:
        """Hold input while the next connection is prepared; events still come in."""
        self.accepting = False

    def resume(self) -> None:
        """Input goes to the current connection again (a prepared switch was abandoned)."""
        self.accepting = self.current is not None

    async def send(self, event: dict[str, Any], *, hold: bool = False) -> bool:
        """Send now; while the link is down, hold it (``hold``) or drop it. True if sent."""
        if self.accepting and self.current is not None:
            await self.current.send(event)
            return True
        if hold:
            if len(self._held_events) >= MAX_HELD_EVENTS:
                self._held_events.pop(0)
                self.dropped_events += 1
            self._held_events.append(event)
        return False

    async def send_audio(self, pcm: bytes) -> None:
        """Append caller audio now, or hold it (bounded) while the link is down."""
        if self.accepting and self.current is not None:
            await self.current.send_audio(base64.b64encode(pcm).decode("ascii"))
            return
        self._held_audio.append(pcm)
        self.held_bytes += len(pcm)
        while self.held_bytes > self.hold_bytes and self._held_audio:
            oldest = self._held_audio.popleft()
            self.held_bytes -= len(oldest)
            self.dropped_bytes += len(oldest)

    async def flush(self) -> int:
        """Send what was held, audio first, in order; the bytes of audio sent."""
        upstream = self.current
        assert upstream is not None and self.accepting
        audio = b"".join(self._held_audio)
        self._held_audio.clear()
        self.held_bytes = 0
        for start in range(0, len(audio), FLUSH_CHUNK):
            chunk = audio[start : start + FLUSH_CHUNK]
            await upstream.send_audio(base64.b64encode(chunk).decode("ascii"))
        events, self._held_events = self._held_events, []
        for event in events:
            await upstream.send(event)
        return len(audio)
