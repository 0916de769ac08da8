"""PCM16 helpers for the emulator: frame loudness, durations and synthesized voices.

All audio here is what Voice Live speaks on the wire for `pcm16`: signed 16-bit little-endian,
24 kHz, mono. It is the emulator's one internal format: formats.py converts a session's
other input and output formats (pcm16 at 8/16 kHz, G.711) to and from it. The helpers
are pure Python (`array`) on purpose: no numpy, and no `audioop`, which is deprecated and
gone in Python 3.13.
"""

from __future__ import annotations

import math
import operator
import sys
import zlib
from array import array

SAMPLE_RATE = 24_000
BYTES_PER_SAMPLE = 2
BYTES_PER_MS = SAMPLE_RATE * BYTES_PER_SAMPLE // 1000  # 48
#: dBFS reported for digital silence, instead of -inf.
SILENCE_DBFS = -120.0
_FULL_SCALE_SQ = 32768.0 * 32768.0
_BIG_ENDIAN = sys.byteorder == "big"


def ms_to_bytes(ms: int) -> int:
    """Byte length of `ms` milliseconds of audio."""
    return ms * BYTES_PER_MS


def bytes_to_ms(n: int) -> int:
    """Whole milliseconds in `n` bytes of audio (rounded down)."""
    return n // BYTES_PER_MS


def samples(pcm: bytes) -> array[int]:
    """The samples of little-endian PCM16 bytes (an even number of them)."""
    values = array("h")
    values.frombytes(pcm)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def to_pcm(values: array[int]) -> bytes:
    """Little-endian PCM16 bytes of `values`."""
    if _BIG_ENDIAN:
        values = array("h", values)
        values.byteswap()
    return values.tobytes()


def frame_dbfs(pcm: bytes) -> float:
    """RMS level of a block of PCM16 in dBFS (0 = a full-scale square wave)."""
    values = samples(pcm)
    if not values:
        return SILENCE_DBFS
    # sum(map(mul)) runs in C and is several times faster than a generator of x * x.
    energy = sum(map(operator.mul, values, values)) / len(values)
    if energy <= 0:
        return SILENCE_DBFS
    return max(SILENCE_DBFS, 10.0 * math.log10(energy / _FULL_SCALE_SQ))


def _tone(freq_hz: float, ms: int, amplitude: float) -> array[int]:
    """A sine tone with 10 ms raised-cosine fades, so chunk edges never click."""
    n = SAMPLE_RATE * ms // 1000
    fade = min(n // 2, SAMPLE_RATE // 100)
    step = 2.0 * math.pi * freq_hz / SAMPLE_RATE
    peak = amplitude * 32767.0
    out = array("h", bytes(2 * n))
    for i in range(n):
        gain = 1.0
        if i < fade:
            gain = 0.5 - 0.5 * math.cos(math.pi * i / fade)
        elif i >= n - fade:
            gain = 0.5 - 0.5 * math.cos(math.pi * (n - 1 - i) / fade)
        out[i] = int(peak * gain * math.sin(step * i))
    return out


def _silence(ms: int) -> array[int]:
    return array("h", bytes(2 * (SAMPLE_RATE * ms // 1000)))


def greeting_audio() -> bytes:
    """A short rising three-note chime (about 0.9 s): the emulator's 'hello'."""
    out = array("h")
    for freq in (523.25, 659.25, 783.99):  # C5, E5, G5
        out.extend(_tone(freq, 250, 0.3))
        out.extend(_silence(50))
    return to_pcm(out)


#: Speaking rate of synthesized answers; makes audio length proportional to the text.
MS_PER_CHARACTER = 55
MAX_SYNTH_MS = 15_000


def speech_like_audio(text: str) -> bytes:
    """Audio whose length follows `text`: one tone burst per word, pitched from the word.

    It is not speech (no synthesizer runs offline), but it has the rhythm of speech, so a
    client can hear answers of different lengths and a VAD can see pauses between words.
    """
    out = array("h")
    total_ms = 0
    for word in text.split() or [text]:
        ms = max(80, MS_PER_CHARACTER * len(word))
        if total_ms + ms > MAX_SYNTH_MS:
            break
        # crc32 rather than hash(): stable across processes, so answers sound the same.
        freq = 180.0 + (zlib.crc32(word.lower().encode()) % 220)
        out.extend(_tone(freq, ms, 0.25))
        out.extend(_silence(70))
        total_ms += ms + 70
    return to_pcm(out)
