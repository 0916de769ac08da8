"""The transport of ``/ws/voice``: access checks, the upgrade, the registry entry.

The handler owns what sits around a session: it refuses the upgrade while draining, for a
missing client token or a foreign origin (rules in :mod:`voicebridge.access`), upgrades
without compression, counts the session against its client's limit and registers it
against the cap, hands the socket to :class:`voicebridge.relay.Session` and releases both
however the session ends. :func:`serve_session` is that last part, shared with the phone
channels (:mod:`voicebridge.phone.routes`), which check access their own way.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web

from voicebridge import access, errors, protocol
from voicebridge.calls import NullRecorder, Recorder
from voicebridge.metrics import Metrics, set_active
from voicebridge.ops import json_error
from voicebridge.registry import SessionRecord
from voicebridge.relay.dialect import Dialect
from voicebridge.state import STATE

if TYPE_CHECKING:
    from voicebridge.relay import Session

log = structlog.get_logger(__name__)

#: Session ends that count against the upstream's health (/health, degraded).
UPSTREAM_FAILURES = frozenset({"upstream_connect_failed", "upstream_auth_rejected"})


async def voice_ws(request: web.Request) -> web.StreamResponse:
    """Upgrade, check access, register, relay; unregister whatever way it ends."""
    state = request.app[STATE]
    s = state.settings
    state.accept_calls()
    offered = request.headers.get("Sec-WebSocket-Protocol", "")
    tokens = s.client_tokens
    token: str | None = None
    if tokens:
        token = access.find_client_token(request.query.get("token", ""), offered, tokens)
        if token is None:
            log.info("ws.rejected", reason="token", remote=request.remote)
            raise json_error(
                web.HTTPUnauthorized, "a valid client token is required", errors.ERR_UNAUTHORIZED
            )
    origin = request.headers.get("Origin")
    if not access.origin_ok(origin, request.headers.get("Host", ""), s.allowed_origins):
        log.info("ws.rejected", reason="origin", origin=access.loggable(origin))
        raise json_error(web.HTTPForbidden, "origin not allowed", errors.ERR_FORBIDDEN_ORIGIN)

    ws = websocket(s.max_frame_bytes, access.choose_protocol(offered, tokens))
    client = access.client_key(token, request.remote, tokens)
    return await serve_session(request, ws, client=client, dialect=Dialect())


def websocket(max_frame_bytes: int, protocols: tuple[str, ...] = ()) -> web.WebSocketResponse:
    """The socket of a voice session, browser or phone."""
    return web.WebSocketResponse(
        protocols=protocols,
        max_msg_size=max_frame_bytes * 4,
        timeout=2.0,
        heartbeat=30.0,
        # No permessage-deflate: PCM audio barely compresses, and deflate per frame costs
        # CPU and latency on every one of them (aiohttp negotiates it by default).
        compress=False,
        # The relay answers pings itself, so they count against MAX_FRAMES_PER_S and a
        # ping flood costs what any other flood does.
        autoping=False,
    )


async def serve_session(
    request: web.Request,
    ws: web.WebSocketResponse,
    *,
    client: str,
    dialect: Dialect,
    instructions_file: Path | None = None,
    metadata: dict[str, str] | None = None,
    limit: int | None = None,
    carried: list[dict[str, Any]] | None = None,
    before_close: Callable[[Session], Awaitable[None]] | None = None,
) -> web.WebSocketResponse:
    """Count the session against its client's limit (``MAX_SESSIONS_PER_CLIENT`` unless
    ``limit`` says), then relay (upgrading ``ws`` if it is not yet); released however it
    ends. ``carried``: the conversation of the call's previous session;
    ``before_close``: run once the session's end is known, before the client is told."""
    state = request.app[STATE]
    s = state.settings
    held = state.client_sessions.get(client, 0)
    if limit is None:
        limit = s.max_sessions_per_client
    if limit and held >= limit:
        await ws.prepare(request)
        state.limited_log.warning(log, "ws.client_limit", client=client, limit=limit)
        await _refuse(
            ws,
            dialect,
            f"this client already has {held} sessions open, the most allowed; "
            "end one and try again",
            b"too many sessions for this client",
            state.metrics,
        )
        return ws
    # Counted before the upgrade is awaited, so concurrent upgrades cannot all slip in.
    state.client_sessions[client] = held + 1
    try:
        return await _relay(
            request,
            ws,
            dialect=dialect,
            instructions_file=instructions_file,
            metadata=metadata or {},
            carried=carried,
            before_close=before_close,
        )
    finally:
        left = state.client_sessions.pop(client, 1) - 1
        if left > 0:
            state.client_sessions[client] = left


async def _refuse(
    ws: web.WebSocketResponse, dialect: Dialect, message: str, reason: bytes, metrics: Metrics
) -> None:
    """Close an upgraded socket at capacity: 1013, with an error a client can show."""
    metrics.count_error(errors.ERR_CAPACITY)
    if dialect.shows_text:
        await ws.send_str(protocol.error(message, errors.ERR_CAPACITY))
    await ws.close(code=errors.CLOSE_TRY_AGAIN, message=reason)


async def _relay(
    request: web.Request,
    ws: web.WebSocketResponse,
    *,
    dialect: Dialect,
    instructions_file: Path | None,
    metadata: dict[str, str],
    carried: list[dict[str, Any]] | None,
    before_close: Callable[[Session], Awaitable[None]] | None,
) -> web.WebSocketResponse:
    """Upgrade, register against the cap, run the session, unregister."""
    state = request.app[STATE]
    s = state.settings
    upstream = state.upstream
    assert upstream is not None
    await ws.prepare(request)
    session_id = uuid.uuid4().hex
    recorder: Recorder = (
        state.calls.recorder(
            session_id,
            channel=dialect.name,
            instance=state.registry.instance_id,
            client=request.remote or "",
            metadata=metadata,
        )
        if state.calls is not None
        else NullRecorder()
    )
    session = state.session_class(
        request=request,
        ws=ws,
        settings=s,
        upstream=upstream,
        registry=state.registry,
        metrics=state.metrics,
        toolbox=state.toolbox,
        recorder=recorder,
        session_id=session_id,
        dialect=dialect,
        instructions_file=instructions_file,
        carried=carried,
        before_close=before_close,
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
        log.warning("ws.at_capacity", max_sessions=s.max_sessions, channel=dialect.name)
        await _refuse(
            ws,
            dialect,
            f"the service is at capacity ({s.max_sessions} sessions); try again shortly",
            b"at capacity",
            state.metrics,
        )
        return ws
    state.sessions[session.id] = session
    set_active(state.metrics, (x.dialect.name for x in state.sessions.values()))
    try:
        await session.run()
    finally:
        if session.end is not None and session.end.reason in UPSTREAM_FAILURES:
            state.upstream_failures += 1
        elif session.stats.upstream_connect_ms is not None:
            state.upstream_failures = 0
        state.sessions.pop(session.id, None)
        set_active(state.metrics, (x.dialect.name for x in state.sessions.values()))
        try:
            await state.registry.unregister(session.id)
        except Exception as exc:
            # The session is over either way; a registry that cannot forget it counts it
            # against the cap until its entry expires, which an operator should hear about.
            # Only the type is logged: a backend's message may quote its connection details.
            state.limited_log.warning(
                log,
                "ws.unregister_failed",
                session_id=session.id,
                error=type(exc).__name__,
            )
    return ws
