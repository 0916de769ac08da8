"""The run: N simulated clients started over the ramp, streaming until the end, given the
drain grace for their last chunks, then closed and summed up in a ``Report``. Also the
entry point of ``python -m voicebridge loadtest`` and ``python -m voicebridge.loadtest``.

The run is bounded: every session stops at ramp + seconds, waits at most the drain grace
(a conversation's callers start nothing new then, but hear out the answer they wait for,
for at most twice the longest utterance and 2 s), then closes; a backstop limit covers
closing handshakes that never finish. The command line runs on uvloop where installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import Sequence
from typing import TextIO

import attrs
import orjson

from voicebridge.loadtest import phone_run, speech
from voicebridge.loadtest.accounting import SessionStats, Tally, make_body
from voicebridge.loadtest.caller import Caller, RunScript
from voicebridge.loadtest.calls import CallLog, summarize_calls
from voicebridge.loadtest.client import NotReadyError, Plan, VoiceClient
from voicebridge.loadtest.monitor import ProcessMonitor, end_windows_at, sleep_until
from voicebridge.loadtest.options import (
    CONVERSATION,
    LoadTestConfig,
    add_loadtest_arguments,
    configs_from_args,
    in_share,
)
from voicebridge.loadtest.report import (
    Report,
    added_by_bridge,
    format_comparison,
    format_report,
    percentile,
    summarize,
)
from voicebridge.loadtest.ws import Handshake

_NS = 1_000_000_000
_MS = 1_000_000


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect refused"
    if isinstance(exc, NotReadyError):
        return str(exc) or "not ready"
    return type(exc).__name__


class _Run:
    """State shared by every simulated client of one run."""

    def __init__(self, config: LoadTestConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.url = config.target_url()
        self.host = self.url.host or "127.0.0.1"
        self.port = self.url.port or 80
        self.tally = Tally(config.frame_bytes)
        self.conversation = config.scenario == CONVERSATION
        # Spoken before the clock starts: espeak-ng and sox take a moment (or are missing).
        voices = speech.utterances(voice=config.voice) if self.conversation else ()
        max_frames = (
            0
            if self.conversation
            else int((config.ramp + config.seconds) * 1000 / config.frame_ms) + 2
        )
        self.sessions = [
            SessionStats(index=i, seen=bytearray(max_frames)) for i in range(config.sessions)
        ]
        self.logs = [CallLog(barges=in_share(i, config.barge_in)) for i in range(config.sessions)]
        self.server = ProcessMonitor(config.server_pid) if config.server_pid else None
        self.me = ProcessMonitor()
        frame_ns = config.frame_ms * _MS
        self.start_ns = time.perf_counter_ns()
        self.end_ns = self.start_ns + int((config.ramp + config.seconds) * _NS)
        self.drain_end_ns = self.end_ns + int(config.drain * _NS)
        self.plan = Plan(
            direct=config.direct,
            body=make_body(config.frame_bytes),
            frame_ns=frame_ns,
            end_ns=self.end_ns,
        )
        self.script: RunScript | None = None
        if self.conversation:
            script = RunScript.build(
                voices,
                direct=config.direct,
                frame_bytes=config.frame_bytes,
                frame_ns=frame_ns,
                end_ns=self.end_ns,
                stop_ns=self.end_ns,
                pause_s=config.pause,
                mask=os.urandom(4),
            )
            # After the end callers start nothing new but hear out the answer they wait
            # for: the longest utterance, the end of speech detection, its echo.
            tail_ns = max(int(config.drain * _NS), 2 * script.longest_ns + 2 * _NS)
            self.drain_end_ns = self.end_ns + tail_ns
            self.script = attrs.evolve(script, stop_ns=self.drain_end_ns)
        self.seed = random.getrandbits(32)

    def _client(self, sess: SessionStats, handshake: Handshake) -> VoiceClient | Caller:
        if self.script is None:
            return VoiceClient(handshake, self.plan, self.tally, sess)
        rng = random.Random(self.seed * 100_003 + sess.index)
        return Caller(handshake, self.script, self.tally, sess, log=self.logs[sess.index], rng=rng)

    async def session(self, sess: SessionStats) -> None:
        """One client: connect, wait for the session, stream, wait for the last replies."""
        cfg = self.config
        await sleep_until(self.start_ns + int(cfg.ramp * _NS * sess.index / cfg.sessions))
        budget = min(cfg.connect_timeout, (self.end_ns - time.perf_counter_ns()) / _NS)
        sess.offered_deflate = in_share(sess.index, cfg.offer_deflate)
        handshake = Handshake.build(self.url, cfg.headers(), offer_deflate=sess.offered_deflate)
        client = self._client(sess, handshake)
        loop = asyncio.get_running_loop()
        sess.connect_ns = time.perf_counter_ns()
        try:
            async with asyncio.timeout(max(budget, 0.001)):
                await loop.create_connection(lambda: client, self.host, self.port)
                await client.ready
        except (OSError, TimeoutError, NotReadyError) as exc:
            sess.failure = _failure_reason(exc)
            if client.transport is not None:
                client.abort(sess.failure)
            return
        sess.connected = True
        sess.ready_ns = time.perf_counter_ns()
        try:
            client.start_streaming()
            await client.sending
            sess.stop_ns = time.perf_counter_ns()
            sess.sending_done = True
            if not self.conversation and not sess.peer_closed and sess.received < sess.sent:
                timeout = max(self.drain_end_ns - time.perf_counter_ns(), 0) / _NS
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sess.all_back.wait(), timeout)
        finally:
            await client.close()
            sess.wire_sent, sess.wire_received = client.bytes_sent, client.bytes_received

    async def ticker(self) -> None:
        """Once a second: sample the server, print a progress line."""
        last_rtt = 0
        last_cpu, last_ns = self.me.cpu_seconds(), time.perf_counter_ns()
        tick = 0
        while True:
            tick += 1
            await sleep_until(self.start_ns + tick * _NS)
            if self.server is not None:
                self.server.sample()
            if not self.config.progress:
                continue
            now, cpu = time.perf_counter_ns(), self.me.cpu_seconds()
            cpu_pct = 100.0 * (cpu - last_cpu) / max((now - last_ns) / _NS, 1e-9)
            last_cpu, last_ns = cpu, now
            sessions = self.sessions
            up = sum(1 for s in sessions if s.connected and not s.peer_closed)
            failed = sum(1 for s in sessions if s.failure)
            sent = sum(s.sent for s in sessions)
            got = sum(s.received for s in sessions)
            if self.conversation:
                turns = sum(len(log.turns) for log in self.logs)
                answers = sum(len(log.answers) for log in self.logs)
                detail = f"turns {turns} answers {answers}"
            else:
                rtts = self.tally.rtts
                p50 = percentile(sorted(rtts[last_rtt:]), 50)
                last_rtt = len(rtts)
                detail = "p50 -" if p50 is None else f"p50 {p50 / _MS:.2f} ms"
            print(
                f"[{(now - self.start_ns) / _NS:6.1f}s] sessions {up}/{self.config.sessions} up,"
                f" {failed} failed | frames sent {sent} recv {got} | {detail}"
                f" | loadgen cpu {cpu_pct:.0f}%",
                file=self.out,
                flush=True,
            )

    async def stream_end(self) -> None:
        """At the end of streaming: close the CPU windows."""
        await end_windows_at(self.end_ns, self.me, self.server)

    async def run(self) -> Report:
        cfg = self.config
        self.me.start_window()
        if self.server is not None:
            self.server.start_window()
        ticker = asyncio.create_task(self.ticker())
        ender = asyncio.create_task(self.stream_end())
        # Closing handshakes are bounded; this is only the backstop.
        hard_limit = (self.drain_end_ns - self.start_ns) / _NS + 10.0
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
        elapsed = max((self.end_ns - self.start_ns) / _NS, 1e-9)
        return summarize(
            cfg,
            str(self.url.with_query(None)),
            self.sessions,
            self.tally,
            start_ns=self.start_ns,
            end_ns=self.end_ns,
            loadgen_cpu_pct=100.0 * self.me.cpu_used / elapsed,
            server=self.server,
            calls=summarize_calls(self.logs, cfg.frame_bytes) if self.conversation else None,
        )


async def run(
    config: LoadTestConfig,
    *,
    progress_out: TextIO | None = None,
    calls: list[CallLog] | None = None,
) -> Report:
    """Run one load test to its end and return what it measured.

    ``calls``, if given, receives each caller's records (conversation scenario), from
    which the report's figures were computed.

    Connection failures are counted in the report, never raised. The run ends by itself
    after ``ramp + seconds + drain`` (plus at most the closing handshakes; a conversation
    lets callers hear out the answer they wait for). Raises
    :class:`~voicebridge.loadtest.speech.SpeechToolsMissing` for a conversation on a machine
    without espeak-ng or sox.
    """
    if config.phone:
        return await phone_run.run(config, progress_out=progress_out or sys.stderr, calls=calls)
    state = _Run(config, progress_out or sys.stderr)
    report = await state.run()
    if calls is not None and state.conversation:
        calls.extend(state.logs)
    return report


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed, as the server runs: the generator leaves more CPU."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def _print(text: str, payload: str, as_json: bool) -> None:
    if as_json:
        print(text, file=sys.stderr)
        sys.stdout.write(payload + "\n")
        sys.stdout.flush()
    else:
        print(text)


def main(args: argparse.Namespace) -> int:
    """Run the load test from parsed arguments; exit 0, 1 if no session held, 2 bad input.

    Given both ``--url`` and ``--direct``, it runs twice, direct first, and reports the two
    side by side with what the bridge adds.
    """
    try:
        configs = configs_from_args(args)
    except (ValueError, TypeError) as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    reports: list[Report] = []
    try:
        with asyncio.Runner(loop_factory=_event_loop) as runner:
            for config in configs:
                reports.append(runner.run(run(config)))
    except speech.SpeechToolsMissing as exc:
        print(f"loadtest: {exc}", file=sys.stderr)
        return 2
    if len(reports) == 1:
        _print(format_report(reports[0]), reports[0].to_json(), args.json)
    else:
        direct, bridge = reports
        payload = {
            "direct": direct.to_dict(),
            "bridge": bridge.to_dict(),
            "added": added_by_bridge(direct, bridge),
        }
        _print(format_comparison(direct, bridge), orjson.dumps(payload).decode(), args.json)
    return 0 if all(r.sessions_held for r in reports) else 1


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m voicebridge.loadtest``: the same flags as ``python -m voicebridge loadtest``."""
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge.loadtest",
        description="N simulated real-time voice clients against voicebridge or Voice Live.",
    )
    add_loadtest_arguments(parser)
    return main(parser.parse_args(argv))
