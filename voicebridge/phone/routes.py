"""The phone routes: Twilio's voice webhook and stream, and the ACS stream.

* ``POST /twilio/voice``: Twilio asks what to do with a call. Answered only when
  ``TWILIO_AUTH_TOKEN`` is set and the request carries Twilio's signature of it; the
  TwiML connects the call to ``/ws/twilio`` with a per-call stream token.
* ``GET /ws/twilio``: the stream. The token arrives in Twilio's ``start`` message (the
  first thing Twilio sends after ``connected``), so the socket is upgraded, then closed
  with 1008 unless ``start`` comes within ``PHONE_START_TIMEOUT_S`` carrying a valid
  token for that very call. Nothing reaches Voice Live before.
* ``GET /ws/acs``: the ACS stream, with the token in ``?token=`` (checked before the
  upgrade); its first message, ``AudioMetadata``, sets the audio format.
* ``POST /acs/incoming`` and ``POST /acs/events`` (only with ``ACS_CONNECTION_STRING``):
  Event Grid's webhook, whose ``IncomingCall`` events are answered with Call Automation
  streaming to ``/ws/acs`` (:mod:`voicebridge.phone.acs_answer`), and the callback URL
  of the calls answered; both need ``?key=ACS_EVENTS_KEY``.

From there a phone call is a session like any other (:func:`voicebridge.ws_voice.
serve_session`): registry, caps, limits, drain, tools, reconnects, call records.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from voicebridge import errors, protocol
from voicebridge.errors import ProtocolError
from voicebridge.ops import json_error
from voicebridge.phone import acs, acs_answer, handoff, signature, tokens, twilio
from voicebridge.phone.callers import mask_number
from voicebridge.phone.settings import PhoneSettings
from voicebridge.state import STATE
from voicebridge.ws_voice import serve_session, websocket

if TYPE_CHECKING:
    from voicebridge.relay import Session

log = structlog.get_logger(__name__)

#: Frames read while waiting for a stream to say which call it is.
_MAX_HANDSHAKE_FRAMES = 4
#: Largest handshake message read (a ``start`` is well under 2 kB).
_MAX_HANDSHAKE_CHARS = 16 * 1024
TOKEN_SECRET = web.AppKey("phone_token_secret", bytes)


def add_routes(app: web.Application) -> None:
    """The phone routes, and the secret their tokens are signed with."""
    phone: PhoneSettings = app[STATE].settings.phone
    app[TOKEN_SECRET] = (
        phone.token_secret.encode() if phone.token_secret else secrets.token_bytes(32)
    )
    app.router.add_post("/twilio/voice", twilio_voice)
    app.router.add_post("/twilio/voice/continue", twilio_continue)
    app.router.add_get("/ws/twilio", twilio_stream)
    app.router.add_get("/ws/acs", acs_stream)
    if phone.acs_answer_enabled:
        app[acs_answer.ANSWERER] = acs_answer.Answerer(phone=phone, token_secret=app[TOKEN_SECRET])
        app.cleanup_ctx.append(acs_answer.answerer_ctx)
        app.router.add_post("/acs/incoming", acs_incoming)
        app.router.add_post("/acs/events", acs_events)


# -- Twilio ---------------------------------------------------------------------------


async def twilio_voice(request: web.Request) -> web.Response:
    """Twilio's voice webhook: TwiML connecting the call to ``/ws/twilio``."""
    state = request.app[STATE]
    _twilio_on(state.settings.phone)
    # Twilio tries the number's fallback URL (another instance) on a 5xx.
    state.accept_calls()
    form, call_sid = await _signed_form(request)
    caller = str(form.get("From", ""))
    log.info("twilio.call", call_sid=call_sid, caller=mask_number(caller) if caller else None)
    # A stream starts: how it ends is unknown until its session says (an instance that
    # dies with it never does, and the call is moved then).
    await state.registry.save_handoff(
        handoff.key(call_sid), handoff.started(), ttl_s=state.settings.phone.token_ttl_s
    )
    return _connect(request, call_sid, caller, continued=False)


