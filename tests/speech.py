"""Real speech for tests, made at test time with espeak-ng and sox (Debian packages).

    from tests.speech import make_speech_pcm, make_speech_wav, silence_pcm

    pcm = make_speech_pcm("Hello there", tmp_path / "hello.raw", lead_s=1.0, trail_s=1.5)
    # -> bytes: PCM16 LE, 24 kHz, mono (what Voice Live and /ws/voice carry);
    #    exactly `lead_s` of digital silence, the speech, then `trail_s` of silence.

    wav = make_speech_wav("Hello there", tmp_path / "mic.wav", rate=48000, trail_s=1.0)
    # -> Path of a 16-bit mono WAV, e.g. for Chromium's --use-file-for-fake-audio-capture.

espeak-ng's own leading and trailing silence is trimmed off, so the speech starts exactly
`lead_s` into the audio and ends `trail_s` before its end (see `speech_bounds_ms` to measure
it independently). Results are cached per process by their arguments.
"""

from __future__ import annotations

import functools
import math
import shutil
import subprocess
import tempfile
from array import array
from pathlib import Path

SAMPLE_RATE = 24_000
BYTES_PER_MS = SAMPLE_RATE * 2 // 1000

# sox's `silence` effect, run forwards and reversed, trims leading and trailing silence
# quieter than 0.5 % of full scale (about -46 dBFS).
_TRIM = ["silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse"]


def tools_available() -> bool:
    """Whether espeak-ng and sox are installed (tests needing them can skip otherwise)."""
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def _run(args: list[str]) -> None:
    subprocess.run(args, check=True, capture_output=True)


@functools.cache
def _speech_pcm(text: str, lead_s: float, trail_s: float, voice: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        raw_wav = Path(tmp) / "espeak.wav"
        out = Path(tmp) / "speech.raw"
        _run(["espeak-ng", "-v", voice, "-w", str(raw_wav), text])
        _run(
            [
                "sox",
                str(raw_wav),
                "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-L",
                "-t", "raw", str(out),
                *_TRIM,
            ]
        )  # fmt: skip
        speech = out.read_bytes()
    return silence_pcm(lead_s) + speech + silence_pcm(trail_s)


def make_speech_pcm(
    text: str,
    path: Path | str | None = None,
    *,
    lead_s: float = 0.0,
    trail_s: float = 0.0,
    voice: str = "en-us",
) -> bytes:
    """Speak `text`; return PCM16 LE 24 kHz mono bytes (also written to `path` if given)."""
    pcm = _speech_pcm(text, lead_s, trail_s, voice)
    if path is not None:
        Path(path).write_bytes(pcm)
    return pcm


def make_speech_wav(
    text: str,
    path: Path | str,
    rate: int = 48_000,
    *,
    lead_s: float = 0.0,
    trail_s: float = 0.0,
    voice: str = "en-us",
) -> Path:
    """Speak `text` into a 16-bit mono WAV file at `rate` Hz (for a browser fake microphone)."""
    path = Path(path)
    pcm = _speech_pcm(text, lead_s, trail_s, voice)
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "speech.raw"
        raw.write_bytes(pcm)
        _run(
            [
                "sox",
                "-t", "raw", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer",
                "-L", str(raw),
                "-r", str(rate), "-c", "1", "-b", "16", str(path),
            ]
        )  # fmt: skip
    return path


def silence_pcm(seconds: float) -> bytes:
    """`seconds` of digital silence as PCM16 24 kHz mono."""
    return bytes(2 * round(seconds * SAMPLE_RATE))


def duration_ms(pcm: bytes) -> float:
    """Duration of PCM16 24 kHz mono bytes in milliseconds."""
    return len(pcm) / BYTES_PER_MS


def speech_bounds_ms(pcm: bytes, level: int = 160) -> tuple[float, float]:
    """(first, last) position in ms where |sample| exceeds `level` (about -46 dBFS)."""
    samples = array("h")
    samples.frombytes(pcm)
    loud = [i for i, value in enumerate(samples) if abs(value) > level]
    if not loud:
        return (math.nan, math.nan)
    return (loud[0] / SAMPLE_RATE * 1000, (loud[-1] + 1) / SAMPLE_RATE * 1000)
