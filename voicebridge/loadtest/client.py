"""One simulated caller: waits for its session to start, streams chunks in real time, and
accounts for every reply.

It speaks one of two dialects. The bridge's (``/ws/voice``): ``session_started``, then one
binary frame per chunk each way. Voice Live's (``--direct``, e.g. the emulator in mirror
mode): ``session.created``, each chunk sent as an ``input_audio_buffer.append`` and
answered by a ``response.audio.delta``, base64 inside JSON. Chunks go out from loop timer
callbacks on absolute deadlines ``t0 + k * frame``, so a late tick does not delay the rest;
replies are handled inside ``data_received``, so no task wakes up per frame.
"""

from __future__ import annotations

import asyncio
import base64
import time

import attrs
import orjson

from voicebridge.loadtest import ws
from voicebridge.loadtest.accounting import HEADER, HEADER_B64_LEN, SessionStats, Tally

_APPEND_PREFIX = b'{"type":"input_audio_buffer.append","audio":"'
_APPEND_SUFFIX = b'"}'


class NotReadyError(Exception):
    """The handshake failed, or the peer closed before announcing the session."""


@attrs.frozen
class Plan:
    """What every client of a run sends, and until when."""

    direct: bool
    body: bytes  # the audio after each chunk's header
    frame_ns: int
    end_ns: int  # perf_counter_ns after which no chunk is sent

    @property
    def ready_type(self) -> str:
        return "session.created" if self.direct else "session_started"


class SessionClient(ws.WebSocketClient):
    """A connection that is one session of the run: ready once the session starts,
    sending until it stops; how it ended goes into its :class:`SessionStats`."""

    def __init__(
        self, handshake: ws.Handshake, sess: SessionStats, mask: bytes | None = None
    ) -> None:
        super().__init__(handshake, mask)
        self.loop = asyncio.get_running_loop()
        self.sess = sess
        self.is_ready = False
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.sending: asyncio.Future[None] = self.loop.create_future()

    def on_open(self) -> None:
        self.sess.deflate = self.deflate is not None

    def on_end(self, reason: str | None) -> None:
        sess = self.sess
        if reason is not None:
            sess.peer_closed = True
            sess.close_reason = sess.close_reason or reason
        if not self.ready.done():
            self.ready.set_exception(NotReadyError(reason or "closed"))
        self._done_sending()

    def _done_sending(self) -> None:
        if not self.sending.done():
            self.sending.set_result(None)


class VoiceClient(SessionClient):
    """One simulated client's connection and its paced audio."""

    def __init__(
        self, handshake: ws.Handshake, plan: Plan, tally: Tally, sess: SessionStats
    ) -> None:
        super().__init__(handshake, sess)
        self.plan = plan
        self.tally = tally
        self.frame_s = plan.frame_ns / 1e9
        self.delta_b64_len = len(base64.b64encode(bytes(HEADER.size + len(plan.body))))
        if plan.direct:
            after = base64.b64encode(plan.body) + _APPEND_SUFFIX
            self.chunk = self.template(ws.OP_TEXT, _APPEND_PREFIX, HEADER_B64_LEN, after)
        else:
            self.chunk = self.template(ws.OP_BINARY, b"", HEADER.size, plan.body)
        self.var = bytearray(HEADER.size)
        self.seq = 0
        self.t0_ns = 0
        self.t0_loop = 0.0

    # -- the connection ---------------------------------------------------------------------

    def on_end(self, reason: str | None) -> None:
        super().on_end(reason)
        self.sess.all_back.set()

    def on_binary(self, buf: bytes | bytearray, start: int, end: int, now: int) -> None:
        if self.is_ready:
            self.tally.on_audio(self.sess, buf, start, end, now)

    def on_text(self, payload: bytes | bytearray, now: int) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            if self.is_ready:
                self.tally.foreign += 1
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "error":
            self.tally.on_error(event)
            if not self.is_ready:
                self.abort("error before ready")
        elif not self.is_ready:
            if kind == self.plan.ready_type and not self.ready.done():
                self.is_ready = True
                self.ready.set_result(None)
        elif self.plan.direct and kind == "response.audio.delta":
            self._on_delta(event.get("delta"), now)

    def _on_delta(self, delta: object, now: int) -> None:
        tally = self.tally
        if not isinstance(delta, str):
            tally.foreign += 1
            return
        try:
            if len(delta) == self.delta_b64_len:
                # Only the header matters; the rest is the tone we sent.
                tally.on_chunk(self.sess, base64.b64decode(delta[:HEADER_B64_LEN]), 0, now)
            else:
                audio = base64.b64decode(delta)
                tally.on_audio(self.sess, audio, 0, len(audio), now)
        except ValueError:
            tally.foreign += 1

    # -- sending ----------------------------------------------------------------------------

    def start_streaming(self) -> None:
        """Send the first chunk now and schedule the rest."""
        self.t0_ns = time.perf_counter_ns()
        self.t0_loop = self.loop.time()
        self._tick()

    def _tick(self) -> None:
        plan, sess, seq = self.plan, self.sess, self.seq
        deadline = self.t0_ns + seq * plan.frame_ns
        transport = self.transport
        if (
            deadline >= plan.end_ns
            or seq >= len(sess.seen)
            or self.closing
            or transport is None
            or transport.is_closing()
        ):
            self._done_sending()
            return
        now = time.perf_counter_ns()
        # Never negative: uvloop's timers have millisecond resolution and may fire early.
        self.tally.lags.append(max(now - deadline, 0))
        var = self.var
        self.tally.stamp(var, sess, seq, now)
        self.send_template(self.chunk, base64.b64encode(var) if plan.direct else var)
        self.seq = seq = seq + 1
        self.loop.call_at(self.t0_loop + seq * self.frame_s, self._tick)
