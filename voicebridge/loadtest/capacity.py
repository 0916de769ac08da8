"""Capacity results: the steps of a benchmark, the knee, the targets, the page and pictures.

Pure: every figure here is computed from load-test reports (``voicebridge.loadtest``'s
JSON) already taken; :mod:`voicebridge.bench` runs the processes that take them. A *step*
is one session count of a scenario, measured straight to the emulator (*direct*) and
through the bridge; it is *within* while the p99 the bridge adds stays under the threshold
and nothing is lost. The last step within is the *knee*: sessions per core.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

import attrs

from voicebridge.loadtest import plots

MIRROR = "mirror"
CONVERSATION = "conversation"
SCENARIOS = (MIRROR, CONVERSATION)
DIRECT = "direct"
THIS_TREE = "bridge (this tree)"
# The figure whose added p99 decides a step, per scenario.
DECIDING = {MIRROR: "rtt", CONVERSATION: "response_latency"}

# Targets on the reference machine (2 cores), issue 16.
TARGET_MIRROR_AT = 50
TARGET_MIRROR_CPU_PCT = 0.3
TARGET_MIRROR_ADDED_P99_MS = 3.0
TARGET_CONVERSATION_AT = 50
TARGET_CONVERSATION_CPU_PCT = 0.2
TARGET_CONVERSATION_ADDED_P99_MS = 5.0
TARGET_BARGE_IN_ADDED_P99_MS = 20.0
TARGET_KNEE = {MIRROR: 300, CONVERSATION: 400}
TARGET_RSS_PER_SESSION_BYTES = 100_000
TARGET_SHUTDOWN_S = 2.0


@attrs.frozen
class BenchConfig:
    """What to run: the steps of each scenario, durations, the threshold, where to write."""

    mirror_steps: tuple[int, ...]
    conversation_steps: tuple[int, ...]
    seconds: float  # streaming time of a mirror run
    conversation_seconds: float
    frame_ms: int
    threshold_ms: float
    out: Path
    deflate_share: float = 0.5
    storm: int = 500
    quiet_wait: float = 5.0
    baseline: Path | None = None
    pin: bool = True
    quick: bool = False
    profile: bool = True
    #: Phone calls (conversation, through a fresh server each): Twilio and ACS at these
    #: call counts, for the cost per call next to the browser path's at the same count.
    twilio_steps: tuple[int, ...] = ()
    acs_steps: tuple[int, ...] = ()
    phone_seconds: float = 15.0

    def steps(self, scenario: str) -> tuple[int, ...]:
        return self.mirror_steps if scenario == MIRROR else self.conversation_steps

    def seconds_for(self, scenario: str) -> float:
        return self.seconds if scenario == MIRROR else self.conversation_seconds


@attrs.frozen
class Run:
    """One measured load-test run and the CPU that processes outside the bench used meanwhile."""

    path: str  # DIRECT, THIS_TREE or a baseline's label
    scenario: str
    sessions: int
    report: dict[str, Any]
    other_cores: float


@attrs.frozen
class Step:
    """One session count of a scenario: the direct run, each bridge's run, the verdict."""

    scenario: str
    sessions: int
    direct: Run
    bridges: tuple[Run, ...]
    within: bool  # this tree's bridge stayed within the threshold and lost nothing
    why: str  # what decided it, in words


@attrs.frozen
class Shutdown:
    """SIGTERM with sessions live: how long until the server exited, how clients were closed."""

    sessions_live: int
    exit_s: float | None  # None: it had to be killed
    exit_code: int | None
    run: Run


def p99(run: Run) -> float | None:
    """The p99 that decides a step: the round trip (mirror) or the response latency."""
    value = run.report.get(f"{DECIDING[run.scenario]}_p99_ms")
    return None if value is None else float(value)


def added(bridge: Run, direct: Run, key: str) -> float | None:
    """``key`` of the bridge run minus the direct run's."""
    b, d = bridge.report.get(key), direct.report.get(key)
    return None if b is None or d is None else float(b) - float(d)


def losses(run: Run) -> list[str]:
    """What a run lost or failed, in words (empty when nothing)."""
    r = run.report
    found = [
        (r.get("frames_lost") or 0, "frames lost"),
        (r.get("sessions_failed") or 0, "sessions failed"),
        (r.get("sessions_dropped") or 0, "sessions dropped"),
        (r.get("turns_unanswered") or 0, "turns unanswered"),
        (r.get("answers_damaged") or 0, "answers damaged"),
    ]
    return [f"{n} {what}" for n, what in found if n]


