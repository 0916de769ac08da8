"""The run: N simulated clients started over the ramp, streaming until the end, given the
drain grace for their last chunks, then closed and summed up in a ``Report``. Also the
entry point of ``python -m voicebridge loadtest`` and ``python -m voicebridge.loadtest``.

The run is bounded: every session stops at ramp + seconds, waits at most the drain grace,
then closes; a backstop limit covers closing handshakes that never finish.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import Sequence
from typing import TextIO

from voicebridge.loadtest.accounting import SessionStats, Tally, make_body
from voicebridge.loadtest.client import NotReadyError, Plan, VoiceClient
from voicebridge.loadtest.monitor import ProcessMonitor
from voicebridge.loadtest.options import (
    LoadTestConfig,
    add_loadtest_arguments,
    config_from_args,
)
from voicebridge.loadtest.report import Report, format_report, percentile, summarize
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


async def _sleep_until(deadline_ns: int) -> None:
    delay = deadline_ns - time.perf_counter_ns()
    if delay > 0:
        await asyncio.sleep(delay / _NS)


class _Run:
    """State shared by every simulated client of one run."""

    def __init__(self, config: LoadTestConfig, out: TextIO) -> None:
        self.config = config
        self.out = out
        self.url = config.target_url()
        self.host = self.url.host or "127.0.0.1"
        self.port = self.url.port or 80
        self.tally = Tally(config.frame_bytes)
        max_frames = int((config.ramp + config.seconds) * 1000 / config.frame_ms) + 2
        self.sessions = [
            SessionStats(index=i, seen=bytearray(max_frames)) for i in range(config.sessions)
        ]
        self.server = ProcessMonitor(config.server_pid) if config.server_pid else None
        self.me = ProcessMonitor()
        body = make_body(config.frame_bytes)
        self.start_ns = time.perf_counter_ns()
        self.end_ns = self.start_ns + int((config.ramp + config.seconds) * _NS)
        self.drain_end_ns = self.end_ns + int(config.drain * _NS)
        self.plan = Plan(
            direct=config.direct, body=body, frame_ns=config.frame_ms * _MS, end_ns=self.end_ns
        )

    async def session(self, sess: SessionStats) -> None:
        """One client: connect, wait for the session, stream, wait for the last chunks."""
        cfg = self.config
        await _sleep_until(self.start_ns + int(cfg.ramp * _NS * sess.index / cfg.sessions))
        budget = min(cfg.connect_timeout, (self.end_ns - time.perf_counter_ns()) / _NS)
        handshake = Handshake.build(self.url, cfg.headers(), offer_deflate=cfg.offer_deflate)
        client = VoiceClient(handshake, self.plan, self.tally, sess)
        loop = asyncio.get_running_loop()
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
            if not sess.peer_closed and sess.received < sess.sent:
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
            await _sleep_until(self.start_ns + tick * _NS)
            if self.server is not None:
                self.server.sample()
            if not self.config.progress:
                continue
            now, cpu = time.perf_counter_ns(), self.me.cpu_seconds()
            cpu_pct = 100.0 * (cpu - last_cpu) / max((now - last_ns) / _NS, 1e-9)
            last_cpu, last_ns = cpu, now
            rtts = self.tally.rtts
            p50 = percentile(sorted(rtts[last_rtt:]), 50)
            last_rtt = len(rtts)
            sessions = self.sessions
            up = sum(1 for s in sessions if s.connected and not s.peer_closed)
            failed = sum(1 for s in sessions if s.failure)
            sent = sum(s.sent for s in sessions)
            got = sum(s.received for s in sessions)
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
        if self.server is not None:
            self.server.end_window()
        self.me.end_window()

    async def run(self) -> Report:
        cfg = self.config
        self.me.start_window()
        if self.server is not None:
            self.server.start_window()
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
        )


async def run(config: LoadTestConfig, *, progress_out: TextIO | None = None) -> Report:
    """Run one load test to its end and return what it measured.

    Connection failures are counted in the report, never raised. The run ends by itself
    after ``ramp + seconds + drain`` (plus at most the closing handshakes).
    """
    return await _Run(config, progress_out or sys.stderr).run()


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
        sys.stdout.write(report.to_json() + "\n")
        sys.stdout.flush()
    else:
        print(table)
    return 0 if report.sessions_held else 1


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m voicebridge.loadtest``: the same flags as ``python -m voicebridge loadtest``."""
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge.loadtest",
        description="N simulated real-time voice clients against voicebridge or Voice Live.",
    )
    add_loadtest_arguments(parser)
    return main(parser.parse_args(argv))
