"""The start-up check of the upstream (``UPSTREAM_PREFLIGHT``): one session opened and
configured as every call will be, then closed.

A wrong key, endpoint, deployment or a refused configuration then shows when the server
starts, rather than on the first caller. ``warn`` logs it and marks the upstream degraded
in ``/health`` (so a load balancer holding ``HEALTH_FAILS_WHEN_DEGRADED`` routes
elsewhere); ``require`` stops start-up with the reason (exit 2).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from voicebridge.relay import events as ev
from voicebridge.relay.upstream import Upstream, UpstreamClosed, UpstreamConfig, open_connection

_EVENT_ID = "vb-preflight"


async def check_upstream(
    upstream: UpstreamConfig, session: dict[str, Any], *, timeout_s: float
) -> tuple[str | None, float]:
    """Open, configure with ``session``, close: ``(None, ms)`` when the service took it,
    else ``(reason, ms)`` with a secret-free reason. Bounded by ``timeout_s`` overall."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(timeout_s):
            reason = await _configure(upstream, session, timeout_s)
    except TimeoutError:
        reason = f"Voice Live did not configure a session within {timeout_s:g} s"
    return reason, round((time.monotonic() - started) * 1000, 1)


async def _configure(
    upstream: UpstreamConfig, session: dict[str, Any], timeout_s: float
) -> str | None:
    try:
        conn = await open_connection(upstream, timeout_s)
    except UpstreamClosed as exc:
        return exc.detail
    link = Upstream(conn)
    try:
        await link.send({"type": "session.update", "event_id": _EVENT_ID, "session": session})
        while True:
            event = ev.parse_event(await link.receive())
            if isinstance(event, ev.SessionUpdated):
                return None
            if isinstance(event, ev.ServiceError):
                return f"Voice Live refused the session's configuration: {event.message}"
    except UpstreamClosed as exc:
        return f"the Voice Live connection closed: {exc.detail}"
    except ev.BadUpstreamEvent as exc:
        return f"Voice Live sent an event that could not be read: {exc}"
    finally:
        await link.close()
