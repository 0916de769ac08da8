"""UPSTREAM_PREFLIGHT: the upstream's credentials and the session's configuration are tried
once at start-up, against the emulator with the real SDK."""

from __future__ import annotations

import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import MakeClient, StartEmulator, make_settings, relay_settings
from voicebridge.app import create_app
from voicebridge.config import ConfigError, Settings
from voicebridge.emulator import RunningEmulator


def _with_key(emu: RunningEmulator, key: str, **env: str) -> Settings:
    settings = relay_settings(emu)
    return make_settings(
        VOICELIVE_BACKEND="azure",
        AZURE_OPENAI_ENDPOINT=emu.url,
        AZURE_OPENAI_KEY=key,
        AZURE_OPENAI_DEPLOYMENT=settings.azure_openai_deployment,
        **env,
    )


async def test_require_stops_start_up_on_a_refused_key(start_emu: StartEmulator) -> None:
    emu = await start_emu()
    settings = _with_key(emu, "wrong-key-7", UPSTREAM_PREFLIGHT="require")
    runner = web.AppRunner(create_app(settings))
    try:
        with pytest.raises(ConfigError) as stopped:
            await runner.setup()
    finally:
        await runner.cleanup()
    message = str(stopped.value)
    assert "UPSTREAM_PREFLIGHT=require" in message and "refused the API key" in message
    assert "wrong-key-7" not in message


async def test_warn_starts_but_reports_the_upstream_degraded(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    emu = await start_emu()
    with capture_logs() as logs:
        client = await make_client(_with_key(emu, "wrong-key-7", UPSTREAM_PREFLIGHT="warn"))
    health = await (await client.get("/health")).json()
    assert health["upstream"]["status"] == "degraded"
    [failed] = [e for e in logs if e["event"] == "app.preflight_failed"]
    assert "401" in failed["reason"] and "wrong-key-7" not in str(failed)


async def test_a_good_upstream_is_configured_once_and_left(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    emu = await start_emu()
    with capture_logs() as logs:
        client = await make_client(relay_settings(emu, UPSTREAM_PREFLIGHT="require"))
    assert [e["event"] for e in logs if e["event"].startswith("app.preflight")] == [
        "app.preflight_ok"
    ]
    config = emu.last_session_config()
    assert config is not None and config["turn_detection"]["type"] == "server_vad"
    assert emu.connections_accepted == 1
    await emu.wait_connections(0)
    health = await (await client.get("/health")).json()
    assert health["upstream"]["status"] == "ok"


def test_a_degraded_instance_that_refuses_calls_needs_the_probe() -> None:
    """With HEALTH_FAILS_WHEN_DEGRADED no call can prove the service back: the probe must."""
    with pytest.raises(ConfigError, match="UPSTREAM_PROBE_S: must be more than 0"):
        make_settings(HEALTH_FAILS_WHEN_DEGRADED="true", UPSTREAM_PROBE_S="0")
    make_settings(HEALTH_FAILS_WHEN_DEGRADED="false", UPSTREAM_PROBE_S="0")


def test_preflight_mode_is_checked() -> None:
    with pytest.raises(ConfigError, match="UPSTREAM_PREFLIGHT: must be one of off, warn, require"):
        make_settings(UPSTREAM_PREFLIGHT="sometimes")
