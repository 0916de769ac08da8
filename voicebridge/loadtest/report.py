"""What a run measured: the ``Report`` value, its percentiles, and its text and JSON forms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import attrs
import orjson

from voicebridge.loadtest.accounting import SessionStats, Tally
from voicebridge.loadtest.monitor import ProcessMonitor
from voicebridge.loadtest.options import LoadTestConfig

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
) -> Report:
    """The report of a finished run; ``start_ns``..``end_ns`` is the streaming window."""
    rtts, lags = sorted(tally.rtts), sorted(tally.lags)
    connected = [s for s in sessions if s.connected]
    dropped = [s for s in connected if s.peer_closed]
    session_seconds = sum(max(min(s.stop_ns, end_ns) - s.ready_ns, 0) / _NS for s in connected)
    sent = sum(s.sent for s in sessions)
    received = sum(s.received for s in sessions)
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
        deflate_offered=config.offer_deflate,
        sessions_deflate=sum(1 for s in sessions if s.deflate),
        frames_sent=sent,
        frames_received=received,
        frames_lost=sent - received,
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
    )


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
    if report.deflate_offered:
        rows += [
            (
                "permessage-deflate",
                f"offered, accepted in {report.sessions_deflate}"
                f" of {report.sessions_requested} sessions",
            ),
            (
                "on the wire",
                f"sent {report.wire_bytes_sent / 1000:.1f} kB"
                f" ({report.wire_bytes_sent / max(report.frames_sent, 1):.0f} B a frame),"
                f" received {report.wire_bytes_received / 1000:.1f} kB"
                f" ({report.wire_bytes_received / max(report.frames_received, 1):.0f} B a frame)",
            ),
        ]
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
