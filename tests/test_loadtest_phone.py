"""Tests of the fake phone providers' own logic: the playback buffer and its marks, the
frame schedule, the Twilio and ACS dialects against a small local server, and the
``--channel`` option. (The bridge's /ws/twilio and /ws/acs are tested elsewhere.)"""

from __future__ import annotations

import argparse
import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import WSMsgType, web

from voicebridge.loadtest import config_from_args
from voicebridge.loadtest.options import add_loadtest_arguments
from voicebridge.loadtest.phone import AcsCall, CallFailed, Pacer, TwilioCall, parse_twiml
from voicebridge.loadtest.phone_audio import AudioFormat, PhoneAudio, speech_span
from voicebridge.loadtest.playback import Playback
from voicebridge.phone import signature, tokens

MS = 1_000_000
TOKEN = "twilio-test-token"
SECRET = b"phone-test-secret"
ULAW = AudioFormat.for_channel("twilio")

# -- the playback buffer ------------------------------------------------------------------


def test_mark_is_echoed_when_playback_reaches_it() -> None:
    """A mark after 40 ms of μ-law is reached 40 ms after that audio began to play."""
    play = Playback(rate=8)
    play.push(320, now=1_000 * MS)
    assert play.mark("a", now=1_005 * MS) == []
    assert play.next_due() == 1_040 * MS
    assert play.advance(1_039 * MS) == []
    [mark] = play.advance(1_040 * MS)
    assert (mark.name, mark.position, mark.cleared, mark.played_ns) == ("a", 320, False, 1_040 * MS)
    assert play.queued(1_040 * MS) == 0


def test_mark_on_an_empty_buffer_is_echoed_at_once() -> None:
    """Nothing queued before a mark: it comes back as soon as it arrives."""
    play = Playback(rate=8)
    play.push(160, now=0)
    [mark] = play.mark("idle", now=50 * MS)  # the 20 ms played long ago
    assert mark.played_ns == 50 * MS and not mark.cleared


def test_audio_after_a_gap_plays_from_its_arrival() -> None:
    """Playback that ran dry starts again when audio arrives, not where it left off."""
    play = Playback(rate=8)
    play.push(160, now=0)
    play.push(160, now=100 * MS)
    play.mark("b", now=100 * MS)
    assert play.next_due() == 120 * MS
    assert play.played(110 * MS) == 240
    assert play.drained_at() == 120 * MS


def test_clear_discards_the_queue_and_echoes_pending_marks_at_once() -> None:
    """On clear: marks already reached first, then every pending one, flagged cleared."""
    play = Playback(rate=8)
    play.push(160, now=0)
    play.mark("one", now=0)
    play.push(800, now=0)
    play.mark("two", now=0)
    play.push(160, now=0)
    play.mark("three", now=0)
    marks = play.clear(now=50 * MS)  # 400 of 1120 bytes played
    assert [(m.name, m.cleared) for m in marks] == [
        ("one", False),
        ("two", True),
        ("three", True),
    ]
    assert all(m.played_ns == 50 * MS for m in marks)
    assert play.discarded == 720 and play.played(1_000 * MS) == 400
    assert play.next_due() is None and play.clears == 1
    play.push(80, now=60 * MS)  # new audio plays from its arrival
    assert play.drained_at() == 70 * MS


def test_playback_rates_are_exact_for_pcm16() -> None:
    """ACS at 24 kHz (48 bytes a ms): 20 ms of audio is due exactly 20 ms on."""
    play = Playback(rate=48)
    play.push(960, now=7)
    play.mark("m", now=7)
    assert play.next_due() == 7 + 20 * MS


# -- the frame schedule --------------------------------------------------------------------


class LateClock:
    """A fake clock whose sleeps overshoot: by ``late`` ns, and once by ``stall`` more."""

    def __init__(self, late: int, stall_at: int = -1, stall: int = 0) -> None:
        self.t = 5_000 * MS
        self.late = late
        self.stall_at = stall_at
        self.stall = stall
        self.sleeps = 0

    def now(self) -> int:
        return self.t

    async def sleep_until(self, deadline: int) -> None:
        self.sleeps += 1
        extra = self.stall if self.sleeps == self.stall_at else 0
        self.t = max(self.t, deadline + self.late + extra)


