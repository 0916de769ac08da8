"""Accounting of the conversation scenario: turns, answers, barge-ins, the echo check.

A caller's *turn* is one utterance, from the moment its first 20 ms frame went out
(speech start) to the moment its last one did (speech end). The emulator answers a turn by
echoing the caller's audio, so each *answer* is checked against the utterance it answers:
with the digital silence at both ends left aside, it must be the caller's speech byte for
byte (:class:`EchoCheck`). A frame lost or damaged in either direction shows up there.

What a run reports, from these records alone (:func:`summarize_calls`, pure):

* **response latency**: speech end -> the first audio frame of the answer at the client.
  It includes the service's end-of-speech detection (``silence_duration_ms``, 500 ms by
  default); the bridge's share is the difference to a direct run.
* **barge-in**: a caller starts a turn while an answer is playing. *clear*: speech start
  -> the client is told to stop playback (``clear_audio`` from the bridge; straight from
  Voice Live, ``input_audio_buffer.speech_started``, on which a client would stop it).
  *stop*: speech start -> the last frame of the interrupted answer that still arrived
  (0 when none came after the caller started talking).
* **frames lost**: for each answer whose echo came back damaged, the speech missing from
  it in 20 ms frames (at least one per damaged answer).
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

import attrs

_MS = 1_000_000


@attrs.define(eq=False)
class EchoCheck:
    """Streams an answer's audio and checks it is ``speech`` framed by digital silence."""

    speech: bytes = attrs.field(repr=False)
    matched: int = -1  # bytes of speech matched; -1 while still in the leading silence
    bad: bool = False

    def feed(self, data: bytes) -> None:
        """The next audio of the answer, in order."""
        if self.bad:
            return
        speech, n, i = self.speech, len(data), 0
        if self.matched < 0:
            rest = data.lstrip(b"\0")
            if not rest:
                return
            i = n - len(rest)
            i -= i % 2  # a sample whose low byte is 0 starts one byte earlier
            self.matched = 0
        if self.matched < len(speech):
            k = min(n - i, len(speech) - self.matched)
            if data[i : i + k] != speech[self.matched : self.matched + k]:
                self.bad = True
                return
            self.matched += k
            i += k
        if i < n and data[i:].strip(b"\0"):
            self.bad = True  # more than silence after the whole speech

    @property
    def whole(self) -> bool:
        """All of the speech came back, intact."""
        return not self.bad and self.matched == len(self.speech)

    @property
    def missing_bytes(self) -> int:
        """Speech bytes not (correctly) received."""
        return len(self.speech) - max(self.matched, 0)


@attrs.define(eq=False)
class Turn:
    """One utterance of a caller. Times are ``perf_counter_ns``."""

    utterance: int
    speech_start: int
    speech_end: int = 0  # 0 while still speaking
    barge_in: bool = False  # spoken over an answer that was playing
    answered: bool = False
    gave_up: bool = False  # no answer came within the answer timeout


@attrs.define(eq=False)
class Answer:
    """One agent response as the caller received it."""

    response_id: str
    turn: Turn | None  # None: an answer to no turn of this caller's
    echo: EchoCheck | None
    first_ns: int = 0  # its first audio frame; 0 while none has arrived
    last_ns: int = 0
    frames: int = 0
    ended: bool = False  # its end was announced (bridge: status ready; direct: response.done)
    interrupted: bool = False  # the caller barged in on it
    abandoned: bool = False  # its end never came within the time an answer may take


@attrs.define(eq=False)
class BargeIn:
    """The caller started talking (``speech_start``) while ``answer`` was playing."""

    speech_start: int
    answer: Answer
    cleared_ns: int | None = None  # when the client was told to stop playback


@attrs.define(eq=False)
class CallLog:
    """Everything one caller said and heard."""

    barges: bool = False  # this caller interrupts every other answer, the first included
    turns: list[Turn] = attrs.field(factory=list)
    answers: list[Answer] = attrs.field(factory=list)
    barge_ins: list[BargeIn] = attrs.field(factory=list)


def _pct(values: Sequence[int], pct: float) -> float | None:
    if not values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(values)))
    return round(values[min(rank, len(values)) - 1] / _MS, 3)


def _stats(prefix: str, samples: array[int]) -> dict[str, float | None]:
    ordered = sorted(samples)
    return {
        f"{prefix}_p50_ms": _pct(ordered, 50),
        f"{prefix}_p95_ms": _pct(ordered, 95),
        f"{prefix}_p99_ms": _pct(ordered, 99),
        f"{prefix}_max_ms": round(ordered[-1] / _MS, 3) if ordered else None,
    }


@attrs.frozen
class CallFigures:
    """What the conversation scenario measured, summed over callers (times in ms)."""

    callers_barging: int
    turns: int
    turns_answered: int
    turns_unanswered: int
    answers_complete: int
    answers_interrupted: int
    answers_damaged: int
    answers_unexpected: int
    answers_unfinished: int
    frames_lost: int
    barge_ins: int
    barge_ins_cleared: int
    response_latency_p50_ms: float | None
    response_latency_p95_ms: float | None
    response_latency_p99_ms: float | None
    response_latency_max_ms: float | None
    barge_in_clear_p50_ms: float | None
    barge_in_clear_p95_ms: float | None
    barge_in_clear_p99_ms: float | None
    barge_in_clear_max_ms: float | None
    barge_in_stop_p50_ms: float | None
    barge_in_stop_p95_ms: float | None
    barge_in_stop_p99_ms: float | None
    barge_in_stop_max_ms: float | None


def summarize_calls(logs: Sequence[CallLog], frame_bytes: int) -> CallFigures:
    """The figures of a finished run from its callers' records."""
    latency, clear, stop = array("q"), array("q"), array("q")
    turns = answered = unanswered = 0
    complete = interrupted = damaged = unexpected = unfinished = lost = 0
    barge_ins = cleared = 0
    for log in logs:
        for turn in log.turns:
            if not turn.speech_end:
                continue  # cut off while speaking (the run or the connection ended)
            turns += 1
            answered += turn.answered
            unanswered += turn.gave_up
        for answer in log.answers:
            if answer.turn is None:
                unexpected += 1
                continue
            if answer.frames:
                latency.append(answer.first_ns - answer.turn.speech_end)
            echo = answer.echo
            if answer.interrupted:
                interrupted += 1
                ok = echo is None or not echo.bad
            elif answer.ended:
                complete += 1
                ok = echo is None or echo.whole
            else:
                unfinished += 1
                ok = True  # the run ended first; nothing to judge
            if not ok and echo is not None:
                damaged += 1
                lost += max(1, math.ceil(echo.missing_bytes / frame_bytes))
        for barge in log.barge_ins:
            barge_ins += 1
            if barge.cleared_ns is not None:
                cleared += 1
                clear.append(barge.cleared_ns - barge.speech_start)
            stop.append(max(barge.answer.last_ns - barge.speech_start, 0))
    return CallFigures(
        callers_barging=sum(1 for log in logs if log.barges),
        turns=turns,
        turns_answered=answered,
        turns_unanswered=unanswered,
        answers_complete=complete,
        answers_interrupted=interrupted,
        answers_damaged=damaged,
        answers_unexpected=unexpected,
        answers_unfinished=unfinished,
        frames_lost=lost,
        barge_ins=barge_ins,
        barge_ins_cleared=cleared,
        **_stats("response_latency", latency),
        **_stats("barge_in_clear", clear),
        **_stats("barge_in_stop", stop),
    )
