"""Rate limits of one session: token buckets fed by the monotonic clock the caller passes."""

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
