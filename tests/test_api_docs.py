"""The API descriptions: /openapi.json, /asyncapi.yaml, the Swagger UI page at /docs.

The documents must be valid (OpenAPI 3.1 by openapi-spec-validator, AsyncAPI 3.0 by the
official JSON Schema), complete (every route the app serves and every message the
protocol module builds or parses is described, and nothing else) and true (real
responses and real protocol messages validate against the schemas, with undocumented
fields refused).

The AsyncAPI schema: no Python package ships it, so ``tests/schemas/`` holds the official
``3.0.0-without-$id.json`` of the npm package ``@asyncapi/specs`` 6.11.1 (the AsyncAPI
initiative's own), gzipped (33 kB instead of 380 kB); its SHA-256 is checked below.
"""

from __future__ import annotations

import copy
import gzip
import hashlib
import inspect
import json
import re
from collections.abc import AsyncIterator, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from jsonschema import Draft7Validator, Draft202012Validator
from openapi_spec_validator import validate as validate_openapi

from tests.calls_helpers import AUTH, build_app, seed
from tests.conftest import ROOT, make_settings
from tests.voice_client import VoiceSocket
from voicebridge import __version__, errors, protocol
from voicebridge.apidocs import asyncapi_document, openapi_document
from voicebridge.apidocs.asyncapi import MESSAGES, STATUSES, message_types, phone_message_types
from voicebridge.apidocs.swagger import ASSETS
from voicebridge.app import create_app
from voicebridge.calls import CallLog, CallSettings
from voicebridge.relay.tool_calls import tool_message
from voicebridge.tools.model import ToolCall, ToolOutcome

AnyClient = TestClient[Any, Any]
PACKAGE = ROOT / "voicebridge"
ASYNCAPI_SCHEMA = ROOT / "tests" / "schemas" / "asyncapi-3.0.0-without-id.json.gz"
ASYNCAPI_SCHEMA_SHA256 = "abe96881dbfaad495ccbb6bd8d3fb43ca18a13b9d7564849ccb66f39d5e5b20f"
CHROMIUM = "/usr/bin/chromium"
HAVE_CHROMIUM = Path(CHROMIUM).exists()
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# Settings that turn on whatever adds routes, so no route hides from the comparison.
ROUTE_SETTINGS = (
    {},
    {
        "ADMIN_TOKEN": "admin-1",
        "CLIENT_TOKEN": "client-1",
        "TWILIO_AUTH_TOKEN": "twilio-1",
        "ACS_CONNECTION_STRING": "endpoint=https://acs.example.test/;accesskey=c2VjcmV0LWtleQ==",
        "ACS_EVENTS_KEY": "events-key-0123456789",
        "PUBLIC_URL": "https://voice.example.test",
    },
)


async def client_for(aiohttp_client: Any, **env: str) -> AnyClient:
    client: AnyClient = await aiohttp_client(create_app(make_settings(**env)))
    return client


# -- helpers ---------------------------------------------------------------------------


