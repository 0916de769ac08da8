"""Answering ACS calls: Event Grid's ``IncomingCall`` events, answered with Call Automation
so that the call's audio streams to ``/ws/acs``.

The flow (``ACS_CONNECTION_STRING`` set; the routes are in :mod:`voicebridge.phone.routes`):

1. An Event Grid subscription on the ACS resource, for ``Microsoft.Communication.
   IncomingCall``, posts to ``PUBLIC_URL/acs/incoming?key=ACS_EVENTS_KEY``. Creating it
   sends a ``SubscriptionValidationEvent`` first, answered with its ``validationCode``
   (Event Grid's synchronous handshake).
2. Each ``IncomingCall`` is answered with ``CallAutomationClient.answer_call``: media
   streaming over a WebSocket to ``wss://<PUBLIC_URL host>/ws/acs?token=<stream token>``,
   bidirectional, PCM16 mono at ``ACS_AUDIO_RATE``, started at once; call events go to
   ``PUBLIC_URL/acs/events?key=...``, which logs them.

Parsing is pure (:func:`parse_events`, :func:`validation_code`, :func:`incoming_calls`);
:class:`Answerer` owns the one SDK client, which is imported here lazily so the app runs
without the ``acs`` extra (settings loading refuses ACS_CONNECTION_STRING without it).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import attrs
import orjson
import structlog
from aiohttp import web

from voicebridge.config import MASK
from voicebridge.errors import ProtocolError
from voicebridge.phone import tokens
from voicebridge.phone.callers import mask_number
from voicebridge.phone.settings import PhoneSettings

if TYPE_CHECKING:
    from azure.communication.callautomation.aio import CallAutomationClient

log = structlog.get_logger(__name__)

EVENT_VALIDATION: Final = "Microsoft.EventGrid.SubscriptionValidationEvent"
EVENT_INCOMING_CALL: Final = "Microsoft.Communication.IncomingCall"
#: One answer (the SDK's own retries included) may take this long; Event Grid waits 30 s
#: for the webhook's reply.
ANSWER_TIMEOUT_S: Final = 10.0
#: Largest webhook body read: Event Grid's largest event is 1 MB. Call Automation's
#: callbacks are a few kB.
MAX_INCOMING_BYTES: Final = 1024 * 1024
MAX_CALLBACK_BYTES: Final = 256 * 1024
#: Callback events logged per request; the rest are counted.
MAX_LOGGED_CALLBACKS: Final = 16
#: A correlation id used as the stream token's subject as it is (a GUID in practice).
_SUBJECT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")

#: Keyword arguments for ``CallAutomationClient.from_connection_string`` (azure-core's
#: transport options, e.g. ``connection_verify`` for a private CA); set before start-up.
CLIENT_OPTIONS = web.AppKey("acs_client_options", dict[str, Any])


@attrs.frozen
class IncomingCall:
    """What answering needs from an ``IncomingCall`` event."""

    #: Opaque and call-specific: answers the call, so never logged.
    context: str = attrs.field(repr=False)
    correlation_id: str
    caller: str


@attrs.frozen
class Answered:
    """How one answer went: the call connection, or why not (secrets scrubbed)."""

    correlation_id: str
    call_connection_id: str | None = None
    error: str | None = None


# -- parsing --------------------------------------------------------------------------


def parse_events(body: bytes) -> list[dict[str, Any]]:
    """The events of a webhook delivery: Event Grid posts a JSON array (a single object
    is taken as one event). Raises :class:`ProtocolError`."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("the body is not valid JSON") from None
    events = [data] if isinstance(data, dict) else data
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ProtocolError("the body is not an array of events")
    return events


def event_type(event: Mapping[str, Any]) -> str:
    """The type of an Event Grid (``eventType``) or CloudEvents (``type``) event."""
    value = event.get("eventType", event.get("type"))
    return value if isinstance(value, str) else ""


def _data(event: Mapping[str, Any]) -> Mapping[str, Any]:
    data = event.get("data")
    return data if isinstance(data, dict) else {}


def validation_code(events: Sequence[Mapping[str, Any]]) -> str | None:
    """The ``validationCode`` of a subscription validation event, if the delivery is one."""
    for event in events:
        if event_type(event) == EVENT_VALIDATION:
            code = _data(event).get("validationCode")
            if not isinstance(code, str) or not code:
                raise ProtocolError("the validation event has no validationCode")
            return code
    return None


def incoming_calls(events: Sequence[Mapping[str, Any]]) -> list[IncomingCall]:
    """The ``IncomingCall`` events that can be answered (other events are ignored)."""
    calls = []
    for event in events:
        if event_type(event) != EVENT_INCOMING_CALL:
            continue
        data = _data(event)
        context = data.get("incomingCallContext")
        if not isinstance(context, str) or not context:
            log.warning("acs.incoming_call_unusable", why="no incomingCallContext")
            continue
        correlation = data.get("correlationId")
        calls.append(
            IncomingCall(
                context=context,
                correlation_id=correlation if isinstance(correlation, str) else "",
                caller=_caller(data.get("from")),
            )
        )
    return calls


def _caller(identifier: Any) -> str:
    """A communication identifier's phone number (``phoneNumber.value``, or a ``4:`` raw
    id), else its raw id."""
    if not isinstance(identifier, dict):
        return ""
    phone = identifier.get("phoneNumber")
    if isinstance(phone, dict) and isinstance(phone.get("value"), str):
        return str(phone["value"])
    raw = identifier.get("rawId")
    return raw.removeprefix("4:") if isinstance(raw, str) else ""


