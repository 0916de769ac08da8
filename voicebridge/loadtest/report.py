"""What a run measured: the ``Report`` value, its percentiles, and its text and JSON forms."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import orjson

from voicebridge.loadtest.accounting import SessionStats, Tally
from voicebridge.loadtest.calls import CallFigures
from voicebridge.loadtest.monitor import ProcessMonitor
from voicebridge.loadtest.options import CONVERSATION, MIRROR, LoadTestConfig

SATURATED_CPU_PCT = 85.0
_NS = 1_000_000_000
_MS = 1_000_000


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
    deflate_offered: bool
    sessions_deflate: int
    frames_sent: int
    frames_received: int
    frames_lost: int
    frames_reordered: int
    frames_duplicated: int
    frames_foreign: int
    wire_bytes_sent: int
    wire_bytes_received: int
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
    #: The part of the server's CPU spent in the kernel (socket system calls, mostly).
    server_cpu_kernel_share: float | None = None
    scenario: str = MIRROR
    sessions_offering_deflate: int = 0
    # Connecting: from a session's TCP connect to its session start, and from the run's
    # start until the last session was ready (what a connect storm is judged by).
    connect_p50_ms: float | None = None
    connect_p99_ms: float | None = None
    connect_max_ms: float | None = None
    all_ready_ms: float | None = None
    # The conversation scenario (see voicebridge.loadtest.calls); None for mirror runs.
    callers_barging: int | None = None
    turns: int | None = None
    turns_answered: int | None = None
    turns_unanswered: int | None = None
    answers_complete: int | None = None
    answers_interrupted: int | None = None
    answers_damaged: int | None = None
    answers_unexpected: int | None = None
    answers_unfinished: int | None = None
    barge_ins: int | None = None
    barge_ins_cleared: int | None = None
    response_latency_p50_ms: float | None = None
    response_latency_p95_ms: float | None = None
    response_latency_p99_ms: float | None = None
    response_latency_max_ms: float | None = None
    barge_in_clear_p50_ms: float | None = None
    barge_in_clear_p95_ms: float | None = None
    barge_in_clear_p99_ms: float | None = None
    barge_in_clear_max_ms: float | None = None
    barge_in_stop_p50_ms: float | None = None
    barge_in_stop_p95_ms: float | None = None
    barge_in_stop_p99_ms: float | None = None
    barge_in_stop_max_ms: float | None = None
    # Phone channels (voicebridge.loadtest.phone_run); None on the browser path. Seconds of
    # audio: sent by the calls, relayed by the server (its /metrics counters), received,
    # played and discarded (by clears) at the calls.
    channel: str = "browser"
    caller_audio_sent_s: float | None = None
    caller_audio_relayed_s: float | None = None
    agent_audio_relayed_s: float | None = None
    agent_audio_received_s: float | None = None
    agent_audio_played_s: float | None = None
    agent_audio_discarded_s: float | None = None
    marks_echoed: int | None = None
    clears: int | None = None
    answers_stalled: int | None = None  # paused over 500 ms before the whole echo came

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for JSON output."""
        return attrs.asdict(self)

    def to_json(self) -> str:
        """One line of JSON."""
        return orjson.dumps(self.to_dict()).decode()


