"""The admin routes of call records: search, one call as JSON, one call as plain text.

``GET /calls``: filters ``from``/``to`` (ISO 8601 times or dates; a time without a zone
is UTC), ``channel``, ``reason`` (the end reason), ``instance``, ``q`` (words in any
turn, case-insensitive), paging with ``limit`` (1..200, default 50) and ``offset``;
newest first. ``GET /calls/{id}``: the whole record with its turns in order.
``GET /calls/{id}/transcript``: the same as readable text, as a download.

All need the admin token (the rule of the ``/sessions`` routes: the caller passes it in
as ``is_admin``); 401 without. 503 while call records are off or the store cannot be
reached, 400 for a bad filter (every problem listed), 404 for an unknown call.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import structlog
from aiohttp import web

from voicebridge import errors, protocol
from voicebridge.calls.record import CallRecord, iso, parse_iso
from voicebridge.calls.service import CallLog
from voicebridge.calls.store import (
    DEFAULT_PAGE,
    MAX_PAGE,
    MAX_QUERY_CHARS,
    CallQuery,
    StoreUnavailable,
)

log = structlog.get_logger(__name__)

# Proposed for voicebridge.errors.CODES (and static/js/errors.js); local until then.
ERR_CALLS_UNAVAILABLE: Final = errors.ERR_CALLS_UNAVAILABLE
ERR_BAD_QUERY: Final = errors.ERR_BAD_QUERY
MAX_OFFSET: Final = 1_000_000
_SAFE_ID = re.compile(r"[^A-Za-z0-9_.-]")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_call_routes(
    app: web.Application,
    get_log: Callable[[], CallLog | None],
    is_admin: Callable[[web.Request], bool],
) -> None:
    """Register ``GET /calls``, ``GET /calls/{call_id}`` and
    ``GET /calls/{call_id}/transcript``. ``get_log`` returns the running call log (None
    while records are off); ``is_admin`` says whether a request may read them."""
    routes = _CallRoutes(get_log, is_admin)
    app.router.add_get("/calls", routes.list_calls)
    app.router.add_get("/calls/{call_id}", routes.get_call)
    app.router.add_get("/calls/{call_id}/transcript", routes.transcript)


def _error(status: type[web.HTTPException], message: str, code: str) -> web.HTTPException:
    return status(text=protocol.error(message, code), content_type="application/json")


class _CallRoutes:
    def __init__(
        self, get_log: Callable[[], CallLog | None], is_admin: Callable[[web.Request], bool]
    ) -> None:
        self.get_log = get_log
        self.is_admin = is_admin

    def _log(self, request: web.Request) -> CallLog:
        if not self.is_admin(request):
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "admin token required", "code": errors.ERR_UNAUTHORIZED}),
                content_type="application/json",
                headers={"WWW-Authenticate": "Bearer"},
            )
        call_log = self.get_log()
        if call_log is None:
            raise _error(
                web.HTTPServiceUnavailable,
                "call records are off (CALL_STORE=off)",
                ERR_CALLS_UNAVAILABLE,
            )
        return call_log

    async def list_calls(self, request: web.Request) -> web.Response:
        """Calls matching the filters, newest first."""
        call_log = self._log(request)
        query = parse_query(request.query)
        try:
            page = await call_log.list(query)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        return web.json_response(
            {
                "count": len(page.calls),
                "total": page.total,
                "offset": page.offset,
                "limit": page.limit,
                "next_offset": page.next_offset,
                "calls": [record.summary() for record in page.calls],
            }
        )

    async def _record(self, request: web.Request) -> CallRecord:
        call_log = self._log(request)
        call_id = request.match_info["call_id"]
        try:
            record = await call_log.get(call_id)
        except StoreUnavailable as exc:
            raise _unavailable(exc) from None
        if record is None:
            raise _error(web.HTTPNotFound, f"no call {call_id[:64]}", errors.ERR_NOT_FOUND)
        return record

    async def get_call(self, request: web.Request) -> web.Response:
        """One call with its turns in order."""
        return web.json_response((await self._record(request)).as_dict())

    async def transcript(self, request: web.Request) -> web.Response:
        """One call as plain text, for download."""
        record = await self._record(request)
        name = _SAFE_ID.sub("_", record.call_id)[:80] or "call"
        return web.Response(
            text=render_transcript(record),
            content_type="text/plain",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="call-{name}.txt"'},
        )


def _unavailable(exc: StoreUnavailable) -> web.HTTPException:
    log.warning("calls.read_failed", error=str(exc))
    return _error(
        web.HTTPServiceUnavailable,
        "the call store cannot be reached; try again shortly",
        ERR_CALLS_UNAVAILABLE,
    )


def parse_query(params: Mapping[str, str]) -> CallQuery:
    """``GET /calls`` parameters as a query; 400 listing every bad one."""
    problems: list[str] = []

    def text(name: str) -> str | None:
        value = params.get(name)
        if value is None or not value.strip():
            return None
        value = value.strip()
        if len(value) > MAX_QUERY_CHARS:
            problems.append(f"{name}: at most {MAX_QUERY_CHARS} characters")
            return None
        return value

    def when(name: str) -> dt.datetime | None:
        value = text(name)
        if value is None:
            return None
        try:
            return parse_iso(value)
        except ValueError:
            problems.append(f"{name}: expected an ISO 8601 time such as 2025-01-31T09:00:00Z")
            return None

    def number(name: str, default: int, low: int, high: int) -> int:
        value = text(name)
        if value is None:
            return default
        if not value.isdigit() or not low <= int(value) <= high:
            problems.append(f"{name}: expected a whole number from {low} to {high}")
            return default
        return int(value)

    since, until = when("from"), when("to")
    query = CallQuery(
        since=since,
        until=until,
        channel=text("channel"),
        end_reason=text("reason"),
        instance=text("instance"),
        text=text("q"),
        limit=number("limit", DEFAULT_PAGE, 1, MAX_PAGE),
        offset=number("offset", 0, 0, MAX_OFFSET),
    )
    if problems:
        raise _error(web.HTTPBadRequest, "; ".join(problems), ERR_BAD_QUERY)
    return query


# -- plain text -------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    seconds = max(0.0, seconds)
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes):02d}:{rest:04.1f}"


def render_transcript(record: CallRecord) -> str:
    """A call as text: a header, then one line per turn, times from the call's start."""
    u = record.usage
    cost = f"${record.cost_usd:.4f}" if record.cost_usd is not None else "not estimated"
    latency = record.latency
    lines = [
        f"Call {record.call_id}",
        f"Channel: {record.channel}   Instance: {record.instance}   Client: {record.client}",
        f"Started: {iso(record.started_at)}   Ended: {iso(record.ended_at)}   "
        f"Duration: {_clock(record.duration_s)}",
        f"End: {record.end_reason}" + (f" ({record.close_code})" if record.close_code else ""),
        f"Barge-ins: {record.barge_ins}   Reconnects: {record.reconnects}   "
        f"Tool calls: {record.tool_calls}",
        "Response latency: "
        + (
            f"p50 {latency.p50_ms:g} ms, p95 {latency.p95_ms:g} ms, max {latency.max_ms:g} ms"
            if latency.count
            and latency.p50_ms is not None
            and latency.p95_ms is not None
            and latency.max_ms is not None
            else "none"
        ),
        f"Tokens: in {u.input_tokens} (text {u.input_text}, audio {u.input_audio}, "
        f"cached {u.cached}), out {u.output_tokens} (text {u.output_text}, "
        f"audio {u.output_audio})   Estimated cost: {cost}",
    ]
    if record.metadata:
        lines.append("Metadata: " + ", ".join(f"{k}={v}" for k, v in record.metadata.items()))
    lines.append("")
    for turn in record.turns:
        at = _clock((turn.at - record.started_at).total_seconds())
        if turn.kind == "user":
            line = f"Caller: {turn.text}"
        elif turn.kind == "user_text":
            line = f"Caller (typed): {turn.text}"
        elif turn.kind == "agent":
            latency_note = f" ({turn.latency_ms:g} ms)" if turn.latency_ms is not None else ""
            line = f"Agent{latency_note}: {turn.text}"
            if turn.interrupted:
                share = round((turn.heard_share or 0) * 100)
                line += f" [interrupted: {share}% heard"
                line += f"; not heard: {turn.unheard}]" if turn.unheard else "]"
        elif turn.kind == "tool":
            took = f", {turn.duration_ms:g} ms" if turn.duration_ms is not None else ""
            line = f"Tool {turn.name}: {turn.outcome}{took}"
        else:
            took = f", {turn.duration_ms:g} ms" if turn.duration_ms is not None else ""
            line = f"Voice Live reconnect ({turn.name}): {turn.outcome}{took}"
        lines.append(f"[{at}] {line}")
    if record.dropped_turns:
        lines.append(f"({record.dropped_turns} more turns were not kept)")
    return "\n".join(lines) + "\n"
