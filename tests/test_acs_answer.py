"""Answering ACS calls: Event Grid's webhook (``POST /acs/incoming``) answered with the real
azure-communication-callautomation client, talking HTTPS (a certificate made by openssl at
test time) to a local aiohttp server standing in for the ACS endpoint, which checks each
request's HMAC signature with the connection string's access key."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import io
import shutil
import ssl
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from tests.certs import make_self_signed_cert
from tests.conftest import make_settings
from voicebridge.app import create_app
from voicebridge.config import ConfigError, Settings
from voicebridge.phone import acs_answer, tokens

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

ACCESS_KEY = base64.b64encode(b"acs-access-key-for-the-tests-0123456789").decode()
EVENTS_KEY = "events-key-for-the-tests-0123456789"
SECRET = "a-phone-token-secret-of-some-length"
PUBLIC_URL = "https://voice.example.test"
ANSWER_PATH = "/calling/callConnections:answer"
CALL_CONTEXT = "eyJhbGciOi.incoming-call-context-for-tests.c2lnbmF0dXJl"
CORRELATION = "6e0c7b8a-2f4d-4c55-9a1e-3d2b1f0e9c88"
TOPIC = (
    "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Communication"
    "/communicationServices/acs"
)

AnyClient = TestClient[Any, Any]
MAX_CALLBACK = acs_answer.MAX_CALLBACK_BYTES


# -- a stand-in for the ACS endpoint ----------------------------------------------------


def make_certificate(directory: Path) -> Path:
    """A self-signed certificate for 127.0.0.1 (its key is ``acs.key`` next to it)."""
    return make_self_signed_cert(directory, "acs")[0]


@attrs.define
class AcsRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    json: Any
    signature_ok: bool


@attrs.define
class FakeAcs:
    """The Call Automation REST endpoint: records each request and checks its HMAC
    signature (the scheme of azure-communication's ``HMACCredentialsPolicy``)."""

    access_key: bytes
    #: What ``answer`` replies: a status and a JSON body.
    reply: tuple[int, dict[str, Any]] = (200, {})
    #: Set to make answers wait until the test lets them go.
    hold: asyncio.Event | None = None
    requests: list[AcsRequest] = attrs.Factory(list)
    port: int = 0

    def signature_ok(self, request: web.Request, body: bytes) -> bool:
        content_hash = base64.b64encode(hashlib.sha256(body).digest()).decode()
        date = request.headers.get("x-ms-date", "")
        signed = f"{request.method}\n{request.path_qs}\n{date};{request.host};{content_hash}"
        mac = hmac.new(self.access_key, signed.encode(), hashlib.sha256).digest()
        expected = (
            "HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256"
            f"&Signature={base64.b64encode(mac).decode()}"
        )
        return (
            request.headers.get("x-ms-content-sha256") == content_hash
            and request.headers.get("Authorization") == expected
        )

    async def answer(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            AcsRequest(
                method=request.method,
                path=request.path,
                query=parse_qs(request.query_string),
                headers=dict(request.headers),
                body=body,
                json=await request.json(),
                signature_ok=self.signature_ok(request, body),
            )
        )
        if self.hold is not None:
            await self.hold.wait()
        status, reply = self.reply
        if status == 200:
            sent = self.requests[-1].json
            reply = {
                "callConnectionId": "411f0b00-a4fa-4b2e-9a39-2a2e2b1b3f10",
                "serverCallId": "aHR0cHM6Ly9hcGkuZXhhbXBsZS50ZXN0L2NhbGw",
                "callConnectionState": "connecting",
                "callbackUri": sent["callbackUri"],
                "mediaStreamingSubscription": {
                    "id": "c0ffee00-0000-4000-8000-000000000001",
                    "state": "inactive",
                    "subscribedContentTypes": ["audio"],
                },
            }
        return web.json_response(reply, status=status)


@pytest.fixture
async def fake_acs(tmp_path: Path) -> AsyncIterator[tuple[FakeAcs, Path]]:
    cert = make_certificate(tmp_path)
    fake = FakeAcs(access_key=base64.b64decode(ACCESS_KEY))
    app = web.Application()
    app.router.add_post(ANSWER_PATH, fake.answer)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, tmp_path / "acs.key")
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    fake.port = runner.addresses[0][1]
    try:
        yield fake, cert
    finally:
        if fake.hold is not None:
            fake.hold.set()
        await runner.cleanup()


