"""The benchmark behind ``make bench``: how many calls one core of voicebridge carries.

Operators plan in calls per core and memory per call, so that is what it measures. The
server runs pinned to one core (``os.sched_setaffinity``); the Voice Live emulator and the
load generator (``voicebridge.loadtest``) run pinned to the other core(s), each its own
process on a free loopback port. For two scenarios it steps the number of sessions up,
each step measured twice, straight to the emulator (*direct*) and through a server started
fresh for it (*bridge*, with every other client offering permessage-deflate as browsers
do), until the latency the bridge adds crosses ``--threshold-ms`` or anything is lost:

* **mirror**: 20 ms frames, each stamped, which the emulator's mirror mode sends straight
  back; the figure is the round trip;
* **conversation**: callers speak sentences made by espeak-ng in real time, pause, listen
  and sometimes barge in; the emulator runs as usual (voice activity detection, answers
  echoing each turn in real time); the figures are the response latency and the barge-in
  reaction (:mod:`voicebridge.loadtest.calls`).

The last step within the threshold is the *knee*: sessions per core. Then a connect storm
(``--storm`` sessions connecting at once) and a shutdown (SIGTERM with those sessions
live), and one run of each scenario with the server under cProfile, to say where its CPU
goes. The judging, the page and the pictures are :mod:`voicebridge.loadtest.capacity` and
:mod:`voicebridge.loadtest.plots`. Results go to ``bench/results.md`` with the machine they
were measured on, the raw reports to ``results.json`` and two pictures (``latency.png``,
``cpu.png``) beside it. Every process it started is stopped when it ends, on error and on
Ctrl-C too. A progress line is printed per run and per step.

    python -m voicebridge.bench [--quick] [--mirror-steps 25,50,...] [--conversation-steps
        50,100,...] [--threshold-ms 20] [--storm 500] [--no-profile] [--baseline-src DIR]
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
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

import attrs
import psutil  # type: ignore[import-untyped,unused-ignore]

from voicebridge.loadtest import speech
from voicebridge.loadtest.capacity import (
    CONVERSATION,
    DIRECT,
    MIRROR,
    SCENARIOS,
    THIS_TREE,
    BenchConfig,
    BenchResults,
    Profile,
    Run,
    Shutdown,
    Step,
    closed_1001,
    draw,
    judge,
    phone_line,
    render,
    step_line,
    storm_line,
    summarize_profile,
    targets,
)

HOST = "127.0.0.1"
API_KEY = "bench-key"
DEPLOYMENT = "bench"
# The phone settings of every server the bench starts, and what its fake providers present.
TWILIO_AUTH_TOKEN = "bench-twilio-auth-token"
PHONE_TOKEN_SECRET = "bench-phone-token-secret-0123456789"
TWILIO = "twilio"
ACS = "acs"
READY_TIMEOUT_S = 45.0
STOP_TIMEOUT_S = 10.0
DRAIN_S = 2.0
WARMUP_SESSIONS = 2
WARMUP_SECONDS = 1.0
QUIET_CORES = 0.25
CONNECTS_PER_S = 200  # the ramp: sessions connect over sessions / this many seconds
PROFILE_AT = 50  # sessions of the profiled runs (the targets' step)
STORM_FRAME_MS = 200
PROFILE_SECONDS = {MIRROR: 8.0, CONVERSATION: 15.0}

# Settings the server reads; cleared so a developer's shell or .env cannot skew the run.
_SERVER_SETTINGS_PREFIXES = (
    "AZURE_",
    "VOICELIVE_",
    "VAD_",
    "APP_",
    "SESSION_",
    "MAX_",
    "TWILIO_",
    "PHONE_",
    "DTMF_",
)
_SERVER_SETTINGS = frozenset(
    {
        "VOICE_NAME",
        "AGENT_INSTRUCTIONS_FILE",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "ENABLE_PROACTIVE_GREETING",
        "SHUTDOWN_GRACE_S",
        "CLIENT_TOKEN",
        "ADMIN_TOKEN",
        "ALLOWED_ORIGINS",
        "STATIC_DIR",
        "PUBLIC_URL",
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
    "uvloop",
)


class BenchError(RuntimeError):
    """A process did not start, did not become ready, or a run produced no report."""


@attrs.frozen
class Bridge:
    """A bridge to measure: this tree's, or the one in another source checkout."""

    label: str
    src: Path | None = None  # the checkout its server runs from; None: this tree


