"""Run ``python -m voicebridge serve`` as a real subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from tests.conftest import ROOT, clean_environ
from tests.redis_server import free_port


class ServerProcess:
    """One voicebridge server; its log goes to a file that failing tests can show."""

    def __init__(self, log_dir: Path, **env: str) -> None:
        self.port = free_port()
        cert = env.get("TLS_CERT_FILE")
        # With TLS_CERT_FILE (a self-signed certificate for 127.0.0.1), https and wss.
        self.ssl: ssl.SSLContext | None = ssl.create_default_context(cafile=cert) if cert else None
        scheme = "https" if cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.ws_url = f"{'wss' if cert else 'ws'}://127.0.0.1:{self.port}/ws/voice"
        self.log_path = log_dir / f"server-{self.port}.log"
        self.env = clean_environ(
            {
                "APP_HOST": "127.0.0.1",
                "APP_PORT": str(self.port),
                "LOG_FORMAT": "json",
                "AGENT_INSTRUCTIONS_FILE": str(ROOT / "agent_instructions.md"),
                "STATIC_DIR": str(ROOT / "static"),
                "CALL_STORE": str(log_dir / f"calls-{self.port}.sqlite3"),
                "CALL_SPOOL_FILE": str(log_dir / f"calls-{self.port}.spool.jsonl"),
                **env,
            }
        )
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout: float = 30.0) -> ServerProcess:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "voicebridge", "serve", "--env-file", os.devnull],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl or True)
        ) as http:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited early:\n{self.log()}")
                try:
                    async with http.get(f"{self.url}/health") as resp:
                        if resp.status == 200:
                            return self
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"server did not become healthy:\n{self.log()}")
                await asyncio.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None
        proc = self.proc
        return await asyncio.wait_for(asyncio.to_thread(proc.wait), timeout)

    async def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await self.wait(20)
        except TimeoutError:
            self.proc.kill()
            await self.wait(5)
