"""The in-process session registry: the default, for a single server process."""

from __future__ import annotations

import builtins
import time
from collections.abc import Mapping
from typing import Any

import attrs

from voicebridge.logs import LimitedLog
from voicebridge.registry.base import (
    EndDispatcher,
    EndHandler,
    SessionRecord,
    SnapshotSource,
    default_instance_id,
    pull_snapshots,
)


@attrs.define
class LocalHandoffs:
    """Handoffs in a dict, each until its expiry (expired ones go as new ones come)."""

    _items: dict[str, tuple[float, dict[str, Any]]] = attrs.field(factory=dict)

    def save(self, key: str, data: Mapping[str, Any], ttl_s: float) -> None:
        now = time.monotonic()
        for old in [k for k, (until, _) in self._items.items() if until <= now]:
            del self._items[old]
        self._items[key] = (now + ttl_s, dict(data))

    def load(self, key: str, *, remove: bool = False) -> dict[str, Any] | None:
        entry = self._items.pop(key, None) if remove else self._items.get(key)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return dict(entry[1])


@attrs.define
class MemoryRegistry:
    """Sessions in a dict. Every call is synchronous underneath, so the cap check and the
    insert in `register` cannot interleave with another coroutine's. With a snapshot
    source installed, `list` and `get` read the sessions' latest state from it."""

    instance_id: str = attrs.field(factory=default_instance_id)
    _sessions: dict[str, SessionRecord] = attrs.field(factory=dict, init=False)
    _ends: EndDispatcher = attrs.field(init=False)
    _snapshot_source: SnapshotSource | None = attrs.field(default=None, init=False)
    _limited: LimitedLog = attrs.field(factory=LimitedLog, init=False)
    _handoffs: LocalHandoffs = attrs.field(factory=LocalHandoffs, init=False)

    @_ends.default
    def _make_dispatcher(self) -> EndDispatcher:
        return EndDispatcher(self.instance_id)

    async def start(self) -> None:
        """Nothing to connect to."""

    async def close(self) -> None:
        """Finish (or cancel) pending end handlers and forget every session."""
        await self._ends.aclose()
        self._sessions.clear()

    def set_end_handler(self, handler: EndHandler) -> None:
        """Install the coroutine that ends a local session."""
        self._ends.handler = handler

    def set_snapshot_source(self, source: SnapshotSource) -> None:
        """Install the callable `list` and `get` pull sessions' latest state from."""
        self._snapshot_source = source

    async def register(self, record: SessionRecord, *, max_sessions: int) -> bool:
        """Add a session unless `max_sessions` (> 0) sessions are already live."""
        if (
            max_sessions > 0
            and record.session_id not in self._sessions
            and len(self._sessions) >= max_sessions
        ):
            return False
        self._sessions[record.session_id] = record
        return True

    async def update(self, session_id: str, *, state: str, metrics: Mapping[str, Any]) -> None:
        """Replace a session's state and metrics; unknown ids are ignored."""
        record = self._sessions.get(session_id)
        if record is not None:
            self._sessions[session_id] = attrs.evolve(record, state=state, metrics=metrics)

    async def unregister(self, session_id: str) -> None:
        """Remove a session (no error if it is not there)."""
        self._sessions.pop(session_id, None)

    async def list(self) -> builtins.list[SessionRecord]:
        """Every session, oldest first."""
        pull_snapshots(self._sessions, self._snapshot_source, self._limited)
        return sorted(self._sessions.values(), key=lambda r: r.started_at)

    async def get(self, session_id: str) -> SessionRecord | None:
        """One session, or None."""
        pull_snapshots(self._sessions, self._snapshot_source, self._limited)
        return self._sessions.get(session_id)

    async def request_end(self, session_id: str, reason: str = "ended by admin") -> bool:
        """Schedule the end handler for a session and return at once (without waiting for
        the session to end); False for an unknown id."""
        if session_id not in self._sessions:
            return False
        self._ends.dispatch(session_id, reason)
        return True

    async def count(self) -> int:
        """The number of sessions."""
        return len(self._sessions)

    def healthy(self) -> bool:
        """Always reachable."""
        return True

    async def save_handoff(self, key: str, data: Mapping[str, Any], *, ttl_s: float) -> None:
        self._handoffs.save(key, data, ttl_s)

    async def load_handoff(self, key: str, *, remove: bool = False) -> dict[str, Any] | None:
        return self._handoffs.load(key, remove=remove)