async def twilio_continue(request: web.Request) -> web.Response:
    """Twilio asks what next once a stream has ended (``<Connect action>``): a new stream
    with the conversation so far when the old one ended with its instance, else hang up
    (:mod:`voicebridge.phone.handoff`). Answered while draining too: the new stream goes to
    PUBLIC_URL, which the load balancer routes to a running instance."""
    state = request.app[STATE]
    phone = state.settings.phone
    _twilio_on(phone)
    form, call_sid = await _signed_form(request)
    saved = await state.registry.load_handoff(handoff.key(call_sid))
    moved = handoff.decide(saved)
    ended = (saved or {}).get("reason", "unknown")
    if moved is None:
        log.info("twilio.call_over", call_sid=call_sid, reason=ended)
        return web.Response(text=twilio.HANGUP, content_type="text/xml")
    await state.registry.save_handoff(handoff.key(call_sid), moved, ttl_s=phone.token_ttl_s)
    log.info("twilio.call_moved", call_sid=call_sid, reason=ended, moves=moved["moves"])
    return _connect(request, call_sid, str(form.get("From", "")), continued=True)


def _twilio_on(phone: PhoneSettings) -> None:
    if not phone.twilio_enabled:
        raise json_error(
            web.HTTPServiceUnavailable,
            "Twilio calls are off: set TWILIO_AUTH_TOKEN to the account's auth token",
            errors.ERR_PHONE_OFF,
        )


async def _signed_form(request: web.Request) -> tuple[Any, str]:
    """The POSTed form, once its X-Twilio-Signature checks out (403 otherwise), and its
    CallSid (400 without one)."""
    phone = request.app[STATE].settings.phone
    form = await request.post()
    params = [(k, v) for k, v in form.items() if isinstance(v, str)]
    url = _public(request, phone) + request.path_qs if phone.public_url else str(request.url)
    given = request.headers.get("X-Twilio-Signature", "")
    if not signature.valid(phone.twilio_auth_token, given, url, params):
        log.warning(
            "twilio.bad_signature", missing=not given, remote=request.remote, url_checked=url
        )
        raise json_error(
            web.HTTPForbidden, "the request is not signed by Twilio", errors.ERR_UNAUTHORIZED
        )
    call_sid = str(form.get("CallSid", ""))
    if not call_sid or len(call_sid) > 64 or "|" in call_sid:
        raise json_error(web.HTTPBadRequest, "CallSid is missing", errors.ERR_BAD_MESSAGE)
    return form, call_sid


def _connect(request: web.Request, call_sid: str, caller: str, *, continued: bool) -> web.Response:
    """TwiML for a stream of this call with a fresh token; Twilio asks what next after it."""
    phone = request.app[STATE].settings.phone
    token = tokens.mint(
        request.app[TOKEN_SECRET], channel="twilio", subject=call_sid, ttl_s=phone.token_ttl_s
    )
    parameters = {twilio.TOKEN_PARAMETER: token}
    if caller:
        parameters["from"] = caller[:64]
    if continued:
        parameters[handoff.CONTINUED_PARAMETER] = "1"
    public = _public(request, phone)
    stream_url = public.replace("http", "ws", 1) + "/ws/twilio"
    body = twilio.twiml(stream_url, parameters, action=public + "/twilio/voice/continue")
    return web.Response(text=body, content_type="text/xml")


