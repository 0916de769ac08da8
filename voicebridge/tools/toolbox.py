"""The tools of one process, and running one call safely.

:class:`Toolbox` holds what the tools file defines (see :mod:`voicebridge.tools.loader`):
function tools the bridge runs itself (``http``, ``python``, the built-ins ``end_call``
and ``current_time``) and MCP servers Voice Live calls on its own. ``run`` never raises
(except ``CancelledError``): the arguments are parsed and checked against the tool's JSON
Schema, the call gets its timeout, and any failure becomes an error outcome the model can
recover from. Each call is logged once as ``tools.call`` with its outcome and duration;
arguments, outputs and header values never are.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, Protocol
from zoneinfo import ZoneInfo

import aiohttp
import attrs
import orjson
import structlog
from jsonschema import exceptions as schema_errors
from jsonschema.protocols import Validator

from voicebridge.tools.model import Reason, ToolCall, ToolContext, ToolError, ToolOutcome

log = structlog.get_logger("voicebridge.tools")

#: The longest output handed back to the model; a longer one is an error (a voice agent
#: reads out a sentence or two, and every output stays in the model's context).
MAX_OUTPUT_BYTES: Final = 32 * 1024
#: The process's shared HTTP client: connections open at once, in all and to one host.
HTTP_CONNECTIONS: Final = 64
HTTP_CONNECTIONS_PER_HOST: Final = 16
#: Longest wait for a TCP (and TLS) connection; the tool's own timeout bounds the rest.
HTTP_CONNECT_TIMEOUT_S: Final = 5.0
USER_AGENT: Final = "voicebridge-tools"


class Invoke(Protocol):
    """How one kind of tool runs: the parsed arguments in, the output (JSON text) out."""

    async def __call__(self, box: Toolbox, args: dict[str, Any], ctx: ToolContext) -> str: ...


class HttpStatusError(Exception):
    """The tool's server answered with something other than 2xx."""

    def __init__(self, status: int) -> None:
        super().__init__(f"http {status}")
        self.status = status


class OutputTooLarge(Exception):
    """The tool answered more than MAX_OUTPUT_BYTES."""


class BadArguments(Exception):
    """The model's arguments are not JSON, not an object, or break the tool's schema.

    ``str(exc)`` is value-free (for logs and the client); ``for_model`` may quote the
    offending value, so the model can correct itself.
    """

    def __init__(self, summary: str, for_model: str) -> None:
        super().__init__(summary)
        self.for_model = for_model


def to_json(value: Any) -> str:
    """A python tool's result as the output's JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        raise ToolError("the tool's result is not JSON data") from None


@attrs.frozen
class HttpTarget:
    """``kind = "http"``: POST the arguments as JSON; the response body is the output."""

    url: str
    #: Resolved from the environment at load time: may hold secrets, so never shown.
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)

    async def __call__(self, box: Toolbox, args: dict[str, Any], ctx: ToolContext) -> str:
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            # Lets the tool's server tie calls to a conversation and make writes idempotent.
            "X-Voicebridge-Session": ctx.session_id,
            "X-Voicebridge-Call": ctx.call_id,
        }
        # No redirects: one could carry the headers (and their secrets) to another host.
        async with box.http().post(
            self.url, data=orjson.dumps(args), headers=headers, allow_redirects=False
        ) as response:
            body = bytearray()
            async for chunk in response.content.iter_chunked(16384):
                body += chunk
                if len(body) > MAX_OUTPUT_BYTES:
                    raise OutputTooLarge
            if not 200 <= response.status < 300:
                raise HttpStatusError(response.status)
        text = body.decode("utf-8", errors="replace").strip()
        if not text:
            return '{"ok": true}'
        try:
            orjson.loads(text)
        except orjson.JSONDecodeError:
            return to_json(text)  # plain text becomes a JSON string
        return text


PythonFunction = Callable[[dict[str, Any], ToolContext], Awaitable[Any]]


@attrs.frozen
class PythonTarget:
    """``kind = "python"``: an async function, imported at start-up, called with the
    parsed arguments and a :class:`ToolContext`; its result (JSON data) is the output."""

    ref: str
    function: PythonFunction = attrs.field(repr=False, eq=False)

    async def __call__(self, box: Toolbox, args: dict[str, Any], ctx: ToolContext) -> str:
        return to_json(await self.function(args, ctx))


@attrs.frozen
class EndCall:
    """The built-in ``end_call``: the agent ends the call (the relay does the ending)."""

    async def __call__(self, box: Toolbox, args: dict[str, Any], ctx: ToolContext) -> str:
        return '{"ending_call": true}'


@attrs.frozen
class Clock:
    """The built-in ``current_time``: the date and time in the configured time zone."""

    time_zone: str

    async def __call__(self, box: Toolbox, args: dict[str, Any], ctx: ToolContext) -> str:
        now = box.now().astimezone(ZoneInfo(self.time_zone))
        return to_json(
            {
                "time_zone": self.time_zone,
                "iso": now.isoformat(timespec="seconds"),
                "date": now.date().isoformat(),
                "weekday": now.strftime("%A"),
                "time": now.strftime("%H:%M"),
            }
        )


@attrs.frozen
class FunctionTool:
    """A tool the bridge runs: its ``function`` definition for Voice Live, and how to run it."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    timeout_s: float
    #: http, python, end_call or current_time (a log field and metrics label).
    kind: str
    invoke: Invoke = attrs.field(repr=False, eq=False)
    validator: Validator = attrs.field(repr=False, eq=False)

    def definition(self) -> dict[str, Any]:
        """The ``tools`` entry of ``session.update`` (SDK: FunctionTool)."""
        return {
            "type": "function",
            "name": self.name,
            "description": self.description,
            "parameters": dict(self.parameters),
        }


