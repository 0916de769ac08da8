"""The aiohttp application: the factory, lifecycles and graceful shutdown.

``create_app(settings)`` builds the app and wires the routes: the voice WebSocket
(:mod:`voicebridge.ws_voice`) and the plain HTTP routes (:mod:`voicebridge.ops`);
everything shared lives behind the ``web.AppKey`` of :class:`voicebridge.state.AppState`.
``serve(settings)`` runs it with signal handling of its own, because a graceful drain must
keep the listening socket open (``/health`` answering 503 so a load balancer stops
routing, new upgrades refused with 503) while live calls finish, which ``web.run_app``
cannot do: it stops listening before ``on_shutdown`` runs. It listens through
:class:`voicebridge.http_guard.ConnectionGuard`, which caps open connections.

Before any route runs, the Host header must name this server (``ALLOWED_HOSTS``): that
is what makes the origin check and the loopback-only admin rule mean anything against
DNS rebinding.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import secrets
import signal
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

from voicebridge import access, errors, ops, preflight, ws_voice
from voicebridge import docs as api_docs
from voicebridge.access import LOOPBACK_HOSTS
from voicebridge.calls import CallLog, add_call_routes
from voicebridge.config import WILDCARD_HOSTS, Settings, mask_url
from voicebridge.http_guard import SECURITY_HEADERS, ConnectionGuard, HttpErrorLog
from voicebridge.metrics import Metrics
from voicebridge.phone import routes as phone_routes
from voicebridge.registry import SessionRegistry, SessionSnapshot, create_registry
from voicebridge.relay import UpstreamConfig
from voicebridge.relay.upstream import EntraTokens
from voicebridge.state import STATE, AppState
from voicebridge.tools import load_toolbox

__all__ = ["STATE", "AppState", "create_app", "serve"]

log = structlog.get_logger(__name__)


def create_app(
    settings: Settings,
    *,
    registry: SessionRegistry | None = None,
    credential: AsyncTokenCredential | None = None,
) -> web.Application:
    """Build the application; nothing runs until an AppRunner starts it.

    ``credential``: with ``AZURE_AUTH=entra``, the token source to use instead of the
    ``DefaultAzureCredential`` the app would create (tests pass a local one). Either way
    the app owns it: one per process, closed on shutdown.
    """
    app = web.Application(
        middlewares=[_forwarded_client, _allowed_host],
        handler_args={
            # A connection must complete a request head within REQUEST_TIMEOUT_S of opening
            # or of its previous response (aiohttp's keep-alive timer runs from the start
            # of a connection and closes it while no request is in progress); a body no
            # handler reads is drained for as long at most.
            "keepalive_timeout": settings.request_timeout_s,
            "lingering_time": settings.request_timeout_s,
            "logger": HttpErrorLog(),
        },
    )
    # Every response, including errors raised as exceptions and aiohttp's own 404/405.
    app.on_response_prepare.append(_security_headers)
    if registry is None:
        registry = create_registry(
            settings.session_registry,
            ttl_s=settings.registry_ttl_s,
            heartbeat_s=settings.registry_heartbeat_s,
        )
    app[STATE] = AppState(settings=settings, metrics=Metrics(), registry=registry)
    app.cleanup_ctx.append(functools.partial(_upstream_ctx, credential=credential))
    app.cleanup_ctx.append(_registry_ctx)
    # Exits run in reverse and after the drain: every record is handed over before the flush.
    app.cleanup_ctx.append(_calls_ctx)
    app.cleanup_ctx.append(_tools_ctx)
    app.cleanup_ctx.append(preflight.preflight_ctx)
    app.cleanup_ctx.append(preflight.probe_ctx)
    app.on_shutdown.append(_drain_sessions)
    app.router.add_get("/health", ops.health)
    app.router.add_get("/config", ops.client_config)
    app.router.add_get("/", ops.index)
    app.router.add_get("/ws/voice", ws_voice.voice_ws)
    app.router.add_get("/sessions", ops.list_sessions)
    app.router.add_get("/sessions/{session_id}", ops.get_session)
    app.router.add_delete("/sessions/{session_id}", ops.delete_session)
    app.router.add_get("/metrics", ops.metrics)
    api_docs.add_routes(app)
    phone_routes.add_routes(app)
    add_call_routes(app, lambda: app[STATE].calls, ops.is_admin)
    static_dir = Path(settings.static_dir)
    if static_dir.is_dir():
        app.router.add_static("/static/", static_dir, name="static")
    else:
        log.warning("app.static_missing", static_dir=str(static_dir))
    return app


# -- lifecycles -----------------------------------------------------------------------


async def _tools_ctx(app: web.Application) -> AsyncIterator[None]:
    """The tools of TOOLS_FILE, read and checked once (a bad file stops start-up)."""
    state = app[STATE]
    toolbox = load_toolbox(state.settings)
    if toolbox is None:
        yield
        return
    log.info("app.tools", tools=len(toolbox.session_tools()), file=str(state.settings.tools_file))
    state.toolbox = toolbox
    try:
        yield
    finally:
        state.toolbox = None
        await toolbox.aclose()


async def _calls_ctx(app: web.Application) -> AsyncIterator[None]:
    """Call records (CALL_STORE): the store, its writer and spool, the retention purge."""
    state = app[STATE]
    s = state.settings.calls
    if not s.enabled:
        yield
        return
    calls = CallLog(s, instance=state.registry.instance_id, registry=state.metrics.registry)
    await calls.start()
    state.calls = calls
    try:
        yield
    finally:
        await calls.close(timeout=max(2.0, 2 * s.write_timeout_s))
        state.calls = None


async def _upstream_ctx(
    app: web.Application, *, credential: AsyncTokenCredential | None = None
) -> AsyncIterator[None]:
    """Use Azure as configured, or start the local Voice Live emulator on loopback.

    With ``AZURE_AUTH=entra`` one credential serves every session of the process
    (``DefaultAzureCredential`` from azure-identity: a managed identity in Azure, a
    developer's sign-in locally), closed when the app stops.
    """
    state = app[STATE]
    s = state.settings
    if s.agent_mode:
        log.info(
            "app.agent_mode",
            agent=s.voicelive_agent_name,
            project=s.voicelive_agent_project,
            version=s.voicelive_agent_version or "latest",
            note="the Foundry agent has its own model and instructions: "
            "AGENT_INSTRUCTIONS_FILE is not sent",
        )
    agent = {
        "agent_name": s.voicelive_agent_name,
        "agent_project": s.voicelive_agent_project,
        "agent_version": s.voicelive_agent_version,
    }
    if not s.uses_emulator:
        tokens = None
        if s.azure_auth == "entra":
            tokens = EntraTokens(credential if credential is not None else _default_credential())
        elif credential is not None:
            await credential.close()  # handed over, not needed: still ours to close
        state.upstream = UpstreamConfig(
            endpoint=s.azure_openai_endpoint,
            api_key=s.azure_openai_key if tokens is None else "",
            model=s.voicelive_model,
            api_version=s.azure_api_version,
            backend="azure",
            credential=tokens,
            **agent,
        )
        log.info(
            "app.upstream",
            backend="azure",
            endpoint=mask_url(s.azure_openai_endpoint),
            auth=s.azure_auth,
            model=s.voicelive_model,
            credential=None if tokens is None else type(tokens.credential).__name__,
        )
        try:
            yield
        finally:
            if tokens is not None:
                await tokens.close()
        return
    from voicebridge.emulator import EmulatorOptions, start_emulator

    if credential is not None:
        await credential.close()  # the built-in emulator takes its own token
    key = secrets.token_urlsafe(24)
    entra = s.azure_auth == "entra"
    accepted: tuple[str, ...] = (key,) if entra else ()
    emulator = await start_emulator(
        EmulatorOptions(api_key=key, bearer_tokens=accepted), "127.0.0.1", 0
    )
    state.upstream = UpstreamConfig(
        endpoint=emulator.url,
        api_key="" if entra else key,
        model=s.voicelive_model,
        api_version=s.azure_api_version,
        backend="emulator",
        credential=EntraTokens(_FixedToken(key)) if entra else None,
        **agent,
    )
    log.warning(
        "app.upstream",
        backend="emulator",
        endpoint=emulator.url,
        auth=s.azure_auth,
        note="no Azure settings: using the built-in Voice Live emulator (echoes the caller)",
    )
    try:
        yield
    finally:
        await emulator.close()


def _default_credential() -> AsyncTokenCredential:
    """azure-identity's DefaultAzureCredential (the ``entra`` extra; settings validation
    has checked it is installed)."""
    from azure.identity.aio import DefaultAzureCredential

    credential: AsyncTokenCredential = DefaultAzureCredential()
    return credential


class _FixedToken:
    """The built-in emulator's token source in entra mode: the one token it accepts."""

    def __init__(self, token: str) -> None:
        self._token = token

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken(self._token, int(time.time()) + 24 * 3600)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> _FixedToken:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        pass


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
async def _forwarded_client(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Behind a proxy in TRUSTED_PROXIES, the client is the one its X-Forwarded-For names:
    per-client limits, the loopback rule of the admin routes, logs and call records then
    see callers, not the proxy."""
    trusted = request.app[STATE].trusted_proxies
    if trusted:
        client = access.forwarded_client(
            request.remote, request.headers.getall("X-Forwarded-For", []), trusted
        )
        if client is not None:
            request = request.clone(remote=client)
    return await handler(request)


@web.middleware
async def _allowed_host(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """421 for a Host this server does not serve, before any route. /health answers any
    Host: load balancers probe by address, and it holds nothing a rebound page could use."""
    state = request.app[STATE]
    host = request.headers.get("Host")
    if request.path != "/health" and not access.host_ok(host, state.host_names):
        state.limited_log.warning(
            log, "http.host_refused", host=access.loggable(host), remote=request.remote
        )
        raise ops.json_error(
            web.HTTPMisdirectedRequest,
            "this server does not serve that host name",
            errors.ERR_HOST_NOT_ALLOWED,
        )
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    # No version numbers for a scanner to match against known bugs (aiohttp's default
    # names Python's and its own).
    response.headers["Server"] = "voicebridge"


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
            note="ADMIN_TOKEN is not set: /sessions answers only loopback clients that name "
            "a loopback Host (a reverse proxy passing the public name on is refused)",
        )
    if "*" in settings.allowed_hosts:
        log.warning(
            "app.any_host",
            note="ALLOWED_HOSTS=*: requests naming any host are served, so a DNS-rebinding "
            "page can reach /ws/voice; list the public names instead",
        )
    elif not settings.allowed_hosts and settings.app_host in WILDCARD_HOSTS:
        log.info(
            "app.allowed_hosts",
            hosts=sorted(settings.host_names),
            note="ALLOWED_HOSTS is not set: requests must name a loopback host; set it to "
            "the public name the server is reached by",
        )
    if settings.max_connections < settings.max_sessions:
        log.warning(
            "app.connections_below_sessions",
            max_connections=settings.max_connections,
            max_sessions=settings.max_sessions,
            note="every session holds a connection: MAX_SESSIONS cannot be reached",
        )


def _raise_fd_limit(settings: Settings) -> None:
    """Make room for MAX_CONNECTIONS: raise the soft descriptor limit towards the hard one.

    Each connection is a descriptor, each session's upstream another (a third with the
    built-in emulator), plus those waiting to be refused and a margin for files and Redis.
    If the hard limit is too low, say so: past it, accept() fails and /health with it.
    """
    try:
        import resource
    except ImportError:  # not on Windows
        return
    sessions = min(settings.max_sessions, settings.max_connections)
    need = settings.max_connections * 12 // 10 + 2 * sessions + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        log.warning(
            "app.fd_limit",
            limit=soft,
            needed=need,
            note="the file-descriptor limit is below what MAX_CONNECTIONS and MAX_SESSIONS "
            "need; raise it (ulimit -n, LimitNOFILE=) or lower MAX_CONNECTIONS",
        )


def _log_settings_warnings(settings: Settings) -> None:
    """The doubtful Voice Live combinations found when the settings were loaded."""
    for warning in settings.voicelive_findings()[1]:
        log.warning("app.settings_warning", note=warning)


class PortInUse(Exception):
    """Another program listens on the configured address and port."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(
            f"port {port} on {host or 'all addresses'} is already in use; stop the other "
            f"server or choose another port, for example: make run APP_PORT={port + 1}"
        )