def _strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` wherever an object lists its
    properties and says nothing about others: a field the server sends but the document
    does not name fails validation."""
    if isinstance(schema, dict):
        out = {k: _strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and "allOf" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [_strict(v) for v in schema]
    return schema


def _call_schema_strict(doc: dict[str, Any]) -> None:
    # allOf of two objects cannot both refuse the other's fields: merge Call's parts.
    schemas = doc["components"]["schemas"]
    summary, extra = schemas["CallSummary"], schemas["Call"]["allOf"][1]
    schemas["Call"] = {
        "type": "object",
        "required": summary["required"] + extra["required"],
        "properties": {**summary["properties"], **extra["properties"]},
    }


def openapi_validator(name: str) -> Draft202012Validator:
    """A strict validator for ``#/components/schemas/<name>`` of the OpenAPI document."""
    doc = copy.deepcopy(openapi_document())
    _call_schema_strict(doc)
    root = {"$ref": f"#/components/schemas/{name}", "components": _strict(doc["components"])}
    return Draft202012Validator(root)


def assert_valid(validator: Any, instance: Any) -> None:
    problems = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(instance)
    ]
    assert not problems, f"{instance!r} does not match its schema: {problems}"


def served_routes(app: web.Application) -> tuple[set[tuple[str, str]], list[str]]:
    """(method, path) of every route but static files and HEAD; and the static prefixes."""
    routes: set[tuple[str, str]] = set()
    static: list[str] = []
    for resource in app.router.resources():
        if isinstance(resource, web.StaticResource):
            static.append(resource.canonical)
            continue
        for route in resource:
            if route.method not in {"HEAD", "*"}:
                routes.add((route.method, resource.canonical))
    return routes, static


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in METHODS
        if method in item
    }


def operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    op: dict[str, Any] = doc["paths"][path][method.lower()]
    return op


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def resolve(doc: Any, ref: str) -> Any:
    assert ref.startswith("#/"), f"not a local reference: {ref}"
    node = doc
    for raw in ref[2:].split("/"):
        part = raw.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def source_matches(pattern: str) -> set[str]:
    """Every first group of ``pattern`` in the package's source."""
    found: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        found.update(re.findall(pattern, path.read_text(encoding="utf-8")))
    return found


# -- OpenAPI -----------------------------------------------------------------------------


async def test_openapi_json_is_a_valid_openapi_3_1_document(aiohttp_client: Any) -> None:
    """GET /openapi.json serves an OpenAPI 3.1 document that validates, with the version."""
    client = await client_for(aiohttp_client)
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1.")
    assert doc["info"]["version"] == __version__
    validate_openapi(doc)
    for ref in set(refs(doc)):
        resolve(doc, ref)


@pytest.mark.parametrize("env", ROUTE_SETTINGS, ids=["defaults", "everything-on"])
def test_openapi_describes_exactly_the_routes_the_app_serves(env: dict[str, str]) -> None:
    """Every (method, path) in app.router is in the OpenAPI paths, and every documented
    operation is served (static files and HEAD aside)."""
    served, static = served_routes(create_app(make_settings(**env)))
    documented = documented_routes(openapi_document())
    assert static, "the browser client's /static/ should be served"
    missing = served - documented
    assert not missing, f"served but not in /openapi.json: {sorted(missing)}"
    # Some routes exist only with their settings (the ACS webhook): documented is what
    # some configuration serves.
    served_somewhere = set().union(
        *(served_routes(create_app(make_settings(**other)))[0] for other in ROUTE_SETTINGS)
    )
    stale = documented - served_somewhere
    assert not stale, f"in /openapi.json but not served: {sorted(stale)}"


def test_admin_routes_declare_the_admin_security_scheme() -> None:
    """Every /sessions and /calls operation needs the admin bearer and documents its 401;
    no other operation claims the admin scheme."""
    doc = openapi_document()
    assert doc["components"]["securitySchemes"]["adminToken"]["scheme"] == "bearer"
    for path, item in doc["paths"].items():
        for method in METHODS:
            if method not in item:
                continue
            op = item[method]
            admin = path.startswith(("/sessions", "/calls"))
            assert (op.get("security") == [{"adminToken": []}]) is admin, (method, path)
            if admin:
                assert "401" in op["responses"], (method, path)
            if path != "/health":
                assert "421" in op["responses"], (method, path)


async def test_http_answers_match_the_documented_schemas(aiohttp_client: Any) -> None:
    """Real answers of /health, /config, /sessions (with a live session) and the error
    bodies validate against their schemas, with every status code documented."""
    doc = openapi_document()
    client = await client_for(aiohttp_client)

    async def check(method: str, path: str, template: str, schema: str, **kw: Any) -> Any:
        resp = await client.request(method, path, **kw)
        responses = operation(doc, method, template)["responses"]
        assert str(resp.status) in responses, f"{method} {path}: {resp.status} not documented"
        body = await resp.json()
        assert_valid(openapi_validator(schema), body)
        return body

    await check("GET", "/health", "/health", "Health")
    await check("GET", "/config", "/config", "ClientConfig")
    voice = VoiceSocket(await client.ws_connect("/ws/voice"))
    started = await voice.until_type("session_started")
    await voice.ws.send_json({"type": "text", "text": "hello"})
    await voice.until_type("agent_transcript")
    listed = await check("GET", "/sessions", "/sessions", "SessionList")
    assert listed["count"] == 1
    sid = started["session_id"]
    await check("GET", f"/sessions/{sid}", "/sessions/{session_id}", "Session")
    await check("GET", "/sessions/nope", "/sessions/{session_id}", "Error")
    await check("DELETE", "/sessions/nope", "/sessions/{session_id}", "Error")
    await check("DELETE", f"/sessions/{sid}", "/sessions/{session_id}", "SessionEnding")
    await voice.ws.close()
    await check("GET", "/calls", "/calls", "Error")  # CALL_STORE=off: 503
    await check("GET", "/config", "/config", "Error", headers={"Host": "evil.example"})


async def test_http_error_bodies_with_tokens_match_the_schemas(aiohttp_client: Any) -> None:
    """The admin 401 and the /ws/voice 401 (CLIENT_TOKEN) have the documented shapes."""
    doc = openapi_document()
    client = await client_for(aiohttp_client, ADMIN_TOKEN="admin-1", CLIENT_TOKEN="client-1")
    resp = await client.get("/sessions")
    assert resp.status == 401 and "401" in operation(doc, "GET", "/sessions")["responses"]
    assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert_valid(openapi_validator("AdminUnauthorized"), await resp.json())
    resp = await client.get("/ws/voice", headers={"Connection": "Upgrade", "Upgrade": "websocket"})
    assert resp.status == 401 and "401" in operation(doc, "GET", "/ws/voice")["responses"]
    assert_valid(openapi_validator("Error"), await resp.json())


@pytest.fixture
async def call_log(tmp_path: Path) -> AsyncIterator[CallLog]:
    log = CallLog(
        CallSettings.from_environ(
            {
                "CALL_STORE": str(tmp_path / "calls.sqlite3"),
                "CALL_SPOOL_FILE": str(tmp_path / "spool.jsonl"),
                "CALL_RETENTION_DAYS": "0",
            }
        ),
        instance="host-1",
    )
    await log.start()
    await seed(log)
    yield log
    await log.close(5)


async def test_call_record_answers_match_the_documented_schemas(
    aiohttp_client: Any, call_log: CallLog
) -> None:
    """/calls, /calls/{id} and the transcript answer as documented, filters' 400 too."""
    doc = openapi_document()
    client: AnyClient = await aiohttp_client(build_app(call_log))
    page = await client.get("/calls", headers=AUTH)
    assert page.status == 200
    body = await page.json()
    assert body["count"] == 3
    assert_valid(openapi_validator("CallPage"), body)
    one = await client.get("/calls/call-a", headers=AUTH)
    assert_valid(openapi_validator("Call"), await one.json())
    bad = await client.get("/calls?limit=0&from=yesterday", headers=AUTH)
    assert str(bad.status) in operation(doc, "GET", "/calls")["responses"]
    assert_valid(openapi_validator("Error"), await bad.json())
    text = await client.get("/calls/call-a/transcript", headers=AUTH)
    documented = operation(doc, "GET", "/calls/{call_id}/transcript")["responses"]["200"]
    assert text.content_type in documented["content"]
    assert "Content-Disposition" in text.headers
    names = {p["name"] for p in operation(doc, "GET", "/calls")["parameters"]}
    assert names == {"from", "to", "channel", "reason", "instance", "q", "limit", "offset"}


# -- AsyncAPI ----------------------------------------------------------------------------


def asyncapi_schema() -> dict[str, Any]:
    raw = gzip.decompress(ASYNCAPI_SCHEMA.read_bytes())
    assert hashlib.sha256(raw).hexdigest() == ASYNCAPI_SCHEMA_SHA256, "not the official file"
    schema: dict[str, Any] = json.loads(raw)
    return schema


async def test_asyncapi_yaml_is_a_valid_asyncapi_3_document(aiohttp_client: Any) -> None:
    """GET /asyncapi.yaml is YAML that validates against the official AsyncAPI 3.0.0 JSON
    Schema; its references resolve, operations use their channel's messages, and each
    message's examples fit its payload."""
    client = await client_for(aiohttp_client)
    resp = await client.get("/asyncapi.yaml")
    assert resp.status == 200
    assert resp.content_type == "application/yaml"
    doc = yaml.safe_load(await resp.text())
    assert doc == asyncapi_document()
    assert doc["asyncapi"] == "3.0.0"
    assert doc["info"]["version"] == __version__
    assert_valid(Draft7Validator(asyncapi_schema()), doc)
    broken = copy.deepcopy(doc)
    broken["operations"]["sendPong"]["action"] = "reply"
    assert not Draft7Validator(asyncapi_schema()).is_valid(broken), "the schema checks nothing"
    for ref in set(refs(doc)):
        resolve(doc, ref)
    for op_id, op in doc["operations"].items():
        channel = resolve(doc, op["channel"]["$ref"])
        channel_ref = op["channel"]["$ref"]
        for message in op["messages"]:
            assert message["$ref"].startswith(channel_ref + "/messages/"), op_id
            assert resolve(doc, message["$ref"]) in channel["messages"].values()
    for name, message in doc["components"]["messages"].items():
        Draft7Validator.check_schema(message["payload"])
        for example in message.get("examples", []):
            assert_valid(Draft7Validator(message["payload"]), example["payload"])
        assert any(name in c["messages"] for c in doc["channels"].values()), name


def test_asyncapi_describes_every_client_message_parse_text_accepts() -> None:
    """The client types parse_text knows are exactly the documented ones, and every
    documented example parses."""
    accepted = set(re.findall(r'kind == "(\w+)"', inspect.getsource(protocol.parse_text)))
    assert accepted, "parse_text's types could not be read"
    assert accepted == message_types("client")
    for message in MESSAGES:
        if message.sender == "client" and message.type is not None:
            for example in message.examples:
                parsed = protocol.parse_text(orjson.dumps(example))
                assert parsed is not None, example


def _builder_outputs() -> list[str]:
    """One output of every server-message builder in the protocol module: public
    functions (called with placeholder arguments) and message constants."""
    outputs: list[str] = []
    for name, obj in vars(protocol).items():
        if name.startswith("_") or name == "parse_text":
            continue
        if inspect.isfunction(obj) and obj.__module__ == protocol.__name__:
            params = [
                p
                for p in inspect.signature(obj).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
            ]
            if all(p.annotation in ("str", str) for p in params):
                outputs.append(obj(*("placeholder" for _ in params)))
        elif isinstance(obj, str) and obj.startswith("{"):
            outputs.append(obj)
    return outputs


def test_asyncapi_describes_every_server_message_the_code_builds() -> None:
    """Every type the protocol builders, the transcripts and the tool messages send is
    documented, and nothing documented is never sent."""
    built: set[str] = set()
    for output in _builder_outputs():
        kind = orjson.loads(output)["type"]
        if kind != "placeholder":  # transcript(kind, text): its kinds are read below
            built.add(kind)
    kinds = source_matches(r'protocol\.transcript\(\s*"(\w+)"')
    assert kinds, "no transcript kinds found in the source"
    built |= kinds
    built.add(orjson.loads(tool_message(ToolCall("c1", "clock", "{}"), "started"))["type"])
    assert built == message_types("server")


def test_asyncapi_status_values_cover_every_state_sent() -> None:
    """Every status the session sends (set_state and protocol.status calls) is listed."""
    sent = source_matches(r'_set_state\(\s*"(\w+)"') | source_matches(
        r'protocol\.status\(\s*"(\w+)"'
    )
    assert {"ready", "listening", "shutting_down"} <= sent
    assert sent <= set(STATUSES), f"not documented: {sorted(sent - set(STATUSES))}"


def _payload(kind: str) -> Draft7Validator:
    doc = asyncapi_document()
    name = next(m.name for m in MESSAGES if m.type == kind)
    return Draft7Validator(_strict(doc["components"]["messages"][name]["payload"]))


@pytest.mark.parametrize(
    "output",
    [
        protocol.session_started(
            "s1", backend="emulator", voice="alloy", sample_rate=24000, upstream_session_id=None
        ),
        protocol.session_started(
            "s1", backend="azure", voice="alloy", sample_rate=8000, upstream_session_id="u1"
        ),
        protocol.status("listening"),
        protocol.status("shutting_down", grace_s=2.5),
        protocol.status("ending", code=errors.ERR_SESSION_LIMIT, seconds_left=60),
        protocol.status("reconnecting", code=errors.ERR_RESPONSE_INTERRUPTED),
        protocol.status("ended", code=errors.ERR_IDLE, message="nothing received"),
        protocol.error("bad", errors.ERR_BAD_JSON),
        protocol.transcript("user_transcript", "hi"),
        protocol.transcript("agent_transcript", "hello"),
        protocol.transcript("agent_text", "hello"),
        protocol.transcript_delta("hel", "r1"),
        protocol.audio_start("r1"),
        protocol.CLEAR_AUDIO,
        protocol.PONG,
        tool_message(ToolCall("c1", "clock", "{}"), "started", show_arguments=True),
        tool_message(
            ToolCall("c1", "clock", "{}"),
            "failed",
            outcome=ToolOutcome(
                "c1", "clock", '{"error": "x"}', ok=False, error="timed out", duration_ms=12.4
            ),
            show_arguments=True,
        ),
    ],
)
def test_server_messages_match_their_documented_payload(output: str) -> None:
    """What the session really sends validates against the documented payload (no
    undocumented field)."""
    message = orjson.loads(output)
    assert_valid(_payload(message["type"]), message)


def test_asyncapi_lists_every_close_code_and_error_code() -> None:
    """Every CLOSE_* constant and every error code is in the channel's tables."""
    channel = asyncapi_document()["channels"]["voice"]
    closes = {v for k, v in vars(errors).items() if k.startswith("CLOSE_")}
    assert closes == {c["code"] for c in channel["x-close-codes"]}
    assert set(channel["x-error-codes"]) == set(errors.CODES)
    for code, info in errors.CODES.items():
        assert info.close is None or info.close in closes, code


# What each dialect reads (comparisons on the discriminator) and writes (JSON it builds).
PHONE_SOURCES = {
    "twilio": ("twilio.py", r'event == "(\w+)"|event in \("(\w+)", "(\w+)"\)', r'"event":"(\w+)"'),
    "acs": ("acs.py", r'kind == "(\w+)"', r'"kind": ?"(\w+)"'),
}


@pytest.mark.parametrize("channel", sorted(PHONE_SOURCES))
def test_asyncapi_describes_the_phone_messages_the_dialects_handle(channel: str) -> None:
    """Every Twilio event / ACS kind the dialect reads or writes is in its channel."""
    module, read, write = PHONE_SOURCES[channel]
    source = (PACKAGE / "phone" / module).read_text(encoding="utf-8")
    reads = {k for match in re.finditer(read, source) for k in match.groups() if k}
    writes = set(re.findall(write, source)) - reads
    assert reads, "nothing read?"
    assert reads <= phone_message_types(channel, "client"), reads
    assert writes <= phone_message_types(channel, "server"), writes


@pytest.mark.parametrize("env", ROUTE_SETTINGS, ids=["defaults", "everything-on"])
def test_every_websocket_route_is_an_asyncapi_channel(env: dict[str, str]) -> None:
    """Each /ws/ route the app serves (phone channels too, once they exist) is described
    by a channel of the AsyncAPI document."""
    served, _ = served_routes(create_app(make_settings(**env)))
    addresses = {c["address"] for c in asyncapi_document()["channels"].values()}
    sockets = {path for method, path in served if path.startswith("/ws/")}
    assert "/ws/voice" in sockets
    assert sockets <= addresses, f"not in /asyncapi.yaml: {sorted(sockets - addresses)}"


# -- the pages ---------------------------------------------------------------------------


class _Assets(HTMLParser):
    """The URLs a page loads (scripts, style sheets, icons, images) and its links."""

    def __init__(self) -> None:
        super().__init__()
        self.loads: list[str] = []
        self.links: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.loads.append(a["src"] or "")
        elif tag == "link" and a.get("href"):
            rel = a.get("rel") or ""
            (self.loads if rel in {"stylesheet", "icon"} else self.links).append(a["href"] or "")
        elif tag in {"img", "source", "iframe", "embed"} and a.get("src"):
            self.loads.append(a["src"] or "")
        elif tag == "a" and a.get("href"):
            self.links.append(a["href"] or "")
        elif tag == "style":
            self.inline_styles += 1
        if "style" in a:
            self.inline_styles += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


@pytest.mark.parametrize("path", ["/docs", "/docs/protocol"])
async def test_docs_pages_load_everything_from_this_server(aiohttp_client: Any, path: str) -> None:
    """The pages load scripts, styles and icons from this server only (each answers 200
    with the right type), have no inline script or style, and a strict CSP."""
    client = await client_for(aiohttp_client)
    resp = await client.get(path)
    assert resp.status == 200
    assert resp.content_type == "text/html"
    csp = resp.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    html = await resp.text()
    page = _Assets()
    page.feed(html)
    assert page.loads, "the page loads nothing?"
    assert page.inline_scripts == 0 and page.inline_styles == 0
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I), "external URL"
    for url in page.loads:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status == 200, url
        assert asset.content_type in {"text/javascript", "text/css", "image/png"}, url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
    assert {"/asyncapi.yaml", "/openapi.json", "/docs/protocol", "/docs"} <= set(page.links)
    if path == "/docs":
        assert "/docs/static/swagger-ui-bundle.js" in page.loads
        assert "/docs/static/swagger-initializer.js" in page.loads


async def test_docs_static_serves_only_the_pages_files(aiohttp_client: Any) -> None:
    """Only the listed files are served under /docs/static/: not the package's sample
    page (which points at a public demo API), nor anything outside it."""
    client = await client_for(aiohttp_client)
    for name in ASSETS:
        assert (await client.get(f"/docs/static/{name}")).status == 200, name
    for name in ("index.html", "swagger-ui.js.map", "..%2F..%2Fsetup.cfg", "oauth2-redirect.html"):
        assert (await client.get(f"/docs/static/{name}")).status == 404, name
    initializer = await (await client.get("/docs/static/swagger-initializer.js")).text()
    assert '"/openapi.json"' in initializer and "petstore" not in initializer


async def test_plain_reference_names_every_route_and_message(aiohttp_client: Any) -> None:
    """/docs/protocol (and /docs without JavaScript) name every message type, close code
    and error code."""
    client = await client_for(aiohttp_client)
    for path in ("/docs/protocol", "/docs"):
        text = await (await client.get(path)).text()
        for message in MESSAGES:
            if message.type is not None:
                assert f"&quot;type&quot;:&quot;{message.type}&quot;" in text, message.type
        for code in errors.CODES:
            assert f"<code>{code}</code>" in text
        for needle in ("/ws/voice", "/sessions/{id}", "/calls/{id}/transcript", "1013"):
            assert needle in text


# -- in a real browser -------------------------------------------------------------------


@pytest.mark.browser
async def test_swagger_ui_renders_every_operation_in_chromium(aiohttp_client: Any) -> None:
    """Headless Chromium renders /docs: every operation is listed, no console error (a
    CSP violation would be one), no request leaves this server."""
    playwright_api = pytest.importorskip("playwright.async_api")
    if not HAVE_CHROMIUM:
        pytest.skip(f"no Chromium at {CHROMIUM}")
    chromium = CHROMIUM
    client = await client_for(aiohttp_client)
    base = str(client.make_url("/")).rstrip("/")
    operations = len(documented_routes(openapi_document()))
    console: list[str] = []
    foreign: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = await browser.new_page()
            page.on(
                "console",
                lambda m: console.append(m.text) if m.type in {"error", "warning"} else None,
            )
            page.on("pageerror", lambda exc: console.append(str(exc)))
            page.on(
                "request",
                lambda r: None if r.url.startswith((base, "data:")) else foreign.append(r.url),
            )
            await page.goto(f"{base}/docs")
            blocks = page.locator(".opblock-summary-path")
            await page.wait_for_function(
                f"document.querySelectorAll('.opblock').length >= {operations}", timeout=20_000
            )
            shown = set(await blocks.all_inner_texts())
            await page.get_by_role("link", name=re.compile("AsyncAPI")).wait_for()
        finally:
            await browser.close()
    for path in ("/ws/voice", "/sessions/{session_id}", "/calls/{call_id}/transcript"):
        assert any(path in s.replace("\u200b", "") for s in shown), (path, shown)
    assert not console, f"console errors: {console}"
    assert not foreign, f"requests to elsewhere: {foreign}"
