"""The part of the fake phone providers common to Twilio and ACS (see
:mod:`voicebridge.loadtest.phone`): the connection's lifecycle, the paced stream of what
the caller says (:class:`Pacer`), the playback of what the server sends, the waits and the
records (:class:`CallMetrics`). Subclasses supply the dialect: how to connect, open, frame
a chunk of audio, read a server message and say goodbye.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import aiohttp
import attrs
import orjson
from yarl import URL

from voicebridge.loadtest.options import check_loopback
from voicebridge.loadtest.phone_audio import FRAME_MS, AudioFormat, PhoneAudio, silence_frame
from voicebridge.loadtest.playback import Playback, PlayedMark

_MS = 1_000_000
_S = 1_000_000_000
FRAME_NS = FRAME_MS * _MS


class CallFailed(Exception):
    """The webhook or the stream's handshake was refused, or its answer made no sense."""


class Clock(Protocol):
    """Monotonic time in ns, and a way to wait for a moment on it."""

    def now(self) -> int: ...

    async def sleep_until(self, deadline: int) -> None: ...


class RealClock:
    """``time.perf_counter_ns`` (CLOCK_MONOTONIC) and asyncio's sleep."""

    def now(self) -> int:
        return time.perf_counter_ns()

    async def sleep_until(self, deadline: int) -> None:
        delay = deadline - time.perf_counter_ns()
        if delay > 0:
            await asyncio.sleep(delay / _S)


@attrs.define(eq=False)
class Pacer:
    """Frame *k* is due at ``t0 + k * frame_ns``, however late the previous one went out."""

    clock: Clock
    frame_ns: int = FRAME_NS
    t0: int = 0
    sent: int = 0
    lag_max: int = 0  # ns, the latest a frame went out after its deadline
    lags: list[int] = attrs.field(factory=list)

    def deadline(self, k: int) -> int:
        return self.t0 + k * self.frame_ns

    async def run(self, tick: Callable[[int, int], Awaitable[bool]]) -> None:
        """Call ``tick(k, now)`` for frame k = 0, 1, ... on time until it returns False."""
        self.t0 = self.clock.now()
        while True:
            deadline = self.deadline(self.sent)
            await self.clock.sleep_until(deadline)
            now = self.clock.now()
            lag = max(now - deadline, 0)
            if not await tick(self.sent, now):
                return
            self.lags.append(lag)
            self.lag_max = max(self.lag_max, lag)
            self.sent += 1


@attrs.define(eq=False)
class Utterance:
    """Something the caller says: when its first and last frames went out, and the answer."""

    audio: PhoneAudio
    speech_start: int = 0  # ns, its first frame went out
    speech_end: int = 0  # ns, its last frame went out (0 while speaking)
    first_audio: int = 0  # ns, the first agent audio after speech_end
    sent: asyncio.Future[None] = attrs.field(
        factory=lambda: asyncio.get_running_loop().create_future()
    )

    @property
    def latency_ms(self) -> float | None:
        """End of speech to the first agent audio (None without an answer)."""
        if not self.first_audio:
            return None
        return (self.first_audio - self.speech_end) / _MS


@attrs.frozen
class CallMetrics:
    """What one call did and heard. Audio in the channel's bytes; times in ms."""

    channel: str
    call_id: str
    frames_sent: int
    speech_frames_sent: int
    send_lag_max_ms: float
    audio_bytes_received: int
    audio_messages_received: int
    audio_bytes_played: int
    audio_bytes_discarded: int
    marks: tuple[PlayedMark, ...]
    clears: int
    dtmf_sent: int
    latencies_ms: tuple[float | None, ...]  # per utterance, in order
    close_code: int | None
    unexpected: int  # messages the provider would not understand


