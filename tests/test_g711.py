"""voicebridge.g711 against SoX on real espeak-ng speech and on every 16-bit sample value.

SoX reduces a 16-bit sample to G.711's 14-bit (μ-law) or 13-bit (A-law) uniform PCM by
rounding to nearest, then applies the G.711 tables; our codec does the same, so with
`-D` (no dither) the bytes are equal. Without `-D` SoX adds TPDF dither whenever it reduces
precision, which moves a code by at most one quantization step: asserted separately.
"""

from __future__ import annotations

import itertools
import subprocess
from array import array

import pytest

from tests.speech import make_speech_pcm, tools_available
from voicebridge import g711

pytestmark = pytest.mark.skipif(not tools_available(), reason="needs espeak-ng and sox")

SENTENCE = "The quick brown fox jumps over the lazy dog, then calls the help desk."
PCM_RAW = ["-t", "raw", "-e", "signed-integer", "-b", "16", "-c", "1", "-L"]
LAWS = {
    "u-law": (g711.ulaw_encode, g711.ulaw_decode),
    "a-law": (g711.alaw_encode, g711.alaw_decode),
}
EVERY_SAMPLE = array("h", range(-32768, 32768)).tobytes()


def _sox(args: list[str], data: bytes) -> bytes:
    done = subprocess.run(["sox", *args], input=data, capture_output=True, check=True)
    return done.stdout


def sox_encode(pcm: bytes, encoding: str, *, dither: bool = False) -> bytes:
    """PCM16 8 kHz -> G.711 bytes by SoX (`-D` unless `dither`)."""
    options = [] if dither else ["-D"]
    out = ["-t", "raw", "-e", encoding]
    return _sox([*options, *PCM_RAW, "-r", "8000", "-", *out, "-"], pcm)


def sox_decode(data: bytes, encoding: str) -> bytes:
    """G.711 bytes -> PCM16 by SoX."""
    return _sox(["-t", "raw", "-r", "8000", "-e", encoding, "-c", "1", "-", *PCM_RAW, "-"], data)


def speech_8k() -> bytes:
    """Real speech at 8 kHz, resampled from espeak-ng's by SoX, as a telephone carries it."""
    pcm = make_speech_pcm(SENTENCE, lead_s=0.2, trail_s=0.2)
    return _sox([*PCM_RAW, "-r", "24000", "-", *PCM_RAW, "-r", "8000", "-"], pcm)


def _values(pcm: bytes) -> array[int]:
    values = array("h")
    values.frombytes(pcm)
    return values


@pytest.mark.parametrize("encoding", sorted(LAWS))
def test_speech_encodes_exactly_as_sox(encoding: str) -> None:
    """Encoding espeak-ng speech gives SoX's bytes, byte for byte."""
    encode, _ = LAWS[encoding]
    pcm = speech_8k()
    assert len(pcm) > 16_000
    assert encode(pcm) == sox_encode(pcm, encoding)


@pytest.mark.parametrize("encoding", sorted(LAWS))
def test_every_sample_value_encodes_as_sox(encoding: str) -> None:
    """All 65,536 sample values, -32768 to 32767, encode to SoX's code."""
    encode, _ = LAWS[encoding]
    assert encode(EVERY_SAMPLE) == sox_encode(EVERY_SAMPLE, encoding)


@pytest.mark.parametrize("encoding", sorted(LAWS))
def test_every_code_decodes_as_sox(encoding: str) -> None:
    """All 256 codes decode to SoX's PCM16 value."""
    _, decode = LAWS[encoding]
    codes = bytes(range(256))
    assert decode(codes) == sox_decode(codes, encoding)


@pytest.mark.parametrize("encoding", sorted(LAWS))
def test_sox_default_dither_moves_codes_by_at_most_one_step(encoding: str) -> None:
    """SoX's default (dithered) output differs from ours by at most one quantization step."""
    encode, decode = LAWS[encoding]
    pcm = speech_8k()
    levels = sorted(set(_values(decode(bytes(range(256))))))
    ours = _values(decode(encode(pcm)))
    theirs = _values(decode(sox_encode(pcm, encoding, dither=True)))
    steps = {abs(levels.index(a) - levels.index(b)) for a, b in zip(ours, theirs, strict=True)}
    assert steps <= {0, 1}


