"""Call records: every call kept, searchable and costed, without slowing a call down.

A :class:`CallLog` per process owns the store (SQLite by default, PostgreSQL for several
instances: :mod:`.sql`), the background writer (:mod:`.writer`) and its spool file
(:mod:`.spool`), and the retention purge. Each call gets a recorder (:mod:`.recorder`)
whose cheap synchronous methods the session calls; when the call ends the record goes
to the writer without waiting. ``add_call_routes`` (:mod:`.routes`) serves ``GET
/calls`` and ``GET /calls/{id}`` to admins; ``/static/calls.html`` reads them.

Settings (``CALL_*``) are in :mod:`.settings`. SQLAlchemy is imported only when a store
is created, so ``CALL_STORE=off`` costs nothing.
"""

from __future__ import annotations

from voicebridge.calls.record import CallRecord, Latency, Turn, Usage
from voicebridge.calls.recorder import CallRecorder, NullRecorder, Recorder
from voicebridge.calls.routes import add_call_routes
from voicebridge.calls.service import CallLog
from voicebridge.calls.settings import CallSettings, Prices, parse
from voicebridge.calls.store import (
    CallPage,
    CallQuery,
    CallStore,
    StoreError,
    StoreUnavailable,
    create_store,
)

__all__ = [
    "CallLog",
    "CallPage",
    "CallQuery",
    "CallRecord",
    "CallRecorder",
    "CallSettings",
    "CallStore",
    "Latency",
    "NullRecorder",
    "Prices",
    "Recorder",
    "StoreError",
    "StoreUnavailable",
    "Turn",
    "Usage",
    "add_call_routes",
    "create_store",
    "parse",
]