def judge(
    scenario: str, direct: Run, bridge: Run, threshold_ms: float, first_direct: Run | None
) -> tuple[bool, str]:
    """Whether a step is within the threshold, and why (or why not)."""
    lost = losses(bridge) + [f"direct: {x}" for x in losses(direct)]
    if lost:
        return False, ", ".join(lost)
    direct_p99, bridge_p99 = p99(direct), p99(bridge)
    if direct_p99 is None or bridge_p99 is None:
        return False, "no samples"
    extra = bridge_p99 - direct_p99
    figure = "round trip" if scenario == MIRROR else "response latency"
    base = None if first_direct is None else p99(first_direct)
    if base is not None and direct_p99 - base > threshold_ms:
        return False, (
            f"direct {figure} p99 itself grew by {direct_p99 - base:.1f} ms: the emulator and"
            " load generator's core is the limit (harness limit)"
        )
    if extra > threshold_ms:
        return False, f"added {figure} p99 {extra:.1f} ms > {threshold_ms:g} ms"
    return True, f"added {figure} p99 {extra:.1f} ms"


@attrs.frozen
class Knee:
    """Sessions per core for one scenario: the last step within the threshold."""

    scenario: str
    within: Step | None  # the largest step within the threshold
    over: Step | None  # the first step beyond it (None: not reached)

    @property
    def sessions(self) -> int:
        return 0 if self.within is None else self.within.sessions

    @property
    def harness_limited(self) -> bool:
        return self.over is not None and "harness limit" in self.over.why


def knee(steps: Sequence[Step]) -> Knee | None:
    """The knee of one scenario's ladder (steps in order, the ladder stops after the first miss)."""
    if not steps:
        return None
    within = [s for s in steps if s.within]
    over = next((s for s in steps if not s.within), None)
    return Knee(steps[0].scenario, within[-1] if within else None, over)


# -- the runs ----------------------------------------------------------------------------------


def step_line(step: Step) -> str:
    """One line per step for the console."""
    d, b = step.direct, step.bridges[0]
    r = b.report
    verdict = "within" if step.within else "OVER"
    return (
        f"{verdict} ({step.why}); p99 direct {_f(p99(d))} bridge {_f(p99(b))} ms,"
        f" server {_f(r.get('server_cpu_pct'), 0)}% of its core"
        f" ({_f(r.get('server_cpu_pct_per_session'), 3)}% a session),"
        f" {_kb(r.get('server_rss_per_session_bytes'))} kB a session"
    )


def phone_line(run: Run) -> str:
    """One phone run in one line for the console."""
    r = run.report
    return (
        f"server {_f(r.get('server_cpu_pct_per_session'), 3)}% a call,"
        f" {_kb(r.get('server_rss_per_session_bytes'))} kB a call; latency p50"
        f" {_f(r.get('response_latency_p50_ms'), 0)} p99 {_f(r.get('response_latency_p99_ms'), 0)}"
        f" ms; {r.get('answers_damaged')} of {r.get('answers_complete')} answers damaged,"
        f" {r.get('frames_lost')} frames lost; {r.get('sessions_failed')} failed,"
        f" {r.get('sessions_dropped')} dropped; emulator {_f(r.get('emulator_cpu_pct'), 0)}%"
        f" of its core{harness_note(r)}"
    )


def storm_line(run: Run | None, down: Shutdown | None) -> str:
    """The connect storm and shutdown in one line for the console."""
    if run is None or down is None:
        return "not run"
    r = run.report
    return (
        f"all ready in {_s(r.get('all_ready_ms'))} s, {r['sessions_failed']} failed;"
        f" SIGTERM with {down.sessions_live} live: exit in {_f(down.exit_s)} s,"
        f" {closed_1001(run)} of {run.sessions} closed with 1001"
    )


def closed_1001(run: Run) -> int:
    drops: dict[str, int] = run.report.get("drops") or {}
    return int(drops.get("closed 1001", 0))


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kb(value: Any) -> str:
    return "-" if value is None else f"{value / 1000:.1f}"


def _s(ms: Any) -> str:
    return "-" if ms is None else f"{ms / 1000:.2f}"


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def _deflate(run: Run) -> str:
    r = run.report
    offering = r.get("sessions_offering_deflate", 0)
    if not offering:
        return "-"
    return f"{offering} offered, {r.get('sessions_deflate', 0)} accepted"


def _step(steps: Sequence[Step], scenario: str, sessions: int) -> Step | None:
    return next((s for s in steps if s.scenario == scenario and s.sessions == sessions), None)


