"""A throwaway real `redis-server` for tests: loopback only, a free port, a temporary
directory, no persistence; stoppable, killable and restartable on the same port.

    server = RedisServer().start()
    try:
        ... server.url ...
        server.stop()      # Redis goes away
        server.start()     # and comes back, empty, on the same port
        server.pause()     # Redis goes silent (SIGSTOP): connections stay open, no replies
        server.resume()    # and answers again, data intact
    finally:
        server.stop()

Also a context manager (``with RedisServer() as server: ...``).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


def free_port() -> int:
    """A TCP port nobody on 127.0.0.1 is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One `redis-server` process; `port=None` picks a free port at the first `start()`
    and keeps it for every restart."""

    def __init__(self, port: int | None = None, *, executable: str | None = None) -> None:
        found = executable or shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(found).exists():
            raise RuntimeError("redis-server not found: install it (apt-get install redis-server)")
        self.executable = found
        self.port = port
        self._fixed_port = port is not None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        if self.port is None:
            raise RuntimeError("RedisServer not started yet")
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> RedisServer:
        """Start the server and return once it answers PING."""
        if self.running:
            return self
        if self._dir is None:
            self._dir = tempfile.TemporaryDirectory(prefix="vb-redis-")
        # A port picked by free_port() can be taken by someone else before redis-server
        # binds it; pick another then, unless the caller (or a restart) fixed the port.
        attempts = 1 if self._fixed_port else 3
        for attempt in range(attempts):
            if self.port is None or (attempt and not self._fixed_port):
                self.port = free_port()
            try:
                self._spawn()
            except RuntimeError:
                if attempt == attempts - 1:
                    raise
            else:
                # Restarts reuse this port: the clients under test reconnect to it.
                self._fixed_port = True
                return self
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        assert self._dir is not None
        assert self.port is not None
        log_path = Path(self._dir.name) / f"redis-{self.port}.log"
        # fmt: off
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self._dir.name,
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
            "--logfile", str(log_path),
        ]
        # fmt: on
        self._proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _answers_ping(self.port):
                return
            time.sleep(0.02)
        self._reap(signal.SIGKILL)
        log = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
        raise RuntimeError(f"redis-server on port {self.port} did not start:\n{log}")

    def _reap(self, sig: signal.Signals) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        paused, self._paused = self._paused, False
        if proc.poll() is None:
            proc.send_signal(sig)
            if paused:
                # A stopped process acts on SIGTERM only once it runs again.
                proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()

    def stop(self) -> None:
        """Shut the server down (SIGTERM, SIGKILL if it lingers) and wait for it."""
        self._reap(signal.SIGTERM)

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        self._reap(signal.SIGKILL)

    @property
    def paused(self) -> bool:
        """Whether the process is stopped by `pause()`."""
        return self._paused and self.running

    def pause(self) -> None:
        """Stop the process (SIGSTOP) without closing anything: connections stay open and
        the kernel still accepts new ones, but nothing is answered, as with a hung server
        or a network that silently drops packets. Undo with `resume()`."""
        if self._proc is None or not self.running:
            raise RuntimeError("redis-server is not running")
        self._proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Let a paused process run again (SIGCONT); it answers what queued up meanwhile."""
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
        self._paused = False

    def restart(self) -> RedisServer:
        """Stop and start again on the same port (with an empty dataset)."""
        self.stop()
        return self.start()

    def cleanup(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        if self._dir is not None:
            with contextlib.suppress(OSError):
                self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
