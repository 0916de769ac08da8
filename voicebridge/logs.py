"""One logging pipeline for the whole process.

structlog renders for humans (console) or machines (JSON); stdlib loggers (aiohttp,
azure, asyncio) are routed through the same processors, so every line has the same shape
and carries the ``session_id`` bound with contextvars by the session that logged it.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

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


def configure_logging(level: str = "INFO", fmt: str = "console") -> None:
    """Configure structlog and the stdlib root logger; safe to call more than once."""
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
        renderer = structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())

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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name, quiet in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(max(quiet, logging.getLevelName(level)))
