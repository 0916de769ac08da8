"""One simulated caller of the conversation scenario: real speech, pauses, barge-ins.

A caller streams a 20 ms frame on every tick, as a microphone does: an utterance (speech
made by :mod:`voicebridge.loadtest.speech`), then digital silence while it listens to the
answer, then a pause, then the next utterance. Callers chosen to barge in start their
next utterance while every other answer (the first included) is still playing, 300 to
900 ms after its first audio. What was said and heard goes into a
:class:`~voicebridge.loadtest.calls.CallLog`.

Every frame is prepared once per run (:class:`RunScript`), masked with the run's key, so a
tick writes bytes that already exist. It speaks both dialects:

* the bridge's (``/ws/voice``): binary frames of PCM; ``audio_start`` announces an answer,
  binary frames carry it, ``status: ready`` ends it, ``clear_audio`` is the barge-in;
* Voice Live's (``--direct``, the emulator): the same ``session.update`` the relay sends,
  then ``input_audio_buffer.append`` per frame; ``response.audio.delta`` carries an answer,
  ``response.done`` ends it, ``input_audio_buffer.speech_started`` is the barge-in signal.
"""

from __future__ import annotations

import base64
import enum
import random
import time
from collections.abc import Sequence

import attrs
import orjson

from voicebridge.loadtest import ws
from voicebridge.loadtest.accounting import SessionStats, Tally
from voicebridge.loadtest.calls import Answer, BargeIn, CallLog, EchoCheck, Turn
from voicebridge.loadtest.client import SessionClient
from voicebridge.loadtest.speech import Utterance

_MS = 1_000_000
_S = 1_000_000_000
#: How long after the end of speech an answer may take to begin.
ANSWER_TIMEOUT_S = 5.0
#: Barge-ins start this long after the interrupted answer's first audio.
BARGE_DELAY_MS = (300, 900)

# What the relay asks of Voice Live by default (voicebridge.relay.session_config with the
# default settings), so that a direct run makes the service do the same work.
SESSION_UPDATE = {
    "type": "session.update",
    "session": {
        "modalities": ["text", "audio"],
        "instructions": "",
        "voice": {"type": "openai", "name": "alloy"},
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        },
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
        "input_audio_transcription": {"model": "whisper-1"},
    },
}
_APPEND = b'{"type":"input_audio_buffer.append","audio":"%s"}'


def _frame(pcm: bytes, *, direct: bool, mask: bytes) -> ws.Prepared:
    if direct:
        return ws.Prepared.build(ws.OP_TEXT, _APPEND % base64.b64encode(pcm), mask)
    return ws.Prepared.build(ws.OP_BINARY, pcm, mask)


@attrs.frozen
class RunScript:
    """What every caller of a run may say, prepared once, and the run's timing."""

    direct: bool
    mask: bytes
    frame_ns: int
    end_ns: int  # no utterance starts after this (perf_counter_ns)
    stop_ns: int  # nothing is sent after this, answer or not
    pause_s: float
    utterances: tuple[Utterance, ...]
    frames: tuple[tuple[ws.Prepared, ...], ...]  # each utterance in frames, the last padded
    silence: ws.Prepared
    session_update: ws.Prepared

    @classmethod
    def build(
        cls,
        utterances: Sequence[Utterance],
        *,
        direct: bool,
        frame_bytes: int,
        frame_ns: int,
        end_ns: int,
        stop_ns: int,
        pause_s: float,
        mask: bytes,
    ) -> RunScript:
        frames = []
        for utterance in utterances:
            pcm = utterance.pcm + bytes(-len(utterance.pcm) % frame_bytes)
            frames.append(
                tuple(
                    _frame(pcm[i : i + frame_bytes], direct=direct, mask=mask)
                    for i in range(0, len(pcm), frame_bytes)
                )
            )
        return cls(
            direct=direct,
            mask=mask,
            frame_ns=frame_ns,
            end_ns=end_ns,
            stop_ns=stop_ns,
            pause_s=pause_s,
            utterances=tuple(utterances),
            frames=tuple(frames),
            silence=_frame(bytes(frame_bytes), direct=direct, mask=mask),
            session_update=ws.Prepared.build(ws.OP_TEXT, orjson.dumps(SESSION_UPDATE), mask),
        )

    @property
    def longest_ns(self) -> int:
        """The longest utterance: an echo answer takes about as long, plus padding."""
        return max(len(f) for f in self.frames) * self.frame_ns

    @property
    def ready_type(self) -> str:
        return "session.updated" if self.direct else "session_started"


