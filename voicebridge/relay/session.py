"""One voice session: wires the parts of the relay together for one client WebSocket.

``run()`` reads the agent's instructions, opens the upstream (:mod:`.upstream`) and
configures it, then runs five tasks in one ``asyncio.TaskGroup``:

* the **client pump**: client frames -> parsed messages (:mod:`voicebridge.protocol`) ->
  audio and text to the upstream, within the rate limits (:mod:`.limits`);
* the **upstream pump**: server frames -> parsed events (:mod:`.events`) -> the turn
  tracker (:mod:`.turns`) -> text and audio into the client channel (:mod:`.channel`);
* the channel's **writer**;
* the **watchdog**: the session's time limits and the channel's stall clock;
* the **end waiter**: an end requested from outside (admin, shutdown).

Whichever ends first raises :class:`Disconnect` after recording why; the group cancels
the rest, the channel closes the client with the code that reason maps to
(:data:`voicebridge.errors.CODES`), and the upstream is closed whatever happened. A bug in
the relay's own handling is not a bad frame: it ends the session as ``internal_error``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import attrs
import structlog
from aiohttp import web

from voicebridge import errors, protocol
from voicebridge.calls import NullRecorder, Recorder
from voicebridge.config import Settings
from voicebridge.errors import ProtocolError
from voicebridge.logs import LimitedLog
from voicebridge.metrics import Metrics
from voicebridge.registry import SessionRegistry
from voicebridge.relay import events as ev
from voicebridge.relay.channel import ClientChannel, ClientGone
from voicebridge.relay.continuity import ContinuityMixin
from voicebridge.relay.conversation import ConversationRecord
from voicebridge.relay.dialect import Dialect
from voicebridge.relay.dtmf import DtmfBuffer
from voicebridge.relay.limits import AppendCoalescer, TokenBucket
from voicebridge.relay.link import UpstreamLink
from voicebridge.relay.session_config import build_session_config
from voicebridge.relay.stats import SessionStats
from voicebridge.relay.tool_calls import ToolCalls
from voicebridge.relay.turns import ResponseTrack, TurnTracker
from voicebridge.relay.upstream import (
    Upstream,
    UpstreamClosed,
    UpstreamConfig,
    UpstreamRefused,
    open_connection,
)

if TYPE_CHECKING:
    from voicebridge.tools import Toolbox

log = structlog.get_logger(__name__)

# Upstream error codes that are expected races, not failures worth showing to a user.
# session_expired: the connection reached the service's cap; the session moves to a new one.
_BENIGN_UPSTREAM_ERRORS = frozenset({"response_cancel_not_active", "session_expired"})
# Ends that owe the client the rest of the answer and a `status: ended` rather than an error.
_GRACEFUL_CODES = frozenset(
    {
        errors.ERR_ENDED_BY_ADMIN,
        errors.ERR_SESSION_LIMIT,
        errors.ERR_IDLE,
        errors.ERR_SHUTDOWN,
        errors.ERR_AGENT_ENDED,
    }
)


class Disconnect(Exception):
    """Raised by a task whose side ended, so the TaskGroup cancels its siblings."""


@attrs.define
class EndReason:
    reason: str
    close_code: int = errors.CLOSE_NORMAL
    code: str | None = None
    message: str | None = None


class Session(ContinuityMixin):
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
        toolbox: Toolbox | None = None,
        recorder: Recorder | None = None,
        session_id: str | None = None,
        dialect: Dialect | None = None,
        instructions_file: Path | None = None,
        carried: list[dict[str, Any]] | None = None,
        before_close: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self.id = session_id or uuid.uuid4().hex
        self.dialect = dialect if dialect is not None else Dialect()
        self.audio = self.dialect.audio
        bytes_per_ms = self.audio.bytes_per_ms
        self._instructions_file = instructions_file or settings.agent_instructions_file
        self.settings = settings
        self.upstream_config = upstream
        self.registry = registry
        self.prom = metrics
        self.stats = SessionStats(
            client=request.remote or "",
            channel=self.dialect.name,
            bytes_per_ms=bytes_per_ms,
            caller=self.dialect.caller(),
        )
        self.calls: Recorder = recorder if recorder is not None else NullRecorder()
        self._speech_at: float | None = None  # when the caller's current turn started
        self.end: EndReason | None = None
        self.done = asyncio.Event()
        self.turns = TurnTracker(bytes_per_ms, ack_only=self.dialect.ack_only)
        self.channel = ClientChannel(
            ws,
            request.transport,
            audio_budget=settings.client_send_buffer_ms * bytes_per_ms,
            on_written=self._on_written,
            frames=None if self.dialect.binary_audio else self.dialect.audio_frames,
        )
        self._task: asyncio.Task[Any] | None = None
        self._end_requested = asyncio.Event()
        self._turn_over = asyncio.Event()  # no response in progress (for a graceful drain)
        self._turn_over.set()
        self._link = UpstreamLink(settings.reconnect_hold_audio_ms * bytes_per_ms)
        self._record = ConversationRecord(settings.conversation_max_chars)
        # The conversation of the call's previous session (a phone call moved to a new
        # stream), given to every connection before this session's own.
        self._carried = list(carried or ())
        # Called once the session's end is known, before the client is told: what comes
        # next for the call (a phone provider acts on the close at once) is settled first.
        self._before_close = before_close
        self._session_config: dict[str, Any] = {}
        self._switching = asyncio.Lock()  # one reconnect or rotation at a time
        self._expires_at: float | None = None  # unix time the current connection ends
        self._connected_at = 0.0  # monotonic, when the current connection was attached
        self._rotate_not_before = 0.0  # after a failed rotation, when to try again
        self._expiry_known = asyncio.Event()  # wakes the rotator: a new expiry to plan for
        self._quiet = asyncio.Event()  # no response in progress, the caller not speaking
        # PCM16 is kept on whole samples; one-byte codecs (G.711) need no aligning.
        self._aligner = protocol.SampleAligner() if self.audio.sample_bytes == 2 else None
        self._dtmf = DtmfBuffer(settings.phone.dtmf_gap_ms / 1000)
        self._odd_frame_told = False
        self._started_sent = False
        self._last_activity = time.monotonic()
        self._warned = False
        self._counted_in = 0
        self._counted_out = 0
        self._limited = LimitedLog()
        now = time.monotonic()
        rate = settings.max_audio_rate * bytes_per_ms * 1000
        self._audio_bucket = TokenBucket(rate, rate * settings.rate_window_s, now)
        per_s = settings.client_text_per_min / 60
        self._text_bucket = TokenBucket(per_s, max(1.0, settings.client_text_per_min / 4), now)
        frames = settings.max_frames_per_s
        self._frame_bucket = TokenBucket(frames, frames * settings.rate_window_s, now)
        self._audio_out = AppendCoalescer(MIN_APPEND_MS * bytes_per_ms)
        self._first_input_at: float | None = None
        self._answer_owed = False  # a response.create sent, its response.created not seen
        self._mcp_denied = False  # an MCP call was refused: the agent should say so
        self._caller_turns = 0  # speech_started events so far (did the caller speak since?)
        self._tasks: asyncio.TaskGroup | None = None  # the relay's group, for tool calls
        self._tools = (
            None
            if toolbox is None
            else ToolCalls(
                toolbox,
                session_id=self.id,
                show_arguments=settings.tools_show_arguments,
                send_client=self._send_text,
                metrics=metrics,
            )
        )

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Relay until either side ends, a limit is hit, or an end is requested."""
        self._task = asyncio.current_task()
        structlog.contextvars.bind_contextvars(session_id=self.id)
        log.info(
            "session.started",
            client=self.stats.client,
            backend=self.upstream_config.backend,
            channel=self.dialect.name,
            audio=str(self.audio),
        )
        try:
            try:
                await self._connect()
                if self.end is None:
                    await self._relay()
            finally:
                upstream = self._link.detach()
                if upstream is not None:
                    await upstream.close()
            await self._settle_end()
            await self._close_client()
        except asyncio.CancelledError:
            self._set_end(EndReason("cancelled", errors.CLOSE_GOING_AWAY))
            # What comes next for the call is settled even so (bounded; a second
            # cancellation ends it).
            with contextlib.suppress(asyncio.CancelledError):
                await self._settle_end()
            self.channel.abort()
            raise
        except Exception:
            log.exception("session.failed")
            self._set_end(EndReason("internal_error", errors.CLOSE_UPSTREAM))
            self.channel.abort()
        finally:
            self.done.set()
            end = self.end or EndReason("unknown")
            self.prom.sessions.labels(reason=end.reason, channel=self.dialect.name).inc()
            self.count_audio()
            self.calls.ended(end.reason, int(end.close_code))
            log.info(
                "session.ended",
                reason=end.reason,
                close_code=int(end.close_code),
                carried_byte=bool(self._aligner and self._aligner.carry),
                unsent_audio_bytes=self._audio_out.pending,
                **self.stats.as_dict(),
            )
            structlog.contextvars.unbind_contextvars("session_id")

    async def _settle_end(self) -> None:
        callback, self._before_close = self._before_close, None  # once
        if callback is None:
            return
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await callback(self)
        except Exception:
            log.exception("session.before_close_failed")

    def request_end(
        self,
        reason: str,
        *,
        close_code: int = errors.CLOSE_NORMAL,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        """Ask the session to end from outside (admin, shutdown); returns at once."""
        self._set_end(EndReason(reason, close_code, code, message))
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
            asyncio.ensure_future(self._turn_over.wait()),
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
            self.channel.abort()
            if self._task is not None:
                self._task.cancel()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                    await self.done.wait()

    def conversation_items(self) -> list[dict[str, Any]]:
        """The conversation so far as items a new connection is given (the carried part
        first): what a call's next session needs to go on where this one stopped."""
        return [*self._carried, *self._record.items()]

    def snapshot(self) -> dict[str, Any]:
        """The session's metrics now, as `/sessions` shows them."""
        return self.stats.as_dict()

    def count_audio(self) -> None:
        """Add the audio relayed since the last call to the process-wide counters."""
        stats = self.stats
        bytes_per_s = self.audio.bytes_per_ms * 1000
        self.prom.audio_in.inc((stats.audio_in_bytes - self._counted_in) / bytes_per_s)
        self.prom.audio_out.inc((stats.audio_out_bytes - self._counted_out) / bytes_per_s)
        self._counted_in = stats.audio_in_bytes
        self._counted_out = stats.audio_out_bytes

    def _set_end(self, end: EndReason) -> None:
        if self.end is None:
            self.end = end

    def _stop(self, reason: str, code: str | None = None, message: str | None = None) -> Disconnect:
        """Record why the session ends (the first reason wins); raise what it returns."""
        close = errors.close_code(code) if code else errors.CLOSE_NORMAL
        self._set_end(EndReason(reason, close, code, message))
        return Disconnect(reason)

    @contextlib.contextmanager
    def _io_ends_session(self) -> Iterator[None]:
        """Either socket failing ends the session with the reason that names it."""
        try:
            yield
        except ClientGone:
            raise self._stop("client_gone") from None
        except UpstreamClosed as exc:
            log.warning("session.upstream_closed", error=exc.detail)
            raise self._stop(
                "upstream_closed",
                errors.ERR_UPSTREAM_CLOSED,
                f"the Voice Live connection closed: {exc.detail}",
            ) from None

    async def _connect(self) -> None:
        """Open and configure the upstream; an end request stops the wait."""
        try:
            # An agent brings its own instructions; the file is not sent (nor read).
            instructions = (
                ""
                if self.settings.agent_mode
                else await asyncio.to_thread(self._instructions_file.read_text, encoding="utf-8")
            )
        except (OSError, UnicodeDecodeError) as exc:
            log.error("session.instructions_unreadable", error=str(exc))
            self._stop(
                "config_error",
                errors.ERR_MISCONFIGURED,
                "the agent's instructions could not be read; the operator has been told",
            )
            return
        self._session_config = build_session_config(
            self.settings,
            instructions,
            self.audio,
            tools=None if self._tools is None else self._tools.toolbox.session_tools(),
        )
        started = time.monotonic()
        attempt = asyncio.ensure_future(
            self._open_upstream(self.settings.upstream_connect_timeout_s)
        )
        ending = asyncio.ensure_future(self._end_requested.wait())
        try:
            await asyncio.wait({attempt, ending}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ending.cancel()
            if not attempt.done():
                # _open_upstream releases its socket and HTTP session when cancelled.
                attempt.cancel()
                with contextlib.suppress(asyncio.CancelledError, UpstreamClosed):
                    await attempt
        if attempt.cancelled():
            return
        failure = attempt.exception()
        if isinstance(failure, UpstreamRefused):
            log.error("session.upstream_refused", error=failure.detail)
            self._stop("upstream_auth_rejected", errors.ERR_UPSTREAM_AUTH, failure.detail)
            return
        if isinstance(failure, UpstreamClosed):
            self._upstream_failed(failure.detail)
            return
        if failure is not None:
            raise failure
        self._attach(attempt.result())
        # Audio before session.updated would meet the service's defaults: hold it until then.
        self._link.pause()
        elapsed = time.monotonic() - started
        self.stats.upstream_connect_ms = round(elapsed * 1000, 1)
        self.prom.upstream_connect.observe(elapsed)
        log.info("session.upstream_connected", connect_ms=self.stats.upstream_connect_ms)

    async def _open_upstream(self, timeout_s: float) -> Upstream:
        """A new connection, configured, with the conversation so far replayed into it.

        Raises :class:`UpstreamClosed`; whatever way it fails, nothing stays open.
        """
        conn = await open_connection(
            self.upstream_config, timeout_s, heartbeat_s=self.settings.upstream_heartbeat_s
        )
        upstream = Upstream(conn)
        try:
            await upstream.send(
                {
                    "type": "session.update",
                    "event_id": _CONFIG_EVENT_ID,
                    "session": self._session_config,
                }
            )
            for item in self.conversation_items():
                await upstream.send({"type": "conversation.item.create", "item": item})
        except BaseException:
            await asyncio.shield(upstream.close())
            raise
        return upstream

    def _attach(self, upstream: Upstream) -> Upstream | None:
        self._connected_at = time.monotonic()
        self._expires_at = None  # until the new connection's session.created says
        previous = self._link.attach(upstream)
        self.stats.upstream_generation = self._link.generation
        self._expiry_known.set()
        return previous

    def _upstream_failed(self, message: str) -> None:
        log.warning("session.upstream_connect_failed", error=message)
        self._stop("upstream_connect_failed", errors.ERR_UPSTREAM_CONNECT, message)

    async def _relay(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tasks = tg
                tg.create_task(self._client_pump(), name="client_pump")
                tg.create_task(self._upstream_pump(), name="upstream_pump")
                tg.create_task(self._writer(), name="writer")
                tg.create_task(self._watchdog(), name="watchdog")
                tg.create_task(self._rotator(), name="rotator")
                tg.create_task(self._wait_end_request(), name="end_request")
        except* Disconnect:
            pass
        except* Exception as group:
            for exc in group.exceptions:
                log.error("session.failed", exc_info=exc)
            self._stop(
                "internal_error", errors.ERR_INTERNAL, "internal error; the session was closed"
            )

    async def _close_client(self) -> None:
        """Flush what a graceful end owes the client, say why, close; never stall."""
        end = self.end or EndReason("unknown")
        graceful = end.code in _GRACEFUL_CODES
        last = None
        if end.code and end.message and self.dialect.shows_text:
            if graceful:
                last = protocol.status("ended", code=end.code, message=end.message)
            else:
                self.prom.count_error(end.code)
                last = protocol.error(end.message, end.code)
        await self.channel.close(
            end.close_code, end.message or end.reason, flush=graceful, last=last
        )

    async def _wait_end_request(self) -> None:
        await self._end_requested.wait()
        raise Disconnect("end requested")

    # -- client -> upstream ------------------------------------------------------------

    async def _client_pump(self) -> None:
        max_frame = self.settings.max_frame_bytes
        channel = self.channel
        binary, text = aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT
        binary_audio = self.dialect.binary_audio
        with self._io_ends_session():
            while True:
                try:
                    msg = await channel.receive(self._next_flush(time.monotonic()))
                except TimeoutError:
                    await self._flush_due()  # tiny frames, or keypad digits, waited enough
                    continue
                kind = msg.type
                if kind in _CLIENT_GONE:
                    break
                now = time.monotonic()
                if not self._frame_bucket.take(1, now):
                    raise self._stop(
                        "rate_limited",
                        errors.ERR_RATE_LIMITED,
                        "more than "
                        f"{self.settings.max_frames_per_s:g} frames a second from the client",
                    )
                self._last_activity = now
                if kind is binary and binary_audio:
                    data: bytes = msg.data
                    if len(data) > max_frame:
                        raise self._too_large(len(data))
                    self._first_input_at = self._first_input_at or now
                    await self._send_audio(data)
                elif kind is text:
                    payload: str = msg.data
                    if len(payload) > max_frame:
                        raise self._too_large(len(payload))
                    await self._handle_text(payload)
                elif kind is binary:
                    self._limited.warning(log, "session.client_binary_frame", size=len(msg.data))
                    self._client_error(
                        "binary frames are not part of this protocol", errors.ERR_BAD_MESSAGE
                    )
                elif kind is aiohttp.WSMsgType.PING:
                    await channel.pong(msg.data)
                elif kind is aiohttp.WSMsgType.ERROR:
                    log.info("session.client_error", error=str(channel.exception()))
                    close = int(channel.close_code or errors.CLOSE_TOO_BIG)
                    self._set_end(EndReason("client_error", close))
                    raise Disconnect("client_error")
        raise self._stop("client_closed")

    def _too_large(self, size: int) -> Disconnect:
        limit = self.settings.max_frame_bytes
        return self._stop(
            "frame_too_large",
            errors.ERR_FRAME_TOO_LARGE,
            f"frame of {size} bytes is larger than the limit of {limit}",
        )

    async def _handle_text(self, text: str) -> None:
        try:
            message = self.dialect.parse(text)
        except ProtocolError as exc:
            if not self.dialect.shows_text:
                self._limited.warning(log, "session.client_bad_message", error=exc.message)
            self._client_error(exc.message, exc.code)
            return
        if isinstance(message, protocol.AudioIn):
            self._first_input_at = self._first_input_at or time.monotonic()
            await self._send_audio(message.pcm)
        elif isinstance(message, protocol.PingIn):
            self._send_text(protocol.PONG)
        elif isinstance(message, protocol.TextIn):
            self._first_input_at = self._first_input_at or time.monotonic()
            if not self._text_bucket.take(1, time.monotonic()):
                self._client_error(
                    f"too many text messages; at most {self.settings.client_text_per_min} a minute",
                    errors.ERR_RATE_LIMITED,
                )
                return
            await self._send_user_text(message.text)
        elif isinstance(message, protocol.PlaybackIn):
            self.turns.playback(message.response_id, message.played_ms, time.monotonic())
        elif isinstance(message, protocol.DtmfIn):
            self._first_input_at = self._first_input_at or time.monotonic()
            digits = self._dtmf.add(message.digit, time.monotonic())
            if digits:
                await self._send_digits(digits)
        elif isinstance(message, protocol.HangUpIn):
            raise self._stop("caller_hung_up")

    def _next_flush(self, now: float) -> float | None:
        """Seconds until held audio or keypad digits are due to be sent; None: nothing held."""
        audio = self._audio_out.flush_in(now)
        if not self._dtmf.held:  # the common case: no keys pressed
            return audio
        keys = self._dtmf.due_in(now)
        return keys if audio is None or keys is None else min(audio, keys)

    async def _flush_due(self) -> None:
        await self._flush_audio()
        digits = self._dtmf.take_due(time.monotonic())
        if digits:
            await self._send_digits(digits)

    async def _send_digits(self, digits: str) -> None:
        """Keys the caller pressed reach the agent as a short text item (``DTMF_ROLE``),
        and the agent answers them."""
        role = self.settings.phone.dtmf_role
        log.info("session.dtmf", digits=len(digits), role=role)
        if role == "off":
            return
        if not self._text_bucket.take(1, time.monotonic()):
            # Each batch of keys costs a model response, like a typed message.
            self._limited.warning(log, "session.dtmf_rate_limited", digits=len(digits))
            return
        text = f"The caller pressed {' '.join(digits)} on their phone keypad."
        item = {"type": "message", "role": role, "content": [{"type": "input_text", "text": text}]}
        if role == "user":
            self._record.user(text)
        else:
            self._record.system(text)
        self.calls.user_typed(f"[keypad] {digits}")
        await self._ask_agent(item)

    async def _send_audio(self, data: bytes) -> None:
        pcm = data if self._aligner is None else self._aligner.feed(data)
        if self._aligner is not None and len(data) & 1 and not self._odd_frame_told:
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
                errors.ERR_RATE_LIMITED,
                f"audio arrives faster than {self.settings.max_audio_rate:g}x real time",
            )
        self.stats.audio_in_bytes += len(pcm)
        self.stats.audio_in_frames += 1
        ready = self._audio_out.add(pcm, time.monotonic())
        if ready:
            await self._link.send_audio(ready)

    async def _flush_audio(self) -> None:
        ready = self._audio_out.take()
        if ready:
            await self._link.send_audio(ready)

    async def _send_user_text(self, text: str) -> None:
        # Recorded before it is sent: a connection replaced meanwhile gets it in the replay.
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
        }
        self._record.user(text)
        self.calls.user_typed(text)
        await self._ask_agent(item)

    async def _ask_agent(self, item: dict[str, Any]) -> None:
        """Add ``item`` (already in the record) to the conversation and ask for an answer."""
        self._answer_owed = True
        if not self._link.accepting and self._started_sent:
            # The next connection gets the item in its replay and is asked to answer.
            return
        # Before the first session.updated nothing is replayed: hold until it comes.
        hold = not self._started_sent
        await self._link.send({"type": "conversation.item.create", "item": item}, hold=hold)
        await self._link.send({"type": "response.create"}, hold=hold)

    # -- upstream -> client ------------------------------------------------------------

    async def _upstream_pump(self) -> None:
        audio_delta = ev.AudioDelta
        handlers = self._handlers()
        with self._io_ends_session():
            while True:
                upstream = self._link.current
                assert upstream is not None
                try:
                    raw = await upstream.receive()
                except UpstreamClosed as exc:
                    await self._upstream_lost(upstream, exc)
                    continue
                if not raw:
                    continue
                try:
                    event = ev.parse_event(raw)
                except ev.BadUpstreamEvent as exc:
                    # One malformed event is not worth a call; the service never sends them.
                    self._limited.warning(
                        log, "session.upstream_bad_event", size=len(raw), error=str(exc)
                    )
                    continue
                # Outside the parser's try: a failure here is a bug and ends the session.
                if type(event) is audio_delta:
                    await self._on_audio(event)
                elif event is not None:
                    handler = handlers.get(type(event))
                    if handler is not None:
                        await handler(event)

    def _handlers(self) -> dict[type, Any]:
        return {
            ev.SessionCreated: self._on_session_created,
            ev.SessionUpdated: self._on_session_updated,
            ev.SpeechStarted: self._on_speech_started,
            ev.SpeechStopped: self._on_speech_stopped,
            ev.UserTranscript: self._on_user_transcript,
            ev.ResponseCreated: self._on_response_created,
            ev.OutputItemAdded: self._on_output_item,
            ev.AgentTranscript: self._on_agent_transcript,
            ev.AgentText: self._on_agent_text,
            ev.ResponseDone: self._on_response_done,
            ev.ServiceError: self._on_service_error,
            ev.ServiceWarning: self._on_service_warning,
            ev.AgentTranscriptDelta: self._on_transcript_delta,
            ev.TranscriptionFailed: self._on_transcription_failed,
            ev.FunctionCall: self._on_function_call,
            ev.McpApprovalRequest: self._on_mcp_approval,
        }

    async def _on_session_created(self, event: ev.SessionCreated) -> None:
        self._note_expiry(event.expires_at)

    def _note_expiry(self, expires_at: float | None) -> None:
        if expires_at is not None and expires_at != self._expires_at:
            self._expires_at = expires_at
            self._expiry_known.set()

    async def _on_session_updated(self, event: ev.SessionUpdated) -> None:
        self._note_expiry(event.expires_at)
        if self._started_sent:
            return
        self._started_sent = True
        self._link.resume()
        await self._link.flush()
        self._send_text(
            protocol.session_started(
                self.id,
                backend=self.upstream_config.backend,
                voice=self.settings.voice_name,
                sample_rate=self.audio.rate,
                upstream_session_id=event.session_id,
            )
        )
        self._set_state("ready")
        if self.settings.enable_proactive_greeting:
            await self._link.send({"type": "response.create"})

    async def _on_speech_started(self, event: ev.SpeechStarted) -> None:
        self._caller_turns += 1
        now = time.monotonic()
        self._speech_at = time.time()
        plan = self.turns.plan_barge_in(now)
        if plan is not None:
            self.calls.barge_in()
            # The caller talks over the agent: silence it now, end it, forget the unheard.
            self.turns.mute(plan)
            dropped = self.channel.drop_audio()
            if plan.clear_client:
                self._send_frame(self.dialect.clear())
                self.stats.barge_ins += 1
                self.prom.barge_ins.inc()
            for response_id in plan.mute:
                track = self.turns.tracks[response_id]
                if track.audio_queued:
                    played, sent = track.played_ms(now), self.audio.ms(track.audio_queued)
                    self._record.agent_interrupted(response_id, played, sent)
                    self.calls.agent_interrupted(response_id, played, sent)
            # While the link is down these are dropped: a new connection has nothing to cut.
            if plan.cancel is not None:
                cancel: dict[str, Any] = {"type": "response.cancel"}
                if plan.cancel:
                    cancel["response_id"] = plan.cancel
                await self._link.send(cancel)
            for item_id, played_ms in plan.truncate:
                await self._link.send(
                    {
                        "type": "conversation.item.truncate",
                        "event_id": _CUT_EVENT_ID,
                        "item_id": item_id,
                        "content_index": 0,
                        "audio_end_ms": played_ms,
                    }
                )
            for item_id in plan.delete:
                await self._link.send(
                    {
                        "type": "conversation.item.delete",
                        "event_id": _CUT_EVENT_ID,
                        "item_id": item_id,
                    }
                )
            log.info(
                "session.barge_in",
                truncated=plan.truncate,
                deleted=plan.delete,
                dropped_ms=self.audio.ms(dropped),
            )
        self._set_state("listening")

    async def _on_speech_stopped(self, event: ev.SpeechStopped) -> None:
        self.turns.speech_stopped(time.monotonic())
        self.stats.turns += 1
        self._set_state("processing")

    async def _on_user_transcript(self, event: ev.UserTranscript) -> None:
        self.stats.user_transcripts += 1
        self._record.user(event.text)
        self.calls.user_said(event.text, at=self._speech_at)
        self._send_text(protocol.transcript("user_transcript", event.text))

    async def _on_response_created(self, event: ev.ResponseCreated) -> None:
        self._answer_owed = False
        self.turns.response_created(event.response_id)
        self._update_turn_events()

    async def _on_output_item(self, event: ev.OutputItemAdded) -> None:
        self.turns.output_item(event.response_id, event.item_id, event.item_type)

    async def _on_transcript_delta(self, event: ev.AgentTranscriptDelta) -> None:
        track = self.turns.find(event.response_id)
        if track is None or track.muted or not event.text:
            return  # captions of an interrupted answer stop with its audio
        self._send_text(protocol.transcript_delta(event.text, track.response_id))

    async def _on_function_call(self, event: ev.FunctionCall) -> None:
        from voicebridge.tools import ToolCall  # only sessions that meet a call need it

        call = ToolCall(call_id=event.call_id, name=event.name, arguments=event.arguments)
        if self._tools is None:
            # No tools were offered, so the service should not call any; answer all the same
            # so the conversation is not left waiting on a call.
            self._record.tool(call.call_id, call.name, call.arguments, _NO_TOOLS)
            await self._link.send(_output_item(call.call_id, _NO_TOOLS))
            return
        self._tools.requested(event.response_id, call)

    async def _on_mcp_approval(self, event: ev.McpApprovalRequest) -> None:
        """Voice Live asks to call an MCP tool: the operator's policy answers, never the
        client. A denial is followed by a response so the agent can say it could not."""
        toolbox = None if self._tools is None else self._tools.toolbox
        approve = toolbox is not None and toolbox.approve_mcp(event.server_label, event.name)
        log.info(
            "session.mcp_approval", server=event.server_label, tool=event.name, approve=approve
        )
        await self._link.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "mcp_approval_response",
                    "approval_request_id": event.item_id,
                    "approve": approve,
                },
            }
        )
        if not approve:
            self._answer_owed = True
            self._mcp_denied = True

    async def _answer_tools(self, response_id: str | None) -> None:
        """Once a response that called tools is done: the outputs, then the next answer."""
        assert self._tools is not None
        turns_before = self._caller_turns
        results = await self._tools.outcomes(response_id)
        for call, outcome in results:
            self._record.tool(call.call_id, call.name, call.arguments, outcome.output)
            self.calls.tool_call(call.name, outcome.duration_ms, "ok" if outcome.ok else "failed")
            await self._link.send(_output_item(call.call_id, outcome.output), hold=True)
        if any(outcome.end_call for _, outcome in results):
            log.info("session.agent_ended")
            self.request_end(
                "agent_ended",
                close_code=errors.close_code(errors.ERR_AGENT_ENDED),
                code=errors.ERR_AGENT_ENDED,
                message="the agent ended the call",
            )
            return
        if self._caller_turns != turns_before or self.turns.response_active:
            # The caller spoke while the tools ran: their turn brings (or brought) its own
            # response, and the outputs are in the conversation for it. Asking for another
            # would talk over the caller or collide with that response.
            log.info("session.tool_answer_skipped", reason="the caller spoke meanwhile")
            return
        self._answer_owed = True
        await self._link.send({"type": "response.create"}, hold=True)

    async def _on_service_warning(self, event: ev.ServiceWarning) -> None:
        self._limited.warning(
            log, "session.upstream_warning", code=event.code, message=event.message
        )

    async def _on_transcription_failed(self, event: ev.TranscriptionFailed) -> None:
        log.warning("session.transcription_failed", item_id=event.item_id, message=event.message)
        self._client_error(
            "your last words could not be transcribed; the agent may ask you to repeat",
            errors.ERR_TRANSCRIPTION_FAILED,
        )

    async def _on_audio(self, event: ev.AudioDelta) -> None:
        step = self.turns.audio(event.response_id, event.item_id, len(event.pcm), time.monotonic())
        if step is None:
            return
        if step.first:
            self._set_state("agent_speaking")
            if step.latency_s is not None:
                self.stats.latencies_ms.append(round(step.latency_s * 1000, 1))
                self.prom.latency.observe(step.latency_s)
                self.calls.response_latency(
                    step.latency_s * 1000, response_id=step.track.response_id
                )
            else:
                self.calls.agent_started(step.track.response_id)
            self._send_text(protocol.audio_start(step.track.response_id))
        await self.channel.send_audio(step.track, event.pcm)

    def _on_written(self, track: ResponseTrack, nbytes: int) -> None:
        self.turns.written(track, nbytes, time.monotonic())
        self.stats.audio_out_bytes += nbytes
        self.stats.audio_out_frames += 1

    async def _on_agent_transcript(self, event: ev.AgentTranscript) -> None:
        self.stats.agent_transcripts += 1
        self._record.agent(event.response_id, event.text)
        self.calls.agent_said(event.response_id, event.text)
        self._send_text(protocol.transcript("agent_transcript", event.text))

    async def _on_agent_text(self, event: ev.AgentText) -> None:
        self.stats.agent_transcripts += 1
        self._record.agent(event.response_id, event.text)
        self.calls.agent_said(event.response_id, event.text)
        self._send_text(protocol.transcript("agent_text", event.text))

    async def _on_response_done(self, event: ev.ResponseDone) -> None:
        if event.mcp_answered or self._mcp_denied:
            # The service ran an MCP tool (or was refused one): the agent speaks about it.
            self._mcp_denied = False
            self._answer_owed = True
            await self._link.send({"type": "response.create"}, hold=True)
        if event.usage is not None:
            self.calls.usage(event.response_id, event.usage)
        if event.status == "failed":
            self._client_error(
                f"the agent could not answer: {event.reason or 'the service gave no reason'}",
                errors.ERR_RESPONSE_FAILED,
            )
        elif event.status == "incomplete":
            self._client_error(
                f"the answer was cut short ({event.reason or 'no reason given'})",
                errors.ERR_RESPONSE_INCOMPLETE,
            )
        if self._tools is not None:
            assert self._tasks is not None
            completed = event.status in (None, "completed")
            if self._tools.start(self._tasks, event.response_id, completed):
                self._tasks.create_task(self._answer_tools(event.response_id), name="tool_answers")
        if not self.turns.response_done(event.response_id):
            return  # an older response ending changes nothing the client sees now
        if self.stats.state != "listening":
            self._set_state("ready")
        else:
            self._update_turn_events()

    async def _on_service_error(self, event: ev.ServiceError) -> None:
        if event.event_id == _CONFIG_EVENT_ID:
            # The service refused the configuration: relaying under its defaults would be
            # a different agent than the operator set up, so the session ends here.
            log.error("session.config_rejected", code=event.code, message=event.message)
            raise self._stop(
                "config_rejected",
                errors.ERR_UPSTREAM_CONFIG_REJECTED,
                f"Voice Live refused the session's configuration: {event.message}",
            )
        if event.code in _BENIGN_UPSTREAM_ERRORS or event.event_id == _CUT_EVENT_ID:
            # A truncate or delete after a barge-in may race the service's own cancel.
            log.debug("session.upstream_benign_error", code=event.code)
            return
        log.warning("session.upstream_error", code=event.code, message=event.message)
        self._client_error(event.message, event.code)

    # -- output to the client ----------------------------------------------------------

    def _send_text(self, text: str) -> None:
        """A voicebridge message for the client (dropped for one that would not know it)."""
        if self.dialect.shows_text:
            self._send_frame(text)

    def _send_frame(self, text: str) -> None:
        if not self.channel.send_text(text):
            # Only a client that reads nothing gets here; it is ended, not buffered for.
            self._slow_consumer("the client stopped reading its messages")

    def _slow_consumer(self, message: str) -> None:
        self.prom.send_overflows.inc()
        self.request_end(
            "slow_consumer",
            close_code=errors.close_code(errors.ERR_SLOW_CONSUMER),
            code=errors.ERR_SLOW_CONSUMER,
            message=message,
        )

    def _client_error(self, message: str, code: str) -> None:
        self.stats.errors += 1
        self.prom.count_error(code)
        self._send_text(protocol.error(message, code))

    def _set_state(self, state: str) -> None:
        if state != self.stats.state:
            self.stats.state = state
            self._send_text(protocol.status(state))
        self._update_turn_events()

    def _update_turn_events(self) -> None:
        """The events waited on (a drain, a rotation), derived from the turn state."""
        active = self.turns.response_active
        for event, is_set in (
            (self._turn_over, not active),
            (self._quiet, not active and self.stats.state == "ready"),
        ):
            if is_set:
                event.set()
            else:
                event.clear()

    async def _writer(self) -> None:
        with self._io_ends_session():
            await self.channel.run_writer()

    # -- timers ------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Time limits, and the stall clock: a write pending too long ends the session."""
        s = self.settings
        deadline = self.stats.started_mono + s.session_max_duration_s
        warn_at = deadline - s.session_warning_s
        stall_limit = s.client_send_timeout_s
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise self._stop(
                    "max_duration",
                    errors.ERR_SESSION_LIMIT,
                    f"the session reached its limit of {s.session_max_duration_s:g} s",
                )
            start_deadline = self.stats.started_mono + s.session_start_timeout_s
            if self._first_input_at is None and now >= start_deadline:
                raise self._stop(
                    "no_input",
                    errors.ERR_IDLE,
                    f"no audio or text from the client within {s.session_start_timeout_s:g} s",
                )
            idle_deadline = self._last_activity + s.session_idle_timeout_s
            if now >= idle_deadline:
                raise self._stop(
                    "idle",
                    errors.ERR_IDLE,
                    f"nothing received from the client for {s.session_idle_timeout_s:g} s",
                )
            pending_since = self.channel.stalled_since()
            if pending_since is not None and now - pending_since >= stall_limit:
                self.prom.send_overflows.inc()
                raise self._stop(
                    "slow_consumer",
                    errors.ERR_SLOW_CONSUMER,
                    f"the client read none of its audio for {stall_limit:g} s",
                )
            if not self._warned and s.session_warning_s > 0 and now >= warn_at:
                self._warned = True
                self._send_text(
                    protocol.status(
                        "ending", code=errors.ERR_SESSION_LIMIT, seconds_left=round(deadline - now)
                    )
                )
            # A write that starts after this check cannot stall before now + stall_limit.
            stall_at = (pending_since if pending_since is not None else now) + stall_limit
            next_check = min(deadline, idle_deadline, stall_at)
            if self._first_input_at is None:
                next_check = min(next_check, start_deadline)
            if not self._warned and s.session_warning_s > 0:
                next_check = min(next_check, warn_at)
            await asyncio.sleep(max(0.01, next_check - now))


_CLOSE_TIMEOUT_S = 2.0
_NO_TOOLS = '{"error": "no tools are available in this session"}'


def _output_item(call_id: str, output: str) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "function_call_output", "call_id": call_id, "output": output},
    }


# Event ids on what the relay sends, so the service's errors that name them can be told
# apart: a refused configuration ends the session; a refused cut after a barge-in is a race.
_CONFIG_EVENT_ID = "vb-session-config"
_CUT_EVENT_ID = "vb-barge-in-cut"
_CLIENT_GONE = frozenset(
    {aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED}
)
#: Client audio smaller than this is gathered into one upstream append (at most this long a
#: wait), so a client sending tiny frames cannot cost an upstream event each.
MIN_APPEND_MS = 20
