"""Server-side tools: the tools file, argument checks, and each kind run for real (an http
tool against a local aiohttp server, python tools, the built-ins)."""

from __future__ import annotations

import asyncio
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import make_settings
from voicebridge.config import ConfigError
from voicebridge.tools import (
    MAX_OUTPUT_BYTES,
    Toolbox,
    ToolCall,
    ToolOutcome,
    load_toolbox,
)

SECRET = "crm-token-0f9e8d7c6b5a"
PERSONAL = "07700 900123"

NAME_SCHEMA = """
[tool.parameters]
type = "object"
required = ["name"]
additionalProperties = false
properties.name = { type = "string", minLength = 2 }
properties.quantity = { type = "integer", minimum = 1 }
"""

PY_TOOLS = """
import asyncio

from voicebridge.tools import ToolError

CALLS = []
STARTED = asyncio.Event()


async def echo(args, ctx):
    CALLS.append((args, ctx.session_id, ctx.call_id, ctx.tool))
    ctx.log.info("echo.called")
    return {"echo": args, "session": ctx.session_id}


async def slow(args, ctx):
    STARTED.set()
    await asyncio.Event().wait()


async def broken(args, ctx):
    raise KeyError("a value from the caller " + args.get("name", ""))


async def refuses(args, ctx):
    raise ToolError("no customer with that number")


async def not_json(args, ctx):
    return {"when": object()}


async def huge(args, ctx):
    return "x" * 40000


def not_async(args, ctx):
    return 1
"""


def write(tmp_path: Path, toml: str, *, py: str = PY_TOOLS) -> Path:
    (tmp_path / "mytools.py").write_text(py)
    path = tmp_path / "tools.toml"
    path.write_text(textwrap.dedent(toml))
    return path


def load(path: Path, environ: dict[str, str] | None = None, **settings: str) -> Toolbox:
    box = load_toolbox(make_settings(TOOLS_FILE=str(path), **settings), environ=environ or {})
    assert box is not None
    return box


