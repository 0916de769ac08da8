"""The call records page (/static/calls.html) in a real headless Chromium against real
routes and a real SQLite store: token, search, open a call, read its turns, download."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.calls_helpers import TOKEN, build_app, seed
from voicebridge.calls import CallLog, CallSettings

playwright_api = pytest.importorskip("playwright.async_api")

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
WAIT_MS = 15_000

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}", allow_module_level=True)


@pytest.fixture
async def base_url(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[str]:
    """The routes and the static files on a real port, three calls stored."""
    log = CallLog(
        CallSettings.from_environ(
            {
                "CALL_STORE": str(tmp_path / "calls.sqlite3"),
                "CALL_SPOOL_FILE": str(tmp_path / "spool.jsonl"),
                "CALL_RETENTION_DAYS": "0",
            }
        ),
        instance="host-1",
    )
    await log.start()
    await seed(log)
    app = build_app(log)
    app.router.add_static("/static/", ROOT / "static")
    server = await aiohttp_server(app)
    yield f"http://127.0.0.1:{server.port}"
    await log.close(5)


@pytest.fixture
async def page(base_url: str) -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            context = await browser.new_context(
                viewport={"width": 1400, "height": 900},
                base_url=base_url,
                accept_downloads=True,
            )
            page = await context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            await browser.close()


async def rows(page: Any) -> list[str]:
    return list(
        await page.eval_on_selector_all(
            "#calls tbody tr", "rows => rows.map(r => r.dataset.callId)"
        )
    )


async def test_review_a_call_in_the_page(page: Any) -> None:
    """Asked for the token, then lists, filters, opens a call and downloads its transcript."""
    expect = playwright_api.expect
    await page.goto("/static/calls.html")
    status = page.locator("#status")
    await expect(status).to_contain_text("admin token", timeout=WAIT_MS)

    await page.fill("#token", TOKEN)
    await page.click("#token-form button")
    await expect(status).to_have_text("3 calls found.", timeout=WAIT_MS)
    assert await rows(page) == ["call-c", "call-b", "call-a"]

    await page.fill("#q", "gold")
    await page.click("#search")
    await expect(page.locator("#calls tbody tr")).to_have_count(1, timeout=WAIT_MS)
    assert await rows(page) == ["call-a"]

    await page.click("#calls tbody tr button.open")
    detail = page.locator("#detail")
    await expect(detail).to_be_visible(timeout=WAIT_MS)
    turns = page.locator("#turns li")
    await expect(turns).to_have_count(2)
    await expect(turns.nth(0)).to_contain_text("Tell me about the gold plan")
    agent = turns.nth(1)
    await expect(agent).to_contain_text("interrupted · 25% heard")
    await expect(agent).to_contain_text("answered in 510 ms")
    await expect(agent.locator(".unheard")).to_have_text(" plan costs ten pounds a month")
    await expect(page.locator("#facts")).to_contain_text("Barge-ins")
    await asyncio.to_thread(ARTIFACTS.mkdir, parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "calls-page.png"), full_page=True)

    async with page.expect_download() as downloading:
        await page.click("#download")
    download = await downloading.value
    assert download.suggested_filename == "call-call-a.txt"
    saved = Path(await download.path())
    text = await asyncio.to_thread(saved.read_text, encoding="utf-8")
    assert "Caller: Tell me about the gold plan" in text


async def test_a_wrong_token_says_so(page: Any) -> None:
    """A rejected token leaves the table empty and asks for the token again."""
    await page.goto("/static/calls.html")
    await page.fill("#token", "not-the-token")
    await page.click("#token-form button")
    await playwright_api.expect(page.locator("#status")).to_contain_text(
        "admin token", timeout=WAIT_MS
    )
    assert await rows(page) == []
