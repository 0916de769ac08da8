"""The client channel: the only code that touches the client's socket and its transport.

Output goes through one ordered queue of text frames and agent audio with a byte budget
for the audio; one writer at a time puts it on the socket (the upstream pump writes
directly while nothing is queued, which saves a task switch per frame on the hot path).
A barge-in drops queued audio in place. Agent audio is one binary frame per chunk, unless
the client's protocol frames it otherwise (a phone provider's JSON): then ``frames`` says
how, per chunk, and the chunk counts as written once all its frames are.

Slow peers are caught by one **stall clock** (the pattern of Home Assistant's
``websocket_api``), not by a timer per write: it records when the write now in progress
started, and the session's watchdog ends the session once a write has been pending for
longer than ``CLIENT_SEND_TIMEOUT_S``. For a write to be able to stall at all, the kernel's
send buffer is bounded to the audio budget: otherwise Linux grows it to megabytes for a
client that never reads, and every write "succeeds" into memory nobody will read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import Callable

import aiohttp
from aiohttp import web

from voicebridge.relay.turns import ResponseTrack

#: Frames queued for a client before it counts as not reading, whatever their size.
MAX_PENDING_FRAMES = 2000
CLOSE_TIMEOUT_S = 2.0
#: The smallest kernel send buffer the channel asks for (Linux doubles what it is given).
MIN_SEND_BUFFER = 16 * 1024

Item = str | tuple[ResponseTrack, bytes]


class ClientGone(Exception):
    """The client's socket failed or closed while writing to it."""


class ClientChannel:
    """Ordered, budgeted output to one client, and its input frames."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        transport: asyncio.Transport | None,
        *,
        audio_budget: int,
        on_written: Callable[[ResponseTrack, int], None],
        frames: Callable[[ResponseTrack, bytes], list[str | bytes]] | None = None,
    ) -> None:
        self._ws = ws
        self._transport = transport
        self._budget = audio_budget
        self._on_written = on_written
        self._frames = frames
        self._out: deque[Item] = deque()
        self._audio_bytes = 0
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._lock = asyncio.Lock()
        self._pending_since: float | None = None
        self.overflowed = False
        self._bound_send_buffer(max(audio_budget, MIN_SEND_BUFFER))

    def _bound_send_buffer(self, size: int) -> None:
        sock = self._transport.get_extra_info("socket") if self._transport else None
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)

    # -- input -------------------------------------------------------------------------

    async def receive(self, within: float | None = None) -> aiohttp.WSMessage:
        """The client's next frame (pings and pongs included, for the frame limit); a
        ``CLOSE``/``CLOSING``/``CLOSED`` message once it has gone. Raises ``TimeoutError``
        after ``within`` seconds without a frame."""
        return await self._ws.receive(within)

    async def pong(self, payload: bytes) -> None:
        """Answer a client's ping, through the stall clock like every write."""
        self._pending_since = time.monotonic()
        try:
            await self._ws.pong(payload)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ClientGone(str(exc)) from exc
        finally:
            self._pending_since = None

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    def exception(self) -> BaseException | None:
        return self._ws.exception()

    # -- output ------------------------------------------------------------------------

    def send_text(self, text: str) -> bool:
        """Queue a text frame; False when the client has let too many frames pile up."""
        if len(self._out) >= MAX_PENDING_FRAMES:
            self.overflowed = True
            return False
        self._out.append(text)
        self._ready.set()
        return True

    async def send_audio(self, track: ResponseTrack, pcm: bytes) -> None:
        """Write at once when nothing is queued; else queue, waiting while over budget.

        Waiting holds back the upstream pump (the service's socket buffers the rest); a
        client that makes no progress meanwhile is caught by the stall clock.
        """
        if not self._out and not self._lock.locked():
            async with self._lock:
                await self._write_audio(track, pcm)
            return
        while self._audio_bytes and self._audio_bytes + len(pcm) > self._budget:
            self._space.clear()
            await self._space.wait()
            if track.muted:
                return
        self._audio_bytes += len(pcm)
        self._out.append((track, pcm))
        self._ready.set()

    def drop_audio(self) -> int:
        """Drop every queued audio frame (text stays, in order); the bytes dropped."""
        dropped = self._audio_bytes
        if dropped:
            kept = [item for item in self._out if isinstance(item, str)]
            self._out.clear()
            self._out.extend(kept)
            self._audio_bytes = 0
            self._space.set()
        return dropped

    def stalled_since(self) -> float | None:
        """When the write now in progress started (monotonic); None when none is."""
        return self._pending_since

    async def run_writer(self) -> None:
        """The writer: empties the queue onto the socket until cancelled or the client goes."""
        out = self._out
        while True:
            if not out:
                self._ready.clear()
                await self._ready.wait()
                continue
            # Pop under the lock, so an item is never held outside the queue while
            # waiting: a graceful end flushes whatever the queue still holds.
            async with self._lock:
                if out:
                    await self._write(out.popleft())
            self._space.set()

    async def _write(self, item: Item) -> None:
        if isinstance(item, str):
            await self._write_text(item)
        else:
            track, pcm = item
            self._audio_bytes -= len(pcm)
            await self._write_audio(track, pcm)

    async def _write_text(self, text: str) -> None:
        await self._put(text)

    async def _write_audio(self, track: ResponseTrack, pcm: bytes) -> None:
        if self._frames is None:
            await self._put(pcm)  # the audio is the frame
        else:
            for frame in self._frames(track, pcm):
                await self._put(frame)
        self._on_written(track, len(pcm))

    async def _put(self, frame: str | bytes) -> None:
        """One frame on the socket; the stall clock runs while it is pending."""
        self._pending_since = time.monotonic()
        try:
            if isinstance(frame, str):
                await self._ws.send_str(frame)
            else:
                await self._ws.send_bytes(frame)
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise ClientGone(str(exc)) from exc
        finally:
            self._pending_since = None

    # -- ending ------------------------------------------------------------------------

    async def close(self, code: int, reason: str, *, flush: bool, last: str | None) -> None:
        """Flush what is owed (when ``flush``), send ``last``, close; never stall.

        A peer that does not read cannot hold the session (or a shutdown) hostage: after
        a few seconds the connection is aborted.
        """
        if self._ws.closed:
            return
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if flush:
                    while self._out:
                        await self._write(self._out.popleft())
                if last is not None:
                    await self._write_text(last)
                await self._ws.close(code=code, message=reason.encode()[:120])
        except (TimeoutError, ConnectionError, RuntimeError, ClientGone):
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once, unflushed."""
        if self._transport is not None:
            self._transport.abort()
