"""The model's function calls in one session: run them, tell the client, answer the model.

The service streams a call's arguments and ends the response; once the response has
completed (not cancelled by a barge-in: its arguments would be cut short), the relay runs
each call
(concurrently, up to the toolbox's limit, each with its own timeout, never raising: a
failure is an error output the model can apologise for), and once that response is done
and every call of it has an outcome, sends the outputs as ``function_call_output`` items.
Only then does it ask for the next response (``response.create``), so the service never
sees a create while a response is active; and not at all when the caller has started
speaking meanwhile: the caller's turn brings its own response, with the outputs already in
the conversation. The client only ever hears *about* tools (``{"type": "tool"}``); it
can neither define nor call one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson
import structlog

if TYPE_CHECKING:
    from voicebridge.metrics import Metrics
    from voicebridge.tools import Toolbox, ToolCall, ToolOutcome

log = structlog.get_logger("voicebridge.relay.session")


def tool_message(
    call: ToolCall,
    status: str,
    *,
    outcome: ToolOutcome | None = None,
    show_arguments: bool = False,
) -> str:
    """The client's ``{"type": "tool", ...}`` message (arguments and output only on request:
    they may hold personal data)."""
    message: dict[str, Any] = {
        "type": "tool",
        "name": call.name,
        "call_id": call.call_id,
        "status": status,
    }
    if outcome is not None:
        message["duration_ms"] = round(outcome.duration_ms)
        if outcome.error:
            message["error"] = outcome.error
    if show_arguments:
        message["arguments"] = call.arguments
        if outcome is not None:
            message["output"] = outcome.output
    return orjson.dumps(message).decode()


class ToolCalls:
    """Calls in flight, by the response that made them."""

    def __init__(
        self,
        toolbox: Toolbox,
        *,
        session_id: str,
        show_arguments: bool,
        send_client: Callable[[str], None],
        metrics: Metrics,
    ) -> None:
        self.toolbox = toolbox
        self.session_id = session_id
        self.show_arguments = show_arguments
        self._send_client = send_client
        self._metrics = metrics
        self._limit = asyncio.Semaphore(max(1, toolbox.max_concurrent))
        self._requested: dict[str | None, list[ToolCall]] = {}
        self._pending: dict[str | None, list[tuple[ToolCall, asyncio.Task[ToolOutcome]]]] = {}
        self.count = 0

    def requested(self, response_id: str | None, call: ToolCall) -> None:
        """The model asked for ``call``; it runs only if its response completes (a
        response cut by a barge-in leaves its arguments cut short too)."""
        self._requested.setdefault(response_id, []).append(call)

    def start(self, tasks: asyncio.TaskGroup, response_id: str | None, completed: bool) -> bool:
        """The response is done: run its calls (if it completed); True if any started."""
        calls = self._requested.pop(response_id, [])
        if not completed:
            if calls:
                log.info("session.tool_calls_dropped", calls=len(calls), reason="not completed")
            return False
        for call in calls:
            self.count += 1
            self._send_client(tool_message(call, "started", show_arguments=self.show_arguments))
            task = tasks.create_task(self._run(call), name=f"tool-{call.name}")
            self._pending.setdefault(response_id, []).append((call, task))
        return bool(calls)

    async def outcomes(self, response_id: str | None) -> list[tuple[ToolCall, ToolOutcome]]:
        """Every call ``response_id`` made with its outcome, in the order they were made."""
        pending = self._pending.pop(response_id, [])
        return [(call, await task) for call, task in pending]

    async def _run(self, call: ToolCall) -> ToolOutcome:
        started = time.monotonic()
        async with self._limit:
            outcome = await self.toolbox.run(call, session_id=self.session_id)
        label = call.name if self.toolbox.is_known(call.name) else "unknown"
        result = "ok" if outcome.ok else "failed"
        self._metrics.tool_calls.labels(tool=label, outcome=result).inc()
        self._metrics.tool_duration.labels(tool=label).observe(time.monotonic() - started)
        status = "done" if outcome.ok else "failed"
        self._send_client(
            tool_message(call, status, outcome=outcome, show_arguments=self.show_arguments)
        )
        return outcome
