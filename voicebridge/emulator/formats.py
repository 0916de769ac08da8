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

from array import array
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
    """``fmt``'s bytes for the emulator's PCM16 24 kHz audio (:func:`from_24k`)."""
    if fmt.rate != SAMPLE_RATE:
        pcm = from_24k(pcm, fmt.rate)
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
        # Samples per whole group: 16 kHz -> 24 kHz maps 2 samples onto 3.
        group = 2 * (self.format.rate // gcd(self.format.rate, SAMPLE_RATE))
        usable = len(pcm) - len(pcm) % group
        self._held = pcm[usable:]
        return to_24k(pcm[:usable], self.format.rate)


# Phone audio (8 and 16 kHz) is converted per append, for every call the emulator serves:
# these move whole samples with extended slices, which run in C, some twenty to a hundred
# times faster than `g711.resample`'s interpolation. Holding samples adds images above the
# old Nyquist frequency, which neither the VAD (a level detector) nor a test listening to
# the echo minds; converting up then down gives back exactly what went in.


def _samples(pcm: bytes) -> array[int]:
    values = array("h")
    values.frombytes(pcm)
    return values


def to_24k(pcm: bytes, rate: int) -> bytes:
    """8 or 16 kHz PCM16 as 24 kHz: 8 kHz samples held for three; 16 kHz pairs (a, b) as
    (a, a, b). A trailing odd 16 kHz sample is left out (callers hold it back)."""
    src = _samples(pcm)
    if rate == 8000:
        out = array("h", bytes(6 * len(src)))
        for phase in range(3):
            out[phase::3] = src
        return out.tobytes()
    pairs = len(src) // 2
    out = array("h", bytes(6 * pairs))
    out[0::3] = src[0 : 2 * pairs : 2]
    out[1::3] = src[0 : 2 * pairs : 2]
    out[2::3] = src[1 : 2 * pairs : 2]
    return out.tobytes()


def from_24k(pcm: bytes, rate: int) -> bytes:
    """24 kHz PCM16 as 8 kHz (every third sample) or 16 kHz (the first and last of every
    three): the inverse of :func:`to_24k`. Whole groups of three only."""
    src = _samples(pcm)
    groups = len(src) // 3
    if rate == 8000:
        return src[0 : 3 * groups : 3].tobytes()
    out = array("h", bytes(4 * groups))
    out[0::2] = src[0 : 3 * groups : 3]
    out[1::2] = src[2 : 3 * groups : 3]
    return out.tobytes()
