"""Fake phone providers: Twilio and Azure Communication Services calling the bridge.

Each is a real aiohttp WebSocket client playing the provider's part exactly as the
provider documents it, for tests and for the load test's phone channels:

* :class:`TwilioCall` (Media Streams, twilio.com/docs/voice/media-streams/websocket-messages):
  the voice webhook is POSTed (form fields, ``X-Twilio-Signature``), the TwiML answer's
  ``<Connect><Stream>`` gives the WebSocket URL and the custom parameters; then
  ``connected``, ``start``, a ``media`` message every 20 ms (μ-law 8 kHz, 160 bytes),
  ``dtmf`` on a key press and ``stop`` at hang-up. From the server it takes ``media``,
  ``mark`` and ``clear``.
* :class:`AcsCall` (Call Automation bidirectional audio streaming): ``?token=`` on the
  transport URL, ``AudioMetadata``, then an ``AudioData`` every 20 ms (PCM16 at 16 or 24
  kHz, ``silent`` set on silence frames); from the server ``AudioData`` and ``StopAudio``.
  Hanging up closes the socket.

Like the providers, a call streams all the time it is up: what it is told to say
(:meth:`PhoneCall.say`), and silence in between, on a monotonic schedule (frame *k* at
``t0 + k * 20 ms``, so a late frame does not delay the rest: :class:`Pacer`). What the
server sends is played through a modelled playback buffer in real time
(:class:`~voicebridge.loadtest.playback.Playback`): marks are echoed when playback reaches
them, a clear empties the buffer and echoes the pending marks at once. Everything is
recorded (:class:`CallMetrics`); ``wait_*`` methods wait on conditions (woken by what
arrives, never by polling).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from typing import Any

import aiohttp
import orjson
from yarl import URL

from voicebridge.loadtest.options import ACS, TWILIO, check_loopback
from voicebridge.loadtest.phone_audio import FRAME_MS, AudioFormat
from voicebridge.loadtest.phone_call import (
    CallFailed,
    CallMetrics,
    Clock,
    Pacer,
    PhoneCall,
    RealClock,
    Utterance,
)
from voicebridge.loadtest.playback import PlayedMark
from voicebridge.phone import signature, tokens

__all__ = [
    "AcsCall",
    "CallFailed",
    "CallMetrics",
    "Clock",
    "Pacer",
    "PhoneCall",
    "RealClock",
    "TwilioCall",
    "Utterance",
    "parse_twiml",
]

ACCOUNT_SID = "AC" + "0" * 32


def parse_twiml(text: str) -> tuple[str, dict[str, str]]:
    """The ``<Connect><Stream>`` URL of a TwiML answer and its ``<Parameter>``s."""
    url, params, _action = parse_connect(text)
    return url, params


def parse_connect(text: str) -> tuple[str, dict[str, str], str | None]:
    """``parse_twiml`` and the ``<Connect action>`` URL, if any."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise CallFailed(f"the webhook's answer is not XML: {exc}") from None
    connect = root.find("./Connect")
    stream = root.find("./Connect/Stream")
    if root.tag != "Response" or stream is None or not stream.get("url"):
        raise CallFailed("the webhook's TwiML has no <Connect><Stream url=...>")
    params = {
        p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter") if p.get("name")
    }
    action = connect.get("action") if connect is not None else None
    return str(stream.get("url")), params, action