@attrs.frozen
class Cores:
    """Which CPUs the server gets and which the emulator and load generator get."""

    server: frozenset[int] | None
    harness: frozenset[int] | None

    @classmethod
    def plan(cls, pin: bool) -> Cores:
        """The server on the first CPU this process may use, everything else on the rest."""
        mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        if not pin or len(mine) < 2:
            return cls(None, None)
        return cls(frozenset(mine[:1]), frozenset(mine[1:]))

    def describe(self) -> str:
        if self.server is None or self.harness is None:
            return "not pinned: every process shares every core"
        return (
            f"server on CPU {_cpus(self.server)}; emulator, load generator and this bench"
            f" on CPU {_cpus(self.harness)}"
        )


def _cpus(cpus: Iterable[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


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
        *,
        stdout: Path | None = None,
        cwd: Path | None = None,
        cores: Collection[int] | None = None,
    ) -> subprocess.Popen[bytes]:
        log = (self.logdir / f"{name}.log").open("ab")
        out = stdout.open("wb") if stdout is not None else None

        def pin() -> None:  # runs in the child between fork and exec
            if cores is not None:
                os.sched_setaffinity(0, cores)

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
                preexec_fn=pin if cores is not None else None,  # noqa: PLW1509 - single-threaded
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


def _health(port: int) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=1.0) as resp:
            if resp.status != 200:
                return None
            body: dict[str, Any] = json.loads(resp.read())
            return body
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _sessions_started(port: int) -> int:
    """Sessions past their start (Voice Live configured, ``session_started`` sent), from the
    admin route, which a loopback caller may read without a token."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}/sessions", timeout=5.0) as resp:
            body = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return 0
    sessions = body.get("sessions") if isinstance(body, dict) else None
    if not isinstance(sessions, list):
        return 0
    return sum(1 for s in sessions if isinstance(s, dict) and s.get("state") != "connecting")


def start_emulator(
    procs: _Procs, port: int, *, mirror: bool, cores: Collection[int] | None
) -> subprocess.Popen[bytes]:
    """The emulator on ``port`` (mirror mode, or answering in real time), accepting connections."""
    argv = [sys.executable, "-m", "voicebridge", "emulator", "--host", HOST, "--port", str(port)]
    argv += ["--api-key", API_KEY, "--log-level", "WARNING"]
    if mirror:
        argv += ["--mirror", "--fast"]
    name = "emulator-mirror" if mirror else "emulator"
    proc = procs.start(name, argv, os.environ, cores=cores)
    _wait_until(lambda: _port_open(port), proc, procs, name, READY_TIMEOUT_S)
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


def server_env(port: int, emulator_port: int, src: Path | None = None) -> dict[str, str]:
    """The server's environment: Azure settings pointing at the emulator, limits out of the way."""
    env = {
        k: v
        for k, v in _source_env(src).items()
        if k not in _SERVER_SETTINGS and not k.startswith(_SERVER_SETTINGS_PREFIXES)
    }
    env.update(
        APP_HOST=HOST,
        APP_PORT=str(port),
        VOICELIVE_BACKEND="azure",
        AZURE_OPENAI_ENDPOINT=f"ws://{HOST}:{emulator_port}",
        AZURE_OPENAI_KEY=API_KEY,
        AZURE_OPENAI_DEPLOYMENT=DEPLOYMENT,
        # Every simulated caller comes from 127.0.0.1: the per-client and total limits
        # must not be what the benchmark measures.
        MAX_SESSIONS="5000",
        MAX_SESSIONS_PER_CLIENT="5000",
        MAX_CONNECTIONS="10000",
        LOG_LEVEL="WARNING",
        # Phone calls: Twilio's webhook signed with this token, stream tokens with this secret.
        TWILIO_AUTH_TOKEN=TWILIO_AUTH_TOKEN,
        PHONE_TOKEN_SECRET=PHONE_TOKEN_SECRET,
    )
    return env


