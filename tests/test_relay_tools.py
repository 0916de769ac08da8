"""Tools through the whole relay: the emulator calls them, the bridge runs and answers."""

from __future__ import annotations

import asyncio
import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ROOT, MakeClient, StartEmulator, relay_settings
from tests.voice_client import started

TOOLS = """
[builtins]
end_call = true

[[tool]]
name = "lookup"
description = "Look a thing up."
kind = "python"
function = "relaytools.py:lookup"
timeout_s = 2
[tool.parameters]
type = "object"
required = ["name"]
additionalProperties = false
properties.name = { type = "string", minLength = 2 }

[[tool]]
name = "slow"
description = "Takes its time."
kind = "python"
function = "relaytools.py:slow"
timeout_s = 0.3
[tool.parameters]
type = "object"
properties.name = { type = "string" }
"""

PY = """
import asyncio

async def lookup(args, ctx):
    return {"found": args["name"], "in_stock": 3}

async def slow(args, ctx):
    await asyncio.sleep(10)
"""


@pytest.fixture
def tools_file(tmp_path: Path) -> Path:
    (tmp_path / "relaytools.py").write_text(textwrap.dedent(PY))
    path = tmp_path / "tools.toml"
    path.write_text(textwrap.dedent(TOOLS))
    return path


async def test_a_tool_call_is_run_and_answered(
    start_emu: StartEmulator, make_client: MakeClient, tools_file: Path
) -> None:
    """A typed request makes the agent call a tool; the client sees it; the answer uses it."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(tools_file)))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": 'lookup {"name": "headset"}'})
    answer = await voice.until_type("agent_transcript", timeout=20)
    assert "headset" in answer["text"] and "in_stock" in answer["text"]
    tool = [m for m in voice.messages("tool")]
    assert [m["status"] for m in tool] == ["started", "done"]
    assert tool[0]["name"] == "lookup" and "arguments" not in tool[0]
    assert isinstance(tool[1]["duration_ms"], int)
    assert not voice.messages("error")
    config = emu.last_session_config()
    assert config is not None and {t["name"] for t in config["tools"]} >= {"lookup", "end_call"}


async def test_bad_arguments_and_timeouts_are_error_outputs(
    start_emu: StartEmulator, make_client: MakeClient, tools_file: Path
) -> None:
    """Two calls in one response, one with bad arguments and one timing out: both answered."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(tools_file)))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": 'lookup {"name": 7} ; slow {}'})
    answer = await voice.until_type("agent_transcript", timeout=20)
    assert answer["text"].count("The tool said") == 2
    assert "error" in answer["text"]
    statuses = {m["name"]: m["status"] for m in voice.messages("tool") if m["status"] != "started"}
    assert statuses == {"lookup": "failed", "slow": "failed"}
    failed = {m["name"]: m.get("error", "") for m in voice.messages("tool")}
    assert "timed out" in failed["slow"]


async def test_end_call_ends_the_call_politely(
    start_emu: StartEmulator, make_client: MakeClient, tools_file: Path
) -> None:
    """The agent's end_call ends the session with status ended, agent_ended, close 1000."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(tools_file)))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "end_call {}"})
    ended = await voice.until_type("status", status="ended", timeout=20)
    assert ended["code"] == "agent_ended"
    assert await voice.until_closed() == 1000


async def test_client_cannot_call_or_answer_a_tool(
    start_emu: StartEmulator, make_client: MakeClient, tools_file: Path
) -> None:
    """A client's tool message or raw function output is refused; nothing reaches Voice Live."""
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(tools_file)))
    voice = await started(client)
    before = emu.events_received
    await voice.ws.send_json({"type": "tool", "name": "lookup", "call_id": "x"})
    await voice.ws.send_json({"type": "function_call_output", "call_id": "x", "output": "{}"})
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")
    codes = [m["code"] for m in voice.messages("error")]
    assert codes == ["unknown_type", "unknown_type"]
    assert emu.events_received == before


async def test_the_telesales_example_books_a_callback(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path
) -> None:
    """The shipped example end to end: schedule_callback writes a row to its SQLite store."""
    example = ROOT / "examples" / "telesales"
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(example / "tools.toml")))
    voice = await started(client)
    args = '{"phone": "07700 900123", "call_at": "2026-12-01T15:00:00+00:00"}'
    await voice.ws.send_json({"type": "text", "text": f"schedule_callback {args}"})
    await voice.until_type("agent_transcript", timeout=20)
    done = [m for m in voice.messages("tool") if m["status"] != "started"]
    assert done and done[0]["status"] == "done", voice.messages("tool")
    store = example / "telesales.sqlite3"
    rows = await asyncio.to_thread(
        lambda: sqlite3.connect(store).execute("SELECT count(*) FROM callbacks").fetchone()
    )
    assert rows[0] >= 1


