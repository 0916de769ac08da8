"""Load generator: N simulated real-time voice clients against voicebridge or Voice Live.

Each simulated client streams PCM16 24 kHz mono audio at real-time pace, either through the
bridge (``/ws/voice``, one binary frame per chunk) or, with ``--direct``, straight to a Voice
Live endpoint such as the emulator (JSON ``input_audio_buffer.append`` events). It expects
every chunk back: the emulator's mirror mode answers each append with one
``response.audio.delta`` carrying the same bytes, which the bridge relays as one binary frame.

Every chunk starts with a small header (magic, run id, session index, sequence number, send
time), so each chunk's round trip is timed and chunks that never come back (lost), come back
after a later one (reordered) or come back twice (duplicated) are counted. With
``--server-pid`` the server process's CPU time and resident memory are sampled with psutil.

The run is bounded: every session stops at ramp + seconds, waits at most the drain grace for
its last chunks, then closes. Only loopback targets are accepted.

The clients speak WebSocket through a small ``asyncio.Protocol`` rather than aiohttp's client:
at 200 sessions (10,000 frames a second each way) aiohttp's per-message task wake-ups and
queues cost a whole core, while here a frame is one timer callback and one ``write`` out and
one ``data_received`` back, so the generator leaves the CPU to the server it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import math
import os
import random
import struct
import sys
import time
from array import array
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import attrs
import orjson
import psutil  # type: ignore[import-untyped,unused-ignore]
from yarl import URL

SAMPLE_RATE = 24_000
BYTES_PER_SAMPLE = 2
MAGIC = b"VBLT"
# magic, run id, session index, sequence number, send time (perf_counter_ns).
# 24 bytes: a multiple of 3, so base64(header) + base64(body) == base64(header + body) and
# the body's base64 is computed once per run.
HEADER = struct.Struct("<4sIIIQ")
HEADER_B64_LEN = HEADER.size * 4 // 3
TONE_HZ = 440.0
TONE_AMPLITUDE = 300  # about -40 dBFS: audible as a hum, far below speech level
DEFAULT_API_VERSION = "2025-10-01"
DEFAULT_MODEL = "bench"
MAX_SESSIONS = 10_000
MAX_ERROR_SAMPLES = 5
MAX_SECONDS = 3_600.0
SATURATED_CPU_PCT = 85.0

_APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_SUFFIX = b'"}'
_NS = 1_000_000_000
_MS = 1_000_000


class TargetError(ValueError):
    """The target URL is not a loopback WebSocket URL."""


class _NotReadyError(Exception):
    """The handshake failed, or the peer closed before announcing the session."""


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _loopback(_inst: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    check_loopback(value)


def check_loopback(url: str) -> URL:
    """Parse a ws:// URL and refuse anything that is not on this machine's loopback."""
    parsed = URL(url)
    if parsed.scheme != "ws":
        raise TargetError(f"not a plain WebSocket URL (ws://): {url}")
    host = parsed.host or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise TargetError(f"only loopback targets are allowed (127.0.0.0/8, ::1): {url}")
    return parsed


@attrs.frozen
class LoadTestConfig:
    """One load-test run: the target, how many sessions, for how long, at what pace."""

    url: str = attrs.field(validator=_loopback)
    sessions: int = attrs.field(
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_SESSIONS)]
    )
    seconds: float = attrs.field(validator=[_positive, attrs.validators.le(MAX_SECONDS)])
    frame_ms: int = attrs.field(
        default=20, validator=[attrs.validators.ge(1), attrs.validators.le(1000)]
    )
    ramp: float = attrs.field(default=0.0, validator=[_non_negative])
    direct: bool = False
    api_key: str = attrs.field(default="", repr=False)
    token: str | None = attrs.field(default=None, repr=False)
    server_pid: int | None = None
    drain: float = attrs.field(default=2.0, validator=[_non_negative])
    connect_timeout: float = attrs.field(default=10.0, validator=[_positive])
    model: str = DEFAULT_MODEL
    api_version: str = DEFAULT_API_VERSION
    progress: bool = True

    @property
    def frame_bytes(self) -> int:
        """Bytes of PCM16 audio in one chunk of ``frame_ms``."""
        return SAMPLE_RATE * self.frame_ms // 1000 * BYTES_PER_SAMPLE

    def target_url(self) -> URL:
        """The URL actually dialled (Voice Live route and query added in direct mode)."""
        url = check_loopback(self.url)
        if self.direct:
            if url.path in ("", "/"):
                url = url.with_path("/voice-live/realtime")
            query = {"api-version": self.api_version, "model": self.model}
            query.update(url.query)
            url = url.with_query(query)
        elif self.token:
            url = url.update_query(token=self.token)
        return url

    def headers(self) -> dict[str, str]:
        """Extra handshake headers: the api-key for Voice Live (the bridge takes ``?token=``)."""
        if self.direct and self.api_key:
            return {"api-key": self.api_key}
        return {}