def start_server(
    procs: _Procs,
    port: int,
    emulator_port: int,
    *,
    src: Path | None = None,
    cores: Collection[int] | None = None,
    profile: Path | None = None,
) -> subprocess.Popen[bytes]:
    """The server on ``port``, its Azure settings pointing at the emulator; /health is 200.

    With ``src`` it is the server of that source checkout, run there with the same Python;
    with ``profile`` it runs under cProfile, which writes there when the server exits.
    """
    no_env_file = procs.logdir / "none.env"  # never created, so no .env is read
    argv = [sys.executable, "-m", "voicebridge", "serve", "--env-file", str(no_env_file)]
    if profile is not None:  # written when it exits after SIGTERM
        argv[1:1] = ["-m", "cProfile", "-o", str(profile)]
    name = "server" if src is None else "baseline-server"
    env = server_env(port, emulator_port, src)
    proc = procs.start(name, argv, env, cwd=src, cores=cores)
    _wait_until(lambda: _health(port) is not None, proc, procs, name, READY_TIMEOUT_S)
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
            print(f"bench: other processes use {load:.2f} cores; measuring anyway", file=log)
            return


def ramp_for(sessions: int) -> float:
    """Sessions connect over this many seconds (a storm is a ramp of 0)."""
    return 0.0 if sessions <= WARMUP_SESSIONS else max(1.0, sessions / CONNECTS_PER_S)


@attrs.frozen
class _Emulator:
    """A running emulator and the target of the direct runs against it."""

    proc: subprocess.Popen[bytes]
    port: int

    @property
    def direct(self) -> _Target:
        return _Target(DIRECT, f"ws://{HOST}:{self.port}", self.proc)


@attrs.frozen
class _Target:
    """What one load-generator process is pointed at, and which process it measures."""

    path: str
    url: str
    measured: subprocess.Popen[bytes]
    others: tuple[subprocess.Popen[bytes], ...] = ()


def run_loadtest(
    procs: _Procs,
    cfg: BenchConfig,
    target: _Target,
    *,
    scenario: str,
    sessions: int,
    cores: Collection[int] | None,
    seconds: float | None = None,
    ramp: float | None = None,
    extra: Sequence[str] = (),
    during: Callable[[subprocess.Popen[bytes]], None] | None = None,
    channel: str | None = None,
) -> Run:
    """One load-generator process; its JSON report and the load from outside the bench.

    ``during``, if given, is called once the generator has started (the shutdown row
    sends SIGTERM from there). ``channel`` (twilio, acs): phone calls to the bridge at
    ``target.url``, the run's path named after the channel.
    """
    secs = cfg.seconds_for(scenario) if seconds is None else seconds
    ramp = ramp_for(sessions) if ramp is None else ramp
    argv = [sys.executable, "-m", "voicebridge.loadtest", "--scenario", scenario]
    argv += ["--sessions", str(sessions), "--seconds", f"{secs:g}", "--ramp", f"{ramp:g}"]
    argv += ["--frame-ms", str(cfg.frame_ms), "--drain", f"{DRAIN_S:g}", "--json", "--quiet"]
    argv += ["--server-pid", str(target.measured.pid), "--connect-timeout", "30"]
    env = dict(os.environ)
    path = target.path
    if channel is not None:
        argv += ["--url", target.url, "--channel", channel]
        # Secrets by environment, not on a command line every process can read.
        env.update(TWILIO_AUTH_TOKEN=TWILIO_AUTH_TOKEN, PHONE_TOKEN_SECRET=PHONE_TOKEN_SECRET)
        path = channel
    elif target.path == DIRECT:
        argv += ["--direct", target.url, "--api-key", API_KEY]
    else:
        argv += ["--url", target.url, "--offer-deflate", f"{cfg.deflate_share:g}"]
    argv += list(extra)
    slug = re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")
    name = f"loadtest-{scenario}-{slug}-{sessions}"
    out_path = procs.logdir / f"{name}.json"
    ours = [target.measured, *target.others]
    busy0, ours0, kids0 = _busy_seconds(), sum(map(_cpu_seconds, ours)), _children_cpu()
    t0 = time.monotonic()
    proc = procs.start(name, argv, env, stdout=out_path, cores=cores)
    try:
        if during is not None:
            during(proc)
        proc.wait(ramp + secs + 60.0)
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
    return Run(
        path=path,
        scenario=scenario,
        sessions=sessions,
        report=report,
        other_cores=max(busy - mine, 0) / wall,
    )