def targets(bench: BenchResults) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of issue 16 (reference: 2 cores)."""
    steps, rows = bench.steps, []
    m = _step(steps, MIRROR, TARGET_MIRROR_AT)
    label = (
        f"mirror, {TARGET_MIRROR_AT} sessions: server CPU <= {TARGET_MIRROR_CPU_PCT:g}% of a core"
        " a session"
    )
    rows.append(_cpu_target(label, m, TARGET_MIRROR_CPU_PCT))
    label = f"mirror, {TARGET_MIRROR_AT} sessions: added p99 <= {TARGET_MIRROR_ADDED_P99_MS:g} ms"
    rows.append(_added_target(label, m, "rtt_p99_ms", TARGET_MIRROR_ADDED_P99_MS))
    c = _step(steps, CONVERSATION, TARGET_CONVERSATION_AT)
    label = (
        f"conversation, {TARGET_CONVERSATION_AT} calls: server CPU"
        f" <= {TARGET_CONVERSATION_CPU_PCT:g}% of a core a call"
    )
    rows.append(_cpu_target(label, c, TARGET_CONVERSATION_CPU_PCT))
    label = (
        f"conversation, {TARGET_CONVERSATION_AT} calls: added response latency p99"
        f" <= {TARGET_CONVERSATION_ADDED_P99_MS:g} ms"
    )
    rows.append(
        _added_target(label, c, "response_latency_p99_ms", TARGET_CONVERSATION_ADDED_P99_MS)
    )
    label = (
        f"conversation, {TARGET_CONVERSATION_AT} calls: added barge-in reaction p99"
        f" <= {TARGET_BARGE_IN_ADDED_P99_MS:g} ms (to clear; to the last frame)"
    )
    if c is None:
        rows.append((label, "not run", "-"))
    else:
        clear = added(c.bridges[0], c.direct, "barge_in_clear_p99_ms")
        stop = added(c.bridges[0], c.direct, "barge_in_stop_p99_ms")
        ok = all(x is not None and x <= TARGET_BARGE_IN_ADDED_P99_MS for x in (clear, stop))
        rows.append((label, f"{_f(clear)} ms; {_f(stop)} ms", _yes(ok)))
    for scenario in SCENARIOS:
        k = knee([s for s in steps if s.scenario == scenario])
        goal = TARGET_KNEE[scenario]
        label = f"one pinned core carries >= {goal} {scenario} sessions within the threshold"
        if k is None:
            rows.append((label, "not run", "-"))
            continue
        rows.append((label, knee_text(k), _yes(k.sessions >= goal)))
    largest = max((s for s in steps if s.within), key=lambda s: s.sessions, default=None) or max(
        steps, key=lambda s: s.sessions, default=None
    )
    label = f"<= {TARGET_RSS_PER_SESSION_BYTES // 1000} kB RSS per session"
    rss = None if largest is None else largest.bridges[0].report.get("server_rss_per_session_bytes")
    if largest is None or rss is None:
        rows.append((label, "not run", "-"))
    else:
        rows.append(
            (
                label,
                f"{rss / 1000:.1f} kB ({largest.scenario}, {largest.sessions} sessions)",
                _yes(rss <= TARGET_RSS_PER_SESSION_BYTES),
            )
        )
    down = bench.shutdown
    label = f"SIGTERM -> exit <= {TARGET_SHUTDOWN_S:g} s with {bench.cfg.storm} sessions"
    if down is None:
        rows.append((label, "not run", "-"))
    else:
        every = closed_1001(down.run) == down.run.sessions
        ok = down.exit_s is not None and down.exit_s <= TARGET_SHUTDOWN_S and every
        rows.append(
            (
                label,
                f"{_f(down.exit_s)} s with {down.sessions_live} live;"
                f" {closed_1001(down.run)} of {down.run.sessions} clients got 1001",
                _yes(ok),
            )
        )
    return rows


def _share_of(profile: Profile | None, prefix: str) -> str:
    share = None
    if profile is not None:
        share = next((g.share for g in profile.groups if g.label.startswith(prefix)), None)
    return "-" if share is None else f"{100 * share:.0f}%"


def why_missed(results: BenchResults) -> list[str]:
    """What the measurements say about each kind of miss, in a few bullets (empty if none)."""
    missed = [t for t, _m, v in targets(results) if v == "**not met**"]
    notes: list[str] = []
    cpu = {s: _step(results.steps, s, 50) for s in SCENARIOS}
    profile = next(iter(results.profiles), None)
    if any("server CPU" in t for t in missed):
        per = " and ".join(
            f"{_f(st.bridges[0].report.get('server_cpu_pct_per_session'), 3)}% of a core a"
            f" {s} session"
            for s, st in cpu.items()
            if st is not None
        )
        notes.append(
            f"- **CPU per session** ({per}, at 50): every 20 ms frame costs the server"
            " a client read, an upstream append (the SDK's `send`: stdlib JSON, then a"
            " WebSocket write) and, in the mirror, an upstream read and a client write. Of its"
            f" own time {_share_of(profile, 'WebSocket frame writes')} goes to writing"
            f" WebSocket frames, {_share_of(profile, 'SDK send')} to the SDK's JSON encoding,"
            f" {_share_of(profile, 'WebSocket reads')} to reads and"
            f" {_share_of(profile, 'the relay')} to the relay's own code; see *Where the"
            " server's CPU goes*."
        )
    for scenario in SCENARIOS:
        k = knee([s for s in results.steps if s.scenario == scenario])
        if k is None or k.over is None or k.sessions >= TARGET_KNEE[scenario]:
            continue
        over = k.over
        d, b = over.direct.report, over.bridges[0].report
        where = (
            f"the emulator used {_f(d.get('server_cpu_pct'), 0)}% and the load generator"
            f" {_f(b.get('loadgen_cpu_pct'), 0)}% of the other core"
        )
        if k.harness_limited:
            notes.append(
                f"- **{scenario} knee**: the ladder stopped at {over.sessions} because the"
                f" direct path itself slowed down: {where} (the harness, not the bridge, was"
                f" the limit; the server's core was at {_f(b.get('server_cpu_pct'), 0)}%)."
                " A machine with more cores gives the harness more than one and measures"
                " further."
            )
        else:
            notes.append(
                f"- **{scenario} knee**: at {over.sessions} sessions the server's core was at"
                f" {_f(b.get('server_cpu_pct'), 0)}% ({_f(b.get('server_cpu_pct_per_session'), 3)}%"
                f" a session) and {over.why}; meanwhile {where}."
            )
    return ["Why the misses:", "", *notes, ""] if notes else []


def _cpu_target(label: str, step: Step | None, goal: float) -> tuple[str, str, str]:
    cpu = None if step is None else step.bridges[0].report.get("server_cpu_pct_per_session")
    if cpu is None:
        return (label, "not run", "-")
    return (label, f"{cpu:.3f}%", _yes(cpu <= goal))


def _added_target(label: str, step: Step | None, key: str, goal: float) -> tuple[str, str, str]:
    extra = None if step is None else added(step.bridges[0], step.direct, key)
    if extra is None:
        return (label, "not run", "-")
    return (label, f"{extra:.2f} ms", _yes(extra <= goal))


def knee_text(k: Knee) -> str:
    """The knee in words: sessions within, and what stopped the ladder."""
    head = "none within the threshold" if k.within is None else f"{k.within.sessions} sessions"
    if k.over is None:
        return f"{head} (the last step; the knee is higher)"
    return f"{head}; at {k.over.sessions}: {k.over.why}"


@attrs.frozen
class BenchResults:
    """A finished benchmark, as the page and the tests see it."""

    cfg: BenchConfig
    steps: Sequence[Step]
    storm: Run | None = None
    shutdown: Shutdown | None = None
    profiles: Sequence[Profile] = ()
    phone: Sequence[Run] = ()  # path: the channel (twilio, acs); scenario: conversation


def _ladder_rows(steps: Sequence[Step], scenario: str) -> list[str]:
    if scenario == MIRROR:
        head = [
            "| sessions | path | deflate | held | failed | frames sent | lost | p50 ms | p95 ms"
            " | p99 ms | max ms | added p99 ms | server CPU % of its core | CPU % a session"
            " | RSS kB a session | load gen CPU % | send lag p99 ms | other load |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    else:
        head = [
            "| calls | path | deflate | held | failed | turns | answered | unanswered"
            " | damaged | lost | latency p50 ms | p95 ms | p99 ms | added p99 ms"
            " | barge-ins | to clear p50 ms | p99 ms | added p99 ms | to last frame p99 ms"
            " | added p99 ms | server CPU % of its core | CPU % a call | RSS kB a call"
            " | load gen CPU % | other load |",
            "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
    lines = list(head)
    for step in steps:
        if step.scenario != scenario:
            continue
        for run in (step.direct, *step.bridges):
            lines.append(_mirror_row(step, run) if scenario == MIRROR else _call_row(step, run))
    return lines


def _common_tail(run: Run) -> str:
    r = run.report
    flag = " (saturated)" if r.get("loadgen_saturated") else ""
    return f" | {_f(r['loadgen_cpu_pct'], 0)}{flag}"


def _mirror_row(step: Step, run: Run) -> str:
    r = run.report
    extra = "" if run is step.direct else _f(added(run, step.direct, "rtt_p99_ms"))
    return (
        f"| {run.sessions} | {run.path} | {_deflate(run)} | {r['sessions_held']}"
        f" | {r['sessions_failed']} | {r['frames_sent']} | {r['frames_lost']}"
        f" | {_f(r['rtt_p50_ms'])} | {_f(r['rtt_p95_ms'])} | {_f(r['rtt_p99_ms'])}"
        f" | {_f(r['rtt_max_ms'])} | {extra} | {_f(r.get('server_cpu_pct'), 1)}"
        f" | {_f(r.get('server_cpu_pct_per_session'), 3)}"
        f" | {_kb(r.get('server_rss_per_session_bytes'))}"
        f"{_common_tail(run)} | {_f(r['send_lag_p99_ms'])} | {run.other_cores:.2f} |"
    )


def _call_row(step: Step, run: Run) -> str:
    r = run.report
    bridge = run is not step.direct

    def plus(key: str) -> str:
        return _f(added(run, step.direct, key)) if bridge else ""

    return (
        f"| {run.sessions} | {run.path} | {_deflate(run)} | {r['sessions_held']}"
        f" | {r['sessions_failed']} | {r.get('turns')} | {r.get('turns_answered')}"
        f" | {r.get('turns_unanswered')} | {r.get('answers_damaged')} | {r['frames_lost']}"
        f" | {_f(r.get('response_latency_p50_ms'))} | {_f(r.get('response_latency_p95_ms'))}"
        f" | {_f(r.get('response_latency_p99_ms'))} | {plus('response_latency_p99_ms')}"
        f" | {r.get('barge_ins')} | {_f(r.get('barge_in_clear_p50_ms'))}"
        f" | {_f(r.get('barge_in_clear_p99_ms'))} | {plus('barge_in_clear_p99_ms')}"
        f" | {_f(r.get('barge_in_stop_p99_ms'))} | {plus('barge_in_stop_p99_ms')}"
        f" | {_f(r.get('server_cpu_pct'), 1)} | {_f(r.get('server_cpu_pct_per_session'), 3)}"
        f" | {_kb(r.get('server_rss_per_session_bytes'))}{_common_tail(run)}"
        f" | {run.other_cores:.2f} |"
    )


def _knee_rows(steps: Sequence[Step]) -> list[str]:
    lines = [
        "| scenario | sessions per core | what stopped the ladder | server CPU at the knee"
        " | CPU % of a core a session | RSS kB a session | projected from CPU |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for scenario in SCENARIOS:
        k = knee([s for s in steps if s.scenario == scenario])
        if k is None:
            continue
        if k.within is None:
            lines.append(f"| {scenario} | 0 | {knee_text(k)} | - | - | - | - |")
            continue
        r = k.within.bridges[0].report
        per = r.get("server_cpu_pct_per_session")
        projected = "-" if not per else f"{int(100 / per)}"
        why = "-" if k.over is None else f"at {k.over.sessions}: {k.over.why}"
        if k.over is None:
            why = "not reached: the last step was within"
        lines.append(
            f"| {scenario} | {k.within.sessions} | {why} | {_f(r.get('server_cpu_pct'), 0)}%"
            f" | {_f(per, 3)} | {_kb(r.get('server_rss_per_session_bytes'))} | {projected} |"
        )
    return lines


def render(results: BenchResults, machine: Mapping[str, str], pictures: Sequence[str]) -> str:
    """The Markdown results page."""
    cfg = results.cfg
    args = bench_args(cfg)
    lines = [
        "# voicebridge benchmark: calls per core",
        "",
        f"`python -m voicebridge.bench{args}` ({'quick' if cfg.quick else 'full'} run). The"
        " server is pinned to one core, the emulator and the load generator to the other; the"
        " number of sessions steps up until the latency the bridge adds (its p99 minus the"
        f" direct run's at the same step) exceeds **{cfg.threshold_ms:g} ms**, or anything is"
        " lost. The last step within is the knee: sessions per core.",
        "",
        "- **direct**: load generator → emulator (Voice Live protocol, JSON + base64): the"
        " baseline without the bridge. The measured process is the emulator.",
        f"- **{THIS_TREE}**: load generator → voicebridge `/ws/voice` → SDK → emulator and back,"
        " through a server started fresh for the run (pinned). Every other client offers"
        " permessage-deflate, as browsers do; the *deflate* column says how many did and in"
        " how many sessions the server accepted it.",
        f"- **mirror**: every client streams 20 ms frames in real time for {cfg.seconds:g} s,"
        " each stamped; the emulator's mirror mode sends each straight back. Figure: the round"
        " trip.",
        "- **conversation**: every caller speaks sentences made by espeak-ng in real time"
        f" for {cfg.conversation_seconds:g} s (20 ms frames, digital silence between), waits"
        " for the answer, pauses about 1 s, speaks again; a quarter of the callers barge in on"
        " every other answer (the first included) 300 to 900 ms into it. The emulator runs as"
        " usual: voice activity"
        " detection (500 ms of silence ends a turn), an answer echoing each turn in real time"
        " in 100 ms deltas. Figures: response latency (end of the caller's speech to the"
        " answer's first audio frame at the client; the 500 ms of end-of-speech detection are"
        " in both paths), barge-in reaction (speech start to `clear_audio`, or straight from"
        " Voice Live to `speech_started`; and to the last frame of the interrupted answer),"
        " and every answer checked byte for byte against what the caller said.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "*Other load* is the CPU (in cores) that processes outside the bench used during a"
        " run; when it is not near 0 the figures are noisy.",
        "",
        "## Sessions per core",
        "",
        *_knee_rows(results.steps),
        "",
        "*Projected from CPU*: 100% of a core divided by the CPU a session cost at the knee,"
        " what the core would carry if the CPU were the only limit.",
        "",
        *(f"![{Path(p).stem}]({Path(p).name})" for p in pictures),
        "",
        "## Targets (issue 16, 2-core machine)",
        "",
        f"Judged on **{THIS_TREE}**; the other rows are there for comparison.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *(f"| {t} | {m} | {v} |" for t, m, v in targets(results)),
        "",
        *why_missed(results),
        "## Mirror",
        "",
        *_ladder_rows(results.steps, MIRROR),
        "",
        "## Conversation",
        "",
        *_ladder_rows(results.steps, CONVERSATION),
        "",
        "## Phone calls",
        "",
        *phone_rows(results),
        "",
        "## Connect storm and shutdown",
        "",
        *_storm_rows(results),
        "",
        "## Where the server's CPU goes",
        "",
        *profile_rows(results.profiles),
        "",
        "## How the figures are taken",
        "",
        "CPU per session is the measured process's CPU time over the run divided by the"
        " session-seconds streamed (100% = one core per session); *server CPU % of its core*"
        " is its CPU time over the run's wall time. RSS per session is the server's peak"
        " resident memory during the run minus its resident memory just before, divided by the"
        " sessions connected. Every time is stamped in the load generator (`perf_counter`), so"
        " both ends of each interval are on one clock. A step is run once; runs on a shared"
        " virtual machine differ by a few milliseconds at p99.",
        "",
    ]
    return "\n".join(lines)


def _storm_rows(results: BenchResults) -> list[str]:
    run, down = results.storm, results.shutdown
    if run is None or down is None:
        return ["Not run (`--storm 0`)."]
    r = run.report
    frame_ms = int(r.get("frame_ms") or 20)
    return [
        f"{run.sessions} sessions connect at once (no ramp) to a fresh pinned server and stream"
        f" real-time audio in {frame_ms} ms frames: live calls, together the frames of"
        f" {run.sessions * 20 // frame_ms} sessions at 20 ms, which one core carries, so that"
        " the storm and the shutdown are measured rather than an overloaded core. Once all"
        " are live the server gets SIGTERM: it answers /health with 503, tells"
        " each client `shutting_down`, lets an answer in progress finish (within"
        " `SHUTDOWN_GRACE_S`; the mirror carries none) and closes every session with 1001.",
        "",
        "| row | sessions | measured | failed |",
        "|---|---:|---|---:|",
        f"| connect storm | {run.sessions} | all ready {_s(r.get('all_ready_ms'))} s after the"
        f" start; connect to ready p50 {_f(r.get('connect_p50_ms'))} ms, p99"
        f" {_f(r.get('connect_p99_ms'))} ms | {r['sessions_failed']} |",
        f"| SIGTERM, sessions live | {down.sessions_live} | exit"
        f" {_f(down.exit_s)} s after the signal (exit code {down.exit_code});"
        f" {closed_1001(run)} clients closed with 1001 | {r['sessions_failed']} |",
    ]


def _browser_at(steps: Sequence[Step], sessions: int) -> Run | None:
    step = _step(steps, CONVERSATION, sessions)
    return None if step is None else step.bridges[0]


#: The emulator and the load generator together above this share of their core: the
#: harness, not the server, is what the phone row's latency and damage measure.
HARNESS_LIMIT_PCT = 80.0


def harness_note(report: Mapping[str, Any]) -> str:
    """ " (harness limit)" when the harness's core was nearly all used, else ""."""
    emulator, loadgen = report.get("emulator_cpu_pct"), report.get("loadgen_cpu_pct")
    if emulator is None or loadgen is None:
        return ""
    return " (harness limit)" if emulator + loadgen >= HARNESS_LIMIT_PCT else ""