def server_tls(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of TLS_CERT_FILE / TLS_KEY_FILE (checked when settings load); None
    for plain HTTP. TLS 1.2 at least, the defaults of Python's server context otherwise."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def serve(settings: Settings) -> None:
    """Run until SIGTERM/SIGINT, then drain: 503 on /health, sessions finish, exit."""
    _log_settings_warnings(settings)
    _warn_about_open_access(settings)
    _raise_fd_limit(settings)
    app = create_app(settings)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(
        runner.server,
        max_connections=settings.max_connections,
        request_timeout_s=settings.request_timeout_s,
        limited_log=app[STATE].limited_log,
    )
    loop = asyncio.get_running_loop()
    tls = server_tls(settings)
    # Not a web.TCPSite: a site listens with the runner's protocol factory as is, and the
    # cap needs a say in each accepted connection.
    try:
        listener = await loop.create_server(
            guard,
            settings.app_host or None,
            settings.app_port,
            backlog=128,
            ssl=tls,
            # A TLS handshake that never completes holds a connection like a slow head.
            ssl_handshake_timeout=settings.request_timeout_s if tls is not None else None,
        )
    except OSError as exc:
        await runner.cleanup()  # the emulator and registry started with the app
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(settings.app_host, settings.app_port) from None
        raise
    shown_host = "localhost" if settings.app_host in {"0.0.0.0", "::", ""} else settings.app_host
    log.info(
        "app.listening",
        host=settings.app_host,
        port=settings.app_port,
        open=f"{'https' if tls else 'http'}://{shown_host}:{settings.app_port}/",
        tls=tls is not None,
    )
    stop = asyncio.Event()
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
        listener.close()  # stop accepting; the runner then closes what is open
        await runner.cleanup()
        log.info("app.stopped")
