"""Tests of the load generator: frame bookkeeping, permessage-deflate, the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
from aiohttp import WSMsgType, web

from tests.conftest import ROOT
from voicebridge import loadtest
from voicebridge.emulator import EmulatorOptions, start_emulator
from voicebridge.loadtest import HEADER, LoadTestConfig, TargetError
from voicebridge.loadtest.deflate import TAIL, Codec, DeflateError, parse_answer

DROP_SEQ = 5
SWAP_SEQS = (10, 11)
DUP_SEQ = 15
FRAME_BYTES = 960  # 20 ms of PCM16 at 24 kHz
READY = '{"type": "session_started", "session_id": "t"}'

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start ``handler`` as /ws/voice of an aiohttp app on a free loopback port; its URL."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_get("/ws/voice", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return f"ws://127.0.0.1:{runner.addresses[0][1]}/ws/voice"

    yield start
    for runner in runners:
        await runner.cleanup()


async def _faulty_echo(request: web.Request) -> web.StreamResponse:
    """A /ws/voice-shaped echo that drops one frame, swaps two and duplicates one."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_str(READY)
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


def _checking_echo(compress: bool, extensions: str | None = None) -> Handler:
    """A /ws/voice-shaped echo (deflate per ``compress``) that returns only intact frames."""
    body = loadtest.make_body(FRAME_BYTES)

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(compress=compress)
        if extensions is not None:
            ws.headers["Sec-WebSocket-Extensions"] = extensions
        await ws.prepare(request)
        await ws.send_str(READY)
        async for msg in ws:
            if msg.type is WSMsgType.BINARY and msg.data[HEADER.size :] == body:
                await ws.send_bytes(msg.data)
        return ws

    return handler


@pytest.fixture
async def faulty_server(serve: Serve) -> str:
    return await serve(_faulty_echo)


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


@pytest.mark.parametrize("compress", [True, False])
async def test_offered_deflate_is_spoken_when_the_server_accepts_it(
    serve: Serve, compress: bool
) -> None:
    """Every frame round-trips intact; it is compressed both ways only if the server accepted."""
    url = await serve(_checking_echo(compress))
    config = LoadTestConfig(
        url=url, sessions=2, seconds=1.0, drain=1.0, offer_deflate=True, progress=False
    )
    report = await loadtest.run(config)
    assert report.sessions_held == 2
    assert report.frames_sent > 0
    assert report.frames_received == report.frames_sent
    assert report.frames_foreign == 0
    assert report.sessions_deflate == (2 if compress else 0)
    assert f"accepted in {report.sessions_deflate} of 2 sessions" in loadtest.format_report(report)
    sent_per_frame = report.wire_bytes_sent / report.frames_sent
    received_per_frame = report.wire_bytes_received / report.frames_received
    if compress:
        assert sent_per_frame < FRAME_BYTES / 4
        assert received_per_frame < FRAME_BYTES / 4
    else:
        assert sent_per_frame > FRAME_BYTES
        assert received_per_frame > FRAME_BYTES


async def test_a_deflate_answer_zlib_cannot_honour_fails_the_session(serve: Serve) -> None:
    """A server demanding an 8-bit window (zlib cannot write one) fails the session at once."""
    url = await serve(_checking_echo(False, "permessage-deflate; client_max_window_bits=8"))
    config = LoadTestConfig(url=url, sessions=1, seconds=0.5, offer_deflate=True, progress=False)
    report = await loadtest.run(config)
    assert report.sessions_held == 0
    assert report.failures == {"bad extension answer": 1}


@pytest.mark.parametrize(
    "answer",
    [
        "permessage-deflate; client_max_window_bits=8",
        "permessage-deflate; server_max_window_bits=16",
        "permessage-deflate; client_no_context_takeover=1",
        "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
        "permessage-deflate; x-unknown",
        "permessage-deflate, permessage-deflate",
        "x-webkit-deflate-frame",
    ],
)
def test_answers_rfc_7692_rules_out_are_refused(answer: str) -> None:
    """Unknown, repeated or out-of-range parameters and unoffered extensions are refused."""
    with pytest.raises(DeflateError):
        parse_answer(answer)


