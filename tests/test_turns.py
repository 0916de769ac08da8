"""The turn tracker's rules, without any socket: played positions, barge-in plans, reports."""

from __future__ import annotations

from typing import Any

import pytest

from voicebridge.relay.turns import BargeIn, ResponseTrack, TurnTracker

MS = 48  # bytes per ms of PCM16 24 kHz mono


def test_played_position_estimates() -> None:
    """Played audio: the client's report projected forward, else wall clock, capped at sent."""
    track = ResponseTrack("r", MS)
    assert track.played_ms(100.0) == 0  # nothing written yet
    track.first_audio_at = 100.0
    track.audio_written = track.audio_queued = MS * 3000  # 3 s sent
    assert track.played_ms(101.0) == 1000  # wall clock since the first audio
    assert track.played_ms(110.0) == 3000  # never more than was sent
    track.reported_ms, track.reported_at = 0, 101.0  # the client had not started playing
    assert track.played_ms(101.0) == 0
    assert track.played_ms(101.5) == 500
    assert track.still_playing(101.5)
    track.active = False
    assert not track.still_playing(105.0)


def _tracker(*responses: dict[str, Any]) -> TurnTracker:
    """A tracker after the given responses: each with id, item, queued/written ms, the time
    its first audio was written, whether it is still active, and a playback report."""
    turns = TurnTracker(MS)
    for r in responses:
        track = turns.response_created(r["id"])
        turns.output_item(r["id"], r.get("item", f"item-{r['id']}"))
        if r.get("queued_ms"):
            turns.audio(r["id"], None, r["queued_ms"] * MS, 0.0)
        if r.get("written_ms"):
            turns.written(track, r["written_ms"] * MS, r.get("first_at", 0.0))
        if "report" in r:
            turns.playback(r["id"], *r["report"])
        if not r.get("active", True):
            turns.response_done(r["id"])
    return turns


NOW = 10.0

BARGE_IN_RULES = [
    pytest.param(
        [],
        None,
        id="nothing said yet: no barge-in",
    ),
    pytest.param(
        [{"id": "a", "queued_ms": 2000, "written_ms": 2000, "first_at": 0.0, "active": False}],
        None,
        id="an answer fully played long ago: no barge-in",
    ),
    pytest.param(
        [{"id": "a", "queued_ms": 0, "active": True}],
        BargeIn(mute=("a",), cancel="a"),
        id="response generating, no audio yet: cancel, no clear, nothing to truncate",
    ),
    pytest.param(
        [{"id": "a", "queued_ms": 5000, "written_ms": 5000, "first_at": 8.0, "active": True}],
        BargeIn(mute=("a",), clear_client=True, cancel="a", truncate=(("item-a", 2000),)),
        id="speaking: clear, cancel, truncate at the wall-clock position",
    ),
    pytest.param(
        [{"id": "a", "queued_ms": 30000, "written_ms": 30000, "first_at": 8.0, "active": False}],
        BargeIn(mute=("a",), clear_client=True, truncate=(("item-a", 2000),)),
        id="generation done but still playing: clear and truncate, no cancel",
    ),
    pytest.param(
        [{"id": "a", "queued_ms": 4000, "written_ms": 0, "active": True}],
        BargeIn(mute=("a",), clear_client=True, cancel="a", delete=("item-a",)),
        id="audio queued but none written: delete the item (a 0 ms truncate is rejected)",
    ),
    pytest.param(
        [{"id": "a", "queued_ms": 5000, "written_ms": 1500, "first_at": 0.0, "active": True}],
        BargeIn(mute=("a",), clear_client=True, cancel="a", truncate=(("item-a", 1500),)),
        id="truncation never beyond what was written",
    ),
    pytest.param(
        [
            {
                "id": "a",
                "queued_ms": 5000,
                "written_ms": 5000,
                "first_at": 0.0,
                "report": (700, NOW),
                "active": True,
            }
        ],
        BargeIn(mute=("a",), clear_client=True, cancel="a", truncate=(("item-a", 700),)),
        id="the client's playback report beats the wall clock",
    ),
    pytest.param(
        [
            {"id": "a", "queued_ms": 20000, "written_ms": 20000, "first_at": 5.0, "active": False},
            {"id": "b", "queued_ms": 1000, "written_ms": 0, "active": True},
        ],
        BargeIn(
            mute=("a", "b"),
            clear_client=True,
            cancel="b",
            truncate=(("item-a", 5000),),
            delete=("item-b",),
        ),
        id="two responses still audible: both muted, each truncated or deleted",
    ),
]


