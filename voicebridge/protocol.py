"""The client WebSocket protocol: pure parse and build of messages, no I/O.

Everything here is synchronous and side-effect free so it can be fuzzed directly. The
session layer turns a :class:`ProtocolError` into an ``error`` message and goes on.
"""

from __future__ import annotations

import binascii
from base64 import b64decode
from typing import Any, Final

import attrs
import orjson

from voicebridge import errors
from voicebridge.errors import ProtocolError

SAMPLE_RATE: Final = 24000
BYTES_PER_MS: Final = SAMPLE_RATE * 2 // 1000  # PCM16 mono
MAX_TEXT_CHARS: Final = 4000

MAX_RESPONSE_ID_CHARS: Final = 200


@attrs.frozen
class AudioIn:
    """PCM16 LE 24 kHz mono, already aligned to whole samples."""

    pcm: bytes


@attrs.frozen
class TextIn:
    text: str


@attrs.frozen
class PingIn:
    pass


@attrs.frozen
class PlaybackIn:
    """The client reports how much of one response's audio it has played.

    ``response_id`` is the id announced by that response's ``audio_start``; a client that
    sends none (older clients) reports on the response written last.
    """

    played_ms: int
    response_id: str | None = None


@attrs.frozen
class DtmfIn:
    """A key the caller pressed on a phone keypad (phone channels): ``0-9``, ``*``, ``#``
    (and ``A-D`` where a network carries them)."""

    digit: str


@attrs.frozen
class HangUpIn:
    """The phone call ended (Twilio's ``stop``): the session ends as the caller's doing."""


ClientMessage = AudioIn | TextIn | PingIn | PlaybackIn | DtmfIn | HangUpIn

_PING: Final = PingIn()


def parse_text(data: str | bytes) -> ClientMessage:
    """Parse one text frame; raise ProtocolError naming the problem."""
    msg = json_object(data)
    kind = msg.get("type")
    if kind == "audio":
        return AudioIn(_decode_audio(msg.get("audio")))
    if kind == "ping":
        return _PING
    if kind == "text":
        text = msg.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ProtocolError("'text' must be a non-empty string", code=errors.ERR_BAD_MESSAGE)
        if len(text) > MAX_TEXT_CHARS:
            raise ProtocolError(
                f"'text' is longer than {MAX_TEXT_CHARS} characters", code=errors.ERR_BAD_MESSAGE
            )
        return TextIn(text.strip())
    if kind == "playback":
        played = msg.get("played_ms")
        if not isinstance(played, int) or isinstance(played, bool) or played < 0:
            raise ProtocolError(
                "'played_ms' must be a whole number of 0 or more", code=errors.ERR_BAD_MESSAGE
            )
        response_id = msg.get("response_id")
        if response_id is not None and (
            not isinstance(response_id, str)
            or not response_id
            or len(response_id) > MAX_RESPONSE_ID_CHARS
        ):
            raise ProtocolError(
                "'response_id' must be the id of an audio_start message",
                code=errors.ERR_BAD_MESSAGE,
            )
        return PlaybackIn(played, response_id)
    if kind is None:
        raise ProtocolError("message has no 'type'", code=errors.ERR_BAD_MESSAGE)
    raise ProtocolError(
        f"unknown message type {str(kind)[:40]!r}; expected audio, text, ping or playback",
        code=errors.ERR_UNKNOWN_TYPE,
    )


def json_object(data: str | bytes) -> dict[str, Any]:
    """A text frame as the JSON object every dialect's messages are; ProtocolError if not."""
    try:
        msg = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ProtocolError("message is not valid JSON", code=errors.ERR_BAD_JSON) from None
    if not isinstance(msg, dict):
        raise ProtocolError(
            f"message must be a JSON object, got {type(msg).__name__}",
            code=errors.ERR_BAD_MESSAGE,
        )
    return msg


def _decode_audio(value: Any) -> bytes:
    return decode_audio(value, "audio")


def decode_audio(value: Any, field: str) -> bytes:
    """Base64 audio from a JSON field (any dialect's); :class:`ProtocolError` naming it."""
    if not isinstance(value, str):
        raise ProtocolError(f"'{field}' must be a base64 string", code=errors.ERR_BAD_AUDIO)
    try:
        return b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError(f"'{field}' is not valid base64", code=errors.ERR_BAD_AUDIO) from None


@attrs.define
class SampleAligner:
    """Keeps PCM16 on whole samples across frames.

    A frame with an odd byte count keeps its last byte for the next frame, so no sample is
    split or lost; the carried byte is reported when the session ends.
    """

    carry: bytes = b""

    def feed(self, data: bytes) -> bytes:
        if self.carry:
            data = self.carry + data
            self.carry = b""
        if len(data) & 1:
            self.carry = data[-1:]
            return data[:-1]
        return data


# -- server to client ------------------------------------------------------------------


def _dump(obj: dict[str, Any]) -> str:
    return orjson.dumps(obj).decode()


def session_started(session_id: str, **extra: Any) -> str:
    return _dump({"type": "session_started", "session_id": session_id, **extra})


def status(value: str, **extra: Any) -> str:
    return _dump({"type": "status", "status": value, **extra})


def error(message: str, code: str) -> str:
    return _dump({"type": "error", "message": message, "code": code})


def transcript(kind: str, text: str, **extra: Any) -> str:
    return _dump({"type": kind, "text": text, **extra})


def transcript_delta(text: str, response_id: str) -> str:
    """Live captions: a piece of the agent's transcript as it speaks."""
    return _dump({"type": "agent_transcript_delta", "text": text, "response_id": response_id})


def audio_start(response_id: str) -> str:
    """Sent before a response's first audio frame; the frames after it belong to it."""
    return _dump({"type": "audio_start", "response_id": response_id})


CLEAR_AUDIO: Final = _dump({"type": "clear_audio"})
PONG: Final = _dump({"type": "pong"})
