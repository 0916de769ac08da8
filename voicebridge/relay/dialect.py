"""How a client speaks: the voicebridge protocol of ``/ws/voice``, or a phone provider's.

A session relays the same way whoever is on the other end; what differs is a
:class:`Dialect`: how a text frame from the client reads (:meth:`Dialect.parse`, into the
messages of :mod:`voicebridge.protocol`), how the agent's audio is framed for the client
(:meth:`Dialect.audio_frames`), how playback is stopped on a barge-in (:meth:`Dialect.clear`),
whether the voicebridge JSON messages (status, transcripts, errors) mean anything to the
client, and the audio format. Phone dialects live in :mod:`voicebridge.phone`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from voicebridge import protocol
from voicebridge.audio_format import PCM16_24K, AudioFormat

if TYPE_CHECKING:
    from voicebridge.relay.turns import ResponseTrack


class Dialect:
    """The voicebridge protocol (browser and mobile clients); the base of the others."""

    #: The channel label: ``/sessions``, metrics and call records show it.
    name: ClassVar[str] = "browser"
    #: Whether the client is shown the voicebridge JSON messages (status, transcripts,
    #: errors). A phone provider is not: it would take them for malformed commands.
    shows_text: ClassVar[bool] = True
    #: Whether the played position comes only from the client's acknowledgements (Twilio's
    #: mark echoes), never projected from the clock.
    ack_only: ClassVar[bool] = False
    #: Whether client binary frames are raw audio (only the voicebridge protocol has them).
    binary_audio: ClassVar[bool] = True

    def __init__(self, audio: AudioFormat = PCM16_24K) -> None:
        self.audio = audio

    def parse(self, text: str) -> protocol.ClientMessage | None:
        """One text frame from the client; None for one that asks nothing of the relay.
        Raises :class:`voicebridge.errors.ProtocolError` naming what is wrong."""
        return protocol.parse_text(text)

    def audio_frames(self, track: ResponseTrack, audio: bytes) -> list[str | bytes]:
        """The frames that carry ``audio`` of ``track`` to the client: here the audio
        itself, one binary frame (which the channel writes without asking, ``binary_audio``
        being the hot path of the voicebridge protocol)."""
        return [audio]

    def clear(self) -> str:
        """The frame that stops the client's playback now (a barge-in)."""
        return protocol.CLEAR_AUDIO

    def caller(self) -> dict[str, str]:
        """What the session shows of the caller in ``/sessions`` (phone numbers masked)."""
        return {}