MCP_TOOLS = """
[[tool]]
kind = "mcp"
server_label = "crm"
server_url = "https://mcp.example.com/crm"
allowed_tools = ["lookup_customer", "delete_customer"]
require_approval = "always"
approve = ["lookup_customer"]
"""


@pytest.mark.parametrize(
    ("request_text", "approved"),
    [
        ('lookup_customer {"phone": "07700 900123"}', True),
        ('delete_customer {"phone": "07700 900123"}', False),
    ],
)
async def test_mcp_approvals_follow_the_operators_policy(
    start_emu: StartEmulator,
    make_client: MakeClient,
    tmp_path: Path,
    request_text: str,
    approved: bool,
) -> None:
    """Voice Live asks to call an MCP tool: the file's policy answers, and the agent speaks."""
    path = tmp_path / "tools.toml"
    path.write_text(textwrap.dedent(MCP_TOOLS))
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(path)))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": request_text})
    answer = await voice.until_type("agent_transcript", timeout=20)
    responses = [item for item in emu.conversation() if item.get("type") == "mcp_approval_response"]
    assert [item["approve"] for item in responses] == [approved]
    if approved:
        assert "emulated answer" in answer["text"] or "result" in answer["text"]
    else:
        assert "not approved" in answer["text"]


async def test_http_tool_through_the_relay(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path, aiohttp_server: Any
) -> None:
    """An http tool: the bridge POSTs the arguments to a real local server; its body is
    the output the agent speaks about."""
    received: list[dict[str, Any]] = []

    async def stock(request: web.Request) -> web.Response:
        received.append(await request.json())
        return web.json_response({"in_stock": 12})

    app = web.Application()
    app.router.add_post("/stock", stock)
    crm = await aiohttp_server(app)
    path = tmp_path / "tools.toml"
    path.write_text(
        textwrap.dedent(
            f"""
            [[tool]]
            name = "stock"
            description = "How many are in stock."
            kind = "http"
            url = "http://127.0.0.1:{crm.port}/stock"
            timeout_s = 2
            [tool.parameters]
            type = "object"
            required = ["sku"]
            properties.sku = {{ type = "string" }}
            """
        )
    )
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(path)))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": 'stock {"sku": "HS-100"}'})
    answer = await voice.until_type("agent_transcript", timeout=20)
    assert received == [{"sku": "HS-100"}]
    assert "12" in answer["text"]


@pytest.fixture(scope="module")
def utterance(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A short question with silence either side, PCM16 24 kHz mono."""
    from tests.speech import make_speech_pcm
    from tests.voice_client import silence

    path = tmp_path_factory.mktemp("speech") / "question.raw"
    return silence(300) + make_speech_pcm("Are you still there?", path) + silence(900)


async def test_barge_in_while_a_slow_tool_runs(
    start_emu: StartEmulator, make_client: MakeClient, tmp_path: Path, utterance: bytes
) -> None:
    """The caller speaks while a tool runs: its output is still recorded, but no answer is
    started over the caller (the caller's own turn is answered, with no collision)."""
    (tmp_path / "relaytools.py").write_text(textwrap.dedent(PY))
    path = tmp_path / "tools.toml"
    path.write_text(textwrap.dedent(TOOLS).replace("timeout_s = 0.3", "timeout_s = 1.5"))
    emu = await start_emu()
    client = await make_client(relay_settings(emu, TOOLS_FILE=str(path)))
    voice = await started(client)
    await voice.ws.send_json({"type": "text", "text": "slow {}"})
    await voice.until_type("tool", status="started")
    await voice.send_audio(utterance)  # the caller talks while the tool runs
    await voice.until_type("user_transcript", timeout=20)
    await voice.until_type("tool", status="failed", timeout=10)  # timed out after 1.5 s
    await voice.ws.send_json({"type": "ping"})
    await voice.until_type("pong")
    # The tool's output reached the conversation ...
    outputs = [i for i in emu.conversation() if i.get("type") == "function_call_output"]
    assert len(outputs) == 1 and "took too long" in outputs[0]["output"]
    # ... and no answer was asked for over the caller: no collision, nothing refused.
    assert voice.messages("error") == []
    assert emu.event_count("response.created") == 2  # the tool call's, the caller's turn's