#: require_approval: "always", "never", or tool names per mode (SDK: MCPServer).
ApprovalPolicy = str | Mapping[str, tuple[str, ...]]


@attrs.frozen
class McpServer:
    """A remote MCP server Voice Live calls itself (``kind = "mcp"``)."""

    server_label: str
    server_url: str
    allowed_tools: tuple[str, ...] | None = None
    #: Resolved from the environment at load time: may hold secrets, so never shown.
    headers: Mapping[str, str] = attrs.field(factory=dict, repr=False)
    authorization: str | None = attrs.field(default=None, repr=False)
    #: Sent to Voice Live: which calls it asks the bridge about first. Default: all.
    require_approval: ApprovalPolicy = "always"
    #: The bridge's answer when asked: these tools are approved, every other is denied.
    approve: frozenset[str] | None = frozenset()

    def definition(self) -> dict[str, Any]:
        """The ``tools`` entry of ``session.update`` (SDK: MCPServer). Carries the header
        values and authorization: never log it."""
        entry: dict[str, Any] = {
            "type": "mcp",
            "server_label": self.server_label,
            "server_url": self.server_url,
        }
        if self.allowed_tools is not None:
            entry["allowed_tools"] = list(self.allowed_tools)
        if self.headers:
            entry["headers"] = dict(self.headers)
        if self.authorization is not None:
            entry["authorization"] = self.authorization
        policy = self.require_approval
        entry["require_approval"] = (
            policy if isinstance(policy, str) else {k: list(v) for k, v in policy.items()}
        )
        return entry

    def approves(self, tool_name: str) -> bool:
        """The bridge's answer to an approval request for ``tool_name`` (None: all)."""
        return self.approve is None or tool_name in self.approve


def _utc_now() -> datetime:
    return datetime.now(UTC)


