"""Shared fixtures: settings for tests, an app on the built-in emulator, a real server."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from voicebridge.app import create_app
from voicebridge.config import Settings
from voicebridge.emulator import EmulatorOptions, RunningEmulator, start_emulator

ROOT = Path(__file__).resolve().parent.parent


def make_settings(**overrides: str) -> Settings:
    """Settings from a dict of environment variables, as a user would write them."""
    env: dict[str, str] = {
        "AGENT_INSTRUCTIONS_FILE": str(ROOT / "agent_instructions.md"),
        "STATIC_DIR": str(ROOT / "static"),
        "APP_HOST": "127.0.0.1",
        "CALL_STORE": "off",  # tests that keep records say where
    }
    env.update(overrides)
    return Settings.from_environ(env)


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment without any voicebridge or Azure settings, for subprocesses."""
    drop = (
        "AZURE_",
        "VOICELIVE_",
        "VAD_",
        "APP_",
        "SESSION_",
        "CLIENT_TOKEN",
        "ADMIN_TOKEN",
        "CALL_",
        "TOOLS_",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


@pytest.fixture
def artifacts_dir() -> Iterator[Path]:
    path = ROOT / "tests" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    yield path


KEY = "relay-test-key-000"

StartEmulator = Callable[..., Awaitable[RunningEmulator]]
MakeClient = Callable[..., Awaitable[TestClient[Any, Any]]]


@pytest.fixture
async def start_emu() -> AsyncIterator[StartEmulator]:
    running: list[RunningEmulator] = []

    async def start(**options: Any) -> RunningEmulator:
        options.setdefault("realtime", False)
        emu = await start_emulator(EmulatorOptions(api_key=KEY, **options), "127.0.0.1", 0)
        running.append(emu)
        return emu

    yield start
    for emu in running:
        await emu.close()


def relay_settings(emu: RunningEmulator, **overrides: str) -> Settings:
    return make_settings(
        VOICELIVE_BACKEND="azure",
        AZURE_OPENAI_ENDPOINT=emu.url,
        AZURE_OPENAI_KEY=KEY,
        AZURE_OPENAI_DEPLOYMENT="gpt-realtime-test",
        UPSTREAM_CONNECT_TIMEOUT_S="3",
        **overrides,
    )


@pytest.fixture
async def make_client(aiohttp_client: Any) -> MakeClient:
    async def make(settings: Settings) -> TestClient[Any, Any]:
        client: TestClient[Any, Any] = await aiohttp_client(create_app(settings))
        return client

    return make


# The in-process relay tests run on both the default loop and uvloop (which `serve` uses):
# the two differ where it matters to the relay, e.g. a transport's write-buffer marks.
_BOTH_LOOPS = ("test_relay.py", "test_limits.py")


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    if item.path.name not in _BOTH_LOOPS:
        return {"asyncio": asyncio.new_event_loop}
    import uvloop

    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
