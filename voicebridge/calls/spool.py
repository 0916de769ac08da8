"""The spool: an append-only local file (JSON lines) for records the store cannot take
right now, read back into the store once it can.

Every file operation runs on one worker thread of its own, in order, so the event loop
never waits for the disk and an append never interleaves with a claim. Processes sharing
the file (several instances in one working directory) take an ``flock`` on
``<spool>.lock`` around appends and claims.

Replaying: ``claim()`` renames the spool to ``<spool>.replay-<host>-<pid>-<n>`` (new
records then start a fresh spool), the writer stores the claimed file's records batch by
batch and ``remove()``s it once all are stored. A claimed file left by a process that
died is claimed again by the next replay on the same host. Storing is idempotent (a call
id already stored is skipped), so a replay cut short and repeated duplicates nothing.

Bounded: past ``max_bytes`` new records are not spooled and are counted as lost and
logged with their call ids (the policy for a database that stays down for days).
Lines that cannot be read back (a torn last line after a crash) go to
``<spool>.rejected``, as do records the store refuses, so nothing is deleted unread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

import attrs
import orjson

from voicebridge.calls.record import RECORD_VERSION, CallRecord

try:
    import fcntl
except ImportError:  # not on Windows: one process per spool file there
    fcntl = None  # type: ignore[assignment]

REPLAY_TAG: Final = ".replay-"


@attrs.frozen
class ReadBatch:
    """Records read from a claimed file, where to go on, and what could not be read."""

    records: tuple[CallRecord, ...]
    offset: int
    done: bool
    bad_lines: int


class Spool:
    """One spool file (see the module docstring)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.rejected_path = path.with_name(path.name + ".rejected")
        self._lock_path = path.with_name(path.name + ".lock")
        self._host = socket.gethostname().replace("-", "_")
        self._tag = f"{self._host}-{os.getpid()}"
        self._serial = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="calls-spool"
        )

    # -- the worker thread's side --------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:
            yield
            return
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _append(self, records: Sequence[CallRecord]) -> int:
        lines = [
            orjson.dumps({"v": RECORD_VERSION, "record": r.as_dict()}) + b"\n" for r in records
        ]
        with self._locked():
            size = self.path.stat().st_size if self.path.exists() else 0
            kept = []
            for line in lines:
                if size + len(line) > self.max_bytes:
                    break
                kept.append(line)
                size += len(line)
            if kept:
                with self.path.open("ab") as out:
                    out.write(b"".join(kept))
                    out.flush()
                    os.fsync(out.fileno())
        return len(kept)

    def _claim(self) -> list[Path]:
        with self._locked():
            claimed = []
            for path in sorted(self.path.parent.glob(self.path.name + REPLAY_TAG + "*")):
                owner = path.name[len(self.path.name + REPLAY_TAG) :]
                if owner.startswith(self._tag + "-"):
                    claimed.append(path)
                elif self._orphan(owner):
                    claimed.append(self._rename(path))
            if self.path.exists() and self.path.stat().st_size > 0:
                claimed.append(self._rename(self.path))
        return claimed

    def _rename(self, path: Path) -> Path:
        target = path.with_name(f"{self.path.name}{REPLAY_TAG}{self._tag}-{next(self._serial)}")
        while target.exists():
            target = target.with_name(
                f"{self.path.name}{REPLAY_TAG}{self._tag}-{next(self._serial)}"
            )
        path.rename(target)
        return target

    def _orphan(self, owner: str) -> bool:
        """Whether a claimed file's owner (``host-pid-n``) is a dead process of this host."""
        host, _, rest = owner.partition("-")
        pid_text = rest.partition("-")[0]
        if host != self._host or not pid_text.isdigit():
            return False
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    def _read(self, path: Path, offset: int, max_records: int) -> ReadBatch:
        records: list[CallRecord] = []
        bad: list[bytes] = []
        with path.open("rb") as source:
            source.seek(offset)
            while len(records) < max_records:
                line = source.readline()
                if not line:
                    break
                offset += len(line)
                if not line.strip():
                    continue
                try:
                    records.append(CallRecord.from_dict(orjson.loads(line)["record"]))
                except (ValueError, KeyError, TypeError):
                    bad.append(line if line.endswith(b"\n") else line + b"\n")
            done = not source.readline()
        if bad:
            self._write_rejected(bad)
        return ReadBatch(tuple(records), offset, done, len(bad))

    def _write_rejected(self, lines: Sequence[bytes]) -> None:
        self.rejected_path.parent.mkdir(parents=True, exist_ok=True)
        with self.rejected_path.open("ab") as out:
            out.write(b"".join(lines))
            out.flush()
            os.fsync(out.fileno())

    def _reject(self, records: Sequence[CallRecord], reason: str) -> None:
        self._write_rejected(
            [
                orjson.dumps({"v": RECORD_VERSION, "reason": reason, "record": r.as_dict()}) + b"\n"
                for r in records
            ]
        )

    def _has_records(self) -> bool:
        if self.path.exists() and self.path.stat().st_size > 0:
            return True
        for path in self.path.parent.glob(self.path.name + REPLAY_TAG + "*"):
            owner = path.name[len(self.path.name + REPLAY_TAG) :]
            if owner.startswith(self._tag + "-") or self._orphan(owner):
                return True
        return False

    # -- the event loop's side ----------------------------------------------------------

    def append_nowait(self, records: Sequence[CallRecord]) -> concurrent.futures.Future[int]:
        """Queue records for the file and return at once; the future says how many were
        kept (fewer than given past ``max_bytes``) or raises the disk's error."""
        return self._executor.submit(self._append, tuple(records))

    async def append(self, records: Sequence[CallRecord]) -> int:
        """Append records; how many were kept (see ``append_nowait``)."""
        return await asyncio.wrap_future(self.append_nowait(records))

    async def claim(self) -> list[Path]:
        """Take the spooled records for replaying: the files to read, oldest first."""
        return await asyncio.wrap_future(self._executor.submit(self._claim))

    async def read(self, path: Path, offset: int, max_records: int) -> ReadBatch:
        """Up to ``max_records`` records of a claimed file from byte ``offset``."""
        return await asyncio.wrap_future(
            self._executor.submit(self._read, path, offset, max_records)
        )

    async def remove(self, path: Path) -> None:
        """Delete a claimed file whose records are all stored."""
        await asyncio.wrap_future(self._executor.submit(path.unlink, True))

    async def reject(self, records: Sequence[CallRecord], reason: str) -> None:
        """Keep records the store refused in ``<spool>.rejected``, with the reason."""
        await asyncio.wrap_future(self._executor.submit(self._reject, tuple(records), reason))

    async def has_records(self) -> bool:
        """Whether anything waits to be replayed (a spool, or claimed files of this or a
        dead process)."""
        return await asyncio.wrap_future(self._executor.submit(self._has_records))

    async def close(self) -> None:
        """Finish every queued file operation and stop the worker thread."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
