"""Settings: defaults, every validation error at once, .env precedence, masking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_environ, make_settings
from voicebridge.config import ConfigError, Settings, load_settings

AZURE = {
    "AZURE_OPENAI_ENDPOINT": "https://res.services.ai.azure.com",
    "AZURE_OPENAI_KEY": "sk-very-secret-key-123",
    "AZURE_OPENAI_DEPLOYMENT": "gpt-realtime",
}


def test_defaults_use_the_emulator_without_azure_settings() -> None:
    """With no AZURE_* settings the backend is the emulator and defaults match the docs."""
    s = make_settings()
    assert s.voicelive_backend == "emulator"
    assert (s.voice_name, s.vad_threshold, s.vad_prefix_padding_ms) == ("alloy", 0.5, 300)
    assert (s.vad_silence_duration_ms, s.app_port, s.log_level) == (500, 8000, "INFO")
    assert s.enable_proactive_greeting is False
    assert s.session_max_duration_s < 30 * 60


def test_any_azure_setting_selects_azure_and_requires_the_rest() -> None:
    """Setting only the endpoint selects azure and names the two missing variables."""
    with pytest.raises(ConfigError) as info:
        make_settings(AZURE_OPENAI_ENDPOINT="https://x.example.com")
    text = str(info.value)
    assert "AZURE_OPENAI_KEY: required" in text
    assert "AZURE_OPENAI_DEPLOYMENT: required" in text


def test_every_problem_is_listed_at_once(tmp_path: Path) -> None:
    """Several bad values produce one error naming each variable and what is wrong."""
    with pytest.raises(ConfigError) as info:
        make_settings(
            VAD_THRESHOLD="loud",
            APP_PORT="70000",
            AGENT_INSTRUCTIONS_FILE=str(tmp_path / "missing.md"),
            VOICELIVE_BACKEND="azure",
            AZURE_OPENAI_ENDPOINT="ftp://nope",
            LOG_LEVEL="chatty",
        )
    problems = info.value.problems
    joined = "\n".join(problems)
    assert "VAD_THRESHOLD: expected a number, got 'loud'" in joined
    assert "APP_PORT: must be 1..65535, got 70000" in joined
    assert "AGENT_INSTRUCTIONS_FILE: cannot read" in joined
    assert "AZURE_OPENAI_KEY: required when the backend is azure" in joined
    assert "AZURE_OPENAI_DEPLOYMENT: required when the backend is azure" in joined
    assert "AZURE_OPENAI_ENDPOINT: must be an http(s) or ws(s) URL" in joined
    assert "LOG_LEVEL" in joined
    assert len(problems) == 7


@pytest.mark.parametrize("value", ["-0.1", "1.5"])
def test_threshold_outside_zero_to_one_is_rejected(value: str) -> None:
    """VAD_THRESHOLD must lie within 0..1."""
    with pytest.raises(ConfigError, match="VAD_THRESHOLD: must be between 0 and 1"):
        make_settings(VAD_THRESHOLD=value)


def test_bad_booleans_and_registry_are_named() -> None:
    """A non-boolean flag and a registry that is neither memory nor redis are reported."""
    with pytest.raises(ConfigError) as info:
        make_settings(ENABLE_PROACTIVE_GREETING="maybe", SESSION_REGISTRY="postgres://db")
    joined = "\n".join(info.value.problems)
    assert "ENABLE_PROACTIVE_GREETING: expected true or false" in joined
    assert "SESSION_REGISTRY: must be 'memory' or a redis:// URL" in joined


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    """A .env value applies unless the environment sets the same variable."""
    env_file = tmp_path / ".env"
    env_file.write_text("VOICE_NAME=en-US-AvaNeural\nAPP_PORT=9001\nVAD_THRESHOLD=0.7\n")
    environ = {
        "APP_PORT": "9002",
        "AGENT_INSTRUCTIONS_FILE": str(ROOT / "agent_instructions.md"),
    }
    s = load_settings(environ, env_file=env_file)
    assert s.voice_name == "en-US-AvaNeural"
    assert s.vad_threshold == 0.7
    assert s.app_port == 9002


def test_secrets_are_masked_in_repr_and_redacted_view() -> None:
    """Keys and tokens never appear in repr() or the settings shown at start-up."""
    s = make_settings(
        **AZURE,
        CLIENT_TOKEN="client-secret-xyz",
        ADMIN_TOKEN="admin-secret-xyz",
        SESSION_REGISTRY="redis://:redis-pass-xyz@127.0.0.1:6379/0",
    )
    shown = repr(s) + repr(s.redacted())
    for secret in (
        "sk-very-secret-key-123",
        "client-secret-xyz",
        "admin-secret-xyz",
        "redis-pass-xyz",
    ):
        assert secret not in shown
    assert s.redacted()["azure_openai_key"] == "***"
    assert s.redacted()["session_registry"] == "redis://:***@127.0.0.1:6379/0"


def test_serve_with_a_bad_setting_exits_2_before_binding(tmp_path: Path) -> None:
    """`python -m voicebridge serve` with bad settings prints every problem and exits 2."""
    env = clean_environ(
        {
            "VAD_THRESHOLD": "2",
            "APP_PORT": "0",
            "AZURE_OPENAI_ENDPOINT": "https://res.example.com",
            "AZURE_OPENAI_KEY": "sk-leak-check-987",
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "voicebridge", "serve", "--env-file", str(tmp_path / "none")],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "VAD_THRESHOLD: must be between 0 and 1" in proc.stderr
    assert "APP_PORT: must be 1..65535" in proc.stderr
    assert "AZURE_OPENAI_DEPLOYMENT: required" in proc.stderr
    assert "sk-leak-check-987" not in proc.stderr + proc.stdout


def test_example_env_documents_every_setting() -> None:
    """config/example.env names every setting the code reads."""
    text = (ROOT / "config" / "example.env").read_text()
    import attrs

    for field in attrs.fields(Settings):
        assert field.name.upper() in text, field.name