def _latency(report: Mapping[str, Any]) -> str:
    p50, p99_ = report.get("response_latency_p50_ms"), report.get("response_latency_p99_ms")
    return f"{_f(p50, 0)} / {_f(p99_, 0)}"


def phone_rows(results: BenchResults) -> list[str]:
    """The phone calls next to the browser path's conversation at the same call count."""
    if not results.phone:
        return ["Not run (`--twilio-steps 0 --acs-steps 0`)."]
    cfg = results.cfg
    rows = [
        "The conversation scenario placed as phone calls, each run through a server started"
        f" fresh for it (pinned), {cfg.phone_seconds:g} s: **twilio** POSTs the signed voice"
        " webhook, reads the TwiML and streams Media Streams on `/ws/twilio` (8 kHz μ-law,"
        " 20 ms `media` messages; the agent's audio is played through a modelled playback"
        " buffer, marks echoed when reached, `clear` honoured); **acs** streams ACS audio on"
        " `/ws/acs` (PCM16 16 kHz). The emulator echoes each turn in the call's format. The"
        " echo comes back resampled, so an answer is *damaged* when its speech span differs"
        " from the utterance's by more than one 20 ms frame; *frames lost* is the speech"
        " missing from damaged answers. *Caller audio lost* is what the calls sent minus what"
        " the server relayed upstream (its `voicebridge_audio_in_seconds`). The browser"
        " columns are the conversation step of the same size above (`/ws/voice`, PCM16 24 kHz)."
        " The emulator decodes and resamples phone audio to 24 kHz for its voice activity"
        " detection, which costs it more per call than a browser's; it shares the harness"
        " core with the load generator, and when the two use most of it (*harness limit*)"
        " the latency and damage figures are the harness's, not the server's.",
        "",
        "| channel | calls | server CPU % a call (browser) | RSS kB a call (browser)"
        " | response latency p50 / p99 ms (browser) | answers damaged | frames lost"
        " | caller audio lost s | barge-ins cleared | failed / dropped | load generator CPU"
        " | emulator CPU | other load |",
        "|---|---:|---|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for run in results.phone:
        r = run.report
        b = _browser_at(results.steps, run.sessions)
        br = {} if b is None else b.report
        sent, relayed = r.get("caller_audio_sent_s"), r.get("caller_audio_relayed_s")
        lost_in = None if sent is None or relayed is None else max(sent - relayed, 0.0)
        rows.append(
            f"| {run.path} | {run.sessions}"
            f" | {_f(r.get('server_cpu_pct_per_session'), 3)}"
            f" ({_f(br.get('server_cpu_pct_per_session'), 3)})"
            f" | {_kb(r.get('server_rss_per_session_bytes'))}"
            f" ({_kb(br.get('server_rss_per_session_bytes'))})"
            f" | {_latency(r)} ({_latency(br)})"
            f" | {r.get('answers_damaged')} of {r.get('answers_complete')}"
            f" | {r.get('frames_lost')} | {_f(lost_in)}"
            f" | {r.get('barge_ins_cleared')} of {r.get('barge_ins')}"
            f" | {r.get('sessions_failed')} / {r.get('sessions_dropped')}"
            f" | {_f(r.get('loadgen_cpu_pct'), 0)}%"
            f"{' (saturated)' if r.get('loadgen_saturated') else ''}"
            f" | {_f(r.get('emulator_cpu_pct'), 0)}%{harness_note(r)}"
            f" | {run.other_cores:.2f} |"
        )
    return rows


def bench_args(cfg: BenchConfig) -> str:
    """The command-line flags that reproduce ``cfg``."""
    parts = [
        f" --mirror-steps {','.join(map(str, cfg.mirror_steps))}",
        f" --conversation-steps {','.join(map(str, cfg.conversation_steps))}",
        f" --seconds {cfg.seconds:g} --conversation-seconds {cfg.conversation_seconds:g}",
        f" --threshold-ms {cfg.threshold_ms:g} --storm {cfg.storm}",
    ]
    parts.append(
        f" --twilio-steps {','.join(map(str, cfg.twilio_steps)) or '0'}"
        f" --acs-steps {','.join(map(str, cfg.acs_steps)) or '0'}"
        f" --phone-seconds {cfg.phone_seconds:g}"
    )
    if cfg.baseline is not None:
        parts.append(f" --baseline-src {cfg.baseline}")
    if not cfg.pin:
        parts.append(" --no-pin")
    if not cfg.profile:
        parts.append(" --no-profile")
    return "".join(parts)


def draw(results: BenchResults, out_dir: Path, log: TextIO) -> list[str]:
    """The pictures next to the page; none (and a note) when matplotlib is missing."""
    series: dict[tuple[str, str], list[plots.Point]] = {}
    for step in results.steps:
        for run in (step.direct, *step.bridges):
            series.setdefault((step.scenario, run.path), []).append(
                plots.Point(
                    sessions=run.sessions,
                    p99_ms=p99(run),
                    added_p99_ms=None if run is step.direct else added_p99(step, run),
                    cpu_pct=run.report.get("server_cpu_pct"),
                    bridge=run is not step.direct,
                )
            )
    try:
        drawn = plots.draw(series, out_dir, threshold_ms=results.cfg.threshold_ms)
    except plots.PlotsUnavailable as exc:
        print(f"bench: no pictures: {exc}", file=log)
        return []
    return [str(p) for p in drawn]


def added_p99(step: Step, run: Run) -> float | None:
    key = f"{DECIDING[step.scenario]}_p99_ms"
    return added(run, step.direct, key)


# -- where the server's CPU goes ---------------------------------------------------------

#: Groups of a profile, first match wins: (label, substrings of "file:function").
PROFILE_GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("WebSocket frame writes (aiohttp writer: the write system call)", ("_websocket/writer.py",)),
    (
        "SDK send: stdlib JSON encoding and type checks",
        ("azure/ai/voicelive", "json/encoder.py", "json/__init__.py", "typing.py"),
    ),
    (
        "WebSocket reads (aiohttp reader and receive, both sockets)",
        (
            "aiohttp/web_ws.py",
            "aiohttp/client_ws.py",
            "_websocket/reader",
            "aiohttp/web_protocol.py",
            "aiohttp/client_proto.py",
            "aiohttp/streams.py",
        ),
    ),
    ("base64", ("binascii", "base64.py")),
    ("the relay's own code (voicebridge.relay)", ("voicebridge/relay/",)),
    ("asyncio machinery (tasks, locks, futures)", ("asyncio/",)),
    ("logging and metrics", ("structlog", "logging/", "prometheus_client")),
)
OTHER = "other (built-ins, start-up imports, the rest)"
#: The event loop's own entry: under uvloop its time is mostly waiting for sockets.
_IDLE = ("asyncio/runners.py:run", "asyncio/base_events.py:run_forever")


