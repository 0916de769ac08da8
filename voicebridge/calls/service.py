"""The call log: one per process. It owns the store, the spool, the background writer and
the retention purge, makes a recorder for each call, and answers the admin routes.

    log = CallLog(settings, instance=registry.instance_id, registry=metrics.registry)
    await log.start()                      # migrations; a store that is down is not fatal
    recorder = log.recorder(session_id, channel="browser", instance=..., client=...)
    ...                                    # the session tells the recorder what happens
    recorder.ended("client_closed", 1000)  # the record goes to the writer; never blocks
    await log.close(timeout=5)             # the queue is written out or spooled
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
from pathlib import Path
from typing import Any, Final

import structlog
from prometheus_client import CollectorRegistry

from voicebridge.calls.cost import estimate
from voicebridge.calls.metrics import CallMetrics
from voicebridge.calls.record import UTC, CallRecord, Usage
from voicebridge.calls.recorder import CallRecorder
from voicebridge.calls.settings import CallSettings
from voicebridge.calls.spool import Spool
from voicebridge.calls.store import (
    CallPage,
    CallQuery,
    CallStore,
    StoreError,
    StoreUnavailable,
    create_store,
)
from voicebridge.calls.writer import CallWriter
from voicebridge.logs import LimitedLog

log = structlog.get_logger(__name__)

#: How often records past ``CALL_RETENTION_DAYS`` are deleted (and once at start-up).
PURGE_EVERY_S: Final = 3600.0


class CallLog:
    """Call records of this process (see the module docstring)."""

    def __init__(
        self,
        settings: CallSettings,
        *,
        instance: str = "",
        registry: CollectorRegistry | None = None,
        store: CallStore | None = None,
        purge_every_s: float = PURGE_EVERY_S,
    ) -> None:
        if not settings.enabled:
            raise StoreError("call records are off (CALL_STORE=off)")
        self.settings = settings
        self.instance = instance
        self.metrics = CallMetrics(registry) if registry is not None else CallMetrics()
        self.store = store or create_store(settings.store, timeout_s=settings.write_timeout_s)
        self.spool = Spool(
            Path(settings.spool_file).expanduser().resolve(),
            max_bytes=int(settings.spool_max_mb * 1024 * 1024),
        )
        self.writer = CallWriter(
            self.store,
            self.spool,
            queue_max=settings.queue_max,
            retry_s=settings.retry_s,
            metrics=self.metrics,
        )
        self.purge_every_s = purge_every_s
        self._purger: asyncio.Task[None] | None = None
        #: Set each time the periodic purge has run (for tests and tools).
        self.purged = asyncio.Event()
        self._limited = LimitedLog()
        self._started = False

    @property
    def description(self) -> str:
        return self.store.description

    async def start(self) -> None:
        """Migrate the schema and start the writer and the purge. A store that cannot be
        reached is not fatal: records are spooled until it answers. Raises
        :class:`StoreError` for one that can never work (say, no permission)."""
        up = True
        version: int | None = None
        try:
            version = await self.store.migrate()
        except StoreUnavailable as exc:
            up = False
            log.warning(
                "calls.store_unavailable",
                store=self.store.description,
                error=str(exc),
                note=f"records are spooled to {self.spool.path} until it answers",
            )
        except StoreError:
            await self.spool.close()
            await self.store.close()
            raise
        await self.writer.start(up=up)
        if self.settings.retention_days > 0:
            self._purger = asyncio.get_running_loop().create_task(
                self._purge_loop(), name="calls-purge"
            )
        self._started = True
        log.info(
            "calls.started",
            store=self.store.description,
            schema=version,
            retention_days=self.settings.retention_days,
            redact=self.settings.redact,
            spool=str(self.spool.path),
        )
        for note in self.settings.notes():
            log.warning("calls.note", note=note)

    async def close(self, timeout: float = 10.0) -> None:  # noqa: ASYNC109 (the app's interface)
        """Stop the purge, write out (or spool) every queued record within ``timeout``,
        release the database."""
        if self._purger is not None:
            self._purger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._purger
            self._purger = None
        if self._started:
            await self.writer.close(timeout)
        await self.spool.close()
        await self.store.close()
        self._started = False
        log.info("calls.closed", store=self.store.description)

    # -- recording ----------------------------------------------------------------------

    def recorder(
        self,
        session_id: str,
        *,
        channel: str,
        instance: str | None = None,
        client: str = "",
        metadata: dict[str, str] | None = None,
        started_at: float | None = None,
    ) -> CallRecorder:
        """A recorder for one call; its ``ended()`` hands the record to the writer."""
        return CallRecorder(
            call_id=session_id,
            channel=channel,
            instance=instance if instance is not None else self.instance,
            client=client,
            submit=self.writer.submit,
            prices=self.settings.prices,
            redaction=self.settings.redact,
            on_usage=self._count_usage,
            started_at=time.time() if started_at is None else started_at,
            metadata=dict(metadata or {}),
        )

    def submit(self, record: CallRecord) -> None:
        """Hand a finished record to the writer (recorders do this themselves)."""
        self.writer.submit(record)

    def _count_usage(self, usage: Usage) -> None:
        self.metrics.count_usage(usage, estimate(usage, self.settings.prices))

    # -- reading ------------------------------------------------------------------------

    async def list(self, query: CallQuery) -> CallPage:
        """Calls matching ``query``, newest first; StoreUnavailable if the store is down."""
        return await self.store.list(query)

    async def get(self, call_id: str) -> CallRecord | None:
        """One call with its turns; StoreUnavailable if the store is down."""
        return await self.store.get(call_id)

    def healthy(self) -> bool:
        """Whether the store takes writes right now (records are spooled while not)."""
        return self.writer.up is True

    def status(self) -> dict[str, Any]:
        """For ``/health``: the store's kind, whether it is up, and the backlog."""
        return {
            "store": self.settings.kind,
            "up": self.healthy(),
            "queued": self.writer.queued,
            "spooled": self.writer.backlog,
        }

    # -- retention ----------------------------------------------------------------------

    async def purge_now(self) -> int:
        """Delete calls older than ``CALL_RETENTION_DAYS``; how many."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        before = dt.datetime.now(UTC) - dt.timedelta(days=days)
        deleted = await self.store.purge(before)
        if deleted:
            log.info("calls.purged", deleted=deleted, before=before.isoformat())
        return deleted

    async def _purge_loop(self) -> None:
        while True:
            try:
                await self.purge_now()
            except StoreError as exc:
                self._limited.warning(log, "calls.purge_failed", error=str(exc))
            self.purged.set()
            await asyncio.sleep(self.purge_every_s)
            self.purged.clear()
