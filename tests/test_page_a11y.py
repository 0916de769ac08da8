"""The page as a caller sees it, in a real headless Chromium: its words, colours, focus,
one message at a time, the phone layout, and axe-core finding nothing to fix.

The server's side of a conversation is played either by the real server on the built-in
emulator or, where exact timing matters, by the stand-in socket of tests/test_browser.py.
Screenshots go to tests/artifacts/.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.server_process import ServerProcess
from tests.test_browser import (
    _FAKE_SOCKET,
    CHROMIUM,
    _chromium_args,
    _fake_session,
    _page,
    _start_server,
    _wait,
    _wait_status,
    _write_silence_wav,
    playwright_api,
)

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1200, "height": 860}

# Every status the pill can show (the server's and the page's own) and its words.
LABELS = {
    "idle": "Not started",
    "connecting": "Connecting…",
    "reconnecting": "Reconnecting…",
    "ready": "Listening",
    "listening": "You're speaking",
    "processing": "Thinking…",
    "agent_speaking": "Agent speaking",
    "ending": "Ending soon",
    "shutting_down": "Server restarting",
    "ended": "Conversation ended",
    "stopped": "Stopped",
    "failed": "Not connected",
}
SERVER_STATUSES = [
    "ready",
    "listening",
    "processing",
    "agent_speaking",
    "ending",
    "shutting_down",
    "ended",
]


@pytest.fixture(scope="module")
def silence_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _write_silence_wav(tmp_path_factory.mktemp("page-audio") / "silence.wav")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    """``python -m voicebridge serve`` on the built-in emulator, on a free port."""
    srv = await _start_server(tmp_path)
    yield srv
    await srv.stop()


@contextlib.asynccontextmanager
async def _sized_page(
    capture_wav: Path, base_url: str, viewport: dict[str, int], color_scheme: str = "light"
) -> AsyncIterator[Any]:
    """A page at `viewport` in `color_scheme`, with the stand-in socket."""
    async with _page(capture_wav, base_url) as page:
        await page.set_viewport_size(viewport)
        await page.emulate_media(color_scheme=color_scheme)
        await page.add_init_script(_FAKE_SOCKET)
        yield page


async def _label(page: Any) -> str:
    return str(await page.locator("#status").text_content())


async def _pill_color(page: Any) -> str:
    return str(await page.eval_on_selector("#status-pill", "(el) => getComputedStyle(el).color"))


async def _resolved_color(page: Any, css: str) -> str:
    """What a CSS colour (e.g. ``var(--danger)``) computes to on this page."""
    return str(
        await page.evaluate(
            """(css) => {
                const probe = document.createElement('span');
                probe.style.color = css;
                document.body.append(probe);
                const color = getComputedStyle(probe).color;
                probe.remove();
                return color;
            }""",
            css,
        )
    )


async def _emit(page: Any, event: str, detail: dict[str, Any]) -> None:
    """Play one of the client's events to the page, as the client would dispatch it."""
    await page.evaluate(
        "([event, detail]) => window.voicebridge.client.emit(event, detail)", [event, detail]
    )


async def _server_says(page: Any, *messages: dict[str, Any]) -> None:
    await page.evaluate(
        "(messages) => { for (const m of messages) window.__socket().text(m); }", list(messages)
    )


