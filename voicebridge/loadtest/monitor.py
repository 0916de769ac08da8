"""CPU time and resident memory of a process, sampled with psutil.

Used for the server under test (``--server-pid``: CPU per session, RSS per session) and for
the load generator itself, whose CPU shows whether it could offer the load it was asked to.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import psutil  # type: ignore[import-untyped,unused-ignore]


class ProcessMonitor:
    """One process: CPU seconds over a window, and the peak of its RSS."""

    def __init__(self, pid: int | None = None) -> None:
        self.proc = psutil.Process(pid)
        self.pid: int = self.proc.pid
        self.rss_baseline: int = self.proc.memory_info().rss
        self.rss_peak = self.rss_baseline
        self.kernel_start = self.kernel_seconds()
        self.cpu_start = self.cpu_seconds()
        self.kernel_end, self.cpu_end = self.kernel_start, self.cpu_start
        self.alive = True

    def cpu_seconds(self) -> float:
        """User plus system CPU time so far."""
        times = self.proc.cpu_times()
        return float(times.user + times.system)

    def kernel_seconds(self) -> float:
        """System CPU time so far: the kernel working for it, socket calls mostly."""
        return float(self.proc.cpu_times().system)

    @property
    def cpu_used(self) -> float:
        """CPU seconds between ``start_window`` and ``end_window``."""
        return max(self.cpu_end - self.cpu_start, 0.0)

    @property
    def kernel_share(self) -> float | None:
        """The part of ``cpu_used`` spent in the kernel (0..1); None without any CPU used."""
        used = self.cpu_used
        return None if not used else max(self.kernel_end - self.kernel_start, 0.0) / used

    def sample(self) -> None:
        """Note the current RSS; a process that has gone away is not sampled again."""
        if not self.alive:
            return
        try:
            self.rss_peak = max(self.rss_peak, self.proc.memory_info().rss)
        except psutil.Error:
            self.alive = False

    def start_window(self) -> None:
        with contextlib.suppress(psutil.Error):
            self.kernel_start, self.cpu_start = self.kernel_seconds(), self.cpu_seconds()

    def end_window(self) -> None:
        self.sample()
        with contextlib.suppress(psutil.Error):
            self.kernel_end, self.cpu_end = self.kernel_seconds(), self.cpu_seconds()


async def sleep_until(deadline_ns: int) -> None:
    """Sleep until ``time.perf_counter_ns()`` reaches ``deadline_ns`` (at once if past)."""
    delay = deadline_ns - time.perf_counter_ns()
    if delay > 0:
        await asyncio.sleep(delay / 1e9)


async def end_windows_at(
    end_ns: int, me: ProcessMonitor, server: ProcessMonitor | None = None
) -> None:
    """At the end of streaming (``end_ns``, perf_counter): close the CPU windows."""
    await sleep_until(end_ns)
    if server is not None:
        server.end_window()
    me.end_window()
