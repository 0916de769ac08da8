"""The load test's phone channels: N calls placed as Twilio or ACS would place them.

``loadtest --channel twilio|acs`` runs the conversation scenario through the fake
providers of :mod:`voicebridge.loadtest.phone`: each call speaks the run's sentences
(espeak-ng, encoded once for the channel), pauses, listens to the emulator's echo of what
it said and, for a share of callers, barges in on every other answer. The report is the
browser path's (:class:`~voicebridge.loadtest.report.Report`, the same accounting in
:mod:`voicebridge.loadtest.calls`), with what differs on a phone path:

* the echo comes back resampled (8 kHz μ-law or 16/24 kHz PCM -> 24 kHz -> back), so it
  is not compared byte for byte: its *speech span* (first to last sample louder than
  about -42 dBFS) must be the utterance's within one 20 ms frame; the speech missing
  from a shorter one counts as frames lost;
* the response latency runs from the last frame of speech to the first agent audio
  (which a phone plays at once: its buffer is empty then);
* a barge-in is *cleared* when Twilio's ``clear`` or ACS's ``StopAudio`` arrives;
* the server's own counters (``/metrics``: ``voicebridge_audio_in_seconds``,
  ``voicebridge_audio_out_seconds``) before and after the run give the caller audio it
  relayed against what the calls sent, and the agent audio it sent against what the calls
  received (``caller_audio_*``, ``agent_audio_*``);
* marks echoed (Twilio) and clears received are counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import re
import time
from typing import Any, TextIO

import aiohttp
import attrs

from voicebridge.loadtest import speech
from voicebridge.loadtest.accounting import SessionStats, Tally
from voicebridge.loadtest.calls import Answer, BargeIn, CallLog, EchoCheck, Turn, summarize_calls
from voicebridge.loadtest.monitor import ProcessMonitor, end_windows_at, sleep_until
from voicebridge.loadtest.options import TWILIO, LoadTestConfig, in_share
from voicebridge.loadtest.phone import AcsCall, CallFailed, PhoneCall, TwilioCall
from voicebridge.loadtest.phone_audio import FRAME_MS, AudioFormat, PhoneAudio, speech_span
from voicebridge.loadtest.report import Report, summarize
from voicebridge.protocol import SAMPLE_RATE

_S = 1_000_000_000
_MS = 1_000_000
#: How long after the end of speech an answer may take to begin.
ANSWER_TIMEOUT_S = 5.0
#: An answer has ended when playback has drained and nothing arrived for this long...
ANSWER_GAP_MS = 500.0
#: ... or, while its echo is still shorter than what was said, for this long: a caller
#: who took a stall for the end would talk over the rest and be counted as a barge-in.
STALL_GAP_MS = 2_000.0
BARGE_DELAY_MS = (300, 900)
_METRIC = re.compile(rb"^(voicebridge_audio_(?:in|out)_seconds_total) ([0-9.eE+-]+)$", re.M)


@attrs.frozen
class Line:
    """One sentence as a channel carries it, and the length of its speech span in bytes."""

    audio: PhoneAudio
    span: int


async def server_audio_seconds(
    session: aiohttp.ClientSession, base: str
) -> dict[str, float] | None:
    """The server's audio counters (``/metrics``), or None when it does not answer."""
    try:
        async with session.get(f"{base}/metrics", timeout=aiohttp.ClientTimeout(total=5)) as r:
            if r.status != 200:
                return None
            body = await r.read()
    except (aiohttp.ClientError, TimeoutError):
        return None
    found = {m.group(1).decode(): float(m.group(2)) for m in _METRIC.finditer(body)}
    return found or None


def echo_check(fmt: AudioFormat, expected_span: int, heard: bytes) -> EchoCheck:
    """The span check of an answer, as the :class:`EchoCheck` the accounting reads: whole
    when its speech span is the utterance's within one frame, else ``matched`` is what came."""
    span = speech_span(fmt, heard)
    got = 0 if span is None else (span[1] - span[0]) * fmt.sample_bytes
    check = EchoCheck(speech=bytes(expected_span))
    if abs(got - expected_span) <= fmt.frame_bytes:
        check.matched = expected_span
    else:
        check.matched = min(got, expected_span)
        check.bad = True  # shorter (speech lost), or longer (more than the echo)
    return check