class PhoneCall:
    """One fake provider call; subclasses speak Twilio's or ACS's dialect."""

    channel = ""

    def __init__(
        self,
        server: str | URL,
        fmt: AudioFormat,
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Clock | None = None,
        call_id: str | None = None,
        keep_audio: bool = False,
    ) -> None:
        base = URL(str(server))
        check_loopback(str(base.with_scheme("ws") if base.scheme == "http" else base))
        self.base = base.with_path("/").with_query(None)
        self.fmt = fmt
        self.clock: Clock = clock or RealClock()
        self.call_id = call_id or self._new_call_id()
        self.keep_audio = keep_audio
        self._session = session
        self._own_session = session is None
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.playback = Playback(rate=fmt.bytes_per_ms)
        self.pacer = Pacer(self.clock)
        self.silence = silence_frame(fmt)
        self.queue: list[Utterance] = []
        self.utterances: list[Utterance] = []
        self.current: Utterance | None = None
        self.frame_index = 0
        self.speech_frames = 0
        self.audio = bytearray()  # agent audio kept (keep_audio) since the last take_audio
        self.audio_bytes = 0
        self.audio_messages = 0
        self.first_audio = 0
        self.last_audio = 0
        self.clear_times: list[int] = []
        self.dtmf_sent = 0
        self.unexpected = 0
        self.close_code: int | None = None
        self.closed = False
        self.hanging_up = False
        self.started = False
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._marks_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []  # the pacer and the mark echoer
        self._reader: asyncio.Task[None] | None = None

    @staticmethod
    def _new_call_id() -> str:
        return uuid.uuid4().hex

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def start(self, within_s: float = 10.0) -> None:
        """Connect and open the stream; streaming (silence until told) begins."""
        async with asyncio.timeout(within_s):
            self.ws = await self._connect()
            await self._open()
        self.started = True
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._tasks = [
            loop.create_task(self.pacer.run(self._tick)),
            loop.create_task(self._echo_marks()),
        ]

    async def _connect(self) -> aiohttp.ClientWebSocketResponse:
        raise NotImplementedError

    async def _open(self) -> None:
        raise NotImplementedError

    async def hangup(self, within_s: float = 5.0) -> None:
        """End the call as the provider does; wait (bounded) for the socket to close."""
        if self.hanging_up:
            return
        self.hanging_up = True
        ws = self.ws
        try:
            await self._stop_tasks()  # nothing is streamed after the goodbye
            if ws is not None and not ws.closed and not self.closed:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self._goodbye(ws)
                with contextlib.suppress(TimeoutError, ConnectionError, RuntimeError):
                    async with asyncio.timeout(within_s):
                        await ws.close()
        finally:
            await self._stop_tasks()
            if self._reader is not None:
                self._reader.cancel()
                await asyncio.gather(self._reader, return_exceptions=True)
            if ws is not None:
                self.close_code = self.close_code or ws.close_code
            self.closed = True
            self._notify()
            if self._own_session and self._session is not None:
                await self._session.close()

    async def _goodbye(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """What the provider sends before closing (Twilio: ``stop``)."""

    async def _stop_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what the caller says -----------------------------------------------------------------

    def say(self, audio: PhoneAudio) -> Utterance:
        """Queue ``audio`` to be said after what is queued; silence follows it."""
        utterance = Utterance(audio)
        self.queue.append(utterance)
        self.utterances.append(utterance)
        return utterance

    async def speak(self, audio: PhoneAudio) -> Utterance:
        """Say ``audio`` and wait until its last frame went out."""
        utterance = self.say(audio)
        await asyncio.shield(utterance.sent)
        return utterance

    async def _tick(self, k: int, now: int) -> bool:
        ws = self.ws
        if self.hanging_up or self.closed:
            return False
        if ws is None or ws.closed:
            return True  # between two streams of the call: nothing carries audio now
        utterance = self.current
        if utterance is None and self.queue:
            utterance = self.current = self.queue.pop(0)
            utterance.speech_start = now
            self.frame_index = 0
        if utterance is None:
            payload, silent = self.silence, True
        else:
            i = self.frame_index
            payload, silent = utterance.audio.frames[i], utterance.audio.silent[i]
            self.frame_index = i + 1
            self.speech_frames += 1
        try:
            await ws.send_str(self._media(k, payload, silent))
        except (ConnectionError, RuntimeError):
            return False
        if utterance is not None and self.frame_index == len(utterance.audio.frames):
            utterance.speech_end = now
            self.current = None
            if not utterance.sent.done():
                utterance.sent.set_result(None)
            self._notify()
        return True

    def _media(self, k: int, payload: str, silent: bool) -> str:
        raise NotImplementedError

    # -- what the server sends ----------------------------------------------------------------

    async def _read(self) -> None:
        ws = self.ws
        assert ws is not None
        try:
            while True:
                await self._read_stream(ws)
                self.close_code = ws.close_code
                if self.hanging_up or not await self._next_stream():
                    break
                assert self.ws is not None
                ws = self.ws
        finally:
            self.close_code = ws.close_code
            self.closed = True
            for utterance in self.queue:
                if not utterance.sent.done():
                    utterance.sent.cancel()
            if self.current is not None and not self.current.sent.done():
                self.current.sent.cancel()
            self._notify()

    async def _next_stream(self) -> bool:
        """When a stream ends: whether the call goes on over a new one (now ``self.ws``).
        Twilio asks a ``<Connect action>`` URL; by default the call is over."""
        return False

    async def _read_stream(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    event = orjson.loads(msg.data)
                except orjson.JSONDecodeError:
                    self.unexpected += 1
                    continue
                if isinstance(event, dict):
                    await self._on_event(event, self.clock.now())
                else:
                    self.unexpected += 1
            else:
                self.unexpected += 1
            self._notify()

    async def _on_event(self, event: dict[str, Any], now: int) -> None:
        raise NotImplementedError

    def _on_audio(self, b64: object, now: int) -> None:
        try:
            data = base64.b64decode(b64, validate=True) if isinstance(b64, str) else None
        except (binascii.Error, ValueError):
            data = None
        if not data:
            self.unexpected += 1
            return
        self.audio_messages += 1
        self.audio_bytes += len(data)
        self.last_audio = now
        if not self.first_audio:
            self.first_audio = now
        if self.keep_audio:
            self.audio += data
        for utterance in reversed(self.utterances):
            if utterance.speech_end:
                if not utterance.first_audio:
                    utterance.first_audio = now
                break
        self.playback.push(len(data), now)
        self._marks_changed.set()

    def _on_clear(self, now: int) -> list[PlayedMark]:
        self.clear_times.append(now)
        marks = self.playback.clear(now)
        self._marks_changed.set()
        return marks

    async def _echo_marks(self) -> None:
        """Send back each mark when playback reaches it."""
        while True:
            self._marks_changed.clear()
            due = self.playback.next_due()
            if due is None:
                await self._marks_changed.wait()
                continue
            if due > self.clock.now():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout((due - self.clock.now()) / _S):
                        await self._marks_changed.wait()
                continue
            for mark in self.playback.advance(self.clock.now()):
                await self._send_mark(mark)
            self._notify()

    async def _send_mark(self, mark: PlayedMark) -> None:
        """Tell the server playback reached ``mark`` (only Twilio has marks)."""

    # -- waiting ------------------------------------------------------------------------------

    def _notify(self) -> None:
        if not self._waiters:
            return
        still = []
        for check, fut in self._waiters:
            if fut.done():
                continue
            if check() or self.closed:
                fut.set_result(None)
            else:
                still.append((check, fut))
        self._waiters = still

    async def wait_for(self, check: Callable[[], bool], within_s: float) -> bool:
        """Wait until ``check()`` holds (re-checked on every event); False on timeout or
        when the call ended first."""
        if check():
            return True
        if self.closed:
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((check, fut))
        try:
            async with asyncio.timeout(within_s):
                await fut
        except TimeoutError:
            return check()
        finally:
            fut.cancel()
        return check()

    async def wait_first_audio(self, utterance: Utterance, within_s: float = 10.0) -> bool:
        """Until agent audio arrives after ``utterance`` was said."""
        return await self.wait_for(lambda: bool(utterance.first_audio), within_s)

    async def wait_cleared(self, count: int = 1, within_s: float = 10.0) -> bool:
        """Until ``count`` clears (Twilio ``clear``, ACS ``StopAudio``) have arrived."""
        return await self.wait_for(lambda: len(self.clear_times) >= count, within_s)

    async def wait_marks(self, count: int, within_s: float = 10.0) -> bool:
        """Until ``count`` marks have been echoed (reached or cleared)."""
        return await self.wait_for(lambda: len(self.playback.done) >= count, within_s)

    async def wait_closed(self, within_s: float = 10.0) -> bool:
        """Until the socket is closed (by either side)."""
        return await self.wait_for(lambda: self.closed, within_s)

    async def wait_quiet(self, gap_ms: float, within_s: float = 30.0) -> bool:
        """Until playback has drained and no audio has arrived for ``gap_ms``: the agent
        has finished speaking. A time condition, so it sleeps to the moment it may hold."""
        end = self.clock.now() + int(within_s * _S)
        while not self.closed:
            now = self.clock.now()
            quiet_at = max(self.last_audio + int(gap_ms * _MS), self.playback.drained_at())
            if now >= quiet_at:
                return True
            if now >= end:
                return False
            await self.clock.sleep_until(min(quiet_at, end))
        return False

    def take_audio(self) -> bytes:
        """The agent audio kept since the last call (with ``keep_audio``), and forget it."""
        data = bytes(self.audio)
        self.audio.clear()
        return data

    # -- results ------------------------------------------------------------------------------

    def metrics(self) -> CallMetrics:
        now = self.clock.now()
        return CallMetrics(
            channel=self.channel,
            call_id=self.call_id,
            frames_sent=self.pacer.sent,
            speech_frames_sent=self.speech_frames,
            send_lag_max_ms=self.pacer.lag_max / _MS,
            audio_bytes_received=self.audio_bytes,
            audio_messages_received=self.audio_messages,
            audio_bytes_played=self.playback.played(now),
            audio_bytes_discarded=self.playback.discarded,
            marks=tuple(self.playback.done),
            clears=len(self.clear_times),
            dtmf_sent=self.dtmf_sent,
            latencies_ms=tuple(u.latency_ms for u in self.utterances if u.speech_end),
            close_code=self.close_code,
            unexpected=self.unexpected,
        )
