"""An audio format: codec and sample rate, as Voice Live names them.

Shared by the relay (a session's format, on both sides of it), the emulator (which
converts to and from it: :mod:`voicebridge.emulator.formats`) and the load generator.

Voice Live takes the formats phone networks carry natively, so the relay never transcodes:
the caller's format is what the ``session.update`` asks for, in and out. What the relay
needs of a format is its size: bytes per millisecond feed barge-in truncation, the rate
limits, the held-audio bounds and the metrics.

The formats and the rates each takes are the service's: ``InputAudioFormat`` and
``OutputAudioFormat`` in the SDK (``azure/ai/voicelive/models/_enums.py``) and the
``input_audio_sampling_rate`` docstring in ``models/_models.py`` ("For pcm16: 8000, 16000,
24000. For g711_alaw/g711_ulaw: 8000").
"""

from __future__ import annotations

from typing import Any, Final, Literal

import attrs

Codec = Literal["pcm16", "g711_ulaw", "g711_alaw"]
#: Sample rates each codec takes (SDK, ``input_audio_sampling_rate``).
RATES: Final[dict[str, tuple[int, ...]]] = {
    "pcm16": (8000, 16000, 24000),
    "g711_ulaw": (8000,),
    "g711_alaw": (8000,),
}
#: ``output_audio_format`` for PCM16 at each rate (SDK, ``OutputAudioFormat``).
_PCM16_OUTPUT: Final = {24000: "pcm16", 16000: "pcm16_16000hz", 8000: "pcm16_8000hz"}


@attrs.frozen
class AudioFormat:
    """Mono audio in one codec at one rate (PCM16 is little-endian)."""

    codec: Codec
    rate: int = attrs.field()

    @rate.validator
    def _check_rate(self, _attribute: object, value: int) -> None:
        if value not in RATES[self.codec]:
            allowed = ", ".join(map(str, RATES[self.codec]))
            raise ValueError(f"{self.codec} takes {allowed} Hz, not {value}")

    @property
    def sample_bytes(self) -> int:
        return 2 if self.codec == "pcm16" else 1

    @property
    def bytes_per_ms(self) -> int:
        return self.rate * self.sample_bytes // 1000

    def ms(self, nbytes: int) -> int:
        """Whole milliseconds in ``nbytes`` of this audio (rounded down)."""
        return nbytes // self.bytes_per_ms

    def bytes_for(self, ms: int) -> int:
        """Byte length of ``ms`` milliseconds of this audio."""
        return ms * self.bytes_per_ms

    @property
    def output_name(self) -> str:
        return _PCM16_OUTPUT[self.rate] if self.codec == "pcm16" else self.codec

    def session_fields(self) -> dict[str, Any]:
        """What a ``session.update`` sets for this format, in and out. The service's
        default rate (PCM16 at 24 kHz) is left unsaid, as the relay always has."""
        fields: dict[str, Any] = {
            "input_audio_format": self.codec,
            "output_audio_format": self.output_name,
        }
        if (self.codec, self.rate) != ("pcm16", 24000):
            fields["input_audio_sampling_rate"] = self.rate
        return fields

    def __str__(self) -> str:
        return f"{self.codec}@{self.rate}"


#: What the browser and mobile clients speak (``/ws/voice``).
PCM16_24K: Final = AudioFormat("pcm16", 24000)
#: What Twilio Media Streams carry.
ULAW_8K: Final = AudioFormat("g711_ulaw", 8000)
