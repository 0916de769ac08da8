"""The aiohttp application: the factory, lifecycles and graceful shutdown.

``create_app(settings)`` builds the app and wires the routes: the voice WebSocket
(:mod:`voicebridge.ws_voice`) and the plain HTTP routes (:mod:`voicebridge.ops`);
everything shared lives behind the ``web.AppKey`` of :class:`voicebridge.state.AppState`.
``serve(settings)`` runs it with signal handling of its own, because a graceful drain must
keep the listening socket open (``/health`` answering 503 so a load balancer stops
routing, new upgrades refused with 503) while live calls finish, which ``web.run_app``
cannot do: it stops listening before ``on_shutdown`` runs.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import structlog
from aiohttp import web

from voicebridge import errors, ops, ws_voice
from voicebridge.access import LOOPBACK_HOSTS
from voicebridge.config import Settings
from voicebridge.metrics import Metrics
from voicebridge.registry import SessionRegistry, SessionSnapshot, create_registry
from voicebridge.relay import UpstreamConfig
from voicebridge.state import STATE, AppState

__all__ = ["STATE", "AppState", "create_app", "serve"]

log = structlog.get_logger(__name__)


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
    app.on_shutdown.append(_drain_sessions)
    app.router.add_get("/health", ops.health)
    app.router.add_get("/config", ops.client_config)
    app.router.add_get("/", ops.index)
    app.router.add_get("/ws/voice", ws_voice.voice_ws)
    app.router.add_get("/sessions", ops.list_sessions)
    app.router.add_get("/sessions/{session_id}", ops.get_session)
    app.router.add_delete("/sessions/{session_id}", ops.delete_session)
    app.router.add_get("/metrics", ops.metrics)
    app.router.add_get("/docs", ops.docs)
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

    def snapshots() -> dict[str, SessionSnapshot]:
        # The registry pulls these when its heartbeat rewrites the records: sessions do
        # not push their metrics on a timer of their own.
        return {
            sid: SessionSnapshot(session.stats.state, session.snapshot())
            for sid, session in state.sessions.items()
        }

    registry.set_end_handler(end_local)
    registry.set_snapshot_source(snapshots)
    await registry.start()
    try:
        yield
    finally:
        await registry.close()


async def _drain_sessions(app: web.Application) -> None:
    """Tell every live session, give it the grace period, then close all at once."""
    state = app[STATE]
    state.draining = True
    sessions = list(state.sessions.values())
    if not sessions:
        return
    grace = state.settings.shutdown_grace_s
    log.info("app.draining", sessions=len(sessions), grace_s=grace)
    results = await asyncio.gather(*(s.drain(grace) for s in sessions), return_exceptions=True)
    for session, result in zip(sessions, results, strict=True):
        if isinstance(result, Exception):
            log.warning("app.drain_failed", session_id=session.id, exc_info=result)


# -- middleware -------------------------------------------------------------------------


@web.middleware
async def _security_headers(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


# -- running ----------------------------------------------------------------------------


def _warn_about_open_access(settings: Settings) -> None:
    """Say at start-up what a security reviewer would ask about first."""
    public = settings.app_host not in LOOPBACK_HOSTS
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
