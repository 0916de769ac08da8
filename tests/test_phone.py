"""Phone calls end to end: a fake Twilio and a fake ACS (real WebSocket clients speaking
each provider's documented JSON, at real time, with espeak-ng speech encoded by the
standard codecs) calling the relay, which talks to the emulator with the real SDK."""

from __future__ import annotations

import asyncio
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp.test_utils import TestClient

from tests.conftest import MakeClient, StartEmulator, relay_settings
from tests.speech import make_speech_pcm, tools_available
from voicebridge.app import STATE
from voicebridge.emulator import RunningEmulator
from voicebridge.loadtest.phone import AcsCall, CallFailed, TwilioCall
from voicebridge.loadtest.phone_audio import AudioFormat, PhoneAudio
from voicebridge.phone import signature, tokens

pytestmark = pytest.mark.skipif(not tools_available(), reason="needs espeak-ng and sox")

AUTH = "twilio-auth-token-for-tests"
SECRET = "a-phone-token-secret-of-some-length"
PHONE_ENV = {
    "TWILIO_AUTH_TOKEN": AUTH,
    "PHONE_TOKEN_SECRET": SECRET,
    "PHONE_START_TIMEOUT_S": "1",
    "DTMF_GAP_MS": "300",
}


def _speech(fmt: AudioFormat, text: str) -> PhoneAudio:
    pcm = make_speech_pcm(text, lead_s=0.2, trail_s=0.0)  # the call streams silence after
    return PhoneAudio.from_pcm16(fmt, pcm, 24000)


async def _phone_app(
    start_emu: StartEmulator, make_client: MakeClient, **env: str
) -> tuple[RunningEmulator, TestClient[Any, Any]]:
    emu = await start_emu(realtime=False)
    client = await make_client(relay_settings(emu, **{**PHONE_ENV, **env}))
    return emu, client


def _base(client: TestClient[Any, Any]) -> str:
    return str(client.make_url("/"))


async def _sessions(client: TestClient[Any, Any]) -> list[dict[str, Any]]:
    body = await (await client.get("/sessions")).json()
    return list(body["sessions"])


async def _metric(client: TestClient[Any, Any], prefix: str) -> float:
    text = await (await client.get("/metrics")).text()
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def _configured(emu: RunningEmulator) -> dict[str, Any]:
    """The session configuration the emulator applied, once it has."""
    async with asyncio.timeout(5):
        while (config := emu.last_session_config()) is None:
            await asyncio.sleep(0.01)
    return config


async def _until(check: Any, within_s: float = 5.0) -> None:
    async with asyncio.timeout(within_s):
        while not await check():
            await asyncio.sleep(0.02)


# -- Twilio ---------------------------------------------------------------------------------


async def test_twilio_call_full_turn_then_hang_up(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A caller speaks, the agent answers in μ-law the caller hears; /sessions shows the
    call by channel with the number masked; Twilio's stop ends the session cleanly."""
    emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH, from_number="+14155550123", keep_audio=True)
    try:
        await call.start()
        await _until(lambda: _has_sessions(client, 1))
        [session] = await _sessions(client)
        assert session["metrics"]["channel"] == "twilio"
        assert session["metrics"]["call"] == {
            "call_sid": call.call_sid,
            "stream_sid": call.stream_sid,
            "from": "+1******0123",
        }
        config = await _configured(emu)
        assert (config["input_audio_format"], config["output_audio_format"]) == (
            "g711_ulaw",
            "g711_ulaw",
        )
        said = await call.speak(_speech(call.fmt, "Hello, I would like to hear about the offer."))
        assert await call.wait_first_audio(said, within_s=10)
        assert await call.wait_quiet(gap_ms=400, within_s=20)
        heard = call.metrics()
        assert heard.audio_bytes_played > 8 * 500  # at least half a second of agent audio
        assert heard.unexpected == 0  # nothing Twilio would not understand
        assert heard.marks and all(not m.cleared for m in heard.marks)
        assert said.latency_ms is not None
        await call.hangup()
        assert await call.wait_closed()
        assert call.close_code == 1000
        await _until(lambda: _has_sessions(client, 0))
        ended = 'voicebridge_sessions_total{channel="twilio",reason="caller_hung_up"}'
        assert await _metric(client, ended) == 1.0
    finally:
        await call.hangup()