@attrs.frozen
class ProfileShare:
    """One line of a profile: what, and its share of the profiled CPU (0..1)."""

    label: str
    share: float


@attrs.frozen
class Profile:
    """Where a server's time went in one profiled run (cProfile, the idle loop left out)."""

    scenario: str
    sessions: int
    groups: tuple[ProfileShare, ...]
    top: tuple[ProfileShare, ...]  # the functions with most own time
    kernel_share: float | None = None  # from the unprofiled run's CPU times, if known


def summarize_profile(path: Path, scenario: str, sessions: int, *, top: int = 8) -> Profile:
    """Group a cProfile dump's own time (``tottime``) by what it was spent on."""
    import pstats

    stats: dict[tuple[str, int, str], tuple[Any, ...]] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    own: dict[str, float] = {}
    for (filename, _line, function), row in stats.items():
        key = f"{filename.replace(chr(92), '/')}:{function}"
        if any(key.endswith(idle) for idle in _IDLE):
            continue
        own[key] = own.get(key, 0.0) + float(row[2])
    total = sum(own.values()) or 1.0
    grouped: dict[str, float] = {}
    for key, seconds in own.items():
        label = next((g for g, marks in PROFILE_GROUPS if any(m in key for m in marks)), OTHER)
        grouped[label] = grouped.get(label, 0.0) + seconds
    order = [g for g, _ in PROFILE_GROUPS] + [OTHER]
    groups = tuple(ProfileShare(g, grouped[g] / total) for g in order if g in grouped)
    heaviest = sorted(own.items(), key=lambda kv: kv[1], reverse=True)[:top]
    return Profile(
        scenario=scenario,
        sessions=sessions,
        groups=groups,
        top=tuple(ProfileShare(_short(key), seconds / total) for key, seconds in heaviest),
    )


