"""Connection-level limits under aiohttp: the connection cap and malformed-request logging.

aiohttp bounds what a *request* may cost; nothing bounds how many connections a peer may
hold or what a malformed request costs the log. ``serve`` listens through
:class:`ConnectionGuard`, a protocol factory around aiohttp's own (the low-level server's
documented use: ``loop.create_server(server, ...)``): below ``MAX_CONNECTIONS`` every
connection gets aiohttp's request handler; past it a connection is answered ``503`` and
closed, except ``GET /health``, which a load balancer must still get an answer to.
:class:`HttpErrorLog` is the logger aiohttp's request handler writes to: a request that
does not parse becomes one rate-limited WARNING line instead of an ERROR with a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Mapping
from typing import Any, Final, cast

import structlog
from aiohttp import web
from aiohttp.http import HttpProcessingError

from voicebridge import errors, protocol
from voicebridge.access import loggable
from voicebridge.logs import LimitedLog

log = structlog.get_logger(__name__)

SECURITY_HEADERS: Final = {"X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"}

# A refused connection may send its request head (so the 503 is read, not lost to a
# reset) within this long and this many bytes.
_HEAD_WAIT_S: Final = 2.0
_HEAD_LIMIT: Final = 8192


def _refusal() -> bytes:
    body = protocol.error(
        "the server is at its connection limit; try again shortly", errors.ERR_CAPACITY
    ).encode()
    head = [
        "HTTP/1.1 503 Service Unavailable",
        "Content-Type: application/json; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Retry-After: 1",
        "Connection: close",
        *(f"{name}: {value}" for name, value in SECURITY_HEADERS.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


REFUSAL: Final = _refusal()


class ConnectionGuard:
    """The protocol factory ``serve`` listens with.

    Open connections are aiohttp's own count (``web.Server.connections``: HTTP and
    WebSocket alike, until their handler finishes). Past ``max_connections``, up to
    ``overflow`` more wait briefly for their request head: ``GET /health`` is handed to
    aiohttp (while fewer than ``health_reserve`` extra connections are open), anything else
    is answered 503. When ``overflow`` connections already wait, the oldest is answered
    503 to make room, so a flood of silent connections cannot keep a health check from
    being read. Refusals are logged once a minute with a count.
    """

    def __init__(
        self,
        server: web.Server,
        *,
        max_connections: int,
        request_timeout_s: float,
        limited_log: LimitedLog | None = None,
    ) -> None:
        self.server = server
        self.max_connections = max_connections
        self.overflow = max(16, max_connections // 10)
        self.health_reserve = max(4, max_connections // 50)
        self.head_wait_s = min(request_timeout_s, _HEAD_WAIT_S)
        # Connections past the cap waiting for their request head, oldest first.
        self.waiting: dict[_Overflow, None] = {}
        self.refused = 0
        self._limited = limited_log if limited_log is not None else LimitedLog()

    def open_connections(self) -> int:
        """Connections aiohttp is serving now."""
        return len(self.server.connections)

    def __call__(self) -> asyncio.BaseProtocol:
        if self.open_connections() < self.max_connections:
            return self.server()
        self.refused += 1
        self._limited.warning(
            log,
            "http.connection_refused",
            max_connections=self.max_connections,
            refused_total=self.refused,
            note="MAX_CONNECTIONS reached: new connections are answered 503",
        )
        if len(self.waiting) >= self.overflow:
            next(iter(self.waiting)).refuse()
        return _Overflow(self)

    def health_room(self) -> bool:
        """May one more /health request be served past the cap?"""
        return self.open_connections() < self.max_connections + self.health_reserve


class _Overflow(asyncio.Protocol):
    """A connection past the cap: reads its request head, then 503 (or /health served)."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.done = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence a cast.
        self.transport = cast(asyncio.Transport, transport)
        self.guard.waiting[self] = None
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.head_wait_s, self.refuse)

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        self.buffer += data
        complete = b"\r\n\r\n" in self.buffer or b"\n\n" in self.buffer
        if not complete and len(self.buffer) < _HEAD_LIMIT:
            return
        if complete and _is_health(self.buffer) and self.guard.health_room():
            self._hand_over()
        else:
            self.refuse()

    def eof_received(self) -> bool | None:
        self.refuse()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish()

    def _finish(self) -> None:
        if not self.done:
            self.done = True
            self.guard.waiting.pop(self, None)
            if self.timer is not None:
                self.timer.cancel()

    def refuse(self) -> None:
        """Answer 503 and close."""
        if self.done or self.transport is None:
            return
        self._finish()
        self.transport.write(REFUSAL)
        self.transport.close()

    def _hand_over(self) -> None:
        assert self.transport is not None
        self._finish()
        handler = self.guard.server()
        self.transport.set_protocol(handler)
        handler.connection_made(self.transport)
        handler.data_received(bytes(self.buffer))


def _is_health(head: bytes | bytearray) -> bool:
    line = bytes(head.split(b"\n", 1)[0].rstrip(b"\r"))
    parts = line.split(b" ")
    return (
        len(parts) == 3
        and parts[0] in {b"GET", b"HEAD"}
        and parts[1].split(b"?", 1)[0] == b"/health"
    )


class HttpErrorLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger as its request handler uses it (``handler_args``).

    A request that does not parse (duplicate Content-Length, Content-Length with chunked,
    an oversized header, a bare LF...) is answered 400 by aiohttp, which then logs an
    ERROR with a traceback: a peer's mistake is not the server's error, and a flood of them
    must not flood the log. It becomes one ``http.bad_request`` WARNING line, at most one
    a minute per kind of error (repeats are counted on the next line). Everything else
    aiohttp logs passes unchanged.
    """

    def __init__(self) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self._limits: dict[str, LimitedLog] = {}

    def exception(
        self,
        msg: object,
        *args: object,
        exc_info: Any = True,
        stack_info: bool = False,
        stacklevel: int = 1,
        extra: Mapping[str, object] | None = None,
        **kwargs: object,
    ) -> None:
        exc = _exception_of(exc_info)
        if isinstance(exc, HttpProcessingError):
            kind = type(exc).__name__
            reason = _reason(exc.message)
            limited = self._limits.setdefault(f"{kind}: {reason}", LimitedLog())
            limited.warning(
                log,
                "http.bad_request",
                error=kind,
                reason=reason,
                status=exc.code or 400,
                remote=loggable(str(args[0])) if args else None,
            )
            return
        super().exception(
            msg,
            *args,
            exc_info=exc_info,
            stack_info=stack_info,
            stacklevel=stacklevel,
            extra=extra,
            **kwargs,
        )


def _reason(message: str) -> str:
    """The parser's reason without the request bytes it quotes (a header line may hold a
    credential): "Duplicate Content-Length:\n  b'Content-Length: 2'" -> "Duplicate
    Content-Length"."""
    first = message.split("\n", 1)[0]
    for stop in (":", " b'", ' b"', " '", ' "'):
        first = first.split(stop, 1)[0]
    return loggable(first.strip(), 60) or "bad request"


def _exception_of(exc_info: Any) -> BaseException | None:
    if isinstance(exc_info, BaseException):
        return exc_info
    if isinstance(exc_info, tuple) and len(exc_info) == 3:
        value = exc_info[1]
        return value if isinstance(value, BaseException) else None
    if exc_info:
        return sys.exc_info()[1]
    return None