def problems(path: Path, environ: dict[str, str] | None = None, **settings: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(path, environ, **settings)
    prefix = f"TOOLS_FILE {path}: "
    assert all(p.startswith(prefix) for p in info.value.problems), info.value.problems
    return [p.removeprefix(prefix) for p in info.value.problems]


def python_tool(name: str, function: str, timeout_s: float = 2) -> str:
    return f"""
    [[tool]]
    name = "{name}"
    description = "A test tool."
    kind = "python"
    function = "mytools.py:{function}"
    timeout_s = {timeout_s}
    {NAME_SCHEMA}
    """


def module_of(box: Toolbox, tool: str) -> ModuleType:
    """The module a python tool was imported from (the test's mytools.py)."""
    invoke: Any = box.tools[tool].invoke
    return sys.modules[invoke.function.__module__]


async def run(box: Toolbox, name: str, arguments: Any, call_id: str = "call_1") -> ToolOutcome:
    text = arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode()
    return await box.run(ToolCall(call_id, name, text), session_id="sess_1")


# --- settings ---------------------------------------------------------------------------------


def test_tools_settings_default_to_no_tools() -> None:
    """Without TOOLS_FILE there is no toolbox; the other two settings have their defaults."""
    settings = make_settings()
    assert settings.tools_file is None
    assert (settings.tools_show_arguments, settings.tools_max_concurrent) == (False, 4)
    assert load_toolbox(settings) is None


def test_tools_settings_are_read_and_checked(tmp_path: Path) -> None:
    """The settings are typed, and a missing file or a bad limit is listed with the rest."""
    path = write(tmp_path, "")
    settings = make_settings(
        TOOLS_FILE=str(path), TOOLS_SHOW_ARGUMENTS="yes", TOOLS_MAX_CONCURRENT="8"
    )
    assert (settings.tools_file, settings.tools_show_arguments) == (path, True)
    assert settings.tools_max_concurrent == 8
    with pytest.raises(ConfigError) as info:
        make_settings(
            TOOLS_FILE=str(tmp_path / "missing.toml"),
            TOOLS_MAX_CONCURRENT="0",
            TOOLS_SHOW_ARGUMENTS="perhaps",
        )
    found = info.value.problems
    assert any(p.startswith("TOOLS_FILE: cannot read") for p in found)
    assert "TOOLS_MAX_CONCURRENT: must be 1..64" in found
    assert any(p.startswith("TOOLS_SHOW_ARGUMENTS:") for p in found)


# --- the file ---------------------------------------------------------------------------------


def test_a_valid_file_makes_session_tools(tmp_path: Path) -> None:
    """Each kind and built-in becomes its session.update entry, in file order."""
    path = write(
        tmp_path,
        f"""
        [defaults]
        timeout_s = 3

        [builtins]
        end_call = true
        clock = {{ time_zone = "Europe/London" }}

        {python_tool("echo", "echo")}

        [[tool]]
        name = "crm"
        description = "Look up the caller in the CRM."
        kind = "http"
        url = "https://crm.example.com/lookup"
        headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}", X-Tenant = "acme" }}
        parameters = {{ type = "object", properties = {{}} }}

        [[tool]]
        kind = "mcp"
        server_label = "docs"
        server_url = "https://mcp.example.com/mcp"
        allowed_tools = ["search", "delete"]
        headers = {{ X-Api-Key = "${{DOCS_KEY}}" }}
        require_approval = {{ never = ["search"], always = ["delete"] }}
        approve = []
        """,
    )
    box = load(path, {"CRM_TOKEN": SECRET, "DOCS_KEY": "docs-key-1"}, TOOLS_MAX_CONCURRENT="2")
    assert box.max_concurrent == 2
    tools = box.session_tools()
    assert [t.get("name") or t.get("server_label") for t in tools] == [
        "echo",
        "crm",
        "end_call",
        "current_time",
        "docs",
    ]
    assert tools[0] == {
        "type": "function",
        "name": "echo",
        "description": "A test tool.",
        "parameters": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 2},
                "quantity": {"type": "integer", "minimum": 1},
            },
        },
    }
    assert tools[4] == {
        "type": "mcp",
        "server_label": "docs",
        "server_url": "https://mcp.example.com/mcp",
        "allowed_tools": ["search", "delete"],
        "headers": {"X-Api-Key": "docs-key-1"},
        "require_approval": {"never": ["search"], "always": ["delete"]},
    }
    assert (box.tools["echo"].timeout_s, box.tools["crm"].timeout_s) == (2, 3)
    assert "Europe/London" in tools[3]["description"]
    assert box.is_known("echo") and box.is_known("end_call") and not box.is_known("docs")
    assert SECRET not in repr(box) and "docs-key-1" not in repr(box)
    assert not box.approve_mcp("docs", "delete")
    assert not box.approve_mcp("elsewhere", "search")


def test_approve_lists_the_tools_the_bridge_allows(tmp_path: Path) -> None:
    """approve names the tools the bridge approves when asked; "all" approves every one."""
    path = write(
        tmp_path,
        """
        [[tool]]
        kind = "mcp"
        server_label = "crm"
        server_url = "https://mcp.example.com/crm"
        approve = ["lookup"]

        [[tool]]
        kind = "mcp"
        server_label = "docs"
        server_url = "https://mcp.example.com/docs"
        require_approval = "always"
        approve = "all"
        """,
    )
    box = load(path)
    assert box.session_tools()[0]["require_approval"] == "always"
    assert box.approve_mcp("crm", "lookup") and not box.approve_mcp("crm", "delete_account")
    assert box.approve_mcp("docs", "anything")


