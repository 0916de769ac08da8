"""The background writer: finished records go from the sessions to the store without a
session ever waiting for the database.

``submit()`` is synchronous and O(1): it appends to a bounded queue and wakes the writer
task. Overflow policy: a record that finds the queue full (``CALL_QUEUE_MAX``) goes
straight to the spool file (on the spool's own thread; counted in
``voicebridge_call_queue_overflows_total`` and logged at most once a minute), never
dropped and never waited for.

One task does everything else, so there is no race between writing, spooling and
replaying: it takes batches from the queue and writes each in one transaction. When the
store is unavailable (down, refusing, or not answering within ``CALL_WRITE_TIMEOUT_S``)
the batch is spooled, and so is everything after it, while every ``CALL_RETRY_S`` the
writer checks the store (running the migrations: a database recreated empty gets its
tables); once it answers, the spool is replayed into it, and writing resumes. A record
the store refuses for its content goes to ``<spool>.rejected`` with the reason.

``close(timeout)``: the queue is written out (or spooled if the store is down) within
the timeout; whatever is still in hand then is spooled. Nothing is lost on a graceful
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Final

import structlog

from voicebridge.calls.metrics import CallMetrics
from voicebridge.calls.record import CallRecord
from voicebridge.calls.spool import Spool
from voicebridge.calls.store import CallStore, StoreError, StoreUnavailable
from voicebridge.logs import LimitedLog

log = structlog.get_logger(__name__)

BATCH_MAX: Final = 50


class CallWriter:
    """Writes submitted records to ``store``, spooling what it cannot write."""

    def __init__(
        self,
        store: CallStore,
        spool: Spool,
        *,
        queue_max: int,
        retry_s: float,
        metrics: CallMetrics,
        batch_max: int = BATCH_MAX,
    ) -> None:
        self.store = store
        self.spool = spool
        self.queue_max = queue_max
        self.retry_s = retry_s
        self.metrics = metrics
        self.batch_max = batch_max
        #: True while the store takes writes; None until first known.
        self.up: bool | None = None
        self._queue: deque[CallRecord] = deque()
        self._wake = asyncio.Event()
        self._inflight: list[CallRecord] = []
        self._spool_dirty = False
        self._next_try = 0.0
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._limited = LimitedLog()
        self._idle = asyncio.Event()
        self._idle.set()
        self._caught_up = asyncio.Event()
        self._outage_started: float | None = None

    # -- the sessions' side ---------------------------------------------------------------

    def submit(self, record: CallRecord) -> None:
        """Hand over a finished record; returns at once, whatever the store is doing."""
        if len(self._queue) >= self.queue_max or self._task is None or self._task.done():
            self._overflow(record)
            return
        self._queue.append(record)
        self._idle.clear()
        self._wake.set()

    def _overflow(self, record: CallRecord) -> None:
        self.metrics.overflows.inc()
        self._limited.warning(
            log,
            "calls.queue_full",
            queue_max=self.queue_max,
            note="records go straight to the spool file; the store is slower than calls end",
        )
        self._set_dirty()
        future = self.spool.append_nowait([record])
        future.add_done_callback(lambda f: self._spooled([record], f))

    def _spooled(self, records: Sequence[CallRecord], future: Future[int]) -> None:
        # On the spool's thread: only counters and the (thread-safe) log.
        try:
            kept = future.result()
        except Exception as exc:
            kept = 0
            log.error("calls.spool_failed", error=f"{type(exc).__name__}: {exc}")
        self.metrics.count("spooled", kept)
        if kept < len(records):
            self._lost(records[kept:], "the spool file is full (CALL_SPOOL_MAX_MB)")

    def _lost(self, records: Sequence[CallRecord], why: str) -> None:
        self.metrics.count("lost", len(records))
        log.error("calls.records_lost", call_ids=[r.call_id for r in records], reason=why)

    # -- state ----------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def backlog(self) -> bool:
        """Whether spooled records wait for the store."""
        return self._spool_dirty

    async def idle(self) -> None:
        """Until the queue is empty and nothing is being written (for tests and tools)."""
        await self._idle.wait()

    async def caught_up(self) -> None:
        """Until the store is up with nothing left in the spool or the queue (for tests
        and tools)."""
        while True:
            await self._caught_up.wait()
            await self._idle.wait()
            if self._caught_up.is_set() and self._idle.is_set():
                return

    def _set_dirty(self) -> None:
        self._spool_dirty = True
        self._caught_up.clear()

    # -- the writer task ------------------------------------------------------------------

    async def start(self, *, up: bool | None) -> None:
        """Start the writer; ``up``: what the caller found (None: not tried yet)."""
        self.up = up
        self.metrics.store_up.set(1 if up else 0)
        if await self.spool.has_records():
            self._set_dirty()
        elif up:
            self._caught_up.set()
        if up is False:
            self._next_try = time.monotonic() + self.retry_s
            self._outage_started = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="calls-writer")

    async def _run(self) -> None:
        while True:
            try:
                if not await self._step():
                    return
            except Exception:
                # A bug or a disk error must not stop the writer for good: say so, keep
                # what was in hand, and carry on after a pause.
                log.exception("calls.writer_failed")
                left, self._inflight = self._inflight, []
                if left:
                    with contextlib.suppress(Exception):
                        await self._to_spool(left)
                self._set_dirty()
                self._next_try = time.monotonic() + self.retry_s
                await asyncio.sleep(self.retry_s)

    async def _step(self) -> bool:
        """One turn of the writer: a recovery attempt or a batch; False once closed."""
        wait_s: float | None = None
        if not self._closing and (self.up is not True or self._spool_dirty):
            wait_s = self._next_try - time.monotonic()
            if wait_s <= 0:
                await self._recover()
                return True
        batch = await self._take(wait_s)
        if not batch:
            return not self._closing
        # Kept until handled: if close() cancels this task meanwhile, it spools them
        # (a record both written and spooled is harmless: replays skip stored ids).
        self._inflight = batch
        if self.up:
            await self._write(batch)
        else:
            await self._to_spool(batch)
        self._inflight = []
        if not self._queue:
            self._idle.set()
        return True

    async def _take(self, wait_s: float | None) -> list[CallRecord]:
        if not self._queue:
            if self._closing:
                return []
            self._idle.set()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
        batch: list[CallRecord] = []
        while self._queue and len(batch) < self.batch_max:
            batch.append(self._queue.popleft())
        return batch

    async def _write(self, batch: list[CallRecord], outcome: str = "written") -> None:
        """Store a batch; spool it if the store is unavailable. Raises nothing."""
        try:
            await self.store.write(batch)
            self.metrics.count(outcome, len(batch))
            return
        except StoreUnavailable as exc:
            self._went_down(exc)
            await self._to_spool(batch)
            return
        except StoreError:
            pass
        # One of them is refused: find which, one at a time.
        for index, record in enumerate(batch):
            try:
                await self.store.write([record])
                self.metrics.count(outcome, 1)
            except StoreUnavailable as exc:
                self._went_down(exc)
                await self._to_spool(batch[index:])
                return
            except StoreError as exc:
                await self._reject(record, str(exc))

    async def _reject(self, record: CallRecord, reason: str) -> None:
        log.error("calls.record_rejected", call_id=record.call_id, error=reason)
        try:
            await self.spool.reject([record], reason)
            self.metrics.count("rejected")
        except Exception as exc:
            self._lost([record], f"rejected, and the rejected file failed: {exc}")

    async def _to_spool(self, records: Sequence[CallRecord]) -> None:
        self._set_dirty()
        try:
            kept = await self.spool.append(records)
        except Exception as exc:
            log.error("calls.spool_failed", error=f"{type(exc).__name__}: {exc}")
            kept = 0
        self.metrics.count("spooled", kept)
        if kept < len(records):
            self._lost(records[kept:], "the spool file could not take them")

    def _went_down(self, exc: StoreUnavailable) -> None:
        self._next_try = time.monotonic() + self.retry_s
        if self.up is not False:
            self._outage_started = time.monotonic()
            log.warning(
                "calls.store_unavailable",
                store=self.store.description,
                error=str(exc),
                note=f"records are spooled to {self.spool.path} until it answers",
            )
        else:
            self._limited.warning(log, "calls.store_still_unavailable", error=str(exc))
        self.up = False
        self._caught_up.clear()
        self.metrics.store_up.set(0)

    async def _recover(self) -> None:
        """Check the store (migrating it), then replay the spool into it."""
        try:
            if self.up is not True:
                await self.store.migrate()
            self._spool_dirty = False
            replayed = await self._replay()
        except StoreUnavailable as exc:
            self._set_dirty()
            self._went_down(exc)
            return
        except StoreError as exc:
            # The store answers but refuses the schema (a permissions problem, say):
            # keep spooling and say so, rather than retrying at full speed.
            self._set_dirty()
            self._next_try = time.monotonic() + self.retry_s
            self._limited.warning(log, "calls.store_refused", error=str(exc))
            return
        if self.up is not True:
            down_s = (
                round(time.monotonic() - self._outage_started, 1)
                if self._outage_started is not None
                else None
            )
            log.info("calls.store_restored", store=self.store.description, down_s=down_s)
        if replayed:
            log.info("calls.spool_replayed", records=replayed)
        self.up = True
        self._outage_started = None
        self.metrics.store_up.set(1)
        if not self._spool_dirty:
            self._caught_up.set()

    async def _replay(self) -> int:
        """Store every spooled record; how many. Raises StoreUnavailable, leaving the rest
        claimed for the next try."""
        replayed = 0
        for path in await self.spool.claim():
            offset = 0
            while True:
                batch = await self.spool.read(path, offset, self.batch_max)
                if batch.bad_lines:
                    log.error("calls.spool_unreadable", path=str(path), lines=batch.bad_lines)
                if batch.records:
                    await self._replay_batch(list(batch.records))
                    replayed += len(batch.records)
                offset = batch.offset
                if batch.done:
                    break
            await self.spool.remove(path)
        return replayed

    async def _replay_batch(self, batch: list[CallRecord]) -> None:
        try:
            await self.store.write(batch)
            self.metrics.count("replayed", len(batch))
            return
        except StoreError as exc:
            if isinstance(exc, StoreUnavailable):
                raise
        for record in batch:
            try:
                await self.store.write([record])
                self.metrics.count("replayed")
            except StoreUnavailable:
                raise
            except StoreError as exc:
                await self._reject(record, str(exc))

    # -- shutdown -------------------------------------------------------------------------

    async def close(self, timeout: float) -> None:  # noqa: ASYNC109 (the app's interface)
        """Write out (or spool) what is queued within ``timeout``; spool what is left."""
        self._closing = True
        self._wake.set()
        task = self._task
        if task is not None:
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(task)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        left = [*self._inflight, *self._queue]
        self._inflight = []
        self._queue.clear()
        if left:
            log.warning("calls.spooled_at_shutdown", records=len(left))
            await self._to_spool(left)
        self._idle.set()
