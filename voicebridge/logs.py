"""One logging pipeline for the whole process.

structlog renders for humans (console) or machines (JSON); stdlib loggers (aiohttp,
azure, asyncio) are routed through the same processors, so every line has the same shape
and carries the ``session_id`` bound with contextvars by the session that logged it.

Lines are rendered on the thread that logs (the event loop, where the contextvars live)
and written to the stream by a :class:`logging.handlers.QueueListener` thread, so a slow
or blocked stderr never stalls a call (Home Assistant ``homeassistant/util/logging.py``).
"""

from __future__ import annotations

import atexit
import copy
import logging
import logging.handlers
import queue
import sys
import time
from typing import IO, Any

import structlog

_QUIET_LOGGERS = {
    # The SDK logs every websocket frame at DEBUG, and the full URL at DEBUG: never useful
    # at INFO, and the volume would dominate the relay's cost.
    "azure": logging.WARNING,
    "azure.ai.voicelive": logging.WARNING,
    "aiohttp.access": logging.WARNING,
    # Its handshake warnings quote the client's offered subprotocols, which may hold a token.
    "aiohttp.websocket": logging.ERROR,
}


class _RenderingQueueHandler(logging.handlers.QueueHandler):
    """Renders a record to its final line, then queues the line for the writer thread.

    Rendering here rather than in the listener matters: structlog's ``ProcessorFormatter``
    merges the contextvars (``session_id``) of whichever thread runs it, and only the
    thread that logged has the right ones.
    """

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(queue.SimpleQueue())
        self.stream = stream
        self.listener: logging.handlers.QueueListener | None = None

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        line = self.format(record)
        # A copy, as the stdlib's prepare does (bpo-35726); everything the line already
        # holds is cleared so the writer's plain formatter does not append it again.
        record = copy.copy(record)
        record.msg = line
        record.message = line
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return record

    def handle(self, record: logging.LogRecord) -> bool:
        # Handler.handle takes the handler's lock around emit; SimpleQueue is thread-safe
        # already, so skip it (as Home Assistant's handler does).
        accepted = bool(self.filter(record))
        if accepted:
            self.emit(record)
        return accepted

    def start(self) -> None:
        """Start the thread that writes the queued lines to the stream."""
        writer = logging.StreamHandler(self.stream)
        writer.setFormatter(logging.Formatter("%(message)s"))
        self.listener = logging.handlers.QueueListener(self.queue, writer)
        self.listener.start()

    def stop(self) -> None:
        """Write out every queued line and stop the writer thread."""
        if self.listener is not None:
            self.listener.stop()  # enqueues a sentinel and joins: the queue is drained
            self.listener = None

    def direct(self) -> logging.Handler:
        """A handler that renders the same lines and writes them on the caller's thread."""
        direct = logging.StreamHandler(self.stream)
        direct.setFormatter(self.formatter)
        direct.setLevel(self.level)
        return direct


def configure_logging(
    level: str = "INFO", fmt: str = "console", *, stream: IO[str] | None = None
) -> None:
    """Configure structlog and the stdlib root logger; safe to call more than once.

    ``stream`` (stderr by default) is written by a background thread; any previous
    configuration's thread is flushed and stopped first. :func:`stop_logging` (also run at
    exit) flushes the last lines.
    """
    stop_logging()
    out = sys.stderr if stream is None else stream
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        isatty = getattr(out, "isatty", None)
        renderer = structlog.dev.ConsoleRenderer(colors=bool(isatty and isatty()))

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
    )
    handler = _RenderingQueueHandler(out)
    handler.setFormatter(formatter)
    handler.start()
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, logging.getLevelName(level)))
    # Registered once however often this runs (unregister drops every earlier copy).
    atexit.unregister(stop_logging)
    atexit.register(stop_logging)


def stop_logging() -> None:
    """Flush every queued line and stop the writer thread; safe to call more than once.

    Lines logged afterwards are written directly (on the caller's thread), so nothing
    logged late in shutdown is lost.
    """
    root = logging.getLogger()
    for index, handler in enumerate(list(root.handlers)):
        if isinstance(handler, _RenderingQueueHandler):
            # Swap first, so a line logged while the queue drains goes straight out
            # instead of landing behind the listener's stop sentinel.
            root.handlers[index] = handler.direct()
            handler.stop()


class LimitedLog:
    """Logs a recurring failure at WARNING at most once per ``interval_s`` per event.

    Failures that must not stop anything (a registry write, a metrics publish) still
    deserve a word in the log, but not one per second per session: the first is logged,
    repeats within the interval are counted and the count rides on the next line.
    """

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, logger: Any, event: str, **fields: Any) -> bool:
        """Log ``event`` unless it was logged within the interval; True when it was logged."""
        now = time.monotonic()
        last = self._last.get(event)
        if last is not None and now - last < self.interval_s:
            self._suppressed[event] = self._suppressed.get(event, 0) + 1
            return False
        self._last[event] = now
        suppressed = self._suppressed.pop(event, 0)
        if suppressed:
            fields["suppressed"] = suppressed
        logger.warning(event, **fields)
        return True