# -- judging ---------------------------------------------------------------------------------


@attrs.define
class _Bench:
    """One benchmark: its processes, its cores, its runs so far."""

    cfg: BenchConfig
    bridges: Sequence[Bridge]
    procs: _Procs
    cores: Cores
    log: TextIO
    steps: list[Step] = attrs.Factory(list)
    phone: list[Run] = attrs.Factory(list)
    storm: Run | None = None
    shutdown: Shutdown | None = None
    profiles: list[Profile] = attrs.Factory(list)
    started: float = attrs.Factory(time.monotonic)

    def say(self, text: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"bench [{elapsed / 60:4.1f} min] {text}", file=self.log, flush=True)

    def warm_up(self, target: _Target) -> None:
        """A second of two sessions: first-session imports and caches are no session's cost.

        Mirror frames either way: in a conversation they are too quiet to be speech.
        """
        self.loadtest(
            target,
            MIRROR,
            WARMUP_SESSIONS,
            seconds=WARMUP_SECONDS,
            ramp=0.0,
            extra=["--drain", "0"],
            quiet=True,
        )

    def loadtest(
        self, target: _Target, scenario: str, sessions: int, *, quiet: bool = False, **kw: Any
    ) -> Run:
        if not quiet:
            seconds = kw.get("seconds") or self.cfg.seconds_for(scenario)
            self.say(f"{scenario} {sessions}: {target.path}, {seconds:g} s")
        return run_loadtest(
            self.procs,
            self.cfg,
            target,
            scenario=scenario,
            sessions=sessions,
            cores=self.cores.harness,
            **kw,
        )

    def bridge_run(self, bridge: Bridge, scenario: str, sessions: int, emu: _Emulator) -> Run:
        """One run through ``bridge``, on a server started for it alone."""
        port = free_port()
        server = start_server(self.procs, port, emu.port, src=bridge.src, cores=self.cores.server)
        target = _Target(bridge.label, f"ws://{HOST}:{port}/ws/voice", server, (emu.proc,))
        try:
            self.warm_up(target)
            wait_for_quiet([emu.proc, server], self.cfg.quiet_wait, self.log)
            return self.loadtest(target, scenario, sessions)
        finally:
            self.procs.stop(server)

    def step(self, scenario: str, sessions: int, emu: _Emulator, first: Run | None) -> Step:
        """One step: the direct run, then each bridge's, judged."""
        wait_for_quiet([emu.proc], self.cfg.quiet_wait, self.log)
        d = self.loadtest(emu.direct, scenario, sessions)
        runs = tuple(self.bridge_run(b, scenario, sessions, emu) for b in self.bridges)
        within, why = judge(scenario, d, runs[0], self.cfg.threshold_ms, first or d)
        return Step(scenario, sessions, d, runs, within, why)

    def ladder(self, scenario: str) -> None:
        """Step the sessions up until the bridge leaves the threshold or loses anything."""
        port = free_port()
        proc = start_emulator(self.procs, port, mirror=scenario == MIRROR, cores=self.cores.harness)
        emu = _Emulator(proc, port)
        first: Run | None = None
        try:
            self.warm_up(emu.direct)
            for n in self.cfg.steps(scenario):
                step = self.step(scenario, n, emu, first)
                if not step.within and "added" in step.why:
                    # One slow moment on a shared machine is not a knee: measure it again.
                    self.say(f"{scenario} {n} sessions: {step.why}; measuring it again")
                    again = self.step(scenario, n, emu, first)
                    step = attrs.evolve(again, why=f"{again.why} (first run: {step.why})")
                first = first or step.direct
                self.steps.append(step)
                self.say(f"{scenario} {n} sessions: {step_line(step)}")
                if not step.within:
                    break
        finally:
            self.procs.stop(proc)

    def phone_calls(self) -> None:
        """The conversation as Twilio and ACS calls, each run on a server started for it."""
        runs = [(TWILIO, n) for n in self.cfg.twilio_steps]
        runs += [(ACS, n) for n in self.cfg.acs_steps]
        if not runs:
            return
        port = free_port()
        proc = start_emulator(self.procs, port, mirror=False, cores=self.cores.harness)
        try:
            for channel, n in runs:
                server_port = free_port()
                server = start_server(self.procs, server_port, port, cores=self.cores.server)
                target = _Target(channel, f"ws://{HOST}:{server_port}/ws/voice", server, (proc,))
                try:
                    self.warm_up(target)
                    wait_for_quiet([proc, server], self.cfg.quiet_wait, self.log)
                    # The emulator decodes and resamples the calls' audio: its CPU says
                    # whether the harness's core, not the server, was the limit.
                    cpu0, t0 = _cpu_seconds(proc), time.monotonic()
                    run = self.loadtest(
                        target,
                        CONVERSATION,
                        n,
                        seconds=self.cfg.phone_seconds,
                        channel=channel,
                    )
                    emulator_pct = 100 * (_cpu_seconds(proc) - cpu0) / (time.monotonic() - t0)
                    run = attrs.evolve(
                        run, report={**run.report, "emulator_cpu_pct": round(emulator_pct, 1)}
                    )
                finally:
                    self.procs.stop(server)
                self.phone.append(run)
                self.say(f"{channel} {n} calls: {phone_line(run)}")
        finally:
            self.procs.stop(proc)

    def storm_and_shutdown(self) -> None:
        """``--storm`` sessions connect at once; with all of them live, SIGTERM the server."""
        n = self.cfg.storm
        emulator_port, port = free_port(), free_port()
        emulator = start_emulator(self.procs, emulator_port, mirror=True, cores=self.cores.harness)
        server = start_server(self.procs, port, emulator_port, cores=self.cores.server)
        target = _Target(THIS_TREE, f"ws://{HOST}:{port}/ws/voice", server, (emulator,))
        live = 0
        timing: dict[str, float | int | None] = {}

        def sigterm_when_all_live(loadgen: subprocess.Popen[bytes]) -> None:
            nonlocal live
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline and loadgen.poll() is None:
                live = _sessions_started(port)
                if live >= n:
                    break
                time.sleep(0.5)
            time.sleep(2.0)  # a little real traffic on every session first
            live = _sessions_started(port)
            sent = time.monotonic()
            server.send_signal(signal.SIGTERM)
            try:
                timing["code"] = server.wait(STOP_TIMEOUT_S * 3)
                timing["exit_s"] = time.monotonic() - sent
            except subprocess.TimeoutExpired:
                timing["exit_s"] = None

        self.say(f"connect storm: {n} sessions at once; SIGTERM once all are live")
        try:
            # Live real-time audio in STORM_FRAME_MS frames: every session is live and
            # talking, in all about the frames of 50 sessions at 20 ms, which the core
            # carries; the storm and the shutdown are measured, not an overload.
            run = self.loadtest(
                target,
                MIRROR,
                n,
                seconds=12.0,
                ramp=0.0,
                extra=["--frame-ms", str(STORM_FRAME_MS)],
                during=sigterm_when_all_live,
                quiet=True,
            )
        finally:
            self.procs.stop(server)
            self.procs.stop(emulator)
        self.storm = run
        exit_s = timing.get("exit_s")
        code = timing.get("code")
        self.shutdown = Shutdown(
            sessions_live=live,
            exit_s=None if exit_s is None else float(exit_s),
            exit_code=None if code is None else int(code),
            run=run,
        )
        self.say(
            f"connect storm and shutdown, {n} sessions: {storm_line(self.storm, self.shutdown)}"
        )

    def profile(self, scenario: str, sessions: int) -> None:
        """The server under cProfile for one run: where its CPU goes (the report is dropped,
        the profiler slows it down)."""
        emulator_port, port = free_port(), free_port()
        dump = self.procs.logdir / f"server-{scenario}.prof"
        emulator = start_emulator(
            self.procs, emulator_port, mirror=scenario == MIRROR, cores=self.cores.harness
        )
        server = start_server(
            self.procs, port, emulator_port, cores=self.cores.server, profile=dump
        )
        target = _Target(THIS_TREE, f"ws://{HOST}:{port}/ws/voice", server, (emulator,))
        seconds = PROFILE_SECONDS[scenario]
        self.say(f"profile: {scenario} {sessions}, the server under cProfile, {seconds:g} s")
        try:
            self.warm_up(target)
            self.loadtest(target, scenario, sessions, seconds=seconds, quiet=True)
        finally:
            self.procs.stop(server)
            self.procs.stop(emulator)
        if not dump.exists():
            self.say(f"profile: the server wrote no profile ({self.procs.log_tail('server', 5)})")
            return
        profile = summarize_profile(dump, scenario, sessions)
        step = next(
            (s for s in self.steps if s.scenario == scenario and s.sessions == sessions), None
        )
        kernel = None if step is None else step.bridges[0].report.get("server_cpu_kernel_share")
        self.profiles.append(attrs.evolve(profile, kernel_share=kernel))

    def run(self) -> None:
        for scenario in SCENARIOS:
            if self.cfg.steps(scenario):
                self.say(f"{scenario}: steps {', '.join(map(str, self.cfg.steps(scenario)))}")
                self.ladder(scenario)
        self.phone_calls()
        if self.cfg.storm:
            self.storm_and_shutdown()
        if self.cfg.profile:
            for scenario in SCENARIOS:
                steps = self.cfg.steps(scenario)
                if steps:
                    self.profile(scenario, PROFILE_AT if PROFILE_AT in steps else steps[0])


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


