"""Pictures of a benchmark: latency and CPU against the number of sessions (PNG).

``latency.png``: for each scenario, the p99 the bridge adds to the direct path (the knee's
criterion, with the threshold drawn in) and, below, both p99s themselves. ``cpu.png``: the
CPU each measured process used, in % of one core: the server (bridge runs) on its pinned
core, and the emulator (direct runs). matplotlib (a ``dev`` extra) draws them with its Agg
backend, so no display is needed; without it :class:`PlotsUnavailable` says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

LATENCY_PNG = "latency.png"
CPU_PNG = "cpu.png"


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed."""


@attrs.frozen
class Point:
    """One run: its session count and the figures the pictures show."""

    sessions: int
    p99_ms: float | None
    added_p99_ms: float | None  # None for a direct run
    cpu_pct: float | None  # the measured process, % of one core
    bridge: bool


Series = Mapping[tuple[str, str], Sequence[Point]]  # (scenario, path) -> points


def _xy(points: Sequence[Point], field: str) -> tuple[list[int], list[float]]:
    pairs = [(p.sessions, getattr(p, field)) for p in points]
    kept = [(x, float(y)) for x, y in pairs if y is not None]
    return [x for x, _ in kept], [y for _, y in kept]


def draw(series: Series, out_dir: Path, *, threshold_ms: float) -> list[Path]:
    """Write both pictures into ``out_dir``; their paths."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotsUnavailable("matplotlib is not installed (pip install -e '.[dev]')") from None
    scenarios = list(dict.fromkeys(scenario for scenario, _ in series))
    if not scenarios:
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = "round trip p99 (mirror)", "response latency p99 (conversation)"
    titles = {"mirror": figure[0], "conversation": figure[1]}

    fig, axes = plt.subplots(2, len(scenarios), figsize=(6.0 * len(scenarios), 7.5), squeeze=False)
    for col, scenario in enumerate(scenarios):
        top, bottom = axes[0][col], axes[1][col]
        # The step past the knee can be hundreds of times the threshold: the top panel
        # stops at a few thresholds and writes the value of anything above.
        ceiling = 4 * threshold_ms
        for (name, path), points in series.items():
            if name != scenario:
                continue
            if points and points[0].bridge:
                xs, ys = _xy(points, "added_p99_ms")
                line = top.plot(xs, [min(y, ceiling) for y in ys], marker="o", label=path)
                for x, y in zip(xs, ys, strict=True):
                    if y > ceiling:
                        top.annotate(
                            f"{y:.0f} ms",
                            (x, ceiling),
                            textcoords="offset points",
                            xytext=(-4, -14),
                            ha="right",
                            color=line[0].get_color(),
                        )
            xs, ys = _xy(points, "p99_ms")
            style = "-" if points and points[0].bridge else "--"
            bottom.plot(xs, ys, style, marker="o", label=path)
        top.axhline(threshold_ms, color="red", linewidth=1, label=f"threshold {threshold_ms:g} ms")
        top.axhline(0.0, color="grey", linewidth=0.5)
        top.set_ylim(top=ceiling * 1.05)
        top.set_title(f"added by the bridge: {titles.get(scenario, scenario)}")
        top.set_ylabel("bridge p99 minus direct p99 (ms)")
        values = [
            y
            for (name, _), pts in series.items()
            if name == scenario
            for y in _xy(pts, "p99_ms")[1]
        ]
        wide = bool(values) and min(values) > 0 and max(values) / min(values) > 10
        if wide:
            bottom.set_yscale("log")
        bottom.set_title(titles.get(scenario, scenario))
        bottom.set_ylabel("p99 (ms, log scale)" if wide else "p99 (ms)")
        for ax in (top, bottom):
            ax.set_xlabel("sessions")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
    fig.tight_layout()
    latency = out_dir / LATENCY_PNG
    fig.savefig(latency, dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (scenario, path), points in series.items():
        xs, ys = _xy(points, "cpu_pct")
        bridge = bool(points) and points[0].bridge
        who = f"server, {path}" if bridge else "emulator (direct runs)"
        ax.plot(xs, ys, "-" if bridge else "--", marker="o", label=f"{scenario}: {who}")
    ax.axhline(100.0, color="red", linewidth=1, label="one core")
    ax.set_title("CPU of the measured process against sessions (server pinned to one core)")
    ax.set_xlabel("sessions")
    ax.set_ylabel("% of one core")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    cpu = out_dir / CPU_PNG
    fig.savefig(cpu, dpi=100)
    plt.close(fig)
    return [latency, cpu]