@attrs.frozen
class Report:
    """What one run measured. Times in milliseconds, memory in bytes."""

    mode: str
    url: str
    frame_ms: int
    seconds: float
    ramp: float
    sessions_requested: int
    sessions_held: int
    sessions_failed: int
    sessions_dropped: int
    failures: dict[str, int]
    drops: dict[str, int]
    frames_sent: int
    frames_received: int
    frames_lost: int
    frames_reordered: int
    frames_duplicated: int
    frames_foreign: int
    server_errors: int
    error_samples: list[str]
    rtt_p50_ms: float | None
    rtt_p95_ms: float | None
    rtt_p99_ms: float | None
    rtt_max_ms: float | None
    rtt_mean_ms: float | None
    send_lag_p50_ms: float | None
    send_lag_p99_ms: float | None
    send_lag_max_ms: float | None
    loadgen_cpu_pct: float
    loadgen_saturated: bool
    session_seconds: float
    server_pid: int | None = None
    server_cpu_s_per_session_s: float | None = None
    server_cpu_pct_per_session: float | None = None
    server_cpu_pct: float | None = None
    server_rss_baseline_bytes: int | None = None
    server_rss_peak_bytes: int | None = None
    server_rss_per_session_bytes: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return attrs.asdict(self)


def percentile(sorted_values: Sequence[int], pct: float) -> int | None:
    """Nearest-rank percentile of an ascending sequence; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / _MS, 3)


def make_body(frame_bytes: int) -> bytes:
    """The audio after the header: a quiet sine tone, PCM16 little-endian."""
    samples = (frame_bytes - HEADER.size) // BYTES_PER_SAMPLE
    step = 2.0 * math.pi * TONE_HZ / SAMPLE_RATE
    tone = array("h", (int(TONE_AMPLITUDE * math.sin(i * step)) for i in range(samples)))
    if sys.byteorder != "little":
        tone.byteswap()
    return tone.tobytes() + b"\0" * ((frame_bytes - HEADER.size) % BYTES_PER_SAMPLE)


@attrs.define(eq=False)
class _Session:
    """Counters of one simulated client. ``seen`` is a bitmap of sequence numbers back."""

    index: int
    seen: bytearray
    sent: int = 0
    received: int = 0
    duplicated: int = 0
    reordered: int = 0
    highest: int = -1
    ready_ns: int = 0
    stop_ns: int = 0
    connected: bool = False
    sending_done: bool = False
    peer_closed: bool = False
    close_reason: str | None = None
    failure: str | None = None
    all_back: asyncio.Event = attrs.field(factory=asyncio.Event)


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, _NotReadyError):
        return str(exc) or "not ready"
    return type(exc).__name__


# -- WebSocket framing (RFC 6455), client side ---------------------------------------------

_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OP_CONT, _OP_TEXT, _OP_BINARY, _OP_CLOSE, _OP_PING, _OP_PONG = 0, 1, 2, 8, 9, 10
_CLOSE_NORMAL = 1000
_MAX_HANDSHAKE = 65_536
_CLOSE_WAIT_S = 2.0


def _masked(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """``data`` XOR the masking key, as if ``data`` started ``offset`` bytes into a payload."""
    if not data:
        return b""
    n = len(data)
    start = offset % 4
    key = (mask * (n // 4 + 2))[start : start + n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def _frame_head(opcode: int, length: int, mask: bytes) -> bytes:
    first = 0x80 | opcode
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65_536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask


def _control_frame(opcode: int, payload: bytes) -> bytes:
    mask = os.urandom(4)
    return _frame_head(opcode, len(payload), mask) + _masked(payload, mask)


@attrs.frozen
class _Template:
    """A client frame whose payload is ``before + var + after`` with only ``var`` changing.

    Everything but ``var`` is masked once, so sending a frame masks a few dozen bytes. The
    masking key is random per connection, not per frame: the per-frame rule protects browsers
    behind caching proxies, and a loopback load generator has neither.
    """

    head: bytes
    var_key: int
    var_len: int
    after: bytes

    @classmethod
    def build(cls, opcode: int, before: bytes, var_len: int, after: bytes) -> _Template:
        mask = os.urandom(4)
        length = len(before) + var_len + len(after)
        var_key = _masked(bytes(var_len), mask, len(before))
        return cls(
            head=_frame_head(opcode, length, mask) + _masked(before, mask),
            var_key=int.from_bytes(var_key, "little"),
            var_len=var_len,
            after=_masked(after, mask, len(before) + var_len),
        )

    def frame(self, var: bytes | bytearray) -> bytes:
        n = self.var_len
        masked = (int.from_bytes(var, "little") ^ self.var_key).to_bytes(n, "little")
        return b"".join((self.head, masked, self.after))


class _Client(asyncio.Protocol):
    """One simulated client's connection: handshake, then frames in and out.

    Received frames are handled inside ``data_received`` (no task wake-up per frame) and
    frames are sent from loop timer callbacks on absolute deadlines ``t0 + k * frame``.
    """

    def __init__(self, run: _Run, sess: _Session, request: bytes, accept: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        self.run = run
        self.sess = sess
        self.request = request
        self.accept = accept
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.upgraded = False
        self.is_ready = False
        self.ready: asyncio.Future[None] = loop.create_future()
        self.sending: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.closing = False
        self.fragments: list[bytes] = []
        self.fragment_opcode = 0
        self.template = run.template()
        self.var = bytearray(HEADER.size)
        self.seq = 0
        self.t0_ns = 0
        self.t0_loop = 0.0

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closing:
            self.sess.peer_closed = True
            self.sess.close_reason = self.sess.close_reason or "connection lost"
        self._fail_ready("closed")
        self._done_sending()
        self.sess.all_back.set()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        if not self.upgraded:
            self.buf += data
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HANDSHAKE:
                    self._abort("bad handshake")
                return
            head, data = bytes(self.buf[:end]), bytes(self.buf[end + 4 :])
            self.buf.clear()
            if not self._handshake_ok(head):
                return
            self.upgraded = True
        if self.buf:
            self.buf += data
            used = self._parse(self.buf, now)
            del self.buf[:used]
        else:
            used = self._parse(data, now)
            if used < len(data):
                self.buf += data[used:]

    # -- receiving -------------------------------------------------------------------------

    def _handshake_ok(self, head: bytes) -> bool:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        code = status[1].decode("ascii", "replace") if len(status) > 1 else "?"
        accept = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"sec-websocket-accept":
                accept = value.strip()
        if code != "101":
            self._abort(f"handshake {code}")
            return False
        if accept != self.accept:
            self._abort("bad handshake")
            return False
        return True

    def _parse(self, buf: bytes | bytearray, now: int) -> int:
        """Handle every whole frame in ``buf``; return how many bytes were used."""
        pos, n = 0, len(buf)
        while n - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, start = second & 0x7F, pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if second & 0x80:
                self._abort("masked frame from server")
                return n
            end = start + length
            if end > n:
                break
            self._on_frame(first, buf, start, end, now)
            pos = end
        return pos

    def _on_frame(self, first: int, buf: bytes | bytearray, start: int, end: int, now: int) -> None:
        opcode = first & 0x0F
        if opcode == _OP_BINARY and first & 0x80:
            if self.is_ready:
                self.run.on_audio(self.sess, buf, start, end, now)
            return
        if opcode == _OP_TEXT and first & 0x80:
            self._on_text(buf[start:end], now)
            return
        if opcode in (_OP_TEXT, _OP_BINARY):
            self.fragment_opcode = opcode
            self.fragments = [bytes(buf[start:end])]
        elif opcode == _OP_CONT:
            self.fragments.append(bytes(buf[start:end]))
            if first & 0x80:
                whole = b"".join(self.fragments)
                self.fragments = []
                if self.fragment_opcode == _OP_TEXT:
                    self._on_text(whole, now)
                elif self.is_ready:
                    self.run.on_audio(self.sess, whole, 0, len(whole), now)
        elif opcode == _OP_PING:
            self._write(_control_frame(_OP_PONG, bytes(buf[start:end])))
        elif opcode == _OP_CLOSE:
            if not self.closing:
                self.sess.peer_closed = True
                code = int.from_bytes(buf[start : start + 2], "big") if end - start >= 2 else 0
                self.sess.close_reason = f"closed {code}" if code else "closed"
                self.closing = True
                self._write(_control_frame(_OP_CLOSE, bytes(buf[start : start + 2])))
            self._fail_ready("closed")
            self._done_sending()
            if self.transport is not None:
                self.transport.close()

    def _on_text(self, payload: bytes | bytearray, now: int) -> None:
        if self.is_ready:
            self.run.on_event(self.sess, payload, now)
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == self.run.ready_type:
            self.is_ready = True
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "error":
            self.run.on_error(event)
            self._abort("error before ready")

    # -- sending ---------------------------------------------------------------------------

    def start_streaming(self) -> None:
        """Send the first frame now and schedule the rest."""
        self.t0_ns = time.perf_counter_ns()
        self.t0_loop = self.loop.time()
        self._tick()

    def _tick(self) -> None:
        run, sess, seq = self.run, self.sess, self.seq
        deadline = self.t0_ns + seq * run.frame_ns
        transport = self.transport
        if (
            deadline >= run.end_ns
            or seq >= len(sess.seen)
            or self.closing
            or transport is None
            or transport.is_closing()
        ):
            self._done_sending()
            return
        now = time.perf_counter_ns()
        run.lags.append(now - deadline)
        var = self.var
        HEADER.pack_into(var, 0, MAGIC, run.run_id, sess.index, seq, now)
        sess.sent = seq + 1
        if run.direct:
            transport.write(self.template.frame(base64.b64encode(var)))
        else:
            transport.write(self.template.frame(var))
        self.seq = seq = seq + 1
        self.loop.call_at(self.t0_loop + seq * run.frame_s, self._tick)

    def _done_sending(self) -> None:
        if not self.sending.done():
            self.sending.set_result(None)

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    # -- ending ----------------------------------------------------------------------------

    def _fail_ready(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(_NotReadyError(reason))

    def _abort(self, reason: str) -> None:
        self._fail_ready(reason)
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    async def close(self) -> None:
        """Closing handshake, bounded; then drop the connection."""
        if not self.closing:
            self.closing = True
            self._write(_control_frame(_OP_CLOSE, struct.pack("!H", _CLOSE_NORMAL)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), _CLOSE_WAIT_S)
        if self.transport is not None and not self.closed.done():
            self.transport.abort()
        # Let connection_lost run so the socket is released before the run ends.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 0.5)


class _Monitor:
    """psutil samples of one process: CPU seconds and peak RSS."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.proc = psutil.Process(pid)
        self.rss_baseline = self.proc.memory_info().rss
        self.rss_peak = self.rss_baseline
        self.cpu_start = self._cpu()
        self.cpu_end = self.cpu_start
        self.alive = True

    def _cpu(self) -> float:
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def sample(self) -> None:
        if not self.alive:
            return
        try:
            self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)
        except psutil.Error:
            self.alive = False

    def restart_cpu(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.cpu_start = self._cpu()

    def stop_cpu(self) -> None:
        self.sample()
        with contextlib.suppress(psutil.Error):
            self.cpu_end = self._cpu()


class _Run:
    """State shared by every simulated client of one run."""

    def __init__(self, config: LoadTestConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.direct = config.direct
        self.frame_ns = config.frame_ms * _MS
        self.frame_s = config.frame_ms / 1000
        self.frame_bytes = config.frame_bytes
        self.body = make_body(self.frame_bytes)
        self.delta_b64_len = len(base64.b64encode(bytes(self.frame_bytes)))
        self.ready_type = "session.created" if config.direct else "session_started"
        self.run_id = random.getrandbits(32)
        self.url = config.target_url()
        self.host = self.url.host or "127.0.0.1"
        self.port = self.url.port or 80
        self.headers = config.headers()
        for value in self.headers.values():
            if "\r" in value or "\n" in value:
                raise ValueError("header values must not contain line breaks")
        max_frames = int((config.ramp + config.seconds) * 1000 / config.frame_ms) + 2
        self.sessions = [
            _Session(index=i, seen=bytearray(max_frames)) for i in range(config.sessions)
        ]
        self.rtts = array("q")
        self.lags = array("q")
        self.foreign = 0
        self.server_errors = 0
        self.error_samples: list[str] = []
        self.start_ns = 0
        self.end_ns = 0
        self.drain_end_ns = 0
        self.monitor = _Monitor(config.server_pid) if config.server_pid else None
        self.me = psutil.Process()
        self.my_cpu_start = 0.0
        self.my_cpu_pct = 0.0

    def template(self) -> _Template:
        """A per-connection frame template for this run's mode."""
        if self.direct:
            after = base64.b64encode(self.body) + _APPEND_SUFFIX
            return _Template.build(_OP_TEXT, _APPEND_PREFIX, HEADER_B64_LEN, after)
        return _Template.build(_OP_BINARY, b"", HEADER.size, self.body)

    def handshake(self) -> tuple[bytes, bytes]:
        """The upgrade request and the ``Sec-WebSocket-Accept`` it must be answered with."""
        key = base64.b64encode(os.urandom(16))
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        lines = [
            f"GET {self.url.raw_path_qs} HTTP/1.1",
            f"Host: {self.url.raw_authority}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: voicebridge-loadtest",
            *(f"{name}: {value}" for name, value in self.headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode(), accept

    # -- receiving -------------------------------------------------------------------------

    def on_chunk(self, sess: _Session, data: bytes | bytearray, offset: int, now: int) -> None:
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

    def on_error(self, event: dict[str, Any]) -> None:
        """Count an error message and keep the first few distinct ones for the report."""
        self.server_errors += 1
        nested = event.get("error")
        detail: dict[str, Any] = nested if isinstance(nested, dict) else event
        text = f"{detail.get('code', '?')}: {detail.get('message', '')}"[:200]
        if len(self.error_samples) < MAX_ERROR_SAMPLES and text not in self.error_samples:
            self.error_samples.append(text)

    def on_audio(
        self, sess: _Session, data: bytes | bytearray, start: int, end: int, now: int
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

    def on_event(self, sess: _Session, payload: bytes | bytearray, now: int) -> None:
        """A text message: Voice Live events (direct) or bridge messages."""
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.foreign += 1
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "error":
            self.on_error(event)
            return
        if not self.direct or kind != "response.audio.delta":
            return
        delta = event.get("delta")
        if not isinstance(delta, str):
            self.foreign += 1
            return
        try:
            if len(delta) == self.delta_b64_len:
                # Only the header matters; the rest is the tone we sent.
                self.on_chunk(sess, base64.b64decode(delta[:HEADER_B64_LEN]), 0, now)
            else:
                audio = base64.b64decode(delta)
                self.on_audio(sess, audio, 0, len(audio), now)
        except ValueError:
            self.foreign += 1

    # -- one client ------------------------------------------------------------------------

    async def session(self, sess: _Session) -> None:
        cfg = self.config
        loop = asyncio.get_running_loop()
        start = self.start_ns + int(cfg.ramp * _NS * sess.index / cfg.sessions)
        await _sleep_until(start)
        budget = min(cfg.connect_timeout, (self.end_ns - time.perf_counter_ns()) / _NS)
        request, accept = self.handshake()
        client = _Client(self, sess, request, accept)
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                await loop.create_connection(lambda: client, self.host, self.port)
                await client.ready
        except (OSError, TimeoutError, _NotReadyError) as exc:
            sess.failure = _failure_reason(exc)
            if client.transport is not None:
                client.transport.abort()
            return
        sess.connected = True
        sess.ready_ns = time.perf_counter_ns()
        try:
            client.start_streaming()
            await client.sending
            sess.stop_ns = time.perf_counter_ns()
            sess.sending_done = True
            if not sess.peer_closed and sess.received < sess.sent:
                timeout = max(self.drain_end_ns - time.perf_counter_ns(), 0) / _NS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sess.all_back.wait(), timeout)
        finally:
            await client.close()

    # -- progress and sampling -------------------------------------------------------------

    def _my_cpu(self) -> float:
        times = self.me.cpu_times()
        return float(times.user + times.system)

    async def ticker(self) -> None:
        """Once a second: sample the server, print a progress line."""
        last_rtt = 0
        last_cpu, last_ns = self._my_cpu(), time.perf_counter_ns()
        tick = 0
        while True:
            tick += 1
            await _sleep_until(self.start_ns + tick * _NS)
            if self.monitor is not None:
                self.monitor.sample()
            if not self.config.progress:
                continue
            now, cpu = time.perf_counter_ns(), self._my_cpu()
            cpu_pct = 100.0 * (cpu - last_cpu) / max((now - last_ns) / _NS, 1e-9)
            last_cpu, last_ns = cpu, now
            recent = sorted(self.rtts[last_rtt:])
            last_rtt = len(self.rtts)
            p50 = percentile(recent, 50)
            up = sum(1 for s in self.sessions if s.connected and not s.peer_closed)
            failed = sum(1 for s in self.sessions if s.failure)
            sent = sum(s.sent for s in self.sessions)
            got = sum(s.received for s in self.sessions)
            p50_text = "-" if p50 is None else f"{p50 / _MS:.2f} ms"
            print(
                f"[{(now - self.start_ns) / _NS:6.1f}s] sessions {up}/{self.config.sessions} up,"
                f" {failed} failed | frames sent {sent} recv {got} | p50 {p50_text}"
                f" | loadgen cpu {cpu_pct:.0f}%",
                file=self.out,
                flush=True,
            )

    async def stream_end(self) -> None:
        """At the end of streaming: close the CPU windows."""
        await _sleep_until(self.end_ns)
        if self.monitor is not None:
            self.monitor.stop_cpu()
        elapsed = max((time.perf_counter_ns() - self.start_ns) / _NS, 1e-9)
        self.my_cpu_pct = 100.0 * (self._my_cpu() - self.my_cpu_start) / elapsed

    # -- the whole run ---------------------------------------------------------------------

    async def run(self) -> Report:
        cfg = self.config
        self.start_ns = time.perf_counter_ns()
        self.end_ns = self.start_ns + int((cfg.ramp + cfg.seconds) * _NS)
        self.drain_end_ns = self.end_ns + int(cfg.drain * _NS)
        self.my_cpu_start = self._my_cpu()
        if self.monitor is not None:
            self.monitor.restart_cpu()
        ticker = asyncio.create_task(self.ticker())
        ender = asyncio.create_task(self.stream_end())
        # Closing handshakes are bounded; this is only the backstop.
        hard_limit = cfg.ramp + cfg.seconds + cfg.drain + 10.0
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hard_limit), asyncio.TaskGroup() as tg:
                    for sess in self.sessions:
                        tg.create_task(self.session(sess))
                await ender
        finally:
            ticker.cancel()
            ender.cancel()
            await asyncio.gather(ticker, ender, return_exceptions=True)
        return self.report()

    def report(self) -> Report:
        cfg = self.config
        rtts = sorted(self.rtts)
        lags = sorted(self.lags)
        sessions = self.sessions
        failures: dict[str, int] = {}
        drops: dict[str, int] = {}
        for s in sessions:
            if s.failure:
                failures[s.failure] = failures.get(s.failure, 0) + 1
            elif s.connected and s.peer_closed:
                reason = s.close_reason or "closed"
                drops[reason] = drops.get(reason, 0) + 1
        sent = sum(s.sent for s in sessions)
        received = sum(s.received for s in sessions)
        end = self.end_ns
        session_seconds = sum(
            max(min(s.stop_ns, end) - s.ready_ns, 0) / _NS for s in sessions if s.connected
        )
        connected = sum(1 for s in sessions if s.connected)
        held = sum(1 for s in sessions if s.connected and not s.peer_closed)
        lag_p99 = percentile(lags, 99)
        saturated = self.my_cpu_pct >= SATURATED_CPU_PCT or (
            lag_p99 is not None and lag_p99 > self.frame_ns
        )
        server: dict[str, Any] = {}
        mon = self.monitor
        if mon is not None:
            cpu = max(mon.cpu_end - mon.cpu_start, 0.0)
            window = max((self.end_ns - self.start_ns) / _NS, 1e-9)
            per = cpu / session_seconds if session_seconds else None
            server = {
                "server_pid": mon.pid,
                "server_cpu_s_per_session_s": None if per is None else round(per, 6),
                "server_cpu_pct_per_session": None if per is None else round(per * 100, 4),
                "server_cpu_pct": round(100.0 * cpu / window, 2),
                "server_rss_baseline_bytes": mon.rss_baseline,
                "server_rss_peak_bytes": mon.rss_peak,
                "server_rss_per_session_bytes": (
                    round((mon.rss_peak - mon.rss_baseline) / connected, 1) if connected else None
                ),
            }
        mean = sum(rtts) / len(rtts) if rtts else None
        return Report(
            mode="direct" if cfg.direct else "bridge",
            url=str(self.url.with_query(None)),
            frame_ms=cfg.frame_ms,
            seconds=cfg.seconds,
            ramp=cfg.ramp,
            sessions_requested=cfg.sessions,
            sessions_held=held,
            sessions_failed=sum(1 for s in sessions if s.failure),
            sessions_dropped=connected - held,
            failures=failures,
            drops=drops,
            frames_sent=sent,
            frames_received=received,
            frames_lost=sent - received,
            frames_reordered=sum(s.reordered for s in sessions),
            frames_duplicated=sum(s.duplicated for s in sessions),
            frames_foreign=self.foreign,
            server_errors=self.server_errors,
            error_samples=list(self.error_samples),
            rtt_p50_ms=_ms(percentile(rtts, 50)),
            rtt_p95_ms=_ms(percentile(rtts, 95)),
            rtt_p99_ms=_ms(percentile(rtts, 99)),
            rtt_max_ms=_ms(rtts[-1] if rtts else None),
            rtt_mean_ms=None if mean is None else round(mean / _MS, 3),
            send_lag_p50_ms=_ms(percentile(lags, 50)),
            send_lag_p99_ms=_ms(lag_p99),
            send_lag_max_ms=_ms(lags[-1] if lags else None),
            loadgen_cpu_pct=round(self.my_cpu_pct, 1),
            loadgen_saturated=saturated,
            session_seconds=round(session_seconds, 3),
            **server,
        )


async def _sleep_until(deadline_ns: int) -> None:
    delay = deadline_ns - time.perf_counter_ns()
    if delay > 0:
        await asyncio.sleep(delay / _NS)


async def run(config: LoadTestConfig, *, progress_out: TextIO | None = None) -> Report:
    """Run one load test to its end and return what it measured.

    Connection failures are counted in the report, never raised. The run ends by itself
    after ``ramp + seconds + drain`` (plus at most the closing handshakes).
    """
    return await _Run(config, progress_out or sys.stderr).run()


def format_report(report: Report) -> str:
    """The human-readable table printed at the end of a run."""

    def num(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.2f}{unit}"

    rows: list[tuple[str, str]] = [
        ("mode", f"{report.mode} ({report.url})"),
        (
            "frame / duration",
            f"{report.frame_ms} ms / {report.seconds:g} s, ramp {report.ramp:g} s",
        ),
        (
            "sessions",
            f"requested {report.sessions_requested}, held {report.sessions_held},"
            f" failed {report.sessions_failed}, dropped {report.sessions_dropped}",
        ),
    ]
    if report.failures:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.failures.items()))
        rows.append(("failures", reasons))
    if report.drops:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(report.drops.items()))
        rows.append(("dropped by peer", reasons))
    rows += [
        (
            "frames",
            f"sent {report.frames_sent}, received {report.frames_received},"
            f" lost {report.frames_lost}, reordered {report.frames_reordered},"
            f" duplicated {report.frames_duplicated}",
        ),
        (
            "unexpected",
            f"foreign frames {report.frames_foreign}, error messages {report.server_errors}",
        ),
        *(("error message", text) for text in report.error_samples),
        (
            "round trip",
            f"p50 {num(report.rtt_p50_ms)}  p95 {num(report.rtt_p95_ms)}"
            f"  p99 {num(report.rtt_p99_ms)}  max {num(report.rtt_max_ms)} ms",
        ),
        (
            "send lag",
            f"p50 {num(report.send_lag_p50_ms)}  p99 {num(report.send_lag_p99_ms)}"
            f"  max {num(report.send_lag_max_ms)} ms",
        ),
        (
            "load generator",
            f"cpu {report.loadgen_cpu_pct:.0f}% of one core"
            + (
                "  SATURATED: it sent late (lag p99 over one frame) or ran out of CPU,"
                " so less than real-time load was offered"
                if report.loadgen_saturated
                else ""
            ),
        ),
    ]
    if report.server_pid is not None:
        rss_peak = report.server_rss_peak_bytes or 0
        rss_base = report.server_rss_baseline_bytes or 0
        per = report.server_rss_per_session_bytes
        rows += [
            (
                "server cpu",
                f"{num(report.server_cpu_pct_per_session)}% of one core per session"
                f" ({report.server_cpu_pct or 0:.1f}% total)",
            ),
            (
                "server rss",
                f"peak {rss_peak / 2**20:.1f} MiB (baseline {rss_base / 2**20:.1f} MiB),"
                f" {'-' if per is None else f'{per / 1024:.1f} KiB'} per session",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m voicebridge loadtest``."""
    parser.add_argument("--url", help="bridge WebSocket URL, e.g. ws://127.0.0.1:8000/ws/voice")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent clients (1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming time (10)")
    parser.add_argument("--frame-ms", type=int, default=20, help="audio per frame in ms (20)")
    parser.add_argument("--ramp", type=float, default=0.0, help="spread session starts (0 s)")
    parser.add_argument("--drain", type=float, default=2.0, help="grace for late frames (2 s)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="per session (10 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--direct",
        metavar="WS_URL",
        help="talk Voice Live straight to this endpoint (e.g. the emulator) instead of --url",
    )
    parser.add_argument("--api-key", default=None, help="api-key for --direct")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model query for --direct")
    parser.add_argument("--api-version", default=DEFAULT_API_VERSION, help="for --direct")
    parser.add_argument("--server-pid", type=int, help="sample this process's CPU and RSS")
    parser.add_argument("--token", default=None, help="client token for /ws/voice")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> LoadTestConfig:
    """Build the run's config from parsed arguments (raises ValueError on bad values)."""
    env = dict(os.environ) if environ is None else environ
    url = args.direct or args.url
    if not url:
        raise ValueError("give --url ws://HOST:PORT/ws/voice or --direct ws://HOST:PORT")
    api_key = args.api_key if args.api_key is not None else env.get("AZURE_OPENAI_KEY", "")
    token = args.token if args.token is not None else env.get("CLIENT_TOKEN") or None
    if args.server_pid is not None and not psutil.pid_exists(args.server_pid):
        raise ValueError(f"--server-pid {args.server_pid}: no such process")
    return LoadTestConfig(
        url=url,
        sessions=args.sessions,
        seconds=args.seconds,
        frame_ms=args.frame_ms,
        ramp=args.ramp,
        direct=bool(args.direct),
        api_key=api_key,
        token=token,
        server_pid=args.server_pid,
        drain=args.drain,
        connect_timeout=args.connect_timeout,
        model=args.model,
        api_version=args.api_version,
        progress=not args.quiet,
    )


def main(args: argparse.Namespace) -> int:
    """Run the load test from parsed arguments; exit 0, 1 if no session held, 2 bad input."""
    try:
        config = config_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(run(config))
    table = format_report(report)
    if args.json:
        print(table, file=sys.stderr)
        sys.stdout.write(orjson.dumps(report.to_dict()).decode() + "\n")
        sys.stdout.flush()
    else:
        print(table)
    return 0 if report.sessions_held else 1


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge.loadtest",
        description="N simulated real-time voice clients against voicebridge or Voice Live.",
    )
    add_loadtest_arguments(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(_cli())