def acs_env(port: int, **overrides: str) -> dict[str, str]:
    env = {
        "ACS_CONNECTION_STRING": f"endpoint=https://127.0.0.1:{port}/;accesskey={ACCESS_KEY}",
        "ACS_EVENTS_KEY": EVENTS_KEY,
        "PUBLIC_URL": PUBLIC_URL,
        "PHONE_TOKEN_SECRET": SECRET,
        "PHONE_START_TIMEOUT_S": "1",
    }
    env.update(overrides)
    return env


StartApp = Callable[..., Awaitable[AnyClient]]


@pytest.fixture
async def start_app(aiohttp_client: Any, fake_acs: tuple[FakeAcs, Path]) -> StartApp:
    """The app with ACS answering on, its SDK client trusting the fake's certificate."""
    fake, cert = fake_acs

    async def start(**overrides: str) -> AnyClient:
        app = create_app(make_settings(**acs_env(fake.port, **overrides)))
        # azure-core's transport option: verify the endpoint against this CA file.
        app[acs_answer.CLIENT_OPTIONS] = {"connection_verify": str(cert)}
        client: AnyClient = await aiohttp_client(app)
        return client

    return start


def incoming_call_event(correlation_id: str = CORRELATION) -> dict[str, Any]:
    """An ``IncomingCall`` as Event Grid delivers it (Event Grid schema)."""
    return {
        "id": "0bd1ef2a-3c4d-4e5f-8a9b-0c1d2e3f4a5b",
        "topic": TOPIC,
        "subject": "/phonenumber/15555550100",
        "eventType": acs_answer.EVENT_INCOMING_CALL,
        "eventTime": "2025-01-01T12:00:00Z",
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "data": {
            "to": {"kind": "phoneNumber", "rawId": "4:+15555550100"},
            "from": {
                "kind": "phoneNumber",
                "rawId": "4:+15555550123",
                "phoneNumber": {"value": "+15555550123"},
            },
            "callerDisplayName": "",
            "serverCallId": "aHR0cHM6Ly9hcGkuZXhhbXBsZS50ZXN0L2NhbGw",
            "incomingCallContext": CALL_CONTEXT,
            "correlationId": correlation_id,
        },
    }


def incoming_url(key: str | None = EVENTS_KEY, path: str = "/acs/incoming") -> str:
    return path if key is None else f"{path}?key={key}"


