"""A throwaway real PostgreSQL cluster for tests: Debian's ``postgresql`` package, a
temporary data directory, loopback only, a free port, a password; stoppable, restartable
on the same port, and pausable (SIGSTOP) to act as a database that hangs.

    server = PostgresServer().start()
    try:
        url = server.create_database("calls_1")   # postgresql://vb:...@127.0.0.1:PORT/calls_1
        server.stop()      # pg_ctl stop -m fast: the database goes away
        server.start()     # and comes back on the same port, data intact
        server.pause()     # every server process stopped: connections hang, nothing answers
        server.resume()
    finally:
        server.cleanup()

``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` system
user the Debian package creates (the data directory is handed to it).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

import psutil

START_TIMEOUT_S = 30.0
USER = "vb"


def free_port() -> int:
    """A TCP port nobody on 127.0.0.1 is listening on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=_version_key)
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
            "install them (apt-get install postgresql)"
        )
    return Path(found[-1]).parent


def _version_key(path: str) -> int:
    try:
        return int(Path(path).parent.parent.name)
    except ValueError:
        return 0


class PostgresServer:
    """One PostgreSQL cluster; the port is picked at the first ``start()`` and kept."""

    def __init__(self) -> None:
        self.bin = _bin_dir()
        self.port: int | None = None
        self.password = secrets.token_urlsafe(12)
        self._dir: Path | None = None
        self._run_as: pwd.struct_passwd | None = None
        if os.geteuid() == 0:
            try:
                self._run_as = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root and there is no 'postgres' user to run the cluster as "
                    "(initdb refuses root): install Debian's postgresql package"
                ) from None
        self._paused: list[psutil.Process] = []

    # -- paths and commands -----------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self._dir is not None
        return self._dir / "data"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        kwargs: dict[str, Any] = {}
        if self._run_as is not None:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        env = {"PATH": f"{self.bin}:/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
        env["PGPASSWORD"] = self.password
        return subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            check=check,
            env=env,
            cwd=str(self._dir),
            stdin=subprocess.DEVNULL,
            timeout=START_TIMEOUT_S * 2,
            **kwargs,
        )

    def _init(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="vb-pg-"))
        pwfile = self._dir / "pw"
        pwfile.write_text(self.password + "\n")
        if self._run_as is not None:
            os.chown(self._dir, self._run_as.pw_uid, self._run_as.pw_gid)
            os.chown(pwfile, self._run_as.pw_uid, self._run_as.pw_gid)
        pwfile.chmod(0o600)
        # fmt: off
        done = self._run(
            "initdb", "-D", str(self.data_dir), "-U", USER, f"--pwfile={pwfile}",
            "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
            "--no-sync", "--no-instructions", check=False,
        )
        # fmt: on
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        pwfile.unlink()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The ``postgres`` database: ``postgresql://vb:PASSWORD@127.0.0.1:PORT/postgres``."""
        return self.url_for("postgres")

    def url_for(self, database: str) -> str:
        if self.port is None:
            raise RuntimeError("PostgresServer not started yet")
        return f"postgresql://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._dir is not None and self._status() == 0

    def _status(self) -> int:
        return self._run("pg_ctl", "status", "-D", str(self.data_dir), check=False).returncode

    def start(self) -> PostgresServer:
        """Start the cluster (creating it the first time) and return once it accepts
        connections."""
        if self._dir is None:
            self._init()
        if self.running:
            return self
        fixed = self.port is not None
        for attempt in range(1 if fixed else 3):
            if not fixed:
                self.port = free_port()
            # fmt: off
            options = (
                f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self._dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=50 -c shared_buffers=16MB"
            )
            done = self._run(
                "pg_ctl", "start", "-D", str(self.data_dir), "-w", "-t", str(int(START_TIMEOUT_S)),
                "-l", str(self._log_path), "-o", options, check=False,
            )
            # fmt: on
            if done.returncode == 0:
                return self
            if attempt == (0 if fixed else 2):
                raise RuntimeError(
                    f"PostgreSQL on port {self.port} did not start:\n{done.stderr}\n{self.log()}"
                )
        raise AssertionError("unreachable")

    @property
    def _log_path(self) -> Path:
        assert self._dir is not None
        return self._dir / "server.log"

    def log(self) -> str:
        """The last part of the server's log."""
        path = self._log_path
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        """``pg_ctl stop -m fast``: clients are disconnected and the server exits."""
        if self._dir is None:
            return
        self.resume()
        if self.running:
            self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w")

    def _processes(self) -> list[psutil.Process]:
        pid_file = self.data_dir / "postmaster.pid"
        pid = int(pid_file.read_text().split()[0])
        main = psutil.Process(pid)
        return [main, *main.children(recursive=True)]

    def pause(self) -> None:
        """SIGSTOP the postmaster and every backend: open connections stay open, new ones
        are accepted by the kernel, and nothing is answered, as with a hung database or a
        network that drops packets. Undo with ``resume()``."""
        if not self.running:
            raise RuntimeError("PostgreSQL is not running")
        processes = self._processes()
        for process in processes:
            process.send_signal(signal.SIGSTOP)
        self._paused = processes

    def resume(self) -> None:
        """SIGCONT what ``pause()`` stopped."""
        paused, self._paused = self._paused, []
        for process in paused:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGCONT)

    # -- databases ----------------------------------------------------------------------

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run one SQL command as the superuser over the local socket; its output."""
        assert self._dir is not None and self.port is not None
        # fmt: off
        done = self._run(
            "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self._dir),
            "-p", str(self.port), "-U", USER, "-d", database, "-c", sql, check=False,
        )
        # fmt: on
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        """A new empty database; its URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def cleanup(self) -> None:
        """Stop the cluster and remove its directory."""
        with contextlib.suppress(Exception):
            self.stop()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
