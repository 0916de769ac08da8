"""Settings: defaults, every validation error at once, .env precedence, masking."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_environ, make_settings
from voicebridge.config import ConfigError, Settings, load_settings, mask_url

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
    """The endpoint alone selects azure with Entra ID and names the missing model (and key)."""
    with pytest.raises(ConfigError) as info:
        make_settings(AZURE_OPENAI_ENDPOINT="https://x.example.com")
    assert info.value.problems == [
        "AZURE_OPENAI_DEPLOYMENT: required when the backend is azure (the Voice Live model, "
        "e.g. gpt-realtime), unless VOICELIVE_AGENT_NAME names an agent"
    ]
    with pytest.raises(ConfigError) as info:
        make_settings(AZURE_OPENAI_ENDPOINT="https://x.example.com", AZURE_AUTH="key")
    text = str(info.value)
    assert "AZURE_OPENAI_KEY: required with AZURE_AUTH=key" in text
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
    assert "AZURE_OPENAI_DEPLOYMENT: required when the backend is azure" in joined
    assert "AZURE_OPENAI_ENDPOINT: must be an http(s) or ws(s) URL" in joined
    assert "LOG_LEVEL" in joined
    assert len(problems) == 6


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

    from voicebridge.calls.settings import VARIABLES
    from voicebridge.phone.settings import VARIABLES as PHONE_VARIABLES

    for field in attrs.fields(Settings):
        if field.name not in ("calls", "phone"):  # their settings are checked below
            assert field.name.upper() in text, field.name
    for name in [*VARIABLES, *PHONE_VARIABLES]:
        assert name in text, name


def test_relay_and_page_settings_have_documented_defaults() -> None:
    """The continuity, frame-rate, start-up and caller-notice settings default as documented."""
    s = make_settings()
    assert s.max_frames_per_s == 200.0
    assert s.session_start_timeout_s == 20.0
    assert (s.upstream_reconnect_s, s.upstream_rotate_s, s.upstream_heartbeat_s) == (15, 0, 5)
    assert (s.reconnect_hold_audio_ms, s.conversation_max_chars) == (5000, 20000)
    assert s.caller_notice == ""
    assert (s.max_connections, s.request_timeout_s, s.max_sessions_per_client) == (1000, 5, 10)
    assert s.allowed_hosts == ()


def test_relay_and_page_settings_are_read_and_typed() -> None:
    """Each new setting is read from its variable and converted to its type."""
    s = make_settings(
        MAX_FRAMES_PER_S="120.5",
        SESSION_START_TIMEOUT_S="7",
        UPSTREAM_RECONNECT_S="0",
        UPSTREAM_ROTATE_S="600",
        RECONNECT_HOLD_AUDIO_MS="2500",
        CONVERSATION_MAX_CHARS="0",
        UPSTREAM_HEARTBEAT_S="2.5",
        CALLER_NOTICE="You are talking to an AI assistant.",
        MAX_CONNECTIONS="64",
        REQUEST_TIMEOUT_S="1.5",
        MAX_SESSIONS_PER_CLIENT="0",
        ALLOWED_HOSTS="Voice.Example.com., 10.0.0.5:8000, [2001:db8::1]",
    )
    assert s.max_frames_per_s == 120.5
    assert s.session_start_timeout_s == 7.0
    assert (s.upstream_reconnect_s, s.upstream_rotate_s, s.upstream_heartbeat_s) == (0, 600, 2.5)
    assert (s.reconnect_hold_audio_ms, s.conversation_max_chars) == (2500, 0)
    assert isinstance(s.reconnect_hold_audio_ms, int)
    assert s.caller_notice == "You are talking to an AI assistant."
    assert (s.max_connections, s.request_timeout_s, s.max_sessions_per_client) == (64, 1.5, 0)
    assert s.allowed_hosts == ("voice.example.com", "10.0.0.5", "2001:db8::1")


def test_bad_new_settings_are_all_listed() -> None:
    """Out-of-range values of the new settings are each named in one ConfigError."""
    with pytest.raises(ConfigError) as info:
        make_settings(
            MAX_FRAMES_PER_S="0",
            SESSION_START_TIMEOUT_S="-1",
            UPSTREAM_RECONNECT_S="-1",
            UPSTREAM_ROTATE_S="-5",
            RECONNECT_HOLD_AUDIO_MS="lots",
            CONVERSATION_MAX_CHARS="-1",
            UPSTREAM_HEARTBEAT_S="0",
            CALLER_NOTICE="x" * 501,
            MAX_CONNECTIONS="0",
            REQUEST_TIMEOUT_S="0",
            MAX_SESSIONS_PER_CLIENT="-1",
            ALLOWED_HOSTS="https://voice.example.com/",
        )
    joined = "\n".join(info.value.problems)
    for expected in (
        "MAX_FRAMES_PER_S: must be more than 0",
        "SESSION_START_TIMEOUT_S: must be more than 0",
        "UPSTREAM_RECONNECT_S: must be 0 or more",
        "UPSTREAM_ROTATE_S: must be 0 or more",
        "RECONNECT_HOLD_AUDIO_MS: expected a whole number, got 'lots'",
        "CONVERSATION_MAX_CHARS: must be 0 or more",
        "UPSTREAM_HEARTBEAT_S: must be more than 0",
        "CALLER_NOTICE: must be at most 500 characters",
        "MAX_CONNECTIONS: must be more than 0",
        "REQUEST_TIMEOUT_S: must be more than 0",
        "MAX_SESSIONS_PER_CLIENT: must be 0 or more",
        "ALLOWED_HOSTS: expected host names",
    ):
        assert expected in joined
    assert len(info.value.problems) == 12


@pytest.mark.parametrize(
    ("app_host", "allowed", "names"),
    [
        ("0.0.0.0", "", {"localhost", "127.0.0.1", "::1"}),
        ("::", "", {"localhost", "127.0.0.1", "::1"}),
        ("voice.example.com", "", {"localhost", "127.0.0.1", "::1", "voice.example.com"}),
        ("10.1.2.3", "", {"localhost", "127.0.0.1", "::1", "10.1.2.3"}),
        ("0.0.0.0", "voice.example.com", {"voice.example.com"}),
        ("0.0.0.0", "*", {"*"}),
    ],
)
def test_allowed_host_names_default_to_loopback_and_the_bound_name(
    app_host: str, allowed: str, names: set[str]
) -> None:
    """Without ALLOWED_HOSTS the loopback names and a specific APP_HOST are allowed."""
    assert make_settings(APP_HOST=app_host, ALLOWED_HOSTS=allowed).host_names == names


def test_client_token_may_list_one_token_per_client() -> None:
    """CLIENT_TOKEN holds one token or several comma-separated ones."""
    assert make_settings(CLIENT_TOKEN="abc").client_tokens == ("abc",)
    assert make_settings(CLIENT_TOKEN="abc, def,").client_tokens == ("abc", "def")
    assert make_settings().client_tokens == ()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:pw-123@res.example.com/", "https://user:***@res.example.com/"),
        ("wss://tok-123@res.example.com", "wss://***@res.example.com"),
        (
            "https://res.example.com/?api-key=k-123&api-version=1",
            "https://res.example.com/?api-key=%2A%2A%2A&api-version=1",
        ),
        ("https://res.example.com/?sig=s-123#frag", "https://res.example.com/?sig=%2A%2A%2A"),
        (
            "https://res.example.com/?access_token=t-123",
            "https://res.example.com/?access_token=%2A%2A%2A",
        ),
        ("https://res.example.com", "https://res.example.com"),
    ],
)
def test_mask_url_hides_every_credential(url: str, shown: str) -> None:
    """A password, a bare userinfo and credential-named query values are masked."""
    assert mask_url(url) == shown


def test_endpoint_credentials_are_masked_in_the_redacted_view() -> None:
    """Credentials inside AZURE_OPENAI_ENDPOINT never reach the settings shown at start-up."""
    s = make_settings(
        **{**AZURE, "AZURE_OPENAI_ENDPOINT": "https://u:pw-xyz@res.example.com/?api-key=k-xyz"}
    )
    shown = repr(s) + repr(s.redacted())
    assert "pw-xyz" not in shown
    assert "k-xyz" not in shown
    assert (
        s.redacted()["azure_openai_endpoint"] == "https://u:***@res.example.com/?api-key=%2A%2A%2A"
    )