# -- answering --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "audio_format"), [("16000", "pcm16KMono"), ("24000", "pcm24KMono")]
)
async def test_incoming_call_is_answered_streaming_to_ws_acs(
    start_app: StartApp, fake_acs: tuple[FakeAcs, Path], rate: str, audio_format: str
) -> None:
    """An IncomingCall is answered by the SDK with a signed request whose media streaming
    points at wss://<PUBLIC_URL host>/ws/acs with a token the stream route accepts."""
    fake, _ = fake_acs
    client = await start_app(ACS_AUDIO_RATE=rate)
    with capture_logs() as logs:
        resp = await client.post(incoming_url(), json=[incoming_call_event()])
    assert resp.status == 200, await resp.text()
    assert await resp.json() == {"answered": 1, "failed": 0}

    [sent] = fake.requests
    assert (sent.method, sent.path) == ("POST", ANSWER_PATH)
    assert sent.query["api-version"] == ["2026-03-12"]
    assert sent.signature_ok, "the request is not signed with the connection string's key"
    assert sent.headers["Repeatability-Request-ID"]
    body = sent.json
    assert body["incomingCallContext"] == CALL_CONTEXT
    assert body["callbackUri"] == f"{PUBLIC_URL}/acs/events?key={EVENTS_KEY}"
    assert body["operationContext"] == CORRELATION
    media = body["mediaStreamingOptions"]
    transport = urlsplit(media.pop("transportUrl"))
    assert (transport.scheme, transport.netloc, transport.path) == (
        "wss",
        "voice.example.test",
        "/ws/acs",
    )
    assert media == {
        "transportType": "websocket",
        "contentType": "audio",
        "audioChannelType": "mixed",
        "startMediaStreaming": True,
        "enableBidirectional": True,
        "audioFormat": audio_format,
    }
    [token] = parse_qs(transport.query)["token"]
    grant = tokens.verify(SECRET.encode(), token, channel="acs")
    assert grant.subject == CORRELATION

    # The token is one /ws/acs takes (the stream then waits for AudioMetadata).
    ws = await client.ws_connect(f"/ws/acs?token={token}")
    await ws.close()

    answered = [e for e in logs if e["event"] == "acs.answered"]
    assert answered and answered[0]["call_connection_id"] == "411f0b00-a4fa-4b2e-9a39-2a2e2b1b3f10"
    assert answered[0]["caller"] == "+1******0123"
    assert EVENTS_KEY not in repr(logs) and token not in repr(logs)


async def test_a_correlation_id_unfit_for_a_token_gets_a_fresh_subject(
    start_app: StartApp, fake_acs: tuple[FakeAcs, Path]
) -> None:
    """A missing or odd correlation id (a '|', too long) gives the token a fresh subject."""
    fake, _ = fake_acs
    client = await start_app()
    odd = ["a|b", "x" * 65, ""]
    resp = await client.post(incoming_url(), json=[incoming_call_event(c) for c in odd])
    assert await resp.json() == {"answered": 3, "failed": 0}
    subjects = set()
    for sent in fake.requests:
        [token] = parse_qs(urlsplit(sent.json["mediaStreamingOptions"]["transportUrl"]).query)[
            "token"
        ]
        subject = tokens.verify(SECRET.encode(), token, channel="acs").subject
        assert subject not in odd and len(subject) <= 64 and "|" not in subject
        subjects.add(subject)
    assert len(subjects) == 3


async def test_a_refused_answer_is_logged_without_secrets_and_still_200(
    start_app: StartApp, fake_acs: tuple[FakeAcs, Path]
) -> None:
    """ACS refusing the answer (its error echoing the callback URL) is logged with the key
    masked; Event Grid still gets 200, so it does not redeliver the batch."""
    fake, _ = fake_acs
    echo = f"Invalid callback URI {PUBLIC_URL}/acs/events?key={EVENTS_KEY}"
    fake.reply = (400, {"error": {"code": "8523", "message": echo}})
    client = await start_app()
    with capture_logs() as logs:
        resp = await client.post(incoming_url(), json=[incoming_call_event()])
    assert resp.status == 200
    assert await resp.json() == {"answered": 0, "failed": 1}
    [failed] = [e for e in logs if e["event"] == "acs.answer_failed"]
    assert "400" in failed["error"] and "key=***" in failed["error"]
    assert EVENTS_KEY not in repr(logs) and ACCESS_KEY not in repr(logs)
    assert failed["correlation_id"] == CORRELATION


async def test_an_answer_that_hangs_is_bounded(
    start_app: StartApp, fake_acs: tuple[FakeAcs, Path]
) -> None:
    """An ACS that never replies costs the webhook the answer timeout, not Event Grid's."""
    fake, _ = fake_acs
    fake.hold = asyncio.Event()
    client = await start_app()
    client.app[acs_answer.ANSWERER].timeout_s = 0.3
    with capture_logs() as logs:
        resp = await client.post(incoming_url(), json=[incoming_call_event()])
    assert await resp.json() == {"answered": 0, "failed": 1}
    [failed] = [e for e in logs if e["event"] == "acs.answer_failed"]
    assert failed["error"] == "no answer from ACS within 0.3 s"


