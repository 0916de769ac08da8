"""Checks of the upstream outside any call: one session opened and configured as every
call will be, then closed.

* At start-up (``UPSTREAM_PREFLIGHT``): a wrong key, endpoint, deployment or a refused
  configuration shows when the server starts, rather than on the first caller. ``warn``
  logs it and marks the upstream degraded in ``/health``; ``require`` stops start-up with
  the reason (exit 2).
* While ``/health`` reports the upstream degraded, every ``UPSTREAM_PROBE_S``: once a
  check passes the instance is healthy again. Without it, an instance a load balancer
  stopped routing to (``HEALTH_FAILS_WHEN_DEGRADED``) would have no call left to prove
  the service is back, and would stay out until restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import structlog
from aiohttp import web

from voicebridge.config import ConfigError
from voicebridge.relay import events as ev
from voicebridge.relay.session_config import build_session_config
from voicebridge.relay.upstream import Upstream, UpstreamClosed, UpstreamConfig, open_connection

_EVENT_ID = "vb-preflight"
log = structlog.get_logger(__name__)


async def preflight_ctx(app: web.Application) -> AsyncIterator[None]:
    """UPSTREAM_PREFLIGHT: one session opened and configured as calls will be, at start."""
    from voicebridge.state import STATE

    state = app[STATE]
    s = state.settings
    if s.upstream_preflight == "off" or state.upstream is None:
        yield
        return
    reason, elapsed_ms = await check_upstream(
        state.upstream, _session(app), timeout_s=s.upstream_connect_timeout_s
    )
    if reason is None:
        log.info("app.preflight_ok", ms=elapsed_ms)
    elif s.upstream_preflight == "require":
        raise ConfigError([f"UPSTREAM_PREFLIGHT=require: {reason}"])
    else:
        log.error("app.preflight_failed", reason=reason, ms=elapsed_ms)
        # Degraded at once: every call would meet the same failure.
        state.upstream_failures = max(state.upstream_failures, s.upstream_degraded_after)
    yield


async def probe_ctx(app: web.Application) -> AsyncIterator[None]:
    """While the upstream is degraded, check it every UPSTREAM_PROBE_S; healthy on success."""
    from voicebridge.state import STATE

    state = app[STATE]
    if state.upstream is None or state.settings.upstream_probe_s <= 0:
        yield
        return
    task = asyncio.create_task(_probe(app), name="upstream_probe")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _probe(app: web.Application) -> None:
    from voicebridge.state import STATE

    state = app[STATE]
    s = state.settings
    assert state.upstream is not None
    while True:
        await asyncio.sleep(s.upstream_probe_s)
        if state.upstream_failures < s.upstream_degraded_after or state.draining:
            continue
        reason, elapsed_ms = await check_upstream(
            state.upstream, _session(app), timeout_s=s.upstream_connect_timeout_s
        )
        if reason is None:
            log.info("app.upstream_recovered", ms=elapsed_ms)
            state.upstream_failures = 0
        else:
            state.limited_log.warning(log, "app.upstream_probe_failed", reason=reason)


def _session(app: web.Application) -> dict[str, Any]:
    """The ``session`` of a call's first ``session.update`` (the browser's format)."""
    from voicebridge.state import STATE

    state = app[STATE]
    s = state.settings
    try:
        instructions = "" if s.agent_mode else s.read_instructions()
    except (OSError, UnicodeDecodeError) as exc:
        instructions = ""
        log.error("app.instructions_unreadable", error=str(exc))
    tools = None if state.toolbox is None else state.toolbox.session_tools()
    return build_session_config(s, instructions, tools=tools)


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
