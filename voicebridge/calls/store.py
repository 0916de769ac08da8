"""The call store contract: the protocol every backend implements, the query and page
types of ``GET /calls``, the errors, and ``create_store`` for a ``CALL_STORE`` value.

One implementation serves both databases: :class:`voicebridge.calls.sql.SqlCallStore`
(SQLAlchemy 2 async Core, ``aiosqlite`` for the SQLite file default, ``asyncpg`` for
PostgreSQL). It is imported only when a store is made, so ``CALL_STORE=off`` costs no
import, and a missing driver is reported as what to install.
"""

from __future__ import annotations

import builtins
import datetime as dt
from collections.abc import Sequence
from typing import Final, Protocol, runtime_checkable

import attrs

from voicebridge.calls.record import CallRecord
from voicebridge.calls.settings import store_kind

MAX_PAGE: Final = 200
DEFAULT_PAGE: Final = 50
MAX_QUERY_CHARS: Final = 200


class StoreError(Exception):
    """The store refused something (a record it cannot hold, a bad URL, a missing driver)."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, or did not answer in time: a later try may work."""


@attrs.frozen
class CallQuery:
    """The filters of ``GET /calls``; every one optional. Times are aware datetimes;
    ``text`` is found case-insensitively in any turn's words."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    channel: str | None = None
    end_reason: str | None = None
    instance: str | None = None
    text: str | None = None
    limit: int = DEFAULT_PAGE
    offset: int = 0


@attrs.frozen
class CallPage:
    """One page of calls, newest first (their records without turns)."""

    calls: tuple[CallRecord, ...]
    total: int
    offset: int
    limit: int

    @property
    def next_offset(self) -> int | None:
        end = self.offset + len(self.calls)
        return end if end < self.total else None


@runtime_checkable
class CallStore(Protocol):
    """Where finished calls are kept and searched."""

    #: The store, for logs and ``/health``: kind and masked URL.
    description: str

    async def migrate(self) -> int:
        """Bring the schema up to date (safe to run from several processes at once);
        the schema version."""

    async def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the database answers."""

    async def write(self, records: Sequence[CallRecord]) -> int:
        """Store records in one transaction; a call id already stored is left as it is
        (so a replayed record is harmless). How many were new."""

    async def list(self, query: CallQuery) -> CallPage:
        """Calls matching ``query``, newest first."""

    async def get(self, call_id: str) -> CallRecord | None:
        """One call with its turns in order, or None."""

    async def purge(self, before: dt.datetime) -> int:
        """Delete calls that started before ``before``; how many."""

    async def ids(self) -> builtins.list[str]:
        """Every stored call id (for tests and tools)."""

    async def close(self) -> None:
        """Release connections."""


def create_store(url: str, *, timeout_s: float = 5.0) -> CallStore:
    """The store a normalised ``CALL_STORE`` value names (not ``off``). Nothing is
    connected until it is used."""
    kind = store_kind(url)
    if kind == "off":
        raise StoreError("call records are off (CALL_STORE=off)")
    try:
        from voicebridge.calls.sql import SqlCallStore
    except ImportError as exc:
        raise StoreError(
            f"call records need SQLAlchemy and aiosqlite ({exc.name} is missing; both are "
            "part of voicebridge's install), or CALL_STORE=off"
        ) from None
    return SqlCallStore(url, timeout_s=timeout_s)
