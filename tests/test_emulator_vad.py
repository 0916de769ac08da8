"""The emulator's energy VAD on real espeak-ng speech, without any socket."""

from __future__ import annotations

from array import array

import pytest

from tests.speech import (
    duration_ms,
    make_speech_pcm,
    silence_pcm,
    speech_bounds_ms,
    tools_available,
)
from voicebridge.emulator.audio import frame_dbfs, greeting_audio, speech_like_audio
from voicebridge.emulator.vad import (
    EnergyVad,
    SpeechStarted,
    SpeechStopped,
    VadEvent,
    threshold_to_dbfs,
)

pytestmark = pytest.mark.skipif(not tools_available(), reason="needs espeak-ng and sox")

SENTENCE = "The quick brown fox jumps over the lazy dog."


def _feed(vad: EnergyVad, pcm: bytes, chunk: int = 960) -> list[VadEvent]:
    events: list[VadEvent] = []
    for offset in range(0, len(pcm), chunk):
        events.extend(vad.feed(pcm[offset : offset + chunk]))
    return events


def _attenuate(pcm: bytes, factor: float) -> bytes:
    values = array("h")
    values.frombytes(pcm)
    return array("h", (int(v * factor) for v in values)).tobytes()


def test_threshold_maps_linearly_onto_dbfs() -> None:
    """Threshold 0 is -70 dBFS, 0.5 is -40 dBFS, 1 is -10 dBFS."""
    assert threshold_to_dbfs(0.0) == -70.0
    assert threshold_to_dbfs(0.5) == -40.0
    assert threshold_to_dbfs(1.0) == -10.0


def test_frame_dbfs_of_silence_and_full_scale() -> None:
    """Digital silence is the floor; a full-scale square wave is 0 dBFS."""
    assert frame_dbfs(silence_pcm(0.02)) == -120.0
    square = array("h", [32767, -32767] * 240).tobytes()
    assert frame_dbfs(square) == pytest.approx(0.0, abs=0.01)


def test_speech_positions_match_the_audio() -> None:
    """Start is speech onset minus prefix padding; stop is speech end plus silence duration."""
    pcm = make_speech_pcm(SENTENCE, lead_s=1.0, trail_s=1.5)
    first_ms, last_ms = speech_bounds_ms(pcm)
    events = _feed(EnergyVad(threshold=0.5, prefix_padding_ms=300, silence_duration_ms=500), pcm)
    assert [type(e) for e in events] == [SpeechStarted, SpeechStopped]
    started, stopped = events
    assert isinstance(started, SpeechStarted)
    assert isinstance(stopped, SpeechStopped)
    assert started.audio_start_ms == pytest.approx(first_ms - 300, abs=100)
    assert started.speech_start_ms == pytest.approx(first_ms, abs=100)
    assert stopped.audio_end_ms == pytest.approx(last_ms + 500, abs=100)


def test_chunk_size_does_not_change_the_result() -> None:
    """Odd append sizes give exactly the events of frame-aligned ones."""
    pcm = make_speech_pcm(SENTENCE, lead_s=0.5, trail_s=1.0)
    aligned = _feed(EnergyVad(), pcm, chunk=960)
    ragged = _feed(EnergyVad(), pcm, chunk=334)
    assert ragged == aligned


def test_origin_offsets_positions() -> None:
    """Positions are connection-wide: a detector created later reports from its origin."""
    pcm = make_speech_pcm(SENTENCE, lead_s=1.0, trail_s=1.0)
    base = _feed(EnergyVad(), pcm)
    shifted = _feed(EnergyVad(origin_ms=5000), pcm)
    assert isinstance(base[0], SpeechStarted)
    assert isinstance(shifted[0], SpeechStarted)
    assert shifted[0].audio_start_ms == base[0].audio_start_ms + 5000


def test_prefix_padding_is_clamped_at_zero() -> None:
    """Speech at 100 ms with 300 ms of padding starts the turn at 0, never below."""
    pcm = make_speech_pcm(SENTENCE, lead_s=0.1, trail_s=1.0)
    started = _feed(EnergyVad(prefix_padding_ms=300), pcm)[0]
    assert isinstance(started, SpeechStarted)
    assert started.audio_start_ms == 0


def test_silence_gives_no_events() -> None:
    """Ten seconds of silence never opens a turn."""
    assert _feed(EnergyVad(threshold=0.0), silence_pcm(10.0)) == []


def test_threshold_controls_sensitivity() -> None:
    """Speech 40 dB down is ignored at threshold 0.5 and heard at threshold 0.1."""
    quiet = _attenuate(make_speech_pcm(SENTENCE, lead_s=0.5, trail_s=1.0), 0.01)
    assert _feed(EnergyVad(threshold=0.5), quiet) == []
    assert len(_feed(EnergyVad(threshold=0.1), quiet)) == 2


def test_a_click_is_not_speech() -> None:
    """A 40 ms burst is shorter than the minimum speech duration."""
    click = silence_pcm(0.5) + greeting_audio()[24_000 : 24_000 + 1920] + silence_pcm(1.0)
    assert _feed(EnergyVad(), click) == []


def test_silence_duration_bridges_pauses() -> None:
    """A 300 ms pause splits the turn only when silence_duration_ms is shorter than it."""
    word = make_speech_pcm("hello")
    pcm = silence_pcm(0.5) + word + silence_pcm(0.3) + word + silence_pcm(1.0)
    assert len(_feed(EnergyVad(silence_duration_ms=500), pcm)) == 2
    assert len(_feed(EnergyVad(silence_duration_ms=150), pcm)) == 4


def test_force_stop_ends_an_open_turn() -> None:
    """force_stop reports the current position and leaves the detector idle."""
    vad = EnergyVad()
    tone = speech_like_audio("continuous")
    events = vad.feed(silence_pcm(0.2) + tone)
    assert vad.in_speech
    assert len(events) == 1
    stopped = vad.force_stop()
    assert not vad.in_speech
    assert stopped.audio_end_ms == pytest.approx(200 + duration_ms(tone), abs=20)
