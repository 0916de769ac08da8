"""Per-session accounting: the stamp every chunk carries, and what came back.

Every chunk starts with a 24-byte header (magic, run id, session index, sequence number,
send time), so each chunk's round trip is timed and chunks that never come back (lost),
come back after a later one (reordered) or come back twice (duplicated) are counted per
session. The rest of a chunk is a quiet tone, the same in every chunk.
"""

from __future__ import annotations

import asyncio
import math
import random
import struct
import sys
from array import array
from typing import Any

import attrs

from voicebridge.protocol import SAMPLE_RATE

MAGIC = b"VBLT"
# magic, run id, session index, sequence number, send time (perf_counter_ns).
# 24 bytes: a multiple of 3, so base64(header) + base64(body) == base64(header + body) and
# the body's base64 is computed once per run.
HEADER = struct.Struct("<4sIIIQ")
HEADER_B64_LEN = HEADER.size * 4 // 3
TONE_HZ = 440.0
TONE_AMPLITUDE = 300  # about -40 dBFS: audible as a hum, far below speech level
MAX_ERROR_SAMPLES = 5


def make_body(frame_bytes: int) -> bytes:
    """The audio after the header: a quiet sine tone, PCM16 little-endian."""
    samples = (frame_bytes - HEADER.size) // 2  # PCM16: two bytes a sample
    step = 2.0 * math.pi * TONE_HZ / SAMPLE_RATE
    tone = array("h", (int(TONE_AMPLITUDE * math.sin(i * step)) for i in range(samples)))
    if sys.byteorder != "little":
        tone.byteswap()
    return tone.tobytes()


@attrs.define(eq=False)
class SessionStats:
    """One simulated client's counters. ``seen`` is a bitmap of sequence numbers back."""

    index: int
    seen: bytearray
    sent: int = 0
    received: int = 0
    duplicated: int = 0
    reordered: int = 0
    highest: int = -1
    connect_ns: int = 0  # when its TCP connect began
    ready_ns: int = 0  # when its session started (session_started / session.created)
    stop_ns: int = 0
    connected: bool = False
    offered_deflate: bool = False
    deflate: bool = False
    sending_done: bool = False
    peer_closed: bool = False
    close_reason: str | None = None
    failure: str | None = None
    wire_sent: int = 0
    wire_received: int = 0
    all_back: asyncio.Event = attrs.field(factory=asyncio.Event)


def _run_id() -> int:
    return random.getrandbits(32)


def _samples() -> array[int]:
    return array("q")


@attrs.define(eq=False)
class Tally:
    """What the sessions of one run share: the run id, the time samples, the odd replies."""

    frame_bytes: int
    run_id: int = attrs.field(factory=_run_id)
    rtts: array[int] = attrs.field(factory=_samples)  # round trips, ns
    lags: array[int] = attrs.field(factory=_samples)  # how late each chunk went out, ns
    foreign: int = 0
    server_errors: int = 0
    error_samples: list[str] = attrs.field(factory=list)

    def stamp(self, buf: bytearray, sess: SessionStats, seq: int, now: int) -> None:
        """Write chunk ``seq``'s header into ``buf`` and count it as sent."""
        HEADER.pack_into(buf, 0, MAGIC, self.run_id, sess.index, seq, now)
        sess.sent = seq + 1

    def on_chunk(self, sess: SessionStats, data: bytes | bytearray, offset: int, now: int) -> None:
        """Account for one chunk that came back."""
        magic, run_id, index, seq, sent_ns = HEADER.unpack_from(data, offset)
        if magic != MAGIC or run_id != self.run_id or index != sess.index or seq >= sess.sent:
            self.foreign += 1
            return
        seen = sess.seen
        if seen[seq]:
            sess.duplicated += 1
            return
        seen[seq] = 1
        sess.received += 1
        if seq < sess.highest:
            sess.reordered += 1
        else:
            sess.highest = seq
        self.rtts.append(now - sent_ns)
        if sess.sending_done and sess.received >= sess.sent:
            sess.all_back.set()

    def on_audio(
        self, sess: SessionStats, data: bytes | bytearray, start: int, end: int, now: int
    ) -> None:
        """Audio back (a binary frame, or a decoded delta): one or more whole chunks."""
        size, length = self.frame_bytes, end - start
        if length == size:
            self.on_chunk(sess, data, start, now)
        elif length and length % size == 0:
            for offset in range(start, end, size):
                self.on_chunk(sess, data, offset, now)
        else:
            self.foreign += 1

    def on_error(self, event: dict[str, Any]) -> None:
        """Count an error message and keep the first few distinct ones for the report."""
        self.server_errors += 1
        nested = event.get("error")
        detail: dict[str, Any] = nested if isinstance(nested, dict) else event
        text = f"{detail.get('code', '?')}: {detail.get('message', '')}"[:200]
        if len(self.error_samples) < MAX_ERROR_SAMPLES and text not in self.error_samples:
            self.error_samples.append(text)
