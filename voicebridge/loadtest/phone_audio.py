"""Audio as phone providers carry it, prepared once: frames ready to put in a message.

Twilio Media Streams carry G.711 μ-law at 8 kHz, 160 bytes (20 ms) a ``media`` message;
ACS bidirectional streaming carries PCM16 LE mono at 16 or 24 kHz, 640 or 960 bytes a
20 ms ``AudioData`` message. A :class:`PhoneAudio` holds one utterance already encoded and
base64'd frame by frame, so streaming it to any number of calls costs no encoding.

:func:`speech_span` finds where the speech is in such audio (what the load test compares
between a caller's utterance and the agent's echo of it, which came back resampled twice
and so cannot be compared byte for byte).
"""

from __future__ import annotations

import base64
from array import array

import attrs

from voicebridge import g711
from voicebridge.audio_format import AudioFormat as VoiceLiveFormat
from voicebridge.loadtest.options import ACS, ACS_SAMPLE_RATES, TWILIO

FRAME_MS = 20
ULAW_SILENCE = 0xFF  # μ-law of 0 (0x7F is -0; both decode to 0)
#: Samples quieter than this (about -42 dBFS) are not speech: above μ-law's and the
#: resampler's rounding, below the trimming of the synthesized speech (0.5 % of full scale).
SPEECH_LEVEL = 256


@attrs.frozen
class AudioFormat:
    """How one channel carries audio."""

    channel: str
    rate: int  # samples a second
    ulaw: bool  # μ-law bytes, else PCM16 LE

    @classmethod
    def for_channel(cls, channel: str, acs_rate: int = 16_000) -> AudioFormat:
        if channel == TWILIO:
            return cls(TWILIO, 8_000, ulaw=True)
        if channel == ACS:
            if acs_rate not in ACS_SAMPLE_RATES:
                raise ValueError(f"ACS streams PCM16 at 16000 or 24000 Hz, not {acs_rate}")
            return cls(ACS, acs_rate, ulaw=False)
        raise ValueError(f"not a phone channel: {channel!r}")

    @property
    def audio(self) -> VoiceLiveFormat:
        """The format as Voice Live names it (codec and rate)."""
        return VoiceLiveFormat("g711_ulaw" if self.ulaw else "pcm16", self.rate)

    @property
    def sample_bytes(self) -> int:
        return self.audio.sample_bytes

    @property
    def bytes_per_ms(self) -> int:
        return self.audio.bytes_per_ms

    @property
    def frame_bytes(self) -> int:
        return self.bytes_per_ms * FRAME_MS

    @property
    def silence(self) -> bytes:
        """One frame of digital silence."""
        return bytes([ULAW_SILENCE]) * self.frame_bytes if self.ulaw else bytes(self.frame_bytes)

    def encode(self, pcm16: bytes, rate: int) -> bytes:
        """PCM16 LE mono at ``rate`` as this channel carries it."""
        if rate != self.rate:
            pcm16 = g711.resample(pcm16, rate, self.rate)
        return g711.ulaw_encode(pcm16) if self.ulaw else pcm16

    def to_pcm16(self, data: bytes) -> bytes:
        return g711.ulaw_decode(data) if self.ulaw else data[: len(data) - len(data) % 2]


@attrs.frozen
class PhoneAudio:
    """One utterance in a channel's format: its bytes and its frames, base64'd, padded."""

    fmt: AudioFormat
    data: bytes = attrs.field(repr=False)  # the encoded audio, unpadded
    frames: tuple[str, ...] = attrs.field(repr=False)  # base64 of each 20 ms frame
    silent: tuple[bool, ...] = attrs.field(repr=False)  # the frame is digital silence

    @classmethod
    def encoded(cls, fmt: AudioFormat, data: bytes) -> PhoneAudio:
        """Audio already in the channel's format."""
        size = fmt.frame_bytes
        pad = fmt.silence[: -len(data) % size] if len(data) % size else b""
        padded = data + pad
        chunks = [padded[i : i + size] for i in range(0, len(padded), size)]
        quiet = fmt.silence
        return cls(
            fmt=fmt,
            data=data,
            frames=tuple(base64.b64encode(c).decode("ascii") for c in chunks),
            silent=tuple(c == quiet for c in chunks),
        )

    @classmethod
    def from_pcm16(cls, fmt: AudioFormat, pcm16: bytes, rate: int) -> PhoneAudio:
        return cls.encoded(fmt, fmt.encode(pcm16, rate))

    @property
    def ms(self) -> int:
        return len(self.frames) * FRAME_MS


def silence_frame(fmt: AudioFormat) -> str:
    """Base64 of one frame of digital silence."""
    return base64.b64encode(fmt.silence).decode("ascii")


def speech_span(fmt: AudioFormat, data: bytes | bytearray) -> tuple[int, int] | None:
    """The first and one-past-the-last sample louder than :data:`SPEECH_LEVEL`, or None."""
    samples = array("h")
    samples.frombytes(fmt.to_pcm16(bytes(data)))
    first = next((i for i, v in enumerate(samples) if abs(v) > SPEECH_LEVEL), None)
    if first is None:
        return None
    last = next(i for i in range(len(samples) - 1, -1, -1) if abs(samples[i]) > SPEECH_LEVEL)
    return first, last + 1