async def _pace(clock: LateClock, frames: int) -> tuple[Pacer, list[int]]:
    pacer = Pacer(clock)
    sent: list[int] = []

    async def tick(k: int, now: int) -> bool:
        sent.append(now)
        return k + 1 < frames

    await pacer.run(tick)
    return pacer, sent


async def test_schedule_does_not_drift_when_every_wake_up_is_late() -> None:
    """Frame k goes out at t0 + k * 20 ms plus one wake-up's lateness, never the sum."""
    clock = LateClock(late=7 * MS)
    pacer, sent = await _pace(clock, 3_000)  # a minute of audio
    t0 = pacer.t0
    assert len(sent) == 3_000
    assert all(now - (t0 + k * 20 * MS) == 7 * MS for k, now in enumerate(sent))
    assert pacer.lag_max == 7 * MS


async def test_schedule_catches_up_after_a_stall() -> None:
    """A 95 ms stall delays the frames due meanwhile; they go at once, then on time again."""
    clock = LateClock(late=0, stall_at=10, stall=95 * MS)
    pacer, sent = await _pace(clock, 40)
    t0 = pacer.t0
    lags = [now - (t0 + k * 20 * MS) for k, now in enumerate(sent)]
    assert lags[9] == 95 * MS  # the stalled frame (the 10th sleep)
    assert lags[10:14] == [75 * MS, 55 * MS, 35 * MS, 15 * MS]  # sent back to back
    assert set(lags[14:]) == {0}
    assert pacer.lag_max == 95 * MS


# -- the dialects against a local server ----------------------------------------------------


class FakeBridge:
    """The server side of both dialects, scripted by each test: records what arrives."""

    def __init__(self) -> None:
        self.events: list[tuple[int, dict[str, Any]]] = []
        self.form: dict[str, str] = {}
        self.signature_ok = False
        self.token_subject = ""
        self.script: Callable[[web.WebSocketResponse, FakeBridge], Awaitable[None]] | None = None
        self.arrived = asyncio.Event()
        self.closed = asyncio.Event()

    async def voice(self, request: web.Request) -> web.Response:
        form = await request.post()
        self.form = {k: str(v) for k, v in form.items()}
        self.signature_ok = signature.valid(
            TOKEN, request.headers.get("X-Twilio-Signature", ""), str(request.url), form.items()
        )
        if not self.signature_ok:
            return web.Response(status=403)
        url = request.url.with_scheme("ws").with_path("/ws/twilio").with_query(None)
        twiml = (
            '<?xml version="1.0" encoding="UTF-8"?><Response><Connect>'
            f'<Stream url="{url}"><Parameter name="token" value="tok-1"/>'
            '<Parameter name="caller" value="+15550100001"/></Stream></Connect></Response>'
        )
        return web.Response(text=twiml, content_type="text/xml")

    async def stream(self, request: web.Request) -> web.WebSocketResponse:
        if request.path == "/ws/acs":
            grant = tokens.verify(SECRET, request.query.get("token", ""), channel="acs")
            self.token_subject = grant.subject
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        script = asyncio.create_task(self.script(ws, self) if self.script else asyncio.sleep(0))
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                self.events.append((time.perf_counter_ns(), orjson.loads(msg.data)))
                self.arrived.set()
        self.closed.set()
        await script
        return ws

    def of(self, kind: str) -> list[dict[str, Any]]:
        key = "event" if self.events and "event" in self.events[0][1] else "kind"
        return [e for _, e in self.events if e.get(key) == kind]

    async def wait_events(self, n: int) -> None:
        while len(self.events) < n:
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)