def test_every_problem_in_the_file_is_listed(tmp_path: Path) -> None:
    """One ConfigError names each bad entry, with where it is."""
    path = write(
        tmp_path,
        """
        colour = "blue"

        [defaults]
        timeout_s = 0

        [builtins]
        end_call = "yes"
        clock = { time_zone = "Mars/Olympus" }
        pager = true

        [[tool]]
        name = "bad name!"
        kind = "python"
        function = "mytools.py:echo"
        parameters = { type = "object" }

        [[tool]]
        name = "no_schema"
        description = "x"
        kind = "python"
        function = "mytools.py:missing"

        [[tool]]
        name = "sync"
        description = "x"
        kind = "python"
        function = "mytools.py:not_async"
        parameters = { type = "array" }
        timeout_s = 500

        [[tool]]
        name = "nomodule"
        description = "x"
        kind = "python"
        function = "no_such_module_xyz:run"
        parameters = { type = "object", properties = { a = { type = "strng" } } }

        [[tool]]
        name = "plain"
        description = "x"
        kind = "http"
        url = "http://crm.example.com/x"
        headers = { Authorization = "Bearer hard-coded", X-Key = "${NOT_SET_ANYWHERE}" }
        parameters = { type = "object" }
        retries = 3

        [[tool]]
        name = "plain"
        description = "second of the name"
        kind = "http"
        url = "https://user:pw@crm.example.com/x"
        parameters = { type = "object" }

        [[tool]]
        name = "teleport"
        description = "x"
        kind = "ftp"

        [[tool]]
        kind = "mcp"
        server_label = "docs"
        server_url = "http://mcp.example.com"
        allowed_tools = ["search"]
        require_approval = "never"
        approve = ["search", "delete"]
        authorization = "literal-token"
        """,
    )
    assert problems(path) == [
        "colour: unknown section (expected [[tool]], [builtins], [defaults])",
        "defaults: timeout_s must be more than 0 and at most 120",
        "tool 'bad name!': name must be 1 to 64 letters, digits, underscores or dashes",
        "tool 'bad name!': description is required: it tells the model when to call it",
        "tool 'no_schema': parameters is required: a JSON Schema table with type object",
        "tool 'no_schema': mytools.py has no 'missing'",
        "tool 'sync': parameters must have type = \"object\"",
        "tool 'sync': timeout_s must be more than 0 and at most 120",
        "tool 'sync': mytools.py:not_async must be an async function (async def)",
        "tool 'nomodule': parameters is not a valid JSON Schema: 'strng' is not valid under "
        "any of the given schemas",
        "tool 'nomodule': cannot import no_such_module_xyz: ModuleNotFoundError: No module "
        "named 'no_such_module_xyz'",
        "tool 'plain': unknown key 'retries' for a http tool",
        "tool 'plain': header 'Authorization' holds a credential: write it as ${NAME} and set "
        "NAME in the environment, never in the file",
        "tool 'plain': header 'X-Key' names ${NOT_SET_ANYWHERE}, which is not set in the "
        "environment",
        "tool 'plain': url must be https (plain http only to this machine)",
        "tool 'plain': url must hold no credentials: put them in headers",
        "tool 'teleport': kind must be one of http, python, mcp, got 'ftp'",
        "mcp server 'docs': server_url must be an https URL Voice Live can reach",
        "mcp server 'docs': authorization must be written as ${NAME}, set in the environment",
        "mcp server 'docs': 'delete' is not in allowed_tools",
        "mcp server 'docs': approve has no effect with require_approval = \"never\": nothing "
        "is asked",
        "builtins: unknown built-in 'pager' (there are end_call and clock)",
        'builtins.end_call: must be true, false or { description = "..." }',
        "builtins.clock: unknown time zone 'Mars/Olympus' (an IANA name)",
    ]


def test_names_are_unique_across_tools_and_builtins(tmp_path: Path) -> None:
    """A tool may not take a built-in's name, and an MCP label is used once."""
    path = write(
        tmp_path,
        f"""
        [builtins]
        end_call = true
        {python_tool("end_call", "echo")}
        [[tool]]
        kind = "mcp"
        server_label = "docs"
        server_url = "https://a.example.com"
        [[tool]]
        kind = "mcp"
        server_label = "docs"
        server_url = "https://b.example.com"
        """,
    )
    assert problems(path) == [
        "mcp server 'docs': server_label is used twice",
        "builtins.end_call: the name 'end_call' is used twice",
    ]


def test_mcp_needs_a_recent_api_version(tmp_path: Path) -> None:
    """MCP servers are refused with an AZURE_API_VERSION older than 2026-04-10."""
    path = write(
        tmp_path,
        """
        [[tool]]
        kind = "mcp"
        server_label = "docs"
        server_url = "https://mcp.example.com"
        """,
    )
    assert problems(path, AZURE_API_VERSION="2025-10-01") == [
        "mcp: MCP servers need AZURE_API_VERSION 2026-04-10 or later, got 2025-10-01 "
        "(how-to-voice-live-mcp-server)"
    ]


def test_a_file_that_is_not_toml_is_one_problem(tmp_path: Path) -> None:
    """Broken TOML is reported with its position."""
    path = write(tmp_path, "[[tool]\nname = ")
    (problem,) = problems(path)
    assert problem.startswith("not valid TOML:")