async def _has_sessions(client: TestClient[Any, Any], count: int) -> bool:
    return len(await _sessions(client)) == count


async def test_twilio_barge_in_clears_and_truncates_at_the_acknowledged_mark(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Talking over the agent: Twilio is sent a clear, and the agent's turn is cut at the
    last position Twilio acknowledged having played (a mark echo), not at a guess."""
    emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        said = await call.speak(_speech(call.fmt, "Tell me everything about the offer today."))
        assert await call.wait_first_audio(said, within_s=10)
        assert await call.wait_marks(2, within_s=10)  # some of the answer has been heard
        call.say(_speech(call.fmt, "Stop, stop, I have a question."))
        assert await call.wait_cleared(1, within_s=10)
        async with asyncio.timeout(5):
            while emu.event_count("conversation.item.truncated") == 0:
                await asyncio.sleep(0.01)
        truncated = emu.last_event("conversation.item.truncated")
        assert truncated is not None
        played = [m for m in call.metrics().marks if not m.cleared]
        acknowledged = {int(m.name.rsplit(":", 1)[1]) for m in played}
        assert truncated["audio_end_ms"] in acknowledged
        discarded = [m for m in call.metrics().marks if m.cleared]
        assert discarded, "the clear discarded audio not yet played"
        assert truncated["audio_end_ms"] < min(int(m.name.rsplit(":", 1)[1]) for m in discarded)
    finally:
        await call.hangup()


async def test_twilio_keypad_digits_reach_the_agent(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Keys pressed together reach the agent as one system message, and it answers."""
    emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        before = emu.event_count("response.created")
        for digit in "42#":
            await call.press(digit)
        async with asyncio.timeout(5):
            while emu.event_count("response.created") == before:
                await asyncio.sleep(0.01)
        notes = [
            item
            for item in emu.conversation()
            if item.get("role") == "system" and "keypad" in str(item.get("content"))
        ]
        assert len(notes) == 1
        assert "4 2 #" in orjson.dumps(notes[0]).decode()
    finally:
        await call.hangup()


async def test_twilio_webhook_signature(start_emu: StartEmulator, make_client: MakeClient) -> None:
    """Only requests Twilio signed get TwiML: valid → 200 with a stream and a token;
    invalid or missing → 403; with no TWILIO_AUTH_TOKEN the route says so (503)."""
    _emu, client = await _phone_app(start_emu, make_client)
    url = str(client.make_url("/twilio/voice"))
    form = {"CallSid": "CA0001", "From": "+14155550123", "To": "+18005550100"}
    good = signature.compute(AUTH, url, form.items())
    resp = await client.post("/twilio/voice", data=form, headers={"X-Twilio-Signature": good})
    assert resp.status == 200
    assert resp.content_type == "text/xml"
    stream = ET.fromstring(await resp.text()).find("./Connect/Stream")
    assert stream is not None
    assert stream.get("url") == str(client.make_url("/ws/twilio")).replace("http", "ws", 1)
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    grant = tokens.verify(SECRET.encode(), str(params["token"]), channel="twilio")
    assert grant.subject == "CA0001"
    forged = ("B" if good[0] == "A" else "A") + good[1:]  # one character off
    for headers in ({"X-Twilio-Signature": forged}, {}):
        resp = await client.post("/twilio/voice", data=form, headers=headers)
        assert resp.status == 403
        assert (await resp.json())["code"] == "unauthorized"
    tampered = {**form, "CallSid": "CA0002"}
    resp = await client.post("/twilio/voice", data=tampered, headers={"X-Twilio-Signature": good})
    assert resp.status == 403


async def test_twilio_webhook_is_off_without_the_auth_token(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    _emu, client = await _phone_app(start_emu, make_client, TWILIO_AUTH_TOKEN="")
    resp = await client.post("/twilio/voice", data={"CallSid": "CA1"})
    assert resp.status == 503
    body = await resp.json()
    assert body["code"] == "phone_off" and "TWILIO_AUTH_TOKEN" in body["message"]


@pytest.mark.parametrize(
    "parameters",
    [
        {},  # no token at all
        {"token": "v1.forged.token"},
        {"token": "another-calls"},  # replaced below by a valid token for another call
    ],
)
async def test_a_twilio_stream_without_a_valid_token_is_refused(
    start_emu: StartEmulator, make_client: MakeClient, parameters: dict[str, str]
) -> None:
    """The stream WebSocket is never open: no valid per-call token in ``start``, 1008, and
    nothing reaches Voice Live."""
    emu, client = await _phone_app(start_emu, make_client)
    if parameters.get("token") == "another-calls":
        parameters = {
            "token": tokens.mint(SECRET.encode(), channel="twilio", subject="CA-other", ttl_s=60)
        }
    async with client.ws_connect("/ws/twilio") as ws:
        await ws.send_str('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
        start = {
            "event": "start",
            "start": {"streamSid": "MZ1", "callSid": "CA1", "customParameters": parameters},
            "streamSid": "MZ1",
        }
        await ws.send_str(orjson.dumps(start).decode())
        msg = await ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
    assert emu.connections_accepted == 0


async def test_a_twilio_stream_that_never_starts_is_closed(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    emu, client = await _phone_app(start_emu, make_client)
    async with client.ws_connect("/ws/twilio") as ws:
        await ws.send_str('{"event": "connected", "protocol": "Call", "version": "1.0.0"}')
        msg = await ws.receive(timeout=5)  # PHONE_START_TIMEOUT_S is 1 s here
        assert msg.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 1008
    assert emu.connections_accepted == 0


async def test_a_twilio_token_works_for_one_stream_at_a_time(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """A token replayed while its call is live is refused (one stream per call)."""
    _emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        async with client.ws_connect("/ws/twilio") as ws:
            start = {
                "event": "start",
                "start": {
                    "streamSid": "MZ-replay",
                    "callSid": call.call_sid,
                    "customParameters": call.custom_parameters,
                },
                "streamSid": "MZ-replay",
            }
            await ws.send_str(orjson.dumps(start).decode())
            msg = await ws.receive(timeout=5)
            assert msg.type is aiohttp.WSMsgType.CLOSE
            assert ws.close_code == 1013
        assert len(await _sessions(client)) == 1
    finally:
        await call.hangup()


# -- ACS ------------------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [16000, 24000])
async def test_acs_call_turn_and_barge_in(
    start_emu: StartEmulator, make_client: MakeClient, rate: int
) -> None:
    """ACS at the rate its metadata announces: a turn in PCM16 at that rate, StopAudio on
    a barge-in, the agent's turn truncated; /sessions shows the channel."""
    emu, client = await _phone_app(start_emu, make_client)
    call = AcsCall.with_secret(_base(client), SECRET.encode(), sample_rate=rate)
    try:
        await call.start()
        await _until(lambda: _has_sessions(client, 1))
        [session] = await _sessions(client)
        assert session["metrics"]["channel"] == "acs"
        config = await _configured(emu)
        assert config["input_audio_format"] == "pcm16"
        assert config.get("input_audio_sampling_rate", 24000) == rate
        said = await call.speak(_speech(call.fmt, "Tell me everything about the offer today."))
        assert await call.wait_first_audio(said, within_s=10)
        call.say(_speech(call.fmt, "Wait, I have a question."))
        assert await call.wait_cleared(1, within_s=10)
        async with asyncio.timeout(5):
            while emu.event_count("conversation.item.truncated") == 0:
                await asyncio.sleep(0.01)
        assert call.metrics().unexpected == 0
    finally:
        await call.hangup()


async def test_acs_stream_needs_a_token(start_emu: StartEmulator, make_client: MakeClient) -> None:
    emu, client = await _phone_app(start_emu, make_client)
    for query in ("", "?token=nope", "?token=" + _twilio_token()):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect("/ws/acs" + query)
        assert refused.value.status == 401
    call = AcsCall(_base(client), "v1.bad.token")
    with pytest.raises(CallFailed, match="401"):
        await call.start()
    await call.hangup()
    assert emu.connections_accepted == 0


def _twilio_token() -> str:
    """A valid token, but for the other channel."""
    return tokens.mint(SECRET.encode(), channel="twilio", subject="c", ttl_s=60)


def test_speech_fixture_is_real_speech(tmp_path: Path) -> None:
    """The audio the calls speak is espeak-ng speech, encoded for each channel."""
    for fmt in (AudioFormat.for_channel("twilio"), AudioFormat.for_channel("acs", 16000)):
        audio = _speech(fmt, "Hello there")
        assert audio.ms > 800


async def test_a_phone_call_has_its_own_instructions_and_survives_a_lost_upstream(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path
) -> None:
    """PHONE_INSTRUCTIONS_FILE reaches Voice Live for a phone call; when the Voice Live
    connection drops mid-call, the call goes on over a new one and the next turn is
    answered, in μ-law still."""
    prompt = tmp_path / "phone.md"
    prompt.write_text("You are on the phone: keep answers short.")
    emu, client = await _phone_app(start_emu, make_client, PHONE_INSTRUCTIONS_FILE=str(prompt))
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        config = await _configured(emu)
        assert config["instructions"] == "You are on the phone: keep answers short."
        said = await call.speak(_speech(call.fmt, "Hello, who is this?"))
        assert await call.wait_first_audio(said, within_s=10)
        assert await call.wait_quiet(gap_ms=400, within_s=20)
        assert emu.drop_connections() == 1
        await _until(lambda: _reconnected(client))
        assert emu.connections_accepted == 2
        config = await _configured(emu)
        assert config["output_audio_format"] == "g711_ulaw"
        said = await call.speak(_speech(call.fmt, "Are you still there?"))
        assert await call.wait_first_audio(said, within_s=10)
        assert call.metrics().unexpected == 0
    finally:
        await call.hangup()


async def _reconnected(client: TestClient[Any, Any]) -> bool:
    sessions = await _sessions(client)
    return bool(sessions) and sessions[0]["metrics"]["upstream"]["reconnects"] == 1


async def test_a_twilio_call_moves_to_a_new_stream_when_its_instance_drains(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """The stream's instance restarts: its session finishes and closes 1001, Twilio asks the
    <Connect action> what next, and the call goes on over a new stream whose session starts
    with the conversation so far; the caller talks on and is answered."""
    emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        said = await call.speak(_speech(call.fmt, "Hello, my name is Sam."))
        assert await call.wait_first_audio(said, within_s=10)
        assert await call.wait_quiet(gap_ms=400, within_s=20)
        [session] = client.app[STATE].sessions.values()
        await session.drain(2.0)
        assert session.end is not None and session.end.reason == "shutdown"
        assert await call.wait_for(lambda: call.streams == 2, within_s=10)
        await _until(lambda: _has_sessions(client, 1))
        [moved] = await _sessions(client)
        assert moved["session_id"] != session.id and moved["metrics"]["channel"] == "twilio"
        # The new connection was given the conversation: the caller's turn and the answer.
        roles = [item.get("role") for item in emu.conversation()]
        assert roles[:2] == ["user", "assistant"], emu.conversation()
        said = await call.speak(_speech(call.fmt, "Are you still there?"))
        assert await call.wait_first_audio(said, within_s=10)
        assert not call.closed and call.metrics().unexpected == 0
    finally:
        await call.hangup()


async def test_a_twilio_call_an_operator_ends_is_hung_up(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """Ended on purpose (here by an operator): Twilio's question after the stream is
    answered with <Hangup/>, not a new stream."""
    _emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        await _until(lambda: _has_sessions(client, 1))
        [session] = await _sessions(client)
        resp = await client.delete(f"/sessions/{session['session_id']}")
        assert resp.status == 202
        assert await call.wait_closed(within_s=10)
        assert call.hung_up_by_twiml and call.streams == 1
    finally:
        await call.hangup()


async def test_a_single_key_reaches_the_agent_after_the_gap(
    start_emu: StartEmulator, make_client: MakeClient
) -> None:
    """One key and no '#' (a menu choice): it goes to the agent once DTMF_GAP_MS passes,
    while the call's audio keeps flowing."""
    emu, client = await _phone_app(start_emu, make_client)
    call = TwilioCall(_base(client), AUTH)
    try:
        await call.start()
        await _configured(emu)
        before = emu.event_count("response.created")
        await call.press("7")
        async with asyncio.timeout(5):
            while emu.event_count("response.created") == before:
                await asyncio.sleep(0.01)
        notes = [i for i in emu.conversation() if "keypad" in str(i.get("content"))]
        assert len(notes) == 1 and "pressed 7 on" in orjson.dumps(notes[0]).decode()
    finally:
        await call.hangup()
