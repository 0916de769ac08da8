"""The plain HTTP routes: health, client config, docs, metrics and the admin ``/sessions``.

None of these carries a secret. ``/sessions`` lists, shows and ends live sessions on any
instance sharing the registry, and needs the admin token (or, without one, a loopback
client; the rule is :func:`voicebridge.access.admin_ok`).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import structlog
from aiohttp import web

from voicebridge import __version__, access, errors, protocol
from voicebridge.metrics import CONTENT_TYPE_LATEST, set_active
from voicebridge.registry import SessionRecord
from voicebridge.state import STATE

log = structlog.get_logger(__name__)


def json_error(status: type[web.HTTPException], message: str, code: str) -> web.HTTPException:
    """An HTTP error whose body is the protocol's ``error`` message, ready to raise."""
    return status(text=protocol.error(message, code), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    """Readiness for a load balancer: 200 healthy, or 503 once the instance drains."""
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    s = state.settings
    degraded = state.upstream_degraded
    upstream = {
        "status": "degraded" if degraded else "ok",
        "consecutive_connect_failures": state.upstream_failures,
    }
    if degraded and s.health_fails_when_degraded:
        # Every new call would fail the same way: let the load balancer route elsewhere.
        return web.json_response({"status": "degraded", "upstream": upstream}, status=503)
    return web.json_response(
        {
            "status": "healthy",
            "upstream": upstream,
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
            "caller_notice": s.caller_notice,
            "sample_rate": protocol.SAMPLE_RATE,
            "version": __version__,
        }
    )


async def index(request: web.Request) -> web.Response:
    """The browser client."""
    raise web.HTTPFound("/static/index.html")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    state = request.app[STATE]
    set_active(state.metrics, (x.dialect.name for x in state.sessions.values()))
    for session in list(state.sessions.values()):
        session.count_audio()  # audio counters are pulled at scrape time, not pushed
    body = state.metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


# -- admin routes -----------------------------------------------------------------------


def is_admin(request: web.Request) -> bool:
    """Whether the request may use the admin routes (the rule is access.admin_ok)."""
    return access.admin_ok(
        request.headers.get("Authorization", ""),
        request.remote,
        request.headers.get("Host"),
        request.app[STATE].settings.admin_token,
    )


def _require_admin(request: web.Request) -> None:
    if not is_admin(request):
        raise web.HTTPUnauthorized(
            text=json.dumps({"error": "admin token required", "code": errors.ERR_UNAUTHORIZED}),
            content_type="application/json",
            headers={"WWW-Authenticate": "Bearer"},
        )


def _record_json(request: web.Request, record: SessionRecord) -> dict[str, object]:
    # Sessions held here have fresher metrics than the last published copy.
    local = request.app[STATE].sessions.get(record.session_id)
    data = record.as_dict()
    if local is not None:
        data["state"] = local.stats.state
        data["metrics"] = local.stats.as_dict()
    # ISO 8601 for people and log tools; the registry keeps the epoch float internally.
    data["started_at"] = _iso(record.started_at)
    metrics = dict(data["metrics"]) if isinstance(data["metrics"], dict) else {}
    if isinstance(metrics.get("started_at"), int | float):
        metrics["started_at"] = _iso(metrics["started_at"])
        data["metrics"] = metrics
    return data


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


async def list_sessions(request: web.Request) -> web.Response:
    """Every live session on every instance sharing the registry, oldest first."""
    _require_admin(request)
    records = await request.app[STATE].registry.list()
    records.sort(key=lambda r: r.started_at)
    return web.json_response(
        {"count": len(records), "sessions": [_record_json(request, r) for r in records]}
    )


async def get_session(request: web.Request) -> web.Response:
    """One live session, wherever it runs; 404 if it is not live anywhere."""
    _require_admin(request)
    session_id = request.match_info["session_id"]
    record = await request.app[STATE].registry.get(session_id)
    if record is None:
        raise json_error(
            web.HTTPNotFound, f"no live session {session_id[:64]}", errors.ERR_NOT_FOUND
        )
    return web.json_response(_record_json(request, record))


async def delete_session(request: web.Request) -> web.Response:
    """End a session on whichever instance holds it; 202, since the end is asynchronous."""
    _require_admin(request)
    session_id = request.match_info["session_id"]
    found = await request.app[STATE].registry.request_end(session_id, "ended by an operator")
    if not found:
        raise json_error(
            web.HTTPNotFound, f"no live session {session_id[:64]}", errors.ERR_NOT_FOUND
        )
    log.info("admin.session_ended", target=session_id)
    return web.json_response({"session_id": session_id, "status": "ending"}, status=202)
