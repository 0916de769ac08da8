"""The phone channels' pure parts: Twilio's signature (its published vectors), stream
tokens, the Twilio and ACS dialects, keypad digits, masked numbers, audio formats."""

from __future__ import annotations

import base64

import orjson
import pytest

from voicebridge import protocol
from voicebridge.audio_format import PCM16_24K, ULAW_8K, AudioFormat
from voicebridge.errors import ProtocolError
from voicebridge.phone import acs, handoff, signature, tokens, twilio
from voicebridge.phone.callers import mask_number
from voicebridge.relay.dtmf import MIN_WAIT_S, DtmfBuffer
from voicebridge.relay.turns import ResponseTrack, TurnTracker

# twilio-python, tests/unit/test_request_validator.py: Twilio's own published vectors.
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


def test_signature_matches_twilios_published_vectors() -> None:
    assert signature.compute("12345", URL, PARAMS.items()) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    repeated = [("Sid", "CA123"), ("SidAccount", "AC123"), ("Digits", "5678"), ("Digits", "1234")]
    assert signature.compute("12345", URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


@pytest.mark.parametrize(
    ("url", "sig"),
    [
        (URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
        (URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),  # port removed
        (URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),  # signed with :443
        (URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),  # signed with :80
    ],
)
def test_signature_accepts_the_url_variants_twilio_does(url: str, sig: str) -> None:
    assert signature.valid("12345", sig, url, PARAMS.items())


@pytest.mark.parametrize(
    ("token", "sig", "params"),
    [
        ("12345", "", PARAMS),  # missing
        ("12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8", PARAMS),  # truncated
        ("54321", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", PARAMS),  # another account
        ("12345", "RSOYDt4T1cUTdK1PDd93/VVr8B8=", {**PARAMS, "From": "+15550000000"}),
        ("12345", "\udcff\udcfe", PARAMS),  # bytes that are not UTF-8
    ],
)
def test_signature_refuses_what_twilio_did_not_sign(
    token: str, sig: str, params: dict[str, str]
) -> None:
    assert not signature.valid(token, sig, URL, params.items())


SECRET = b"0123456789abcdef0123456789abcdef"


def test_stream_token_round_trip_and_binding() -> None:
    token = tokens.mint(SECRET, channel="twilio", subject="CA1", ttl_s=60, now=1000)
    grant = tokens.verify(SECRET, token, channel="twilio", now=1059)
    assert (grant.channel, grant.subject, grant.expires_at) == ("twilio", "CA1", 1060)
    with pytest.raises(tokens.BadToken, match="expired"):
        tokens.verify(SECRET, token, channel="twilio", now=1061)
    with pytest.raises(tokens.BadToken, match="channel"):
        tokens.verify(SECRET, token, channel="acs", now=1000)
    with pytest.raises(tokens.BadToken, match="signature"):
        tokens.verify(b"another secret of 32 bytes......", token, channel="twilio", now=1000)


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v1..", "v2.abc.def", "v1.abc.def", "x" * 600, "v1.\udcff.abc"],
)
def test_malformed_stream_tokens_are_refused(token: str) -> None:
    with pytest.raises(tokens.BadToken):
        tokens.verify(SECRET, token, channel="twilio")


def test_a_forged_payload_is_refused() -> None:
    token = tokens.mint(SECRET, channel="twilio", subject="CA1", ttl_s=60)
    version, _payload, mac = token.split(".")
    forged = base64.urlsafe_b64encode(b"twilio|CA2|99999999999").rstrip(b"=").decode()
    with pytest.raises(tokens.BadToken, match="signature"):
        tokens.verify(SECRET, f"{version}.{forged}.{mac}", channel="twilio")


# -- Twilio ---------------------------------------------------------------------------------

START = {
    "event": "start",
    "sequenceNumber": "1",
    "start": {
        "accountSid": "AC123",
        "streamSid": "MZ123",
        "callSid": "CA123",
        "tracks": ["inbound"],
        "customParameters": {"token": "t", "from": "+14155550123"},
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
    },
    "streamSid": "MZ123",
}


def _twilio() -> twilio.TwilioDialect:
    start = twilio.parse_start(START)
    return twilio.TwilioDialect(start, caller_number=start.parameters["from"])


def test_twilio_start_is_read() -> None:
    start = twilio.parse_start(START)
    assert (start.stream_sid, start.call_sid) == ("MZ123", "CA123")
    assert start.parameters == {"token": "t", "from": "+14155550123"}


@pytest.mark.parametrize(
    "change",
    [
        {"event": "media"},
        {"start": {**START["start"], "callSid": ""}},  # type: ignore[dict-item]
        {"start": {**START["start"], "mediaFormat": {"encoding": "audio/l16"}}},  # type: ignore[dict-item]
        {"start": {**START["start"], "customParameters": ["token"]}},  # type: ignore[dict-item]
        {"start": "nope"},
    ],
)
def test_a_bad_twilio_start_is_refused(change: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        twilio.parse_start({**START, **change})


def _event(event: str, **body: object) -> str:
    return orjson.dumps({"event": event, "streamSid": "MZ123", event: body}).decode()


def test_twilio_messages_read_as_relay_messages() -> None:
    d = _twilio()
    payload = base64.b64encode(b"\xff" * 160).decode()
    assert d.parse(_event("media", track="inbound", payload=payload)) == protocol.AudioIn(
        b"\xff" * 160
    )
    assert d.parse(_event("media", track="outbound", payload=payload)) is None
    assert d.parse(_event("mark", name="resp_1:340")) == protocol.PlaybackIn(340, "resp_1")
    assert d.parse(_event("mark", name="someone-elses-mark")) is None
    assert d.parse(_event("dtmf", track="inbound_track", digit="7")) == protocol.DtmfIn("7")
    assert d.parse(_event("stop", accountSid="AC123", callSid="CA123")) == protocol.HangUpIn()
    assert d.parse('{"event": "connected", "protocol": "Call", "version": "1.0.0"}') is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        _event("media", payload="***"),
        _event("dtmf", digit="x"),
        _event("mark", name=5),
        _event("surprise"),
    ],
)
def test_bad_twilio_messages_are_protocol_errors(text: str) -> None:
    with pytest.raises(ProtocolError):
        _twilio().parse(text)


def test_agent_audio_goes_to_twilio_in_20ms_media_then_a_mark() -> None:
    d = _twilio()
    track = ResponseTrack("resp_1", ULAW_8K.bytes_per_ms, audio_written=800)  # 100 ms sent
    frames = [orjson.loads(f) for f in d.audio_frames(track, bytes(range(200)) * 2)]  # 50 ms
    media = [f for f in frames if f["event"] == "media"]
    assert [len(base64.b64decode(f["media"]["payload"])) for f in media] == [160, 160, 80]
    assert b"".join(base64.b64decode(f["media"]["payload"]) for f in media) == bytes(range(200)) * 2
    assert all(f["streamSid"] == "MZ123" for f in frames)
    assert frames[-1] == {"event": "mark", "streamSid": "MZ123", "mark": {"name": "resp_1:150"}}
    assert orjson.loads(d.clear()) == {"event": "clear", "streamSid": "MZ123"}
    assert d.caller() == {"call_sid": "CA123", "stream_sid": "MZ123", "from": "+1******0123"}


def test_acknowledged_playback_is_taken_at_its_word() -> None:
    """With Twilio, the played position is the last mark echoed, not a clock estimate, and
    the marks a clear discards (echoed as if played) change nothing."""
    turns = TurnTracker(ULAW_8K.bytes_per_ms, ack_only=True)
    turns.response_created("r1")
    step = turns.audio("r1", "item1", 8000, now=0.0)  # 1 s
    assert step is not None
    turns.written(step.track, 8000, now=0.0)
    assert step.track.played_ms(now=0.9) == 0  # no echo yet, however long ago
    turns.playback("r1", 340, now=0.4)
    assert step.track.played_ms(now=0.9) == 340
    plan = turns.plan_barge_in(now=0.9)
    assert plan is not None and plan.truncate == (("item1", 340),)
    turns.mute(plan)
    assert not turns.playback("r1", 1000, now=1.0)
    assert step.track.played_ms(now=1.0) == 340


# -- ACS ------------------------------------------------------------------------------------


def _meta(**change: object) -> dict[str, object]:
    meta = {"subscriptionId": "sub", "encoding": "PCM", "sampleRate": 16000, "channels": 1}
    return {"kind": "AudioMetadata", "audioMetadata": {**meta, **change}}


def test_acs_metadata_sets_the_format() -> None:
    assert acs.parse_metadata(_meta()) == (AudioFormat("pcm16", 16000), "sub")
    assert acs.parse_metadata(_meta(sampleRate=24000))[0] == PCM16_24K


@pytest.mark.parametrize(
    "meta",
    [_meta(sampleRate=8000), _meta(encoding="OPUS"), _meta(channels=2), {"kind": "AudioData"}],
)
def test_acs_formats_the_relay_does_not_carry_are_refused(meta: dict[str, object]) -> None:
    with pytest.raises(ProtocolError):
        acs.parse_metadata(meta)


def test_acs_messages_and_agent_audio() -> None:
    d = acs.AcsDialect(AudioFormat("pcm16", 16000), subscription_id="sub", call="c1")
    data = base64.b64encode(b"\x01\x00" * 320).decode()
    audio = {"kind": "AudioData", "audioData": {"data": data, "silent": False}}
    assert d.parse(orjson.dumps(audio).decode()) == protocol.AudioIn(b"\x01\x00" * 320)
    dtmf = {"kind": "DtmfData", "dtmfData": {"data": "#"}}
    assert d.parse(orjson.dumps(dtmf).decode()) == protocol.DtmfIn("#")
    assert d.parse(orjson.dumps(_meta()).decode()) is None
    with pytest.raises(ProtocolError, match="cannot change"):
        d.parse(orjson.dumps(_meta(sampleRate=24000)).decode())
    track = ResponseTrack("r", 32)
    frames = [orjson.loads(f) for f in d.audio_frames(track, b"\x00" * 1000)]
    assert [len(base64.b64decode(f["audioData"]["data"])) for f in frames] == [640, 360]
    assert {f["kind"] for f in frames} == {"AudioData"}
    assert orjson.loads(d.clear()) == {"kind": "StopAudio", "audioData": None, "stopAudio": {}}


# -- keypad, numbers, formats ---------------------------------------------------------------


def test_digits_go_together_after_a_gap_or_at_hash() -> None:
    keys = DtmfBuffer(gap_s=1.5)
    assert keys.add("1", now=0.0) is None
    assert keys.add("2", now=1.0) is None
    assert keys.take_due(now=2.4) is None
    assert keys.due_in(now=2.0) == pytest.approx(0.5)
    # Overdue: still a positive wait (a receive timeout of 0 would wait forever).
    assert keys.due_in(now=9.0) == MIN_WAIT_S > 0
    assert keys.take_due(now=2.5) == "12"
    assert keys.due_in(now=3.0) is None
    assert keys.add("4", now=3.0) is None
    assert keys.add("#", now=3.2) == "4#"


@pytest.mark.parametrize(
    ("number", "shown"),
    [
        ("+14155550123", "+1******0123"),
        ("4155550123", "******0123"),
        ("123", "***"),
        ("8:acs:resource_user", "***************user"),
    ],
)
def test_numbers_are_masked(number: str, shown: str) -> None:
    assert mask_number(number) == shown


def test_audio_formats() -> None:
    assert (PCM16_24K.bytes_per_ms, ULAW_8K.bytes_per_ms) == (48, 8)
    assert AudioFormat("pcm16", 16000).session_fields() == {
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16_16000hz",
        "input_audio_sampling_rate": 16000,
    }
    assert ULAW_8K.session_fields()["output_audio_format"] == "g711_ulaw"
    assert "input_audio_sampling_rate" not in PCM16_24K.session_fields()
    with pytest.raises(ValueError, match="8000"):
        AudioFormat("g711_ulaw", 16000)


# -- a call moved to a new stream -------------------------------------------------------------


@pytest.mark.parametrize(
    ("saved", "moves"),
    [
        ({"reason": "shutdown", "items": [{"type": "message"}], "moves": 0}, 1),
        ({"reason": "cancelled", "items": [], "moves": 2}, 3),
        # The stream ended with no session to say why (a crashed instance).
        (handoff.started(), 1),
    ],
)
def test_a_call_whose_stream_ended_with_its_instance_moves(
    saved: dict[str, object], moves: int
) -> None:
    moved = handoff.decide(saved)
    assert moved is not None and moved["moves"] == moves
    assert moved["items"] == saved["items"]
    assert moved["reason"] == "unknown"  # until the next stream's session says


@pytest.mark.parametrize(
    "saved",
    [
        {"reason": "caller_hung_up", "items": [], "moves": 0},
        {"reason": "agent_ended", "items": [], "moves": 0},
        {"reason": "ended_by_admin", "items": [], "moves": 0},
        {"reason": "max_duration", "items": [], "moves": 0},
        {"reason": "shutdown", "items": [], "moves": handoff.MAX_MOVES},  # no endless loop
        {"reason": "unknown", "moves": "many"},
        handoff.refused(0),  # a stream refused at a cap: no loop of moves
        None,  # no record at all (expired, or never written)
    ],
)
def test_a_call_ended_on_purpose_or_moved_too_often_hangs_up(
    saved: dict[str, object] | None,
) -> None:
    assert handoff.decide(saved) is None


def test_carried_items_keep_only_items() -> None:
    assert handoff.carried_items(None) == ([], 0)
    saved = {"items": [{"type": "message"}, "junk", 5], "moves": 2}
    assert handoff.carried_items(saved) == ([{"type": "message"}], 2)
