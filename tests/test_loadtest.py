"""Tests of the load generator's own bookkeeping: lost, reordered and duplicated frames."""

from __future__ import annotations

import argparse
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import WSMsgType, web

from voicebridge import bench, loadtest
from voicebridge.loadtest import HEADER, LoadTestConfig, TargetError

DROP_SEQ = 5
SWAP_SEQS = (10, 11)
DUP_SEQ = 15

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _faulty_echo(ready_message: dict[str, str]) -> Handler:
    """A /ws/voice-shaped echo that drops one frame, swaps two and duplicates one."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_str(orjson.dumps(ready_message).decode())
        await ws.send_str('{"type": "status", "status": "listening"}')
        held: bytes | None = None
        async for msg in ws:
            if msg.type is not WSMsgType.BINARY:
                continue
            seq = HEADER.unpack_from(msg.data)[3]
            if seq == DROP_SEQ:
                continue
            if seq == SWAP_SEQS[0]:
                held = msg.data
                continue
            await ws.send_bytes(msg.data)
            if seq == SWAP_SEQS[1] and held is not None:
                await ws.send_bytes(held)
            if seq == DUP_SEQ:
                await ws.send_bytes(msg.data)
        return ws

    return handler


@pytest.fixture
async def faulty_server() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_get("/ws/voice", _faulty_echo({"type": "session_started", "session_id": "t"}))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"ws://127.0.0.1:{port}/ws/voice"
    finally:
        await runner.cleanup()


async def test_counts_lost_reordered_and_duplicated_frames(faulty_server: str) -> None:
    """Each session's one dropped, one swapped and one doubled frame are counted exactly."""
    config = LoadTestConfig(
        url=faulty_server, sessions=2, seconds=1.0, frame_ms=20, drain=0.5, progress=False
    )
    report = await loadtest.run(config)
    assert report.sessions_held == 2
    assert report.sessions_failed == 0
    # 50 frames each, unless connecting ate into the first 20 ms of the second.
    assert 2 * 45 <= report.frames_sent <= 2 * 50
    assert report.frames_lost == 2
    assert report.frames_received == report.frames_sent - 2
    assert report.frames_reordered == 2
    assert report.frames_duplicated == 2
    assert report.frames_foreign == 0
    assert report.rtt_p50_ms is not None
    assert report.rtt_max_ms is not None
    assert 0 < report.rtt_p50_ms <= report.rtt_max_ms


async def test_server_cpu_and_memory_are_sampled(faulty_server: str) -> None:
    """With a server pid the report carries CPU per session-second and RSS figures."""
    config = LoadTestConfig(
        url=faulty_server,
        sessions=1,
        seconds=0.5,
        drain=0.2,
        server_pid=os.getpid(),
        progress=False,
    )
    report = await loadtest.run(config)
    assert report.server_pid == os.getpid()
    assert report.server_cpu_s_per_session_s is not None
    assert report.server_cpu_s_per_session_s >= 0
    assert report.server_rss_peak_bytes is not None
    assert report.server_rss_baseline_bytes is not None
    assert report.server_rss_peak_bytes >= report.server_rss_baseline_bytes
    assert report.session_seconds > 0


async def test_connect_failures_are_counted_not_raised(unused_tcp_port: int) -> None:
    """Sessions that cannot connect are reported as failed and the run still ends."""
    config = LoadTestConfig(
        url=f"ws://127.0.0.1:{unused_tcp_port}/ws/voice",
        sessions=3,
        seconds=0.3,
        connect_timeout=2.0,
        progress=False,
    )
    report = await loadtest.run(config)
    assert report.sessions_failed == 3
    assert report.sessions_held == 0
    assert report.failures == {"connect refused": 3}
    assert report.frames_sent == 0
    assert report.rtt_p50_ms is None


def test_only_loopback_targets_are_accepted() -> None:
    """A target outside 127.0.0.0/8, ::1 and localhost is refused."""
    for url in ("ws://10.0.0.1:8000/ws/voice", "ws://example.com/ws/voice", "http://127.0.0.1/"):
        with pytest.raises(TargetError):
            LoadTestConfig(url=url, sessions=1, seconds=1.0)
    for url in ("ws://127.0.0.1:1/ws/voice", "ws://localhost:1/", "ws://[::1]:1/"):
        LoadTestConfig(url=url, sessions=1, seconds=1.0)


