"""One voice session: a client WebSocket relayed to one Voice Live connection.

A :class:`Session` is single-use. ``run()`` connects upstream, configures the agent, then
runs its pumps in one ``asyncio.TaskGroup``: client -> upstream, upstream -> client, a
single writer that owns the client socket (so the send buffer is bounded and barge-in can
drop queued audio), a watchdog for time limits and a metrics publisher. Whichever ends
first raises :class:`Disconnect` and the group cancels the rest; the upstream connection
is closed by the exit stack whatever happened.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp
import attrs
import orjson
import structlog
from aiohttp import web
from azure.ai.voicelive.aio import ConnectionClosed, VoiceLiveConnection, connect
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.core.credentials import AzureKeyCredential

from voicebridge import errors, protocol
from voicebridge.config import OPENAI_VOICES, Settings
from voicebridge.errors import ProtocolError
from voicebridge.metrics import Metrics
from voicebridge.protocol import BYTES_PER_MS
from voicebridge.registry import SessionRegistry

log = structlog.get_logger(__name__)

# Upstream error codes that are expected races, not failures worth showing to a user.
_BENIGN_UPSTREAM_ERRORS = frozenset({"response_cancel_not_active"})


@attrs.frozen
class UpstreamConfig:
    """Where and how to reach Voice Live (Azure or the local emulator)."""

    endpoint: str
    api_key: str = attrs.field(repr=False)
    model: str
    api_version: str
    backend: str = "azure"


class Disconnect(Exception):
    """Raised by a pump whose side ended, so the TaskGroup cancels its siblings."""


@attrs.define
class EndReason:
    reason: str
    close_code: int = errors.CLOSE_NORMAL
    code: str | None = None
    message: str | None = None


@attrs.define
class SessionMetrics:
    """What one session has done so far; published to the registry while it runs."""

    started_at: float = attrs.field(factory=time.time)
    started_mono: float = attrs.field(factory=time.monotonic)
    state: str = "connecting"
    client: str = ""
    audio_in_bytes: int = 0
    audio_in_frames: int = 0
    audio_out_bytes: int = 0
    audio_out_frames: int = 0
    turns: int = 0
    barge_ins: int = 0
    user_transcripts: int = 0
    agent_transcripts: int = 0
    errors: int = 0
    upstream_connect_ms: float | None = None
    latencies_ms: deque[float] = attrs.field(factory=lambda: deque(maxlen=200))

    def as_dict(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        return {
            "started_at": self.started_at,
            "duration_s": round(time.monotonic() - self.started_mono, 3),
            "state": self.state,
            "client": self.client,
            "audio_in": {
                "bytes": self.audio_in_bytes,
                "frames": self.audio_in_frames,
                "ms": self.audio_in_bytes // BYTES_PER_MS,
            },
            "audio_out": {
                "bytes": self.audio_out_bytes,
                "frames": self.audio_out_frames,
                "ms": self.audio_out_bytes // BYTES_PER_MS,
            },
            "turns": self.turns,
            "barge_ins": self.barge_ins,
            "transcripts": {"user": self.user_transcripts, "agent": self.agent_transcripts},
            "errors": self.errors,
            "upstream_connect_ms": self.upstream_connect_ms,
            "response_latency_ms": {
                "last": self.latencies_ms[-1] if lat else None,
                "p50": _percentile(lat, 50),
                "p95": _percentile(lat, 95),
                "count": len(lat),
            },
        }


def _percentile(ordered: list[float], pct: float) -> float | None:
    if not ordered:
        return None
    index = min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))
    return round(ordered[index], 1)


@attrs.define(eq=False)
class ResponseTrack:
    """What the client has been sent of one agent response, for barge-in truncation."""

    response_id: str
    active: bool = True
    item_id: str | None = None
    first_audio_at: float | None = None  # monotonic, when its first audio was written
    audio_queued: int = 0  # bytes accepted from upstream for the client
    audio_written: int = 0  # bytes actually written to the client socket
    muted: bool = False  # barge-in: drop the rest of its audio
    speech_stopped_at: float | None = None  # the end of the turn it answers (monotonic)
    reported_ms: int | None = None  # the client's own playback report ...
    reported_at: float = 0.0  # ... and when it arrived

    def played_ms(self, now: float) -> int:
        """Audio the client has played: its report projected forward, else the wall clock.

        Never more than what was written to the socket.
        """
        sent_ms = self.audio_written // BYTES_PER_MS
        if self.reported_ms is not None:
            return int(min(sent_ms, self.reported_ms + (now - self.reported_at) * 1000))
        if self.first_audio_at is None:
            return 0
        return int(min(sent_ms, (now - self.first_audio_at) * 1000))

    def still_playing(self, now: float) -> bool:
        if self.muted:
            return False
        if self.active:
            return True
        return self.played_ms(now) < self.audio_queued // BYTES_PER_MS


def build_session_config(settings: Settings, instructions: str) -> dict[str, Any]:
    """The ``session.update`` payload: voice, formats, VAD, audio processing."""
    voice_name = settings.voice_name
    voice: dict[str, Any]
    if voice_name in OPENAI_VOICES:
        voice = {"type": "openai", "name": voice_name}
    else:
        voice = {"type": "azure-standard", "name": voice_name}
    return {
        "modalities": ["text", "audio"],
        "instructions": instructions,
        "voice": voice,
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm16",
        "turn_detection": {
            "type": "server_vad",
            "threshold": settings.vad_threshold,
            "prefix_padding_ms": settings.vad_prefix_padding_ms,
            "silence_duration_ms": settings.vad_silence_duration_ms,
            "create_response": True,
            "interrupt_response": True,
        },
        "input_audio_echo_cancellation": {"type": "server_echo_cancellation"},
        "input_audio_noise_reduction": {"type": "azure_deep_noise_suppression"},
        "input_audio_transcription": {"model": "whisper-1"},
    }


class Session:
    """The relay for one client WebSocket. Create, ``await run()``, discard."""

    def __init__(
        self,
        *,
        request: web.Request,
        ws: web.WebSocketResponse,
        settings: Settings,
        upstream: UpstreamConfig,
        registry: SessionRegistry,
        metrics: Metrics,
        background: set[asyncio.Task[None]] | None = None,
        session_id: str | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.request = request
        self.ws = ws
        self.settings = settings
        self.upstream = upstream
        self.registry = registry
        self.prom = metrics
        self.stats = SessionMetrics(client=request.remote or "")
        self.end: EndReason | None = None
        self.done = asyncio.Event()
        self._background = background if background is not None else set()
        self._task: asyncio.Task[Any] | None = None
        self._end_requested = asyncio.Event()
        self._conn: VoiceLiveConnection | None = None
        self._aligner = protocol.SampleAligner()
        self._odd_frame_told = False
        # Output to the client: text frames, and (track, pcm) audio. One writer at a time.
        self._out: deque[str | tuple[ResponseTrack, bytes]] = deque()
        self._out_ready = asyncio.Event()
        self._out_space = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self._out_audio_bytes = 0
        self._out_limit = settings.client_send_buffer_ms * BYTES_PER_MS
        # Responses seen recently, by id; the newest created one is the current response.
        self._tracks: dict[str, ResponseTrack] = {}
        self._current: ResponseTrack | None = None
        self._last_written: ResponseTrack | None = None
        self._no_response = asyncio.Event()
        self._no_response.set()
        self._started_sent = False
        self._speech_stopped_at: float | None = None
        self._last_activity = time.monotonic()
        self._warned = False
        self._counted_in = 0
        self._counted_out = 0
        now = time.monotonic()
        rate = settings.max_audio_rate * protocol.SAMPLE_RATE * 2
        self._audio_bucket = TokenBucket(rate, rate * settings.rate_window_s, now)
        per_s = settings.client_text_per_min / 60
        self._text_bucket = TokenBucket(per_s, max(1.0, settings.client_text_per_min / 4), now)

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until either side ends, a limit is hit, or an end is requested."""
        self._task = asyncio.current_task()
        structlog.contextvars.bind_contextvars(session_id=self.id)
        log.info("session.started", client=self.stats.client, backend=self.upstream.backend)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._connect(stack)
                if self.end is None:
                    await self._relay()
                await self._close_client()
        except asyncio.CancelledError:
            self._set_end(EndReason("cancelled", errors.CLOSE_GOING_AWAY))
            raise
        except Exception:
            log.exception("session.failed")
            self._set_end(EndReason("internal_error", errors.CLOSE_UPSTREAM))
            if not self.ws.closed:
                with contextlib.suppress(Exception):
                    await self.ws.close(code=errors.CLOSE_UPSTREAM, message=b"internal error")
        finally:
            self.done.set()
            end = self.end or EndReason("unknown")
            self.prom.sessions.labels(reason=end.reason).inc()
            self._count_audio()
            log.info(
                "session.ended",
                reason=end.reason,
                close_code=end.close_code,
                carried_byte=bool(self._aligner.carry),
                **self.stats.as_dict(),
            )
            structlog.contextvars.unbind_contextvars("session_id")

    def request_end(
        self,
        reason: str,
        *,
        close_code: int = errors.CLOSE_NORMAL,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Ask the session to end from outside (admin, shutdown); returns at once."""
        self._stop(reason, close_code, code, message)
        self._end_requested.set()

    async def drain(self, grace_s: float) -> None:
        """Graceful shutdown: tell the client, let the current response finish, close 1001.

        Bounded whatever the peers do: after the grace, the close gets a few seconds and
        then the session's task is cancelled and its client connection aborted.
        """
        if self.done.is_set():
            return
        self._send_text(protocol.status("shutting_down", grace_s=grace_s))
        waits = [
            asyncio.ensure_future(self._no_response.wait()),
            asyncio.ensure_future(self.done.wait()),
        ]
        try:
            await asyncio.wait(waits, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()
        if self.done.is_set():
            return
        self.request_end(
            "shutdown",
            close_code=errors.CLOSE_GOING_AWAY,
            code=errors.ERR_SHUTDOWN,
            message="the server is restarting; please reconnect",
        )
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S * 2):
                await self.done.wait()
        except TimeoutError:
            log.warning("session.drain_forced")
            self._abort_client()
            if self._task is not None:
                self._task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await self.done.wait()

    @property
    def response_active(self) -> bool:
        return self._current is not None and self._current.active

    def _set_end(self, end: EndReason) -> None:
        if self.end is None:
            self.end = end

    def _stop(
        self,
        reason: str,
        close_code: int = errors.CLOSE_NORMAL,
        code: str | None = None,
        message: str | None = None,
    ) -> Disconnect:
        """Record why the session ends (the first reason wins); raise what it returns."""
        self._set_end(EndReason(reason, close_code, code, message))
        return Disconnect(reason)

    async def _connect(self, stack: contextlib.AsyncExitStack) -> None:
        """Open and configure the upstream; an end request or the timeout stops the wait."""
        try:
            instructions = await asyncio.to_thread(self.settings.read_instructions)
        except (OSError, UnicodeDecodeError) as exc:
            log.error("session.instructions_unreadable", error=str(exc))
            self._set_end(
                EndReason(
                    "config_error",
                    errors.CLOSE_UPSTREAM,
                    errors.ERR_INTERNAL,
                    "the agent's instructions could not be read; please try again later",
                )
            )
            return
        up = self.upstream
        manager = connect(
            credential=AzureKeyCredential(up.api_key),
            endpoint=up.endpoint,
            model=up.model,
            api_version=up.api_version,
            connection_options={
                "max_msg_size": 16 * 1024 * 1024,
                "heartbeat": 20.0,
                "close_timeout": _CLOSE_TIMEOUT_S,
            },
        )
        started = time.monotonic()
        timeout = self.settings.upstream_connect_timeout_s
        entering = asyncio.ensure_future(manager.__aenter__())
        ending = asyncio.ensure_future(self._end_requested.wait())
        try:
            done, _ = await asyncio.wait(
                {entering, ending}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        except asyncio.CancelledError:
            self._abandon(entering, manager)
            raise
        finally:
            ending.cancel()
        if entering not in done:
            # The SDK cannot be cancelled mid-handshake without leaking its HTTP session,
            # so let the attempt finish in the background and close whatever it opened.
            self._abandon(entering, manager)
            if self.end is None:
                self._upstream_failed(f"Voice Live did not answer within {timeout:g} s")
            return
        failure = entering.exception()
        if failure is not None:
            self._upstream_failed(f"could not connect to Voice Live: {_describe(failure)}")
            return
        self._conn = entering.result()
        stack.push_async_exit(manager)
        config = build_session_config(self.settings, instructions)
        try:
            await self._conn.send({"type": "session.update", "session": config})
        except (VoiceLiveConnectionError, ConnectionError, aiohttp.ClientError) as exc:
            self._upstream_failed(f"could not configure Voice Live: {_describe(exc)}")
            return
        elapsed = time.monotonic() - started
        self.stats.upstream_connect_ms = round(elapsed * 1000, 1)
        self.prom.upstream_connect.observe(elapsed)
        log.info("session.upstream_connected", connect_ms=self.stats.upstream_connect_ms)

    def _abandon(self, entering: asyncio.Future[VoiceLiveConnection], manager: Any) -> None:
        async def close_when_done() -> None:
            try:
                await entering
            except Exception:  # already reported to the client as a failed connect
                return
            await manager.__aexit__(None, None, None)

        task = asyncio.create_task(close_when_done(), name=f"abandoned-connect-{self.id}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _upstream_failed(self, message: str) -> None:
        log.warning("session.upstream_connect_failed", error=message)
        self._set_end(
            EndReason(
                "upstream_connect_failed",
                errors.CLOSE_UPSTREAM,
                errors.ERR_UPSTREAM_CONNECT,
                message,
            )
        )

    async def _relay(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._client_pump(), name="client_pump")
                tg.create_task(self._upstream_pump(), name="upstream_pump")
                tg.create_task(self._writer(), name="writer")
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._publisher(), name="publisher")
                tg.create_task(self._wait_end_request(), name="end_request")
        except* Disconnect:
            pass
        except* Exception as group:
            for exc in group.exceptions:
                log.error("session.failed", exc_info=exc)
            self._set_end(
                EndReason(
                    "internal_error",
                    errors.CLOSE_UPSTREAM,
                    errors.ERR_INTERNAL,
                    "internal error; the session was closed",
                )
            )

    async def _close_client(self) -> None:
        """Flush what a graceful end owes the client, say why, close; never stall."""
        end = self.end or EndReason("unknown")
        ws = self.ws
        if ws.closed:
            return
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                if end.code in _GRACEFUL_CODES:
                    # The rest of the answer and its transcript, then the reason.
                    await self._flush()
                if end.code and end.message:
                    if end.code in _GRACEFUL_CODES:
                        await ws.send_str(
                            protocol.status("ended", code=end.code, message=end.message)
                        )
                    else:
                        self.prom.errors.labels(code=end.code).inc()
                        await ws.send_str(protocol.error(end.message, end.code))
                reason = (end.message or end.reason).encode()[:120]
                await ws.close(code=end.close_code, message=reason)
        except (TimeoutError, ConnectionError, RuntimeError, Disconnect):
            # A peer that does not read cannot hold the session (or a shutdown) hostage.
            self._abort_client()

    async def _flush(self) -> None:
        while self._out:
            item = self._out.popleft()
            if isinstance(item, str):
                await self.ws.send_str(item)
            else:
                await self._write_audio_locked(*item)

    def _abort_client(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.abort()

    # -- client -> upstream ------------------------------------------------------------

    async def _client_pump(self) -> None:
        ws = self.ws
        max_frame = self.settings.max_frame_bytes
        async for msg in ws:
            self._last_activity = time.monotonic()
            if msg.type is aiohttp.WSMsgType.BINARY:
                data: bytes = msg.data
                if len(data) > max_frame:
                    raise self._too_large(len(data))
                await self._send_audio(data)
            elif msg.type is aiohttp.WSMsgType.TEXT:
                text: str = msg.data
                if len(text) > max_frame:
                    raise self._too_large(len(text))
                await self._handle_text(text)
            elif msg.type is aiohttp.WSMsgType.ERROR:
                exc = ws.exception()
                log.info("session.client_error", error=str(exc))
                raise self._stop("client_error", ws.close_code or errors.CLOSE_TOO_BIG)
        raise self._stop("client_closed")

    def _too_large(self, size: int) -> Disconnect:
        limit = self.settings.max_frame_bytes
        return self._stop(
            "frame_too_large",
            errors.CLOSE_TOO_BIG,
            errors.ERR_FRAME_TOO_LARGE,
            f"frame of {size} bytes is larger than the limit of {limit}",
        )

    async def _handle_text(self, text: str) -> None:
        try:
            message = protocol.parse_text(text)
        except ProtocolError as exc:
            self._client_error(exc.message, exc.code)
            return
        if isinstance(message, protocol.AudioIn):
            await self._send_audio(message.pcm)
        elif isinstance(message, protocol.PingIn):
            self._send_text(protocol.PONG)
        elif isinstance(message, protocol.TextIn):
            if not self._text_bucket.take(1, time.monotonic()):
                self._client_error(
                    f"too many text messages; at most {self.settings.client_text_per_min} a minute",
                    errors.ERR_RATE_LIMITED,
                )
                return
            await self._send_user_text(message.text)
        elif isinstance(message, protocol.PlaybackIn):
            track = self._last_written
            if track is not None and track.first_audio_at is not None:
                track.reported_ms = message.played_ms
                track.reported_at = time.monotonic()

    async def _send_audio(self, data: bytes) -> None:
        pcm = self._aligner.feed(data)
        if len(data) & 1 and not self._odd_frame_told:
            self._odd_frame_told = True
            self._client_error(
                "audio frame with an odd byte count: PCM16 needs whole 2-byte samples; "
                "the last byte is kept for the next frame (told once per session)",
                errors.ERR_ODD_FRAME,
            )
        if not pcm:
            return
        if not self._audio_bucket.take(len(pcm), time.monotonic()):
            raise self._stop(
                "rate_limited",
                errors.CLOSE_POLICY,
                errors.ERR_RATE_LIMITED,
                f"audio arrives faster than {self.settings.max_audio_rate:g}x real time",
            )
        self.stats.audio_in_bytes += len(pcm)
        self.stats.audio_in_frames += 1
        conn = self._conn
        assert conn is not None
        # The hot path: base64 needs no JSON escaping, so the event is built as a string and
        # handed to the SDK connection's socket, skipping its json.dumps of a dict copy.
        frame = _APPEND_HEAD + base64.b64encode(pcm).decode("ascii") + _APPEND_TAIL
        try:
            await conn._connection.send_str(frame)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise self._upstream_closed(exc) from None

    async def _send_user_text(self, text: str) -> None:
        await self._upstream_send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        await self._upstream_send({"type": "response.create"})

    async def _upstream_send(self, event: dict[str, Any]) -> None:
        assert self._conn is not None
        try:
            await self._conn.send(event)
        except (VoiceLiveConnectionError, ConnectionError, aiohttp.ClientError) as exc:
            raise self._upstream_closed(exc) from None

    def _upstream_closed(self, exc: BaseException | None) -> Disconnect:
        detail = f": {_describe(exc)}" if exc is not None else ""
        log.warning("session.upstream_closed", error=detail)
        return self._stop(
            "upstream_closed",
            errors.CLOSE_UPSTREAM,
            errors.ERR_UPSTREAM_CLOSED,
            f"the Voice Live connection closed{detail}",
        )

    # -- upstream -> client ------------------------------------------------------------

    async def _upstream_pump(self) -> None:
        assert self._conn is not None
        # Read the SDK connection's socket directly: its recv_bytes() re-encodes every
        # text frame and logs it, which is most of the relay's cost per audio delta.
        upstream_ws = self._conn._connection
        handlers = self._handlers()
        on_audio = self._on_audio_delta
        text, binary = aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY
        while True:
            msg = await upstream_ws.receive()
            if msg.type is not text and msg.type is not binary:
                code = upstream_ws.close_code or 1006
                raise self._upstream_closed(ConnectionClosed(code, str(msg.type)))
            raw = msg.data
            if not raw:
                continue
            try:
                event = orjson.loads(raw)
                kind = event["type"]
                if kind == "response.audio.delta":
                    await on_audio(event)
                    continue
                handler = handlers.get(kind)
                if handler is not None:
                    await handler(event)
            except (orjson.JSONDecodeError, LookupError, TypeError, ValueError, AttributeError):
                # One malformed event is not worth a call; the service never sends them.
                log.warning("session.upstream_bad_event", size=len(raw), exc_info=True)

    def _handlers(self) -> dict[str, Callable[[dict[str, Any]], Any]]:
        return {
            "session.updated": self._on_session_updated,
            "input_audio_buffer.speech_started": self._on_speech_started,
            "input_audio_buffer.speech_stopped": self._on_speech_stopped,
            "conversation.item.input_audio_transcription.completed": self._on_user_transcript,
            "response.created": self._on_response_created,
            "response.output_item.added": self._on_output_item,
            "response.audio_transcript.done": self._on_agent_transcript,
            "response.text.done": self._on_agent_text,
            "response.done": self._on_response_done,
            "error": self._on_upstream_error,
        }

    async def _on_session_updated(self, event: dict[str, Any]) -> None:
        if self._started_sent:
            return
        self._started_sent = True
        upstream_session = event.get("session") or {}
        self._send_text(
            protocol.session_started(
                self.id,
                backend=self.upstream.backend,
                voice=self.settings.voice_name,
                sample_rate=protocol.SAMPLE_RATE,
                upstream_session_id=upstream_session.get("id"),
            )
        )
        self._set_state("ready")
        if self.settings.enable_proactive_greeting:
            await self._upstream_send({"type": "response.create"})

    async def _on_speech_started(self, event: dict[str, Any]) -> None:
        now = time.monotonic()
        playing = [t for t in self._tracks.values() if t.still_playing(now)]
        if playing:
            await self._barge_in(playing, now)
        self._set_state("listening")

    async def _barge_in(self, playing: list[ResponseTrack], now: float) -> None:
        """The user talks over the agent: silence it now, end it, forget what was unheard."""
        for track in playing:
            track.muted = True
        dropped = self._drop_queued_audio()
        heard = [t for t in playing if t.audio_queued > 0]
        if heard:
            self._send_text(protocol.CLEAR_AUDIO)
            self.stats.barge_ins += 1
            self.prom.barge_ins.inc()
        current = self._current
        if current is not None and current.active and current in playing:
            # With interrupt_response on, the service cancels on its own; a cancel that
            # loses that race is answered by response_cancel_not_active, which is ignored.
            await self._upstream_send({"type": "response.cancel"})
        for track in heard:
            if not track.item_id:
                continue
            played = track.played_ms(now)
            if played > 0:
                await self._upstream_send(
                    {
                        "type": "conversation.item.truncate",
                        "item_id": track.item_id,
                        "content_index": 0,
                        "audio_end_ms": played,
                    }
                )
            else:
                # Nothing was heard; the service rejects audio_end_ms=0, so forget the item.
                await self._upstream_send(
                    {"type": "conversation.item.delete", "item_id": track.item_id}
                )
            log.info("session.barge_in", played_ms=played, item_id=track.item_id)
        if dropped:
            log.info("session.barge_in_dropped", dropped_ms=dropped // BYTES_PER_MS)

    async def _on_speech_stopped(self, event: dict[str, Any]) -> None:
        self._speech_stopped_at = time.monotonic()
        self.stats.turns += 1
        self._set_state("processing")

    async def _on_user_transcript(self, event: dict[str, Any]) -> None:
        text = event.get("transcript") or ""
        self.stats.user_transcripts += 1
        self._send_text(protocol.transcript("user_transcript", text))

    async def _on_response_created(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        track = ResponseTrack(response_id=str(response.get("id") or uuid.uuid4().hex))
        # The turn this response answers: latency runs from its speech_stopped.
        track.speech_stopped_at, self._speech_stopped_at = self._speech_stopped_at, None
        self._remember(track)
        self._current = track
        self._no_response.clear()

    def _remember(self, track: ResponseTrack) -> None:
        self._tracks[track.response_id] = track
        if len(self._tracks) > _TRACKS_KEPT:
            del self._tracks[next(iter(self._tracks))]

    async def _on_output_item(self, event: dict[str, Any]) -> None:
        item = event.get("item") or {}
        track = self._track_for(event.get("response_id"))
        if track is not None and track.item_id is None:
            track.item_id = item.get("id")

    async def _on_audio_delta(self, event: dict[str, Any]) -> None:
        response_id = event.get("response_id") or ""
        track = self._tracks.get(response_id) if response_id else self._current
        if track is None:
            # Audio of a response we saw no response.created for: track it all the same.
            track = ResponseTrack(response_id=response_id or uuid.uuid4().hex, active=False)
            self._remember(track)
        if track.muted:
            return
        pcm = base64.b64decode(event["delta"])
        if not pcm:
            return
        if track.item_id is None:
            track.item_id = event.get("item_id")
        if track.audio_queued == 0:
            self._set_state("agent_speaking")
            stopped_at = track.speech_stopped_at or self._speech_stopped_at
            if stopped_at is not None:
                latency = time.monotonic() - stopped_at
                self._speech_stopped_at = track.speech_stopped_at = None
                self.stats.latencies_ms.append(round(latency * 1000, 1))
                self.prom.latency.observe(latency)
        track.audio_queued += len(pcm)
        await self._send_audio_to_client(track, pcm)

    async def _on_agent_transcript(self, event: dict[str, Any]) -> None:
        self.stats.agent_transcripts += 1
        self._send_text(protocol.transcript("agent_transcript", event.get("transcript") or ""))

    async def _on_agent_text(self, event: dict[str, Any]) -> None:
        self.stats.agent_transcripts += 1
        self._send_text(protocol.transcript("agent_text", event.get("text") or ""))

    def _track_for(self, response_id: Any) -> ResponseTrack | None:
        """The track an event names; the current one only when it names none."""
        if response_id:
            return self._tracks.get(str(response_id))
        return self._current

    async def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event.get("response") or {}
        track = self._track_for(response.get("id"))
        if track is not None:
            track.active = False
        if track is not self._current:
            return  # an older response ending changes nothing the client sees now
        self._no_response.set()
        if self.stats.state != "listening":
            self._set_state("ready")

    async def _on_upstream_error(self, event: dict[str, Any]) -> None:
        err = event.get("error")
        if not isinstance(err, dict):
            err = {"message": str(err)} if err else {}
        code = str(err.get("code") or err.get("type") or errors.ERR_UPSTREAM)
        if code in _BENIGN_UPSTREAM_ERRORS:
            log.debug("session.upstream_benign_error", code=code)
            return
        message = str(err.get("message") or "Voice Live reported an error")
        log.warning("session.upstream_error", code=code, message=message)
        self._client_error(message, code)

    # -- output to the client ----------------------------------------------------------

    def _send_text(self, text: str) -> None:
        if len(self._out) >= _MAX_PENDING_FRAMES:
            # Only a client that reads nothing gets here; it is ended, not buffered for.
            self.prom.send_overflows.inc()
            self.request_end(
                "slow_consumer",
                close_code=errors.CLOSE_POLICY,
                code=errors.ERR_SLOW_CONSUMER,
                message="the client stopped reading",
            )
            return
        self._out.append(text)
        self._out_ready.set()

    async def _send_audio_to_client(self, track: ResponseTrack, pcm: bytes) -> None:
        """Write at once when nothing is queued; else queue, waiting while the queue is full.

        Waiting holds back the upstream pump (the service's socket buffers the rest), so a
        slow but reading client is fine; one that makes no progress for
        CLIENT_SEND_TIMEOUT_S is ended, and memory per session stays bounded.
        """
        if not self._out and not self._write_lock.locked():
            await self._write_audio(track, pcm)
            return
        timeout = self.settings.client_send_timeout_s
        while self._out_audio_bytes and self._out_audio_bytes + len(pcm) > self._out_limit:
            self._out_space.clear()
            try:
                async with asyncio.timeout(timeout):
                    await self._out_space.wait()
            except TimeoutError:
                raise self._slow_consumer() from None
            if track.muted:
                return
        self._out_audio_bytes += len(pcm)
        self._out.append((track, pcm))
        self._out_ready.set()

    def _slow_consumer(self) -> Disconnect:
        self.prom.send_overflows.inc()
        timeout = self.settings.client_send_timeout_s
        return self._stop(
            "slow_consumer",
            errors.CLOSE_POLICY,
            errors.ERR_SLOW_CONSUMER,
            f"the client read none of its audio for {timeout:g} s",
        )

    async def _write_audio(self, track: ResponseTrack, pcm: bytes) -> None:
        async with self._write_lock:
            await self._write_audio_locked(track, pcm)

    async def _write_audio_locked(self, track: ResponseTrack, pcm: bytes) -> None:
        timeout = self.settings.client_send_timeout_s
        transport = self.request.transport
        try:
            if transport is not None and transport.get_write_buffer_size() + len(pcm) < _FAST_WRITE:
                # Far below the socket's high-water mark this write cannot block: skip the
                # timer, which would otherwise cost more than the write itself.
                await self.ws.send_bytes(pcm)
            else:
                async with asyncio.timeout(timeout):
                    await self.ws.send_bytes(pcm)
        except TimeoutError:
            raise self._slow_consumer() from None
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise self._stop("client_gone") from exc
        self.stats.audio_out_bytes += len(pcm)
        self.stats.audio_out_frames += 1
        if track.first_audio_at is None:
            track.first_audio_at = time.monotonic()
        track.audio_written += len(pcm)
        self._last_written = track

    def _drop_queued_audio(self) -> int:
        dropped = self._out_audio_bytes
        if dropped:
            # In place: the writer holds a reference to this deque.
            kept = [item for item in self._out if isinstance(item, str)]
            self._out.clear()
            self._out.extend(kept)
            self._out_audio_bytes = 0
            self._out_space.set()
        return dropped

    def _client_error(self, message: str, code: str) -> None:
        self.stats.errors += 1
        self.prom.errors.labels(code=code).inc()
        self._send_text(protocol.error(message, code))

    def _set_state(self, state: str) -> None:
        if state != self.stats.state:
            self.stats.state = state
            self._send_text(protocol.status(state))

    async def _writer(self) -> None:
        ws = self.ws
        out = self._out
        ready = self._out_ready
        lock = self._write_lock
        try:
            while True:
                if not out:
                    ready.clear()
                    await ready.wait()
                    continue
                # Pop under the lock, so an item is never held outside the queue while
                # waiting: a graceful end flushes whatever the queue still holds.
                async with lock:
                    if not out:
                        continue
                    item = out.popleft()
                    if isinstance(item, str):
                        await ws.send_str(item)
                        continue
                    track, pcm = item
                    self._out_audio_bytes -= len(pcm)
                    await self._write_audio_locked(track, pcm)
                self._out_space.set()
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            raise self._stop("client_gone") from exc

    # -- timers ------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        s = self.settings
        deadline = self.stats.started_mono + s.session_max_duration_s
        warn_at = deadline - s.session_warning_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise self._stop(
                    "max_duration",
                    errors.CLOSE_NORMAL,
                    errors.ERR_SESSION_LIMIT,
                    f"the session reached its limit of {s.session_max_duration_s:g} s",
                )
            idle_deadline = self._last_activity + s.session_idle_timeout_s
            if now >= idle_deadline:
                raise self._stop(
                    "idle",
                    errors.CLOSE_NORMAL,
                    errors.ERR_IDLE,
                    f"nothing received from the client for {s.session_idle_timeout_s:g} s",
                )
            if not self._warned and s.session_warning_s > 0 and now >= warn_at:
                self._warned = True
                self._send_text(
                    protocol.status(
                        "ending", code=errors.ERR_SESSION_LIMIT, seconds_left=round(deadline - now)
                    )
                )
            next_check = min(deadline, idle_deadline)
            if not self._warned and s.session_warning_s > 0:
                next_check = min(next_check, warn_at)
            await asyncio.sleep(max(0.01, next_check - now))

    async def _publisher(self) -> None:
        interval = self.settings.metrics_publish_s
        while True:
            await asyncio.sleep(interval)
            await self.publish()

    def _count_audio(self) -> None:
        """Add the audio relayed since the last call to the process-wide counters."""
        stats = self.stats
        bytes_per_s = BYTES_PER_MS * 1000
        self.prom.audio_in.inc((stats.audio_in_bytes - self._counted_in) / bytes_per_s)
        self.prom.audio_out.inc((stats.audio_out_bytes - self._counted_out) / bytes_per_s)
        self._counted_in = stats.audio_in_bytes
        self._counted_out = stats.audio_out_bytes

    async def publish(self) -> None:
        self._count_audio()
        try:
            await self.registry.update(
                self.id, state=self.stats.state, metrics=self.stats.as_dict()
            )
        except Exception:  # the registry logs its own trouble; a session never dies of it
            log.debug("session.publish_failed", exc_info=True)

    async def _wait_end_request(self) -> None:
        await self._end_requested.wait()
        raise Disconnect("end requested")


@attrs.define
class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` saved up."""

    rate: float
    capacity: float
    at: float
    tokens: float = attrs.field(default=-1.0)

    def __attrs_post_init__(self) -> None:
        self.tokens = self.capacity

    def take(self, amount: float, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < amount:
            return False
        self.tokens -= amount
        return True


_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"'
_APPEND_TAIL = '"}'
_CLOSE_TIMEOUT_S = 2.0
_FAST_WRITE = 32 * 1024  # buffered + new bytes below which a write cannot wait on drain
_TRACKS_KEPT = 8
_MAX_PENDING_FRAMES = 2000
_GRACEFUL_CODES = frozenset(
    {errors.ERR_ENDED_BY_ADMIN, errors.ERR_SESSION_LIMIT, errors.ERR_IDLE, errors.ERR_SHUTDOWN}
)


def _describe(exc: BaseException | None) -> str:
    """A short, secret-free description of a connection failure."""
    if exc is None:
        return "unknown error"
    if isinstance(exc, ConnectionClosed):
        return f"closed with code {exc.code}"
    cause = exc.__cause__
    if isinstance(cause, aiohttp.WSServerHandshakeError):
        if cause.status == 401:
            return "the service rejected the API key (401)"
        return f"handshake failed with HTTP {cause.status}"
    if isinstance(cause, aiohttp.ClientConnectorError):
        reason = cause.os_error.strerror or type(cause.os_error).__name__
        return f"cannot reach {cause.host}:{cause.port} ({reason})"
    if isinstance(cause, OSError | aiohttp.ClientError):
        return type(cause).__name__
    return type(exc).__name__