# --- arguments --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "error", "for_model"),
    [
        ("{not json", "bad arguments: not JSON", "the arguments are not valid JSON"),
        ("[1, 2]", "bad arguments: not a JSON object", "the arguments must be a JSON object"),
        ({}, "bad arguments: $: required name", "'name' is a required property (at $)"),
        ({"name": "x"}, "bad arguments: $.name: minLength", None),
        ({"name": "headset", "quantity": "two"}, "bad arguments: $.quantity: type",
         "'two' is not of type 'integer' (at $.quantity)"),
        ({"name": "headset", "colour": "red"}, "bad arguments: $: additionalProperties", None),
    ],
)  # fmt: skip
async def test_arguments_are_checked_against_the_schema(
    tmp_path: Path, arguments: Any, error: str, for_model: str | None
) -> None:
    """Bad arguments never reach the tool: an error output tells the model what is wrong."""
    box = load(write(tmp_path, python_tool("echo", "echo")))
    calls = module_of(box, "echo").CALLS
    with capture_logs() as logs:
        outcome = await run(box, "echo", arguments)
    assert (outcome.ok, outcome.reason, outcome.error) == (False, "bad_arguments", error)
    message = orjson.loads(outcome.output)["error"]
    if for_model is not None:
        assert message == for_model
    assert calls == []
    assert [entry["event"] for entry in logs] == ["tools.call"]
    assert "two" not in repr(logs) and "headset" not in repr(logs)


async def test_empty_arguments_count_as_an_empty_object(tmp_path: Path) -> None:
    """A model sends "" for a tool without parameters: that is {}."""
    box = load(write(tmp_path, "[builtins]\nend_call = true\n"))
    outcome = await run(box, "end_call", "")
    assert outcome.ok and outcome.end_call


async def test_unknown_tool_is_an_error_outcome(tmp_path: Path) -> None:
    """A call to a tool the file does not define is answered, not raised."""
    box = load(write(tmp_path, python_tool("echo", "echo")))
    outcome = await run(box, "rm_rf", {})
    assert (outcome.ok, outcome.reason, outcome.error) == (False, "unknown_tool", "unknown tool")
    assert orjson.loads(outcome.output) == {"error": "there is no such tool"}


# --- python tools -----------------------------------------------------------------------------


async def test_python_tool_gets_its_arguments_and_context(tmp_path: Path) -> None:
    """The function gets the parsed arguments and the session, call and tool names."""
    box = load(write(tmp_path, python_tool("echo", "echo")))
    module = module_of(box, "echo")
    with capture_logs() as logs:
        outcome = await run(box, "echo", {"name": PERSONAL, "quantity": 2}, "call_9")
    assert outcome.ok and outcome.error is None and not outcome.end_call
    assert orjson.loads(outcome.output) == {
        "echo": {"name": PERSONAL, "quantity": 2},
        "session": "sess_1",
    }
    assert module.CALLS == [({"name": PERSONAL, "quantity": 2}, "sess_1", "call_9", "echo")]
    assert [(e["event"], e.get("outcome")) for e in logs] == [
        ("echo.called", None),
        ("tools.call", "ok"),
    ]
    assert logs[-1]["session_id"] == "sess_1" and logs[-1]["tool"] == "echo"
    assert logs[-1]["duration_ms"] >= 0
    assert PERSONAL not in repr(logs)


@pytest.mark.parametrize(
    ("function", "reason", "error"),
    [
        ("slow", "timeout", "timed out after 0.2 s"),
        ("broken", "failed", "failed: KeyError"),
        ("refuses", "failed", "no customer with that number"),
        ("not_json", "failed", "the tool's result is not JSON data"),
        ("huge", "failed", f"output over {MAX_OUTPUT_BYTES} bytes"),
    ],
)
async def test_python_tool_failures_become_error_outputs(
    tmp_path: Path, function: str, reason: str, error: str
) -> None:
    """Timeouts, exceptions, ToolError and unusable results are outcomes, never raised."""
    box = load(write(tmp_path, python_tool("t", function, timeout_s=0.2)))
    with capture_logs() as logs:
        outcome = await run(box, "t", {"name": PERSONAL})
    assert (outcome.ok, outcome.reason, outcome.error) == (False, reason, error)
    assert "error" in orjson.loads(outcome.output)
    assert PERSONAL not in repr(logs)
    (line,) = [e for e in logs if e["event"] == "tools.call"]
    assert (line["outcome"], line["error"], line["log_level"]) == (reason, error, "warning")