def test_cli_rejects_bad_input_with_exit_code_2(capsys: pytest.CaptureFixture[str]) -> None:
    """Missing target or a non-loopback URL exits 2 with a message, before any traffic."""
    parser = argparse.ArgumentParser()
    loadtest.add_loadtest_arguments(parser)
    assert loadtest.main(parser.parse_args([])) == 2
    assert loadtest.main(parser.parse_args(["--url", "ws://192.168.1.1/ws/voice"])) == 2
    assert "loopback" in capsys.readouterr().err


def test_frame_is_exactly_frame_ms_of_audio() -> None:
    """A 20 ms chunk is 960 bytes of PCM16 at 24 kHz, header included."""
    config = LoadTestConfig(url="ws://127.0.0.1:1/", sessions=1, seconds=1.0)
    assert config.frame_bytes == 960
    assert len(loadtest.make_body(config.frame_bytes)) + HEADER.size == 960


async def test_direct_mode_against_the_mirror_emulator_loses_nothing() -> None:
    """Straight to the emulator in mirror mode every appended frame comes back once, in order."""
    from voicebridge.emulator import EmulatorOptions, start_emulator

    emulator = await start_emulator(
        EmulatorOptions(api_key="bench-key", mirror=True, realtime=False), "127.0.0.1", 0
    )
    try:
        config = LoadTestConfig(
            url=emulator.url,
            direct=True,
            api_key="bench-key",
            sessions=2,
            seconds=1.0,
            drain=1.0,
            progress=False,
        )
        report = await loadtest.run(config)
    finally:
        await emulator.close()
    assert report.sessions_held == 2
    assert report.server_errors == 0
    assert report.frames_sent > 0
    assert report.frames_received == report.frames_sent
    assert report.frames_lost == 0
    assert report.frames_reordered == 0
    assert report.frames_duplicated == 0
    assert report.frames_foreign == 0


async def test_direct_mode_with_a_wrong_key_counts_a_failed_session() -> None:
    """A rejected api-key is a failed session with the handshake status, not a crash."""
    from voicebridge.emulator import EmulatorOptions, start_emulator

    emulator = await start_emulator(EmulatorOptions(api_key="right", mirror=True), "127.0.0.1", 0)
    try:
        config = LoadTestConfig(
            url=emulator.url, direct=True, api_key="wrong", sessions=1, seconds=0.5, progress=False
        )
        report = await loadtest.run(config)
    finally:
        await emulator.close()
    assert report.sessions_failed == 1
    assert report.sessions_held == 0
    assert list(report.failures) == ["handshake 401"]


def _bench_run(mode: str, sessions: int, **fields: object) -> bench.Run:
    report: dict[str, object] = {
        "sessions_held": sessions,
        "sessions_failed": 0,
        "frames_sent": 1000,
        "frames_received": 1000,
        "frames_lost": 0,
        "frames_reordered": 0,
        "frames_duplicated": 0,
        "rtt_p50_ms": 1.0,
        "rtt_p95_ms": 2.0,
        "rtt_p99_ms": 3.0,
        "rtt_max_ms": 4.0,
        "loadgen_cpu_pct": 10.0,
        "loadgen_saturated": False,
        "send_lag_p99_ms": 0.5,
        "server_cpu_pct_per_session": 0.2,
        "server_rss_per_session_bytes": 100_000.0,
    }
    report.update(fields)
    return bench.Run(mode=mode, sessions=sessions, report=report, other_cores=0.0)


def test_bench_judges_each_target_from_the_runs() -> None:
    """Added p99 is bridge minus direct at 50; loss, CPU and RSS are read from bridge runs."""
    runs = [
        _bench_run("direct", 50, rtt_p99_ms=3.0),
        _bench_run("bridge", 50, rtt_p99_ms=9.5, server_cpu_pct_per_session=0.25),
        _bench_run("direct", 200),
        _bench_run("bridge", 200, frames_lost=3, server_rss_per_session_bytes=200_000.0),
    ]
    verdicts = {target: (measured, verdict) for target, measured, verdict in bench.targets(runs)}
    lost, added, cpu, rss = verdicts.values()
    assert lost == ("3 of 1000", "**not met**")
    assert added == ("6.50 ms", "**not met**")
    assert cpu == ("0.250% at 50, 0.200% at 200", "**met**")
    assert rss == ("200.0 kB at 200", "**met**")
    config = bench.BenchConfig(
        sessions=(50, 200), seconds=20.0, ramp=2.0, frame_ms=20, out=Path("results.md")
    )
    page = bench.render(config, {"cpu": "test"}, runs)
    assert "| 50 | 0.00 | 0.00 | 6.50 |" in page