def percentile(sorted_values: Sequence[int], pct: float) -> int | None:
    """Nearest-rank percentile of an ascending sequence; None when empty."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _ms(ns: int | None) -> float | None:
    return None if ns is None else round(ns / _MS, 3)


def _count(reasons: Sequence[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for reason in reasons:
        counts[reason] = counts.get(reason, 0) + 1
    return counts


def _server(
    mon: ProcessMonitor, window_s: float, session_seconds: float, connected: int
) -> dict[str, Any]:
    cpu = mon.cpu_used
    per = cpu / session_seconds if session_seconds else None
    return {
        "server_pid": mon.pid,
        "server_cpu_s_per_session_s": None if per is None else round(per, 6),
        "server_cpu_pct_per_session": None if per is None else round(per * 100, 4),
        "server_cpu_pct": round(100.0 * cpu / window_s, 2),
        "server_cpu_kernel_share": (
            None if mon.kernel_share is None else round(mon.kernel_share, 3)
        ),
        "server_rss_baseline_bytes": mon.rss_baseline,
        "server_rss_peak_bytes": mon.rss_peak,
        "server_rss_per_session_bytes": (
            round((mon.rss_peak - mon.rss_baseline) / connected, 1) if connected else None
        ),
    }


def summarize(
    config: LoadTestConfig,
    url: str,
    sessions: Sequence[SessionStats],
    tally: Tally,
    *,
    start_ns: int,
    end_ns: int,
    loadgen_cpu_pct: float,
    server: ProcessMonitor | None,
    calls: CallFigures | None = None,
) -> Report:
    """The report of a finished run; ``start_ns``..``end_ns`` is the streaming window.

    ``calls``: the conversation scenario's figures; its frames received are the agent's
    audio frames, and its frames lost those missing from damaged answers.
    """
    rtts, lags = sorted(tally.rtts), sorted(tally.lags)
    connected = [s for s in sessions if s.connected]
    dropped = [s for s in connected if s.peer_closed]
    session_seconds = sum(
        max(min(s.stop_ns or end_ns, end_ns) - s.ready_ns, 0) / _NS for s in connected
    )
    sent = sum(s.sent for s in sessions)
    received = sum(s.received for s in sessions)
    lost = sent - received if calls is None else calls.frames_lost
    connects = sorted(s.ready_ns - s.connect_ns for s in connected)
    extra: dict[str, Any] = {} if calls is None else attrs.asdict(calls)
    extra.pop("frames_lost", None)
    lag_p99 = percentile(lags, 99)
    saturated = loadgen_cpu_pct >= SATURATED_CPU_PCT or (
        lag_p99 is not None and lag_p99 > config.frame_ms * _MS
    )
    window_s = max((end_ns - start_ns) / _NS, 1e-9)
    return Report(
        mode="direct" if config.direct else "bridge",
        url=url,
        frame_ms=config.frame_ms,
        seconds=config.seconds,
        ramp=config.ramp,
        sessions_requested=config.sessions,
        sessions_held=len(connected) - len(dropped),
        sessions_failed=sum(1 for s in sessions if s.failure),
        sessions_dropped=len(dropped),
        failures=_count([s.failure for s in sessions if s.failure]),
        drops=_count([s.close_reason or "closed" for s in dropped]),
        deflate_offered=config.offer_deflate > 0,
        sessions_deflate=sum(1 for s in sessions if s.deflate),
        frames_sent=sent,
        frames_received=received,
        frames_lost=lost,
        frames_reordered=sum(s.reordered for s in sessions),
        frames_duplicated=sum(s.duplicated for s in sessions),
        frames_foreign=tally.foreign,
        wire_bytes_sent=sum(s.wire_sent for s in sessions),
        wire_bytes_received=sum(s.wire_received for s in sessions),
        server_errors=tally.server_errors,
        error_samples=list(tally.error_samples),
        rtt_p50_ms=_ms(percentile(rtts, 50)),
        rtt_p95_ms=_ms(percentile(rtts, 95)),
        rtt_p99_ms=_ms(percentile(rtts, 99)),
        rtt_max_ms=_ms(rtts[-1] if rtts else None),
        rtt_mean_ms=round(sum(rtts) / len(rtts) / _MS, 3) if rtts else None,
        send_lag_p50_ms=_ms(percentile(lags, 50)),
        send_lag_p99_ms=_ms(lag_p99),
        send_lag_max_ms=_ms(lags[-1] if lags else None),
        loadgen_cpu_pct=round(loadgen_cpu_pct, 1),
        loadgen_saturated=saturated,
        session_seconds=round(session_seconds, 3),
        **({} if server is None else _server(server, window_s, session_seconds, len(connected))),
        scenario=config.scenario,
        sessions_offering_deflate=sum(1 for s in sessions if s.offered_deflate),
        connect_p50_ms=_ms(percentile(connects, 50)),
        connect_p99_ms=_ms(percentile(connects, 99)),
        connect_max_ms=_ms(connects[-1] if connects else None),
        all_ready_ms=(
            _ms(max(s.ready_ns for s in connected) - start_ns)
            if connected and len(connected) == len(sessions)
            else None
        ),
        **extra,
    )


def format_report(report: Report) -> str:
    """The human-readable table printed at the end of a run."""

    def num(value: float | None, unit: str = "") -> str:
        return "-" if value is None else f"{value:.2f}{unit}"

    rows: list[tuple[str, str]] = [
        ("mode", f"{report.mode} ({report.url}), scenario {report.scenario}"),
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
    if report.connect_p50_ms is not None:
        ready = report.all_ready_ms
        rows.append(
            (
                "connect to ready",
                f"p50 {num(report.connect_p50_ms)}  p99 {num(report.connect_p99_ms)}"
                f"  max {num(report.connect_max_ms)} ms"
                + ("" if ready is None else f"; all ready {ready / 1000:.2f} s after the start"),
            )
        )
    if report.deflate_offered:
        rows += [
            (
                "permessage-deflate",
                f"offered by {report.sessions_offering_deflate}, accepted in"
                f" {report.sessions_deflate} of {report.sessions_requested} sessions",
            ),
            (
                "on the wire",
                f"sent {report.wire_bytes_sent / 1000:.1f} kB"
                f" ({report.wire_bytes_sent / max(report.frames_sent, 1):.0f} B a frame),"
                f" received {report.wire_bytes_received / 1000:.1f} kB"
                f" ({report.wire_bytes_received / max(report.frames_received, 1):.0f} B a frame)",
            ),
        ]
    if report.scenario == MIRROR:
        rows += [
            (
                "frames",
                f"sent {report.frames_sent}, received {report.frames_received},"
                f" lost {report.frames_lost}, reordered {report.frames_reordered},"
                f" duplicated {report.frames_duplicated}",
            ),
            (
                "round trip",
                f"p50 {num(report.rtt_p50_ms)}  p95 {num(report.rtt_p95_ms)}"
                f"  p99 {num(report.rtt_p99_ms)}  max {num(report.rtt_max_ms)} ms",
            ),
        ]
    else:
        rows += _conversation_rows(report, num)
    if report.channel != "browser":
        rows += _phone_rows(report, num)
    rows += [
        (
            "unexpected",
            f"foreign frames {report.frames_foreign}, error messages {report.server_errors}",
        ),
        *(("error message", text) for text in report.error_samples),
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
                f" ({report.server_cpu_pct or 0:.1f}% total"
                + (
                    ""
                    if report.server_cpu_kernel_share is None
                    else f", {100 * report.server_cpu_kernel_share:.0f}% of it in the kernel"
                )
                + ")",
            ),
            (
                "server rss",
                f"peak {rss_peak / 2**20:.1f} MiB (baseline {rss_base / 2**20:.1f} MiB),"
                f" {'-' if per is None else f'{per / 1024:.1f} KiB'} per session",
            ),
        ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _conversation_rows(report: Report, num: Callable[[float | None], str]) -> list[tuple[str, str]]:
    return [
        (
            "callers",
            f"{report.sessions_requested}, of whom {report.callers_barging} barge in"
            " on every other answer, the first included",
        ),
        (
            "turns",
            f"{report.turns} spoken, {report.turns_answered} answered,"
            f" {report.turns_unanswered} unanswered",
        ),
        (
            "answers",
            f"{report.answers_complete} complete, {report.answers_interrupted} interrupted,"
            f" {report.answers_damaged} damaged, {report.answers_unexpected} unexpected,"
            f" {report.answers_unfinished} cut off by the end",
        ),
        (
            "frames",
            f"caller frames sent {report.frames_sent}, agent frames received"
            f" {report.frames_received}, lost {report.frames_lost} (20 ms of speech each)",
        ),
        (
            "response latency",
            f"p50 {num(report.response_latency_p50_ms)}"
            f"  p95 {num(report.response_latency_p95_ms)}"
            f"  p99 {num(report.response_latency_p99_ms)}"
            f"  max {num(report.response_latency_max_ms)} ms (end of speech to first audio)",
        ),
        (
            "barge-ins",
            f"{report.barge_ins}, told to stop playback in {report.barge_ins_cleared}",
        ),
        (
            "barge-in to clear",
            f"p50 {num(report.barge_in_clear_p50_ms)}  p95 {num(report.barge_in_clear_p95_ms)}"
            f"  p99 {num(report.barge_in_clear_p99_ms)}"
            f"  max {num(report.barge_in_clear_max_ms)} ms",
        ),
        (
            "barge-in to last frame",
            f"p50 {num(report.barge_in_stop_p50_ms)}  p95 {num(report.barge_in_stop_p95_ms)}"
            f"  p99 {num(report.barge_in_stop_p99_ms)}"
            f"  max {num(report.barge_in_stop_max_ms)} ms",
        ),
    ]


def _phone_rows(report: Report, num: Callable[[float | None], str]) -> list[tuple[str, str]]:
    return [
        (
            "caller audio",
            f"sent {num(report.caller_audio_sent_s)} s, relayed upstream by the server"
            f" {num(report.caller_audio_relayed_s)} s",
        ),
        (
            "agent audio",
            f"sent by the server {num(report.agent_audio_relayed_s)} s, received"
            f" {num(report.agent_audio_received_s)} s, played {num(report.agent_audio_played_s)}"
            f" s, discarded by clears {num(report.agent_audio_discarded_s)} s",
        ),
        (
            "playback",
            f"{report.marks_echoed} marks echoed, {report.clears} clears",
        ),
        (
            "stalls",
            f"{report.answers_stalled} answers paused over 500 ms before their whole echo",
        ),
    ]


#: What a comparison subtracts, per scenario: the direct run's figure from the bridge's.
COMPARED: dict[str, tuple[str, ...]] = {
    MIRROR: ("rtt_p50_ms", "rtt_p95_ms", "rtt_p99_ms"),
    CONVERSATION: (
        "response_latency_p50_ms",
        "response_latency_p95_ms",
        "response_latency_p99_ms",
        "barge_in_clear_p50_ms",
        "barge_in_clear_p99_ms",
        "barge_in_stop_p50_ms",
        "barge_in_stop_p99_ms",
    ),
}


def added_by_bridge(direct: Report, bridge: Report) -> dict[str, float | None]:
    """Each compared figure of the bridge run minus the direct run's (None if either lacks it)."""
    d, b = direct.to_dict(), bridge.to_dict()
    out: dict[str, float | None] = {}
    for key in COMPARED.get(bridge.scenario, ()):
        out[key] = None if b[key] is None or d[key] is None else round(b[key] - d[key], 3)
    return out


def format_comparison(direct: Report, bridge: Report) -> str:
    """Both reports, then what the bridge adds."""
    added = added_by_bridge(direct, bridge)
    width = max(len(k) for k in added) if added else 0
    lines = [
        "== direct ==",
        format_report(direct),
        "== bridge ==",
        format_report(bridge),
        "== added by the bridge (bridge minus direct) ==",
        *(f"{k:<{width}}  {'-' if v is None else f'{v:+.2f}'}" for k, v in added.items()),
    ]
    return "\n".join(lines)
