"""The API reference: ``/docs`` (Swagger UI), ``/docs/protocol`` (plain HTML),
``/openapi.json`` and ``/asyncapi.yaml``.

The documents are built by :mod:`voicebridge.apidocs`; the plain reference page is
rendered from the same data (the OpenAPI paths, the AsyncAPI messages, the code tables),
so nothing here can drift from them. It stays because Swagger UI shows only the HTTP
side, an AsyncAPI file is not for reading, and it needs no JavaScript (the Swagger UI
page carries it in ``<noscript>``).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from html import escape

import orjson
from aiohttp import web

from voicebridge import __version__
from voicebridge.apidocs import asyncapi_yaml, openapi_document
from voicebridge.apidocs.asyncapi import MESSAGES, Message
from voicebridge.apidocs.common import CLOSE_CODES
from voicebridge.apidocs.swagger import (
    ASSET_PATH,
    ASSETS,
    CONTENT_SECURITY_POLICY,
    render_plain_page,
    render_swagger_page,
)
from voicebridge.errors import CODES

_METHODS = ("get", "post", "put", "patch", "delete")
_HTML_HEADERS = {"Content-Security-Policy": CONTENT_SECURITY_POLICY, "Cache-Control": "no-cache"}


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    """Every cell but the last is code."""
    head = "".join(f'<th scope="col">{escape(h)}</th>' for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td><code>{escape(c)}</code></td>" if i < len(r) - 1 else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _short_path(path: str) -> str:
    # The contract's notation (DESIGN.md): /sessions/{id}, /calls/{id}.
    return re.sub(r"\{\w*_id\}", "{id}", path)


def _route_rows() -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for path, item in openapi_document()["paths"].items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            shown = "WS" if path.startswith("/ws/") else method.upper()
            admin = " (admin)" if op.get("security") == [{"adminToken": []}] else ""
            rows.append((shown, _short_path(path), op["summary"] + admin))
    rows.append(("GET", "/static/...", "the browser test client"))
    return rows


def _message_rows(messages: Sequence[Message]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for m in messages:
        shown = (
            "binary"
            if m.type is None
            else orjson.dumps(m.examples[0] if m.examples else {"type": m.type}).decode()
        )
        rows.append((m.frame, shown, m.summary))
    return rows


def render_reference() -> str:
    """The plain reference (HTML body): routes, messages, close and error codes."""
    client = [m for m in MESSAGES if m.sender == "client"]
    server = [m for m in MESSAGES if m.sender == "server"]
    errors = [
        (
            code,
            "goes on" if info.close is None else str(info.close),
            "yes" if info.retry else "no",
            info.summary,
        )
        for code, info in CODES.items()
    ] + [("(service codes)", "goes on", "no", "errors reported by Voice Live, with their own code")]
    return f"""<p>Version {escape(__version__)}. Admin routes need
<code>Authorization: Bearer $ADMIN_TOKEN</code>; without ADMIN_TOKEN they answer loopback only.
The same in machine-readable form: <a href="/openapi.json">/openapi.json</a> (HTTP) and
<a href="/asyncapi.yaml">/asyncapi.yaml</a> (WebSocket).</p>
<h2>HTTP routes</h2>{_table(("method", "path", "answer"), _route_rows())}
<h2>WebSocket <code>/ws/voice</code>: client to server</h2>
{_table(("frame", "content", "meaning"), _message_rows(client))}
<h2>Server to client</h2>{_table(("frame", "content", "meaning"), _message_rows(server))}
<p>Audio frames, both ways: raw PCM16 LE, 24 kHz, mono. Bad input gets an
<code>error</code> message and the session goes on.</p>
<h2>Close codes</h2>{_table(("code", "meaning"), [(str(c), t) for c, t in CLOSE_CODES])}
<h2>Error codes</h2><p>What each code does to the session and whether a client should
reconnect on its own (the browser client follows this table).</p>
{_table(("code", "closes with", "reconnect", "meaning"), errors)}"""


@functools.cache
def _bodies() -> dict[str, bytes]:
    """Every page and document, rendered once: they depend on nothing but the code."""
    openapi = openapi_document()
    return {
        "docs": render_swagger_page(render_reference()).encode(),
        "protocol": render_plain_page(
            f"voicebridge API {__version__}: plain reference", render_reference()
        ).encode(),
        "openapi": orjson.dumps(openapi, option=orjson.OPT_INDENT_2),
        "asyncapi": asyncapi_yaml().encode(),
    }


def _page(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="text/html", charset="utf-8", headers=_HTML_HEADERS)


async def docs_page(request: web.Request) -> web.Response:
    """Swagger UI on /openapi.json."""
    return _page(_bodies()["docs"])


async def protocol_page(request: web.Request) -> web.Response:
    """The plain reference page."""
    return _page(_bodies()["protocol"])


async def openapi_json(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of the HTTP routes."""
    return web.Response(body=_bodies()["openapi"], content_type="application/json", charset="utf-8")


async def asyncapi_doc(request: web.Request) -> web.Response:
    """The AsyncAPI 3.0 document of the WebSocket protocol."""
    return web.Response(
        body=_bodies()["asyncapi"], content_type="application/yaml", charset="utf-8"
    )


async def docs_asset(request: web.Request) -> web.StreamResponse:
    """One of the files the Swagger UI page loads; 404 for any other name."""
    asset = ASSETS.get(request.match_info["name"])
    if asset is None:
        raise web.HTTPNotFound(text="no such file", content_type="text/plain")
    if asset.text is not None:
        return web.Response(
            text=asset.text,
            content_type=asset.content_type,
            charset="utf-8",
            headers={"Cache-Control": "no-cache"},
        )
    assert asset.file is not None
    # FileResponse answers conditional requests (ETag, Last-Modified) and ranges itself.
    return web.FileResponse(
        asset.file, headers={"Cache-Control": "no-cache", "Content-Type": asset.content_type}
    )


def add_routes(app: web.Application) -> None:
    """The API reference routes."""
    app.router.add_get("/docs", docs_page)
    app.router.add_get("/docs/protocol", protocol_page)
    app.router.add_get(ASSET_PATH, docs_asset)
    app.router.add_get("/openapi.json", openapi_json)
    app.router.add_get("/asyncapi.yaml", asyncapi_doc)
