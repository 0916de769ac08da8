"""The load test's conversation scenario: its accounting, on records and on real short runs.

The pure part (the echo check, the figures from a caller's records) is checked on records
built by hand, where every figure is known. The real runs (straight to the emulator, and
through a real server process) check that what the callers recorded is what the emulator
saw, and that the report's figures are the ones the records give; no timing is asserted.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from tests.conftest import KEY, StartEmulator
from tests.server_process import ServerProcess
from voicebridge import loadtest
from voicebridge.emulator import RunningEmulator
from voicebridge.loadtest import LoadTestConfig, Report
from voicebridge.loadtest.calls import (
    Answer,
    BargeIn,
    CallLog,
    EchoCheck,
    Turn,
    summarize_calls,
)
from voicebridge.loadtest.speech import SpeechToolsMissing, missing_tools, speak

MS = 1_000_000
FRAME_BYTES = 960
SPEECH = bytes(range(1, 201)) * 24  # 4800 bytes, no zero byte: "speech" from end to end

needs_speech = pytest.mark.skipif(
    bool(missing_tools()), reason="espeak-ng and sox are needed (make system-deps)"
)


def _chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("size", [4800, 960, 333, 1])
def test_echo_check_takes_the_speech_framed_by_silence_in_any_chunks(size: int) -> None:
    """Leading and trailing digital silence are left aside, however the audio is cut up."""
    echo = EchoCheck(SPEECH)
    for chunk in _chunks(bytes(1440) + SPEECH + bytes(2400), size):
        echo.feed(chunk)
    assert echo.whole
    assert echo.missing_bytes == 0


def test_echo_check_counts_what_a_lost_chunk_took_away() -> None:
    """A chunk missing from the middle is damage, measured from where the speech broke off."""
    audio = _chunks(bytes(960) + SPEECH + bytes(960), 960)
    echo = EchoCheck(SPEECH)
    for chunk in audio[:3] + audio[4:]:
        echo.feed(chunk)
    assert echo.bad
    assert not echo.whole
    assert echo.missing_bytes == len(SPEECH) - 2 * 960


def test_echo_check_refuses_noise_after_the_speech_but_takes_a_cut_prefix() -> None:
    """Sound after the whole speech is damage; speech cut short is only incomplete."""
    noisy = EchoCheck(SPEECH)
    noisy.feed(SPEECH + bytes(10) + b"\x01\x00")
    assert noisy.bad
    cut = EchoCheck(SPEECH)
    cut.feed(bytes(4) + SPEECH[:1000])
    assert not cut.bad
    assert not cut.whole
    assert cut.missing_bytes == len(SPEECH) - 1000


def test_echo_check_keeps_a_sample_whose_low_byte_is_zero() -> None:
    """Speech whose first sample is 0x0100 starts on the zero byte, not after it."""
    speech = b"\x00\x01" + SPEECH
    echo = EchoCheck(speech)
    echo.feed(bytes(4) + speech + bytes(4))
    assert echo.whole


def _answer(turn: Turn | None, first_ms: int, last_ms: int, **fields: bool) -> Answer:
    echo = EchoCheck(SPEECH)
    echo.feed(SPEECH)
    return Answer(
        response_id=f"resp_{first_ms}",
        turn=turn,
        echo=echo,
        first_ns=first_ms * MS,
        last_ns=last_ms * MS,
        frames=3,
        **fields,
    )


def test_figures_come_from_the_records() -> None:
    """Latency is first audio minus speech end; a barge-in's clear and stop count from its start."""
    calm, barging = CallLog(), CallLog(barges=True)
    for n, log in enumerate((calm, barging)):
        for i in range(4):  # turns end at 1 s, 11 s, 21 s, 31 s; answers 500..503 ms later
            start = (i * 10_000 + n * 5) * MS
            turn = Turn(utterance=i, speech_start=start, speech_end=start + 1_000 * MS)
            turn.answered = True
            log.turns.append(turn)
            first = (start + 1_000 * MS) // MS + 500 + i
            log.answers.append(_answer(turn, first, first + 2_000, ended=True))
    interrupted = barging.answers[1]
    interrupted.interrupted = True
    barging.barge_ins.append(
        BargeIn(speech_start=interrupted.first_ns + 400 * MS, answer=interrupted, cleared_ns=None)
    )
    barging.barge_ins[0].cleared_ns = barging.barge_ins[0].speech_start + 45 * MS
    interrupted.last_ns = barging.barge_ins[0].speech_start + 30 * MS
    calm.turns.append(Turn(utterance=0, speech_start=50_000 * MS, speech_end=51_000 * MS))
    calm.turns[-1].gave_up = True
    calm.turns.append(Turn(utterance=1, speech_start=60_000 * MS))  # cut off while speaking
    calm.answers.append(_answer(None, 70_000, 71_000, ended=True))

    figures = summarize_calls([calm, barging], FRAME_BYTES)

    assert figures.callers_barging == 1
    assert (figures.turns, figures.turns_answered, figures.turns_unanswered) == (9, 8, 1)
    assert figures.answers_complete == 7
    assert figures.answers_interrupted == 1
    assert figures.answers_unexpected == 1
    assert figures.answers_damaged == figures.frames_lost == 0
    # Eight latencies, 500..503 ms, each twice: nearest rank.
    assert figures.response_latency_p50_ms == 501.0
    assert figures.response_latency_p99_ms == figures.response_latency_max_ms == 503.0
    assert (figures.barge_ins, figures.barge_ins_cleared) == (1, 1)
    assert figures.barge_in_clear_p50_ms == 45.0
    assert figures.barge_in_stop_p50_ms == 30.0


