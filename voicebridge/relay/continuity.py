"""Continuity: the session carries on when its Voice Live connection ends.

A mixin of :class:`~voicebridge.relay.session.Session`, kept apart because it is one
concern with rules of its own: on an unexpected end, new connections with backoff within
``UPSTREAM_RECONNECT_S`` (caller input held by the :class:`.link.UpstreamLink`, the
conversation replayed by ``_open_upstream``); before the service's ``expires_at`` (or every
``UPSTREAM_ROTATE_S``), a planned switch at a quiet moment. One switch at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import TYPE_CHECKING

import structlog

from voicebridge import errors, protocol
from voicebridge.relay.upstream import Upstream, UpstreamClosed

if TYPE_CHECKING:
    from voicebridge.audio_format import AudioFormat
    from voicebridge.calls import Recorder
    from voicebridge.config import Settings
    from voicebridge.metrics import Metrics
    from voicebridge.relay.link import UpstreamLink
    from voicebridge.relay.stats import SessionStats
    from voicebridge.relay.turns import TurnTracker

log = structlog.get_logger("voicebridge.relay.session")


class ContinuityMixin:
    """Reconnect and rotate; the session provides the state and the primitives below."""

    settings: Settings
    prom: Metrics
    stats: SessionStats
    calls: Recorder
    turns: TurnTracker
    audio: AudioFormat
    _link: UpstreamLink
    _switching: asyncio.Lock
    _quiet: asyncio.Event
    _expiry_known: asyncio.Event
    _expires_at: float | None
    _connected_at: float
    _rotate_not_before: float
    _answer_owed: bool

    if TYPE_CHECKING:  # provided by Session

        async def _open_upstream(self, timeout_s: float) -> Upstream: ...
        def _attach(self, upstream: Upstream) -> Upstream | None: ...
        def _send_text(self, text: str) -> None: ...
        def _set_state(self, state: str) -> None: ...
        def _update_turn_events(self) -> None: ...

    async def _upstream_lost(self, upstream: Upstream, exc: UpstreamClosed) -> None:
        """The connection ``upstream`` ended: carry on over a new one, or end the call."""
        async with self._switching:
            if upstream is not self._link.current:
                return  # retired by a rotation; the pump reads the new one now
            budget = self.settings.upstream_reconnect_s
            if budget <= 0:
                raise exc
            log.warning("session.upstream_lost", error=exc.detail)
            self._link.detach()
            await upstream.close()
            interrupted = self.turns.response_active
            self._response_cut()
            self.stats.state = "reconnecting"
            self._send_text(
                protocol.status(
                    "reconnecting",
                    code=errors.ERR_RESPONSE_INTERRUPTED
                    if interrupted
                    else errors.ERR_UPSTREAM_CLOSED,
                )
            )
            started = time.monotonic()
            try:
                new = await self._reconnect(budget)
            except UpstreamClosed as final:
                self._count_switch("lost", "failed", started)
                raise UpstreamClosed(
                    f"{exc.detail}; no new connection within {budget:g} s ({final.detail})"
                ) from None
            self._attach(new)
            if self._answer_owed:
                # A typed message sent just before the connection died (or while it was
                # down) is in the replay; ask for its answer again.
                await self._link.send({"type": "response.create"}, hold=True)
            await self._link.flush()
            self.stats.reconnects += 1
            self._count_switch("lost", "restored", started)
            log.info(
                "session.upstream_restored",
                generation=self._link.generation,
                restore_ms=round((time.monotonic() - started) * 1000),
                dropped_audio_ms=self.audio.ms(self._link.dropped_bytes),
            )
            self._set_state("ready")

    async def _reconnect(self, budget_s: float) -> Upstream:
        """New connections until one works or ``budget_s`` has passed (then the last error).

        Exponential backoff from 0.25 s with full jitter, each attempt bounded by what
        is left of the budget.
        """
        deadline = time.monotonic() + budget_s
        delay = 0.25
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._open_upstream(
                    max(0.1, min(self.settings.upstream_connect_timeout_s, left))
                )
            except UpstreamClosed as exc:
                left = deadline - time.monotonic()
                log.info("session.reconnect_failed", error=exc.detail, left_s=round(left, 1))
                if left <= 0:
                    raise
                await asyncio.sleep(min(left, random.uniform(0, delay)))
                delay = min(delay * 2, 4.0)

    def _response_cut(self) -> None:
        """The connection ended mid-response: it will not finish; the turn is over."""
        for track in self.turns.tracks.values():
            track.active = False
        self._update_turn_events()

    def _rotate_at(self) -> float | None:
        """When to move to the next connection (monotonic), or None: not planned."""
        s = self.settings
        at: list[float] = []
        if s.upstream_rotate_s > 0:
            at.append(self._connected_at + s.upstream_rotate_s)
        if self._expires_at is not None:
            left = self._expires_at - time.time()
            # Early enough to wait for a quiet moment and still open the next connection.
            margin = min(60.0, max(2.0, left / 4))
            at.append(time.monotonic() + left - margin)
        return max(min(at), self._rotate_not_before) if at else None

    async def _rotator(self) -> None:
        """Before the connection expires, switch to a new one at a quiet moment."""
        while True:
            generation = self._link.generation
            rotate_at = self._rotate_at()
            wait = None if rotate_at is None else rotate_at - time.monotonic()
            if wait is None or wait > 0:
                # Woken early when a new connection (with its own expiry) is attached.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait if wait is not None else 5.0):
                        await self._expiry_known.wait()
                self._expiry_known.clear()
                continue
            await self._quiet_moment()
            if self._link.generation != generation:
                continue  # a reconnect got there first
            await self._rotate()

    async def _quiet_moment(self) -> None:
        """Until no response is in progress and the caller is not speaking."""
        await self._quiet.wait()

    async def _rotate(self) -> None:
        async with self._switching:
            old = self._link.current
            if old is None:
                return
            started = time.monotonic()
            self._link.pause()  # the caller's audio waits for the next connection
            try:
                new = await self._open_upstream(self.settings.upstream_connect_timeout_s)
            except UpstreamClosed as exc:
                self._link.resume()
                self._count_switch("rotation", "failed", started)
                log.warning("session.rotation_failed", error=exc.detail)
                await self._link.flush()
                self._rotate_not_before = time.monotonic() + 5.0
                return
            self._attach(new)
            await self._link.flush()
            await old.close()
            self.stats.rotations += 1
            self._count_switch("rotation", "restored", started)
            log.info(
                "session.upstream_rotated",
                generation=self._link.generation,
                switch_ms=round((time.monotonic() - started) * 1000),
            )

    def _count_switch(self, cause: str, outcome: str, started: float) -> None:
        """A connection switch in /metrics and the call record."""
        self.prom.upstream_reconnects.labels(cause=cause, outcome=outcome).inc()
        self.calls.reconnected(cause, outcome, duration_ms=(time.monotonic() - started) * 1000)
