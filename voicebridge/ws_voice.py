"""The transport of ``/ws/voice``: access checks, the upgrade, the registry entry.

The handler owns what sits around a session: it refuses the upgrade while draining, for a
missing client token or a foreign origin (rules in :mod:`voicebridge.access`), upgrades
without compression, registers the session against the cap, hands the socket to
:class:`voicebridge.relay.Session` and unregisters it however the session ends.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from voicebridge import access, errors, protocol
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
    if s.client_token and not access.client_token_ok(
        request.query.get("token", ""), offered, s.client_token
    ):
        log.info("ws.rejected", reason="token", remote=request.remote)
        raise json_error(
            web.HTTPUnauthorized, "a valid client token is required", errors.ERR_UNAUTHORIZED
        )
    origin = request.headers.get("Origin")
    if not access.origin_ok(origin, request.host, s.allowed_origins):
        log.info("ws.rejected", reason="origin", origin=origin)
        raise json_error(web.HTTPForbidden, "origin not allowed", errors.ERR_FORBIDDEN_ORIGIN)
    upstream = state.upstream
    assert upstream is not None

    ws = web.WebSocketResponse(
        protocols=access.choose_protocol(offered),
        max_msg_size=s.max_frame_bytes * 4,
        timeout=2.0,
        heartbeat=30.0,
        # No permessage-deflate: PCM audio barely compresses, and deflate per frame costs
        # CPU and latency on every one of them (aiohttp negotiates it by default).
        compress=False,
    )
    await ws.prepare(request)
    session = state.session_class(
        request=request,
        ws=ws,
        settings=s,
        upstream=upstream,
        registry=state.registry,
        metrics=state.metrics,
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
