"""What one session has done so far: counts, latencies, state; shown in /sessions and logs."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import attrs

from voicebridge.protocol import BYTES_PER_MS as BROWSER_BYTES_PER_MS


@attrs.define
class SessionStats:
    """Counters of one session; ``as_dict()`` is the shape `/sessions` shows."""

    started_at: float = attrs.field(factory=time.time)
    started_mono: float = attrs.field(factory=time.monotonic)
    state: str = "connecting"
    client: str = ""
    channel: str = "browser"  # browser, twilio or acs
    bytes_per_ms: int = BROWSER_BYTES_PER_MS  # of the session's audio format
    caller: dict[str, str] = attrs.field(factory=dict)  # phone call details, numbers masked
    audio_in_bytes: int = 0
    audio_in_frames: int = 0
    audio_out_bytes: int = 0
    audio_out_frames: int = 0
    turns: int = 0
    barge_ins: int = 0
    user_transcripts: int = 0
    agent_transcripts: int = 0
    errors: int = 0
    upstream_connect_ms: float | None = None
    upstream_generation: int = 0  # which connection to Voice Live this is (1 = the first)
    reconnects: int = 0  # connections replaced after an unexpected end
    rotations: int = 0  # connections replaced before they expired
    latencies_ms: deque[float] = attrs.field(factory=lambda: deque(maxlen=200))

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "started_at": self.started_at,
            "duration_s": round(time.monotonic() - self.started_mono, 3),
            "state": self.state,
            "client": self.client,
            "channel": self.channel,
            **({"call": dict(self.caller)} if self.caller else {}),
            "audio_in": {
                "bytes": self.audio_in_bytes,
                "frames": self.audio_in_frames,
                "ms": self.audio_in_bytes // self.bytes_per_ms,
            },
            "audio_out": {
                "bytes": self.audio_out_bytes,
                "frames": self.audio_out_frames,
                "ms": self.audio_out_bytes // self.bytes_per_ms,
            },
            "turns": self.turns,
            "barge_ins": self.barge_ins,
            "transcripts": {"user": self.user_transcripts, "agent": self.agent_transcripts},
            "errors": self.errors,
            "upstream_connect_ms": self.upstream_connect_ms,
            "upstream": {
                "generation": self.upstream_generation,
                "reconnects": self.reconnects,
                "rotations": self.rotations,
            },
            "response_latency_ms": {
                "last": self.latencies_ms[-1] if lat else None,
                "p50": percentile(lat, 50),
                "p95": percentile(lat, 95),
                "count": len(lat),
            },
        }


def percentile(ordered: list[float], pct: float) -> float | None:
    """The nearest-rank percentile of an already sorted list; None when it is empty."""
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return round(ordered[index], 1)