def _short(key: str) -> str:
    path, _, function = key.rpartition(":")
    path = re.sub(r"^.*(site-packages/|/voicebridge/|/lib/python3\.\d+/)", "", path)
    return f"`{path}` {function}" if path != "~" else f"`{function}`"


def profile_rows(profiles: Sequence[Profile]) -> list[str]:
    """The profiles as two tables: by group, then the heaviest functions."""
    if not profiles:
        return ["Not run (`--no-profile`)."]
    intro = (
        "The server of a separate run, same load, under cProfile (which slows it, so only"
        " the shares mean something): its own time by where it went, the event loop's"
        " waiting left out. The kernel's share comes from the unprofiled run's CPU times."
    )
    heads = " | ".join(f"{p.scenario}, {p.sessions} sessions" for p in profiles)
    lines = [
        intro,
        "",
        f"| where | {heads} |",
        "|---|" + "---:|" * len(profiles),
    ]
    labels = list(dict.fromkeys(s.label for p in profiles for s in p.groups))
    for label in labels:
        cells = []
        for p in profiles:
            share = next((s.share for s in p.groups if s.label == label), None)
            cells.append("-" if share is None else f"{100 * share:.0f}%")
        lines.append(f"| {label} | {' | '.join(cells)} |")
    kernel = [p.kernel_share for p in profiles]
    if any(k is not None for k in kernel):
        cells = ["-" if k is None else f"{100 * k:.0f}%" for k in kernel]
        lines.append(
            f"| *of all the server's CPU (unprofiled run): in the kernel* | {' | '.join(cells)} |"
        )
    for p in profiles:
        lines += [
            "",
            f"Heaviest functions, {p.scenario} at {p.sessions} sessions (own time):",
            "",
            *(f"- {s.label}: {100 * s.share:.1f}%" for s in p.top),
        ]
    return lines