def test_damaged_answers_count_the_frames_they_lost() -> None:
    """An answer missing speech counts its missing 20 ms frames; a barge-in with no audio
    after it stopped at once; one never cleared has no clear figure."""
    log = CallLog()
    turn = Turn(utterance=0, speech_start=0, speech_end=1_000 * MS, answered=True)
    log.turns.append(turn)
    echo = EchoCheck(SPEECH)
    echo.feed(SPEECH[:2000])
    answer = Answer("resp_1", turn, echo, first_ns=1_500 * MS, last_ns=2_000 * MS, frames=1)
    answer.ended = True
    log.answers.append(answer)
    log.barge_ins.append(BargeIn(speech_start=2_500 * MS, answer=answer))

    figures = summarize_calls([log], FRAME_BYTES)

    assert figures.answers_damaged == 1
    assert figures.frames_lost == 3  # 2800 bytes missing: three 960-byte frames
    assert (figures.barge_ins, figures.barge_ins_cleared) == (1, 0)
    assert figures.barge_in_clear_p50_ms is None
    assert figures.barge_in_stop_p50_ms == 0.0


def test_missing_speech_tools_are_named_with_the_packages_to_install(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without espeak-ng and sox a conversation run stops at once, saying what to install."""
    monkeypatch.setenv("PATH", "/nonexistent")
    speak.cache_clear()
    with pytest.raises(SpeechToolsMissing, match="apt-get install espeak-ng sox"):
        speak("hello")
    parser = argparse.ArgumentParser()
    loadtest.add_loadtest_arguments(parser)
    args = parser.parse_args(["--url", "ws://127.0.0.1:1/ws/voice", "--scenario", "conversation"])
    assert loadtest.main(args) == 2
    assert "espeak-ng" in capsys.readouterr().err


# -- real short runs -----------------------------------------------------------------------


def _config(url: str, **fields: object) -> LoadTestConfig:
    values: dict[str, object] = {
        "url": url,
        "sessions": 2,
        # Long enough for the barging caller's first answer to start before the end, after
        # a first pause of up to 2 x 0.2 s + its longest sentence and that sentence.
        "seconds": 9.0,
        "scenario": "conversation",
        "barge_in": 0.5,  # the second caller barges in on every other answer
        "pause": 0.2,
        "progress": False,
    }
    values.update(fields)
    return LoadTestConfig(**values)  # type: ignore[arg-type]


def _check_against_records(report: Report, calls: Sequence[CallLog]) -> None:
    """The report's figures are the records' figures, and the records are in causal order."""
    assert report.sessions_held == 2
    assert report.server_errors == 0, report.error_samples
    assert report.frames_foreign == 0
    assert report.callers_barging == 1
    spoken = [t for log in calls for t in log.turns if t.speech_end]
    assert report.turns == len(spoken) >= 2
    assert report.turns_unanswered == 0
    assert report.turns_answered == report.turns
    assert report.answers_damaged == report.frames_lost == report.answers_unexpected == 0
    assert report.answers_complete + report.answers_interrupted >= report.turns - 2
    latencies = []
    for log in calls:
        for answer in log.answers:
            assert answer.turn is not None
            assert answer.turn.speech_start < answer.turn.speech_end < answer.first_ns
            assert answer.first_ns <= answer.last_ns
            latencies.append(answer.first_ns - answer.turn.speech_end)
    latencies.sort()
    assert report.response_latency_max_ms == round(latencies[-1] / MS, 3)
    barge_ins = [b for log in calls for b in log.barge_ins]
    assert report.barge_ins == len(barge_ins) >= 1
    assert report.barge_ins_cleared == report.barge_ins
    assert report.answers_interrupted == report.barge_ins
    for barge in barge_ins:
        assert barge.cleared_ns is not None
        assert barge.answer.first_ns < barge.speech_start < barge.cleared_ns
        assert barge.answer.interrupted
    assert report.barge_in_clear_max_ms == round(
        max(b.cleared_ns - b.speech_start for b in barge_ins if b.cleared_ns) / MS, 3
    )


def _check_against_emulator(report: Report, emu: RunningEmulator) -> None:
    """Every turn the callers spoke was a turn the emulator heard; every answer one it gave."""
    assert report.turns is not None
    answers = (report.answers_complete or 0) + (report.answers_interrupted or 0)
    assert emu.event_count("input_audio_buffer.speech_started") == report.turns
    assert emu.event_count("input_audio_buffer.speech_stopped") == report.turns
    assert emu.event_count("response.created") == answers


@pytest.fixture
async def realtime_emu(start_emu: StartEmulator) -> RunningEmulator:
    return await start_emu(realtime=True)


@needs_speech
async def test_a_direct_conversation_is_counted_as_the_emulator_saw_it(
    realtime_emu: RunningEmulator,
) -> None:
    """Straight to the emulator: turns, answers, barge-ins and their figures add up."""
    calls: list[CallLog] = []
    config = _config(realtime_emu.url, direct=True, api_key=KEY)
    report = await loadtest.run(config, calls=calls)
    _check_against_records(report, calls)
    _check_against_emulator(report, realtime_emu)


@pytest.fixture
async def bridge(
    realtime_emu: RunningEmulator, artifacts_dir: Path
) -> AsyncIterator[ServerProcess]:
    server = ServerProcess(
        artifacts_dir,
        VOICELIVE_BACKEND="azure",
        AZURE_OPENAI_ENDPOINT=realtime_emu.url,
        AZURE_OPENAI_KEY=KEY,
        AZURE_OPENAI_DEPLOYMENT="gpt-realtime-test",
    )
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@needs_speech
async def test_a_conversation_through_the_bridge_is_counted_as_the_emulator_saw_it(
    realtime_emu: RunningEmulator, bridge: ServerProcess
) -> None:
    """Through a real server: answers come back whole, barge-ins are cleared by clear_audio."""
    calls: list[CallLog] = []
    report = await loadtest.run(_config(bridge.ws_url, offer_deflate=0.5), calls=calls)
    assert report.sessions_offering_deflate == 1
    _check_against_records(report, calls)
    _check_against_emulator(report, realtime_emu)