async def test_a_cancelled_call_is_cancelled(tmp_path: Path) -> None:
    """run() lets CancelledError through: the session that owns the call is ending."""
    box = load(write(tmp_path, python_tool("slow", "slow", timeout_s=60)))
    task = asyncio.create_task(run(box, "slow", {"name": "ab"}))
    await module_of(box, "slow").STARTED.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


# --- http tools -------------------------------------------------------------------------------


class CrmServer:
    """A real local HTTP server standing in for a CRM: records requests, answers as told."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], Any]] = []
        self.answer: Callable[[], web.StreamResponse] = lambda: web.json_response({"ok": 1})
        self.release = asyncio.Event()

    async def lookup(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((dict(request.headers), await request.json()))
        return self.answer()

    async def hang(self, request: web.Request) -> web.StreamResponse:
        await self.release.wait()
        return web.json_response({})

    async def redirect(self, request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound("https://elsewhere.example.com/")


@pytest.fixture
async def crm(aiohttp_server: Any) -> AsyncIterator[tuple[CrmServer, str]]:
    state = CrmServer()
    app = web.Application()
    app.router.add_post("/lookup", state.lookup)
    app.router.add_post("/hang", state.hang)
    app.router.add_post("/redirect", state.redirect)
    server = await aiohttp_server(app)
    yield state, f"http://127.0.0.1:{server.port}"
    state.release.set()


def http_tool(base: str, path: str = "/lookup", timeout_s: float = 2) -> str:
    return f"""
    [[tool]]
    name = "crm"
    description = "Look the caller up."
    kind = "http"
    url = "{base}{path}"
    timeout_s = {timeout_s}
    headers = {{ Authorization = "Bearer ${{CRM_TOKEN}}", X-Tenant = "acme" }}
    {NAME_SCHEMA}
    """


async def test_http_tool_posts_the_arguments_and_returns_the_body(
    tmp_path: Path, crm: tuple[CrmServer, str]
) -> None:
    """The arguments are POSTed as JSON with the resolved headers; the body is the output."""
    state, base = crm
    state.answer = lambda: web.json_response({"customer": "Alex", "orders": 3})
    box = load(write(tmp_path, http_tool(base)), {"CRM_TOKEN": SECRET})
    with capture_logs() as logs:
        outcome = await run(box, "crm", {"name": PERSONAL}, "call_7")
        await box.aclose()
    assert outcome.ok
    assert orjson.loads(outcome.output) == {"customer": "Alex", "orders": 3}
    ((headers, body),) = state.requests
    assert body == {"name": PERSONAL}
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert headers["X-Tenant"] == "acme"
    assert (headers["X-Voicebridge-Session"], headers["X-Voicebridge-Call"]) == (
        "sess_1",
        "call_7",
    )
    assert headers["Content-Type"] == "application/json"
    assert SECRET not in repr(logs) and PERSONAL not in repr(logs)
    assert SECRET not in repr(box.tools["crm"]) and SECRET not in repr(outcome)


async def test_http_tool_plain_text_and_empty_bodies(
    tmp_path: Path, crm: tuple[CrmServer, str]
) -> None:
    """A body that is not JSON becomes a JSON string; an empty one {"ok": true}."""
    state, base = crm
    box = load(write(tmp_path, http_tool(base)), {"CRM_TOKEN": SECRET})
    state.answer = lambda: web.Response(text="In stock: 7")
    assert (await run(box, "crm", {"name": "ab"})).output == '"In stock: 7"'
    state.answer = lambda: web.Response(status=204)
    assert (await run(box, "crm", {"name": "ab"})).output == '{"ok": true}'
    await box.aclose()


@pytest.mark.parametrize("status", [500, 502, 404])
async def test_http_tool_error_status_is_a_failed_outcome(
    tmp_path: Path, crm: tuple[CrmServer, str], status: int
) -> None:
    """A non-2xx answer is an error output naming only the status."""
    state, base = crm
    state.answer = lambda: web.Response(status=status, text=f"stack trace with {SECRET}")
    box = load(write(tmp_path, http_tool(base)), {"CRM_TOKEN": SECRET})
    with capture_logs() as logs:
        outcome = await run(box, "crm", {"name": "ab"})
        await box.aclose()
    assert (outcome.ok, outcome.reason, outcome.error) == (False, "failed", f"http {status}")
    assert orjson.loads(outcome.output) == {"error": f"http {status}"}
    assert SECRET not in repr(logs) + outcome.output


async def test_http_tool_timeout(tmp_path: Path, crm: tuple[CrmServer, str]) -> None:
    """A server that does not answer within timeout_s is a timeout outcome."""
    _, base = crm
    box = load(write(tmp_path, http_tool(base, "/hang", timeout_s=0.3)), {"CRM_TOKEN": SECRET})
    outcome = await run(box, "crm", {"name": "ab"})
    await box.aclose()
    assert (outcome.ok, outcome.reason, outcome.error) == (
        False,
        "timeout",
        "timed out after 0.3 s",
    )
    assert 300 <= outcome.duration_ms < 2000


async def test_http_tool_does_not_follow_redirects(
    tmp_path: Path, crm: tuple[CrmServer, str]
) -> None:
    """A redirect could carry the headers elsewhere: it is an error, not followed."""
    _, base = crm
    box = load(write(tmp_path, http_tool(base, "/redirect")), {"CRM_TOKEN": SECRET})
    outcome = await run(box, "crm", {"name": "ab"})
    await box.aclose()
    assert outcome.error == "http 302"


async def test_http_tool_unreachable_server(tmp_path: Path, unused_tcp_port: int) -> None:
    """A refused connection is a failed outcome naming the error type, not the URL."""
    base = f"http://127.0.0.1:{unused_tcp_port}"
    box = load(write(tmp_path, http_tool(base)), {"CRM_TOKEN": SECRET})
    outcome = await run(box, "crm", {"name": "ab"})
    await box.aclose()
    assert outcome.reason == "failed"
    assert outcome.error == "connection failed: ClientConnectorError"


async def test_http_tools_share_one_client_until_closed(
    tmp_path: Path, crm: tuple[CrmServer, str]
) -> None:
    """Concurrent calls share the toolbox's one client; after aclose calls fail cleanly."""
    state, base = crm
    box = load(write(tmp_path, http_tool(base)), {"CRM_TOKEN": SECRET})
    outcomes = await asyncio.gather(
        *(run(box, "crm", {"name": f"n{i}"}, f"c{i}") for i in range(8))
    )
    assert all(o.ok for o in outcomes) and len(state.requests) == 8
    client = box.http()
    assert box.http() is client
    await box.aclose()
    assert client.closed
    outcome = await run(box, "crm", {"name": "ab"})
    assert (outcome.ok, outcome.error) == (False, "failed: RuntimeError")


