"""The load-test benchmark behind ``make bench``: the bridge's cost, measured end to end.

It starts the Voice Live emulator in mirror mode (every appended frame comes straight back as
one audio delta) and the voicebridge server pointed at it as if it were Azure, each as its own
process on a free loopback port, then runs the load generator (``voicebridge.loadtest``, also
its own process) at each session count: straight to the emulator, through the bridge, and
through the bridge with clients that offer permessage-deflate as browsers do. The difference
from the direct run is what the bridge adds. With ``--baseline-src DIR`` the bridge of another
source checkout (say ``git worktree add /tmp/vb-base <commit>``) is measured the same way, so
the current relay and an earlier one sit side by side. A fresh server is started for every
bridge run, so its CPU and memory figures belong to that run alone. Results go to a Markdown
file (``bench/results.md``) with the machine they were measured on, and the raw reports to
JSON beside it. Every process it started is stopped when it ends, on error and on Ctrl-C too.

    python -m voicebridge.bench [--sessions 1,50,200] [--seconds 20] [--out bench/results.md]
                                [--baseline-src DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.metadata
import json
import os
import platform
import re
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import attrs
import psutil  # type: ignore[import-untyped,unused-ignore]

HOST = "127.0.0.1"
API_KEY = "bench-key"
DEPLOYMENT = "bench"
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 10.0
DRAIN_S = 2.0
WARMUP_SESSIONS = 2
WARMUP_SECONDS = 1.0
QUIET_CORES = 0.25

DIRECT = "direct"
THIS_TREE = "bridge (this tree)"
DEFLATE_OFFERED = ", deflate offered"

# Targets on the reference machine (2 cores).
TARGET_LOST_AT = 200
TARGET_ADDED_P99_MS = 5.0
TARGET_ADDED_P99_AT = 50
TARGET_CPU_PCT_PER_SESSION = 0.3
TARGET_CPU_FROM = 50
TARGET_RSS_PER_SESSION_BYTES = 250_000

# Settings the server reads; cleared so a developer's shell or .env cannot skew the run.
_SERVER_SETTINGS = frozenset(
    {
        "AZURE_OPENAI_ENDPOINT",
        "AZURE_OPENAI_KEY",
        "AZURE_OPENAI_DEPLOYMENT",
        "AZURE_API_VERSION",
        "VOICE_NAME",
        "VAD_THRESHOLD",
        "VAD_PREFIX_PADDING_MS",
        "VAD_SILENCE_DURATION_MS",
        "AGENT_INSTRUCTIONS_FILE",
        "APP_HOST",
        "APP_PORT",
        "LOG_LEVEL",
        "ENABLE_PROACTIVE_GREETING",
        "VOICELIVE_BACKEND",
        "SESSION_REGISTRY",
        "MAX_SESSIONS",
        "SESSION_MAX_DURATION_S",
        "SESSION_IDLE_TIMEOUT_S",
        "SHUTDOWN_GRACE_S",
        "CLIENT_TOKEN",
        "ADMIN_TOKEN",
        "ALLOWED_ORIGINS",
        "LOG_FORMAT",
        "STATIC_DIR",
    }
)
_PACKAGES = (
    "voicebridge",
    "aiohttp",
    "azure-ai-voicelive",
    "azure-core",
    "orjson",
    "attrs",
    "structlog",
    "psutil",
)


class BenchError(RuntimeError):
    """A process did not start, did not become ready, or a run produced no report."""


@attrs.frozen
class BenchConfig:
    """What to run: session counts, duration, pacing, where to write."""

    sessions: tuple[int, ...]
    seconds: float
    ramp: float
    frame_ms: int
    out: Path
    quiet_wait: float = 0.0
    baseline: Path | None = None


@attrs.frozen
class Bridge:
    """A bridge to measure: this tree's, or the one in another source checkout."""

    label: str
    src: Path | None = None  # the checkout its server runs from; None: this tree


@attrs.frozen
class Run:
    """One measured load-test run and the CPU that processes outside the bench used meanwhile."""

    path: str  # the row's label: DIRECT, THIS_TREE, a baseline, each maybe + DEFLATE_OFFERED
    sessions: int
    report: dict[str, Any]
    other_cores: float