def _dirty() -> bool:
    try:
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(out.strip())


def machine_info(cores: Cores, bridges: Sequence[Bridge] = ()) -> dict[str, str]:
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
    commit = _commit() or "-"
    info = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": f"{model}, {os.cpu_count()} logical cores",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": ", ".join(versions),
        "commit": commit + (" with uncommitted changes" if commit != "-" and _dirty() else ""),
        "pinning": cores.describe(),
        "load average before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    for bridge in bridges:
        if bridge.src is not None:
            info[bridge.label] = str(bridge.src)
    return info


# -- command line --------------------------------------------------------------------------


def _session_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text}"
        ) from None
    if any(n < 1 for n in counts):
        raise argparse.ArgumentTypeError(f"session counts must be >= 1: {text}")
    return counts


def _session_counts_or_none(text: str) -> tuple[int, ...]:
    """Like ``_session_counts``; "0" alone means none."""
    return () if text.strip() == "0" else _session_counts(text)


def _on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


FULL = {
    "mirror_steps": (25, 50, 75, 100, 150, 200, 300, 400),
    "conversation_steps": (50, 100, 150, 200, 250, 300, 400, 500),
    "seconds": 10.0,
    "conversation_seconds": 25.0,
    "storm": 500,
    "twilio_steps": (50, 100),
    "acs_steps": (100,),
    "phone_seconds": 15.0,
}
QUICK = {
    "mirror_steps": (20, 50),
    "conversation_steps": (20, 50),
    "seconds": 5.0,
    "conversation_seconds": 12.0,
    "storm": 100,
    "twilio_steps": (20,),
    "acs_steps": (20,),
    "phone_seconds": 8.0,
}


