"""The aiohttp application: routes, access checks, lifecycles and graceful shutdown.

``create_app(settings)`` builds the app; everything shared lives behind the ``web.AppKey``
of :class:`AppState`. ``serve(settings)`` runs it with signal handling of its own, because
a graceful drain must keep the listening socket open (``/health`` answering 503 so a load
balancer stops routing, new upgrades refused with 503) while live calls finish, which
``web.run_app`` cannot do: it stops listening before ``on_shutdown`` runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import secrets
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit

import attrs
import structlog
from aiohttp import web

from voicebridge import __version__, errors, protocol
from voicebridge.config import Settings
from voicebridge.docs import render_docs
from voicebridge.metrics import CONTENT_TYPE_LATEST, Metrics
from voicebridge.registry import SessionRecord, SessionRegistry, create_registry
from voicebridge.session import Session, UpstreamConfig

log = structlog.get_logger(__name__)

_LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@attrs.define
class AppState:
    """Everything one running app shares between requests."""

    settings: Settings
    metrics: Metrics
    registry: SessionRegistry
    upstream: UpstreamConfig | None = None
    sessions: dict[str, Session] = attrs.field(factory=dict)
    background: set[asyncio.Task[None]] = attrs.field(factory=set)
    draining: bool = False
    started_at: float = attrs.field(factory=time.time)


STATE = web.AppKey("state", AppState)


def create_app(settings: Settings, *, registry: SessionRegistry | None = None) -> web.Application:
    """Build the application; nothing runs until an AppRunner starts it."""
    app = web.Application(middlewares=[_security_headers])
    if registry is None:
        registry = create_registry(
            settings.session_registry,
            ttl_s=settings.registry_ttl_s,
            heartbeat_s=settings.registry_heartbeat_s,
        )
    app[STATE] = AppState(settings=settings, metrics=Metrics(), registry=registry)
    app.cleanup_ctx.append(_upstream_ctx)
    app.cleanup_ctx.append(_registry_ctx)
    app.cleanup_ctx.append(_background_ctx)
    app.on_shutdown.append(_drain_sessions)
    app.router.add_get("/health", health)
    app.router.add_get("/config", client_config)
    app.router.add_get("/", index)
    app.router.add_get("/ws/voice", voice_ws)
    app.router.add_get("/sessions", list_sessions)
    app.router.add_get("/sessions/{session_id}", get_session)
    app.router.add_delete("/sessions/{session_id}", delete_session)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/docs", docs)
    static_dir = Path(settings.static_dir)
    if static_dir.is_dir():
        app.router.add_static("/static/", static_dir, name="static")
    else:
        log.warning("app.static_missing", static_dir=str(static_dir))
    return app


# -- lifecycles -----------------------------------------------------------------------


async def _upstream_ctx(app: web.Application) -> AsyncIterator[None]:
    """Use Azure as configured, or start the local Voice Live emulator on loopback."""
    state = app[STATE]
    s = state.settings
    if not s.uses_emulator:
        state.upstream = UpstreamConfig(
            endpoint=s.azure_openai_endpoint,
            api_key=s.azure_openai_key,
            model=s.azure_openai_deployment,
            api_version=s.azure_api_version,
            backend="azure",
        )
        log.info("app.upstream", backend="azure", endpoint=s.azure_openai_endpoint)
        yield
        return
    from voicebridge.emulator import EmulatorOptions, start_emulator

    key = secrets.token_urlsafe(24)
    emulator = await start_emulator(EmulatorOptions(api_key=key), "127.0.0.1", 0)
    state.upstream = UpstreamConfig(
        endpoint=emulator.url,
        api_key=key,
        model=s.azure_openai_deployment or "gpt-realtime",
        api_version=s.azure_api_version,
        backend="emulator",
    )
    log.warning(
        "app.upstream",
        backend="emulator",
        endpoint=emulator.url,
        note="no Azure settings: using the built-in Voice Live emulator (echoes the caller)",
    )
    try:
        yield
    finally:
        await emulator.close()


async def _registry_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    registry = state.registry

    async def end_local(session_id: str, reason: str) -> None:
        session = state.sessions.get(session_id)
        if session is not None:
            session.request_end(
                "admin",
                close_code=errors.CLOSE_NORMAL,
                code=errors.ERR_ENDED_BY_ADMIN,
                message=reason,
            )

    registry.set_end_handler(end_local)
    await registry.start()
    try:
        yield
    finally:
        await registry.close()


async def _background_ctx(app: web.Application) -> AsyncIterator[None]:
    """Tasks that outlive their session (closing an abandoned upstream attempt)."""
    yield
    tasks = list(app[STATE].background)
    if tasks:
        # Let abandoned connects finish and close what they opened; cancelling one
        # mid-handshake would leak the SDK's HTTP session.
        _, pending = await asyncio.wait(tasks, timeout=5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


async def _drain_sessions(app: web.Application) -> None:
    """Tell every live session, give it the grace period, then close all at once."""
    state = app[STATE]
    state.draining = True
    sessions = list(state.sessions.values())
    if not sessions:
        return
    grace = state.settings.shutdown_grace_s
    log.info("app.draining", sessions=len(sessions), grace_s=grace)
    await asyncio.gather(*(s.drain(grace) for s in sessions), return_exceptions=True)


# -- middleware and simple routes -------------------------------------------------------


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    return web.json_response(
        {
            "status": "healthy",
            "version": __version__,
            "backend": state.settings.voicelive_backend,
            "instance": state.registry.instance_id,
            "sessions": len(state.sessions),
            "registry": "ok" if state.registry.healthy() else "degraded",
            "uptime_s": round(time.time() - state.started_at, 1),
        }
    )


async def client_config(request: web.Request) -> web.Response:
    """What the browser client needs to know; no secrets."""
    s = request.app[STATE].settings
    return web.json_response(
        {
            "backend": s.voicelive_backend,
            "client_token_required": bool(s.client_token),
            "sample_rate": protocol.SAMPLE_RATE,
            "version": __version__,
        }
    )


async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound("/static/index.html")


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=render_docs(), content_type="text/html")


async def metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.metrics.active.set(len(state.sessions))
    body = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- access checks ----------------------------------------------------------------------


def _is_loopback(remote: str | None) -> bool:
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _token_matches(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def _client_token_ok(request: web.Request, expected: str) -> bool:
    """The token may come as ``?token=`` or as an offered ``Sec-WebSocket-Protocol``."""
    candidates = [request.query.get("token", "")]
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    candidates.extend(p.strip().removeprefix("token.") for p in offered.split(","))
    ok = False
    for candidate in candidates:
        # Check all candidates so timing does not reveal which one matched.
        ok |= bool(candidate) and _token_matches(candidate, expected)
    return ok


def _choose_protocol(request: web.Request) -> tuple[str, ...]:
    """Select ``voicebridge`` if offered; else echo the client's own offer (its token).

    A browser fails the handshake unless one of its offered subprotocols is selected, so a
    client offering only ``token.<TOKEN>`` gets that entry back.
    """
    offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
    offered = [p for p in offered if p]
    if not offered or "voicebridge" in offered:
        return ("voicebridge",)
    return (offered[0],)


def _origin_ok(request: web.Request, allowed: tuple[str, ...]) -> bool:
    """Browsers always send Origin; a native client that sends none is not a browser."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return "*" in allowed or origin in allowed
    parts = urlsplit(origin)
    if parts.hostname in _LOOPBACK_HOSTS:
        return True
    return parts.netloc == request.host