async def _conversation(page: Any) -> None:
    """A short conversation on the stand-in socket: spoken turns, a typed message that was
    answered, one the rate limit dropped, one the dropped connection left unconfirmed, a
    reconnect into a new session, and a speaking caller."""
    await _fake_session(page)
    await _server_says(
        page,
        {"type": "status", "status": "ready"},
        {"type": "user_transcript", "text": "Hi, what are your opening hours?"},
        {"type": "agent_transcript", "text": "We are open from nine to five, Monday to Friday."},
    )
    await page.fill("#text-input", "And on Saturdays?")
    await page.press("#text-input", "Enter")
    await _server_says(page, {"type": "pong"})
    await page.fill("#text-input", "Hello?")
    await page.press("#text-input", "Enter")
    await _server_says(
        page,
        {"type": "error", "code": "rate_limited", "message": "too many text messages"},
        {"type": "pong"},
    )
    await page.fill("#text-input", "Are you still there?")
    await page.press("#text-input", "Enter")
    sockets = await page.evaluate("() => window.__sockets.length")
    await page.evaluate("() => window.__socket().close(1006)")
    await _wait(page, "(n) => window.__sockets.length > n", "the page to reconnect", arg=sockets)
    await page.evaluate(
        """() => {
            const ws = window.__socket();
            ws.open();
            ws.text({ type: 'session_started', session_id: 'second', backend: 'emulator' });
        }"""
    )
    await _server_says(
        page,
        {"type": "status", "status": "ready"},
        {"type": "user_transcript", "text": "Sorry, I lost you. Are you open on Saturdays?"},
        {"type": "agent_transcript", "text": "Yes, from ten to two."},
        {"type": "status", "status": "listening"},
    )
    await page.locator("#transcript .divider").wait_for()


# -- words and colours ---------------------------------------------------------------------


