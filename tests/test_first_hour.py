"""Mistakes a new user makes get one clear message: typos in settings, a port in use."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, clean_environ
from voicebridge.config import known_settings, unknown_settings


def test_typos_are_named_with_the_setting_meant() -> None:
    """A misspelt setting, in .env or the environment, is named with a did-you-mean."""
    warnings = unknown_settings(
        ["VAD_THRESHHOLD", "LOG_LEVEL"],
        {"LOG_LEVLE": "DEBUG", "AZURE_OPENAI_KEYY": "k", "HOME": "/root"},
    )
    assert warnings == [
        "AZURE_OPENAI_KEYY is not a voicebridge setting and is ignored; "
        "did you mean AZURE_OPENAI_KEY?",
        "LOG_LEVLE is not a voicebridge setting and is ignored; did you mean LOG_LEVEL?",
        "VAD_THRESHHOLD is not a voicebridge setting and is ignored; did you mean VAD_THRESHOLD?",
    ]


def test_other_programs_variables_are_left_alone() -> None:
    """Unrelated environment variables (SESSION_MANAGER, PATH) are not warned about."""
    assert unknown_settings([], {"SESSION_MANAGER": "x", "PATH": "/bin", "APPDATA": "y"}) == []


def test_every_documented_setting_is_known() -> None:
    """Every setting in config/example.env is one voicebridge reads (and none is a typo)."""
    documented = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in (ROOT / "config" / "example.env").read_text().splitlines()
        if "=" in line
        and line.lstrip("# ").split("=", 1)[0].strip().isupper()
        and " " not in line.lstrip("# ").split("=", 1)[0].strip()
    }
    assert documented - known_settings() == set()


def test_unknown_setting_is_warned_at_start_up(tmp_path: Path) -> None:
    """`serve` logs app.unknown_setting for a typo in .env and still starts."""
    env_file = tmp_path / ".env"
    env_file.write_text("VAD_THRESHHOLD=0.9\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "voicebridge", "serve", "--env-file", str(env_file)],
            cwd=ROOT,
            env=clean_environ(
                {"APP_HOST": "127.0.0.1", "APP_PORT": str(port), "CALL_STORE": "off"}
            ),
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = result.stdout + result.stderr
    assert "did you mean VAD_THRESHOLD?" in output
    # The port is taken: one clear line with the fix, exit 2, no traceback.
    assert result.returncode == 2, output
    assert f"port {port} on 127.0.0.1 is already in use" in output
    assert f"make run APP_PORT={port + 1}" in output
    assert "Traceback" not in output