def parse_args(argv: Sequence[str] | None = None) -> BenchConfig:
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge.bench",
        description="Sessions per core: mirror and conversation, stepped up to the knee; a"
        " connect storm and a shutdown at scale.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="small steps and short runs to try it out (a few minutes)",
    )
    parser.add_argument("--mirror-steps", type=_session_counts, help="e.g. 50,100,200,300")
    parser.add_argument("--conversation-steps", type=_session_counts, help="e.g. 50,100,200")
    parser.add_argument("--seconds", type=float, help="streaming time of a mirror run (10)")
    parser.add_argument(
        "--conversation-seconds", type=float, help="streaming time of a conversation run (25)"
    )
    parser.add_argument(
        "--threshold-ms",
        type=float,
        default=20.0,
        help="the added p99 a step may show and still count as within (20)",
    )
    parser.add_argument(
        "--twilio-steps",
        type=_session_counts_or_none,
        help="Twilio calls (conversation) at these counts, e.g. 50,100 (0: none)",
    )
    parser.add_argument(
        "--acs-steps",
        type=_session_counts_or_none,
        help="ACS calls (conversation) at these counts, e.g. 100 (0: none)",
    )
    parser.add_argument("--phone-seconds", type=float, help="streaming time of a phone run (15)")
    parser.add_argument(
        "--storm", type=int, help="sessions of the connect storm and shutdown rows (500; 0: skip)"
    )
    parser.add_argument("--frame-ms", type=int, default=20)
    parser.add_argument(
        "--deflate-share",
        type=float,
        default=0.5,
        help="share of bridge clients that offer permessage-deflate (0.5)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench/results.md"))
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="before each run, wait up to this long for other processes to go idle (5)",
    )
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin processes to cores (sched_setaffinity)"
    )
    parser.add_argument(
        "--no-profile",
        action="store_true",
        help="skip the two runs of the server under cProfile (where its CPU goes)",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        metavar="DIR",
        help="also measure the bridge of this source checkout at every step (doubles the time)",
    )
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else FULL

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return preset[name] if value is None else value

    return BenchConfig(
        mirror_steps=pick("mirror_steps"),
        conversation_steps=pick("conversation_steps"),
        seconds=pick("seconds"),
        conversation_seconds=pick("conversation_seconds"),
        frame_ms=args.frame_ms,
        threshold_ms=args.threshold_ms,
        out=args.out,
        deflate_share=args.deflate_share,
        storm=pick("storm"),
        quiet_wait=args.quiet_wait,
        baseline=args.baseline_src,
        pin=not args.no_pin,
        quick=args.quick,
        profile=not args.no_profile,
        twilio_steps=pick("twilio_steps"),
        acs_steps=pick("acs_steps"),
        phone_seconds=pick("phone_seconds"),
    )


