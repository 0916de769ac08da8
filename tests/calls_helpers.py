"""Shared by the call-record route and page tests: the app and three stored calls."""

from __future__ import annotations

from aiohttp import web

from voicebridge import access
from voicebridge.calls import CallLog, add_call_routes

TOKEN = "admin-secret-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = 1_740_000_000.0  # 2025-02-19T21:20:00Z


def build_app(log: CallLog | None, admin_token: str = TOKEN) -> web.Application:
    """What the app does: the routes, with the /sessions admin rule."""

    def is_admin(request: web.Request) -> bool:
        return access.admin_ok(
            request.headers.get("Authorization", ""),
            request.remote,
            request.headers.get("Host"),
            admin_token,
        )

    app = web.Application()
    add_call_routes(app, lambda: log, is_admin)
    return app


async def seed(log: CallLog) -> None:
    """Three calls: a browser call with a barge-in, a phone call, an idle one."""
    first = log.recorder("call-a", channel="browser", client="address 127.0.0.1", started_at=T0)
    first.user_said("Tell me about the gold plan", at=T0 + 1)
    first.response_latency(510, response_id="r1", at=T0 + 2)
    first.barge_in(at=T0 + 4)
    first.agent_interrupted("r1", 1000, 4000, at=T0 + 4)
    first.agent_said("r1", "The gold plan costs ten pounds a month", at=T0 + 4)
    first.usage("r1", {"input_tokens": 100, "output_tokens": 200, "total_tokens": 300})
    first.ended("client_closed", 1000, at=T0 + 30)
    second = log.recorder("call-b", channel="twilio", client="+44 7700 900123", started_at=T0 + 600)
    second.user_said("Please cancel my contract", at=T0 + 601)
    second.ended("client_closed", 1000, at=T0 + 660)
    third = log.recorder("call-c", channel="browser", client="x", started_at=T0 + 1200)
    third.ended("idle", 1000, at=T0 + 1320)
    await log.writer.idle()
