"""Real speech for the conversation scenario, made when a run starts with espeak-ng and sox.

Nothing is shipped: the sentences below are spoken by espeak-ng and converted by sox to
what ``/ws/voice`` and Voice Live carry (PCM16 LE, 24 kHz, mono), with the synthesizer's
own leading and trailing silence trimmed, so an utterance starts and ends with speech.
Both tools are Debian packages (``apt-get install espeak-ng sox``); they are needed only
when the conversation scenario runs, and their absence is reported as such.

The sentences have no commas or full stops inside, so no pause within one is long enough
(500 ms) for a voice activity detector to end the turn early: one utterance, one answer.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
import tempfile
from pathlib import Path

import attrs

from voicebridge.protocol import BYTES_PER_MS, SAMPLE_RATE

SENTENCES: tuple[str, ...] = (
    "I would like to check the status of my order please",
    "Can you tell me when the next delivery window opens",
    "Yes that sounds good to me",
    "My account number ends in four two seven",
    "Could you repeat the last part more slowly",
    "I need to change the address on my account",
)
DEFAULT_VOICE = "en-us"
TOOLS = ("espeak-ng", "sox")
_TIMEOUT_S = 60.0
# sox's `silence` effect, forwards and reversed, trims leading and trailing audio quieter
# than 0.5 % of full scale (about -46 dBFS): what tests/speech.py does too.
_TRIM = ["silence", "1", "0.01", "0.5%", "reverse", "silence", "1", "0.01", "0.5%", "reverse"]


class SpeechToolsMissing(RuntimeError):
    """espeak-ng or sox is not installed, or failed to speak."""


@attrs.frozen
class Utterance:
    """One spoken sentence: its text and its audio, speech from the first byte to the last."""

    text: str
    pcm: bytes = attrs.field(repr=False)

    @property
    def ms(self) -> float:
        return len(self.pcm) / BYTES_PER_MS


def missing_tools() -> list[str]:
    """The speech tools that are not on PATH."""
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def _run(argv: list[str]) -> None:
    try:
        subprocess.run(argv, check=True, capture_output=True, timeout=_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", b"") or b""
        raise SpeechToolsMissing(
            f"{argv[0]} failed: {exc} {detail.decode(errors='replace').strip()}"
        ) from None


@functools.cache
def speak(text: str, voice: str = DEFAULT_VOICE) -> Utterance:
    """``text`` spoken by espeak-ng as PCM16 LE 24 kHz mono, silence trimmed off both ends.

    Raises :class:`SpeechToolsMissing` (with the Debian packages to install) when the
    tools are absent or fail.
    """
    missing = missing_tools()
    if missing:
        raise SpeechToolsMissing(
            f"the conversation scenario speaks with espeak-ng and sox; not found: "
            f"{', '.join(missing)} (on Debian: apt-get install espeak-ng sox)"
        )
    with tempfile.TemporaryDirectory(prefix="voicebridge-speech-") as tmp:
        wav, raw = Path(tmp) / "espeak.wav", Path(tmp) / "speech.raw"
        _run(["espeak-ng", "-v", voice, "-w", str(wav), text])
        _run(
            [
                "sox", str(wav),
                "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-L",
                "-t", "raw", str(raw),
                *_TRIM,
            ]
        )  # fmt: skip
        pcm = raw.read_bytes()
    if len(pcm) < 100 * BYTES_PER_MS:
        raise SpeechToolsMissing(f"espeak-ng produced almost no audio for {text!r}")
    return Utterance(text=text, pcm=pcm)


def utterances(
    sentences: tuple[str, ...] = SENTENCES, voice: str = DEFAULT_VOICE
) -> tuple[Utterance, ...]:
    """Every sentence spoken (once per process; later calls reuse the audio)."""
    return tuple(speak(text, voice) for text in sentences)