# -- the webhook's other duties -----------------------------------------------------------


async def test_subscription_validation_handshake(
    start_app: StartApp, fake_acs: tuple[FakeAcs, Path]
) -> None:
    """Event Grid's SubscriptionValidationEvent is answered with its validationCode."""
    fake, _ = fake_acs
    client = await start_app()
    code = "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"
    event = {
        "id": "2d1781af-3a4c-4d7c-bd0c-e34b19da4e66",
        "topic": TOPIC,
        "subject": "",
        "data": {
            "validationCode": code,
            "validationUrl": "https://rp-eastus2.eventgrid.azure.net/eventsubscriptions/x/validate?id=y",
        },
        "eventType": acs_answer.EVENT_VALIDATION,
        "eventTime": "2025-01-01T12:00:00Z",
        "metadataVersion": "1",
        "dataVersion": "2",
    }
    resp = await client.post(
        incoming_url(), json=[event], headers={"aeg-event-type": "SubscriptionValidation"}
    )
    assert resp.status == 200
    assert await resp.json() == {"validationResponse": code}
    assert fake.requests == []


@pytest.mark.parametrize("path", ["/acs/incoming", "/acs/events"])
@pytest.mark.parametrize("key", [None, "", "wrong-key-of-the-same-length-0123456", EVENTS_KEY[:-1]])
async def test_a_wrong_or_missing_key_is_401(
    start_app: StartApp, fake_acs: tuple[FakeAcs, Path], path: str, key: str | None
) -> None:
    """Without ?key=ACS_EVENTS_KEY both routes answer 401 and nothing is answered."""
    fake, _ = fake_acs
    client = await start_app()
    with capture_logs() as logs:
        resp = await client.post(incoming_url(key, path), json=[incoming_call_event()])
    assert resp.status == 401
    assert (await resp.json())["code"] == "unauthorized"
    assert fake.requests == []
    assert EVENTS_KEY not in repr(logs)


async def test_call_events_are_logged(start_app: StartApp) -> None:
    """The callback URL logs each Call Automation event's type and call connection."""
    client = await start_app()
    event = {
        "id": "a1b2c3d4-0000-4000-8000-000000000002",
        "source": "calling/callConnections/411f0b00-a4fa-4b2e-9a39-2a2e2b1b3f10",
        "type": "Microsoft.Communication.MediaStreamingFailed",
        "data": {
            "callConnectionId": "411f0b00-a4fa-4b2e-9a39-2a2e2b1b3f10",
            "correlationId": CORRELATION,
            "resultInformation": {"code": 500, "subCode": 8581, "message": "websocket failed"},
        },
        "time": "2025-01-01T12:00:01Z",
        "specversion": "1.0",
        "datacontenttype": "application/json",
        "subject": "calling/callConnections/411f0b00-a4fa-4b2e-9a39-2a2e2b1b3f10",
    }
    with capture_logs() as logs:
        resp = await client.post(incoming_url(path="/acs/events"), json=[event])
    assert resp.status == 200
    assert await resp.json() == {"received": 1}
    [logged] = [e for e in logs if e["event"] == "acs.call_event"]
    assert logged["type"] == "Microsoft.Communication.MediaStreamingFailed"
    assert logged["call_connection_id"] == "411f0b00-a4fa-4b2e-9a39-2a2e2b1b3f10"
    assert logged["result"] == {"code": "500", "subCode": "8581", "message": "websocket failed"}


