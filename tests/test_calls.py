"""Call records without a database: the recorder, redaction, costs, settings, the
transcript text."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from voicebridge.calls import CallRecord, CallRecorder, CallSettings, Prices, Usage, parse
from voicebridge.calls.cost import estimate
from voicebridge.calls.recorder import MAX_TURNS, NullRecorder, Recorder
from voicebridge.calls.redact import redact
from voicebridge.calls.routes import render_transcript
from voicebridge.config import ConfigError

T0 = 1_760_000_000.0


def usage(
    *,
    text_in: int = 0,
    audio_in: int = 0,
    cached: int = 0,
    cached_text: int | None = None,
    cached_audio: int | None = None,
    text_out: int = 0,
    audio_out: int = 0,
) -> dict[str, Any]:
    """A ``response.done`` usage object as Voice Live sends it."""
    details: dict[str, Any] = {"text_tokens": text_in, "audio_tokens": audio_in}
    details["cached_tokens"] = cached
    if cached_text is not None or cached_audio is not None:
        details["cached_tokens_details"] = {
            "text_tokens": cached_text or 0,
            "audio_tokens": cached_audio or 0,
        }
    return {
        "total_tokens": text_in + audio_in + text_out + audio_out,
        "input_tokens": text_in + audio_in,
        "output_tokens": text_out + audio_out,
        "input_token_details": details,
        "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
    }


def recorder(**kwargs: Any) -> tuple[CallRecorder, list[CallRecord]]:
    got: list[CallRecord] = []
    rec = CallRecorder(
        call_id=kwargs.pop("call_id", "call-1"),
        channel="browser",
        instance="host-1",
        client=kwargs.pop("client", "address 127.0.0.1"),
        submit=got.append,
        started_at=T0,
        **kwargs,
    )
    return rec, got


# -- the recorder -----------------------------------------------------------------------


def test_turns_are_ordered_by_when_they_began() -> None:
    """A transcript that arrives after the answer began still comes before it."""
    rec, got = recorder()
    # The answer's first audio (1.5 s) is told before the caller's transcript arrives.
    rec.response_latency(700, response_id="r1", at=T0 + 1.5)
    rec.user_said("What time do you open?", at=T0 + 0.2)
    rec.agent_said("r1", "We open at nine.", at=T0 + 3.0)
    rec.user_typed("thanks", at=T0 + 4.0)
    rec.tool_call("end_call", 12.5, "ok", at=T0 + 5.0)
    rec.ended("client_closed", 1000, at=T0 + 6.0)
    [record] = got
    assert [(t.kind, t.text) for t in record.turns] == [
        ("user", "What time do you open?"),
        ("agent", "We open at nine."),
        ("user_text", "thanks"),
        ("tool", ""),
    ]
    assert [t.seq for t in record.turns] == [0, 1, 2, 3]
    assert record.turns[1].latency_ms == 700
    assert record.turns[3].name == "end_call" and record.turns[3].outcome == "ok"
    assert record.tool_calls == 1
    assert record.duration_s == 6.0
    assert record.preview == "What time do you open?"


def test_an_answer_without_latency_is_placed_by_its_first_audio() -> None:
    """A typed message's answer (no speech, so no latency) sits where its audio began."""
    rec, got = recorder()
    rec.user_typed("What's the price?", at=T0 + 1)
    rec.agent_started("r1", at=T0 + 2)
    rec.user_said("hello?", at=T0 + 3)  # the caller talks while the answer plays
    rec.agent_said("r1", "It is ten pounds.", at=T0 + 6)
    rec.ended("client_closed", 1000, at=T0 + 7)
    assert [t.kind for t in got[0].turns] == ["user_text", "agent", "user"]
    assert got[0].latency.count == 0


def test_the_null_recorder_takes_every_call() -> None:
    """With records off, sessions call the same methods on a recorder that keeps nothing."""
    null: Recorder = NullRecorder()
    null.user_said("x")
    null.agent_started("r")
    null.usage("r", {"input_tokens": 1})
    null.ended("client_closed", 1000)


