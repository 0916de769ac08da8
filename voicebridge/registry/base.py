"""The session registry contract: the record, the protocol every backend implements, and
the small pieces the backends share (instance ids, end-request dispatch, pulling session
snapshots)."""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import attrs
import structlog

from voicebridge.logs import LimitedLog

log = structlog.get_logger(__name__)

#: Ends a session held by this process: ``(session_id, reason)``.
EndHandler = Callable[[str, str], Awaitable[None]]


class RegistryError(Exception):
    """The registry cannot do what was asked (backend unavailable, bad URL, missing extra)."""


def _copy_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    # A copy, so a session mutating its own metrics dict later cannot change a record
    # that was already published.
    return dict(metrics)


@attrs.frozen
class SessionRecord:
    """What the registry knows about one live session."""

    session_id: str
    instance: str
    state: str
    started_at: float
    client: str
    metrics: Mapping[str, Any] = attrs.field(factory=dict, converter=_copy_metrics)

    def as_dict(self) -> dict[str, Any]:
        """The record as a JSON-able dict (the shape `/sessions` returns)."""
        return {
            "session_id": self.session_id,
            "instance": self.instance,
            "state": self.state,
            "started_at": self.started_at,
            "client": self.client,
            "metrics": dict(self.metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SessionRecord:
        """The inverse of `as_dict`."""
        return cls(
            session_id=str(data["session_id"]),
            instance=str(data["instance"]),
            state=str(data["state"]),
            started_at=float(data["started_at"]),
            client=str(data.get("client", "")),
            metrics=data.get("metrics") or {},
        )


@attrs.frozen
class SessionSnapshot:
    """A session's latest state and metrics, as the registry pulls them from the process
    holding the session (see `SessionRegistry.set_snapshot_source`)."""

    state: str
    metrics: Mapping[str, Any] = attrs.field(factory=dict, converter=_copy_metrics)


#: Returns the latest snapshot of each session this process holds, keyed by session id.
#: Called by the registry (from its heartbeat, `list` and `get`), so it must be cheap,
#: synchronous and not block.
SnapshotSource = Callable[[], Mapping[str, SessionSnapshot]]


@runtime_checkable
class SessionRegistry(Protocol):
    """Where every live session is listed, counted against the cap, and ended from.

    A process registers the sessions it holds; `list`/`get`/`count` see the sessions of
    every process sharing the backend; `request_end` reaches the process holding a session
    and calls the end handler that process installed with `set_end_handler`.
    """

    instance_id: str

    async def start(self) -> None:
        """Connect and start background tasks (heartbeat, subscriber)."""

    async def close(self) -> None:
        """Stop background tasks, remove this instance's sessions, disconnect."""

    def set_end_handler(self, handler: EndHandler) -> None:
        """Install the coroutine that ends a session held by this instance."""

    async def register(self, record: SessionRecord, *, max_sessions: int) -> bool:
        """Add a session; False when `max_sessions` (> 0) live sessions already exist."""

    def set_snapshot_source(self, source: SnapshotSource) -> None:
        """Install the callable the registry pulls this instance's sessions' latest state
        and metrics from, so sessions need not push them with `update`: the Redis backend
        writes them with each heartbeat, the memory backend reads them on `list`/`get`."""

    async def update(self, session_id: str, *, state: str, metrics: Mapping[str, Any]) -> None:
        """Publish a session's latest state and metrics now (say, on a state change)."""

    async def unregister(self, session_id: str) -> None:
        """Remove a session (no error if it is not there)."""

    async def list(self) -> builtins.list[SessionRecord]:
        """Every live session, on every instance."""

    async def get(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""

    async def request_end(self, session_id: str, reason: str = "ended by admin") -> bool:
        """Ask the holder of a session to end it; False when no such live session exists."""

    async def count(self) -> int:
        """The number of live sessions, on every instance."""

    def healthy(self) -> bool:
        """Whether the backend is reachable."""

    async def save_handoff(self, key: str, data: Mapping[str, Any], *, ttl_s: float) -> None:
        """Keep what a call's next session needs (how the last one ended, the conversation)
        for ``ttl_s`` seconds, where any instance can read it: a phone call moved to a new
        stream may land on another instance."""

    async def load_handoff(self, key: str, *, remove: bool = False) -> dict[str, Any] | None:
        """A handoff saved and not yet expired (and, with ``remove``, forget it); None."""


def default_instance_id() -> str:
    """`host-pid-random`: unique per process, readable in `/sessions` and logs."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def pull_snapshots(
    records: dict[str, SessionRecord], source: SnapshotSource | None, limited: LimitedLog
) -> None:
    """Bring each of `records` up to date with its session's snapshot, in place.

    A session the source does not list keeps its record; a snapshot of a session not in
    `records` (not registered, or refused by the cap) is ignored. A source that raises
    changes nothing and is logged, rate-limited: the registry must go on serving and
    renewing sessions whatever the source does.
    """
    if source is None:
        return
    try:
        snapshots = source()
        fresh = {
            session_id: attrs.evolve(record, state=snapshot.state, metrics=snapshot.metrics)
            for session_id, record in records.items()
            if (snapshot := snapshots.get(session_id)) is not None
        }
    except Exception as exc:
        limited.warning(
            log, "registry.snapshot_source_failed", error=f"{type(exc).__name__}: {exc}"
        )
        return
    records.update(fresh)


@attrs.define
class EndDispatcher:
    """Runs end handlers as tasks of their own.

    The handler ends a session, and ending a session awaits things (the relay's pumps, the
    registry's `unregister`), so it must not run inside `request_end` or the pub/sub reader:
    an admin route awaiting `request_end` for a session whose teardown awaits the same route
    would deadlock, and a slow handler would stall every other end request.
    """

    instance_id: str
    handler: EndHandler | None = None
    _tasks: set[asyncio.Task[None]] = attrs.field(factory=set, init=False)

    def dispatch(self, session_id: str, reason: str) -> None:
        """Schedule the handler for a session held by this instance."""
        if self.handler is None:
            log.warning("registry.no_end_handler", session_id=session_id, instance=self.instance_id)
            return
        task = asyncio.get_running_loop().create_task(
            self._run(self.handler, session_id, reason), name=f"registry-end-{session_id}"
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: EndHandler, session_id: str, reason: str) -> None:
        log.info("registry.end_requested", session_id=session_id, reason=reason)
        try:
            await handler(session_id, reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("registry.end_handler_failed", session_id=session_id)

    async def aclose(self, grace_s: float = 2.0) -> None:
        """Let running handlers finish for up to `grace_s`, then cancel and await them."""
        tasks = set(self._tasks)
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace_s)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task
