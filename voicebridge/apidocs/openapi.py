"""The OpenAPI 3.1 description of every HTTP route the app serves (``GET /openapi.json``).

Python data rather than a JSON file kept by hand: the version, the error codes, the
paging limits and the token-usage fields come from the modules that define them, and
``tests/test_api_docs.py`` compares the paths here with ``app.router`` both ways and
checks real responses against the schemas.

Access, as :mod:`voicebridge.access` rules it: the admin routes (``/sessions``,
``/calls``) take ``Authorization: Bearer <ADMIN_TOKEN>``; while ADMIN_TOKEN is unset they
answer only a loopback peer that names a loopback Host. ``/ws/voice`` takes the client
token (``?token=`` or the subprotocol ``token.<TOKEN>``) when CLIENT_TOKEN is set. Every
route but ``/health`` answers 421 to a Host not in ALLOWED_HOSTS.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from voicebridge import __version__, errors, protocol
from voicebridge.apidocs.common import Schema, code_table, error_message_schema
from voicebridge.apidocs.swagger import ASSET_NAMES, ASSET_PATH
from voicebridge.calls.record import TURN_KINDS, Latency, Usage
from voicebridge.calls.routes import MAX_OFFSET
from voicebridge.calls.store import DEFAULT_PAGE, MAX_PAGE, MAX_QUERY_CHARS
from voicebridge.errors import CODES

OPENAPI_VERSION: Final = "3.1.0"

_ADMIN: Final[list[dict[str, list[str]]]] = [{"adminToken": []}]
_ADMIN_NOTE: Final = (
    "Admin: `Authorization: Bearer <ADMIN_TOKEN>`. While ADMIN_TOKEN is not set, only a "
    "client on this machine (a loopback peer naming a loopback Host) may use it."
)


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _resp(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json(description: str, schema: Schema, **extra: Any) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}} | (
        extra
    )


def _nullable(type_: str, **extra: Any) -> Schema:
    return {"type": [type_, "null"], **extra}


# -- schemas -----------------------------------------------------------------------------


def _schemas() -> dict[str, Schema]:
    iso = {"type": "string", "format": "date-time"}
    usage = {
        "type": "object",
        "description": "Tokens of the call's responses, as Voice Live's `response.done` "
        "reports them.",
        "required": [f.name for f in attrs.fields(Usage)],
        "properties": {f.name: {"type": "integer", "minimum": 0} for f in attrs.fields(Usage)},
    }
    latency = {
        "type": "object",
        "description": "Response latencies (ms): the caller stops speaking, the agent's first "
        "audio arrives.",
        "required": [f.name for f in attrs.fields(Latency)],
        "properties": {
            f.name: {"type": "integer", "minimum": 0}
            if f.name == "count"
            else _nullable("number", minimum=0)
            for f in attrs.fields(Latency)
        },
    }
    call_summary_props: dict[str, Schema] = {
        "call_id": {"type": "string"},
        "channel": {"type": "string", "examples": ["browser", "twilio", "acs"]},
        "instance": {"type": "string"},
        "client": {"type": "string", "description": "The caller's address or token label."},
        "started_at": iso,
        "ended_at": iso,
        "duration_s": {"type": "number", "minimum": 0},
        "end_reason": {"type": "string", "examples": ["client", "idle_timeout", "agent_ended"]},
        "close_code": _nullable("integer"),
        "turn_count": {"type": "integer", "minimum": 0},
        "barge_ins": {"type": "integer", "minimum": 0},
        "reconnects": {"type": "integer", "minimum": 0},
        "tool_calls": {"type": "integer", "minimum": 0},
        "latency": _ref("Latency"),
        "usage": _ref("Usage"),
        "cost_usd": _nullable(
            "number", description="Estimated from `usage` and the configured prices."
        ),
        "preview": {"type": "string", "description": "The caller's first words, shortened."},
    }
    session_metrics = {
        "type": "object",
        "description": "What the session has done so far. Fields may be added; these are stable.",
        "additionalProperties": True,
        "properties": {
            "started_at": iso,
            "duration_s": {"type": "number"},
            "state": {"type": "string"},
            "client": {"type": "string"},
            "audio_in": _ref("AudioCount"),
            "audio_out": _ref("AudioCount"),
            "turns": {"type": "integer"},
            "barge_ins": {"type": "integer"},
            "transcripts": {
                "type": "object",
                "properties": {"user": {"type": "integer"}, "agent": {"type": "integer"}},
            },
            "errors": {"type": "integer"},
            "upstream_connect_ms": _nullable("number"),
            "upstream": {
                "type": "object",
                "properties": {
                    "generation": {"type": "integer"},
                    "reconnects": {"type": "integer"},
                    "rotations": {"type": "integer"},
                },
            },
            "response_latency_ms": {
                "type": "object",
                "properties": {
                    "last": _nullable("number"),
                    "p50": _nullable("number"),
                    "p95": _nullable("number"),
                    "count": {"type": "integer"},
                },
            },
        },
    }
    return {
        "ErrorCode": {
            "type": "string",
            "enum": list(CODES),
            "description": "A stable code; what each means:\n\n" + code_table(),
        },
        "Error": error_message_schema(_ref("ErrorCode")),
        "AdminUnauthorized": {
            "type": "object",
            "description": "The 401 body of the admin routes (not the `error` message shape).",
            "required": ["error", "code"],
            "properties": {
                "error": {"type": "string", "examples": ["admin token required"]},
                "code": {"const": errors.ERR_UNAUTHORIZED},
            },
        },
        "UpstreamHealth": {
            "type": "object",
            "required": ["status", "consecutive_connect_failures"],
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "consecutive_connect_failures": {"type": "integer", "minimum": 0},
            },
        },
        "Health": {
            "type": "object",
            "required": [
                "status",
                "upstream",
                "version",
                "backend",
                "instance",
                "sessions",
                "registry",
                "uptime_s",
            ],
            "properties": {
                "status": {"const": "healthy"},
                "upstream": _ref("UpstreamHealth"),
                "version": {"type": "string", "examples": [__version__]},
                "backend": {"enum": ["azure", "emulator"]},
                "instance": {"type": "string"},
                "sessions": {"type": "integer", "minimum": 0, "description": "On this instance."},
                "registry": {"enum": ["ok", "degraded"]},
                "uptime_s": {"type": "number", "minimum": 0},
            },
        },
        "Unhealthy": {
            "oneOf": [
                {
                    "type": "object",
                    "required": ["status"],
                    "properties": {"status": {"const": "draining"}},
                },
                {
                    "type": "object",
                    "description": "Voice Live cannot be reached (with "
                    "HEALTH_FAILS_WHEN_DEGRADED).",
                    "required": ["status", "upstream"],
                    "properties": {
                        "status": {"const": "degraded"},
                        "upstream": _ref("UpstreamHealth"),
                    },
                },
            ]
        },
        "ClientConfig": {
            "type": "object",
            "required": [
                "backend",
                "client_token_required",
                "caller_notice",
                "sample_rate",
                "version",
            ],
            "properties": {
                "backend": {"enum": ["azure", "emulator"]},
                "client_token_required": {"type": "boolean"},
                "caller_notice": {
                    "type": "string",
                    "description": "CALLER_NOTICE: shown to callers before they speak.",
                },
                "sample_rate": {"const": protocol.SAMPLE_RATE},
                "version": {"type": "string"},
            },
        },
        "AudioCount": {
            "type": "object",
            "properties": {
                "bytes": {"type": "integer"},
                "frames": {"type": "integer"},
                "ms": {"type": "integer"},
            },
        },
        "SessionMetrics": session_metrics,
        "Session": {
            "type": "object",
            "required": ["session_id", "instance", "state", "started_at", "client", "metrics"],
            "properties": {
                "session_id": {"type": "string"},
                "instance": {"type": "string", "description": "The instance holding it."},
                "state": {
                    "type": "string",
                    "examples": [
                        "connecting",
                        "ready",
                        "listening",
                        "processing",
                        "agent_speaking",
                        "reconnecting",
                    ],
                },
                "started_at": iso,
                "client": {"type": "string"},
                "metrics": _ref("SessionMetrics"),
            },
        },
        "SessionList": {
            "type": "object",
            "required": ["count", "sessions"],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "sessions": {"type": "array", "items": _ref("Session")},
            },
        },
        "SessionEnding": {
            "type": "object",
            "required": ["session_id", "status"],
            "properties": {"session_id": {"type": "string"}, "status": {"const": "ending"}},
        },
        "Usage": usage,
        "Latency": latency,
        "CallSummary": {
            "type": "object",
            "required": list(call_summary_props),
            "properties": call_summary_props,
        },
        "Turn": {
            "type": "object",
            "required": ["seq", "at", "kind"],
            "properties": {
                "seq": {"type": "integer", "minimum": 0},
                "at": iso,
                "kind": {"enum": list(TURN_KINDS)},
                "text": {
                    "type": "string",
                    "description": "What was said or typed; for an agent turn, what the "
                    "caller heard.",
                },
                "unheard": {
                    "type": "string",
                    "description": "An interrupted agent turn: the words not heard.",
                },
                "response_id": _nullable("string"),
                "interrupted": {"type": "boolean"},
                "heard_share": _nullable("number", minimum=0, maximum=1),
                "latency_ms": _nullable("number"),
                "input_tokens": _nullable("integer"),
                "output_tokens": _nullable("integer"),
                "name": _nullable("string", description="A tool's name, or a reconnect's cause."),
                "outcome": _nullable("string"),
                "duration_ms": _nullable("number"),
            },
        },
        "Call": {
            "allOf": [
                _ref("CallSummary"),
                {
                    "type": "object",
                    "required": ["version", "metadata", "dropped_turns", "redaction", "turns"],
                    "properties": {
                        "version": {"type": "integer"},
                        "metadata": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        },
                        "dropped_turns": {"type": "integer", "minimum": 0},
                        "redaction": {"enum": ["off", "numbers", "all"]},
                        "turns": {"type": "array", "items": _ref("Turn")},
                    },
                },
            ]
        },
        "CallPage": {
            "type": "object",
            "required": ["count", "total", "offset", "limit", "next_offset", "calls"],
            "properties": {
                "count": {"type": "integer", "minimum": 0},
                "total": {"type": "integer", "minimum": 0},
                "offset": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE},
                "next_offset": _nullable(
                    "integer", description="The `offset` of the next page; null on the last."
                ),
                "calls": {"type": "array", "items": _ref("CallSummary")},
            },
        },
        "DocsAssetName": {"enum": list(ASSET_NAMES)},
    }


def _responses() -> dict[str, Schema]:
    return {
        "AdminUnauthorized": {
            "description": "Not an admin: no or a wrong bearer token (or, without "
            "ADMIN_TOKEN, not a loopback client).",
            "headers": {
                "WWW-Authenticate": {"schema": {"const": "Bearer"}},
            },
            "content": {"application/json": {"schema": _ref("AdminUnauthorized")}},
        },
        "HostNotAllowed": _json(
            f"The request's Host is not in ALLOWED_HOSTS (`{errors.ERR_HOST_NOT_ALLOWED}`).",
            _ref("Error"),
        ),
        "NotFound": _json(f"No such item (`{errors.ERR_NOT_FOUND}`).", _ref("Error")),
        "CallsUnavailable": _json(
            f"Call records are off (CALL_STORE=off) or the store cannot be reached "
            f"(`{errors.ERR_CALLS_UNAVAILABLE}`); try again later.",
            _ref("Error"),
        ),
    }


# -- paths -------------------------------------------------------------------------------


def _op(
    op_id: str,
    tag: str,
    summary: str,
    responses: dict[str, Schema],
    *,
    description: str | None = None,
    admin: bool = False,
    host_checked: bool = True,
    **extra: Any,
) -> Schema:
    op: Schema = {"operationId": op_id, "tags": [tag], "summary": summary}
    notes = [description] if description else []
    if admin:
        notes.append(_ADMIN_NOTE)
        op["security"] = _ADMIN
        responses = {**responses, "401": _resp("AdminUnauthorized")}
    if host_checked:
        responses = {**responses, "421": _resp("HostNotAllowed")}
    if notes:
        op["description"] = "\n\n".join(notes)
    op["responses"] = dict(sorted(responses.items()))
    op.update(extra)
    return op


def _id_param(name: str, description: str) -> Schema:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _calls_query() -> list[Schema]:
    text = {"type": "string", "maxLength": MAX_QUERY_CHARS}
    when = {
        "type": "string",
        "description": "An ISO 8601 time or date; without a zone, UTC.",
        "examples": ["2025-01-31T09:00:00Z", "2025-01-31"],
    }

    def param(name: str, description: str, schema: Schema) -> Schema:
        return {"name": name, "in": "query", "description": description, "schema": schema}

    return [
        param("from", "Calls that started at or after this time.", when),
        param("to", "Calls that started before this time.", when),
        param("channel", "Only this channel (`browser`, `twilio`, `acs`).", text),
        param("reason", "Only calls that ended for this reason.", text),
        param("instance", "Only calls held by this instance.", text),
        param("q", "Words in any turn, case-insensitive.", text),
        param(
            "limit",
            "Page size.",
            {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
        ),
        param(
            "offset",
            "Calls to skip (see `next_offset`).",
            {"type": "integer", "minimum": 0, "maximum": MAX_OFFSET, "default": 0},
        ),
    ]


def _acs_webhook(
    op_id: str,
    summary: str,
    ok: str,
    ok_properties: Schema,
    description: str,
    *,
    bad_body: str,
    too_large: str,
) -> Schema:
    """A POST from Azure (Event Grid, Call Automation) carrying ``?key=ACS_EVENTS_KEY``."""
    return _op(
        op_id,
        "phone",
        summary,
        {
            "200": _json(ok, {"type": "object", "properties": ok_properties}),
            "400": _json(f"{bad_body} (`{errors.ERR_BAD_MESSAGE}`).", _ref("Error")),
            "401": _json(f"No or a wrong `key` (`{errors.ERR_UNAUTHORIZED}`).", _ref("Error")),
            "413": _json(too_large, _ref("Error")),
        },
        description=description,
        parameters=[
            {
                "name": "key",
                "in": "query",
                "required": True,
                "description": "ACS_EVENTS_KEY, carried in the subscription's URL.",
                "schema": {"type": "string"},
            }
        ],
        requestBody={
            "required": True,
            "content": {
                "application/json": {"schema": {"type": "array", "items": {"type": "object"}}}
            },
        },
    )


def _twilio_webhook(
    op_id: str, summary: str, ok: str, description: str, *, unavailable: str, field: str
) -> Schema:
    """A POST Twilio makes, signed with X-Twilio-Signature, answered with TwiML."""
    return _op(
        op_id,
        "phone",
        summary,
        {
            "200": {
                "description": ok,
                "content": {"text/xml": {"schema": {"type": "string"}}},
            },
            "400": _json(f"No CallSid (`{errors.ERR_BAD_MESSAGE}`).", _ref("Error")),
            "403": _json(
                "The request is not signed by Twilio with TWILIO_AUTH_TOKEN "
                f"(`{errors.ERR_UNAUTHORIZED}`).",
                _ref("Error"),
            ),
            "503": _json(unavailable, _ref("Error")),
        },
        description=description,
        security=[{"twilioSignature": []}],
        requestBody={
            "required": True,
            "content": {
                "application/x-www-form-urlencoded": {
                    "schema": {
                        "type": "object",
                        "required": ["CallSid"],
                        "properties": {
                            "CallSid": {"type": "string", "maxLength": 64},
                            field: {"type": "string"},
                        },
                    }
                }
            },
        },
    )


def _paths() -> dict[str, Schema]:
    html = {"text/html": {"schema": {"type": "string"}}}
    return {
        "/health": {
            "get": _op(
                "health",
                "ops",
                "Readiness for a load balancer",
                {
                    "200": _json("Serving.", _ref("Health")),
                    "503": _json(
                        "Draining for shutdown, or Voice Live cannot be reached: route elsewhere.",
                        _ref("Unhealthy"),
                    ),
                },
                description="Answers whatever the Host header (load balancers probe by "
                "address), and even past MAX_CONNECTIONS.",
                host_checked=False,
            )
        },
        "/config": {
            "get": _op(
                "clientConfig",
                "client",
                "What the browser client needs to know (no secrets)",
                {"200": _json("The client's settings.", _ref("ClientConfig"))},
            )
        },
        "/": {
            "get": _op(
                "index",
                "client",
                "Redirect to the browser client",
                {
                    "302": {
                        "description": "To `/static/index.html`.",
                        "headers": {
                            "Location": {"schema": {"const": "/static/index.html"}},
                        },
                    }
                },
            )
        },
        "/ws/voice": {
            "get": _op(
                "voiceWebSocket",
                "voice",
                "One voice session over a WebSocket",
                {
                    "101": {"description": "Upgraded; the session runs (see the AsyncAPI)."},
                    "401": _json(
                        f"CLIENT_TOKEN is set and the client presented none of its tokens "
                        f"(`{errors.ERR_UNAUTHORIZED}`).",
                        _ref("Error"),
                    ),
                    "403": _json(
                        f"A browser page from an origin not in ALLOWED_ORIGINS "
                        f"(`{errors.ERR_FORBIDDEN_ORIGIN}`).",
                        _ref("Error"),
                    ),
                    "503": _json(
                        f"The server is shutting down (`{errors.ERR_SHUTDOWN}`).",
                        _ref("Error"),
                    ),
                },
                description="The WebSocket upgrade. The messages, audio frames and close "
                "codes of the session are in the AsyncAPI document, `/asyncapi.yaml`. A "
                "client past MAX_SESSIONS or MAX_SESSIONS_PER_CLIENT is upgraded, sent an "
                f"`{errors.ERR_CAPACITY}` error and closed with {errors.CLOSE_TRY_AGAIN}.\n\n"
                "Subprotocols: `voicebridge` is selected when offered (or when none is); "
                "a client that offers only `token.<TOKEN>` gets that one back.",
                security=[{"clientToken": []}, {"clientTokenSubprotocol": []}, {}],
                parameters=[
                    {
                        "name": "token",
                        "in": "query",
                        "required": False,
                        "description": "The client token (or offer the subprotocol "
                        "`token.<TOKEN>`); needed only when CLIENT_TOKEN is set.",
                        "schema": {"type": "string"},
                    }
                ],
                externalDocs={"description": "The session's protocol", "url": "/asyncapi.yaml"},
            )
        },
        "/twilio/voice": {
            "post": _twilio_webhook(
                "twilioVoice",
                "Twilio's voice webhook: TwiML connecting the call to /ws/twilio",
                "`<Connect><Stream>` to `/ws/twilio`, with a per-call stream token as a "
                "`<Parameter>`.",
                "Set as the number's voice webhook. The signature is checked against "
                "PUBLIC_URL when set (behind a proxy), else the request's URL.",
                unavailable=f"TWILIO_AUTH_TOKEN is not set (`{errors.ERR_PHONE_OFF}`), or the "
                f"server is shutting down (`{errors.ERR_SHUTDOWN}`).",
                field="From",
            )
        },
        "/twilio/voice/continue": {
            "post": _twilio_webhook(
                "twilioContinue",
                "Twilio's <Connect action>: what a call does once its stream has ended",
                "A new `<Connect><Stream>` (with a fresh stream token) when the stream ended "
                "with its instance (a restart), carrying the conversation so far; "
                "`<Hangup/>` otherwise.",
                "Named by the TwiML of /twilio/voice; Twilio requests it when the stream "
                "ends. Answered while draining too.",
                unavailable=f"TWILIO_AUTH_TOKEN is not set (`{errors.ERR_PHONE_OFF}`).",
                field="CallStatus",
            )
        },
        "/acs/incoming": {
            "post": _acs_webhook(
                "acsIncoming",
                "Event Grid webhook: answers ACS incoming calls with media streaming to /ws/acs",
                "The subscription validation answered (`validationResponse`), or the "
                "incoming calls of the delivery answered (`answered`, `failed`).",
                {
                    "validationResponse": {"type": "string"},
                    "answered": {"type": "integer", "minimum": 0},
                    "failed": {"type": "integer", "minimum": 0},
                },
                "Served only when ACS_CONNECTION_STRING is set. Each "
                "`Microsoft.Communication.IncomingCall` is answered with Call Automation, "
                "streaming audio both ways over `/ws/acs` with a per-call token.",
                bad_body="Not a list of Event Grid events",
                too_large="The delivery is larger than allowed.",
            )
        },
        "/acs/events": {
            "post": _acs_webhook(
                "acsEvents",
                "Call Automation's callback: the call's events, logged",
                "The events were received.",
                {"received": {"type": "integer", "minimum": 0}},
                "Served only when ACS_CONNECTION_STRING is set; the callback URL given to "
                "Call Automation when a call is answered.",
                bad_body="Not a list of events",
                too_large="The body is larger than allowed.",
            )
        },
        "/ws/twilio": {
            "get": _op(
                "twilioStream",
                "phone",
                "Twilio Media Stream of one call (WebSocket)",
                {
                    "101": {
                        "description": "Upgraded; `start` must carry the call's stream token "
                        f"(else close {errors.CLOSE_POLICY}). See the AsyncAPI channel "
                        "`twilio`."
                    },
                    "503": _json(
                        f"The server is shutting down (`{errors.ERR_SHUTDOWN}`).", _ref("Error")
                    ),
                },
                externalDocs={"description": "The stream's messages", "url": "/asyncapi.yaml"},
            )
        },
        "/ws/acs": {
            "get": _op(
                "acsStream",
                "phone",
                "ACS media stream of one call (WebSocket)",
                {
                    "101": {"description": "Upgraded. See the AsyncAPI channel `acs`."},
                    "401": _json(
                        f"No valid stream token (`{errors.ERR_UNAUTHORIZED}`).", _ref("Error")
                    ),
                    "503": _json(
                        f"The server is shutting down (`{errors.ERR_SHUTDOWN}`).", _ref("Error")
                    ),
                },
                security=[{"streamToken": []}],
                externalDocs={"description": "The stream's messages", "url": "/asyncapi.yaml"},
            )
        },
        "/sessions": {
            "get": _op(
                "listSessions",
                "sessions",
                "Live sessions of every instance, oldest first",
                {"200": _json("The sessions.", _ref("SessionList"))},
                admin=True,
            )
        },
        "/sessions/{session_id}": {
            "parameters": [_id_param("session_id", "The id `session_started` announced.")],
            "get": _op(
                "getSession",
                "sessions",
                "One live session, wherever it runs",
                {
                    "200": _json("The session.", _ref("Session")),
                    "404": _resp("NotFound"),
                },
                admin=True,
            ),
            "delete": _op(
                "endSession",
                "sessions",
                "End a session on whichever instance holds it",
                {
                    "202": _json(
                        "Ending: the client is told (`status: ended`, code "
                        f"`{errors.ERR_ENDED_BY_ADMIN}`) and the socket closes "
                        f"{errors.CLOSE_NORMAL}.",
                        _ref("SessionEnding"),
                    ),
                    "404": _resp("NotFound"),
                },
                admin=True,
            ),
        },
        "/metrics": {
            "get": _op(
                "metrics",
                "ops",
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Prometheus text exposition format 0.0.4.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
        "/calls": {
            "get": _op(
                "listCalls",
                "calls",
                "Call records, newest first",
                {
                    "200": _json("One page of calls.", _ref("CallPage")),
                    "400": _json(
                        f"A bad filter; every problem is listed (`{errors.ERR_BAD_QUERY}`).",
                        _ref("Error"),
                    ),
                    "503": _resp("CallsUnavailable"),
                },
                admin=True,
                parameters=_calls_query(),
            )
        },
        "/calls/{call_id}": {
            "parameters": [_id_param("call_id", "The call's id (its session id).")],
            "get": _op(
                "getCall",
                "calls",
                "One call record with its turns in order",
                {
                    "200": _json("The call.", _ref("Call")),
                    "404": _resp("NotFound"),
                    "503": _resp("CallsUnavailable"),
                },
                admin=True,
            ),
        },
        "/calls/{call_id}/transcript": {
            "parameters": [_id_param("call_id", "The call's id (its session id).")],
            "get": _op(
                "getCallTranscript",
                "calls",
                "One call as plain text, as a download",
                {
                    "200": {
                        "description": "A header, then one line per turn.",
                        "headers": {
                            "Content-Disposition": {
                                "schema": {
                                    "type": "string",
                                    "examples": ['attachment; filename="call-1234.txt"'],
                                }
                            }
                        },
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "404": _resp("NotFound"),
                    "503": _resp("CallsUnavailable"),
                },
                admin=True,
            ),
        },
        "/docs": {
            "get": _op(
                "docs",
                "docs",
                "This reference (Swagger UI)",
                {"200": {"description": "The page.", "content": html}},
                description="Without JavaScript the page shows the plain reference of "
                "`/docs/protocol`.",
            )
        },
        "/docs/protocol": {
            "get": _op(
                "docsProtocol",
                "docs",
                "The plain reference: routes, WebSocket messages, close and error codes",
                {"200": {"description": "The page.", "content": html}},
            )
        },
        ASSET_PATH: {
            "get": _op(
                "docsAsset",
                "docs",
                "A script, style sheet or icon of the Swagger UI page",
                {
                    "200": {
                        "description": "The file.",
                        "content": {
                            "application/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "image/png": {"schema": {"type": "string", "format": "binary"}},
                        },
                    },
                    "404": {"description": "Not one of the page's files."},
                },
                parameters=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": _ref("DocsAssetName"),
                    }
                ],
            )
        },
        "/openapi.json": {
            "get": _op(
                "openapi",
                "docs",
                "This document: the HTTP routes (OpenAPI 3.1)",
                {
                    "200": {
                        "description": "The document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            )
        },
        "/asyncapi.yaml": {
            "get": _op(
                "asyncapi",
                "docs",
                "The WebSocket protocol of /ws/voice (AsyncAPI 3.0)",
                {
                    "200": {
                        "description": "The document, as YAML.",
                        "content": {"application/yaml": {"schema": {"type": "string"}}},
                    }
                },
            )
        },
    }


def openapi_document() -> dict[str, Any]:
    """The whole document, as a JSON-able dict (a new one on each call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "voicebridge",
            "version": __version__,
            "summary": "Real-time speech-to-speech relay to Azure AI Voice Live.",
            "description": "The HTTP routes. The voice session itself runs over the "
            "WebSocket `/ws/voice`, described by the AsyncAPI document "
            "[/asyncapi.yaml](/asyncapi.yaml); a plain reference is at "
            "[/docs/protocol](/docs/protocol).\n\n"
            "Every route but `/health` answers 421 to a Host that is not in "
            "ALLOWED_HOSTS. Past MAX_CONNECTIONS, new connections are answered 503 "
            f"(`{errors.ERR_CAPACITY}`) except `/health`. Error bodies are the "
            'protocol\'s `error` message, `{"type": "error", "message", "code"}`, '
            "except the admin routes' 401.",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "tags": [
            {"name": "voice", "description": "The voice session (WebSocket)."},
            {"name": "client", "description": "What the browser client loads."},
            {"name": "ops", "description": "Health and metrics."},
            {"name": "phone", "description": "Phone calls: Twilio and ACS."},
            {"name": "sessions", "description": "Live sessions (admin)."},
            {"name": "calls", "description": "Call records (admin; CALL_STORE)."},
            {"name": "docs", "description": "This reference."},
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_TOKEN, as `Authorization: Bearer <ADMIN_TOKEN>`. "
                    "While ADMIN_TOKEN is not set no token is accepted, and the admin routes "
                    "answer only a loopback peer that names a loopback Host (localhost, "
                    "127.0.0.1, [::1]); a proxy on the same machine forwarding a public Host "
                    "is refused.",
                },
                "clientToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "One of the CLIENT_TOKEN tokens (comma-separated to give "
                    "each client its own). Needed only while CLIENT_TOKEN is set.",
                },
                "twilioSignature": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Twilio-Signature",
                    "description": "Twilio's HMAC-SHA1 signature of the URL and form, keyed "
                    "by TWILIO_AUTH_TOKEN.",
                },
                "streamToken": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "token",
                    "description": "A per-call stream token minted by this server (signed, "
                    "short-lived, for one channel and call).",
                },
                "clientTokenSubprotocol": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Sec-WebSocket-Protocol",
                    "description": "The client token offered as the subprotocol "
                    "`token.<TOKEN>` (what a browser can send: it cannot set headers on a "
                    "WebSocket). Needed only while CLIENT_TOKEN is set.",
                },
            },
        },
    }
