"""Server-side tools: what the agent may look up and do while the caller waits.

An operator defines them in a TOML file (``TOOLS_FILE``; docs/tools.md), read once at
start-up by :func:`load_toolbox`. The relay offers :meth:`Toolbox.session_tools` in
``session.update``, runs each function call the model makes with :meth:`Toolbox.run`
(which never raises), and answers Voice Live's MCP approval requests with
:meth:`Toolbox.approve_mcp`. The browser never defines, names or runs a tool.

Modules: :mod:`~voicebridge.tools.model` (the values), :mod:`~voicebridge.tools.toolbox`
(running calls: argument checks, timeouts, the kinds), :mod:`~voicebridge.tools.loader`
(the file).
"""

from voicebridge.tools.loader import CLOCK_NAME, END_CALL_NAME, load_toolbox
from voicebridge.tools.model import REASONS, ToolCall, ToolContext, ToolError, ToolOutcome
from voicebridge.tools.toolbox import MAX_OUTPUT_BYTES, FunctionTool, McpServer, Toolbox

__all__ = [
    "CLOCK_NAME",
    "END_CALL_NAME",
    "MAX_OUTPUT_BYTES",
    "REASONS",
    "FunctionTool",
    "McpServer",
    "ToolCall",
    "ToolContext",
    "ToolError",
    "ToolOutcome",
    "Toolbox",
    "load_toolbox",
]