def write(results: BenchResults, machine: Mapping[str, str], log: TextIO) -> None:
    """The page, the raw reports and the pictures."""
    out = results.cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    pictures = draw(results, out.parent, log)
    out.write_text(render(results, machine, pictures))
    runs = [run for step in results.steps for run in (step.direct, *step.bridges)]
    raw = {
        "machine": machine,
        "threshold_ms": results.cfg.threshold_ms,
        "steps": [
            {
                "scenario": s.scenario,
                "sessions": s.sessions,
                "within": s.within,
                "why": s.why,
            }
            for s in results.steps
        ],
        "runs": [
            {
                "path": r.path,
                "scenario": r.scenario,
                "sessions": r.sessions,
                "other_cores": r.other_cores,
                **r.report,
            }
            for r in runs
        ],
        "storm": None if results.storm is None else results.storm.report,
        "shutdown": None
        if results.shutdown is None
        else {
            "sessions_live": results.shutdown.sessions_live,
            "exit_s": results.shutdown.exit_s,
            "exit_code": results.shutdown.exit_code,
            "closed_1001": closed_1001(results.shutdown.run),
        },
        "profiles": [attrs.asdict(p) for p in results.profiles],
        "phone": [
            {"channel": r.path, "calls": r.sessions, "other_cores": r.other_cores, **r.report}
            for r in results.phone
        ],
    }
    out.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """``make bench``: run the benchmark and write the results page; exit 1 on failure."""
    cfg = parse_args(argv)
    # Stop cleanly on SIGTERM, and on Ctrl-C even when started with SIGINT ignored (``&``).
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = sys.stderr
    try:
        if cfg.conversation_steps:
            speech.utterances()  # fail now, not after the mirror ladder, if tools are missing
        cores = Cores.plan(cfg.pin)
        if cores.harness is not None:
            os.sched_setaffinity(0, cores.harness)  # the bench itself stays off the server's core
        bridges = [Bridge(THIS_TREE)]
        if cfg.baseline is not None:
            bridges.append(baseline_bridge(cfg.baseline))
        machine = machine_info(cores, bridges)
        with tempfile.TemporaryDirectory(prefix="voicebridge-bench-") as tmp:
            bench = _Bench(cfg, bridges, _Procs(Path(tmp)), cores, log)
            bench.say(f"{cores.describe()}; load average {machine['load average before']}")
            try:
                bench.run()
            finally:
                bench.procs.stop_all()
    except (BenchError, speech.SpeechToolsMissing) as exc:
        print(f"bench: {exc}", file=log)
        return 1
    except KeyboardInterrupt:
        print("bench: interrupted; every process it started was stopped", file=log)
        return 130
    machine = {**machine, "load average after": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    results = BenchResults(
        cfg, bench.steps, bench.storm, bench.shutdown, bench.profiles, phone=bench.phone
    )
    write(results, machine, log)
    bench.say(f"wrote {cfg.out}, {cfg.out.with_suffix('.json')} and the pictures")
    for target, measured, verdict in targets(results):
        print(f"bench: {target}: {measured} — {verdict.strip('*')}", file=log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