def test_barge_in_keeps_the_agent_turn_as_heard() -> None:
    """An interrupted answer keeps the played share of its words, the rest as unheard."""
    rec, got = recorder()
    rec.user_said("Tell me about the offer", at=T0)
    rec.response_latency(500, response_id="r1", at=T0 + 1)
    # The caller cuts in after 2 of 8 seconds; the transcript arrives afterwards.
    rec.barge_in(at=T0 + 3)
    rec.agent_interrupted("r1", played_ms=2000, sent_ms=8000, at=T0 + 3)
    rec.agent_said("r1", "one two three four five six seven eight", at=T0 + 3.1)
    rec.user_said("Stop, how much is it?", at=T0 + 3)
    rec.ended("client_closed", 1000, at=T0 + 5)
    [record] = got
    agent = record.turns[1]
    assert agent.kind == "agent" and agent.interrupted
    assert agent.text == "one two"
    assert agent.unheard == "three four five six seven eight"
    assert agent.heard_share == 0.25
    assert record.barge_ins == 1
    assert [t.kind for t in record.turns] == ["user", "agent", "user"]


def test_usage_is_summed_once_per_response_and_costed() -> None:
    """Usage of each response is added once; the cost uses the configured prices."""
    prices = Prices(text_in=4, text_out=16, audio_in=32, audio_out=64, cached_in=0.4)
    rec, got = recorder(prices=prices)
    first = usage(text_in=1000, audio_in=2000, text_out=100, audio_out=500)
    second = usage(
        text_in=1200, audio_in=3000, cached=2500, cached_text=1000, cached_audio=1500,
        text_out=50, audio_out=400,
    )  # fmt: skip
    rec.usage("r1", first)
    rec.usage("r1", first)  # the same response.done twice counts once
    rec.usage("r2", second)
    rec.ended("client_closed", 1000, at=T0 + 60)
    [record] = got
    u = record.usage
    assert u.responses == 2
    assert (u.input_text, u.input_audio, u.cached, u.output_text, u.output_audio) == (
        2200, 5000, 2500, 150, 900,
    )  # fmt: skip
    assert u.input_tokens == 7200 and u.output_tokens == 1050 and u.total_tokens == 8250
    expected = (
        (2200 - 1000) * 4 + (5000 - 1500) * 32 + 2500 * 0.4 + 150 * 16 + 900 * 64
    ) / 1_000_000
    assert record.cost_usd == pytest.approx(expected, abs=1e-6)


def test_cached_tokens_without_a_split_are_shared_in_proportion() -> None:
    """Cached tokens with no text/audio details split like the input they came from."""
    counted = Usage.from_event(usage(text_in=100, audio_in=300, cached=200))
    assert (counted.cached_text, counted.cached_audio) == (50, 150)


def test_usage_from_the_sdk_model_counts_the_same() -> None:
    """The SDK's TokenUsage model gives the same counts as the raw dict."""
    from azure.ai.voicelive.models import TokenUsage

    raw = usage(text_in=10, audio_in=20, cached=5, cached_text=5, cached_audio=0, audio_out=7)
    assert Usage.from_event(TokenUsage(raw)) == Usage.from_event(raw)


def test_no_prices_means_no_cost() -> None:
    """With every price at 0 the cost is not estimated (None), and settings say so."""
    zero = Prices(0, 0, 0, 0, 0)
    assert estimate(Usage(input_text=10), zero) is None
    settings = CallSettings(prices=zero)
    assert any("not estimated" in note for note in settings.notes())


def test_latency_and_reconnects_are_summarised() -> None:
    """Latencies give p50/p95/max; reconnects are turns with their cause and outcome."""
    rec, got = recorder()
    for i, ms in enumerate([300, 500, 400, 900]):
        rec.response_latency(ms, response_id=f"r{i}", at=T0 + i)
        rec.agent_said(f"r{i}", f"answer {i}", at=T0 + i)
    rec.reconnected("lost", "restored", at=T0 + 10, duration_ms=830)
    rec.ended("upstream_closed", 1011, at=T0 + 11)
    [record] = got
    assert (record.latency.count, record.latency.p50_ms, record.latency.max_ms) == (4, 400, 900)
    assert record.latency.p95_ms == 900
    last = record.turns[-1]
    assert (last.kind, last.name, last.outcome, last.duration_ms) == (
        "reconnect", "lost", "restored", 830,
    )  # fmt: skip
    assert record.reconnects == 1 and record.close_code == 1011


