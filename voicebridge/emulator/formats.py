"""The audio formats Voice Live speaks, and the emulator's conversions to and from them.

Inside, the emulator works on one format only: PCM16 24 kHz mono (audio.py), which the
VAD reads and the synthesized answers are made in. This module turns a session's input
audio into that (decode G.711, resample) and the emulator's answers into the session's
output format (resample, encode G.711), with the G.711 codec of `voicebridge.g711`.

The formats and the rates each takes are the service's, as the installed SDK
(azure-ai-voicelive 1.3.1) documents them:

* input: ``InputAudioFormat`` (``models/_enums.py``): pcm16, g711_ulaw, g711_alaw; and the
  ``input_audio_sampling_rate`` docstring (``models/_models.py``, ``RequestSession``):
  "For pcm16: 8000, 16000, 24000; For g711_alaw/g711_ulaw: 8000".
* output: ``OutputAudioFormat`` (``models/_enums.py``): pcm16 ("at default sampling rate
  (24kHz)"), pcm16_8000hz, pcm16_16000hz, g711_ulaw and g711_alaw ("at 8kHz sampling rate").
"""

from __future__ import annotations

from collections.abc import Mapping
from math import gcd
from typing import Any, Final

import attrs

from voicebridge import g711
from voicebridge.audio_format import AudioFormat, Codec
from voicebridge.emulator.audio import SAMPLE_RATE

#: ``input_audio_format`` -> the ``input_audio_sampling_rate`` values it takes, the first
#: being the rate it implies when a session.update sets the format but no rate (pcm16's
#: default is 24 kHz: ``InputAudioFormat.PCM16`` "at default sampling rate (24kHz)").
INPUT_RATES: Final[Mapping[str, tuple[int, ...]]] = {
    "pcm16": (24000, 16000, 8000),
    "g711_ulaw": (8000,),
    "g711_alaw": (8000,),
}
#: ``output_audio_format`` -> (codec, sample rate) (SDK ``OutputAudioFormat``).
OUTPUT_FORMATS: Final[Mapping[str, tuple[Codec, int]]] = {
    "pcm16": ("pcm16", 24000),
    "pcm16_8000hz": ("pcm16", 8000),
    "pcm16_16000hz": ("pcm16", 16000),
    "g711_ulaw": ("g711_ulaw", 8000),
    "g711_alaw": ("g711_alaw", 8000),
}
# Not accepted: the hyphenated "pcm16-8000hz" / "pcm16-16000hz". The SDK still maps them
# (``_LEGACY_OUTPUT_AUDIO_FORMAT_VALUES`` in ``_enums.py``), but only so old values
# deserialize; its changelog (1.2.0b5, "Bug Fixes") says the enum was changed to the
# underscore values "for consistency with wire protocol": the service speaks underscores.


def to_pcm16(fmt: AudioFormat, data: bytes) -> bytes:
    """PCM16 at ``fmt``'s rate; ValueError for half a PCM16 sample."""
    if fmt.codec == "g711_ulaw":
        return g711.ulaw_decode(data)
    if fmt.codec == "g711_alaw":
        return g711.alaw_decode(data)
    if len(data) % 2:
        raise ValueError("pcm16 audio must be whole 16-bit samples (an even byte count)")
    return bytes(data)


def from_pcm24k(fmt: AudioFormat, pcm: bytes) -> bytes:
    """``fmt``'s bytes for the emulator's PCM16 24 kHz audio (to 8 kHz: every third
    sample, which is cheap and gives back exactly what :func:`thrice` made of 8 kHz)."""
    pcm = every_third(pcm) if fmt.rate == 8000 else g711.resample(pcm, SAMPLE_RATE, fmt.rate)
    if fmt.codec == "g711_ulaw":
        return g711.ulaw_encode(pcm)
    if fmt.codec == "g711_alaw":
        return g711.alaw_encode(pcm)
    return pcm


PCM16_24K: Final = AudioFormat("pcm16", SAMPLE_RATE)


def input_format(session: Mapping[str, Any]) -> AudioFormat:
    """The input format a (validated) session configuration names."""
    codec = session.get("input_audio_format", "pcm16")
    rate = session.get("input_audio_sampling_rate") or INPUT_RATES[codec][0]
    return AudioFormat(codec, rate)


def output_format(session: Mapping[str, Any]) -> AudioFormat:
    """The output format a (validated) session configuration names."""
    codec, rate = OUTPUT_FORMATS[session.get("output_audio_format", "pcm16")]
    return AudioFormat(codec, rate)


def to_internal(fmt: AudioFormat, data: bytes) -> bytes:
    """Whole audio (e.g. an item's `input_audio`) in `fmt` as PCM16 24 kHz."""
    return g711.resample(to_pcm16(fmt, data), fmt.rate, SAMPLE_RATE)


@attrs.define
class InputDecoder:
    """Streams a session's input audio, append by append, into PCM16 24 kHz.

    Each append is resampled on its own (linear interpolation; `g711.resample`). 8 and
    24 kHz map onto whole 24 kHz samples for any append size; 16 kHz does for an even
    number of samples, so an odd one's last sample waits for the next append. Durations
    therefore add up exactly: n bytes of input always become n / bytes_per_ms ms at 24 kHz
    (give or take that one held sample).
    """

    format: AudioFormat
    _held: bytes = attrs.field(init=False, default=b"")

    def feed(self, data: bytes) -> bytes:
        """PCM16 24 kHz for `data`; ValueError for half a PCM16 sample."""
        pcm = self._held + to_pcm16(self.format, data)
        if self.format.rate == SAMPLE_RATE:
            return pcm
        if self.format.rate == 8000:
            return thrice(pcm)
        # Samples per whole group: 16 kHz -> 24 kHz maps 2 samples onto 3.
        group = 2 * (self.format.rate // gcd(self.format.rate, SAMPLE_RATE))
        usable = len(pcm) - len(pcm) % group
        self._held = pcm[usable:]
        return g711.resample(pcm[:usable], self.format.rate, SAMPLE_RATE)


# Phone audio (8 kHz) is converted per append, for every call the emulator serves: these
# two run in C (extended slices), about twenty times faster than `g711.resample`'s
# interpolation. Sample-and-hold adds images above 4 kHz, which neither the VAD (a level
# detector) nor a test listening to the echo minds; the round trip is exact.


def thrice(pcm: bytes) -> bytes:
    """8 kHz PCM16 as 24 kHz: each sample held for three."""
    out = bytearray(len(pcm) * 3)
    low, high = pcm[0::2], pcm[1::2]
    for i in range(3):
        out[2 * i :: 6] = low
        out[2 * i + 1 :: 6] = high
    return bytes(out)


def every_third(pcm: bytes) -> bytes:
    """24 kHz PCM16 as 8 kHz: every third sample, from the first."""
    samples = (len(pcm) // 2 + 2) // 3
    out = bytearray(samples * 2)
    out[0::2] = pcm[0::6][:samples]
    out[1::2] = pcm[1::6][:samples]
    return bytes(out)