@pytest.mark.parametrize("path", ["/acs/incoming", "/acs/events"])
async def test_bad_and_oversized_bodies_are_refused(start_app: StartApp, path: str) -> None:
    """A body that is not JSON events is 400; one over the route's limit is 413."""
    client = await start_app()
    for body in (b"not json", b'"a string"', b"[1, 2]"):
        resp = await client.post(incoming_url(path=path), data=body)
        assert resp.status == 400, body
        assert (await resp.json())["code"] == "bad_message"
    limit = acs_answer.MAX_INCOMING_BYTES if path == "/acs/incoming" else MAX_CALLBACK
    big = b"[" + b" " * limit + b"]"
    resp = await client.post(incoming_url(path=path), data=io.BytesIO(big))
    assert resp.status == 413

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: counted as it comes
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    resp = await client.post(incoming_url(path=path), data=chunked())
    assert resp.status == 413


async def test_the_routes_are_absent_without_a_connection_string(aiohttp_client: Any) -> None:
    """Without ACS_CONNECTION_STRING there is no /acs/incoming nor /acs/events."""
    client: AnyClient = await aiohttp_client(create_app(make_settings(PUBLIC_URL=PUBLIC_URL)))
    for path in ("/acs/incoming", "/acs/events"):
        resp = await client.post(incoming_url(path=path), json=[incoming_call_event()])
        assert resp.status == 404, path


# -- settings -----------------------------------------------------------------------------


def settings_problems(**env: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        make_settings(**env)
    return info.value.problems


def test_settings_default_and_redacted() -> None:
    """ACS answering is off by default; when on, redacted() masks both secrets."""
    assert not make_settings().phone.acs_answer_enabled
    s: Settings = make_settings(**acs_env(443, ACS_AUDIO_RATE="24000"))
    assert s.phone.acs_answer_enabled and s.phone.acs_audio_rate == 24000
    shown = repr(s.redacted()) + repr(s)
    assert ACCESS_KEY not in shown and EVENTS_KEY not in shown
    assert s.redacted()["phone"]["acs_connection_string"] == "***"
    assert s.redacted()["phone"]["acs_events_key"] == "***"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"ACS_EVENTS_KEY": ""}, "ACS_EVENTS_KEY: required with ACS_CONNECTION_STRING"),
        ({"ACS_EVENTS_KEY": "short"}, "ACS_EVENTS_KEY: must be 16 to 256"),
        ({"ACS_EVENTS_KEY": "has spaces and & signs 0123"}, "ACS_EVENTS_KEY: must be 16 to 256"),
        ({"PUBLIC_URL": ""}, "PUBLIC_URL: an https URL is required with ACS_CONNECTION_STRING"),
        ({"PUBLIC_URL": "http://voice.example.test"}, "PUBLIC_URL: an https URL is required"),
        ({"ACS_AUDIO_RATE": "8000"}, "ACS_AUDIO_RATE: must be 16000 or 24000"),
        (
            {"ACS_CONNECTION_STRING": f"accesskey={ACCESS_KEY}"},
            "ACS_CONNECTION_STRING: must be endpoint=https://",
        ),
        (
            {"ACS_CONNECTION_STRING": "endpoint=https://acs.example.test/;accesskey=not base64!"},
            "ACS_CONNECTION_STRING: the accesskey part is not base64",
        ),
    ],
)
def test_settings_problems(overrides: dict[str, str], expected: str) -> None:
    """Each ACS misconfiguration is a start-up problem that repeats no secret."""
    problems = settings_problems(**acs_env(443, **overrides))
    assert any(p.startswith(expected) for p in problems), problems
    assert "not base64!" not in repr(problems) and EVENTS_KEY not in repr(problems)
    assert ACCESS_KEY not in repr(problems)


def test_settings_need_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """ACS_CONNECTION_STRING without azure-communication-callautomation says what to install."""
    monkeypatch.setitem(sys.modules, "azure.communication.callautomation", None)
    problems = settings_problems(**acs_env(443))
    assert any("pip install 'voicebridge[acs]'" in p for p in problems), problems
