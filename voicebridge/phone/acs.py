"""Azure Communication Services bidirectional media streaming: the dialect of ``/ws/acs``.

The protocol, as Microsoft documents it ("Audio streaming quickstart" and "Bidirectional
audio streaming", learn.microsoft.com/azure/communication-services/how-tos/call-automation/;
the ``StreamingData`` / ``OutStreamingData`` models of the Call Automation SDKs):

* ACS sends ``{"kind": "AudioMetadata", "audioMetadata": {"subscriptionId", "encoding":
  "PCM", "sampleRate": 16000 | 24000, "channels": 1, "length"}}`` first, then
  ``{"kind": "AudioData", "audioData": {"timestamp", "participantRawID", "data": base64
  PCM16, "silent"}}``; with DTMF enabled, ``{"kind": "DtmfData", "dtmfData": {"data"}}``.
* We send ``{"kind": "AudioData", "audioData": {"data": base64}}``, and
  ``{"kind": "StopAudio", "audioData": null, "stopAudio": {}}`` to stop playback at once.

ACS acknowledges nothing it plays, so the played position of a response is the wall clock
since its first audio was sent (never more than was sent), as for a browser that does not
report playback.
"""

from __future__ import annotations

import base64
from typing import Any, ClassVar, Final

import orjson

from voicebridge import errors, protocol
from voicebridge.audio_format import AudioFormat
from voicebridge.errors import ProtocolError
from voicebridge.relay.dialect import Dialect
from voicebridge.relay.dtmf import KEYS
from voicebridge.relay.turns import ResponseTrack

#: PCM16 mono rates ACS streams (``AudioFormat.Pcm16KMono`` / ``Pcm24KMono``).
RATES: Final = (16000, 24000)
CHUNK_MS: Final = 20
STOP_AUDIO: Final = orjson.dumps({"kind": "StopAudio", "audioData": None, "stopAudio": {}}).decode()
_MAX_ID_CHARS: Final = 128


def parse_metadata(message: Any) -> tuple[AudioFormat, str]:
    """The audio format and subscription id of an ``AudioMetadata`` message;
    :class:`ProtocolError` for anything else, or a format the relay does not carry."""
    if not isinstance(message, dict) or message.get("kind") != "AudioMetadata":
        raise ProtocolError("expected ACS's AudioMetadata message", code=errors.ERR_BAD_MESSAGE)
    meta = message.get("audioMetadata")
    if not isinstance(meta, dict):
        raise ProtocolError("'audioMetadata' must be an object", code=errors.ERR_BAD_MESSAGE)
    encoding, rate, channels = meta.get("encoding"), meta.get("sampleRate"), meta.get("channels")
    if encoding != "PCM" or channels not in (1, None) or rate not in RATES:
        raise ProtocolError(
            f"audio {encoding!r} at {rate!r} Hz, {channels!r} channels: ACS streams mono PCM "
            "at 16000 or 24000 Hz",
            code=errors.ERR_BAD_AUDIO,
        )
    subscription = meta.get("subscriptionId")
    if not isinstance(subscription, str) or len(subscription) > _MAX_ID_CHARS:
        subscription = ""
    return AudioFormat("pcm16", int(rate)), subscription


class AcsDialect(Dialect):
    """ACS media streaming after ``AudioMetadata``: PCM16 at the announced rate."""

    name: ClassVar[str] = "acs"
    shows_text: ClassVar[bool] = False
    binary_audio: ClassVar[bool] = False

    def __init__(self, audio: AudioFormat, *, subscription_id: str = "", call: str = "") -> None:
        super().__init__(audio)
        self._subscription_id = subscription_id
        self._call = call
        self._chunk = CHUNK_MS * audio.bytes_per_ms

    def parse(self, text: str) -> protocol.ClientMessage | None:
        msg = protocol.json_object(text)
        kind = msg.get("kind")
        if kind == "AudioData":
            body = msg.get("audioData")
            data = body.get("data") if isinstance(body, dict) else None
            return protocol.AudioIn(protocol.decode_audio(data, "audioData.data"))
        if kind == "DtmfData":
            body = msg.get("dtmfData")
            digit = body.get("data") if isinstance(body, dict) else None
            if not isinstance(digit, str) or digit not in KEYS:
                raise ProtocolError(
                    "'dtmfData.data' must be a keypad key", code=errors.ERR_BAD_MESSAGE
                )
            return protocol.DtmfIn(digit)
        if kind == "AudioMetadata":
            if parse_metadata(msg)[0] != self.audio:
                raise ProtocolError(
                    "the audio format cannot change during a call", code=errors.ERR_BAD_AUDIO
                )
            return None
        raise ProtocolError(f"unknown ACS message {str(kind)[:40]!r}", code=errors.ERR_UNKNOWN_TYPE)

    def audio_frames(self, track: ResponseTrack, audio: bytes) -> list[str | bytes]:
        step = self._chunk
        return [
            '{"kind":"AudioData","audioData":{"data":"'
            + base64.b64encode(audio[at : at + step]).decode("ascii")
            + '"}}'
            for at in range(0, len(audio), step)
        ]

    def clear(self) -> str:
        return STOP_AUDIO

    def caller(self) -> dict[str, str]:
        shown = {"call": self._call} if self._call else {}
        if self._subscription_id:
            shown["subscription_id"] = self._subscription_id
        return shown