@pytest.mark.parametrize("takeover", [True, False])
def test_client_no_context_takeover_compresses_each_message_alone(takeover: bool) -> None:
    """Without the parameter a repeated message refers back to the first; with it, it cannot."""
    answer = "permessage-deflate" + ("" if takeover else "; client_no_context_takeover")
    params = parse_answer(answer)
    assert params is not None
    codec = Codec(params)
    message = loadtest.make_body(FRAME_BYTES)
    first, second = codec.compress(message), codec.compress(message)
    inflate = zlib.decompressobj(wbits=-15)  # the server's side, which keeps its window
    assert inflate.decompress(first + TAIL) == message
    assert inflate.decompress(second + TAIL) == message
    if takeover:
        assert len(second) < len(first) / 4
    else:
        assert second == first


@pytest.mark.parametrize("takeover", [True, False])
def test_server_messages_are_inflated_with_or_without_its_context(takeover: bool) -> None:
    """What the server deflates comes back byte for byte, also when each message stands alone."""
    answer = "permessage-deflate" + ("" if takeover else "; server_no_context_takeover")
    params = parse_answer(answer)
    assert params is not None
    codec = Codec(params)
    server = zlib.compressobj(wbits=-15)
    for n in range(3):
        message = loadtest.make_body(FRAME_BYTES) + bytes([n])
        if takeover:
            payload = (server.compress(message) + server.flush(zlib.Z_SYNC_FLUSH)).removesuffix(
                TAIL
            )
        else:
            # A fresh stream per message, ended with BFINAL (RFC 7692 section 7.2.3.3).
            alone = zlib.compressobj(wbits=-15)
            payload = alone.compress(message) + alone.flush(zlib.Z_FINISH)
        assert codec.decompress(payload) == message


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


async def test_module_entry_point_prints_one_json_report(serve: Serve) -> None:
    """``python -m voicebridge.loadtest --json``, as the bench runs it, prints the report."""
    url = await serve(_checking_echo(True))
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "voicebridge.loadtest", "--url", url, "--seconds", "0.5"],
        *["--offer-deflate", "--json", "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    report = orjson.loads(out)
    assert report["sessions_held"] == 1
    assert report["sessions_deflate"] == 1
    assert report["frames_lost"] == 0
    assert b"permessage-deflate  offered by 1, accepted in 1 of 1 sessions" in err


def test_frame_is_exactly_frame_ms_of_audio() -> None:
    """A 20 ms chunk is 960 bytes of PCM16 at 24 kHz, header included."""
    config = LoadTestConfig(url="ws://127.0.0.1:1/", sessions=1, seconds=1.0)
    assert config.frame_bytes == FRAME_BYTES
    assert len(loadtest.make_body(config.frame_bytes)) + HEADER.size == FRAME_BYTES


async def test_direct_mode_against_the_mirror_emulator_loses_nothing() -> None:
    """Straight to the emulator in mirror mode every appended frame comes back once, in order."""
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


async def test_a_share_of_the_sessions_offers_deflate(serve: Serve) -> None:
    """``offer_deflate=0.5``: every other session offers it, and only those speak it."""
    url = await serve(_checking_echo(True))
    config = LoadTestConfig(
        url=url, sessions=4, seconds=0.5, drain=1.0, offer_deflate=0.5, progress=False
    )
    report = await loadtest.run(config)
    assert report.sessions_held == 4
    assert report.sessions_offering_deflate == 2
    assert report.sessions_deflate == 2
    assert report.frames_received == report.frames_sent


async def test_url_and_direct_together_report_both_and_what_the_bridge_adds(
    serve: Serve,
) -> None:
    """Both targets: a direct run, then a bridge run, and the bridge's figures minus direct's."""
    url = await serve(_checking_echo(False))
    emulator = await start_emulator(
        EmulatorOptions(api_key="bench-key", mirror=True, realtime=False), "127.0.0.1", 0
    )
    try:
        proc = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "voicebridge.loadtest", "--url", url, "--seconds", "0.5"],
            *["--direct", emulator.url, "--api-key", "bench-key", "--json", "--quiet"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await emulator.close()
    assert proc.returncode == 0, err.decode()
    result = orjson.loads(out)
    assert result["direct"]["mode"] == "direct"
    assert result["bridge"]["mode"] == "bridge"
    rtt = "rtt_p99_ms"
    assert result["added"][rtt] == pytest.approx(result["bridge"][rtt] - result["direct"][rtt])
    assert b"== added by the bridge (bridge minus direct) ==" in err
