"""Twilio Media Streams: the dialect of ``/ws/twilio`` and the TwiML that starts a stream.

The protocol, as Twilio documents it ("Media Streams - WebSocket Messages",
twilio.com/docs/voice/media-streams/websocket-messages):

* Twilio sends ``connected``, then ``start`` (``streamSid``, ``callSid``, the
  ``customParameters`` of ``<Parameter>`` elements, ``mediaFormat``: ``audio/x-mulaw`` at
  8000 Hz, mono), then ``media`` (base64 μ-law, ``track`` ``inbound``), ``dtmf``
  (``digit``), ``mark`` (echoing a mark we sent, once the audio before it has played) and
  ``stop`` when the call or stream ends.
* We send ``media`` (base64 μ-law, no track), ``mark`` (a name), and ``clear``, which
  empties Twilio's playback buffer (Twilio then echoes the marks it discarded).

Agent audio goes out in 20 ms ``media`` messages; each piece Voice Live sends (an audio
delta, typically 100 ms) is followed by one ``mark`` named ``<response id>:<ms of it sent
so far>``. The echoes say how far the caller has heard each response, so a barge-in
truncates the agent's turn at the last acknowledged position (to within one delta).
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Final
from xml.sax.saxutils import quoteattr

import attrs
import orjson

from voicebridge import errors, protocol
from voicebridge.audio_format import ULAW_8K
from voicebridge.errors import ProtocolError
from voicebridge.phone.callers import mask_number
from voicebridge.relay.dialect import Dialect
from voicebridge.relay.dtmf import KEYS
from voicebridge.relay.turns import ResponseTrack

#: Agent audio per ``media`` message: 20 ms of 8 kHz μ-law.
CHUNK_BYTES: Final = 160
#: Twilio's only media format for bidirectional streams.
MEDIA_FORMAT: Final = {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
#: The custom parameter carrying the per-call stream token.
TOKEN_PARAMETER: Final = "token"
_MAX_ID_CHARS: Final = 64


@attrs.frozen
class StreamStart:
    """What Twilio's ``start`` message says about the stream."""

    stream_sid: str
    call_sid: str
    account_sid: str
    parameters: dict[str, str]


def parse_start(message: Any) -> StreamStart:
    """The ``start`` message; :class:`ProtocolError` for anything else or a bad one."""
    if not isinstance(message, dict) or message.get("event") != "start":
        raise ProtocolError("expected Twilio's start message", code=errors.ERR_BAD_MESSAGE)
    start = message.get("start")
    if not isinstance(start, dict):
        raise ProtocolError("'start' must be an object", code=errors.ERR_BAD_MESSAGE)
    stream_sid = start.get("streamSid") or message.get("streamSid")
    call_sid = start.get("callSid")
    for name, value in (("streamSid", stream_sid), ("callSid", call_sid)):
        if not isinstance(value, str) or not value or len(value) > _MAX_ID_CHARS:
            raise ProtocolError(f"'{name}' must be a Twilio id", code=errors.ERR_BAD_MESSAGE)
    media_format = start.get("mediaFormat")
    if media_format is not None and media_format != MEDIA_FORMAT:
        raise ProtocolError(
            f"media format {media_format!r} is not 8 kHz mono μ-law",
            code=errors.ERR_BAD_AUDIO,
        )
    raw_params = start.get("customParameters") or {}
    if not isinstance(raw_params, dict):
        raise ProtocolError("'customParameters' must be an object", code=errors.ERR_BAD_MESSAGE)
    params = {str(k)[:64]: str(v)[:512] for k, v in list(raw_params.items())[:16]}
    account = start.get("accountSid")
    return StreamStart(
        stream_sid=str(stream_sid),
        call_sid=str(call_sid),
        account_sid=account if isinstance(account, str) else "",
        parameters=params,
    )


def twiml(stream_url: str, parameters: dict[str, str], action: str | None = None) -> str:
    """The TwiML that connects a call to a bidirectional stream (``<Connect><Stream>``);
    with ``action``, Twilio asks that URL what to do once the stream ends."""
    params = "".join(
        f"<Parameter name={quoteattr(name)} value={quoteattr(value)}/>"
        for name, value in parameters.items()
    )
    connect = "<Connect>" if action is None else f"<Connect action={quoteattr(action)}>"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f"<Response>{connect}<Stream url={quoteattr(stream_url)}>{params}</Stream>"
        "</Connect></Response>"
    )


HANGUP: Final = '<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>'


class TwilioDialect(Dialect):
    """Twilio Media Streams after ``start``: μ-law in and out, marks as playback reports."""

    name: ClassVar[str] = "twilio"
    shows_text: ClassVar[bool] = False
    ack_only: ClassVar[bool] = True
    binary_audio: ClassVar[bool] = False

    def __init__(self, start: StreamStart, caller_number: str = "") -> None:
        super().__init__(ULAW_8K)
        self.start = start
        self._caller_number = caller_number
        sid = orjson.dumps(start.stream_sid).decode()
        # The fixed parts of every outgoing message, so a chunk costs one format.
        self._media_head = '{"event":"media","streamSid":' + sid + ',"media":{"payload":"'
        self._mark_head = '{"event":"mark","streamSid":' + sid + ',"mark":{"name":'
        self._clear = '{"event":"clear","streamSid":' + sid + "}"

    def parse(self, text: str) -> protocol.ClientMessage | None:
        msg = protocol.json_object(text)
        event = msg.get("event")
        body = msg.get(event) if isinstance(event, str) else None
        if event == "media":
            if not isinstance(body, dict) or body.get("track", "inbound") != "inbound":
                return None  # only the caller's track is relayed
            return protocol.AudioIn(protocol.decode_audio(body.get("payload"), "payload"))
        if event == "mark":
            return _mark(body)
        if event == "dtmf":
            digit = body.get("digit") if isinstance(body, dict) else None
            if not isinstance(digit, str) or digit not in KEYS:
                raise ProtocolError("'digit' must be a keypad key", code=errors.ERR_BAD_MESSAGE)
            return protocol.DtmfIn(digit)
        if event == "stop":
            return protocol.HangUpIn()
        if event in ("connected", "start"):
            return None
        raise ProtocolError(
            f"unknown Twilio event {str(event)[:40]!r}", code=errors.ERR_UNKNOWN_TYPE
        )

    def audio_frames(self, track: ResponseTrack, audio: bytes) -> list[str | bytes]:
        frames: list[str | bytes] = []
        head = self._media_head
        for at in range(0, len(audio), CHUNK_BYTES):
            chunk = audio[at : at + CHUNK_BYTES]
            frames.append(head + base64.b64encode(chunk).decode("ascii") + '"}}')
        played_to = self.audio.ms(track.audio_written + len(audio))
        name = orjson.dumps(f"{track.response_id}:{played_to}").decode()
        frames.append(self._mark_head + name + "}}")
        return frames

    def clear(self) -> str:
        return self._clear

    def caller(self) -> dict[str, str]:
        shown = {"call_sid": self.start.call_sid, "stream_sid": self.start.stream_sid}
        if self._caller_number:
            shown["from"] = mask_number(self._caller_number)
        return shown


def _mark(body: Any) -> protocol.PlaybackIn | None:
    """A mark echo: the audio of a response up to a position has played."""
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str):
        raise ProtocolError("'mark.name' must be a string", code=errors.ERR_BAD_MESSAGE)
    response_id, _, played = name.rpartition(":")
    if not response_id or not played.isdigit() or len(name) > 256:
        return None  # not a mark this relay sent
    return protocol.PlaybackIn(int(played), response_id)