def _admin_ok(request: web.Request) -> bool:
    expected = request.app[STATE].settings.admin_token
    if not expected:
        return _is_loopback(request.remote)
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and _token_matches(token.strip(), expected)


def _require_admin(request: web.Request) -> None:
    if not _admin_ok(request):
        raise web.HTTPUnauthorized(
            text='{"error": "admin token required", "code": "unauthorized"}',
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _json_error(status: type[web.HTTPException], message: str, code: str) -> web.HTTPException:
    return status(text=protocol.error(message, code), content_type="application/json")


# -- the voice WebSocket -----------------------------------------------------------------


async def voice_ws(request: web.Request) -> web.StreamResponse:
    """Upgrade, check access, register, relay; unregister whatever way it ends."""
    state = request.app[STATE]
    s = state.settings
    if state.draining:
        raise _json_error(
            web.HTTPServiceUnavailable, "server is shutting down", errors.ERR_SHUTDOWN
        )
    if s.client_token and not _client_token_ok(request, s.client_token):
        log.info("ws.rejected", reason="token", remote=request.remote)
        raise _json_error(web.HTTPUnauthorized, "a valid client token is required", "unauthorized")
    if not _origin_ok(request, s.allowed_origins):
        log.info("ws.rejected", reason="origin", origin=request.headers.get("Origin"))
        raise _json_error(web.HTTPForbidden, "origin not allowed", "forbidden_origin")
    upstream = state.upstream
    assert upstream is not None

    ws = web.WebSocketResponse(
        protocols=_choose_protocol(request),
        max_msg_size=s.max_frame_bytes * 4,
        timeout=2.0,
        heartbeat=30.0,
    )
    await ws.prepare(request)
    session = Session(
        request=request,
        ws=ws,
        settings=s,
        upstream=upstream,
        registry=state.registry,
        metrics=state.metrics,
        background=state.background,
    )
    record = SessionRecord(
        session_id=session.id,
        instance=state.registry.instance_id,
        state="connecting",
        started_at=session.stats.started_at,
        client=session.stats.client,
        metrics=session.stats.as_dict(),
    )
    if not await state.registry.register(record, max_sessions=s.max_sessions):
        log.warning("ws.at_capacity", max_sessions=s.max_sessions)
        state.metrics.errors.labels(code=errors.ERR_CAPACITY).inc()
        await ws.send_str(
            protocol.error(
                f"the service is at capacity ({s.max_sessions} sessions); try again shortly",
                errors.ERR_CAPACITY,
            )
        )
        await ws.close(code=errors.CLOSE_TRY_AGAIN, message=b"at capacity")
        return ws
    state.sessions[session.id] = session
    state.metrics.active.set(len(state.sessions))
    try:
        await session.run()
    finally:
        state.sessions.pop(session.id, None)
        state.metrics.active.set(len(state.sessions))
        with contextlib.suppress(Exception):
            await state.registry.unregister(session.id)
    return ws


# -- admin routes -----------------------------------------------------------------------


async def list_sessions(request: web.Request) -> web.Response:
    _require_admin(request)
    records = await request.app[STATE].registry.list()
    records.sort(key=lambda r: r.started_at)
    return web.json_response(
        {"count": len(records), "sessions": [_record_json(request, r) for r in records]}
    )


def _record_json(request: web.Request, record: SessionRecord) -> dict[str, object]:
    # Sessions held here have fresher metrics than the last published copy.
    local = request.app[STATE].sessions.get(record.session_id)
    data = record.as_dict()
    if local is not None:
        data["state"] = local.stats.state
        data["metrics"] = local.stats.as_dict()
    return data


async def get_session(request: web.Request) -> web.Response:
    _require_admin(request)
    session_id = request.match_info["session_id"]
    record = await request.app[STATE].registry.get(session_id)
    if record is None:
        raise _json_error(web.HTTPNotFound, f"no live session {session_id[:64]}", "not_found")
    return web.json_response(_record_json(request, record))


async def delete_session(request: web.Request) -> web.Response:
    _require_admin(request)
    session_id = request.match_info["session_id"]
    found = await request.app[STATE].registry.request_end(session_id, "ended by an operator")
    if not found:
        raise _json_error(web.HTTPNotFound, f"no live session {session_id[:64]}", "not_found")
    log.info("admin.session_ended", target=session_id)
    return web.json_response({"session_id": session_id, "status": "ending"}, status=202)


# -- running ----------------------------------------------------------------------------


def _warn_about_open_access(settings: Settings) -> None:
    """Say at start-up what a security reviewer would ask about first."""
    public = settings.app_host not in _LOOPBACK_HOSTS
    if public and not settings.client_token and not settings.uses_emulator:
        log.warning(
            "app.open_sessions",
            note="CLIENT_TOKEN is not set: anyone who can reach /ws/voice can start "
            "sessions billed to the Azure resource",
        )
    if public and not settings.admin_token:
        log.warning(
            "app.admin_loopback_only",
            note="ADMIN_TOKEN is not set: /sessions answers loopback clients only; behind a "
            "reverse proxy on the same host every request looks like loopback, so set it",
        )


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain: 503 on /health, sessions finish, exit."""
    _warn_about_open_access(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, settings.app_host, settings.app_port)
    await site.start()
    shown_host = "localhost" if settings.app_host in {"0.0.0.0", "::", ""} else settings.app_host
    log.info(
        "app.listening",
        host=settings.app_host,
        port=settings.app_port,
        open=f"http://{shown_host}:{settings.app_port}/",
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("app.stopping")
        # Drain while still listening: the load balancer sees 503 and routes elsewhere.
        await _drain_sessions(app)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()
        log.info("app.stopped")