@pytest.mark.parametrize(("responses", "expected"), BARGE_IN_RULES)
def test_barge_in_plan(responses: list[dict[str, Any]], expected: BargeIn | None) -> None:
    """What the caller talking over the agent does, for each situation."""
    assert _tracker(*responses).plan_barge_in(NOW) == expected


def test_muted_response_drops_its_later_audio() -> None:
    """After a barge-in, audio still arriving for the muted response is dropped."""
    turns = _tracker({"id": "a", "queued_ms": 100, "written_ms": 100, "first_at": 9.9})
    plan = turns.plan_barge_in(NOW)
    assert plan is not None
    turns.mute(plan)
    assert turns.audio("a", None, 4800, NOW) is None
    assert turns.plan_barge_in(NOW + 0.1) is None


def test_playback_report_lands_on_the_response_it_names() -> None:
    """A late report for response N does not move the played position of response N+1."""
    turns = TurnTracker(MS)
    for rid, at in (("n", 0.0), ("n1", 9.0)):
        track = turns.response_created(rid)
        turns.output_item(rid, f"item-{rid}")
        turns.audio(rid, None, 5000 * MS, at)
        turns.written(track, 5000 * MS, at)
    # N+1 was written last; a late report about N (4 s played) arrives now.
    assert turns.playback("n", 4000, NOW)
    plan = turns.plan_barge_in(NOW)
    assert plan is not None
    assert dict(plan.truncate)["item-n1"] == 1000  # wall clock for N+1, not N's 4 s


def test_playback_report_without_id_applies_to_the_last_written() -> None:
    """Older clients send no id: the report applies to the response written last."""
    turns = TurnTracker(MS)
    track = turns.response_created("a")
    turns.audio("a", "item-a", 3000 * MS, 0.0)
    turns.written(track, 3000 * MS, 9.0)
    assert turns.playback(None, 250, NOW)
    plan = turns.plan_barge_in(NOW)
    assert plan is not None and plan.truncate == (("item-a", 250),)


def test_playback_report_for_unknown_or_unwritten_response_is_ignored() -> None:
    """Reports naming a response never written (or unknown) change nothing."""
    turns = TurnTracker(MS)
    turns.response_created("a")
    assert not turns.playback("a", 100, NOW)
    assert not turns.playback("zzz", 100, NOW)


def test_latency_runs_from_the_speech_it_answers() -> None:
    """First audio of the response created after speech stopped gives the latency; once."""
    turns = TurnTracker(MS)
    turns.speech_stopped(1.0)
    turns.response_created("a")
    first = turns.audio("a", "i", 960, 1.4)
    assert first is not None and first.first and first.latency_s == pytest.approx(0.4)
    later = turns.audio("a", "i", 960, 1.5)
    assert later is not None and not later.first and later.latency_s is None


def test_response_done_changes_state_only_for_the_current_response() -> None:
    """An older response ending is not the end of the current one."""
    turns = TurnTracker(MS)
    turns.response_created("old")
    turns.response_created("new")
    assert not turns.response_done("old")
    assert turns.response_active
    assert turns.response_done("new")
    assert not turns.response_active


def test_audio_without_response_created_is_tracked() -> None:
    """Audio of a response never announced is still tracked and can be barged in on."""
    turns = TurnTracker(MS)
    step = turns.audio(None, "item-x", 960, 0.0)
    assert step is not None and step.first
    turns.written(step.track, 960, 9.99)
    plan = turns.plan_barge_in(NOW)
    assert plan is not None and plan.clear_client


def test_only_recent_responses_are_remembered() -> None:
    """Tracks are bounded: the oldest are forgotten."""
    turns = TurnTracker(MS, kept=3)
    for i in range(10):
        turns.response_created(f"r{i}")
    assert list(turns.tracks) == ["r7", "r8", "r9"]
