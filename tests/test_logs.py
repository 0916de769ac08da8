"""The logging pipeline: lines are written off the logging thread, and LimitedLog."""

from __future__ import annotations

import json
import logging
import threading
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from voicebridge import logs
from voicebridge.logs import LimitedLog, configure_logging, stop_logging

BLOCK_LIMIT_S = 10.0  # a blocked write gives up after this, so a broken pipeline fails, not hangs


class BlockedStream:
    """A text stream whose writes wait until the test releases it."""

    def __init__(self) -> None:
        self.entered = threading.Event()  # a write has started (and is waiting)
        self.release = threading.Event()
        self.parts: list[str] = []

    def write(self, text: str) -> int:
        self.entered.set()
        self.release.wait(BLOCK_LIMIT_S)
        self.parts.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in "".join(self.parts).splitlines() if line]


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the root logger, the quiet loggers and structlog back as they were."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = {name: logging.getLogger(name).level for name in logs._QUIET_LOGGERS}
    config = structlog.get_config()
    yield
    stop_logging()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, value in quiet.items():
        logging.getLogger(name).setLevel(value)
    structlog.configure(**config)
    structlog.contextvars.clear_contextvars()


@pytest.mark.usefixtures("restore_logging")
def test_log_calls_return_while_the_stream_is_blocked() -> None:
    """A log call returns at once while stderr is stuck; its line, with the contextvars
    bound where it was logged, is written once the stream moves again."""
    stream = BlockedStream()
    configure_logging("INFO", "json", stream=stream)
    log = structlog.get_logger("voicebridge.test")
    log.info("test.first")
    assert stream.entered.wait(BLOCK_LIMIT_S), "the writer thread never reached the stream"

    structlog.contextvars.bind_contextvars(session_id="sess-42")
    started = time.monotonic()
    log.info("session.started", frames=3)
    logging.getLogger("aiohttp.server").warning("a stdlib line")
    elapsed = time.monotonic() - started
    structlog.contextvars.clear_contextvars()

    assert elapsed < BLOCK_LIMIT_S / 4, f"logging waited {elapsed:.2f} s for the stream"
    assert stream.parts == [], "a line was written while the stream was blocked"

    stream.release.set()
    stop_logging()  # joins the writer thread: every queued line is out
    lines = stream.lines()
    assert [line["event"] for line in lines] == ["test.first", "session.started", "a stdlib line"]
    assert "session_id" not in lines[0]
    assert lines[1]["session_id"] == "sess-42"
    assert lines[1]["frames"] == 3
    assert lines[2]["session_id"] == "sess-42"
    assert lines[2]["logger"] == "aiohttp.server"


@pytest.mark.usefixtures("restore_logging")
def test_configure_twice_and_log_after_stop() -> None:
    """Configuring again flushes the old writer; after stop_logging lines go out directly."""
    first, second = BlockedStream(), BlockedStream()
    first.release.set()
    second.release.set()
    configure_logging("INFO", "json", stream=first)
    structlog.get_logger("voicebridge.test").info("test.one")
    configure_logging("INFO", "json", stream=second)
    assert [line["event"] for line in first.lines()] == ["test.one"]

    stop_logging()
    stop_logging()  # a second stop is harmless
    logging.getLogger("voicebridge.test").warning("after stop")
    assert [line["event"] for line in second.lines()] == ["after stop"]
    assert first.lines()[-1]["event"] == "test.one"


class RecordingLogger:
    """Stands in for a structlog logger: keeps every warning call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.calls.append((event, fields))


def test_limited_log_suppresses_repeats_and_reports_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first event is logged, repeats within the interval are counted, and the count
    rides on the next line logged after the interval."""
    now = [100.0]
    monkeypatch.setattr(logs, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    limited = LimitedLog(interval_s=1.0)
    logger = RecordingLogger()

    assert limited.warning(logger, "registry.write_failed", error="down")
    for _ in range(3):
        now[0] += 0.2
        assert not limited.warning(logger, "registry.write_failed", error="down")
    assert limited.warning(logger, "metrics.publish_failed")  # other events are separate
    assert len(logger.calls) == 2

    now[0] += 1.0
    assert limited.warning(logger, "registry.write_failed", error="still down")
    now[0] += 1.0
    assert limited.warning(logger, "registry.write_failed", error="again")
    assert logger.calls == [
        ("registry.write_failed", {"error": "down"}),
        ("metrics.publish_failed", {}),
        ("registry.write_failed", {"error": "still down", "suppressed": 3}),
        ("registry.write_failed", {"error": "again"}),
    ]
