"""Shared fixtures: settings for tests, an app on the built-in emulator, a real server."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from voicebridge.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def make_settings(**overrides: str) -> Settings:
    """Settings from a dict of environment variables, as a user would write them."""
    env: dict[str, str] = {
        "AGENT_INSTRUCTIONS_FILE": str(ROOT / "agent_instructions.md"),
        "STATIC_DIR": str(ROOT / "static"),
        "APP_HOST": "127.0.0.1",
    }
    env.update(overrides)
    return Settings.from_environ(env)


def clean_environ(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The process environment without any voicebridge or Azure settings, for subprocesses."""
    drop = ("AZURE_", "VOICELIVE_", "VAD_", "APP_", "SESSION_", "CLIENT_TOKEN", "ADMIN_TOKEN")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


@pytest.fixture
def artifacts_dir() -> Iterator[Path]:
    path = ROOT / "tests" / "artifacts"
    path.mkdir(parents=True, exist_ok=True)
    yield path