class TwilioCall(PhoneCall):
    """Twilio calling the bridge: voice webhook, then a bidirectional Media Stream."""

    channel = TWILIO

    def __init__(
        self,
        server: str | URL,
        auth_token: str,
        *,
        from_number: str = "+15550100001",
        to_number: str = "+15550100002",
        webhook_path: str = "/twilio/voice",
        **kw: Any,
    ) -> None:
        super().__init__(server, AudioFormat.for_channel(TWILIO), **kw)
        self.auth_token = auth_token
        self.call_sid = "CA" + self.call_id[:32]
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.from_number = from_number
        self.to_number = to_number
        self.webhook_url = str(self.base.with_scheme("http").with_path(webhook_path))
        self.stream_url = ""
        self.custom_parameters: dict[str, str] = {}
        self.action_url: str | None = None  # <Connect action>: asked what next after a stream
        self.streams = 0  # streams this call has had (more than one: it was moved)
        self.hung_up_by_twiml = False
        self.seq = 0
        self._stream_sid_json = orjson.dumps(self.stream_sid).decode()

    def webhook_params(self) -> dict[str, str]:
        """The form Twilio POSTs for an incoming call."""
        return {
            "AccountSid": ACCOUNT_SID,
            "ApiVersion": "2010-04-01",
            "CallSid": self.call_sid,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "From": self.from_number,
            "To": self.to_number,
        }

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        params = self.webhook_params()
        sig = signature.compute(self.auth_token, self.webhook_url, params.items())
        async with self.session.post(
            self.webhook_url, data=params, headers={"X-Twilio-Signature": sig}
        ) as resp:
            body = await resp.text()
            if resp.status != 200:
                raise CallFailed(f"webhook answered {resp.status}: {body[:200]}")
        self.stream_url, self.custom_parameters, self.action_url = parse_connect(body)
        check_loopback(self.stream_url)
        self.streams += 1
        try:
            return await self.session.ws_connect(self.stream_url, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            raise CallFailed(f"stream handshake refused: {exc.status}") from None

    async def _next_stream(self) -> bool:
        """As Twilio does when a stream ends under ``<Connect action>``: POST the action URL
        (signed) and follow its TwiML, a new stream (the call goes on) or ``<Hangup/>``."""
        if not self.action_url:
            return False
        check_loopback(str(URL(self.action_url).with_scheme("ws")))
        params = {**self.webhook_params(), "CallStatus": "in-progress"}
        sig = signature.compute(self.auth_token, self.action_url, params.items())
        try:
            async with self.session.post(
                self.action_url, data=params, headers={"X-Twilio-Signature": sig}
            ) as resp:
                body = await resp.text()
                if resp.status != 200:
                    return False
        except aiohttp.ClientError:
            return False
        try:
            url, parameters, action = parse_connect(body)
        except CallFailed:
            self.hung_up_by_twiml = "<Hangup" in body
            return False
        check_loopback(url)
        self.stream_url, self.custom_parameters, self.action_url = url, parameters, action
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self._stream_sid_json = orjson.dumps(self.stream_sid).decode()
        try:
            self.ws = await self.session.ws_connect(url, autoping=True)
        except aiohttp.ClientError:
            return False
        self.streams += 1
        await self._open()
        return True

    def _next_seq(self) -> str:
        self.seq += 1
        return str(self.seq)

    async def _send(self, event: Mapping[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send_str(orjson.dumps(event).decode())

    async def _open(self) -> None:
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": ACCOUNT_SID,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "customParameters": self.custom_parameters,
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": self.stream_sid,
            }
        )

    def _media(self, k: int, payload: str, silent: bool) -> str:
        # Built by hand: the payload is already base64, the rest are digits.
        return (
            f'{{"event":"media","sequenceNumber":"{self._next_seq()}","media":{{"track":'
            f'"inbound","chunk":"{k + 1}","timestamp":"{k * FRAME_MS}","payload":"{payload}"}},'
            f'"streamSid":{self._stream_sid_json}}}'
        )

    async def press(self, digit: str) -> None:
        """The caller presses a key: a ``dtmf`` message."""
        if len(digit) != 1 or digit not in "0123456789*#ABCD":
            raise ValueError(f"not a DTMF digit: {digit!r}")
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )
        self.dtmf_sent += 1

    async def _goodbye(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        await self._send(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": ACCOUNT_SID, "callSid": self.call_sid},
            }
        )

    async def _on_event(self, event: dict[str, Any], now: int) -> None:
        kind = event.get("event")
        if event.get("streamSid") != self.stream_sid:
            self.unexpected += 1  # Twilio ignores messages for another stream
            return
        if kind == "media":
            media = event.get("media")
            self._on_audio(media.get("payload") if isinstance(media, dict) else None, now)
        elif kind == "mark":
            mark = event.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self.unexpected += 1
                return
            for reached in self.playback.mark(name, now):
                await self._send_mark(reached)
            self._marks_changed.set()
        elif kind == "clear":
            for dropped in self._on_clear(now):
                await self._send_mark(dropped)
        else:
            self.unexpected += 1

    async def _send_mark(self, mark: PlayedMark) -> None:
        ws = self.ws
        if ws is None or ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self._send(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_seq(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": mark.name},
                }
            )


class AcsCall(PhoneCall):
    """ACS calling the bridge: bidirectional audio streaming over a WebSocket."""

    channel = ACS

    def __init__(
        self,
        server: str | URL,
        token: str,
        *,
        sample_rate: int = 16_000,
        path: str = "/ws/acs",
        participant: str | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(server, AudioFormat.for_channel(ACS, sample_rate), **kw)
        self.token = token
        self.url = self.base.with_scheme("ws").with_path(path).with_query(token=token)
        self.subscription_id = str(uuid.uuid4())
        self.participant = participant or f"8:acs:{uuid.uuid4()}_{self.call_id[:8]}"
        self._participant_json = orjson.dumps(self.participant).decode()
        self._epoch = dt.datetime.now(dt.UTC)

    @classmethod
    def with_secret(cls, server: str | URL, secret: bytes, **kw: Any) -> AcsCall:
        """A call whose token is minted with the server's ``PHONE_TOKEN_SECRET``."""
        call_id = kw.pop("call_id", None) or PhoneCall._new_call_id()
        token = tokens.mint(secret, channel=ACS, subject=call_id, ttl_s=60)
        return cls(server, token, call_id=call_id, **kw)

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        try:
            return await self.session.ws_connect(self.url, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            raise CallFailed(f"stream handshake refused: {exc.status}") from None

    async def _open(self) -> None:
        assert self.ws is not None
        self._epoch = dt.datetime.now(dt.UTC)
        metadata = {
            "kind": "AudioMetadata",
            "audioMetadata": {
                "subscriptionId": self.subscription_id,
                "encoding": "PCM",
                "sampleRate": self.fmt.rate,
                "channels": 1,
                "length": self.fmt.frame_bytes,
            },
        }
        await self.ws.send_str(orjson.dumps(metadata).decode())

    def _media(self, k: int, payload: str, silent: bool) -> str:
        stamp = self._epoch + dt.timedelta(milliseconds=k * FRAME_MS)
        iso = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return (
            f'{{"kind":"AudioData","audioData":{{"timestamp":"{iso}","participantRawID":'
            f'{self._participant_json},"data":"{payload}","silent":'
            f"{'true' if silent else 'false'}}}}}"
        )

    async def _on_event(self, event: dict[str, Any], now: int) -> None:
        kind = event.get("kind")
        if kind == "AudioData":
            data = event.get("audioData")
            self._on_audio(data.get("data") if isinstance(data, dict) else None, now)
        elif kind == "StopAudio":
            self._on_clear(now)
        else:
            self.unexpected += 1