@pytest.mark.parametrize("encoding", sorted(LAWS))
def test_each_code_decodes_to_the_middle_of_its_interval(encoding: str) -> None:
    """The samples coding to one code are one interval, and the code decodes to its middle.

    That is G.711's definition (decision values bound an interval, the decoded value is
    its midpoint), shifted by the rounding to the 14/13-bit grid: half a grid step, plus
    half a sample for intervals of even width.
    """
    encode, decode = LAWS[encoding]
    tolerance = 2.5 if encoding == "u-law" else 4.5  # 2**(16 - 14) / 2 or 2**(16 - 13) / 2
    codes = encode(EVERY_SAMPLE)
    start = -32768
    seen: set[int] = set()
    for code, run in itertools.groupby(codes):
        low = start
        start += len(list(run))
        assert code not in seen, f"code {code:#x} for two separate intervals"
        seen.add(code)
        if low == -32768 or start == 32768:
            continue  # the clipping intervals have no far end
        (decoded,) = _values(decode(bytes([code])))
        assert abs(decoded - (low + start - 1) / 2) <= tolerance, code
    # Every code is used, but μ-law's "negative zero" 0x7F, which the encoder never makes.
    assert len(seen) == (255 if encoding == "u-law" else 256)


@pytest.mark.parametrize("encoding", sorted(LAWS))
def test_codes_survive_a_round_trip(encoding: str) -> None:
    """encode(decode(code)) == code, except μ-law's negative zero 0x7F, which becomes 0xFF."""
    encode, decode = LAWS[encoding]
    codes = bytes(range(256))
    expected = codes.replace(b"\x7f", b"\xff") if encoding == "u-law" else codes
    assert encode(decode(codes)) == expected


def test_edge_values() -> None:
    """0, 32767 and -32768 give G.711's zero, top and bottom codes, and decode back near."""
    pcm = array("h", [0, 32767, -32768]).tobytes()
    assert g711.ulaw_encode(pcm) == bytes([0xFF, 0x80, 0x00])
    assert g711.alaw_encode(pcm) == bytes([0xD5, 0xAA, 0x2A])
    assert list(_values(g711.ulaw_decode(bytes([0xFF, 0x80, 0x00])))) == [0, 32124, -32124]
    assert list(_values(g711.alaw_decode(bytes([0xD5, 0xAA, 0x2A])))) == [8, 32256, -32256]


@pytest.mark.parametrize("function", [g711.ulaw_encode, g711.alaw_encode])
def test_odd_byte_count_is_rejected(function: object) -> None:
    """PCM16 with half a sample raises a ValueError saying so."""
    assert callable(function)
    with pytest.raises(ValueError, match="whole number of 2-byte samples, got 3 bytes"):
        function(b"\x00\x01\x02")


def test_any_g711_byte_count_decodes() -> None:
    """G.711 is one byte per sample: odd counts and empty input decode fine."""
    assert g711.ulaw_decode(b"\xff\xff\xff") == bytes(6)
    assert g711.alaw_decode(b"") == b""
    assert g711.ulaw_encode(b"") == b""


@pytest.mark.parametrize(("from_rate", "to_rate"), [(8000, 24000), (16000, 24000), (8000, 16000)])
def test_resample_round_trip_keeps_speech(from_rate: int, to_rate: int) -> None:
    """Up- then down-sampling speech gives back the length and nearly the signal."""
    pcm = _sox([*PCM_RAW, "-r", "8000", "-", *PCM_RAW, "-r", str(from_rate), "-"], speech_8k())
    up = g711.resample(pcm, from_rate, to_rate)
    assert len(up) == 2 * g711.resampled_length(len(pcm) // 2, from_rate, to_rate)
    back = g711.resample(up, to_rate, from_rate)
    assert len(back) == len(pcm)
    x, y = _values(pcm), _values(back)
    error = sum((a - b) ** 2 for a, b in zip(x, y, strict=True))
    energy = sum(a * a for a in x)
    assert error < energy / 10  # better than 10 dB signal-to-error on speech


def test_resample_interpolates_linearly() -> None:
    """8 -> 24 kHz puts two evenly spaced samples between neighbours; back gives them again."""
    pcm = array("h", [0, 300, -300]).tobytes()
    up = _values(g711.resample(pcm, 8000, 24000))
    assert list(up) == [0, 100, 200, 300, 100, -100, -300, -300, -300]
    assert g711.resample(pcm, 16000, 16000) == pcm


def test_resample_rejects_half_samples_and_bad_rates() -> None:
    """Odd PCM16 byte counts and non-positive rates raise ValueError."""
    with pytest.raises(ValueError, match="2-byte samples"):
        g711.resample(b"\x00", 8000, 24000)
    with pytest.raises(ValueError, match="positive"):
        g711.resample(b"\x00\x00", 0, 24000)
