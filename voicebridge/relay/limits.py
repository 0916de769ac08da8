"""Per-message limits of one session: token buckets, and the coalescing of tiny audio
frames into normal-sized upstream appends. Pure: the caller passes the monotonic clock."""

from __future__ import annotations

import attrs


@attrs.define
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up; starts full."""

    rate: float
    capacity: float
    at: float
    tokens: float = attrs.field(default=-1.0)

    def __attrs_post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` tokens if there are enough; False (and nothing taken) if not."""
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


class AppendCoalescer:
    """Client audio on its way upstream, gathered until an append is worth sending.

    A frame of at least ``min_bytes`` with nothing waiting goes straight through; smaller
    ones wait until ``min_bytes`` have gathered or the oldest has waited ``max_wait_s``
    (the caller flushes on that deadline), so a client sending 2-byte frames costs one
    upstream event per 20 ms like everyone else, and no byte is held for long.
    """

    def __init__(self, min_bytes: int, max_wait_s: float = 0.02) -> None:
        self.min_bytes = min_bytes
        self.max_wait_s = max_wait_s
        self._buffer = bytearray()
        self._since: float | None = None

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, pcm: bytes, now: float) -> bytes:
        """Audio to send now (possibly empty: it waits for more)."""
        if not self._buffer:
            if len(pcm) >= self.min_bytes:
                return pcm
            self._since = now
        self._buffer += pcm
        since = now if self._since is None else self._since
        if len(self._buffer) >= self.min_bytes or now - since >= self.max_wait_s:
            return self.take()
        return b""

    def take(self) -> bytes:
        """Everything waiting, now."""
        ready = bytes(self._buffer)
        self._buffer.clear()
        self._since = None
        return ready

    def flush_in(self, now: float) -> float | None:
        """Seconds until the waiting audio must go (None when nothing waits)."""
        if self._since is None:
            return None
        return max(0.001, self._since + self.max_wait_s - now)
