"""G.711 μ-law and A-law codecs and a small resampler, in pure Python.

The companding laws are those of ITU-T Recommendation G.711 (11/1988), "Pulse code
modulation (PCM) of voice frequencies", Tables 1a/1b (A-law) and 2a/2b (μ-law). The bit
manipulations follow the reference implementation Sun Microsystems put in the public
domain (`g711.c`, also the one SoX ships in `libsox/g711.c`).

G.711 works on 14-bit (μ-law) and 13-bit (A-law) uniform PCM, so a 16-bit sample is first
reduced to that precision. Like SoX (`SOX_SAMPLE_TO_SIGNED(14, ...)` / `(13, ...)` in
`sox.h`), this rounds to the nearest value, half up, clipping at the top; so encoded bytes
equal `sox -D ... -e u-law` / `-e a-law` bit for bit. (Sun's `g711.c` and Python's old
`audioop.lin2ulaw` truncate instead; the two differ by one code step, and only for samples
within half a 14/13-bit step of a decision level. Without `-D`, SoX adds TPDF dither when
it reduces precision, which moves codes by up to one step at random.)

Every function takes and returns PCM16 as signed 16-bit little-endian mono bytes. They
are table-driven and run their loops in C (`bytes.translate`, `map` over a table,
slice assignment), so coding one second of 8 kHz audio takes well under a millisecond.
No numpy and no `audioop` (deprecated and removed in Python 3.13).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable
from itertools import accumulate, repeat
from math import gcd
from operator import add, floordiv, mul, sub

__all__ = [
    "alaw_decode",
    "alaw_encode",
    "resample",
    "resampled_length",
    "ulaw_decode",
    "ulaw_encode",
]

_BIG_ENDIAN = sys.byteorder == "big"

# Segment end points of the Sun reference implementation (14-bit μ-law, 13-bit A-law).
_SEG_UEND = (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF)
_SEG_AEND = (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF)
_ULAW_BIAS = 0x84  # 132 in 16-bit units, 33 in the 14-bit domain
_ULAW_CLIP = 8159  # largest 14-bit magnitude μ-law represents


def _segment(value: int, ends: tuple[int, ...]) -> int:
    for seg, end in enumerate(ends):
        if value <= end:
            return seg
    return len(ends)


def _linear14_to_ulaw(pcm_val: int) -> int:
    """One 14-bit two's-complement sample to a μ-law byte (G.711 Table 2)."""
    if pcm_val < 0:
        pcm_val = -pcm_val
        mask = 0x7F
    else:
        mask = 0xFF
    pcm_val = min(pcm_val, _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(pcm_val, _SEG_UEND)
    if seg >= 8:
        return 0x7F ^ mask
    return ((seg << 4) | ((pcm_val >> (seg + 1)) & 0xF)) ^ mask


def _linear13_to_alaw(pcm_val: int) -> int:
    """One 13-bit two's-complement sample to an A-law byte (G.711 Table 1)."""
    if pcm_val >= 0:
        mask = 0xD5
    else:
        mask = 0x55
        pcm_val = -pcm_val - 1
    seg = _segment(pcm_val, _SEG_AEND)
    if seg >= 8:
        return 0x7F ^ mask
    shift = 1 if seg < 2 else seg
    return ((seg << 4) | ((pcm_val >> shift) & 0xF)) ^ mask


def _ulaw_to_linear(u_val: int) -> int:
    """One μ-law byte to a 16-bit sample (the interval's decision value, scaled by 4)."""
    u_val = ~u_val & 0xFF
    t = (((u_val & 0x0F) << 3) + _ULAW_BIAS) << ((u_val & 0x70) >> 4)
    return _ULAW_BIAS - t if u_val & 0x80 else t - _ULAW_BIAS


def _alaw_to_linear(a_val: int) -> int:
    """One A-law byte to a 16-bit sample (the interval's decision value, scaled by 8)."""
    a_val ^= 0x55
    t = (a_val & 0x0F) << 4
    seg = (a_val & 0x70) >> 4
    if seg == 0:
        t += 8
    elif seg == 1:
        t += 0x108
    else:
        t = (t + 0x108) << (seg - 1)
    return t if a_val & 0x80 else -t


def _encode_table(encode: Callable[[int], int], bits: int) -> list[int]:
    """Code of every sample, indexed by the sample as unsigned 16-bit (what array("H") holds).

    A list, not bytes: `list.__getitem__` is the fastest C-level lookup for `map`.
    """
    shift = 16 - bits
    top = (1 << (bits - 1)) - 1
    table = []
    for i in range(0x10000):
        sample = i - 0x10000 if i & 0x8000 else i
        # Round to `bits` bits, half up, clipping at the top, as SoX does.
        table.append(encode(min((sample + (1 << (shift - 1))) >> shift, top)))
    return table


def _decode_tables(decode: Callable[[int], int]) -> tuple[bytes, bytes]:
    """Two 256-byte `bytes.translate` tables: low and high byte of each decoded sample."""
    values = [decode(code) & 0xFFFF for code in range(256)]
    return bytes(v & 0xFF for v in values), bytes(v >> 8 for v in values)


_ULAW_ENCODE = _encode_table(_linear14_to_ulaw, 14)
_ALAW_ENCODE = _encode_table(_linear13_to_alaw, 13)
_ULAW_DECODE_LO, _ULAW_DECODE_HI = _decode_tables(_ulaw_to_linear)
_ALAW_DECODE_LO, _ALAW_DECODE_HI = _decode_tables(_alaw_to_linear)


def _unsigned_samples(pcm16: bytes) -> array[int]:
    if len(pcm16) % 2:
        raise ValueError(
            f"PCM16 audio must be a whole number of 2-byte samples, got {len(pcm16)} bytes"
        )
    values = array("H")
    values.frombytes(pcm16)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def _encode(pcm16: bytes, table: list[int]) -> bytes:
    # map() over the table's __getitem__ runs the per-sample loop in C.
    return bytes(map(table.__getitem__, _unsigned_samples(pcm16)))


def _decode(data: bytes, lo: bytes, hi: bytes) -> bytes:
    out = bytearray(2 * len(data))
    out[0::2] = data.translate(lo)
    out[1::2] = data.translate(hi)
    return bytes(out)


def ulaw_encode(pcm16: bytes) -> bytes:
    """Encode PCM16 LE mono to G.711 μ-law, one byte per sample."""
    return _encode(pcm16, _ULAW_ENCODE)


def ulaw_decode(data: bytes) -> bytes:
    """Decode G.711 μ-law bytes to PCM16 LE mono (two bytes per input byte)."""
    return _decode(bytes(data), _ULAW_DECODE_LO, _ULAW_DECODE_HI)


def alaw_encode(pcm16: bytes) -> bytes:
    """Encode PCM16 LE mono to G.711 A-law, one byte per sample."""
    return _encode(pcm16, _ALAW_ENCODE)


def alaw_decode(data: bytes) -> bytes:
    """Decode G.711 A-law bytes to PCM16 LE mono (two bytes per input byte)."""
    return _decode(bytes(data), _ALAW_DECODE_LO, _ALAW_DECODE_HI)


def _signed_samples(pcm16: bytes) -> array[int]:
    if len(pcm16) % 2:
        raise ValueError(
            f"PCM16 audio must be a whole number of 2-byte samples, got {len(pcm16)} bytes"
        )
    values = array("h")
    values.frombytes(pcm16)
    if _BIG_ENDIAN:
        values.byteswap()
    return values


def _to_bytes(values: array[int]) -> bytes:
    if _BIG_ENDIAN:
        values.byteswap()
    return values.tobytes()


def resampled_length(n_samples: int, from_rate: int, to_rate: int) -> int:
    """Samples `resample` returns for `n_samples` input samples (rounded to nearest)."""
    return (n_samples * to_rate + from_rate // 2) // from_rate


def _box(x: list[int], width: int, lead: int) -> list[int]:
    """Moving average: y[i] = mean(x[i - lead : i - lead + width]), edges held, rounded."""
    padded = [x[0]] * lead + x + [x[-1]] * (width - 1 - lead)
    prefix = list(accumulate(padded, initial=0))
    sums = map(sub, prefix[width:], prefix)
    return list(map(floordiv, map(add, sums, repeat(width // 2)), repeat(width)))


def resample(pcm16: bytes, from_rate: int, to_rate: int) -> bytes:
    """Resample PCM16 LE mono from `from_rate` to `to_rate` Hz by linear interpolation.

    Downsampling first averages each sample with its neighbours over the ratio's width
    (a centred box filter: [1, 1, 1] / 3 from 24 to 8 kHz, [1, 2, 1] / 4 from 24 to 16 or
    16 to 8 kHz), which keeps much of the energy above the new Nyquist frequency from
    folding back. Good enough for speech between 8, 16 and 24 kHz; not a hi-fi resampler.
    Each call is independent (no state carried across chunk boundaries) and returns
    `resampled_length(samples, from_rate, to_rate)` samples; output sample j sits at input
    position j * from_rate / to_rate, so the first sample is kept as is.
    """
    if from_rate <= 0 or to_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {from_rate} and {to_rate}")
    values = _signed_samples(pcm16)
    if from_rate == to_rate or not values:
        return bytes(pcm16)
    n = len(values)
    x = values.tolist()
    width = -(-from_rate // to_rate)
    if width > 1:
        x = _box(x, width, width // 2)
        if width % 2 == 0:
            # An even box is off centre by half a sample; a second 2-wide box puts the
            # combined (width + 1)-tap kernel back on centre, so there is no delay.
            x = _box(x, 2, 0)
    g = gcd(from_rate, to_rate)
    up, down = to_rate // g, from_rate // g
    m = resampled_length(n, from_rate, to_rate)
    x.append(x[-1])  # so the sample after the last one exists for interpolation
    out = [0] * m
    # Output samples j = p, p + up, p + 2*up, ... share one interpolation weight, so each
    # phase p is a strided slice of the input and the arithmetic runs in C via map().
    for p in range(min(up, m)):
        i0, frac = divmod(p * down, up)
        count = len(range(p, m, up))
        a = x[i0 : i0 + count * down : down]
        if frac == 0:
            out[p::up] = a
            continue
        b = x[i0 + 1 : i0 + 1 + count * down : down]
        steps = map(mul, map(sub, b, a), repeat(frac))
        out[p::up] = list(map(add, a, map(floordiv, map(add, steps, repeat(up // 2)), repeat(up))))
    return _to_bytes(array("h", out))