class Phase(enum.Enum):
    PAUSE = "pause"
    SPEAK = "speak"
    LISTEN = "listen"


class Caller(SessionClient):
    """One simulated caller's connection, script and records."""

    def __init__(
        self,
        handshake: ws.Handshake,
        script: RunScript,
        tally: Tally,
        sess: SessionStats,
        *,
        log: CallLog,
        rng: random.Random,
    ) -> None:
        super().__init__(handshake, sess, mask=script.mask)
        self.script = script
        self.tally = tally
        self.log = log
        self.rng = rng
        self.frame_s = script.frame_ns / 1e9
        self.seq = 0
        self.t0_ns = 0
        self.t0_loop = 0.0
        self.phase = Phase.PAUSE
        self.pause_until = 0
        self.next_utterance = sess.index % len(script.utterances)
        self.turn: Turn | None = None
        self.frame_index = 0
        self.answer: Answer | None = None
        self.answers_heard = 0
        self.barge_at: int | None = None
        self.barge: BargeIn | None = None  # the last barge-in, until it is cleared

    # -- the connection ---------------------------------------------------------------------

    def on_binary(self, buf: bytes | bytearray, start: int, end: int, now: int) -> None:
        if self.is_ready and not self.script.direct:
            self._audio(bytes(buf[start:end]), now)

    def on_text(self, payload: bytes | bytearray, now: int) -> None:
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            self.tally.foreign += 1
            return
        kind = event.get("type") if isinstance(event, dict) else None
        if kind == "error":
            self.tally.on_error(event)
            if not self.is_ready:
                self.abort("error before ready")
            return
        if not self.is_ready:
            self._before_ready(kind)
        elif self.script.direct:
            self._direct_event(kind, event, now)
        else:
            self._bridge_message(kind, event, now)

    def _before_ready(self, kind: object) -> None:
        if kind == "session.created" and self.script.direct:
            self.send_prepared(self.script.session_update)
        elif kind == self.script.ready_type and not self.ready.done():
            self.is_ready = True
            self.ready.set_result(None)

    def _bridge_message(self, kind: object, event: dict[str, object], now: int) -> None:
        if kind == "audio_start":
            self._answer_starts(str(event.get("response_id")))
        elif kind == "status":
            if event.get("status") == "ready":
                self._answer_ends(None, now)
        elif kind == "clear_audio":
            self._cleared(now)

    def _direct_event(self, kind: object, event: dict[str, object], now: int) -> None:
        if kind == "response.audio.delta":
            response_id = str(event.get("response_id"))
            delta = event.get("delta")
            if self.answer is None or self.answer.response_id != response_id:
                self._answer_starts(response_id)
            try:
                pcm = base64.b64decode(delta) if isinstance(delta, str) else None
            except ValueError:
                pcm = None
            if pcm is None:
                self.tally.foreign += 1
            else:
                self._audio(pcm, now)
        elif kind == "response.done":
            response = event.get("response")
            rid = response.get("id") if isinstance(response, dict) else None
            self._answer_ends(str(rid), now)
        elif kind == "input_audio_buffer.speech_started":
            self._cleared(now)

    # -- what the caller hears --------------------------------------------------------------

    def _answer_starts(self, response_id: str) -> None:
        turn = self.turn
        if turn is None or not turn.speech_end or turn.answered or turn.gave_up:
            turn = None  # not an answer to anything this caller is waiting for
        else:
            turn.answered = True
        speech = self.script.utterances[turn.utterance].pcm if turn is not None else None
        answer = Answer(
            response_id=response_id,
            turn=turn,
            echo=EchoCheck(speech) if speech is not None else None,
        )
        self.answer = answer
        self.log.answers.append(answer)

    def _audio(self, pcm: bytes, now: int) -> None:
        self.sess.received += 1
        answer = self.answer
        if answer is None:
            self.tally.foreign += 1
            return
        if not answer.frames:
            answer.first_ns = now
            if answer.turn is not None and answer.turn is self.turn:
                if self.log.barges and self.answers_heard % 2 == 0:
                    delay_ms = self.rng.uniform(*BARGE_DELAY_MS)
                    self.barge_at = now + int(delay_ms * _MS)
                self.answers_heard += 1
        answer.frames += 1
        answer.last_ns = now
        if answer.echo is not None:
            answer.echo.feed(pcm)

    def _answer_ends(self, response_id: str | None, now: int) -> None:
        answer = self.answer
        if answer is None or answer.ended:
            return
        if response_id is not None and response_id != answer.response_id:
            return
        answer.ended = True
        if self.phase is Phase.LISTEN and answer.turn is not None and answer.turn is self.turn:
            self._pause(now)

    def _cleared(self, now: int) -> None:
        barge = self.barge
        if barge is not None and barge.cleared_ns is None and now >= barge.speech_start:
            barge.cleared_ns = now
            self.barge = None

    # -- what the caller says ---------------------------------------------------------------

    def start_streaming(self) -> None:
        """Begin the call: a first pause of random length (so callers are out of step)."""
        self.t0_ns = time.perf_counter_ns()
        self.t0_loop = self.loop.time()
        first = self.rng.uniform(0.0, self.script.pause_s * 2 + self.script.longest_ns / _S)
        self.pause_until = self.t0_ns + int(first * _S)
        self._tick()

    def _pause(self, now: int) -> None:
        self.phase = Phase.PAUSE
        self.barge_at = None
        pause = self.script.pause_s * self.rng.uniform(0.5, 1.5)
        self.pause_until = now + int(pause * _S)

    def _speak(self, now: int, *, barge_in: bool) -> None:
        utterance = self.next_utterance
        self.next_utterance = (utterance + 1) % len(self.script.utterances)
        turn = Turn(utterance=utterance, speech_start=now, barge_in=barge_in)
        self.log.turns.append(turn)
        self.turn = turn
        self.frame_index = 0
        self.phase = Phase.SPEAK
        self.barge_at = None
        if barge_in and self.answer is not None:
            self.answer.interrupted = True
            self.barge = BargeIn(speech_start=now, answer=self.answer)
            self.log.barge_ins.append(self.barge)

    def _listen(self, now: int) -> None:
        """While listening: barge in when it is time, give up on answers that do not come."""
        script, turn, answer = self.script, self.turn, self.answer
        assert turn is not None
        if answer is None or answer.turn is not turn:
            if now - turn.speech_end > ANSWER_TIMEOUT_S * _S:
                turn.gave_up = True
                self._pause(now)
            return
        barge_at = self.barge_at
        if barge_at is not None and barge_at <= now < script.end_ns and not answer.ended:
            self._speak(now, barge_in=True)
        elif answer.first_ns and now - answer.first_ns > 2 * script.longest_ns + _S:
            answer.abandoned = True
            self._pause(now)

    def _next_frame(self, now: int) -> ws.Prepared | None:
        script = self.script
        if self.phase is Phase.LISTEN:
            self._listen(now)
        if self.phase is Phase.PAUSE and now >= self.pause_until:
            if now >= script.end_ns:
                return None  # the run is over and nothing is owed to this caller
            self._speak(now, barge_in=False)
        if now >= script.stop_ns:
            return None
        if self.phase is Phase.SPEAK:
            turn = self.turn
            assert turn is not None
            frames = script.frames[turn.utterance]
            frame = frames[self.frame_index]
            self.frame_index += 1
            if self.frame_index == len(frames):
                turn.speech_end = now
                self.phase = Phase.LISTEN
            return frame
        return script.silence

    def _tick(self) -> None:
        script, sess, seq = self.script, self.sess, self.seq
        transport = self.transport
        if self.closing or transport is None or transport.is_closing():
            self._done_sending()
            return
        now = time.perf_counter_ns()
        frame = self._next_frame(now)
        if frame is None:
            self._done_sending()
            return
        # Never negative: uvloop's timers have millisecond resolution and may fire early.
        self.tally.lags.append(max(now - (self.t0_ns + seq * script.frame_ns), 0))
        self.send_prepared(frame)
        sess.sent += 1
        self.seq = seq = seq + 1
        self.loop.call_at(self.t0_loop + seq * self.frame_s, self._tick)
