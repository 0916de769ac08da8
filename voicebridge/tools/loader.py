"""Reading the tools file (``TOOLS_FILE``, TOML) into a :class:`Toolbox`.

Every problem is collected and raised together as one :class:`ConfigError`, like the
settings, so an operator fixes the file in one go. The file is read once, at start-up:
python tools are imported then (an import error is a start-up problem, not a failed
call), and header values are resolved from the environment then.

The format (docs/tools.md)::

    [defaults]
    timeout_s = 5                      # each tool may set its own

    [builtins]
    end_call = true                    # or { description = "..." }
    clock = { time_zone = "Europe/London" }

    [[tool]]
    name = "find_product"
    description = "Look up a product by name."
    kind = "python"                    # python | http | mcp
    function = "telesales.py:find_product"   # a file beside this one, or a module
    timeout_s = 3
    [tool.parameters]                  # a JSON Schema for an object
    type = "object"
    properties.name = { type = "string" }
    required = ["name"]

    [[tool]]
    name = "crm_lookup"
    description = "..."
    kind = "http"
    url = "https://crm.example.com/lookup"
    headers = { Authorization = "Bearer ${CRM_TOKEN}" }    # from the environment
    parameters = { type = "object", properties = {} }

    [[tool]]
    kind = "mcp"
    server_label = "docs"
    server_url = "https://learn.microsoft.com/api/mcp"
    allowed_tools = ["microsoft_docs_search"]
    require_approval = "always"        # Voice Live asks the bridge before each call
    approve = ["microsoft_docs_search"]  # ... and the bridge says yes to these only
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import ipaddress
import os
import re
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, Final
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from jsonschema import exceptions as schema_errors
from jsonschema import validators

from voicebridge.config import ConfigError, Settings
from voicebridge.tools.toolbox import (
    ApprovalPolicy,
    Clock,
    EndCall,
    FunctionTool,
    HttpTarget,
    Invoke,
    McpServer,
    PythonTarget,
    Toolbox,
)

#: Function names Voice Live takes: "a-z, A-Z, 0-9, underscores and dashes, with a
#: maximum length of 64" (OpenAI function calling, FunctionObject.name).
NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
DEFAULT_TIMEOUT_S: Final = 5.0
MAX_TIMEOUT_S: Final = 120.0
BUILTIN_TIMEOUT_S: Final = 2.0
#: MCP servers need this api-version or a later one (how-to-voice-live-mcp-server, table
#: "MCP server integration differs from function calling": "2026-04-10 or later").
MCP_SINCE: Final = "2026-04-10"
KINDS: Final = ("http", "python", "mcp")
APPROVAL_MODES: Final = ("always", "never")

END_CALL_NAME: Final = "end_call"
CLOCK_NAME: Final = "current_time"
END_CALL_DESCRIPTION: Final = (
    "End the phone call. Call it only when the caller has said goodbye or asked to hang "
    "up, after you have said goodbye yourself."
)
CLOCK_DESCRIPTION: Final = "The current date, weekday and time where the business is."
END_CALL_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {"reason": {"type": "string", "description": "Why the call ends, briefly."}},
    "additionalProperties": False,
}
NO_PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {},
    "additionalProperties": False,
}

_TOP_KEYS = frozenset({"tool", "builtins", "defaults"})
_FUNCTION_KEYS = frozenset({"name", "description", "parameters", "timeout_s", "kind"})
_KIND_KEYS: Mapping[str, frozenset[str]] = {
    "http": _FUNCTION_KEYS | {"url", "headers"},
    "python": _FUNCTION_KEYS | {"function"},
    "mcp": frozenset(
        {
            "kind",
            "server_label",
            "server_url",
            "allowed_tools",
            "headers",
            "authorization",
            "require_approval",
            "approve",
        }
    ),
}
#: ${NAME}: a value taken from the environment.
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: Header names whose value is a credential: it must come from the environment.
_SECRET_HEADER = re.compile(r"auth|key|token|secret|pass|cookie|sig|credential", re.IGNORECASE)
_LOOPBACK = frozenset({"localhost"})


def load_toolbox(settings: Settings, *, environ: Mapping[str, str] | None = None) -> Toolbox | None:
    """The toolbox ``TOOLS_FILE`` defines, or None when it is not set.

    ``environ`` holds the values the file's ``${NAME}`` references name (default: the
    process environment). Raises ConfigError listing every problem in the file.
    """
    if settings.tools_file is None:
        return None
    reader = _Reader(
        settings.tools_file,
        os.environ if environ is None else environ,
        api_version=settings.azure_api_version,
    )
    return reader.read(max_concurrent=settings.tools_max_concurrent)


class _Reader:
    """Reads one tools file, collecting problems instead of stopping at the first."""

    def __init__(self, path: Path, environ: Mapping[str, str], *, api_version: str) -> None:
        self.path = path
        self.env = environ
        self.api_version = api_version
        self.problems: list[str] = []
        self.modules: dict[Path, ModuleType] = {}

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"TOOLS_FILE {self.path}: {where}: {message}")

    def read(self, *, max_concurrent: int) -> Toolbox:
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                [f"TOOLS_FILE: cannot read {self.path}: {exc.strerror or exc}"]
            ) from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError([f"TOOLS_FILE {self.path}: not valid TOML: {exc}"]) from None
        for key in sorted(set(data) - _TOP_KEYS):
            self.problem(key, "unknown section (expected [[tool]], [builtins], [defaults])")
        default_timeout = self.defaults(data.get("defaults", {}))
        tools: dict[str, FunctionTool] = {}
        servers: list[McpServer] = []
        entries = data.get("tool", [])
        if not isinstance(entries, list):
            self.problem("tool", "must be an array of tables: [[tool]]")
            entries = []
        for index, entry in enumerate(entries, start=1):
            where = f"tool #{index}"
            if not isinstance(entry, dict):
                self.problem(where, "must be a table")
                continue
            if isinstance(entry.get("name"), str):
                where = f"tool {entry['name']!r}"
            kind = entry.get("kind")
            if kind not in KINDS:
                self.problem(where, f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
                continue
            for key in sorted(set(entry) - _KIND_KEYS[kind]):
                self.problem(where, f"unknown key {key!r} for a {kind} tool")
            if kind == "mcp":
                server = self.mcp(entry, f"tool #{index} (mcp)")
                if server is not None:
                    if any(s.server_label == server.server_label for s in servers):
                        self.problem(
                            f"mcp server {server.server_label!r}", "server_label is used twice"
                        )
                    servers.append(server)
                continue
            tool = self.function_tool(entry, where, kind, default_timeout)
            if tool is not None:
                self.add(tools, tool, where)
        for tool in self.builtins(data.get("builtins", {})):
            self.add(tools, tool, f"builtins.{tool.kind}")
        if servers and self.api_version < MCP_SINCE:
            self.problem(
                "mcp",
                f"MCP servers need AZURE_API_VERSION {MCP_SINCE} or later, got "
                f"{self.api_version} (how-to-voice-live-mcp-server)",
            )
        if self.problems:
            raise ConfigError(self.problems)
        return Toolbox(tools, tuple(servers), max_concurrent=max_concurrent)

    def add(self, tools: dict[str, FunctionTool], tool: FunctionTool, where: str) -> None:
        if tool.name in tools:
            self.problem(where, f"the name {tool.name!r} is used twice")
        else:
            tools[tool.name] = tool

    # --- sections ------------------------------------------------------------------------

    def defaults(self, section: object) -> float:
        if not isinstance(section, dict):
            self.problem("defaults", "must be a table")
            return DEFAULT_TIMEOUT_S
        for key in sorted(set(section) - {"timeout_s"}):
            self.problem("defaults", f"unknown key {key!r}")
        return self.timeout(section, "defaults", DEFAULT_TIMEOUT_S)

    def timeout(self, table: Mapping[str, Any], where: str, default: float) -> float:
        value = table.get("timeout_s", default)
        if not isinstance(value, int | float) or isinstance(value, bool):
            self.problem(where, f"timeout_s must be a number of seconds, got {value!r}")
            return default
        if not 0 < value <= MAX_TIMEOUT_S:
            self.problem(where, f"timeout_s must be more than 0 and at most {MAX_TIMEOUT_S:g}")
            return default
        return float(value)

    def function_tool(
        self, entry: Mapping[str, Any], where: str, kind: str, default_timeout: float
    ) -> FunctionTool | None:
        name = entry.get("name")
        ok = True
        if not isinstance(name, str) or not NAME.fullmatch(name):
            self.problem(where, "name must be 1 to 64 letters, digits, underscores or dashes")
            ok = False
        description = entry.get("description")
        if not isinstance(description, str) or not description.strip():
            self.problem(where, "description is required: it tells the model when to call it")
            ok = False
        parameters = self.schema(entry.get("parameters"), where)
        timeout_s = self.timeout(entry, where, default_timeout)
        invoke: Invoke | None = (
            self.http(entry, where) if kind == "http" else self.python(entry, where)
        )
        if not ok or parameters is None or invoke is None:
            return None
        assert isinstance(name, str) and isinstance(description, str)
        return _function(
            name=name,
            description=description.strip(),
            parameters=parameters,
            timeout_s=timeout_s,
            kind=kind,
            invoke=invoke,
        )

    def schema(self, value: object, where: str) -> dict[str, Any] | None:
        """The tool's ``parameters``: a JSON Schema for an object (Voice Live's function
        tools take an object of arguments; OpenAI function calling, "parameters")."""
        if not isinstance(value, dict):
            self.problem(where, "parameters is required: a JSON Schema table with type object")
            return None
        if value.get("type") != "object":
            self.problem(where, 'parameters must have type = "object"')
            return None
        try:
            validators.validator_for(value, default=validators.Draft202012Validator).check_schema(
                value
            )
        except schema_errors.SchemaError as exc:
            self.problem(where, f"parameters is not a valid JSON Schema: {exc.message}")
            return None
        return value

    def http(self, entry: Mapping[str, Any], where: str) -> HttpTarget | None:
        url = entry.get("url")
        headers = self.headers(entry.get("headers", {}), where)
        if not isinstance(url, str) or not url:
            self.problem(where, "url is required for an http tool")
            return None
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.problem(where, "url must be an http(s) URL")
            return None
        if parts.username or parts.password or _ENV_REF.search(url):
            self.problem(where, "url must hold no credentials: put them in headers")
            return None
        if parts.scheme == "http" and not _is_loopback(parts.hostname):
            self.problem(where, "url must be https (plain http only to this machine)")
            return None
        if headers is None:
            return None
        return HttpTarget(url, headers)

    def headers(self, value: object, where: str) -> dict[str, str] | None:
        """Header values, each ``${NAME}`` replaced from the environment. A header named
        like a credential must take its value from the environment, never the file."""
        if not isinstance(value, dict):
            self.problem(where, "headers must be a table of strings")
            return None
        resolved: dict[str, str] = {}
        ok = True
        for name, raw in value.items():
            if not isinstance(raw, str):
                self.problem(where, f"header {name!r} must be a string")
                ok = False
                continue
            if _SECRET_HEADER.search(name) and not _ENV_REF.search(raw):
                self.problem(
                    where,
                    f"header {name!r} holds a credential: write it as ${{NAME}} and set NAME "
                    "in the environment, never in the file",
                )
                ok = False
                continue
            text = self.resolve(raw, where, f"header {name!r}")
            if text is None:
                ok = False
            else:
                resolved[name] = text
        return resolved if ok else None

    def resolve(self, raw: str, where: str, what: str) -> str | None:
        missing = [m for m in _ENV_REF.findall(raw) if not self.env.get(m)]
        for name in missing:
            self.problem(where, f"{what} names ${{{name}}}, which is not set in the environment")
        if missing:
            return None
        return _ENV_REF.sub(lambda m: self.env[m.group(1)], raw)

    def python(self, entry: Mapping[str, Any], where: str) -> PythonTarget | None:
        ref = entry.get("function")
        if not isinstance(ref, str) or ref.count(":") != 1:
            self.problem(where, 'function must be "module:function" or "file.py:function"')
            return None
        module_name, _, attr = ref.partition(":")
        module = self.module(module_name, where)
        if module is None:
            return None
        function = getattr(module, attr, None)
        if function is None:
            self.problem(where, f"{module_name} has no {attr!r}")
            return None
        if not inspect.iscoroutinefunction(function):
            self.problem(where, f"{ref} must be an async function (async def)")
            return None
        return PythonTarget(ref, function)

    def module(self, name: str, where: str) -> ModuleType | None:
        """A module by dotted name, or a ``.py`` file relative to the tools file."""
        try:
            if not name.endswith(".py"):
                return importlib.import_module(name)
            path = (self.path.parent / name).resolve()
            if path in self.modules:
                return self.modules[path]
            # A private name per file, so two files called tools.py do not collide.
            digest = hashlib.sha256(str(path).encode()).hexdigest()[:8]
            unique = f"voicebridge_tools_{path.stem}_{digest}"
            spec = importlib.util.spec_from_file_location(unique, path)
            if spec is None or spec.loader is None or not path.is_file():
                self.problem(where, f"no python file {path}")
                return None
            module = importlib.util.module_from_spec(spec)
            sys.modules[unique] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[unique]
                raise
            self.modules[path] = module
            return module
        except Exception as exc:
            self.problem(where, f"cannot import {name}: {type(exc).__name__}: {exc}")
            return None

    def mcp(self, entry: Mapping[str, Any], where: str) -> McpServer | None:
        """An MCP server entry (SDK MCPServer; how-to-voice-live-mcp-server)."""
        label = entry.get("server_label")
        if isinstance(label, str):
            where = f"mcp server {label!r}"
        ok = True
        if not isinstance(label, str) or not NAME.fullmatch(label):
            self.problem(where, "server_label must be 1 to 64 letters, digits, _ or -")
            ok = False
        url = entry.get("server_url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme != "https" or not parts.hostname:
            # Voice Live connects to it from Azure: a public https URL.
            self.problem(where, "server_url must be an https URL Voice Live can reach")
            ok = False
        elif parts.username or parts.password:
            self.problem(where, "server_url must hold no credentials: use headers")
            ok = False
        allowed = entry.get("allowed_tools")
        if allowed is not None and not _strings(allowed):
            self.problem(where, "allowed_tools must be a list of tool names")
            ok, allowed = False, None
        headers = self.headers(entry.get("headers", {}), where)
        authorization = entry.get("authorization")
        if authorization is not None:
            if not isinstance(authorization, str) or not _ENV_REF.search(authorization):
                self.problem(
                    where, "authorization must be written as ${NAME}, set in the environment"
                )
                authorization = None
                ok = False
            else:
                authorization = self.resolve(authorization, where, "authorization")
                ok = ok and authorization is not None
        policy = self.approval_policy(entry.get("require_approval", "always"), where)
        approve_ok, approve = self.approve_list(entry.get("approve", []), where)
        names: set[str] = set()
        if isinstance(policy, Mapping):
            names.update(*policy.values())
        if approve:
            names.update(approve)
        if allowed is not None:
            for name in sorted(names - set(allowed)):
                self.problem(where, f"{name!r} is not in allowed_tools")
                ok = False
        if policy == "never" and approve != frozenset():
            self.problem(
                where, 'approve has no effect with require_approval = "never": nothing is asked'
            )
            ok = False
        if not ok or headers is None or policy is None or not approve_ok:
            return None
        assert isinstance(label, str) and isinstance(url, str)
        return McpServer(
            server_label=label,
            server_url=url,
            allowed_tools=tuple(allowed) if allowed is not None else None,
            headers=headers,
            authorization=authorization,
            require_approval=policy,
            approve=approve,
        )

    def approval_policy(self, value: object, where: str) -> ApprovalPolicy | None:
        """``always``, ``never``, or tool names per mode: { never = [...], always = [...] }
        (SDK MCPServer.require_approval; how-to: "always" is the service's default)."""
        if isinstance(value, str) and value in APPROVAL_MODES:
            return value
        if (
            isinstance(value, dict)
            and value
            and set(value) <= set(APPROVAL_MODES)
            and all(_strings(v) for v in value.values())
        ):
            return {k: tuple(v) for k, v in value.items()}
        self.problem(
            where,
            'require_approval must be "always", "never" or { always = [...], never = [...] }',
        )
        return None

    def approve_list(self, value: object, where: str) -> tuple[bool, frozenset[str] | None]:
        """The bridge's answers: tool names to approve, or "all" (None); and whether the
        value is valid."""
        if value == "all":
            return True, None
        if _strings(value):
            assert isinstance(value, list)
            return True, frozenset(value)
        self.problem(where, 'approve must be a list of tool names, or "all"')
        return False, frozenset()

    def builtins(self, section: object) -> list[FunctionTool]:
        if not isinstance(section, dict):
            self.problem("builtins", "must be a table")
            return []
        for key in sorted(set(section) - {"end_call", "clock"}):
            self.problem("builtins", f"unknown built-in {key!r} (there are end_call and clock)")
        tools: list[FunctionTool] = []
        end_call = self.end_call(section.get("end_call", False))
        if end_call is not None:
            tools.append(
                _function(
                    name=END_CALL_NAME,
                    description=end_call or END_CALL_DESCRIPTION,
                    parameters=END_CALL_PARAMETERS,
                    timeout_s=BUILTIN_TIMEOUT_S,
                    kind="end_call",
                    invoke=EndCall(),
                )
            )
        if "clock" in section:
            clock = self.clock(section["clock"])
            if clock is not None:
                zone, description = clock
                tools.append(
                    _function(
                        name=CLOCK_NAME,
                        description=description or f"{CLOCK_DESCRIPTION} Time zone: {zone}.",
                        parameters=NO_PARAMETERS,
                        timeout_s=BUILTIN_TIMEOUT_S,
                        kind="current_time",
                        invoke=Clock(zone),
                    )
                )
        return tools

    def end_call(self, value: object) -> str | None:
        """end_call = true | false | { description = "..." }: its description ("" for the
        default), or None when it is off or invalid."""
        where = "builtins.end_call"
        if value is True:
            return ""
        if value is False:
            return None
        if isinstance(value, dict):
            for key in sorted(set(value) - {"description"}):
                self.problem(where, f"unknown key {key!r}")
            return self.description(value, where)
        self.problem(where, 'must be true, false or { description = "..." }')
        return None

    def clock(self, value: object) -> tuple[str, str] | None:
        """clock = "Area/City" | { time_zone = "Area/City", description = "..." }."""
        where = "builtins.clock"
        if isinstance(value, str):
            return (value, "") if self.time_zone(value) else None
        if not isinstance(value, dict):
            self.problem(where, 'must be { time_zone = "Area/City" }')
            return None
        for key in sorted(set(value) - {"time_zone", "description"}):
            self.problem(where, f"unknown key {key!r}")
        zone = value.get("time_zone")
        description = self.description(value, where)
        if not self.time_zone(zone) or description is None:
            return None
        assert isinstance(zone, str)
        return zone, description

    def description(self, table: Mapping[str, Any], where: str) -> str | None:
        description = table.get("description", "")
        if isinstance(description, str):
            return description.strip()
        self.problem(where, "description must be a string")
        return None

    def time_zone(self, zone: object) -> bool:
        if not isinstance(zone, str) or not zone:
            self.problem("builtins.clock", 'time_zone is required, e.g. "Europe/London"')
            return False
        try:
            ZoneInfo(zone)
        except (ZoneInfoNotFoundError, ValueError):
            self.problem("builtins.clock", f"unknown time zone {zone!r} (an IANA name)")
            return False
        return True


def _function(
    *,
    name: str,
    description: str,
    parameters: dict[str, Any],
    timeout_s: float,
    kind: str,
    invoke: Invoke,
) -> FunctionTool:
    cls = validators.validator_for(parameters, default=validators.Draft202012Validator)
    return FunctionTool(
        name=name,
        description=description,
        parameters=parameters,
        timeout_s=timeout_s,
        kind=kind,
        invoke=invoke,
        validator=cls(parameters),
    )


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