async def twilio_stream(request: web.Request) -> web.StreamResponse:
    """Twilio's media stream: upgrade, wait for a ``start`` with a valid token, relay."""
    state = request.app[STATE]
    s = state.settings
    state.accept_calls()
    ws = websocket(s.max_frame_bytes)
    await ws.prepare(request)
    try:
        start = await _first_message(ws, s.phone.start_timeout_s, twilio.parse_start, "start")
        grant = tokens.verify(
            request.app[TOKEN_SECRET],
            start.parameters.get(twilio.TOKEN_PARAMETER, ""),
            channel="twilio",
        )
        if grant.subject != start.call_sid:
            raise tokens.BadToken("the token is for another call")
    except (ProtocolError, tokens.BadToken) as exc:
        return await _reject(ws, request, "twilio", str(exc))
    dialect = twilio.TwilioDialect(start, caller_number=start.parameters.get("from", ""))
    carried: list[dict[str, Any]] = []
    moves = 0
    if start.parameters.get(handoff.CONTINUED_PARAMETER):
        # Read, not taken: this stream's end overwrites it; until then it still says what
        # the call was (a stream refused below must not reset the call's moves).
        saved = await state.registry.load_handoff(handoff.key(start.call_sid))
        carried, moves = handoff.carried_items(saved)
    log.info(
        "twilio.stream",
        call_sid=start.call_sid,
        stream_sid=start.stream_sid,
        carried_items=len(carried),
    )

    settled = False

    async def keep_handoff(session: Session) -> None:
        # How this stream's session ended and its conversation, for what Twilio asks next.
        nonlocal settled
        settled = True
        await state.registry.save_handoff(
            handoff.key(start.call_sid),
            handoff.record(session, moves),
            ttl_s=s.phone.token_ttl_s,
        )

    try:
        return await serve_session(
            request,
            ws,
            # One stream per call here: a token replayed while its call is live is refused.
            client=f"twilio:{start.call_sid}",
            limit=1,
            dialect=dialect,
            instructions_file=s.phone.instructions_file,
            metadata={"call_sid": start.call_sid, **_caller(start.parameters.get("from", ""))},
            carried=carried,
            before_close=keep_handoff,
        )
    finally:
        if not settled:
            # No session ran (refused at a cap): the call is not moved again.
            await asyncio.shield(
                state.registry.save_handoff(
                    handoff.key(start.call_sid),
                    handoff.refused(moves),
                    ttl_s=s.phone.token_ttl_s,
                )
            )


# -- ACS ------------------------------------------------------------------------------


async def acs_stream(request: web.Request) -> web.StreamResponse:
    """ACS's media stream: a valid ``?token=`` first, then ``AudioMetadata``, then relay."""
    state = request.app[STATE]
    s = state.settings
    state.accept_calls()
    try:
        grant = tokens.verify(
            request.app[TOKEN_SECRET], request.query.get("token", ""), channel="acs"
        )
    except tokens.BadToken as exc:
        log.info("ws.rejected", reason="token", channel="acs", why=str(exc), remote=request.remote)
        raise json_error(
            web.HTTPUnauthorized, "a valid stream token is required", errors.ERR_UNAUTHORIZED
        ) from None
    ws = websocket(s.max_frame_bytes)
    await ws.prepare(request)
    try:
        audio, subscription = await _first_message(
            ws, s.phone.start_timeout_s, acs.parse_metadata, "AudioMetadata"
        )
    except ProtocolError as exc:
        return await _reject(ws, request, "acs", str(exc))
    dialect = acs.AcsDialect(audio, subscription_id=subscription, call=grant.subject)
    log.info("acs.stream", call=grant.subject, audio=str(audio))
    return await serve_session(
        request,
        ws,
        client=f"acs:{grant.subject}",
        limit=1,
        dialect=dialect,
        instructions_file=s.phone.instructions_file,
        metadata={"call": grant.subject},
    )


async def acs_incoming(request: web.Request) -> web.Response:
    """Event Grid's webhook: the subscription handshake, and ``IncomingCall`` answered.

    Answered 200 even when an answer fails (logged): Event Grid would redeliver the
    whole batch, answering its other calls twice, and a call rings for less time than
    its retries take. Draining does not refuse calls either: the stream is opened at
    PUBLIC_URL, which the load balancer routes to an instance that takes it.
    """
    _check_events_key(request, "incoming")
    events = await _read_events(request, acs_answer.MAX_INCOMING_BYTES)
    try:
        code = acs_answer.validation_code(events)
    except ProtocolError as exc:
        raise json_error(web.HTTPBadRequest, str(exc), errors.ERR_BAD_MESSAGE) from None
    if code is not None:
        log.info("acs.subscription_validated")
        return web.json_response({"validationResponse": code})
    calls = acs_answer.incoming_calls(events)
    results = await request.app[acs_answer.ANSWERER].answer_all(calls)
    answered = sum(1 for r in results if r.call_connection_id is not None)
    return web.json_response({"answered": answered, "failed": len(results) - answered})


