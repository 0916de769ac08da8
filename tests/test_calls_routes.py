"""The admin routes of call records over real HTTP: access rules, filters, one call,
the transcript download, and the answers while records are off or the store is down."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from tests.calls_helpers import AUTH, TOKEN, build_app, seed
from tests.postgres_server import free_port
from voicebridge.calls import CallLog, CallSettings


@pytest.fixture
async def call_log(tmp_path: Path) -> AsyncIterator[CallLog]:
    log = CallLog(
        CallSettings.from_environ(
            {
                "CALL_STORE": str(tmp_path / "calls.sqlite3"),
                "CALL_SPOOL_FILE": str(tmp_path / "spool.jsonl"),
                "CALL_RETENTION_DAYS": "0",  # the seeded calls are from 2025
            }
        ),
        instance="host-1",
    )
    await log.start()
    await seed(log)
    yield log
    await log.close(5)


@pytest.fixture
async def client(aiohttp_client: Any, call_log: CallLog) -> TestClient[Any, Any]:
    made: TestClient[Any, Any] = await aiohttp_client(build_app(call_log))
    return made


@pytest.mark.parametrize("path", ["/calls", "/calls/call-a", "/calls/call-a/transcript"])
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}]
)
async def test_every_route_needs_the_admin_token(
    client: TestClient[Any, Any], path: str, headers: dict[str, str]
) -> None:
    """Without the right bearer token: 401 JSON with WWW-Authenticate, no record data."""
    resp = await client.get(path, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    body = await resp.json()
    assert body["code"] == "unauthorized"
    assert "gold" not in await resp.text()


async def test_without_an_admin_token_loopback_is_admin(
    aiohttp_client: Any, call_log: CallLog
) -> None:
    """With no ADMIN_TOKEN set, a loopback client naming a loopback host is let in."""
    client: TestClient[Any, Any] = await aiohttp_client(build_app(call_log, admin_token=""))
    resp = await client.get("/calls")
    assert resp.status == 200
    resp = await client.get("/calls", headers={"Host": "calls.example.com"})
    assert resp.status == 401


async def test_list_and_filters(client: TestClient[Any, Any]) -> None:
    """GET /calls lists newest first and filters by time, channel, reason and words."""

    async def ids(**params: str) -> list[str]:
        resp = await client.get("/calls", params=params, headers=AUTH)
        assert resp.status == 200, await resp.text()
        return [c["call_id"] for c in (await resp.json())["calls"]]

    assert await ids() == ["call-c", "call-b", "call-a"]
    assert await ids(**{"from": "2025-02-19T21:25:00Z"}) == ["call-c", "call-b"]
    assert await ids(to="2025-02-19T22:35:00+01:00") == ["call-b", "call-a"]
    assert await ids(channel="twilio") == ["call-b"]
    assert await ids(reason="idle") == ["call-c"]
    assert await ids(q="GOLD plan") == ["call-a"]
    resp = await client.get("/calls", params={"limit": "2"}, headers=AUTH)
    page = await resp.json()
    assert (page["count"], page["total"], page["next_offset"]) == (2, 3, 2)
    first = page["calls"][1]
    assert first["client"] == "+** **** ****23"  # phone numbers are masked when stored
    assert first["started_at"] == "2025-02-19T21:30:00.000Z"


async def test_bad_filters_are_400_with_every_problem(client: TestClient[Any, Any]) -> None:
    """Unparsable times and out-of-range paging are listed together."""
    resp = await client.get(
        "/calls", params={"from": "yesterday", "limit": "5000", "offset": "-1"}, headers=AUTH
    )
    assert resp.status == 400
    body = await resp.json()
    assert body["code"] == "bad_query"
    assert "from:" in body["message"] and "limit:" in body["message"]
    assert "offset:" in body["message"]


async def test_one_call_with_its_turns(client: TestClient[Any, Any]) -> None:
    """GET /calls/{id}: the whole record, turns in order, the interrupted answer as heard."""
    resp = await client.get("/calls/call-a", headers=AUTH)
    assert resp.status == 200
    call = await resp.json()
    assert [t["kind"] for t in call["turns"]] == ["user", "agent"]
    agent = call["turns"][1]
    assert agent["interrupted"] and agent["heard_share"] == 0.25
    assert agent["text"] == "The gold" and agent["unheard"].startswith("plan costs")
    assert agent["latency_ms"] == 510
    assert call["barge_ins"] == 1 and call["usage"]["output_tokens"] == 200
    assert call["duration_s"] == 30
    resp = await client.get("/calls/nope", headers=AUTH)
    assert resp.status == 404 and (await resp.json())["code"] == "not_found"


async def test_transcript_download(client: TestClient[Any, Any]) -> None:
    """The transcript is plain text, offered as a file."""
    resp = await client.get("/calls/call-a/transcript", headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "text/plain"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="call-call-a.txt"'
    text = await resp.text()
    assert "Caller: Tell me about the gold plan" in text
    assert "[interrupted: 25% heard" in text


async def test_records_off_is_503(aiohttp_client: Any) -> None:
    """With CALL_STORE=off the routes answer 503 calls_unavailable (after the auth check)."""
    client: TestClient[Any, Any] = await aiohttp_client(build_app(None))
    assert (await client.get("/calls")).status == 401
    resp = await client.get("/calls", headers=AUTH)
    assert resp.status == 503
    assert (await resp.json())["code"] == "calls_unavailable"


async def test_store_down_is_503_and_masks_the_password(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    """A PostgreSQL store that cannot be reached: 503 quickly, its password nowhere."""
    settings = CallSettings.from_environ(
        {
            "CALL_STORE": f"postgresql://vb:pg-secret-9@127.0.0.1:{free_port()}/calls",
            "CALL_SPOOL_FILE": str(tmp_path / "spool.jsonl"),
            "CALL_WRITE_TIMEOUT_S": "2",
        }
    )
    log = CallLog(settings, instance="h")
    await log.start()  # a store that is down is not fatal
    try:
        client: TestClient[Any, Any] = await aiohttp_client(build_app(log))
        started = time.monotonic()
        resp = await client.get("/calls", headers=AUTH)
        assert resp.status == 503
        assert time.monotonic() - started < 5
        text = await resp.text()
        assert "pg-secret-9" not in text and "calls_unavailable" in text
        assert "pg-secret-9" not in log.description
    finally:
        await log.close(2)