@attrs.define(eq=False)
class Toolbox:
    """Every tool of the process, and the one HTTP client the http tools share.

    Built by :func:`voicebridge.tools.load_toolbox`; one per process, shared by all
    sessions (it holds no per-session state). ``aclose`` on shut-down.
    """

    tools: Mapping[str, FunctionTool]
    mcp_servers: tuple[McpServer, ...] = ()
    #: Calls of one response that run at once (TOOLS_MAX_CONCURRENT).
    max_concurrent: int = 4
    #: The current instant, aware (the clock tool's; tests pass a fixed one).
    now: Callable[[], datetime] = _utc_now
    _http: aiohttp.ClientSession | None = attrs.field(init=False, default=None)
    _closed: bool = attrs.field(init=False, default=False)

    def session_tools(self) -> list[dict[str, Any]]:
        """The ``tools`` array of ``session.update``: the function tools, then the MCP
        servers. MCP entries carry header values: never log this."""
        return [tool.definition() for tool in self.tools.values()] + [
            server.definition() for server in self.mcp_servers
        ]

    def is_known(self, name: str) -> bool:
        """Whether ``name`` is a function tool of this toolbox."""
        return name in self.tools

    def approve_mcp(self, server_label: str, tool_name: str) -> bool:
        """The answer to Voice Live's ``mcp_approval_request`` for ``tool_name`` on
        ``server_label``: the file's ``approve`` list. An unknown server is denied."""
        for server in self.mcp_servers:
            if server.server_label == server_label:
                approved = server.approves(tool_name)
                break
        else:
            approved = False
        log.info("tools.mcp_approval", server_label=server_label, tool=tool_name, approved=approved)
        return approved

    def http(self) -> aiohttp.ClientSession:
        """The shared HTTP client, made on first use (it belongs to the running loop)."""
        if self._closed:
            raise RuntimeError("the toolbox is closed")
        if self._http is None:
            self._http = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=HTTP_CONNECTIONS, limit_per_host=HTTP_CONNECTIONS_PER_HOST
                ),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=HTTP_CONNECT_TIMEOUT_S),
                headers={"User-Agent": USER_AGENT},
            )
        return self._http

    async def aclose(self) -> None:
        """Close the shared HTTP client; http tools fail from then on."""
        self._closed = True
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def run(self, call: ToolCall, *, session_id: str) -> ToolOutcome:
        """Run one call to its outcome. Never raises, except CancelledError (the call's
        task was cancelled: the session is ending)."""
        started = time.perf_counter()
        bound = log.bind(session_id=session_id, tool=call.name, call_id=call.call_id)
        tool = self.tools.get(call.name)
        if tool is None:
            return self._outcome(
                call,
                started,
                bound,
                "unknown_tool",
                error="unknown tool",
                for_model="there is no such tool",
            )
        try:
            args = parse_arguments(call.arguments, tool.validator)
        except BadArguments as exc:
            return self._outcome(
                call,
                started,
                bound,
                "bad_arguments",
                error=f"bad arguments: {exc}",
                for_model=exc.for_model,
            )
        ctx = ToolContext(session_id, call.call_id, tool.name, bound)
        timeout = asyncio.timeout(tool.timeout_s)
        try:
            async with timeout:
                output = await tool.invoke(self, args, ctx)
            if len(output.encode()) > MAX_OUTPUT_BYTES:
                raise OutputTooLarge
        except TimeoutError:
            if timeout.expired():
                return self._outcome(
                    call,
                    started,
                    bound,
                    "timeout",
                    error=f"timed out after {tool.timeout_s:g} s",
                    for_model="the tool took too long and was stopped",
                )
            return self._failed(call, started, bound, "failed: TimeoutError")
        except ToolError as exc:
            return self._failed(call, started, bound, str(exc) or "the tool failed")
        except HttpStatusError as exc:
            return self._failed(call, started, bound, str(exc))
        except OutputTooLarge:
            return self._failed(call, started, bound, f"output over {MAX_OUTPUT_BYTES} bytes")
        except aiohttp.ClientError as exc:
            # Not the exception's text: it names the URL, which may carry a credential.
            return self._failed(call, started, bound, f"connection failed: {type(exc).__name__}")
        except Exception as exc:
            # The traceback may quote the caller's data, so only at DEBUG.
            bound.debug("tools.call_exception", exc_info=True)
            return self._failed(call, started, bound, f"failed: {type(exc).__name__}")
        duration_ms = (time.perf_counter() - started) * 1000
        bound.info("tools.call", kind=tool.kind, outcome="ok", duration_ms=round(duration_ms, 1))
        return ToolOutcome(
            call.call_id,
            call.name,
            output,
            ok=True,
            error=None,
            duration_ms=duration_ms,
            end_call=tool.kind == "end_call",
        )

    def _failed(self, call: ToolCall, started: float, bound: Any, error: str) -> ToolOutcome:
        return self._outcome(call, started, bound, "failed", error=error, for_model=error)

    def _outcome(
        self,
        call: ToolCall,
        started: float,
        bound: Any,
        reason: Reason,
        *,
        error: str,
        for_model: str,
    ) -> ToolOutcome:
        duration_ms = (time.perf_counter() - started) * 1000
        tool = self.tools.get(call.name)
        bound.warning(
            "tools.call",
            kind=tool.kind if tool else None,
            outcome=reason,
            error=error,
            duration_ms=round(duration_ms, 1),
        )
        return ToolOutcome(
            call.call_id,
            call.name,
            to_json({"error": for_model}),
            ok=False,
            error=error,
            duration_ms=duration_ms,
            reason=reason,
        )


def parse_arguments(text: str, validator: Validator) -> dict[str, Any]:
    """The model's arguments as an object that satisfies the tool's schema.

    An empty string counts as ``{}`` (models send it for tools without parameters).
    Raises BadArguments: its text names where and which rule failed (no values), its
    ``for_model`` the validator's own message.
    """
    try:
        args = orjson.loads(text) if text.strip() else {}
    except orjson.JSONDecodeError:
        raise BadArguments("not JSON", "the arguments are not valid JSON") from None
    if not isinstance(args, dict):
        raise BadArguments("not a JSON object", "the arguments must be a JSON object")
    error = schema_errors.best_match(validator.iter_errors(args))
    if error is not None:
        path = error.json_path
        summary = f"{path}: {error.validator}"
        if error.validator == "required" and isinstance(error.instance, dict):
            # The missing names come from the schema, not from the caller.
            missing = [n for n in error.validator_value if n not in error.instance]
            summary += " " + ", ".join(map(str, missing))
        raise BadArguments(summary, f"{error.message} (at {path})")
    return args