async def acs_events(request: web.Request) -> web.Response:
    """Call Automation's callbacks for the calls answered: logged, nothing more."""
    _check_events_key(request, "events")
    events = await _read_events(request, acs_answer.MAX_CALLBACK_BYTES)
    for event in events[: acs_answer.MAX_LOGGED_CALLBACKS]:
        log.info("acs.call_event", **acs_answer.callback_summary(event))
    if len(events) > acs_answer.MAX_LOGGED_CALLBACKS:
        log.info("acs.call_events_unlogged", count=len(events) - acs_answer.MAX_LOGGED_CALLBACKS)
    return web.json_response({"received": len(events)})


def _check_events_key(request: web.Request, route: str) -> None:
    """``?key=`` must be ACS_EVENTS_KEY (compared in constant time); 401 otherwise."""
    expected = request.app[STATE].settings.phone.acs_events_key
    given = request.query.get("key", "")
    if hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode()):
        return
    state = request.app[STATE]
    state.limited_log.warning(
        log, "acs.bad_key", route=route, missing=not given, remote=request.remote
    )
    state.metrics.count_error(errors.ERR_UNAUTHORIZED)
    raise json_error(web.HTTPUnauthorized, "a valid key is required", errors.ERR_UNAUTHORIZED)


async def _read_events(request: web.Request, limit: int) -> list[dict[str, Any]]:
    """The JSON events of a webhook body of at most ``limit`` bytes; 413 or 400 otherwise."""
    too_large = web.HTTPRequestEntityTooLarge(
        limit,
        text=protocol.error(f"the body is over {limit} bytes", errors.ERR_BAD_MESSAGE),
        content_type="application/json",
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > limit:
            raise too_large
    try:
        return acs_answer.parse_events(bytes(body))
    except ProtocolError as exc:
        raise json_error(web.HTTPBadRequest, str(exc), errors.ERR_BAD_MESSAGE) from None


# -- shared ---------------------------------------------------------------------------


async def _first_message(ws: web.WebSocketResponse, timeout_s: float, parse: Any, name: str) -> Any:
    """The stream's opening message, parsed by ``parse``; messages before it that are not
    it (Twilio's ``connected``) are skipped, a few at most. Raises :class:`ProtocolError`."""
    try:
        async with asyncio.timeout(timeout_s):
            for _ in range(_MAX_HANDSHAKE_FRAMES):
                msg = await ws.receive()
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    raise ProtocolError(f"the stream ended before its {name} message")
                if len(msg.data) > _MAX_HANDSHAKE_CHARS:
                    raise ProtocolError(f"the {name} message is too large")
                try:
                    data = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    raise ProtocolError("message is not valid JSON") from None
                if _opening(data, name):
                    return parse(data)
    except TimeoutError:
        raise ProtocolError(f"no {name} message within {timeout_s:g} s") from None
    raise ProtocolError(f"no {name} message among the first {_MAX_HANDSHAKE_FRAMES}")


def _opening(data: Any, name: str) -> bool:
    return isinstance(data, dict) and name in (data.get("event"), data.get("kind"))


async def _reject(
    ws: web.WebSocketResponse, request: web.Request, channel: str, why: str
) -> web.WebSocketResponse:
    """Close a stream that did not prove which call it is: 1008, nothing relayed."""
    state = request.app[STATE]
    state.limited_log.warning(
        log, "ws.rejected", reason="stream_start", channel=channel, why=why, remote=request.remote
    )
    state.metrics.count_error(errors.ERR_UNAUTHORIZED)
    await ws.close(code=errors.CLOSE_POLICY, message=b"a valid stream start is required")
    return ws


def _public(request: web.Request, phone: PhoneSettings) -> str:
    """The base URL providers reach this server at: ``PUBLIC_URL``, or the request's."""
    if phone.public_url:
        return phone.public_url
    return f"{request.scheme}://{request.host}"


def _caller(number: str) -> dict[str, str]:
    return {"from": mask_number(number)} if number else {}
