"""The emulator's transport: an aiohttp app serving `/voice-live/realtime` like Azure does.

The handshake is checked the way the service checks it: query parameters (`api-version`,
one of the real ones; `model`, or a Foundry agent's `agent-name` and `agent-project-name`
with an optional `agent-version`), then the credentials (the `api-key` header, or
`Authorization: Bearer` with the key or a configured Entra token; an agent takes a token
only). Then each socket gets an `EmulatorSession` (session.py) fed frame by frame. Fault
injection that concerns the connection itself (refusal, abrupt drops) lives here.

`start_emulator` runs the app on a free port for tests and embedding; `run_emulator` is the
blocking entry point of `python -m voicebridge emulator`.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import random
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any

import attrs
import orjson
import structlog
from aiohttp import WSCloseCode, WSMsgType, web

from voicebridge import voicelive
from voicebridge.emulator import protocol as p
from voicebridge.emulator.options import EmulatorOptions
from voicebridge.emulator.session import EmulatorSession

log = structlog.get_logger(__name__)

ROUTE = "/voice-live/realtime"
#: How long a server-side close waits for the client's close frame before dropping it.
CLOSE_TIMEOUT_S = 1.0
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: `expires_at` when no session_cap_s is set: the service's cap of about 30 minutes
#: (reference 2026-07-15, RealtimeResponseSession.expires_at); advertised, not enforced.
ADVERTISED_CAP_S = 30 * 60


@attrs.define(eq=False)
class EmulatorState:
    """What the app shares between connections: live options and the open sockets."""

    options: EmulatorOptions
    sockets: set[web.WebSocketResponse] = attrs.field(factory=set)
    #: Connections accepted since start, and those whose handler has not finished yet.
    accepted: int = 0
    live: int = 0
    #: Server events sent so far by type, and the last one of each type but audio deltas,
    #: on any connection: what tests check the emulator was asked to do.
    event_counts: collections.Counter[str] = attrs.field(factory=collections.Counter)
    last_events: dict[str, dict[str, Any]] = attrs.field(factory=dict)
    #: Client events received on all connections (how many frames the client sent).
    events_received: int = 0
    #: Handshakes still to refuse, and with which HTTP status (`refuse_next`).
    refusals_left: int = 0
    refusal_status: int = 503
    #: How to drop each live connection abruptly (`drop_connections`).
    droppers: set[Callable[[str], None]] = attrs.field(factory=set)
    #: How to make each live connection go silent (`freeze_connections`).
    freezers: set[Callable[[], None]] = attrs.field(factory=set)
    #: The most recent connection's session: what tests read its conversation from.
    last_session: EmulatorSession | None = None
    #: The credentials and query of the most recent accepted handshake (no secrets).
    last_handshake: dict[str, Any] | None = None
    changed: asyncio.Condition = attrs.field(factory=asyncio.Condition)
    #: Who waits for the next server event of a type (`RunningEmulator.wait_event`).
    event_waiters: dict[str, list[asyncio.Future[None]]] = attrs.field(factory=dict)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()


EMULATOR_STATE = web.AppKey("emulator_state", EmulatorState)


def _error_response(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _same(presented: str, expected: str) -> bool:
    # Constant time, so a secret cannot be guessed a byte at a time from response timings.
    return hmac.compare_digest(presented.encode(), expected.encode())


def _sign_in(request: web.Request, options: EmulatorOptions) -> str | None:
    """How the handshake signed in: "key" (the api-key header), "entra" (a bearer token:
    the key itself, or one of `bearer_tokens`), or None when it did not."""
    presented = request.headers.get("api-key")
    if presented is not None:
        return "key" if _same(presented, options.api_key) else None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    accepted = (options.api_key, *options.bearer_tokens)
    # Every candidate is compared, so timing does not tell which one matched.
    matches = [_same(token, candidate) for candidate in accepted]
    return "entra" if any(matches) else None


def _handshake_target(request: web.Request) -> tuple[voicelive.Target, str | None]:
    """The connection the query names, and why it is refused (HTTP 400), if it is."""
    query = request.query
    agent = query.get("agent-name", "")
    target = voicelive.Target(
        model=query.get("model") or None,
        agent=bool(agent),
        api_version=query.get("api-version"),
        lenient=True,
    )
    if not target.api_version:
        return target, "Missing query parameter(s): api-version."
    if target.api_version not in voicelive.API_VERSIONS:
        # The service answers an unknown version with 400 (reference: one page per version).
        return target, (
            f"Unsupported api-version '{target.api_version}'. Supported versions are: "
            + ", ".join(sorted(voicelive.API_VERSIONS))
            + "."
        )
    if agent and not query.get("agent-project-name"):
        # The SDK refuses this before connecting (aio/_patch.py, _build_foundry_agent_config).
        return target, "Missing query parameter(s): agent-project-name (required with agent-name)."
    if not target.agent and not target.model:
        return target, "Missing query parameter(s): model (or agent-name and agent-project-name)."
    return target, None


async def _realtime(request: web.Request) -> web.StreamResponse:
    state = request.app[EMULATOR_STATE]
    options = state.options
    peer = request.remote
    if options.refuse_connections:
        log.info("emulator.rejected", reason="refuse_connections", peer=peer)
        return _error_response(503, "ServiceUnavailable", "The emulator is refusing connections.")
    if state.refusals_left > 0:
        state.refusals_left -= 1
        status = state.refusal_status
        log.info("emulator.rejected", reason="refuse_next", status=status, peer=peer)
        if status == 429:
            return _error_response(429, "TooManyRequests", "Rate limit exceeded; retry later.")
        return _error_response(status, "ServiceUnavailable", "The service is unavailable.")
    target, bad_query = _handshake_target(request)
    if bad_query is not None:
        log.info("emulator.rejected", reason="bad_query", detail=bad_query, peer=peer)
        return _error_response(400, "BadRequest", bad_query)
    auth = _sign_in(request, options)
    if auth is None:
        log.info("emulator.rejected", reason="unauthorized", peer=peer)
        return _error_response(
            401,
            "401",
            "Access denied due to invalid subscription key or wrong API endpoint.",
        )
    target = attrs.evolve(target, auth=auth)
    for finding in voicelive.check({}, target, scope="connection"):
        if finding.rule.severity == "error":  # an agent reached with an API key
            log.info("emulator.rejected", reason=finding.rule.id, peer=peer)
            return _error_response(401, "401", finding.message[:1].upper() + finding.message[1:])

    ws = web.WebSocketResponse(
        compress=False,
        decode_text=False,
        timeout=CLOSE_TIMEOUT_S,
        max_msg_size=MAX_MESSAGE_BYTES,
    )
    await ws.prepare(request)
    transport = request.transport
    state.sockets.add(ws)
    state.accepted += 1
    state.live += 1
    await state._notify()

    sent = 0
    frozen = False
    close_after_events = options.close_after_events

    def drop(fault: str) -> None:
        # An abrupt drop, as a network failure looks: no close frame, the TCP stream ends.
        log.info("emulator.fault", fault=fault)
        if transport is not None:
            transport.abort()

    async def send(event: dict[str, Any]) -> None:
        nonlocal sent
        if frozen or ws.closed or (transport is not None and transport.is_closing()):
            return  # nobody is listening any more, or the emulator plays dead
        try:
            await ws.send_frame(orjson.dumps(event), WSMsgType.TEXT)
        except ConnectionError:
            return
        sent += 1
        kind = event["type"]
        state.event_counts[kind] += 1
        if kind != "response.audio.delta":
            state.last_events[kind] = event
        waiters = state.event_waiters.pop(kind, None)
        if waiters:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        if close_after_events is not None and sent >= close_after_events:
            drop("close_after_events")

    query = request.query
    session = EmulatorSession(
        send_event=send,
        get_options=lambda: state.options,
        model=target.model,
        target=target,
        agent={
            "name": query.get("agent-name", ""),
            "project": query.get("agent-project-name", ""),
            "version": query.get("agent-version", ""),
        },
    )
    bound = log.bind(session_id=session.config["id"])
    bound.info(
        "emulator.connected",
        model=session.model,
        agent=query.get("agent-name") or None,
        api_version=target.api_version,
        auth=auth,
        peer=peer,
    )
    state.last_session = session
    state.last_handshake = {
        "auth": auth,
        "query": {k: v for k, v in query.items() if k not in ("api-key", "Authorization")},
    }
    state.droppers.add(drop)

    def freeze() -> None:
        # A frozen process or a network black hole: nothing is read (pings go unanswered)
        # and nothing more is sent, but the TCP connection stays up.
        nonlocal frozen
        frozen = True
        if transport is not None:
            transport.pause_reading()

    state.freezers.add(freeze)
    timer = None
    if options.close_after_s is not None:
        timer = asyncio.get_running_loop().call_later(options.close_after_s, drop, "close_after_s")
    expiry: asyncio.Task[None] | None = None
    if (target.api_version or "") >= voicelive.EXPIRES_AT_SINCE:
        # Since 2026-07-15 the session says when it ends (reference, "What's new").
        advertised = options.session_cap_s or ADVERTISED_CAP_S
        session.config["expires_at"] = int(time.time() + advertised)
    if options.session_cap_s is not None:
        cap = options.session_cap_s
        session.config.setdefault("expires_at", int(time.time() + cap))

        async def expire() -> None:
            # As the service does at its cap: say why, then close with 1001.
            await asyncio.sleep(cap)
            log.info("emulator.session_expired", cap_s=cap)
            await send(p.session_expired_event(session.ids.new("event"), cap))
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"session_expired")

        expiry = asyncio.create_task(expire(), name="emulator-expiry")
    started = time.monotonic()
    try:
        await session.start()
        async for msg in ws:
            if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                state.events_received += 1
                await session.handle(msg.data)
            elif msg.type == WSMsgType.ERROR:
                break
    finally:
        if timer is not None:
            timer.cancel()
        if expiry is not None:
            expiry.cancel()
        state.droppers.discard(drop)
        state.freezers.discard(freeze)
        await session.aclose()
        if not ws.closed:
            await ws.close()
        state.sockets.discard(ws)
        state.live -= 1
        bound.info(
            "emulator.disconnected",
            close_code=ws.close_code,
            events_in=session.events_in,
            events_out=sent,
            responses=session.responses,
            audio_in_ms=session.audio_received_ms,
            duration_s=round(time.monotonic() - started, 3),
        )
        await state._notify()
    return ws


async def _close_sockets(app: web.Application) -> None:
    """on_shutdown: close every socket with 1001 so clients learn at once."""
    sockets = list(app[EMULATOR_STATE].sockets)
    if not sockets:
        return
    async with asyncio.TaskGroup() as group:
        for ws in sockets:
            group.create_task(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"))


def create_emulator_app(options: EmulatorOptions) -> web.Application:
    """The emulator as an aiohttp application (route `/voice-live/realtime`)."""
    app = web.Application()
    app[EMULATOR_STATE] = EmulatorState(options)
    app.router.add_get(ROUTE, _realtime)
    app.on_shutdown.append(_close_sockets)
    return app


@attrs.define(eq=False)
class RunningEmulator:
    """An emulator listening on a port; close it with `close()` or `async with`."""

    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        """The endpoint to give the SDK, e.g. `ws://127.0.0.1:54321`."""
        return f"ws://{self.host}:{self.port}"

    @property
    def _state(self) -> EmulatorState:
        return self.runner.app[EMULATOR_STATE]

    @property
    def options(self) -> EmulatorOptions:
        """The options in force now."""
        return self._state.options

    def set_options(self, options: EmulatorOptions) -> None:
        """Swap the options. New connections and new responses see the change at once;
        `close_after_*` of already open connections keep the value they opened with."""
        self._state.options = options

    def last_session_config(self) -> dict[str, Any] | None:
        """The configuration most recently applied by a `session.update` (for tests)."""
        event = self._state.last_events.get("session.updated")
        return None if event is None else event.get("session")

    def last_event(self, kind: str) -> dict[str, Any] | None:
        """The last server event of this type sent on any connection (audio deltas aside)."""
        return self._state.last_events.get(kind)

    def last_handshake(self) -> dict[str, Any] | None:
        """How the most recent accepted handshake signed in (``auth``: key or entra) and
        its query parameters (for tests; no credentials)."""
        return self._state.last_handshake

    async def wait_event(self, kind: str, count: int = 1) -> dict[str, Any] | None:
        """Wait until ``count`` events of this type have been sent in all (wrap in
        ``asyncio.timeout``); the last one (None for audio deltas, which are not kept)."""
        state = self._state
        while state.event_counts[kind] < count:
            waiter = asyncio.get_running_loop().create_future()
            state.event_waiters.setdefault(kind, []).append(waiter)
            await waiter
        return state.last_events.get(kind)

    def drop_connections(self, count: int | None = None) -> int:
        """Abort live connections (TCP abort, no close frame), as a network failure does:
        all of them, or ``count`` chosen at random. Returns how many were dropped."""
        droppers = list(self._state.droppers)
        if count is not None:
            droppers = random.sample(droppers, min(count, len(droppers)))
        for drop in droppers:
            drop("drop_connections")
        return len(droppers)

    def freeze_connections(self) -> None:
        """Make every live connection silent without closing it (a black-holed service)."""
        for freeze in list(self._state.freezers):
            freeze()

    def refuse_next(self, count: int, status: int = 503) -> None:
        """Refuse the next `count` handshakes with HTTP `status` (503 or 429), then accept."""
        self._state.refusals_left = count
        self._state.refusal_status = status

    def conversation(self) -> list[dict[str, Any]]:
        """The items the most recent connection's conversation holds, in order."""
        session = self._state.last_session
        return [] if session is None else session.items()

    @property
    def events_received(self) -> int:
        """How many client events arrived on all connections."""
        return self._state.events_received

    def event_count(self, kind: str) -> int:
        """How many server events of this type were sent on all connections."""
        return self._state.event_counts[kind]

    @property
    def connections(self) -> int:
        """Connections whose handler is still running (socket open or being cleaned up)."""
        return self._state.live

    @property
    def connections_accepted(self) -> int:
        """Connections accepted (handshake passed) since the emulator started."""
        return self._state.accepted

    async def wait_connections(self, count: int) -> None:
        """Wait until exactly `count` connections are live (wrap in `asyncio.timeout`)."""
        state = self._state
        async with state.changed:
            await state.changed.wait_for(lambda: state.live == count)

    async def close(self) -> None:
        """Close every socket (1001) and stop listening."""
        await self.runner.cleanup()

    async def __aenter__(self) -> RunningEmulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_emulator(
    options: EmulatorOptions, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Start the emulator on `host:port` (port 0 picks a free port) and return at once."""
    runner = web.AppRunner(
        create_emulator_app(options), access_log=None, shutdown_timeout=CLOSE_TIMEOUT_S * 5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_port: int = runner.addresses[0][1] if runner.addresses else port
    return RunningEmulator(runner=runner, host=host, port=bound_port)


@asynccontextmanager
async def running_emulator(
    options: EmulatorOptions, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningEmulator]:
    """`start_emulator` as a context manager, e.g. for an app's `cleanup_ctx`."""
    running = await start_emulator(options, host, port)
    try:
        yield running
    finally:
        await running.close()


def run_emulator(options: EmulatorOptions, host: str, port: int) -> None:
    """Serve until SIGINT/SIGTERM (the CLI's `emulator` command); logs `emulator.listening`."""

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        running = await start_emulator(options, host, port)
        log.info("emulator.listening", url=running.url, realtime=options.realtime)
        try:
            await stop.wait()
        finally:
            log.info("emulator.stopping", connections=running.connections)
            await running.close()

    asyncio.run(serve())