async def test_every_status_is_shown_in_words(server: ServerProcess, silence_wav: Path) -> None:
    """Each status the server sends appears as words a caller understands, never as the
    protocol's token, and "you are speaking" differs from "listening" in words and colour."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        assert await _label(page) == LABELS["idle"]
        empty = await page.locator("#transcript-empty").text_content() or ""
        assert "once the status shows" not in empty
        assert "Press Start" in empty

        await _fake_session(page)
        colors = {}
        for status in SERVER_STATUSES:
            await _server_says(page, {"type": "status", "status": status})
            await _wait_status(page, status)
            label = await _label(page)
            assert label == LABELS[status], (status, label)
            hint = await page.locator("#status-hint").text_content() or ""
            assert hint and "_" not in hint, (status, hint)
            colors[status] = await _pill_color(page)
        assert colors["listening"] != colors["ready"]

        # A status this page does not know yet still reads as words.
        await _server_says(page, {"type": "status", "status": "on_hold"})
        await _wait_status(page, "on_hold")
        assert await _label(page) == "On hold"
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_time_limit_warning_says_how_long(server: ServerProcess, silence_wav: Path) -> None:
    """The time-limit warning says in seconds how long the conversation has left."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        await _fake_session(page)
        await _server_says(
            page,
            {
                "type": "status",
                "status": "ending",
                "code": "session_time_limit",
                "seconds_left": 60,
            },
        )
        await _wait_status(page, "ending")
        hint = await page.locator("#status-hint").text_content() or ""
        assert "60 seconds" in hint, hint
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_stop_is_neutral_and_only_a_failure_is_red(
    server: ServerProcess, silence_wav: Path
) -> None:
    """After the caller's own Stop, or an end the server meant, the pill has the neutral
    colour of "Not started"; only a failed connection is red."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        idle = await _pill_color(page)
        danger = await _resolved_color(page, "var(--danger)")
        assert idle != danger

        await _fake_session(page)
        await page.click("#stop")
        await _wait_status(page, "stopped")
        assert await _label(page) == "Stopped"
        assert await _pill_color(page) == idle

        await _fake_session(page)
        await _server_says(
            page,
            {
                "type": "status",
                "status": "ended",
                "code": "ended_by_admin",
                "message": "ended by an operator",
            },
        )
        await page.evaluate("() => window.__socket().close(1000)")
        await _wait_status(page, "ended")
        assert await _pill_color(page) == idle
        hint = await page.locator("#status-hint").text_content() or ""
        assert "Ended by an operator" in hint, hint

        await _fake_session(page)
        await page.evaluate("() => window.__socket().close(1008)")
        await _wait_status(page, "failed")
        assert await _label(page) == "Not connected"
        assert await _pill_color(page) == danger


async def test_focus_moves_between_start_and_stop(server: ServerProcess, silence_wav: Path) -> None:
    """A keyboard user who presses Start lands on Stop, and on Start again after Stop or a
    failure, never on the page's body."""
    async with _page(silence_wav, server.url) as page:
        await page.goto("/")
        await page.focus("#start")
        await page.keyboard.press("Enter")
        await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
        assert await page.evaluate("() => document.activeElement.id") == "stop"

        await page.keyboard.press("Enter")
        await _wait_status(page, "stopped")
        assert await page.evaluate("() => document.activeElement.id") == "start"

        # Typing in the message box: the session ending does not pull focus away.
        await page.keyboard.press("Enter")
        await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")
        await page.focus("#text-input")
        await server.stop()
        await _wait(
            page,
            "() => window.voicebridge.client.state === 'reconnecting'",
            "the page to notice the server is gone",
        )
        assert await page.evaluate("() => document.activeElement.id") == "text-input"
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_failure_moves_focus_back_to_start(server: ServerProcess, silence_wav: Path) -> None:
    """When a session fails while Stop has the focus, the focus goes back to Start."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        await page.focus("#start")
        await _fake_session(page)
        assert await page.evaluate("() => document.activeElement.id") == "stop"
        await page.evaluate("() => window.__socket().close(1008)")
        await _wait_status(page, "failed")
        assert await page.evaluate("() => document.activeElement.id") == "start"


# -- messages ------------------------------------------------------------------------------


async def test_rate_limited_message_is_marked_not_sent(tmp_path: Path, silence_wav: Path) -> None:
    """A typed message the server's rate limit drops is marked "Not sent" with a way to send
    it again, the one before it is not, no error pops up, and the conversation goes on."""
    srv = await _start_server(tmp_path, CLIENT_TEXT_PER_MIN="1")
    try:
        async with _page(silence_wav, srv.url) as page:
            await page.goto("/")
            await page.click("#start")
            await _wait(page, "() => window.voicebridge.client.sessionId !== null", "a session")

            await page.fill("#text-input", "First question")
            await page.press("#text-input", "Enter")
            first = page.locator('#transcript .bubble-user[data-typed-id="1"]')
            await _wait(
                page,
                """() => document.querySelector('[data-typed-id="1"]')
                    ?.dataset.delivery === 'sent'""",
                "the first message to be confirmed",
            )
            await page.fill("#text-input", "Second question")
            await page.press("#text-input", "Enter")
            second = page.locator('#transcript .bubble-user[data-typed-id="2"]')
            await _wait(
                page,
                """() => document.querySelector('[data-typed-id="2"]')
                    ?.dataset.delivery === 'not_sent'""",
                "the second message to be marked as not sent",
            )
            note = await second.locator(".delivery-note").text_content() or ""
            assert note.startswith("Not sent"), note
            assert await second.get_by_role("button", name="send it again").is_visible()
            assert await first.locator(".delivery-note").count() == 0
            style = await second.evaluate("(el) => ({border: getComputedStyle(el).borderStyle})")
            assert style["border"] == "dashed", style
            line = await page.evaluate(
                "() => window.voicebridge.transcript.find((l) => l.text === 'Second question')"
            )
            assert line["delivery"] == "not_sent", line

            assert await page.locator("#errors .toast").count() == 0
            assert await page.evaluate("() => window.voicebridge.client.state") == "open"
            assert await page.locator("#stop").is_enabled()
            await page.click("#stop")
            await _wait_status(page, "stopped")
    finally:
        await srv.stop()


async def test_typed_message_cut_off_by_a_dropped_connection(
    server: ServerProcess, silence_wav: Path
) -> None:
    """A typed message the server had not confirmed when the connection dropped is marked
    as not confirmed (in amber, not the red of a dropped message)."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        await _conversation(page)
        delivery = await page.evaluate(
            """() => Object.fromEntries([...document.querySelectorAll('[data-typed-id]')]
                .map((li) => [li.querySelector('p').textContent, li.dataset.delivery]))"""
        )
        assert delivery == {
            "And on Saturdays?": "sent",
            "Hello?": "not_sent",
            "Are you still there?": "unconfirmed",
        }
        unconfirmed = page.locator('[data-delivery="unconfirmed"]')
        note = await unconfirmed.locator(".delivery-note").text_content() or ""
        assert note.startswith("Not confirmed"), note
        border = await unconfirmed.evaluate("(el) => getComputedStyle(el).borderTopColor")
        assert border == await _resolved_color(page, "var(--warn)")
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_same_error_again_is_counted_not_stacked(
    server: ServerProcess, silence_wav: Path
) -> None:
    """An error repeated by every reconnect attempt is one message with a count; a new
    error replaces it; a started session clears it."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        await _fake_session(page)
        failure = {"type": "error", "code": "upstream_connect_failed", "message": "Azure said no"}
        for attempt in range(3):
            await _server_says(page, failure)
            await page.evaluate("() => window.__socket().close(1011)")
            await _wait(
                page,
                "(n) => window.__sockets.length === n",
                f"reconnect attempt {attempt + 1}",
                arg=attempt + 2,
            )
            await page.evaluate("() => window.__socket().open()")
        toasts = page.locator("#errors .toast")
        assert await toasts.count() == 1
        assert await toasts.locator(".toast-text").text_content() == "Azure said no (3 times)"
        assert await toasts.get_attribute("role") == "alert"

        await _server_says(page, {"type": "error", "code": "bad_message", "message": "Other"})
        assert await toasts.count() == 1
        assert (await toasts.text_content() or "").startswith("Other")

        await _server_says(
            page, {"type": "session_started", "session_id": "s", "backend": "emulator"}
        )
        assert await toasts.count() == 0
        errors = await page.evaluate("() => window.voicebridge.errors.map((e) => e.message)")
        assert errors == ["Azure said no"] * 3 + ["Other"]
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_new_conversation_divider(server: ServerProcess, silence_wav: Path) -> None:
    """A session started by a reconnect is set apart by a "New conversation" line that says
    the agent does not remember what came before; one started with Start gets a plain
    divider; an empty transcript gets none."""
    async with _sized_page(silence_wav, server.url, DESKTOP) as page:
        await page.goto("/")
        await _fake_session(page)
        await page.click("#stop")
        await _wait_status(page, "stopped")

        await _conversation(page)  # Start, a few lines, then a reconnect
        dividers = page.locator("#transcript .divider")
        assert await dividers.count() == 1
        text = await dividers.first.text_content() or ""
        assert text.startswith("New conversation"), text
        assert "does not remember" in text, text
        assert await dividers.first.is_visible()

        await page.click("#stop")
        await _fake_session(page)
        assert await dividers.count() == 2
        assert await dividers.last.get_attribute("data-reason") == "start"
        assert "does not remember" not in (await dividers.last.text_content() or "")
        await page.evaluate("() => window.voicebridge.client.stop()")


# -- caller notice and insecure pages ----------------------------------------------------


async def test_caller_notice_from_config(server: ServerProcess, silence_wav: Path) -> None:
    """The operator's caller_notice from /config is shown as a line on the page; an empty
    or missing one shows nothing."""
    notice = "You are talking to an AI assistant. Calls may be recorded."
    served: dict[str, Any] = {}

    async def with_notice(route: Any) -> None:
        response = await route.fetch()
        body = await response.json()
        body["caller_notice"] = served["notice"]
        await route.fulfill(response=response, json=body)

    async with _page(silence_wav, server.url) as page:
        await page.route("**/config", with_notice)
        for value, shown in ((notice, True), ("  ", False), ("<b>bold</b>", True)):
            served["notice"] = value
            await page.goto("/")
            await _wait(page, "() => window.voicebridge.config !== null", "the configuration")
            box = page.locator("#caller-notice")
            assert await box.is_visible() == shown, value
            if shown:
                assert await page.locator("#caller-notice-text").text_content() == value
                assert await box.locator("b").count() == 0  # text, never markup


async def test_caller_notice_from_server_setting(tmp_path: Path, silence_wav: Path) -> None:
    """CALLER_NOTICE set on the server appears on the page."""
    notice = "This call is answered by an AI voice agent."
    srv = await _start_server(tmp_path, CALLER_NOTICE=notice)
    try:
        async with aiohttp.ClientSession() as http, http.get(f"{srv.url}/config") as resp:
            if "caller_notice" not in await resp.json():
                pytest.skip("this server does not serve caller_notice in /config yet")
        async with _page(silence_wav, srv.url) as page:
            await page.goto("/")
            await page.locator("#caller-notice").wait_for()
            assert await page.locator("#caller-notice-text").text_content() == notice
    finally:
        await srv.stop()


async def test_insecure_page_says_how_to_open_it(tmp_path: Path, silence_wav: Path) -> None:
    """Opened over plain HTTP under a name other than localhost (no microphone for such a
    page), the page says to open it with https or via localhost, before and after Start."""
    # ALLOWED_HOSTS: servers that check the Host header must answer to the name.
    srv = await _start_server(tmp_path, ALLOWED_HOSTS="voice.test,localhost,127.0.0.1")
    args = [*_chromium_args(silence_wav), "--host-resolver-rules=MAP voice.test 127.0.0.1"]
    try:
        async with playwright_api.async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
            page = await browser.new_page()
            page_errors: list[str] = []
            page.on("pageerror", lambda exc: page_errors.append(str(exc)))
            await page.goto(f"http://voice.test:{srv.port}/")
            assert not await page.evaluate("() => window.isSecureContext")
            toasts = page.locator("#errors .toast")
            await toasts.wait_for()
            said = await toasts.text_content() or ""
            assert "plain HTTP" in said, said
            assert "https://" in said, said
            assert f"http://localhost:{srv.port}/static/index.html" in said, said

            await page.click("#start")
            await _wait_status(page, "failed")
            assert await toasts.count() == 1
            assert await toasts.text_content() == said
            assert "Cannot read properties" not in said
            hint = await page.locator("#status-hint").text_content() or ""
            assert "cannot use the microphone" in hint, hint
            assert not page_errors, page_errors
            await browser.close()
    finally:
        await srv.stop()


# -- layout --------------------------------------------------------------------------------


async def test_phone_layout_keeps_the_message_box_on_screen(
    server: ServerProcess, silence_wav: Path, artifacts_dir: Path
) -> None:
    """On a 390x844 phone the message box stays on the screen, and the newest line in view,
    however long the conversation grows (screenshot: page-phone.png)."""
    async with _sized_page(silence_wav, server.url, PHONE) as page:
        await page.route("**/config", _with_caller_notice)
        await page.goto("/")
        await page.locator("#caller-notice").wait_for()
        await _conversation(page)
        for turn in range(40):
            await _server_says(
                page,
                {"type": "user_transcript", "text": f"Question number {turn} about the offer"},
                {"type": "agent_transcript", "text": f"Answer number {turn}, with some detail."},
            )
        await _server_says(page, {"type": "error", "code": "bad_message", "message": "Oops"})
        await page.locator("#errors .toast").wait_for()
        await _wait(
            page,
            """() => {
                const wrap = document.getElementById('transcript-wrap');
                return wrap.scrollHeight - wrap.scrollTop - wrap.clientHeight < 2;
            }""",
            "the transcript to show its end",
        )

        for selector in ("#text-input", "#send-text", "#start", "#stop", "#status-pill"):
            box = await page.locator(selector).bounding_box()
            assert box is not None, selector
            assert box["y"] >= 0 and box["y"] + box["height"] <= PHONE["height"], (selector, box)
            assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (selector, box)
        wrap = await page.locator("#transcript-wrap").bounding_box()
        last = await page.locator("#transcript li").last.bounding_box()
        assert wrap and last
        assert last["y"] + last["height"] <= wrap["y"] + wrap["height"] + 1, (last, wrap)
        assert await page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]

        await page.screenshot(path=str(artifacts_dir / "page-phone.png"))
        await page.evaluate("() => window.voicebridge.client.stop()")


async def test_desktop_screenshot(
    server: ServerProcess, silence_wav: Path, artifacts_dir: Path
) -> None:
    """A conversation at desktop size, light and dark (page-desktop.png, page-desktop-dark.png)."""
    for scheme, name in (("light", "page-desktop.png"), ("dark", "page-desktop-dark.png")):
        async with _sized_page(silence_wav, server.url, DESKTOP, scheme) as page:
            await page.route("**/config", _with_caller_notice)
            await page.goto("/")
            await page.locator("#caller-notice").wait_for()
            await _conversation(page)
            text_box = await page.locator("#text-input").bounding_box()
            assert text_box and text_box["y"] + text_box["height"] <= DESKTOP["height"]
            await page.screenshot(path=str(artifacts_dir / name), full_page=True)
            assert (artifacts_dir / name).stat().st_size > 10_000
            await page.evaluate("() => window.voicebridge.client.stop()")


CALLER_NOTICE = "You are talking to an AI assistant. It can make mistakes."


async def _with_caller_notice(route: Any) -> None:
    response = await route.fetch()
    body = await response.json()
    body["caller_notice"] = CALLER_NOTICE
    await route.fulfill(response=response, json=body)


# -- axe-core ------------------------------------------------------------------------------


async def _axe_violations(page: Any, context: str | None = None) -> list[str]:
    axe = pytest.importorskip("axe_playwright_python.async_playwright").Axe()
    results = await axe.run(page, context=context)
    return [
        f"{v['id']}: {node['target']} {node.get('failureSummary', '')}"
        for v in results.response["violations"]
        for node in v["nodes"]
    ]


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("size", ["desktop", "phone"])
async def test_axe_finds_no_violations(
    server: ServerProcess, silence_wav: Path, scheme: str, size: str
) -> None:
    """axe-core finds no violations on the page before a conversation, during one (with a
    message, the caller notice, a divider and a dropped message), and in every status."""
    viewport = DESKTOP if size == "desktop" else PHONE
    async with _sized_page(silence_wav, server.url, viewport, scheme) as page:
        await page.route("**/config", _with_caller_notice)
        await page.goto("/")
        await page.locator("#caller-notice").wait_for()
        await page.locator("#emulator-banner").wait_for()
        assert await _axe_violations(page) == []

        await _conversation(page)
        await _server_says(page, {"type": "error", "code": "bad_message", "message": "Oops"})
        await page.locator("#errors .toast").wait_for()
        assert await page.locator('[data-delivery="not_sent"]').count() == 1
        assert await _axe_violations(page) == []

        page_states = {
            "connecting": {"state": "connecting"},
            "reconnecting": {
                "state": "reconnecting",
                "reason": "Connection lost",
                "delayMs": 800,
                "attempt": 1,
            },
            "stopped": {"state": "stopped"},
            "ended": {"state": "stopped", "code": 1000, "reason": "Session ended"},
            "failed": {"state": "failed", "code": 1008, "reason": "Not allowed"},
        }
        for status in SERVER_STATUSES:
            await _emit(page, "status", {"status": status})
            await _wait_status(page, status)
            assert await _axe_violations(page, ".card-head") == [], status
        for status, detail in page_states.items():
            await _emit(page, "state", detail)
            await _wait_status(page, status)
            assert re.fullmatch(r"[A-Z][^_]*", await _label(page)), status
            assert await _axe_violations(page, ".card-head") == [], status
        await page.evaluate("() => window.voicebridge.client.stop()")