def test_ended_submits_once_and_later_calls_change_nothing() -> None:
    """The record is handed over once; what the session says after the end is ignored."""
    rec, got = recorder()
    rec.user_said("hi", at=T0)
    rec.ended("client_closed", 1000, at=T0 + 1)
    rec.user_said("too late", at=T0 + 2)
    rec.usage("r9", usage(text_in=5))
    rec.ended("again", 1000)
    assert len(got) == 1
    assert [t.text for t in got[0].turns] == ["hi"]
    assert got[0].usage.responses == 0


def test_a_failing_submit_never_reaches_the_session() -> None:
    """A writer that raises is logged; ``ended`` still returns normally."""

    def broken(record: CallRecord) -> None:
        raise RuntimeError("writer gone")

    rec = CallRecorder("c", "browser", "i", "", submit=broken)
    rec.ended("client_closed", 1000)


def test_the_record_is_bounded() -> None:
    """Past MAX_TURNS, turns are counted as dropped instead of kept."""
    rec, got = recorder()
    for i in range(MAX_TURNS + 3):
        rec.user_typed(f"message {i}", at=T0 + i)
    rec.ended("client_closed", 1000, at=T0 + MAX_TURNS + 10)
    assert len(got[0].turns) == MAX_TURNS
    assert got[0].dropped_turns == 3


def test_record_json_round_trip() -> None:
    """A record survives as_dict/from_dict unchanged (the spool's format)."""
    rec, got = recorder()
    rec.set_metadata(caller="+1 415 555 0100")
    rec.user_said("hello", at=T0)
    rec.agent_interrupted("r1", 100, 400, at=T0 + 1)
    rec.agent_said("r1", "a b c d", at=T0 + 1)
    rec.usage("r1", usage(text_in=3, audio_out=9))
    rec.ended("client_closed", 1000, at=T0 + 2)
    assert CallRecord.from_dict(got[0].as_dict()) == got[0]


# -- redaction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("call me on +44 7700 900123 please", "call me on +** **** ****23 please"),
        ("my number is (415) 555-0132.", "my number is (***) ***-**32."),
        ("4111 1111 1111 1111", "**** **** **** 1111"),
        ("it's 07700900123", "it's *********23"),
        ("five five five", "five five five"),
        ("order 123456 arrives", "order 123456 arrives"),  # 6 digits: not a phone number
        ("server 192.168.100.200 and 3.14159265", "server 192.168.100.200 and 3.14159265"),
        ("jane.doe@example.com", "jane.doe@example.com"),  # emails only with CALL_REDACT=true
    ],
)
def test_numbers_are_masked(text: str, masked: str) -> None:
    """Phone-like and card-like numbers keep only their last digits; other text stays."""
    assert redact(text, "numbers") == masked


def test_all_masks_emails_too_and_off_masks_nothing() -> None:
    """``all`` also replaces email addresses; ``off`` leaves everything."""
    text = "write to jane.doe@example.com or call 555 123 4567"
    assert redact(text, "all") == "write to [email] or call *** *** **67"
    assert redact(text, "off") == text


def test_redaction_applies_to_transcripts_and_metadata() -> None:
    """Transcripts, unheard words, the client and metadata are stored redacted."""
    rec, got = recorder(client="caller +1 415 555 0100", redaction="all")
    rec.set_metadata(caller="+14155550100", note="mail bob@example.org")
    rec.user_said("I'm on 07700 900123", at=T0)
    rec.agent_interrupted("r1", 1, 2, at=T0 + 1)
    rec.agent_said("r1", "So that's 07700 900123 and bob@example.org", at=T0 + 1)
    rec.ended("client_closed", 1000, at=T0 + 2)
    [record] = got
    stored = repr(record.as_dict())
    assert "900123" not in stored and "bob@" not in stored and "555 0100" not in stored
    assert record.metadata == {"caller": "+*********00", "note": "mail [email]"}
    assert record.client == "caller +* *** *** **00"
    assert record.turns[0].text == "I'm on ***** ****23"