@pytest.fixture
async def bridge() -> AsyncIterator[tuple[FakeBridge, str]]:
    fake = FakeBridge()
    app = web.Application()
    app.router.add_post("/twilio/voice", fake.voice)
    app.router.add_get("/ws/twilio", fake.stream)
    app.router.add_get("/ws/acs", fake.stream)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield fake, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def _tone(ms: int) -> PhoneAudio:
    from array import array

    pcm = array("h", [3000 if (i // 4) % 2 else -3000 for i in range(8 * ms)]).tobytes()
    return PhoneAudio.from_pcm16(ULAW, pcm, 8_000)


async def test_twilio_call_signs_the_webhook_and_opens_the_stream(
    bridge: tuple[FakeBridge, str],
) -> None:
    """Webhook signed over the exact URL; connected, start (TwiML parameters), then media
    numbered from 1 with timestamps 20 ms apart; dtmf; stop at hang-up."""
    fake, url = bridge
    call = TwilioCall(url, TOKEN)
    await call.start()
    assert fake.signature_ok and fake.form["CallSid"] == call.call_sid
    await fake.wait_events(8)
    await call.press("5")
    await call.hangup()
    await asyncio.wait_for(fake.closed.wait(), 5)
    connected, start = fake.events[0][1], fake.events[1][1]
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    assert start["sequenceNumber"] == "1" and start["streamSid"] == call.stream_sid
    assert start["start"]["customParameters"] == {"token": "tok-1", "caller": "+15550100001"}
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    media = fake.of("media")
    assert [m["media"]["chunk"] for m in media] == [str(i + 1) for i in range(len(media))]
    assert [m["media"]["timestamp"] for m in media] == [str(20 * i) for i in range(len(media))]
    assert all(base64.b64decode(m["media"]["payload"]) == b"\xff" * 160 for m in media)
    seqs = [int(e["sequenceNumber"]) for _, e in fake.events[1:]]
    assert seqs == list(range(1, len(seqs) + 1))
    assert fake.of("dtmf")[0]["dtmf"] == {"track": "inbound_track", "digit": "5"}
    stop = fake.events[-1][1]
    assert stop["event"] == "stop" and stop["stop"]["callSid"] == call.call_sid
    assert call.metrics().close_code == 1000


async def test_twilio_webhook_refusal_fails_the_call(bridge: tuple[FakeBridge, str]) -> None:
    """A wrong auth token: the webhook answers 403 and the call fails to start."""
    _fake, url = bridge
    call = TwilioCall(url, "wrong-token")
    with pytest.raises(CallFailed, match="403"):
        await call.start()
    await call.hangup()


async def test_media_keeps_real_time_at_the_server(bridge: tuple[FakeBridge, str]) -> None:
    """Fifty frames arrive 20 ms apart on average, none far off its slot (generous bounds
    for a shared machine)."""
    fake, url = bridge
    call = TwilioCall(url, TOKEN)
    await call.start()
    await fake.wait_events(2 + 50)
    await call.hangup()
    arrivals = [t for t, e in fake.events if e.get("event") == "media"][:50]
    t0 = arrivals[0]
    offsets = [(t - t0) / MS - 20 * k for k, t in enumerate(arrivals)]
    assert abs(offsets[-1]) < 60  # no drift over a second
    assert max(abs(o) for o in offsets) < 100


async def test_twilio_playback_marks_and_clear(bridge: tuple[FakeBridge, str]) -> None:
    """Agent audio plays in real time: a mark after 300 ms of it is echoed no sooner; a
    clear then echoes the pending mark at once and discards the rest."""
    fake, url = bridge
    sent: dict[str, int] = {}

    async def script(ws: web.WebSocketResponse, _fake: FakeBridge) -> None:
        await fake.wait_events(2)
        sid = fake.events[1][1]["streamSid"]

        async def send(event: dict[str, Any]) -> None:
            await ws.send_str(orjson.dumps({"streamSid": sid, **event}).decode())

        payload = base64.b64encode(b"\x10" * 2_400).decode()  # 300 ms
        sent["t"] = time.perf_counter_ns()
        await send({"event": "media", "media": {"payload": payload}})
        await send({"event": "mark", "mark": {"name": "first"}})
        await send({"event": "media", "media": {"payload": payload}})
        await send({"event": "mark", "mark": {"name": "second"}})

    fake.script = script
    call = TwilioCall(url, TOKEN)
    await call.start()
    assert await call.wait_marks(1, within_s=5)
    first = call.playback.done[0]
    assert first.name == "first" and not first.cleared
    assert first.played_ns - first.queued_ns >= 290 * MS
    await asyncio.sleep(0.05)
    await call._on_event({"event": "clear", "streamSid": call.stream_sid}, call.clock.now())
    assert [(m.name, m.cleared) for m in call.playback.done] == [
        ("first", False),
        ("second", True),
    ]
    await fake.wait_events(len(fake.events) + 1)
    await call.hangup()
    echoed = fake.of("mark")
    assert [m["mark"]["name"] for m in echoed] == ["first", "second"]
    metrics = call.metrics()
    assert metrics.clears == 1 and metrics.audio_bytes_received == 4_800
    assert 0 < metrics.audio_bytes_discarded < 2_400


async def test_latency_is_timed_from_the_end_of_speech(bridge: tuple[FakeBridge, str]) -> None:
    """The first agent audio after an utterance's last frame gives its latency."""
    fake, url = bridge

    async def script(ws: web.WebSocketResponse, _fake: FakeBridge) -> None:
        await fake.wait_events(3)
        sid = fake.events[1][1]["streamSid"]
        quiet = base64.b64encode(b"\xff" * 160).decode()
        while True:
            media = fake.of("media")
            loud = [m for m in media if m["media"]["payload"] != quiet]
            if loud and len(media) > int(loud[-1]["media"]["chunk"]) + 5:
                break  # 100 ms of silence after the speech
            await fake.wait_events(len(fake.events) + 1)
        payload = base64.b64encode(b"\x20" * 160).decode()
        await ws.send_str(
            orjson.dumps(
                {"event": "media", "streamSid": sid, "media": {"payload": payload}}
            ).decode()
        )

    fake.script = script
    call = TwilioCall(url, TOKEN)
    await call.start()
    said = await call.speak(_tone(200))
    assert await call.wait_first_audio(said, within_s=5)
    await call.hangup()
    assert said.latency_ms is not None and 90 <= said.latency_ms < 1_000
    assert call.metrics().speech_frames_sent == 10


async def test_acs_call_streams_pcm_and_stops_audio(bridge: tuple[FakeBridge, str]) -> None:
    """Token on the URL, AudioMetadata first, AudioData with silent flags; StopAudio
    empties playback; hanging up closes the socket."""
    fake, url = bridge

    async def script(ws: web.WebSocketResponse, _fake: FakeBridge) -> None:
        await fake.wait_events(3)
        data = base64.b64encode(bytes(640 * 25)).decode()  # 500 ms at 16 kHz
        await ws.send_str(orjson.dumps({"kind": "AudioData", "audioData": {"data": data}}).decode())
        await asyncio.sleep(0.1)
        await ws.send_str(
            orjson.dumps({"kind": "StopAudio", "audioData": None, "stopAudio": {}}).decode()
        )

    fake.script = script
    call = AcsCall.with_secret(url, SECRET)
    await call.start()
    assert fake.token_subject == call.call_id
    call.say(PhoneAudio.from_pcm16(call.fmt, b"\x00\x10" * 1_600, 16_000))
    assert await call.wait_cleared(1, within_s=5)
    await call.hangup()
    meta = fake.events[0][1]
    assert meta["kind"] == "AudioMetadata"
    assert meta["audioMetadata"]["sampleRate"] == 16_000 and meta["audioMetadata"]["length"] == 640
    frames = fake.of("AudioData")
    silent = [f["audioData"]["silent"] for f in frames]
    assert silent[:5] == [False] * 5 and silent[5:] == [True] * (len(silent) - 5)
    assert base64.b64decode(frames[-1]["audioData"]["data"]) == bytes(640)
    assert all(len(base64.b64decode(f["audioData"]["data"])) == 640 for f in frames)
    assert frames[0]["audioData"]["timestamp"].endswith("Z")
    metrics = call.metrics()
    assert metrics.clears == 1
    assert 8_000 - 2 * 640 < metrics.audio_bytes_discarded <= 16_000 - 2_000


def test_twiml_parsing() -> None:
    """The Stream URL and its Parameters; TwiML without a Stream is a failed call."""
    url, params = parse_twiml(
        '<Response><Connect><Stream url="ws://127.0.0.1:1/ws/twilio">'
        '<Parameter name="token" value="t"/></Stream></Connect></Response>'
    )
    assert url == "ws://127.0.0.1:1/ws/twilio" and params == {"token": "t"}
    with pytest.raises(CallFailed):
        parse_twiml("<Response><Say>hi</Say></Response>")


def test_speech_span_survives_mu_law() -> None:
    """The span of a tone framed by silence is found in its μ-law encoding."""
    quiet = b"\xff" * 80
    audio = _tone(50).data
    assert speech_span(ULAW, quiet + audio + quiet) == (80, 80 + len(audio))
    assert speech_span(ULAW, quiet) is None


# -- the command line ---------------------------------------------------------------------


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_loadtest_arguments(parser)
    return parser.parse_args(["--url", "ws://127.0.0.1:9/ws/voice", *argv])


def test_channel_option() -> None:
    """--channel picks the provider (conversation by default), with its secret from a flag
    or the environment; the browser stays the default, with mirror."""
    assert config_from_args(_args(), {}).channel == "browser"
    assert config_from_args(_args(), {}).scenario == "mirror"
    cfg = config_from_args(_args("--channel", "twilio"), {"TWILIO_AUTH_TOKEN": "tok"})
    assert (cfg.channel, cfg.scenario, cfg.twilio_auth_token) == ("twilio", "conversation", "tok")
    assert "tok" not in repr(cfg)
    acs = config_from_args(
        _args("--channel", "acs", "--phone-token-secret", "s", "--acs-sample-rate", "24000"), {}
    )
    assert (acs.channel, acs.phone_token_secret, acs.acs_sample_rate) == ("acs", "s", 24_000)


@pytest.mark.parametrize(
    ("argv", "env", "error"),
    [
        (["--channel", "twilio"], {}, "TWILIO_AUTH_TOKEN"),
        (["--channel", "acs"], {}, "PHONE_TOKEN_SECRET"),
        (["--channel", "twilio", "--scenario", "mirror"], {"TWILIO_AUTH_TOKEN": "t"}, "mirror"),
        (["--channel", "twilio", "--frame-ms", "40"], {"TWILIO_AUTH_TOKEN": "t"}, "20 ms"),
    ],
)
def test_channel_option_refuses(argv: list[str], env: dict[str, str], error: str) -> None:
    """What a phone channel cannot do is refused with the reason."""
    with pytest.raises(ValueError, match=error):
        config_from_args(_args(*argv), env)


# -- the bench's phone rows ----------------------------------------------------------------


def test_bench_phone_rows_sit_next_to_the_browser_step_of_the_same_size() -> None:
    """Cost per call of a phone run beside the browser conversation's at the same count;
    caller audio lost is sent minus what the server relayed."""
    from pathlib import Path

    from voicebridge.loadtest import capacity

    def run(path: str, sessions: int, **report: Any) -> capacity.Run:
        return capacity.Run(path, capacity.CONVERSATION, sessions, report, 0.1)

    browser = run(
        capacity.THIS_TREE,
        50,
        server_cpu_pct_per_session=0.2,
        server_rss_per_session_bytes=90_000.0,
        response_latency_p50_ms=510.0,
        response_latency_p99_ms=540.0,
    )
    step = capacity.Step(
        capacity.CONVERSATION, 50, run(capacity.DIRECT, 50), (browser,), True, "ok"
    )
    twilio = run(
        "twilio",
        50,
        server_cpu_pct_per_session=0.3,
        server_rss_per_session_bytes=50_000.0,
        response_latency_p50_ms=505.0,
        response_latency_p99_ms=560.0,
        answers_damaged=0,
        answers_complete=80,
        frames_lost=0,
        caller_audio_sent_s=100.0,
        caller_audio_relayed_s=99.5,
        barge_ins_cleared=9,
        barge_ins=9,
        sessions_failed=0,
        sessions_dropped=0,
        loadgen_cpu_pct=20.0,
        emulator_cpu_pct=70.0,
    )
    cfg = capacity.BenchConfig(
        mirror_steps=(),
        conversation_steps=(50,),
        seconds=10.0,
        conversation_seconds=25.0,
        frame_ms=20,
        threshold_ms=20.0,
        out=Path("results.md"),
        twilio_steps=(50, 100),
    )
    results = capacity.BenchResults(cfg=cfg, steps=[step], phone=[twilio, run("acs", 100)])
    rows = capacity.phone_rows(results)
    twilio_row = next(r for r in rows if r.startswith("| twilio"))
    assert twilio_row.startswith(
        "| twilio | 50 | 0.300 (0.200) | 50.0 (90.0) | 505 / 560 (510 / 540) | 0 of 80 | 0"
        " | 0.50 | 9 of 9 | 0 / 0 | 20% | 70% (harness limit) |"
    )
    acs_row = next(r for r in rows if r.startswith("| acs"))
    assert acs_row.startswith("| acs | 100 | - (-) | - (-) | - / - (- / -)")
    assert "--twilio-steps 50,100 --acs-steps 0" in capacity.bench_args(cfg)
    empty = capacity.BenchResults(cfg=cfg, steps=[step])
    assert capacity.phone_rows(empty)[0].startswith("Not run")
