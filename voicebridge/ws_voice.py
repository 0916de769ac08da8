"""The transport of ``/ws/voice``: access checks, the upgrade, the registry entry.

The handler owns what sits around a session: it refuses the upgrade while draining, for a
missing client token or a foreign origin (rules in :mod:`voicebridge.access`), upgrades
without compression, counts the session against its client's limit and registers it
against the cap, hands the socket to :class:`voicebridge.relay.Session` and releases both
however the session ends.
"""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web

from voicebridge import access, errors, protocol
from voicebridge.calls import NullRecorder, Recorder
from voicebridge.ops import json_error
from voicebridge.registry import SessionRecord
from voicebridge.state import STATE

log = structlog.get_logger(__name__)


async def voice_ws(request: web.Request) -> web.StreamResponse:
    """Upgrade, check access, register, relay; unregister whatever way it ends."""
    state = request.app[STATE]
    s = state.settings
    if state.draining:
        raise json_error(web.HTTPServiceUnavailable, "server is shutting down", errors.ERR_SHUTDOWN)
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

    ws = web.WebSocketResponse(
        protocols=access.choose_protocol(offered, tokens),
        max_msg_size=s.max_frame_bytes * 4,
        timeout=2.0,
        heartbeat=30.0,
        # No permessage-deflate: PCM audio barely compresses, and deflate per frame costs
        # CPU and latency on every one of them (aiohttp negotiates it by default).
        compress=False,
        # The relay answers pings itself, so they count against MAX_FRAMES_PER_S and a
        # ping flood costs what any other flood does.
        autoping=False,
    )
    client = access.client_key(token, request.remote, tokens)
    held = state.client_sessions.get(client, 0)
    limit = s.max_sessions_per_client
    if limit and held >= limit:
        await ws.prepare(request)
        state.limited_log.warning(log, "ws.client_limit", client=client, limit=limit)
        state.metrics.count_error(errors.ERR_CAPACITY)
        await ws.send_str(
            protocol.error(
                f"this client already has {held} sessions open, the most allowed; "
                "end one and try again",
                errors.ERR_CAPACITY,
            )
        )
        await ws.close(code=errors.CLOSE_TRY_AGAIN, message=b"too many sessions for this client")
        return ws
    # Counted before the upgrade is awaited, so concurrent upgrades cannot all slip in.
    state.client_sessions[client] = held + 1
    try:
        return await _relay(request, ws)
    finally:
        left = state.client_sessions.pop(client, 1) - 1
        if left > 0:
            state.client_sessions[client] = left


async def _relay(request: web.Request, ws: web.WebSocketResponse) -> web.WebSocketResponse:
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
            channel="browser",
            instance=state.registry.instance_id,
            client=request.remote or "",
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
        state.metrics.count_error(errors.ERR_CAPACITY)
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
        if session.end is not None and session.end.reason == "upstream_connect_failed":
            state.upstream_failures += 1
        elif session.stats.upstream_connect_ms is not None:
            state.upstream_failures = 0
        state.sessions.pop(session.id, None)
        state.metrics.active.set(len(state.sessions))
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