# -- settings ---------------------------------------------------------------------------


def test_settings_defaults() -> None:
    """With nothing set: a SQLite file under data/, 30 days, numbers masked, prices set."""
    settings, problems = parse({})
    assert problems == []
    assert settings.kind == "sqlite" and settings.store == "sqlite:///data/calls.sqlite3"
    assert settings.retention_days == 30 and settings.redact == "numbers"
    assert settings.prices.known and settings.queue_max > 0


@pytest.mark.parametrize(
    ("value", "kind", "store"),
    [
        ("off", "off", "off"),
        ("calls.db", "sqlite", "sqlite:///calls.db"),
        ("sqlite:////var/lib/vb/calls.sqlite3", "sqlite", "sqlite:////var/lib/vb/calls.sqlite3"),
        ("postgresql://vb:pw@db:5432/calls", "postgresql", "postgresql://vb:pw@db:5432/calls"),
        ("postgres://vb@db/calls", "postgresql", "postgres://vb@db/calls"),
    ],
)
def test_call_store_values(value: str, kind: str, store: str) -> None:
    """CALL_STORE takes off, a path, a sqlite:/// URL or a postgresql:// URL."""
    settings = CallSettings.from_environ({"CALL_STORE": value})
    assert (settings.kind, settings.store) == (kind, store)


def test_every_bad_setting_is_listed_and_no_password_is_echoed() -> None:
    """Bad values are all reported at once; a URL's password never is."""
    with pytest.raises(ConfigError) as caught:
        CallSettings.from_environ(
            {
                "CALL_STORE": "mysql://root:hunter2@db/calls",
                "CALL_RETENTION_DAYS": "-1",
                "CALL_REDACT": "maybe",
                "CALL_QUEUE_MAX": "0",
                "CALL_PRICE_AUDIO_IN_PER_1M": "cheap",
            }
        )
    problems = caught.value.problems
    assert [p.split(":")[0] for p in problems] == [
        "CALL_PRICE_AUDIO_IN_PER_1M",
        "CALL_STORE",
        "CALL_REDACT",
        "CALL_RETENTION_DAYS",
        "CALL_QUEUE_MAX",
    ]
    assert "hunter2" not in str(caught.value)


def test_settings_show_the_store_masked() -> None:
    """repr and redacted() mask a PostgreSQL password."""
    settings = CallSettings.from_environ({"CALL_STORE": "postgresql://vb:s3cret@db/calls"})
    assert "s3cret" not in repr(settings)
    assert settings.redacted()["store"] == "postgresql://vb:***@db/calls"


# -- plain text -------------------------------------------------------------------------


def test_transcript_text() -> None:
    """The download reads as a conversation with times, latency, barge-ins and cost."""
    rec, got = recorder()
    rec.user_said("Hello", at=T0 + 1)
    rec.response_latency(640, response_id="r1", at=T0 + 2)
    rec.agent_interrupted("r1", 500, 1000, at=T0 + 3)
    rec.agent_said("r1", "Hi there, how are you today", at=T0 + 3)
    rec.usage("r1", usage(text_in=10, audio_in=20, audio_out=30))
    rec.ended("client_closed", 1000, at=T0 + 65)
    text = render_transcript(got[0])
    assert "[00:01.0] Caller: Hello" in text
    assert "[00:02.0] Agent (640 ms): Hi there, how [interrupted: 50% heard" in text
    assert "not heard: are you today]" in text
    assert "Duration: 01:05.0" in text
    assert "Estimated cost: $0.00" in text
    assert dt.datetime.fromtimestamp(T0, dt.UTC).strftime("%Y-%m-%dT%H:%M") in text
