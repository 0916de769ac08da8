"""Energy-based voice activity detection, standing in for Voice Live's `server_vad`.

The detector looks at 20 ms frames of PCM16 24 kHz (whatever the session's input format:
the session decodes and resamples to that first, see formats.py) and compares each
frame's RMS level with a threshold in dBFS. The service's `threshold` (0.0 .. 1.0,
default 0.5, higher = less sensitive) maps linearly onto -70 dBFS .. -10 dBFS::

    threshold_dbfs = -70 + 60 * threshold      # 0.5 -> -40 dBFS

-40 dBFS sits well above a quiet room through a laptop microphone (about -60 dBFS) and
below normal speech (-30 .. -10 dBFS). Speech starts after `MIN_SPEECH_MS` of consecutive
loud frames (so single clicks do not count) and stops once the level has stayed under the
threshold for `silence_duration_ms`. Positions are milliseconds of audio since the origin
given at construction; the detector keeps no audio beyond one partial frame.

Pure and synchronous: no I/O, no clock, easy to test on recorded speech.
"""

from __future__ import annotations

import math

import attrs

from voicebridge.emulator.audio import BYTES_PER_MS, frame_dbfs

FRAME_MS = 20
FRAME_BYTES = FRAME_MS * BYTES_PER_MS
#: Consecutive loud audio needed before speech is declared started.
MIN_SPEECH_MS = 60
_MIN_SPEECH_FRAMES = MIN_SPEECH_MS // FRAME_MS

DBFS_AT_THRESHOLD_0 = -70.0
DBFS_AT_THRESHOLD_1 = -10.0


def threshold_to_dbfs(threshold: float) -> float:
    """Map the service's 0..1 VAD threshold onto the RMS level (dBFS) a frame must exceed."""
    return DBFS_AT_THRESHOLD_0 + (DBFS_AT_THRESHOLD_1 - DBFS_AT_THRESHOLD_0) * threshold


@attrs.frozen
class SpeechStarted:
    """Speech began at `speech_start_ms`; the turn's audio starts `prefix_padding_ms` earlier."""

    audio_start_ms: int
    speech_start_ms: int


@attrs.frozen
class SpeechStopped:
    """The speaker has been silent for `silence_duration_ms`; the turn's audio ends here."""

    audio_end_ms: int


VadEvent = SpeechStarted | SpeechStopped


@attrs.define
class EnergyVad:
    """Streaming detector: `feed` audio in any sizes, get start/stop events with positions."""

    threshold: float = 0.5
    prefix_padding_ms: int = 300
    silence_duration_ms: int = 500
    #: Position (ms) of the first byte fed, so events carry connection-wide positions.
    origin_ms: int = 0

    _threshold_dbfs: float = attrs.field(init=False)
    _silence_frames: int = attrs.field(init=False)
    _partial: bytearray = attrs.field(init=False, factory=bytearray)
    _frames: int = attrs.field(init=False, default=0)
    _in_speech: bool = attrs.field(init=False, default=False)
    _loud_run: int = attrs.field(init=False, default=0)
    _quiet_run: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        self._threshold_dbfs = threshold_to_dbfs(self.threshold)
        self._silence_frames = max(1, math.ceil(self.silence_duration_ms / FRAME_MS))

    @property
    def in_speech(self) -> bool:
        """Whether a turn is open (speech started and not yet stopped)."""
        return self._in_speech

    @property
    def position_ms(self) -> int:
        """Position of the end of the last whole frame analysed."""
        return self.origin_ms + self._frames * FRAME_MS

    def feed(self, pcm: bytes) -> list[VadEvent]:
        """Analyse more audio; returns the events it completes, in order."""
        events: list[VadEvent] = []
        buf = self._partial
        buf += pcm
        usable = len(buf) - len(buf) % FRAME_BYTES
        for offset in range(0, usable, FRAME_BYTES):
            event = self._frame(frame_dbfs(bytes(buf[offset : offset + FRAME_BYTES])))
            if event is not None:
                events.append(event)
        del buf[:usable]
        return events

    def _frame(self, level: float) -> VadEvent | None:
        self._frames += 1
        loud = level > self._threshold_dbfs
        if not self._in_speech:
            self._loud_run = self._loud_run + 1 if loud else 0
            if self._loud_run < _MIN_SPEECH_FRAMES:
                return None
            self._in_speech = True
            self._quiet_run = 0
            speech_start = self.position_ms - self._loud_run * FRAME_MS
            self._loud_run = 0
            return SpeechStarted(
                audio_start_ms=max(0, speech_start - self.prefix_padding_ms),
                speech_start_ms=speech_start,
            )
        self._quiet_run = 0 if loud else self._quiet_run + 1
        if self._quiet_run < self._silence_frames:
            return None
        self._in_speech = False
        self._quiet_run = 0
        return SpeechStopped(audio_end_ms=self.position_ms)

    def force_stop(self) -> SpeechStopped:
        """End the open turn now (the utterance grew too long); the detector goes idle."""
        self._in_speech = False
        self._quiet_run = 0
        self._loud_run = 0
        return SpeechStopped(audio_end_ms=self.position_ms)

    def reset(self) -> None:
        """Forget any open turn (after a clear or a manual commit); positions carry on."""
        self._in_speech = False
        self._quiet_run = 0
        self._loud_run = 0