class PhoneRun:
    """State shared by every simulated call of one run."""

    def __init__(self, config: LoadTestConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        url = config.target_url()
        self.base = f"http://{url.host}:{url.port or 80}"
        self.fmt = AudioFormat.for_channel(config.channel, config.acs_sample_rate)
        lines = []
        for utterance in speech.utterances(voice=config.voice):
            audio = PhoneAudio.from_pcm16(self.fmt, utterance.pcm, SAMPLE_RATE)
            span = speech_span(self.fmt, audio.data)
            lines.append(
                Line(audio, 0 if span is None else (span[1] - span[0]) * self.fmt.sample_bytes)
            )
        self.lines = tuple(lines)
        self.longest_ns = max(line.audio.ms for line in self.lines) * _MS
        self.tally = Tally(self.fmt.frame_bytes)
        self.sessions = [SessionStats(index=i, seen=bytearray(0)) for i in range(config.sessions)]
        self.logs = [CallLog(barges=in_share(i, config.barge_in)) for i in range(config.sessions)]
        self.calls: list[PhoneCall | None] = [None] * config.sessions
        self.server = ProcessMonitor(config.server_pid) if config.server_pid else None
        self.me = ProcessMonitor()
        self.seed = random.getrandbits(32)
        self.stalled = 0  # answers that paused for longer than ANSWER_GAP_MS mid-echo
        self.secret = config.phone_token_secret.encode()
        self.start_ns = time.perf_counter_ns()
        self.end_ns = self.start_ns + int((config.ramp + config.seconds) * _S)
        # Callers start nothing new after the end, but hear out the answer they wait for.
        tail = max(int(config.drain * _S), 2 * self.longest_ns + 2 * _S)
        self.drain_end_ns = self.end_ns + tail

    def _call(self, index: int, session: aiohttp.ClientSession) -> PhoneCall:
        if self.config.channel == TWILIO:
            return TwilioCall(
                self.base, self.config.twilio_auth_token, session=session, keep_audio=True
            )
        return AcsCall.with_secret(
            self.base,
            self.secret,
            session=session,
            keep_audio=True,
            sample_rate=self.config.acs_sample_rate,
        )

    async def session(self, index: int, session: aiohttp.ClientSession) -> None:
        """One call: placed on its turn in the ramp, a conversation, then hung up."""
        cfg, sess = self.config, self.sessions[index]
        await sleep_until(self.start_ns + int(cfg.ramp * _S * index / cfg.sessions))
        budget = min(cfg.connect_timeout, (self.end_ns - time.perf_counter_ns()) / _S)
        call = self.calls[index] = self._call(index, session)
        sess.connect_ns = time.perf_counter_ns()
        try:
            await call.start(within_s=max(budget, 0.001))
        except (OSError, TimeoutError, CallFailed, aiohttp.ClientError) as exc:
            sess.failure = _failure_reason(exc)
            await call.hangup()
            return
        sess.connected = True
        sess.ready_ns = time.perf_counter_ns()
        try:
            rng = random.Random(self.seed * 100_003 + index)
            await self.converse(call, self.logs[index], rng, first_line=index % len(self.lines))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one call's bug must not end the run
            sess.failure = sess.failure or f"caller: {type(exc).__name__}"
        finally:
            sess.stop_ns = time.perf_counter_ns()
            sess.sending_done = True
            if call.closed and not call.hanging_up:
                sess.peer_closed = True
                sess.close_reason = f"closed {call.close_code}"
            await call.hangup()
            self._account(index, call)

    async def converse(
        self, call: PhoneCall, log: CallLog, rng: random.Random, first_line: int = 0
    ) -> None:
        """Speak, listen, pause (or barge in) until the end of the run."""
        cfg = self.config
        first = rng.uniform(0.0, cfg.pause * 2 + self.longest_ns / _S)
        await sleep_until(time.perf_counter_ns() + int(first * _S))
        index = first_line
        heard = 0
        barge: BargeIn | None = None
        while time.perf_counter_ns() < self.end_ns and not call.closed:
            line = self.lines[index]
            turn = Turn(utterance=index, speech_start=time.perf_counter_ns(), barge_in=bool(barge))
            log.turns.append(turn)
            index = (index + 1) % len(self.lines)
            try:
                said = await call.speak(line.audio)
            except asyncio.CancelledError:
                if call.closed:
                    return  # the server ended the call while the caller spoke
                raise
            turn.speech_start, turn.speech_end = said.speech_start, said.speech_end
            if barge is not None:
                barge.speech_start = said.speech_start
                barge.answer.last_ns = call.last_audio
                barge = None
            call.take_audio()
            if not await call.wait_first_audio(said, within_s=ANSWER_TIMEOUT_S):
                turn.gave_up = not call.closed
                await self._pause(rng)
                continue
            turn.answered = True
            answer = Answer(
                response_id=str(len(log.answers)), turn=turn, echo=None, first_ns=said.first_audio
            )
            log.answers.append(answer)
            heard += 1
            if log.barges and heard % 2 == 1:
                delay = rng.uniform(*BARGE_DELAY_MS) * _MS
                await sleep_until(said.first_audio + int(delay))
                playing = call.playback.queued(call.clock.now()) > 0
                if playing and time.perf_counter_ns() < self.end_ns:
                    answer.interrupted = True
                    barge = BargeIn(speech_start=time.perf_counter_ns(), answer=answer)
                    log.barge_ins.append(barge)
                    continue
            limit = 2 * self.longest_ns / _S + 1.0
            quiet = await call.wait_quiet(ANSWER_GAP_MS, within_s=limit)
            if quiet and echo_check(self.fmt, line.span, bytes(call.audio)).bad:
                self.stalled += 1
                quiet = await call.wait_quiet(STALL_GAP_MS, within_s=limit)
            answer.last_ns = call.last_audio
            audio = call.take_audio()
            answer.frames = math.ceil(len(audio) / self.fmt.frame_bytes)
            if quiet and not call.closed:
                answer.ended = True
                answer.echo = echo_check(self.fmt, line.span, audio)
            else:
                answer.abandoned = not call.closed
            await self._pause(rng)

    async def _pause(self, rng: random.Random) -> None:
        pause = self.config.pause * rng.uniform(0.5, 1.5)
        await sleep_until(time.perf_counter_ns() + int(pause * _S))

    def _account(self, index: int, call: PhoneCall) -> None:
        sess, log = self.sessions[index], self.logs[index]
        sess.sent = call.pacer.sent
        sess.received = call.audio_messages
        self.tally.lags.extend(call.pacer.lags)
        self.tally.foreign += call.unexpected
        clears = sorted(call.clear_times)
        for barge in log.barge_ins:
            barge.cleared_ns = next((t for t in clears if t >= barge.speech_start), None)

    async def ticker(self) -> None:
        """Once a second: sample the server, print a progress line."""
        last_cpu, last_ns = self.me.cpu_seconds(), time.perf_counter_ns()
        tick = 0
        while True:
            tick += 1
            await sleep_until(self.start_ns + tick * _S)
            if self.server is not None:
                self.server.sample()
            if not self.config.progress:
                continue
            now, cpu = time.perf_counter_ns(), self.me.cpu_seconds()
            cpu_pct = 100.0 * (cpu - last_cpu) / max((now - last_ns) / _S, 1e-9)
            last_cpu, last_ns = cpu, now
            live = [c for c in self.calls if c is not None and c.started and not c.closed]
            failed = sum(1 for s in self.sessions if s.failure)
            sent = sum(c.pacer.sent for c in self.calls if c is not None)
            got = sum(c.audio_messages for c in self.calls if c is not None)
            turns = sum(len(log.turns) for log in self.logs)
            answers = sum(len(log.answers) for log in self.logs)
            print(
                f"[{(now - self.start_ns) / _S:6.1f}s] {self.config.channel} calls"
                f" {len(live)}/{self.config.sessions} up, {failed} failed | media sent {sent}"
                f" recv {got} | turns {turns} answers {answers} | loadgen cpu {cpu_pct:.0f}%",
                file=self.out,
                flush=True,
            )

    async def stream_end(self) -> None:
        """At the end of streaming: close the CPU windows."""
        await end_windows_at(self.end_ns, self.me, self.server)

    async def run(self) -> Report:
        cfg = self.config
        connector = aiohttp.TCPConnector(limit=0, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as session:
            before = await server_audio_seconds(session, self.base)
            self.me.start_window()
            if self.server is not None:
                self.server.start_window()
            ticker = asyncio.create_task(self.ticker())
            ender = asyncio.create_task(self.stream_end())
            hard_limit = (self.drain_end_ns - self.start_ns) / _S + 15.0
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(hard_limit), asyncio.TaskGroup() as tg:
                        for i in range(cfg.sessions):
                            tg.create_task(self.session(i, session))
                    await ender
            finally:
                ticker.cancel()
                ender.cancel()
                await asyncio.gather(ticker, ender, return_exceptions=True)
            after = await _settled_counters(session, self.base, before)
        elapsed = max((self.end_ns - self.start_ns) / _S, 1e-9)
        report = summarize(
            cfg,
            self.base,
            self.sessions,
            self.tally,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            loadgen_cpu_pct=100.0 * self.me.cpu_used / elapsed,
            server=self.server,
            calls=summarize_calls(self.logs, self.fmt.frame_bytes),
        )
        return attrs.evolve(report, **self._phone_figures(before, after))

    def _phone_figures(
        self, before: dict[str, float] | None, after: dict[str, float] | None
    ) -> dict[str, Any]:
        calls = [c for c in self.calls if c is not None]
        rate = self.fmt.bytes_per_ms * 1000
        sent_s = sum(c.pacer.sent for c in calls) * FRAME_MS / 1000
        received_s = sum(c.audio_bytes for c in calls) / rate
        played_s = sum(c.playback.played(c.clock.now()) for c in calls) / rate
        figures: dict[str, Any] = {
            "channel": self.config.channel,
            "caller_audio_sent_s": round(sent_s, 3),
            "agent_audio_received_s": round(received_s, 3),
            "agent_audio_played_s": round(played_s, 3),
            "agent_audio_discarded_s": round(sum(c.playback.discarded for c in calls) / rate, 3),
            "marks_echoed": sum(len(c.playback.done) for c in calls),
            "clears": sum(len(c.clear_times) for c in calls),
            "answers_stalled": self.stalled,
        }
        if before is not None and after is not None:
            key_in, key_out = (
                "voicebridge_audio_in_seconds_total",
                "voicebridge_audio_out_seconds_total",
            )
            if key_in in before and key_in in after:
                figures["caller_audio_relayed_s"] = round(after[key_in] - before[key_in], 3)
            if key_out in before and key_out in after:
                figures["agent_audio_relayed_s"] = round(after[key_out] - before[key_out], 3)
        return figures


async def _settled_counters(
    session: aiohttp.ClientSession, base: str, before: dict[str, float] | None
) -> dict[str, float] | None:
    """The counters once the ended sessions have added their last audio (they do so as
    they finish): read until two readings agree, for at most a few seconds."""
    if before is None:
        return None
    last = await server_audio_seconds(session, base)
    for _ in range(10):
        await asyncio.sleep(0.3)
        now = await server_audio_seconds(session, base)
        if now == last:
            break
        last = now
    return last


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, CallFailed):
        return str(exc)[:80]
    return type(exc).__name__


async def run(
    config: LoadTestConfig, *, progress_out: TextIO, calls: list[CallLog] | None = None
) -> Report:
    """Run one phone load test to its end (see :func:`voicebridge.loadtest.runner.run`)."""
    state = PhoneRun(config, progress_out)
    report = await state.run()
    if calls is not None:
        calls.extend(state.logs)
    return report