# --- built-ins --------------------------------------------------------------------------------


async def test_clock_tells_the_time_in_its_zone(tmp_path: Path) -> None:
    """current_time answers the configured zone's date, weekday and time."""
    box = load(write(tmp_path, '[builtins]\nclock = "America/New_York"\n'))
    box.now = lambda: datetime(2026, 7, 14, 16, 5, 9, tzinfo=UTC)
    outcome = await run(box, "current_time", "{}")
    assert outcome.ok
    assert orjson.loads(outcome.output) == {
        "time_zone": "America/New_York",
        "iso": "2026-07-14T12:05:09-04:00",
        "date": "2026-07-14",
        "weekday": "Tuesday",
        "time": "12:05",
    }
    assert (await run(box, "current_time", '{"zone": "UTC"}')).reason == "bad_arguments"


async def test_end_call_asks_the_relay_to_end_the_call(tmp_path: Path) -> None:
    """end_call's outcome says so; its description may be the operator's own."""
    box = load(write(tmp_path, '[builtins]\nend_call = { description = "Hang up." }\n'))
    assert box.session_tools()[0]["description"] == "Hang up."
    outcome = await run(box, "end_call", {"reason": "caller said goodbye"})
    assert (outcome.ok, outcome.end_call) == (True, True)
    assert orjson.loads(outcome.output) == {"ending_call": True}