@attrs.define
class _Procs:
    """Every process the bench started, so that all of them are stopped at the end."""

    logdir: Path
    running: list[tuple[str, subprocess.Popen[bytes]]] = attrs.Factory(list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str],
        stdout: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("ab")
        out = stdout.open("wb") if stdout is not None else None
        try:
            proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out if out is not None else log,
                stderr=log,
                # Its own process group: Ctrl-C reaches the bench, which stops it in order.
                start_new_session=True,
            )
        finally:
            log.close()
            if out is not None:
                out.close()
        self.running.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM its process group, wait, then SIGKILL; forget it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_TIMEOUT_S)
        self.running = [(n, p) for n, p in self.running if p is not proc]

    def stop_all(self) -> None:
        for _name, proc in reversed(self.running):
            self.stop(proc)

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    procs: _Procs,
    name: str,
    timeout: float,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = procs.log_tail(name)
            raise BenchError(f"{name} exited with {proc.returncode} before it was ready:\n{tail}")
        if ready():
            return
        time.sleep(0.1)
    raise BenchError(f"{name} not ready within {timeout:g} s:\n{procs.log_tail(name)}")


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=1.0) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _emulator_flags() -> set[str]:
    """Flags this emulator's CLI accepts, so ``--fast`` is passed only where it exists."""
    out = subprocess.run(
        [sys.executable, "-m", "voicebridge", "emulator", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return {word.strip(",[]") for word in out.split() if word.startswith(("--", "[--"))}


def start_emulator(procs: _Procs, port: int) -> subprocess.Popen[bytes]:
    """The emulator in mirror mode on ``port``, accepting connections."""
    flags = _emulator_flags()
    argv = [sys.executable, "-m", "voicebridge", "emulator", "--host", HOST, "--port", str(port)]
    argv += ["--api-key", API_KEY, "--mirror"]
    if "--fast" in flags:
        argv.append("--fast")
    if "--log-level" in flags:
        argv += ["--log-level", "WARNING"]
    proc = procs.start("emulator", argv, os.environ)
    _wait_until(lambda: _port_open(port), proc, procs, "emulator", READY_TIMEOUT_S)
    return proc


def _source_env(src: Path | None) -> dict[str, str]:
    """This environment, with ``src`` (if any) first on the import path."""
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def baseline_bridge(src: Path) -> Bridge:
    """The bridge in checkout ``src``, labelled with its commit; refused if Python run there
    would import voicebridge from anywhere else (this tree's editable install, say)."""
    src = src.resolve()
    found = "nowhere"
    if src.is_dir():
        probe = subprocess.run(
            [sys.executable, "-c", "import voicebridge; print(voicebridge.__file__)"],
            cwd=src,
            env=_source_env(src),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        found = probe.stdout.strip() or "nowhere"
    if not Path(found).resolve().is_relative_to(src):
        raise BenchError(f"--baseline-src {src}: voicebridge is imported from {found} there")
    return Bridge(label=f"bridge (baseline {_commit(src) or src.name})", src=src)


def start_server(
    procs: _Procs, port: int, emulator_port: int, src: Path | None = None
) -> subprocess.Popen[bytes]:
    """The server on ``port``, its Azure settings pointing at the emulator; /health is 200.

    With ``src`` it is the server of that source checkout, run there with the same Python.
    """
    env = {k: v for k, v in _source_env(src).items() if k not in _SERVER_SETTINGS}
    env.update(
        APP_HOST=HOST,
        APP_PORT=str(port),
        VOICELIVE_BACKEND="azure",
        AZURE_OPENAI_ENDPOINT=f"ws://{HOST}:{emulator_port}",
        AZURE_OPENAI_KEY=API_KEY,
        AZURE_OPENAI_DEPLOYMENT=DEPLOYMENT,
        MAX_SESSIONS="1000",
        LOG_LEVEL="WARNING",
    )
    no_env_file = procs.logdir / "none.env"  # never created, so no .env is read
    argv = [sys.executable, "-m", "voicebridge", "serve", "--env-file", str(no_env_file)]
    name = "server" if src is None else "baseline-server"
    proc = procs.start(name, argv, env, cwd=src)
    _wait_until(lambda: _healthy(port), proc, procs, name, READY_TIMEOUT_S)
    return proc


def _busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy, all cores together."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def _cpu_seconds(proc: subprocess.Popen[bytes]) -> float:
    try:
        times = psutil.Process(proc.pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(times.user + times.system)


def _children_cpu() -> float:
    """CPU seconds of children already waited for (the finished load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def other_load(ours: Sequence[subprocess.Popen[bytes]], window: float = 1.0) -> float:
    """Cores used over ``window`` seconds by processes that the bench did not start."""
    busy0, ours0 = _busy_seconds(), sum(map(_cpu_seconds, ours))
    time.sleep(window)
    busy, mine = _busy_seconds() - busy0, sum(map(_cpu_seconds, ours)) - ours0
    return max(busy - mine, 0.0) / window


def wait_for_quiet(
    ours: Sequence[subprocess.Popen[bytes]], max_wait: float, log: TextIO = sys.stderr
) -> None:
    """On a shared machine, wait (at most ``max_wait`` s) until other processes idle."""
    if max_wait <= 0:
        return
    deadline = time.monotonic() + max_wait
    while True:
        load = other_load(ours)
        if load < QUIET_CORES:
            return
        if time.monotonic() >= deadline:
            print(f"bench: other processes still use {load:.2f} cores; measuring anyway", file=log)
            return


def run_loadtest(
    procs: _Procs,
    cfg: BenchConfig,
    *,
    path: str,
    sessions: int,
    target: str,
    measured: subprocess.Popen[bytes],
    others: Sequence[subprocess.Popen[bytes]] = (),
    seconds: float | None = None,
) -> Run:
    """One load-generator process against ``target``; its JSON report and the outside load."""
    secs = cfg.seconds if seconds is None else seconds
    ramp = cfg.ramp if sessions > 1 else 0.0
    argv = [sys.executable, "-m", "voicebridge.loadtest", "--sessions", str(sessions)]
    argv += ["--seconds", f"{secs:g}", "--ramp", f"{ramp:g}", "--frame-ms", str(cfg.frame_ms)]
    argv += ["--drain", f"{DRAIN_S:g}", "--json", "--quiet", "--server-pid", str(measured.pid)]
    if path == DIRECT:
        argv += ["--direct", target, "--api-key", API_KEY]
    else:
        argv += ["--url", target]
    if path.endswith(DEFLATE_OFFERED):
        argv.append("--offer-deflate")
    name = f"loadtest-{re.sub(r'[^a-z0-9]+', '-', path.lower()).strip('-')}-{sessions}"
    out_path = procs.logdir / f"{name}.json"
    ours = [measured, *others]
    busy0, ours0, kids0 = _busy_seconds(), sum(map(_cpu_seconds, ours)), _children_cpu()
    t0 = time.monotonic()
    proc = procs.start(name, argv, os.environ, stdout=out_path)
    try:
        proc.wait(ramp + secs + DRAIN_S + 60.0)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} did not finish:\n{procs.log_tail(name)}") from None
    finally:
        procs.stop(proc)
    wall = max(time.monotonic() - t0, 1e-9)
    busy = _busy_seconds() - busy0
    mine = sum(map(_cpu_seconds, ours)) - ours0 + _children_cpu() - kids0
    text = out_path.read_text().strip()
    if not text:
        raise BenchError(f"{name} exited {proc.returncode} with no report:\n{procs.log_tail(name)}")
    report: dict[str, Any] = json.loads(text.splitlines()[-1])
    return Run(path=path, sessions=sessions, report=report, other_cores=max(busy - mine, 0) / wall)


def measure_bridge(
    procs: _Procs,
    cfg: BenchConfig,
    bridge: Bridge,
    sessions: int,
    *,
    emulator: subprocess.Popen[bytes],
    emulator_port: int,
    offer_deflate: bool,
    log: TextIO,
) -> Run:
    """One run through ``bridge``, on a server started for it alone."""
    path = bridge.label + (DEFLATE_OFFERED if offer_deflate else "")
    port = free_port()
    server = start_server(procs, port, emulator_port, bridge.src)
    url = f"ws://{HOST}:{port}/ws/voice"
    try:
        # Warm-up: first-session imports and caches are not per-session costs.
        run_loadtest(
            procs,
            cfg,
            path=path,
            sessions=WARMUP_SESSIONS,
            target=url,
            measured=server,
            seconds=WARMUP_SECONDS,
        )
        wait_for_quiet([emulator, server], cfg.quiet_wait, log)
        run = run_loadtest(
            procs, cfg, path=path, sessions=sessions, target=url, measured=server, others=[emulator]
        )
    finally:
        procs.stop(server)
    print(f"bench: {summary(run)}", file=log, flush=True)
    return run


def run_bench(
    cfg: BenchConfig, bridges: Sequence[Bridge] = (Bridge(THIS_TREE),), log: TextIO = sys.stderr
) -> list[Run]:
    """Every run of the benchmark, in order; all processes are stopped before it returns."""
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="voicebridge-bench-") as tmp:
        procs = _Procs(Path(tmp))
        try:
            emulator_port = free_port()
            emulator = start_emulator(procs, emulator_port)
            direct_url = f"ws://{HOST}:{emulator_port}"
            print(f"bench: emulator (mirror) on {direct_url}, pid {emulator.pid}", file=log)
            run_loadtest(
                procs,
                cfg,
                path=DIRECT,
                sessions=WARMUP_SESSIONS,
                target=direct_url,
                measured=emulator,
                seconds=WARMUP_SECONDS,
            )
            for n in cfg.sessions:
                wait_for_quiet([emulator], cfg.quiet_wait, log)
                run = run_loadtest(
                    procs, cfg, path=DIRECT, sessions=n, target=direct_url, measured=emulator
                )
                print(f"bench: {summary(run)}", file=log, flush=True)
                runs.append(run)
                for bridge in bridges:
                    for offer_deflate in (False, True):
                        run = measure_bridge(
                            procs,
                            cfg,
                            bridge,
                            n,
                            emulator=emulator,
                            emulator_port=emulator_port,
                            offer_deflate=offer_deflate,
                            log=log,
                        )
                        runs.append(run)
        finally:
            procs.stop_all()
    return runs


def summary(run: Run) -> str:
    """One line per run for the console."""
    r = run.report
    return (
        f"{run.path}, {run.sessions} sessions: held {r['sessions_held']},"
        f" lost {r['frames_lost']}/{r['frames_sent']}, p50 {_f(r['rtt_p50_ms'])}"
        f" p99 {_f(r['rtt_p99_ms'])} ms, cpu/session {_f(r.get('server_cpu_pct_per_session'), 3)}%"
    )


# -- the report ----------------------------------------------------------------------------


def _commit(src: Path | None = None) -> str:
    """The short commit checked out in ``src`` (default: here); "" outside git."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=src,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(bridges: Sequence[Bridge] = ()) -> dict[str, str]:
    """Where the figures were measured, and from which source checkouts."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    versions = []
    for name in _PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": f"{model}, {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions),
        "commit": _commit() or "-",
        "load average before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for bridge in bridges:
        if bridge.src is not None:
            info[bridge.label] = str(bridge.src)
    return info


def _f(value: Any, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _kb(value: Any) -> str:
    return "-" if value is None else f"{value / 1000:.1f}"


def _find(runs: Sequence[Run], path: str, sessions: int) -> Run | None:
    return next((r for r in runs if r.path == path and r.sessions == sessions), None)


def _deflate(run: Run) -> str:
    r = run.report
    return f"{r.get('sessions_deflate', 0)} of {run.sessions}" if r.get("deflate_offered") else "-"


def _yes(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def targets(runs: Sequence[Run]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of the reference machine.

    Judged on this tree's bridge with plain clients; the other rows are for comparison.
    """
    rows: list[tuple[str, str, str]] = []
    big = _find(runs, THIS_TREE, TARGET_LOST_AT)
    if big is None:
        rows.append((f"0 frames lost at {TARGET_LOST_AT} sessions", "not run", "-"))
    else:
        lost = big.report["frames_lost"]
        sent = big.report["frames_sent"]
        rows.append(
            (f"0 frames lost at {TARGET_LOST_AT} sessions", f"{lost} of {sent}", _yes(lost == 0))
        )
    bridge, direct = (
        _find(runs, THIS_TREE, TARGET_ADDED_P99_AT),
        _find(runs, DIRECT, TARGET_ADDED_P99_AT),
    )
    label = f"added p99 round trip < {TARGET_ADDED_P99_MS:g} ms at {TARGET_ADDED_P99_AT} sessions"
    if bridge is None or direct is None or bridge.report["rtt_p99_ms"] is None:
        rows.append((label, "not run", "-"))
    else:
        added = bridge.report["rtt_p99_ms"] - (direct.report["rtt_p99_ms"] or 0.0)
        rows.append((label, f"{added:.2f} ms", _yes(added < TARGET_ADDED_P99_MS)))
    cpu_runs = [r for r in runs if r.path == THIS_TREE and r.sessions >= TARGET_CPU_FROM]
    label = f"server CPU <= {TARGET_CPU_PCT_PER_SESSION:g}% of one core per session"
    cpus = [(r.sessions, r.report.get("server_cpu_pct_per_session")) for r in cpu_runs]
    if not cpus or any(c is None for _, c in cpus):
        rows.append((label, "not run", "-"))
    else:
        text = ", ".join(f"{c:.3f}% at {n}" for n, c in cpus)
        ok = all(c is not None and c <= TARGET_CPU_PCT_PER_SESSION for _, c in cpus)
        rows.append((label, text, _yes(ok)))
    bridges = [r for r in runs if r.path == THIS_TREE]
    label = f"< {TARGET_RSS_PER_SESSION_BYTES // 1000} kB RSS per session"
    largest = max(bridges, key=lambda r: r.sessions, default=None)
    rss = None if largest is None else largest.report.get("server_rss_per_session_bytes")
    if largest is None or rss is None:
        rows.append((label, "not run", "-"))
    else:
        rows.append(
            (
                label,
                f"{rss / 1000:.1f} kB at {largest.sessions}",
                _yes(rss < TARGET_RSS_PER_SESSION_BYTES),
            )
        )
    return rows


def render(cfg: BenchConfig, machine: Mapping[str, str], runs: Sequence[Run]) -> str:
    """The Markdown results page."""
    baseline = "" if cfg.baseline is None else f" --baseline-src {cfg.baseline}"
    bridge_paths = list(dict.fromkeys(r.path for r in runs if r.path != DIRECT))
    lines = [
        "# voicebridge benchmark",
        "",
        f"`python -m voicebridge.bench --sessions {','.join(map(str, cfg.sessions))}"
        f" --seconds {cfg.seconds:g} --ramp {cfg.ramp:g}{baseline}` — each session streams"
        f" PCM16 24 kHz mono in real time, {cfg.frame_ms} ms per frame, for {cfg.seconds:g} s"
        f" after a {cfg.ramp:g} s ramp; the emulator's mirror mode sends every frame straight"
        " back.",
        "",
        f"- **{DIRECT}**: load generator → emulator (Voice Live protocol, JSON + base64): the"
        " baseline without the bridge. The measured process is the emulator.",
        f"- **{THIS_TREE}**: load generator → voicebridge `/ws/voice` (binary frames) → SDK →"
        " emulator and back. The measured process is the server, started fresh for the run.",
        f"- **…{DEFLATE_OFFERED}**: the same, but the clients offer permessage-deflate as"
        " browsers do (`permessage-deflate; client_max_window_bits`) and speak it when the"
        " server accepts; the *deflate* column says in how many sessions it did.",
        *(
            []
            if cfg.baseline is None
            else [
                "- **bridge (baseline …)**: the server of the source checkout given as"
                " `--baseline-src` (its path under *Machine*), run with the same Python, emulator"
                " and load generator.",
            ]
        ),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in machine.items()),
        "",
        "All processes (load generator, server, emulator) share these cores, so the round trip"
        " includes their competition for CPU. *Other load* is the CPU (in cores) that processes"
        " outside the bench used during the run; when it is not near 0 the figures are noisy.",
        "",
        "## Results",
        "",
        "| path | sessions | deflate | held | failed | frames sent | received | lost"
        " | reordered | duplicated | p50 ms | p95 ms | p99 ms | max ms"
        " | CPU % of a core per session | RSS kB per session | load gen CPU %"
        " | send lag p99 ms | other load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:"
        "|---:|---:|",
    ]
    for run in runs:
        r = run.report
        flag = " (saturated)" if r.get("loadgen_saturated") else ""
        lines.append(
            f"| {run.path} | {run.sessions} | {_deflate(run)} | {r['sessions_held']}"
            f" | {r['sessions_failed']}"
            f" | {r['frames_sent']} | {r['frames_received']} | {r['frames_lost']}"
            f" | {r['frames_reordered']} | {r['frames_duplicated']} | {_f(r['rtt_p50_ms'])}"
            f" | {_f(r['rtt_p95_ms'])} | {_f(r['rtt_p99_ms'])} | {_f(r['rtt_max_ms'])}"
            f" | {_f(r.get('server_cpu_pct_per_session'), 3)}"
            f" | {_kb(r.get('server_rss_per_session_bytes'))}"
            f" | {_f(r['loadgen_cpu_pct'], 0)}{flag} | {_f(r['send_lag_p99_ms'])}"
            f" | {run.other_cores:.2f} |"
        )
    lines += [
        "",
        "## What the bridge adds (each bridge minus direct)",
        "",
        "| path | sessions | p50 ms | p95 ms | p99 ms | server CPU % of a core per session"
        " | server RSS kB per session |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for n in cfg.sessions:
        direct = _find(runs, DIRECT, n)
        for path in bridge_paths:
            bridge = _find(runs, path, n)
            if bridge is None or direct is None:
                continue
            b, d = bridge.report, direct.report
            added = [
                None if b[k] is None or d[k] is None else b[k] - d[k]
                for k in ("rtt_p50_ms", "rtt_p95_ms", "rtt_p99_ms")
            ]
            lines.append(
                f"| {path} | {n} | {' | '.join(_f(a) for a in added)}"
                f" | {_f(b.get('server_cpu_pct_per_session'), 3)}"
                f" | {_kb(b.get('server_rss_per_session_bytes'))} |"
            )
    lines += [
        "",
        "## Targets (2-core machine)",
        "",
        f"Judged on **{THIS_TREE}**; the other rows are there for comparison.",
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
        *(f"| {t} | {m} | {v} |" for t, m, v in targets(runs)),
        "",
        "CPU per session is the server's CPU time over the run divided by the session-seconds"
        " streamed (100% = one core per real-time session). RSS per session is the server's peak"
        " resident memory during the run minus its resident memory just before, divided by the"
        " sessions connected. Round trip: from the load generator's send to the same frame's"
        " return, both stamped in the generator.",
        "",
    ]
    return "\n".join(lines)


# -- command line --------------------------------------------------------------------------


def _session_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if not counts or any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"session counts must be >= 1: {text}")
    return counts


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    """``make bench``: run the benchmark and write the results page; exit 1 on failure."""
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge.bench",
        description="Load-test the bridge against the emulator in mirror mode.",
    )
    parser.add_argument("--sessions", type=_session_counts, default=(1, 50, 200))
    parser.add_argument("--seconds", type=float, default=20.0, help="streaming time per run")
    parser.add_argument("--ramp", type=float, default=2.0, help="spread session starts (s)")
    parser.add_argument("--frame-ms", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("bench/results.md"))
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to go idle (30)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="also measure the bridge of this source checkout (git worktree add DIR COMMIT)",
    )
    args = parser.parse_args(argv)
    cfg = BenchConfig(
        sessions=args.sessions,
        seconds=args.seconds,
        ramp=args.ramp,
        frame_ms=args.frame_ms,
        out=args.out,
        quiet_wait=args.quiet_wait,
        baseline=args.baseline_src,
    )
    # Stop cleanly on SIGTERM, and on Ctrl-C even when started with SIGINT ignored (``&``).
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        bridges = [Bridge(THIS_TREE)]
        if cfg.baseline is not None:
            bridges.append(baseline_bridge(cfg.baseline))
        machine = machine_info(bridges)
        runs = run_bench(cfg, bridges)
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=sys.stderr)
        return 130
    cfg.out.parent.mkdir(parents=True, exist_ok=True)
    cfg.out.write_text(render(cfg, machine, runs))
    raw = {
        "machine": machine,
        "runs": [
            {"path": r.path, "sessions": r.sessions, "other_cores": r.other_cores, **r.report}
            for r in runs
        ],
    }
    cfg.out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    print(f"bench: wrote {cfg.out} and {cfg.out.with_suffix('.json')}", file=sys.stderr)
    for target, measured, verdict in targets(runs):
        print(f"bench: {target}: {measured} — {verdict.strip('*')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
