"""HTTPS and WSS served directly (TLS_CERT_FILE / TLS_KEY_FILE), with a certificate made by
openssl at test time; a bad pair stops start-up with one clear line."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.certs import make_self_signed_cert
from tests.conftest import ROOT, clean_environ
from tests.server_process import ServerProcess
from tests.voice_client import VoiceSocket

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


async def test_https_and_wss_are_served_with_tls_files(tmp_path: Path, artifacts_dir: Path) -> None:
    cert, key = make_self_signed_cert(tmp_path, "localhost")
    server = ServerProcess(artifacts_dir, TLS_CERT_FILE=str(cert), TLS_KEY_FILE=str(key))
    await server.start()
    try:
        assert server.url.startswith("https://")
        connector = aiohttp.TCPConnector(ssl=server.ssl)
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.get(f"{server.url}/health") as resp:
                assert resp.status == 200
            voice = VoiceSocket(await http.ws_connect(server.ws_url))
            started = await voice.until_type("session_started")
            assert started["backend"] == "emulator"
            await voice.ws.send_json({"type": "text", "text": "hello over TLS"})
            await voice.until_type("agent_transcript")
            await voice.ws.close()
        # Plain HTTP to a TLS port gets no answer it could mistake for the service.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{server.port}/health") as resp:
                    await resp.read()
        assert '"tls": true' in server.log_path.read_text()
    finally:
        await server.stop()


@pytest.mark.parametrize("problem", ["mismatch", "missing_key", "not_pem"])
def test_a_bad_tls_pair_stops_start_up_with_one_clear_line(tmp_path: Path, problem: str) -> None:
    cert, key = make_self_signed_cert(tmp_path, "a")
    _other_cert, other_key = make_self_signed_cert(tmp_path, "b")
    env = {"TLS_CERT_FILE": str(cert), "TLS_KEY_FILE": str(other_key)}
    expected = "the private key does not belong to the certificate"
    if problem == "missing_key":
        env = {"TLS_CERT_FILE": str(cert)}
        expected = "TLS_KEY_FILE: required with TLS_CERT_FILE"
    elif problem == "not_pem":
        garbage = tmp_path / "garbage.pem"
        garbage.write_text("not a certificate")
        env = {"TLS_CERT_FILE": str(garbage), "TLS_KEY_FILE": str(key)}
        expected = "not a PEM certificate"
    result = subprocess.run(
        [sys.executable, "-m", "voicebridge", "serve", "--env-file", "/dev/null"],
        cwd=ROOT,
        env=clean_environ({"APP_HOST": "127.0.0.1", "APP_PORT": "1", "CALL_STORE": "off", **env}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert "PRIVATE KEY" not in result.stderr + result.stdout
