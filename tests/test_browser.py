"""The browser client in a real headless Chromium against a real ``python -m voicebridge serve``.

Chromium's fake capture device plays a WAV file as the microphone (looping it), so the page
goes through the same path as a person: getUserMedia, the capture worklet, the WebSocket,
the emulator's VAD and echo answer, and the playback worklet.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests import speech
from tests.server_process import ServerProcess

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
SPEECH = "Hello, I would like to hear about your offer."
FRAME_BYTES = 960  # 20 ms of 24 kHz PCM16 mono
WAIT_MS = 45_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


# -- audio and server ----------------------------------------------------------------------


def _write_silence_wav(path: Path, seconds: float = 5.0, rate: int = 48_000) -> Path:
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(rate)
        wav.writeframes(bytes(2 * round(seconds * rate)))
    return path


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("browser-audio")


@pytest.fixture(scope="module")
def speech_wav(audio_dir: Path) -> Path:
    """The sentence at 48 kHz, 1 s of silence before and 3 s after (the fake mic loops it)."""
    if not speech.tools_available():
        pytest.skip("espeak-ng and sox are needed to make test speech")
    return speech.make_speech_wav(
        SPEECH, audio_dir / "speech.wav", rate=48_000, lead_s=1.0, trail_s=3.0
    )


@pytest.fixture(scope="module")
def silence_wav(audio_dir: Path) -> Path:
    return _write_silence_wav(audio_dir / "silence.wav")


async def _start_server(tmp_path: Path, **env: str) -> ServerProcess:
    return await ServerProcess(
        tmp_path, VOICELIVE_BACKEND="emulator", SHUTDOWN_GRACE_S="1", **env
    ).start()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """``python -m voicebridge serve`` on the built-in emulator, on a free port."""
    srv = await _start_server(tmp_path)
    yield srv
    await srv.stop()


# -- the browser ---------------------------------------------------------------------------


def _chromium_args(capture_wav: Path) -> list[str]:
    return [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={capture_wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


@contextlib.asynccontextmanager
async def _page(capture_wav: Path, base_url: str) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=_chromium_args(capture_wav)
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1200, "height": 860},
                base_url=base_url,
                reduced_motion="reduce",  # no half-faded bubbles in the screenshot
            )
            await context.grant_permissions(["microphone"], origin=base_url)
            page = await context.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            yield page
            assert not page_errors, f"JavaScript errors on the page: {page_errors}"
        finally:
            await browser.close()


async def _state(page: Any) -> str:
    """Everything the page knows, for assertion messages."""
    return str(
        await page.evaluate(
            """() => JSON.stringify({
                status: document.getElementById('status-pill').dataset.status,
                label: document.getElementById('status').textContent,
                stats: window.voicebridge.stats,
                statusHistory: window.voicebridge.statusHistory,
                transcript: window.voicebridge.transcript,
                errors: window.voicebridge.errors,
            })"""
        )
    )


async def _wait(page: Any, expression: str, what: str, arg: Any = None) -> None:
    try:
        await page.wait_for_function(expression, arg=arg, timeout=WAIT_MS, polling=100)
    except playwright_api.TimeoutError:
        pytest.fail(f"timed out waiting for {what}; page state: {await _state(page)}")


async def _wait_status(page: Any, value: str) -> None:
    """Wait for the status pill to show `value`: a server status, or the page's own idle,
    connecting, reconnecting, stopped (the user's Stop), ended or failed."""
    await _wait(
        page,
        "(v) => document.getElementById('status-pill').dataset.status === v",
        f"status {value!r}",
        arg=value,
    )


# What the page holds open and what it sends, seen from inside the page. The page's own code
# is untouched: these wrap the browser APIs it calls.
_INSTRUMENT = """
(() => {
    const live = { contexts: [], streams: [], sockets: [] };
    window.__live = live;
    // Playback reports the page sent: {socket, played, responseId, announced, responseMs}.
    // responseMs is the audio received so far of the response the report counts: the one
    // it names, or (no response_id) the one begun by the first audio after agent_speaking.
    window.__reports = [];

    const NativeAudioContext = window.AudioContext;
    window.AudioContext = class extends NativeAudioContext {
        constructor(...args) {
            super(...args);
            live.contexts.push(this);
        }
    };

    const NativeWebSocket = window.WebSocket;
    window.WebSocket = class extends NativeWebSocket {
        constructor(...args) {
            super(...args);
            this.index = live.sockets.push(this) - 1;
            this.receivedMs = 0; // agent audio received on this socket
            this.responseFromMs = 0; // where the current response's audio starts
            this.speaking = false;
            this.announced = []; // response ids of audio_start messages, in order
            this.byResponse = new Map(); // response id -> its audio received, in ms
            this.current = null; // the id of the response binary frames belong to
            this.addEventListener('message', (e) => {
                if (typeof e.data !== 'string') {
                    if (this.speaking) {
                        // The first audio after status agent_speaking starts a response.
                        this.responseFromMs = this.receivedMs;
                        this.speaking = false;
                    }
                    const ms = e.data.byteLength / 48;
                    this.receivedMs += ms;
                    if (this.current !== null) {
                        this.byResponse.set(this.current, this.byResponse.get(this.current) + ms);
                    }
                    return;
                }
                const msg = JSON.parse(e.data);
                if (msg.type === 'status' && msg.status === 'agent_speaking') this.speaking = true;
                if (msg.type === 'audio_start') {
                    this.current = msg.response_id;
                    this.announced.push(msg.response_id);
                    this.byResponse.set(msg.response_id, 0);
                }
                if (msg.type === 'clear_audio') this.current = null;
            });
        }
        send(data) {
            if (typeof data === 'string') {
                const msg = JSON.parse(data);
                if (msg.type === 'playback') {
                    const id = msg.response_id ?? null;
                    window.__reports.push({
                        socket: this.index,
                        played: msg.played_ms,
                        responseId: id,
                        announced: id !== null && this.byResponse.has(id),
                        responseMs:
                            id === null
                                ? this.receivedMs - this.responseFromMs
                                : this.byResponse.get(id) ?? 0,
                    });
                }
            }
            super.send(data);
        }
    };

    // The microphone prompt stays open until the test answers it (window.__answerPrompt).
    const getUserMedia = navigator.mediaDevices.getUserMedia.bind(navigator.mediaDevices);
    let holdPrompt = false;
    const waiting = [];
    window.__promptsOpen = 0;
    window.__holdPrompt = () => { holdPrompt = true; };
    window.__answerPrompt = () => {
        holdPrompt = false;
        waiting.splice(0).forEach((go) => go());
    };
    navigator.mediaDevices.getUserMedia = async (constraints) => {
        if (holdPrompt) {
            window.__promptsOpen += 1;
            await new Promise((go) => waiting.push(go));
            window.__promptsOpen -= 1;
        }
        const stream = await getUserMedia(constraints);
        live.streams.push(stream);
        return stream;
    };

    window.__open = () => ({
        tracks: live.streams.flatMap((s) => s.getTracks()).filter((t) => t.readyState === 'live')
            .length,
        contexts: live.contexts.filter((c) => c.state !== 'closed').length,
        sockets: live.sockets.filter((w) => w.readyState <= 1).length,
    });
})();
"""


async def _server_sessions(srv: ServerProcess) -> int:
    async with aiohttp.ClientSession() as http, http.get(f"{srv.url}/sessions") as resp:
        assert resp.status == 200
        count: int = (await resp.json())["count"]
        return count


async def _wait_server_sessions(srv: ServerProcess, want: int) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while (count := await _server_sessions(srv)) != want:
        if time.monotonic() > deadline:
            pytest.fail(f"the server has {count} sessions, expected {want}")
        await asyncio.sleep(0.1)


# -- tests ---------------------------------------------------------------------------------


async def test_spoken_turn_round_trip(
    server: ServerProcess, speech_wav: Path, artifacts_dir: Path
) -> None:
    """Speech into the fake microphone comes back as the agent's voice and both transcripts."""
    async with _page(speech_wav, server.url) as page:
        await page.goto("/")
        assert page.url.endswith("/static/index.html")
        banner = page.locator("#emulator-banner")
        await banner.wait_for(state="visible", timeout=10_000)
        assert "emulator" in (await banner.text_content() or "").lower()

        await page.click("#start")
        await _wait(
            page,
            """() => {
                const t = window.voicebridge.transcript;
                const u = t.findIndex((l) => l.role === 'user');
                return u >= 0 && t.slice(u + 1).some((l) => l.role === 'agent');
            }""",
            "a user line followed by an agent line",
        )
        await _wait(
            page,
            """() => {
                const want = ['listening', 'processing', 'agent_speaking'];
                let i = 0;
                for (const s of window.voicebridge.statusHistory) if (s === want[i]) i++;
                return i === want.length;
            }""",
            "listening, processing, agent_speaking in order",
        )
        await _wait(page, "() => window.voicebridge.stats.agentAudioMsPlayed > 0", "playback")

        stats = await page.evaluate("() => ({...window.voicebridge.stats})")
        assert stats["framesSent"] > 0
        assert stats["bytesSent"] == FRAME_BYTES * stats["framesSent"]
        assert stats["agentAudioMsReceived"] > 0
        assert stats["captureRate"] > 0
        assert stats["maxFrameRms"] > 0.01, "the fake microphone delivered only silence"

        constraints = await page.evaluate(
            """() => {
                const s = window.voicebridge.client.mic.stream.getAudioTracks()[0].getSettings();
                return {ec: s.echoCancellation, ns: s.noiseSuppression, agc: s.autoGainControl};
            }"""
        )
        assert constraints == {"ec": True, "ns": True, "agc": True}

        assert await page.locator("#transcript .bubble-user").count() >= 1
        assert await page.locator("#transcript .bubble-agent").count() >= 1
        assert await page.locator("#stop").is_enabled()
        assert not await page.locator("#start").is_enabled()

        await page.screenshot(path=str(artifacts_dir / "browser.png"), full_page=True)

        await page.click("#stop")
        await _wait_status(page, "stopped")
        assert await page.locator("#start").is_enabled()
        errors = await page.evaluate("() => window.voicebridge.errors")
        assert [e for e in errors if e["kind"] == "error"] == []


async def test_typed_message_gets_an_answer(server: ServerProcess, silence_wav: Path) -> None:
    """A typed message is shown as the user's line and answered by the agent."""
    async with _page(silence_wav, server.url) as page:
        await page.goto("/")
        await page.click("#start")
        await _wait(page, "() => window.voicebridge.client.sessionId !== null", "session_started")

        message = "What are your opening hours?"
        await page.fill("#text-input", message)
        await page.click("#send-text")
        await _wait(
            page,
            """(msg) => {
                const t = window.voicebridge.transcript;
                const u = t.findIndex((l) => l.role === 'user' && l.text === msg);
                const answered = (l) => l.role === 'agent' && l.text.includes(msg);
                return u >= 0 && t.slice(u + 1).some(answered);
            }""",
            "the agent's answer to the typed message",
            arg=message,
        )
        assert await page.input_value("#text-input") == ""
        user = page.locator("#transcript .bubble-user", has_text=message)
        assert await user.count() == 1
        agent = page.locator("#transcript .bubble-agent", has_text=message)
        assert await agent.count() >= 1

        await page.click("#stop")
        await _wait_status(page, "stopped")


async def test_reconnects_after_server_restart(tmp_path: Path, silence_wav: Path) -> None:
    """A server restart (close 1001) shows reconnecting, then resumes with one socket, and
    the transcript marks where the new conversation begins."""
    srv = await _start_server(tmp_path)
    try:
        async with _page(silence_wav, srv.url) as page:
            await page.goto("/")
            await page.click("#start")
            await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
            first_session = await page.evaluate("() => window.voicebridge.client.sessionId")
            await page.fill("#text-input", "Before the restart")
            await page.click("#send-text")
            await page.locator("#transcript .bubble-user").wait_for()

            await srv.stop()
            await _wait_status(page, "reconnecting")
            await srv.start()  # same port
            await _wait(
                page,
                """(first) => {
                    const c = window.voicebridge.client;
                    return c.state === 'open' && c.sessionId && c.sessionId !== first;
                }""",
                "a new session after the restart",
                arg=first_session,
            )
            divider = page.locator("#transcript .divider")
            await divider.wait_for()
            assert "New conversation" in (await divider.text_content() or "")
            assert await divider.get_attribute("data-reason") == "reconnect"
            # One capture graph and one socket: frames go out at 50 per second, not 100.
            before = await page.evaluate("() => window.voicebridge.stats.framesSent")
            started = time.monotonic()
            await page.wait_for_timeout(2000)
            after = await page.evaluate("() => window.voicebridge.stats.framesSent")
            rate = (after - before) / (time.monotonic() - started)
            assert 35 <= rate <= 65, f"{rate:.1f} frames/s after reconnecting"

            await page.click("#stop")
            await _wait_status(page, "stopped")
    finally:
        await srv.stop()


async def test_barge_in_stops_playback(server: ServerProcess, audio_dir: Path) -> None:
    """Talking over the agent clears its queued voice at once (clear_audio)."""
    if not speech.tools_available():
        pytest.skip("espeak-ng and sox are needed to make test speech")
    # Little trailing silence: the looped sentence starts again while the echo still plays.
    wav = speech.make_speech_wav(
        SPEECH, audio_dir / "barge.wav", rate=48_000, lead_s=0.3, trail_s=0.9
    )
    async with _page(wav, server.url) as page:
        await page.goto("/")
        await page.evaluate(
            """() => window.voicebridge.client.addEventListener('clear', () => {
                const s = window.voicebridge.stats;
                window.afterClear = {played: s.agentAudioMsPlayed};
            })"""
        )
        await page.click("#start")
        await _wait(page, "() => window.voicebridge.stats.clearAudioCount > 0", "a barge-in")
        await _wait(
            page,
            "() => window.voicebridge.stats.agentAudioMsQueued === 0",
            "the playback queue to be dropped",
        )
        stats = await page.evaluate("() => ({...window.voicebridge.stats})")
        at_clear = await page.evaluate("() => window.afterClear")
        assert stats["agentAudioMsPlayed"] < stats["agentAudioMsReceived"]
        # What was already in the audio device's pipeline may finish; nothing more.
        assert stats["agentAudioMsPlayed"] - at_clear["played"] < 150, (stats, at_clear)
        await page.click("#stop")
        await _wait_status(page, "stopped")


async def test_client_token_is_required_and_sent(tmp_path: Path, silence_wav: Path) -> None:
    """With CLIENT_TOKEN set, a wrong token shows a clear error and the right one connects."""
    srv = await _start_server(tmp_path, CLIENT_TOKEN="s3cret-token")
    try:
        async with _page(silence_wav, srv.url) as page:
            socket_urls: list[str] = []
            page.on("websocket", lambda ws: socket_urls.append(ws.url))
            await page.goto("/")
            await page.locator("#token").wait_for(state="visible")
            await _wait(
                page, "() => window.voicebridge.config !== null", "the server configuration"
            )
            assert await page.evaluate("() => window.voicebridge.config.client_token_required")

            await page.fill("#token", "wrong-token")
            await page.click("#start")
            await _wait_status(page, "failed")
            errors = page.locator("#errors")
            await errors.get_by_text("token rejected or origin not allowed").wait_for()
            assert await page.evaluate("() => window.voicebridge.client.sessionId") is None

            await page.fill("#token", "s3cret-token")
            await page.click("#start")
            await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
            assert await errors.locator(".toast").count() == 0, "old errors were not cleared"
            await page.click("#stop")
            await _wait_status(page, "stopped")
        assert len(socket_urls) == 2, socket_urls
        assert not [u for u in socket_urls if "token" in u], socket_urls
    finally:
        await srv.stop()
    assert "s3cret-token" not in srv.log_path.read_text(), "the token leaked into the log"
    assert "wrong-token" not in srv.log_path.read_text(), "the token leaked into the log"


async def test_token_in_page_link_is_used_and_hidden(tmp_path: Path, silence_wav: Path) -> None:
    """A link with ?token= fills the field, leaves the address bar, and connects."""
    srv = await _start_server(tmp_path, CLIENT_TOKEN="link-token-42")
    try:
        async with _page(silence_wav, srv.url) as page:
            socket_urls: list[str] = []
            page.on("websocket", lambda ws: socket_urls.append(ws.url))
            await page.goto("/static/index.html?lang=en&token=link-token-42")
            await _wait(
                page, "() => window.voicebridge.config !== null", "the server configuration"
            )
            assert await page.input_value("#token") == "link-token-42"
            assert "token" not in page.url, page.url
            assert "lang=en" in page.url, page.url

            await page.click("#start")
            await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
            await page.click("#stop")
            await _wait_status(page, "stopped")
        assert socket_urls and not [u for u in socket_urls if "token" in u], socket_urls
    finally:
        await srv.stop()
    assert "link-token-42" not in srv.log_path.read_text(), "the token leaked into the log"


async def test_own_page_connects_when_other_origins_are_allowed(
    tmp_path: Path, silence_wav: Path
) -> None:
    """With ALLOWED_ORIGINS naming other sites, the page the server serves itself still
    connects: its own origin is always allowed (a refused upgrade's error is shown as in
    test_client_token_is_required_and_sent)."""
    srv = await _start_server(tmp_path, ALLOWED_ORIGINS="https://voice.example.com")
    try:
        async with _page(silence_wav, srv.url) as page:
            await page.goto("/")
            await page.click("#start")
            await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
            assert await page.locator("#errors .toast").count() == 0
            await page.click("#stop")
            await _wait_status(page, "stopped")
    finally:
        await srv.stop()


async def test_capture_resampler_rejects_aliases(server: ServerProcess, silence_wav: Path) -> None:
    """The page's 48 kHz -> 24 kHz resampler passes speech and removes what would alias."""
    async with _page(silence_wav, server.url) as page:
        await page.goto("/")
        gains = await page.evaluate(
            """async () => {
                const { StreamingResampler } = await import('/static/audio/resampler.js');
                const gain = (freq, rate) => {
                    const r = new StreamingResampler(rate, 24000);
                    const x = new Float32Array(rate);
                    const w = 2 * Math.PI * freq / rate;
                    for (let i = 0; i < x.length; i++) x[i] = 0.5 * Math.sin(w * i);
                    const out = [];
                    for (let i = 0; i < x.length; i += 128) {
                        out.push(...r.process(x.subarray(i, i + 128)));
                    }
                    const y = out.slice(2400);
                    const rms = (a) => Math.sqrt(a.reduce((s, v) => s + v * v, 0) / a.length);
                    return 20 * Math.log10(rms(y) / rms(x) + 1e-12);
                };
                return {
                    pass48: gain(1000, 48000), stop48: gain(15000, 48000),
                    pass44: gain(3000, 44100), stop44: gain(17000, 44100),
                };
            }"""
        )
    assert abs(gains["pass48"]) < 0.1, gains
    assert abs(gains["pass44"]) < 0.1, gains
    assert gains["stop48"] < -60, gains
    assert gains["stop44"] < -60, gains


async def test_stop_and_start_again_while_the_mic_prompt_is_open(
    server: ServerProcess, silence_wav: Path
) -> None:
    """Start, Stop and Start again before the microphone prompt is answered: one session.

    Exactly one microphone track, two audio contexts (microphone and player) and one socket
    are open afterwards, the server has one session, and after Stop nothing is left open.
    """
    async with _page(silence_wav, server.url) as page:
        await page.add_init_script(_INSTRUMENT)
        await page.goto("/")
        await page.evaluate("() => window.__holdPrompt()")
        await page.click("#start")
        await _wait(page, "() => window.__promptsOpen === 1", "the microphone prompt")
        await page.click("#stop")
        await _wait_status(page, "stopped")
        assert await page.locator("#start").is_enabled()
        await page.click("#start")
        await page.evaluate("() => window.__answerPrompt()")

        await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
        await _wait(page, "() => window.voicebridge.client.state === 'open'", "an open socket")
        await _wait(
            page,
            "() => window.voicebridge.stats.framesSent > 25",
            "microphone frames on the socket",
        )
        assert await page.evaluate("() => window.__open()") == {
            "tracks": 1,
            "contexts": 2,
            "sockets": 1,
        }
        assert await _server_sessions(server) == 1
        assert await page.locator("#stop").is_enabled()

        await page.click("#stop")
        await _wait_status(page, "stopped")
        await _wait(
            page,
            """() => {
                const o = window.__open();
                return o.tracks === 0 && o.contexts === 0 && o.sockets === 0;
            }""",
            "every track, audio context and socket to be closed",
        )
        await _wait_server_sessions(server, 0)


async def test_playback_reports_in_a_second_session(server: ServerProcess, audio_dir: Path) -> None:
    """A second session on the same page reports the agent audio it really played.

    Each ``playback`` report counts the current response only: never more than the audio
    of that response received so far, and all of it once the response has played out.
    """
    if not speech.tools_available():
        pytest.skip("espeak-ng and sox are needed to make test speech")
    # Long trailing silence: the echo plays out before the looped sentence starts again.
    wav = speech.make_speech_wav(
        SPEECH, audio_dir / "turns.wav", rate=48_000, lead_s=0.5, trail_s=5.0
    )
    async with _page(wav, server.url) as page:
        await page.add_init_script(_INSTRUMENT)
        await page.goto("/")
        for session in (0, 1):
            await page.click("#start")
            await _wait(
                page,
                """(n) => window.__reports.some(
                    (r) => r.socket === n && r.played >= 1000 && r.responseMs - r.played < 100
                )""",
                f"a report of a whole response played out in session {session + 1}",
                arg=session,
            )
            await page.click("#stop")
            await _wait_status(page, "stopped")
        reports = await page.evaluate("() => window.__reports")
        assert {r["socket"] for r in reports} == {0, 1}
        too_much = [r for r in reports if r["played"] > r["responseMs"] + 1]
        assert not too_much, too_much
        stats = await page.evaluate("() => ({...window.voicebridge.stats})")
        assert 0 < stats["agentAudioMsPlayed"] <= stats["agentAudioMsReceived"], stats


async def test_mic_frames_are_dropped_while_the_network_stalls(
    server: ServerProcess, silence_wav: Path
) -> None:
    """With over a second of audio stuck in the socket's send buffer, mic frames are dropped
    (and counted) instead of queued; sending resumes when the buffer drains.

    The stall is simulated by making the socket report a full send buffer.
    """
    async with _page(silence_wav, server.url) as page:
        await page.goto("/")
        await page.click("#start")
        await _wait(page, "() => window.voicebridge.stats.framesSent > 10", "frames sent")
        sent_at_stall = await page.evaluate(
            """() => {
                const ws = window.voicebridge.client.ws;
                const full = { get: () => 96000, configurable: true };
                Object.defineProperty(ws, 'bufferedAmount', full);
                return window.voicebridge.stats.framesSent;
            }"""
        )
        await _wait(
            page,
            "() => window.voicebridge.stats.framesDroppedStalled >= 25",
            "frames dropped during the stall",
        )
        stats = await page.evaluate("() => ({...window.voicebridge.stats})")
        assert stats["framesSent"] == sent_at_stall, stats
        assert stats["framesDropped"] >= stats["framesDroppedStalled"], stats

        await page.evaluate("() => { delete window.voicebridge.client.ws.bufferedAmount; }")
        await _wait(
            page,
            "(n) => window.voicebridge.stats.framesSent > n + 10",
            "frames sent again after the stall",
            arg=sent_at_stall,
        )
        await page.click("#stop")
        await _wait_status(page, "stopped")


async def test_status_history_and_transcript_are_capped(
    server: ServerProcess, silence_wav: Path
) -> None:
    """A long session does not grow the page's history without limit: the last 500 stay."""
    async with _page(silence_wav, server.url) as page:
        await page.goto("/")
        result = await page.evaluate(
            """() => {
                const c = window.voicebridge.client;
                for (let i = 0; i < 700; i++) {
                    c.onServerText(JSON.stringify({ type: 'status', status: `s${i}` }));
                    c.addLine(i % 2 ? 'agent' : 'user', `line ${i}`);
                }
                const v = window.voicebridge;
                return {
                    statuses: v.statusHistory.length,
                    lastStatus: v.statusHistory[v.statusHistory.length - 1],
                    firstStatus: v.statusHistory[0],
                    lines: v.transcript.length,
                    lastLine: v.transcript[v.transcript.length - 1],
                    same: v.statusHistory === c.statusHistory && v.transcript === c.transcript,
                };
            }"""
        )
        bubbles = await page.locator("#transcript .bubble").count()
        last_bubble = await page.locator("#transcript .bubble").last.text_content()
    assert bubbles == 500
    assert "line 699" in (last_bubble or "")
    assert result == {
        "statuses": 500,
        "lastStatus": "s699",
        "firstStatus": "s200",
        "lines": 500,
        "lastLine": {"role": "agent", "text": "line 699"},
        "same": True,
    }


async def test_playback_reports_name_the_response(server: ServerProcess, audio_dir: Path) -> None:
    """Against the real server, each playback report names a response announced by
    audio_start and never counts more than that response's audio received so far."""
    if not speech.tools_available():
        pytest.skip("espeak-ng and sox are needed to make test speech")
    wav = speech.make_speech_wav(
        SPEECH, audio_dir / "named.wav", rate=48_000, lead_s=0.5, trail_s=5.0
    )
    async with _page(wav, server.url) as page:
        await page.add_init_script(_INSTRUMENT)
        await page.goto("/")
        await page.click("#start")
        await _wait(
            page,
            """() => window.__reports.some(
                (r) => r.responseId !== null && r.played >= 1000 && r.responseMs - r.played < 100
            )""",
            "a report naming a response that played out whole",
        )
        await page.click("#stop")
        await _wait_status(page, "stopped")
        reports = await page.evaluate("() => window.__reports")
        announced = await page.evaluate("() => window.__live.sockets[0].announced")
    assert announced, "the server sent no audio_start"
    assert all(r["responseId"] is not None for r in reports), reports
    assert all(r["announced"] for r in reports), reports
    assert {r["responseId"] for r in reports} <= set(announced), (reports, announced)
    too_much = [r for r in reports if r["played"] > r["responseMs"] + 1]
    assert not too_much, too_much


# A stand-in for the server's socket, driven by the test: window.__socket() is the latest
# socket, with .open(), .text(obj), .audio(ms) and .close(code) to play the server's part.
# What the page sends as text is kept in window.__sent, each with the index of its socket
# as __socket.
_FAKE_SOCKET = """
(() => {
    window.__sent = [];
    window.__sockets = [];
    window.__socket = () => window.__sockets[window.__sockets.length - 1];
    class FakeSocket {
        static CONNECTING = 0;
        static OPEN = 1;
        static CLOSING = 2;
        static CLOSED = 3;
        constructor(url, protocols) {
            this.url = url;
            this.protocol = 'voicebridge';
            this.readyState = 0;
            this.bufferedAmount = 0;
            this.binaryType = 'blob';
            this.onopen = this.onmessage = this.onerror = this.onclose = null;
            this.index = window.__sockets.push(this) - 1;
        }
        open() {
            this.readyState = 1;
            if (this.onopen) this.onopen({});
        }
        text(msg) {
            if (this.onmessage) this.onmessage({ data: JSON.stringify(msg) });
        }
        audio(ms) {
            // 20 ms frames of quiet noise, as the server sends them.
            for (let left = ms; left > 0; left -= 20) {
                const pcm = new Int16Array(24 * Math.min(20, left));
                for (let i = 0; i < pcm.length; i++) pcm[i] = (i % 7) - 3;
                if (this.onmessage) this.onmessage({ data: pcm.buffer });
            }
        }
        close(code) {
            const wasOpen = this.readyState <= 1;
            this.readyState = 3;
            if (wasOpen && this.onclose) this.onclose({ code, reason: '' });
        }
        send(data) {
            if (typeof data === 'string') {
                window.__sent.push({ ...JSON.parse(data), __socket: this.index });
            }
        }
    }
    window.WebSocket = FakeSocket;
})();
"""


async def _fake_session(page: Any) -> None:
    """Start the page's client on a fresh fake socket and open it."""
    await page.evaluate("() => { window.__sent.length = 0; }")
    count = await page.evaluate("() => window.__sockets.length")
    await page.evaluate("() => window.voicebridge.client.start()")
    await _wait(page, "(n) => window.__sockets.length > n", "a socket", arg=count)
    await page.evaluate(
        """() => {
            const ws = window.__socket();
            ws.open();
            ws.text({ type: 'session_started', session_id: 'fake-session', backend: 'emulator' });
        }"""
    )
    await _wait(page, "() => window.voicebridge.client.state === 'open'", "an open session")


async def _played(page: Any) -> dict[str, list[int]]:
    """played_ms of every playback report, by response id ("" for none), in order."""
    played: dict[str, list[int]] = await page.evaluate(
        """() => {
            const out = {};
            for (const m of window.__sent) {
                if (m.type !== 'playback') continue;
                (out[m.response_id ?? ''] ??= []).push(m.played_ms);
            }
            return out;
        }"""
    )
    return played


async def test_playback_reports_per_announced_response(
    server: ServerProcess, silence_wav: Path
) -> None:
    """Each response's audio is counted under the id audio_start announced: two responses
    queued back to back each report their own whole length, a cleared one keeps what was
    heard, and audio after clear_audio counts for no response."""
    async with _page(silence_wav, server.url) as page:
        await page.add_init_script(_FAKE_SOCKET)
        await page.goto("/")
        await _fake_session(page)
        await page.evaluate(
            """() => {
                const ws = window.__socket();
                ws.text({ type: 'status', status: 'agent_speaking' });
                ws.text({ type: 'audio_start', response_id: 'resp-a' });
                ws.audio(600);
                ws.text({ type: 'audio_start', response_id: 'resp-b' });
                ws.audio(400);
            }"""
        )
        await _wait(
            page,
            """() => window.__sent.some(
                (m) => m.type === 'playback' && m.response_id === 'resp-b' && m.played_ms === 400
            )""",
            "resp-b played out",
        )
        played = await _played(page)
        assert set(played) == {"resp-a", "resp-b"}, played
        assert max(played["resp-a"]) == 600, played
        assert max(played["resp-b"]) == 400, played
        for values in played.values():
            assert values == sorted(values), played

        # A response cut short: what was heard by the clear stays its count.
        await page.evaluate(
            """() => {
                const ws = window.__socket();
                ws.text({ type: 'audio_start', response_id: 'resp-c' });
                ws.audio(3000);
            }"""
        )
        await _wait(
            page,
            """() => window.__sent.some(
                (m) => m.type === 'playback' && m.response_id === 'resp-c' && m.played_ms >= 300
            )""",
            "part of resp-c played",
        )
        await page.evaluate(
            """() => {
                const ws = window.__socket();
                ws.text({ type: 'clear_audio' });
                // The player was not playing after the clear, so its next "drained" is the
                // end of this audio, which belongs to no response (no audio_start since).
                window.__drained = false;
                window.voicebridge.client.addEventListener('playback', (e) => {
                    if (e.detail.event === 'drained') window.__drained = true;
                });
                ws.audio(400);
            }"""
        )
        await _wait(page, "() => window.__drained", "the audio after the clear to play out")
        played = await _played(page)
        assert set(played) == {"resp-a", "resp-b", "resp-c"}, played
        assert 300 <= max(played["resp-c"]) < 3000, played
        assert played["resp-c"] == sorted(played["resp-c"]), played
        assert max(played["resp-a"]) == 600 and max(played["resp-b"]) == 400, played
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_playback_reports_without_audio_start(
    server: ServerProcess, silence_wav: Path
) -> None:
    """From a server that sends no audio_start, reports carry no response_id and count
    the response begun by the first audio after agent_speaking."""
    async with _page(silence_wav, server.url) as page:
        await page.add_init_script(_FAKE_SOCKET)
        await page.goto("/")
        await _fake_session(page)
        await page.evaluate(
            """() => {
                const ws = window.__socket();
                ws.audio(200); // before agent_speaking: part of no response
                ws.text({ type: 'status', status: 'agent_speaking' });
                ws.audio(500);
            }"""
        )
        await _wait(
            page,
            """() => window.__sent.some((m) => m.type === 'playback' && m.played_ms === 500)""",
            "the response played out",
        )
        played = await _played(page)
        assert set(played) == {""}, played
        assert max(played[""]) == 500, played
        assert all("response_id" not in m for m in await page.evaluate("() => window.__sent"))
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_playback_reports_after_a_reconnect_name_only_new_responses(
    server: ServerProcess, silence_wav: Path
) -> None:
    """After a reconnect, reports name only responses announced on the new socket, never
    one the previous socket announced."""
    async with _page(silence_wav, server.url) as page:
        await page.add_init_script(_FAKE_SOCKET)
        await page.goto("/")
        await _fake_session(page)
        await page.evaluate(
            """() => {
                const ws = window.__socket();
                ws.text({ type: 'audio_start', response_id: 'old-resp' });
                ws.audio(300);
            }"""
        )
        await _wait(
            page,
            """() => window.__sent.some(
                (m) => m.response_id === 'old-resp' && m.played_ms === 300
            )""",
            "old-resp played out",
        )
        await page.evaluate("() => window.__socket().close(1006)")
        await _wait(page, "() => window.__sockets.length === 2", "the page to reconnect")
        await page.evaluate(
            """() => {
                const ws = window.__socket();
                ws.open();
                ws.text({ type: 'session_started', session_id: 'second', backend: 'emulator' });
                ws.text({ type: 'audio_start', response_id: 'new-resp' });
                ws.audio(300);
            }"""
        )
        await _wait(
            page,
            """() => window.__sent.some(
                (m) => m.response_id === 'new-resp' && m.played_ms === 300
            )""",
            "new-resp played out",
        )
        sent = await page.evaluate("() => window.__sent")
        await page.evaluate("() => window.voicebridge.client.stop()")
    named = {(m["__socket"], m["response_id"]) for m in sent if m["type"] == "playback"}
    assert named == {(0, "old-resp"), (1, "new-resp")}, named


# (messages before the close, close code, the client's state after it)
RECONNECT_CASES = [
    ([{"type": "error", "code": "slow_consumer", "message": "too slow"}], 1013, "reconnecting"),
    ([{"type": "error", "code": "at_capacity", "message": "full"}], 1013, "reconnecting"),
    ([{"type": "error", "code": "rate_limited", "message": "too fast"}], 1008, "failed"),
    # rate_limited for one typed message does not end the session; a later drop retries.
    ([{"type": "error", "code": "rate_limited", "message": "too fast"}], 1006, "reconnecting"),
    ([{"type": "error", "code": "frame_too_large", "message": "big"}], 1009, "failed"),
    ([{"type": "error", "code": "upstream_closed", "message": "gone"}], 1011, "reconnecting"),
    ([{"type": "status", "status": "ended", "code": "ended_by_admin"}], 1000, "stopped"),
    ([{"type": "status", "status": "ended", "code": "idle_timeout"}], 1006, "stopped"),
    ([{"type": "status", "status": "ended", "code": "server_shutdown"}], 1001, "reconnecting"),
    ([], 1000, "stopped"),
    ([], 1001, "reconnecting"),
    ([], 1006, "reconnecting"),
    ([], 1008, "failed"),
    ([], 1009, "failed"),
    ([], 1011, "reconnecting"),
    ([], 1013, "reconnecting"),
]


async def test_reconnect_follows_the_error_table(server: ServerProcess, silence_wav: Path) -> None:
    """Whether the page reconnects after the server closes is decided by the last code it
    received (static/js/errors.js) where that code ends sessions, else by the close code."""
    async with _page(silence_wav, server.url) as page:
        await page.add_init_script(_FAKE_SOCKET)
        await page.goto("/")
        outcomes = []
        for messages, close, _ in RECONNECT_CASES:
            await _fake_session(page)
            await page.evaluate(
                """([messages, close]) => {
                    const ws = window.__socket();
                    for (const m of messages) ws.text(m);
                    ws.close(close);
                }""",
                [messages, close],
            )
            await _wait(
                page,
                """() => ['reconnecting', 'failed', 'stopped'].includes(
                    window.voicebridge.client.state
                )""",
                f"the page to react to close {close} after {messages}",
            )
            outcomes.append(await page.evaluate("() => window.voicebridge.client.state"))
            await page.evaluate("() => window.voicebridge.client.stop()")
            await _wait(
                page,
                "() => window.voicebridge.client.state === 'stopped'",
                "the client to stop",
            )
    assert outcomes == [want for _, _, want in RECONNECT_CASES]


_EXAMPLE_TOOLS = Path(__file__).resolve().parent.parent / "examples" / "telesales" / "tools.toml"


async def test_tool_activity_line_and_answer(tmp_path: Path, silence_wav: Path) -> None:
    """A typed request that makes the agent use a tool shows its activity line, then the
    answer that uses the tool's output."""
    example = _EXAMPLE_TOOLS
    server = await _start_server(tmp_path, TOOLS_FILE=str(example))
    try:
        async with _page(silence_wav, server.url) as page:
            await page.goto("/")
            await page.click("#start")
            await _wait(page, "() => window.voicebridge.client.sessionId !== null", "session")
            await page.fill("#text-input", 'find_product {"name": "headset"}')
            await page.click("#send-text")
            line = page.locator("#transcript .tool-activity")
            await _wait(
                page,
                """() => {
                    const li = document.querySelector('#transcript .tool-activity');
                    return li && li.dataset.status === 'done';
                }""",
                "the tool activity line",
            )
            assert (await line.inner_text()).startswith("Tool find_product: done")
            answer = page.locator("#transcript .bubble-agent", has_text="The tool said")
            await _wait(
                page,
                """() => [...document.querySelectorAll('#transcript .bubble-agent')]
                    .some((b) => b.textContent.includes('The tool said'))""",
                "the answer using the tool",
            )
            assert await answer.count() >= 1
    finally:
        await server.stop()


_SAW_LIVE = """
window.__sawLive = false;
new MutationObserver(() => {
  if (document.querySelector('#transcript .bubble-agent[data-live="true"]')) {
    window.__sawLive = true;
  }
}).observe(document, { subtree: true, childList: true, attributes: true });
"""


async def test_live_captions_become_the_answer(server: ServerProcess, silence_wav: Path) -> None:
    """The agent's words appear as captions while it speaks and end as one answer bubble."""
    async with _page(silence_wav, server.url) as page:
        await page.add_init_script(_SAW_LIVE)
        await page.goto("/")
        await page.click("#start")
        await _wait(page, "() => window.voicebridge.client.sessionId !== null", "session")
        message = "Please tell me about the warranty."
        await page.fill("#text-input", message)
        await page.click("#send-text")
        await _wait(
            page,
            """(msg) => [...document.querySelectorAll('#transcript .bubble-agent')]
                .some((b) => !b.dataset.live && b.textContent.includes(msg))""",
            "the final answer",
            arg=message,
        )
        assert await page.evaluate("() => window.__sawLive")
        answers = page.locator("#transcript .bubble-agent", has_text=message)
        assert await answers.count() == 1  # captions and answer are one bubble


async def test_failed_answer_is_shown_as_a_message(tmp_path: Path, silence_wav: Path) -> None:
    """An answer Voice Live could not produce is shown as a message; the call goes on."""
    import subprocess
    import sys

    from tests.conftest import ROOT, clean_environ
    from tests.redis_server import free_port

    port = free_port()
    emulator = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicebridge",
            "emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--api-key",
            "browser-test-key",
            "--response-outcome",
            "failed",
        ],
        cwd=ROOT,
        env=clean_environ(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        server = await ServerProcess(
            tmp_path,
            AZURE_OPENAI_ENDPOINT=f"ws://127.0.0.1:{port}",
            AZURE_OPENAI_KEY="browser-test-key",
            AZURE_OPENAI_DEPLOYMENT="gpt-realtime",
            VOICELIVE_BACKEND="azure",
        ).start()
        try:
            async with _page(silence_wav, server.url) as page:
                await page.goto("/")
                await page.click("#start")
                await _wait(page, "() => window.voicebridge.client.sessionId !== null", "session")
                await page.fill("#text-input", "Hello?")
                await page.click("#send-text")
                await _wait(
                    page,
                    """() => document.body.innerText.includes('the agent could not answer')""",
                    "the failure message",
                )
                assert await page.evaluate("() => window.voicebridge.client.sessionId !== null")
        finally:
            await server.stop()
    finally:
        emulator.terminate()
        emulator.wait(timeout=10)