def stream_subject(call: IncomingCall) -> str:
    """The stream token's subject: the call's correlation id, or a fresh id."""
    if _SUBJECT.fullmatch(call.correlation_id):
        return call.correlation_id
    return uuid.uuid4().hex


def transport_url(public_url: str, token: str) -> str:
    """Where ACS opens the media stream: ``wss://`` + PUBLIC_URL's host (and path)."""
    return "wss" + public_url.removeprefix("https") + "/ws/acs?" + urlencode({"token": token})


def callback_url(public_url: str, key: str) -> str:
    """Where Call Automation posts the call's events."""
    return f"{public_url}/acs/events?key={quote(key, safe='')}"


def callback_summary(event: Mapping[str, Any]) -> dict[str, Any]:
    """What the log keeps of a Call Automation callback event: type, ids, result."""
    data = _data(event)
    summary: dict[str, Any] = {
        "type": event_type(event)[:120],
        "call_connection_id": str(data.get("callConnectionId", ""))[:120] or None,
        "correlation_id": str(data.get("correlationId", ""))[:120] or None,
    }
    result = data.get("resultInformation")
    if isinstance(result, dict):
        summary["result"] = {
            k: str(result[k])[:200] for k in ("code", "subCode", "message") if k in result
        }
    return summary


# -- answering ------------------------------------------------------------------------


def _scrub(text: str, *secrets: str) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, MASK).replace(quote(secret, safe=""), MASK)
    return text[:300]


@attrs.define
class Answerer:
    """Answers incoming calls with the app's one Call Automation client, which
    :func:`answerer_ctx` opens at start-up and closes at shutdown."""

    phone: PhoneSettings
    token_secret: bytes = attrs.field(repr=False)
    timeout_s: float = ANSWER_TIMEOUT_S
    client: CallAutomationClient | None = None

    async def answer_all(self, calls: Sequence[IncomingCall]) -> list[Answered]:
        """Answer every call at once; one failing does not stop the others."""
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(self.answer(call)) for call in calls]
        return [task.result() for task in tasks]

    async def answer(self, call: IncomingCall) -> Answered:
        """Answer one call, streaming to ``/ws/acs`` with a fresh token; never raises but
        :class:`asyncio.CancelledError`. A failure is logged without secrets."""
        from azure.communication.callautomation import (
            AudioFormat,
            MediaStreamingAudioChannelType,
            MediaStreamingContentType,
            MediaStreamingOptions,
            StreamingTransportType,
        )
        from azure.core.exceptions import AzureError, HttpResponseError

        phone = self.phone
        subject = stream_subject(call)
        token = tokens.mint(
            self.token_secret, channel="acs", subject=subject, ttl_s=phone.token_ttl_s
        )
        media = MediaStreamingOptions(
            transport_url=transport_url(phone.public_url, token),
            transport_type=StreamingTransportType.WEBSOCKET,
            content_type=MediaStreamingContentType.AUDIO,
            audio_channel_type=MediaStreamingAudioChannelType.MIXED,
            start_media_streaming=True,
            enable_bidirectional=True,
            audio_format=(
                AudioFormat.PCM24_K_MONO
                if phone.acs_audio_rate == 24000
                else AudioFormat.PCM16_K_MONO
            ),
        )
        fields = {"correlation_id": call.correlation_id or None, "stream": subject}
        if call.caller:
            fields["caller"] = mask_number(call.caller)
        try:
            if self.client is None:
                raise RuntimeError("the Call Automation client is not open")
            async with asyncio.timeout(self.timeout_s):
                result = await self.client.answer_call(
                    incoming_call_context=call.context,
                    callback_url=callback_url(phone.public_url, phone.acs_events_key),
                    media_streaming=media,
                    operation_context=subject,
                )
        except TimeoutError:
            error = f"no answer from ACS within {self.timeout_s:g} s"
        except HttpResponseError as exc:
            reason = _scrub(str(exc.message or exc.reason or ""), phone.acs_events_key, token)
            error = f"ACS refused the answer ({exc.status_code}): {reason}"
        except AzureError as exc:
            error = f"{type(exc).__name__}: {_scrub(str(exc), phone.acs_events_key, token)}"
        except Exception as exc:  # a bug here must not fail the other calls of the batch
            log.exception("acs.answer_crashed", **fields)
            error = type(exc).__name__
        else:
            connection = str(result.call_connection_id or "")
            log.info("acs.answered", call_connection_id=connection, **fields)
            return Answered(call.correlation_id, call_connection_id=connection)
        log.error("acs.answer_failed", error=error, **fields)
        return Answered(call.correlation_id, error=error)


ANSWERER = web.AppKey("acs_answerer", Answerer)


async def answerer_ctx(app: web.Application) -> AsyncIterator[None]:
    """The Call Automation client, for the app's life (``cleanup_ctx``)."""
    from azure.communication.callautomation.aio import CallAutomationClient

    answerer = app[ANSWERER]
    client = CallAutomationClient.from_connection_string(
        answerer.phone.acs_connection_string, **app.get(CLIENT_OPTIONS, {})
    )
    async with client:
        answerer.client = client
        try:
            yield
        finally:
            answerer.client = None
