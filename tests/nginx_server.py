"""A throwaway real `nginx` for tests, and a self-signed certificate for it.

    cert, key = make_self_signed_cert(tmp_path, "localhost")
    nginx = NginxServer(tmp_path / "nginx", site_conf, port=tls_port).start()
    try:
        ... https://localhost:{tls_port}/ ...
    finally:
        nginx.stop()

The site configuration goes inside a minimal ``nginx.conf`` of its own (``http {}``
context, as ``/etc/nginx/sites-enabled`` files are), with the pid file, logs and temporary
directories under the given prefix, so nginx runs as whoever runs the tests, in the
foreground (``daemon off``), and leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0


def nginx_binary() -> str | None:
    """The nginx executable (on PATH, or Debian's /usr/sbin/nginx), or None."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def stable_port() -> int:
    """A free loopback port below the kernel's ephemeral range, which no outgoing
    connection (and no bind to port 0) can take between choosing it and binding it, nor
    while a server restarts on it: as 8001 and 8002 are in production."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(100):
        port = random.randrange(10000, max(low, 10001))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below the ephemeral range")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class NginxServer:
    """One nginx master (and its workers) serving ``site_conf``; ``port`` is one of the
    ports the site listens on, awaited at start."""

    def __init__(self, prefix: Path, site_conf: str, *, port: int, workers: int = 2) -> None:
        found = nginx_binary()
        if found is None:
            raise RuntimeError("nginx not found: install it (apt-get install nginx)")
        self.executable = found
        self.prefix = prefix
        self.port = port
        self.error_log_path = prefix / "error.log"
        self.conf_path = prefix / "nginx.conf"
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "voicebridge.conf").write_text(site_conf)
        temp = {
            kind: prefix / "temp" / kind for kind in ("client", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        for path in temp.values():
            path.mkdir(parents=True, exist_ok=True)
        # As root, nginx would run its workers as "nobody", who cannot enter tmp_path.
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""
        self.conf_path.write_text(
            f"""
{user}
daemon off;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {self.error_log_path} notice;
events {{ worker_connections 512; }}
http {{
    client_body_temp_path {temp["client"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    access_log {prefix / "default-access.log"};
    include {prefix / "voicebridge.conf"};
}}
"""
        )
        self._proc: subprocess.Popen[bytes] | None = None

    def _command(self, *extra: str) -> list[str]:
        # -e: the log for what nginx says before it has read error_log from the file.
        return [
            self.executable,
            "-p",
            str(self.prefix),
            "-c",
            str(self.conf_path),
            "-e",
            str(self.error_log_path),
            *extra,
        ]

    def check(self) -> None:
        """``nginx -t``: raise with nginx's own words if the configuration is invalid."""
        result = subprocess.run(self._command("-t"), capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"nginx -t failed:\n{result.stderr}")

    def start(self) -> NginxServer:
        """Check the configuration, start nginx, return once it accepts on ``port``."""
        self.check()
        # A session of its own, so a stuck nginx can be killed with its workers.
        self._proc = subprocess.Popen(
            self._command(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _accepts(self.port):
                return self
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nginx did not start on port {self.port}:\n{self.error_log()}")

    def error_log(self) -> str:
        """The end of nginx's error log."""
        with contextlib.suppress(OSError):
            return self.error_log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        """Stop nginx and wait for it: SIGTERM (nginx's fast shutdown: a graceful SIGQUIT
        would wait for open WebSockets), then SIGKILL to its process group if it lingers."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            # The workers too: they outlive a killed master.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
