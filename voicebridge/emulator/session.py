"""One emulated Voice Live conversation: the state machine behind one WebSocket.

`EmulatorSession` takes raw client frames (`handle`) and produces server events through a
send callback; it never touches the socket itself, so the transport (server.py) owns
authentication, fault injection and closing. What it does:

* `session.update` -> validated, merged, echoed in `session.updated`;
* `input_audio_buffer.append` -> energy VAD (vad.py) -> speech_started / speech_stopped ->
  committed -> conversation.item.created -> an automatic response, with the input
  transcription (`.delta` events, then `.completed` or, injected, `.failed`) before
  `response.created` or, as the service may send it, after;
* responses "answer" by echoing the user's utterance back as the agent's voice (or, for a
  typed message, tone bursts as long as the answer text; with nothing to answer, a chime),
  streamed by a player task in `chunk_ms` deltas, in real time unless told otherwise;
* response.cancel, barge-in (speech while a response plays), item create / retrieve /
  truncate / delete, buffer commit / clear, and the service's `error` event for bad input;
* on demand: responses that end `failed` or `incomplete`, and a `warning` after each
  session.updated.

Memory is bounded: only the current utterance's audio is kept (at most `max_utterance_s`),
conversation items are kept as metadata without audio (the newest `MAX_ITEMS`).

Concurrency: the receive loop (`handle`) and the response player task both change state;
they do so under one asyncio.Lock, so every client event is handled against a consistent
state, and a cancelled player can never half-finish a response.
"""

from __future__ import annotations

import asyncio
import binascii
import collections
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import ClassVar

import attrs
import orjson
import structlog

from voicebridge.emulator import protocol as p
from voicebridge.emulator.audio import (
    BYTES_PER_MS,
    bytes_to_ms,
    greeting_audio,
    ms_to_bytes,
    speech_like_audio,
)
from voicebridge.emulator.options import EmulatorOptions
from voicebridge.emulator.vad import FRAME_MS, MIN_SPEECH_MS, EnergyVad, SpeechStarted
from voicebridge.voicelive import Target

log = structlog.get_logger(__name__)

JSON = p.JSON
SendFn = Callable[[JSON], Awaitable[None]]
OptionsFn = Callable[[], EmulatorOptions]

MAX_ITEMS = 256
MAX_QUEUED_RESPONSES = 4
#: The service refuses to commit less audio than this.
MIN_COMMIT_MS = 100
GREETING_TRANSCRIPT = "Hello, this is the voicebridge emulator. Speak, and I will echo you."
_WORDS = re.compile(r"\S+\s*")


@attrs.frozen
class Answer:
    """What the next response answers: committed user audio, or a typed user message."""

    audio: bytes = b""
    text: str = ""


@attrs.frozen
class ResponsePlan:
    """A response ready to play: its audio, its transcript, and what it was asked for."""

    audio: bytes
    transcript: str
    modalities: tuple[str, ...]
    input_audio_ms: int
    input_text: str

    @property
    def has_audio(self) -> bool:
        return "audio" in self.modalities


@attrs.define(eq=False)
class ItemRecord:
    """A conversation item as the client saw it (no audio), and its assistant audio length."""

    item: JSON
    audio_bytes: int = 0


@attrs.define(eq=False)
class ActiveResponse:
    """The response being played; the player task updates its progress as it streams."""

    response_id: str
    item_id: str
    plan: ResponsePlan
    record: ItemRecord
    words: list[str]
    words_sent: int = 0
    audio_bytes_sent: int = 0
    task: asyncio.Task[None] | None = None

    @property
    def transcript_sent(self) -> str:
        return "".join(self.words[: self.words_sent])


@attrs.define(eq=False)
class EmulatorSession:
    """State of one connection. Call `start`, then `handle` per frame, then `aclose`."""

    send_event: SendFn
    get_options: OptionsFn
    model: str | None
    ids: p.Ids = attrs.field(factory=p.Ids)
    #: The connection: its model or agent, api-version and sign-in (what the rules check).
    target: Target | None = None
    #: A Foundry agent's name, project and version (agent mode), as the handshake gave them.
    agent: Mapping[str, str] | None = None

    config: JSON = attrs.field(init=False)
    _turn: p.TurnSettings | None = attrs.field(init=False)
    _vad: EnergyVad | None = attrs.field(init=False)
    _lock: asyncio.Lock = attrs.field(init=False, factory=asyncio.Lock)
    # Input audio: `_buffer` holds audio from byte position `_buffer_base` up to `_position`.
    _buffer: bytearray = attrs.field(init=False, factory=bytearray)
    _buffer_base: int = attrs.field(init=False, default=0)
    _position: int = attrs.field(init=False, default=0)
    _speech_item_id: str | None = attrs.field(init=False, default=None)
    _speech_start_ms: int = attrs.field(init=False, default=0)
    _items: collections.OrderedDict[str, ItemRecord] = attrs.field(
        init=False, factory=collections.OrderedDict
    )
    _pending: Answer | None = attrs.field(init=False, default=None)
    _active: ActiveResponse | None = attrs.field(init=False, default=None)
    _queued: collections.deque[ResponsePlan] = attrs.field(init=False, factory=collections.deque)
    _mirror_ids: tuple[str, str] | None = attrs.field(init=False, default=None)
    _closed: bool = attrs.field(init=False, default=False)
    # Transcription events held until the next response.created (transcription_after_response).
    _held_transcripts: list[JSON] = attrs.field(init=False, factory=list)
    # Counters for the disconnect log line.
    events_in: int = attrs.field(init=False, default=0)
    responses: int = attrs.field(init=False, default=0)

    def __attrs_post_init__(self) -> None:
        if self.target is None:
            self.target = Target(model=self.model, lenient=True)
        self.config = p.default_session(self.ids.new("sess"), self.model, self.target)
        if self.agent and self.agent.get("name"):
            # ResponseSession.agent (SDK AgentConfig): the agent the session talks to.
            name = self.agent["name"]
            version = self.agent.get("version") or "latest"
            self.config["agent"] = {
                "type": "agent",
                "name": name,
                "description": f"Foundry agent '{name}' ({version}) of project "
                f"'{self.agent.get('project', '')}', emulated",
                "agent_id": f"{name}:{version}",
                "thread_id": self.ids.new("thread"),
            }
        self._turn = p.turn_settings(self.config)
        self._vad = self._new_vad()

    def items(self) -> list[JSON]:
        """The conversation's items, oldest first (what a test checks was replayed)."""
        return [record.item for record in self._items.values()]

    # --- plumbing --------------------------------------------------------------------------

    @property
    def audio_received_ms(self) -> int:
        """Milliseconds of input audio received on this connection."""
        return bytes_to_ms(self._position)

    async def _send(self, event: JSON) -> None:
        event["event_id"] = self.ids.new("event")
        await self.send_event(event)

    async def _error(self, error: p.ProtocolError, client_event_id: str | None) -> None:
        await self.send_event(p.error_event(self.ids.new("event"), error, client_event_id))

    def _new_vad(self) -> EnergyVad | None:
        if self._turn is None:
            return None
        return EnergyVad(
            threshold=self._turn.threshold,
            prefix_padding_ms=self._turn.prefix_padding_ms,
            silence_duration_ms=self._turn.silence_duration_ms,
            origin_ms=bytes_to_ms(self._position),
        )

    async def start(self) -> None:
        """Greet the client with `session.created`."""
        await self._send({"type": "session.created", "session": self.config})

    async def handle(self, raw: bytes | str) -> None:
        """Handle one client frame; bad input is answered with an `error` event."""
        self.events_in += 1
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            await self._error(
                p.ProtocolError(p.ERR_INVALID_JSON, f"The event is not valid JSON: {exc}"), None
            )
            return
        if not isinstance(event, dict):
            await self._error(
                p.ProtocolError(p.ERR_INVALID_EVENT, "An event must be a JSON object."), None
            )
            return
        client_event_id = event.get("event_id")
        if not isinstance(client_event_id, str):
            client_event_id = None
        kind = event.get("type")
        handler = self._handlers.get(kind) if isinstance(kind, str) else None
        try:
            if handler is None:
                if not isinstance(kind, str):
                    raise p.ProtocolError(
                        p.ERR_MISSING_PARAMETER, "Missing required parameter: 'type'.", "type"
                    )
                raise p.ProtocolError(
                    p.ERR_INVALID_VALUE,
                    f"Invalid value: '{kind}'. Supported values are: "
                    + ", ".join(f"'{t}'" for t in p.CLIENT_EVENT_TYPES)
                    + ".",
                    "type",
                )
            async with self._lock:
                await handler(self, event)
        except p.ProtocolError as error:
            await self._error(error, client_event_id)

    async def aclose(self) -> None:
        """Stop the response player (cancel and await it); drop queued responses."""
        self._closed = True
        self._queued.clear()
        active = self._active
        self._active = None
        if active is not None and active.task is not None:
            await _cancel_and_wait(active.task)

    # --- session ---------------------------------------------------------------------------

    async def _on_session_update(self, event: JSON) -> None:
        new = p.apply_session_update(self.config, event.get("session"), self.target)
        self.config = new
        turn = p.turn_settings(new)
        if turn != self._turn:
            self._turn = turn
            self._vad = self._new_vad()
            self._speech_item_id = None
            self._clear_buffer()
        await self._send({"type": "session.updated", "session": new})
        warning = self.get_options().session_warning
        if warning is not None:
            await self.send_event(p.warning_event(self.ids.new("event"), warning, "emulator"))

    # --- input audio -----------------------------------------------------------------------

    def _max_buffer_bytes(self) -> int:
        return ms_to_bytes(int(self.get_options().max_utterance_s * 1000))

    def _clear_buffer(self) -> None:
        self._buffer.clear()
        self._buffer_base = self._position

    def _take(self, start_ms: int, end_ms: int) -> bytes:
        start = max(ms_to_bytes(start_ms) - self._buffer_base, 0)
        end = max(min(ms_to_bytes(end_ms) - self._buffer_base, len(self._buffer)), start)
        return bytes(self._buffer[start:end])

    def _trim_before(self, position: int) -> None:
        drop = min(max(position - self._buffer_base, 0), len(self._buffer))
        if drop:
            del self._buffer[:drop]
            self._buffer_base += drop

    async def _on_append(self, event: JSON) -> None:
        audio = event.get("audio")
        if not isinstance(audio, str):
            raise p.ProtocolError(
                p.ERR_MISSING_PARAMETER, "Missing required parameter: 'audio'.", "audio"
            )
        try:
            pcm = binascii.a2b_base64(audio, strict_mode=True)
        except binascii.Error as exc:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE, f"Invalid 'audio': not valid base64 ({exc}).", "audio"
            ) from None
        if len(pcm) % 2:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE,
                "Invalid 'audio': pcm16 audio must be whole 16-bit samples (an even byte count).",
                "audio",
            )
        if self.get_options().mirror:
            await self._mirror(audio)
            return
        self._position += len(pcm)
        if self._vad is None:
            await self._append_manual(pcm)
        else:
            await self._append_vad(self._vad, pcm)

    async def _mirror(self, audio: str) -> None:
        # Benchmark mode: no decoding into state, no VAD; one delta per append.
        if self._mirror_ids is None:
            self._mirror_ids = (self.ids.new("resp"), self.ids.new("item"))
        response_id, item_id = self._mirror_ids
        await self._send(
            {
                "type": "response.audio.delta",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": audio,
            }
        )

    async def _append_manual(self, pcm: bytes) -> None:
        room = self._max_buffer_bytes() - len(self._buffer)
        self._buffer += pcm[: max(room, 0)]
        if len(pcm) > room:
            raise p.ProtocolError(
                p.ERR_BUFFER_FULL,
                f"The input audio buffer is full ({self.get_options().max_utterance_s:g} s); "
                f"{bytes_to_ms(len(pcm) - max(room, 0))} ms were dropped. Commit or clear it.",
                "audio",
            )

    async def _append_vad(self, vad: EnergyVad, pcm: bytes) -> None:
        self._buffer += pcm
        for vad_event in vad.feed(pcm):
            if isinstance(vad_event, SpeechStarted):
                await self._speech_started(vad_event)
            else:
                await self._speech_stopped(vad_event.audio_end_ms)
        if vad.in_speech:
            if self._position - ms_to_bytes(self._speech_start_ms) > self._max_buffer_bytes():
                log.info("emulator.utterance_too_long", audio_ms=self.audio_received_ms)
                await self._speech_stopped(vad.force_stop().audio_end_ms)
        elif self._turn is not None:
            # Outside speech only the prefix padding (plus the VAD's confirmation delay)
            # can ever become part of a turn, so that is all we keep.
            keep_ms = self._turn.prefix_padding_ms + MIN_SPEECH_MS + 2 * FRAME_MS
            self._trim_before(self._position - ms_to_bytes(keep_ms))

    async def _speech_started(self, event: SpeechStarted) -> None:
        item_id = self.ids.new("item")
        self._speech_item_id = item_id
        self._speech_start_ms = event.audio_start_ms
        self._trim_before(ms_to_bytes(event.audio_start_ms))
        await self._send(
            {
                "type": "input_audio_buffer.speech_started",
                "audio_start_ms": event.audio_start_ms,
                "item_id": item_id,
            }
        )
        if self._active is not None and self._turn is not None and self._turn.interrupt_response:
            await self._cancel_active("turn_detected")

    async def _speech_stopped(self, audio_end_ms: int) -> None:
        item_id = self._speech_item_id or self.ids.new("item")
        self._speech_item_id = None
        await self._send(
            {
                "type": "input_audio_buffer.speech_stopped",
                "audio_end_ms": audio_end_ms,
                "item_id": item_id,
            }
        )
        audio = self._take(self._speech_start_ms, audio_end_ms)
        self._trim_before(ms_to_bytes(audio_end_ms))
        auto = self._turn is not None and self._turn.create_response
        await self._commit(item_id, audio, auto_response=auto)

    async def _on_commit(self, _event: JSON) -> None:
        now_ms = bytes_to_ms(self._position)
        if self._vad is not None and self._vad.in_speech:
            audio = self._take(self._speech_start_ms, now_ms)
            item_id = self._speech_item_id or self.ids.new("item")
        else:
            audio = bytes(self._buffer)
            item_id = self.ids.new("item")
        if len(audio) < ms_to_bytes(MIN_COMMIT_MS):
            raise p.ProtocolError(
                p.ERR_COMMIT_EMPTY,
                "Error committing input audio buffer: buffer too small. Expected at least "
                f"{MIN_COMMIT_MS}ms of audio, but buffer only has "
                f"{len(audio) / BYTES_PER_MS:.2f}ms of audio.",
            )
        if self._vad is not None:
            self._vad.reset()
        self._speech_item_id = None
        self._clear_buffer()
        auto = self._turn is not None and self._turn.create_response
        await self._commit(item_id, audio, auto_response=auto)

    async def _on_clear(self, _event: JSON) -> None:
        if self._vad is not None:
            self._vad.reset()
        self._speech_item_id = None
        self._clear_buffer()
        await self._send({"type": "input_audio_buffer.cleared"})

    async def _commit(self, item_id: str, audio: bytes, *, auto_response: bool) -> None:
        previous = self._last_item_id()
        item = p.user_audio_item(item_id)
        self._remember(item_id, ItemRecord(item))
        await self._send(
            {
                "type": "input_audio_buffer.committed",
                "previous_item_id": previous,
                "item_id": item_id,
            }
        )
        await self._send(
            {"type": "conversation.item.created", "previous_item_id": previous, "item": item}
        )
        self._pending = Answer(audio=audio)
        log.debug("emulator.turn", item_id=item_id, audio_ms=bytes_to_ms(len(audio)))
        if self.config.get("input_audio_transcription") is not None:
            events = self._transcription_events(item_id, audio)
            if auto_response and self.get_options().transcription_after_response:
                self._held_transcripts.extend(events)  # sent after response.created
            else:
                await self._send_all(events)
        if auto_response:
            await self._request_response(tuple(self.config["modalities"]), automatic=True)

    def _transcription_events(self, item_id: str, audio: bytes) -> list[JSON]:
        """The input transcription of a committed turn: word deltas, then completed (or,
        injected, failed). No recogniser runs offline: the transcript says what was heard."""
        if self.get_options().fail_transcription:
            return [
                p.transcription_failed_event(
                    self.ids.new("event"),
                    item_id,
                    "Input transcription failed (injected by the emulator).",
                )
            ]
        transcript = f"[emulator heard {len(audio) / BYTES_PER_MS / 1000:.2f} s of audio]"
        record = self._items.get(item_id)
        if record is not None:
            record.item["content"] = [{"type": "input_audio", "transcript": transcript}]
        ids = {"item_id": item_id, "content_index": 0}
        events: list[JSON] = [
            {"type": "conversation.item.input_audio_transcription.delta", **ids, "delta": word}
            for word in _WORDS.findall(transcript)
        ]
        events.append(
            {
                "type": "conversation.item.input_audio_transcription.completed",
                **ids,
                "transcript": transcript,
            }
        )
        return events

    async def _send_all(self, events: list[JSON]) -> None:
        for event in events:
            if "event_id" in event:
                await self.send_event(event)
            else:
                await self._send(event)

    # --- conversation items ----------------------------------------------------------------

    def _last_item_id(self) -> str | None:
        return next(reversed(self._items), None)

    def _remember(self, item_id: str, record: ItemRecord) -> None:
        self._items[item_id] = record
        while len(self._items) > MAX_ITEMS:
            self._items.popitem(last=False)

    def _record(self, event: JSON) -> tuple[str, ItemRecord]:
        item_id = event.get("item_id")
        if not isinstance(item_id, str):
            raise p.ProtocolError(
                p.ERR_MISSING_PARAMETER, "Missing required parameter: 'item_id'.", "item_id"
            )
        record = self._items.get(item_id)
        if record is None:
            raise p.ProtocolError(
                p.ERR_ITEM_NOT_FOUND, f"Item with item_id '{item_id}' not found.", "item_id"
            )
        return item_id, record

    async def _on_item_create(self, event: JSON) -> None:
        item = event.get("item")
        if not isinstance(item, Mapping):
            raise p.ProtocolError(
                p.ERR_MISSING_PARAMETER, "Missing required parameter: 'item'.", "item"
            )
        previous = event.get("previous_item_id")
        if previous is not None and previous != "root" and previous not in self._items:
            raise p.ProtocolError(
                p.ERR_ITEM_NOT_FOUND,
                f"Item with previous_item_id '{previous}' not found.",
                "previous_item_id",
            )
        kind = item.get("type")
        if kind not in ("message", "function_call", "function_call_output"):
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE,
                f"Invalid value: {kind!r}. Supported values are: 'message', 'function_call', "
                "'function_call_output'.",
                "item.type",
            )
        item_id = item.get("id") or self.ids.new("item")
        if not isinstance(item_id, str) or item_id in self._items:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE, f"Item id {item_id!r} is invalid or already used.", "item.id"
            )
        answer: Answer | None = None
        stored: JSON = {**item, "id": item_id, "object": "realtime.item", "status": "completed"}
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system"):
                raise p.ProtocolError(
                    p.ERR_INVALID_VALUE, f"Invalid value: {role!r} for 'item.role'.", "item.role"
                )
            content = item.get("content")
            if not isinstance(content, list):
                raise p.ProtocolError(
                    p.ERR_MISSING_PARAMETER,
                    "Missing required parameter: 'item.content'.",
                    "item.content",
                )
            parts: list[JSON] = []
            for part in content:
                if not isinstance(part, Mapping):
                    raise p.ProtocolError(
                        p.ERR_INVALID_VALUE, "Each content part must be an object.", "item.content"
                    )
                if part.get("type") == "input_audio":
                    # Audio is used for the answer but not kept with the item.
                    pcm = _decode_audio(part.get("audio"), "item.content.audio")
                    if role == "user":
                        answer = Answer(audio=pcm)
                    parts.append({"type": "input_audio", "transcript": part.get("transcript")})
                    continue
                if part.get("type") == "input_text" and role == "user":
                    text = part.get("text")
                    if isinstance(text, str):
                        answer = Answer(text=text)
                parts.append(dict(part))
            stored["content"] = parts
        self._remember(item_id, ItemRecord(stored))
        if answer is not None:
            self._pending = answer
        await self._send(
            {
                "type": "conversation.item.created",
                "previous_item_id": previous
                if previous is not None
                else self._previous_of(item_id),
                "item": stored,
            }
        )

    def _previous_of(self, item_id: str) -> str | None:
        keys = list(self._items)
        index = keys.index(item_id)
        return keys[index - 1] if index > 0 else None

    async def _on_item_retrieve(self, event: JSON) -> None:
        _, record = self._record(event)
        await self._send({"type": "conversation.item.retrieved", "item": record.item})

    async def _on_item_delete(self, event: JSON) -> None:
        item_id, _ = self._record(event)
        del self._items[item_id]
        await self._send({"type": "conversation.item.deleted", "item_id": item_id})

    async def _on_item_truncate(self, event: JSON) -> None:
        item_id, record = self._record(event)
        content_index = event.get("content_index")
        audio_end_ms = event.get("audio_end_ms")
        for name, value in (("content_index", content_index), ("audio_end_ms", audio_end_ms)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise p.ProtocolError(
                    p.ERR_MISSING_PARAMETER, f"Missing required integer parameter: '{name}'.", name
                )
        assert isinstance(audio_end_ms, int)  # narrowed above, for mypy
        item = record.item
        is_audio = item.get("role") == "assistant" and record.audio_bytes > 0
        if not is_audio or content_index != 0:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE,
                f"Item '{item_id}' has no assistant audio at content_index {content_index}.",
                "content_index",
            )
        sent_ms = bytes_to_ms(record.audio_bytes)
        if audio_end_ms <= 0 or audio_end_ms > sent_ms:
            raise p.ProtocolError(
                p.ERR_TRUNCATE_INVALID,
                f"audio_end_ms must be between 1 and the {sent_ms} ms of audio sent for "
                f"item '{item_id}', got {audio_end_ms}.",
                "audio_end_ms",
            )
        record.audio_bytes = ms_to_bytes(audio_end_ms)
        await self._send(
            {
                "type": "conversation.item.truncated",
                "item_id": item_id,
                "content_index": content_index,
                "audio_end_ms": audio_end_ms,
            }
        )

    async def _on_output_clear(self, _event: JSON) -> None:
        await self._send({"type": "output_audio_buffer.cleared"})

    # --- responses -------------------------------------------------------------------------

    async def _on_response_create(self, event: JSON) -> None:
        params = event.get("response") or {}
        if not isinstance(params, Mapping):
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE, "Invalid 'response': expected an object.", "response"
            )
        modalities = params.get("modalities", self.config["modalities"])
        if (
            not isinstance(modalities, list)
            or not modalities
            or not all(isinstance(m, str) and m in p.MODALITIES for m in modalities)
        ):
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE, f"Invalid value: {modalities!r}.", "response.modalities"
            )
        await self._request_response(tuple(modalities), automatic=False)

    async def _on_response_cancel(self, event: JSON) -> None:
        active = self._active
        wanted = event.get("response_id")
        if active is None or (wanted is not None and wanted != active.response_id):
            raise p.ProtocolError(
                p.ERR_CANCEL_NOT_ACTIVE, "Cancellation failed: no active response found"
            )
        await self._cancel_active("client_cancelled")

    def _plan(self, modalities: tuple[str, ...]) -> ResponsePlan:
        answer, self._pending = self._pending, None
        if answer is None:
            transcript, audio, in_ms, in_text = GREETING_TRANSCRIPT, greeting_audio(), 0, ""
        elif answer.audio:
            in_ms = bytes_to_ms(len(answer.audio))
            transcript = (
                f"This is the voicebridge emulator echoing {in_ms / 1000:.2f} s of your audio."
            )
            audio, in_text = answer.audio, ""
        else:
            in_ms, in_text = 0, answer.text
            transcript = f"You said: {answer.text}"
            audio = speech_like_audio(transcript) if "audio" in modalities else b""
        if "audio" not in modalities:
            audio = b""
        return ResponsePlan(audio, transcript, modalities, in_ms, in_text)

    async def _request_response(self, modalities: tuple[str, ...], *, automatic: bool) -> None:
        if self._active is not None:
            if not automatic:
                raise p.ProtocolError(
                    p.ERR_ACTIVE_RESPONSE,
                    "Conversation already has an active response in progress: "
                    f"{self._active.response_id}. Wait until the response is finished before "
                    "creating a new one.",
                )
            # An automatic response while another plays (interrupt_response off): it plays
            # next. The queue is bounded; beyond it the oldest waiting turn is dropped.
            if len(self._queued) >= MAX_QUEUED_RESPONSES:
                self._queued.popleft()
                log.warning("emulator.response_queue_full")
            self._queued.append(self._plan(modalities))
            return
        await self._start_response(self._plan(modalities))

    async def _start_response(self, plan: ResponsePlan) -> None:
        # The opening events are sent before the player task exists, so a response.cancel
        # that follows at once always finds a response the client has heard of.
        response_id = self.ids.new("resp")
        item_id = self.ids.new("item")
        modalities = list(plan.modalities)
        item = p.assistant_item(item_id, "in_progress", None)
        record = ItemRecord(item)
        previous = self._last_item_id()
        self._remember(item_id, record)
        active = ActiveResponse(response_id, item_id, plan, record, _WORDS.findall(plan.transcript))
        self._active = active
        self.responses += 1
        await self._send(
            {
                "type": "response.created",
                "response": p.response_object(response_id, "in_progress", self.config, modalities),
            }
        )
        if self._held_transcripts:
            held, self._held_transcripts = self._held_transcripts, []
            await self._send_all(held)
        await self._send(
            {
                "type": "response.output_item.added",
                "response_id": response_id,
                "output_index": 0,
                "item": item,
            }
        )
        await self._send(
            {"type": "conversation.item.created", "previous_item_id": previous, "item": item}
        )
        await self._send(
            {
                "type": "response.content_part.added",
                "response_id": response_id,
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": _part(plan, ""),
            }
        )
        if not self._closed:
            active.task = asyncio.create_task(self._play(active), name=f"emulator-{response_id}")

    def _ids(self, active: ActiveResponse) -> JSON:
        return {
            "response_id": active.response_id,
            "item_id": active.item_id,
            "output_index": 0,
            "content_index": 0,
        }

    async def _send_words(self, active: ActiveResponse, upto: int) -> None:
        kind = "response.audio_transcript.delta" if active.plan.has_audio else "response.text.delta"
        while active.words_sent < upto:
            word = active.words[active.words_sent]
            active.words_sent += 1
            await self._send({"type": kind, **self._ids(active), "delta": word})

    async def _play(self, active: ActiveResponse) -> None:
        """Stream the response's audio and transcript, then finish it (the player task).

        With ``response_outcome`` failed nothing is streamed; with incomplete, half."""
        options = self.get_options()
        outcome = options.response_outcome
        plan = active.plan
        audio = plan.audio
        words = len(active.words)
        if outcome == "failed":
            audio, words = b"", 0
        elif outcome == "incomplete":
            audio = audio[: ms_to_bytes(bytes_to_ms(len(audio)) // 2)]
            words //= 2
        chunk_bytes = ms_to_bytes(options.chunk_ms)
        count = math.ceil(len(audio) / chunk_bytes)
        if count:
            if options.first_audio_delay_s:
                await asyncio.sleep(options.first_audio_delay_s)
            loop = asyncio.get_running_loop()
            started = loop.time()
            for index in range(count):
                if options.realtime:
                    wait = started + index * options.chunk_ms / 1000 - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                # The transcript runs slightly ahead of the audio, as the service's does.
                await self._send_words(active, math.ceil(words * (index + 1) / count))
                chunk = audio[index * chunk_bytes : (index + 1) * chunk_bytes]
                await self._send(
                    {
                        "type": "response.audio.delta",
                        **self._ids(active),
                        "delta": binascii.b2a_base64(chunk, newline=False).decode("ascii"),
                    }
                )
                active.audio_bytes_sent += len(chunk)
                active.record.audio_bytes = active.audio_bytes_sent
                if options.error_mid_response and index == count // 2:
                    log.info("emulator.fault", fault="error_mid_response")
                    await self._error(
                        p.ProtocolError(
                            p.ERR_INJECTED,
                            "Injected fault: an error in the middle of a response.",
                            type="server_error",
                        ),
                        None,
                    )
        await self._send_words(active, words)
        details: JSON | None = None
        if outcome == "failed":
            # ResponseFailedDetails (SDK): the error that ended the response.
            details = {
                "type": "failed",
                "error": {
                    "type": "server_error",
                    "code": p.ERR_INJECTED,
                    "message": "The response failed (injected by the emulator).",
                },
            }
        elif outcome == "incomplete":
            # ResponseIncompleteDetails (SDK): content_filter or max_output_tokens.
            details = {"type": "incomplete", "reason": options.incomplete_reason}
        async with self._lock:
            await self._finish(active, outcome, details)

    async def _cancel_active(self, reason: str) -> None:
        active = self._active
        if active is None:
            return
        if active.task is not None:
            await _cancel_and_wait(active.task)
        await self._finish(active, "cancelled", {"type": "cancelled", "reason": reason})

    async def _finish(self, active: ActiveResponse, status: str, details: JSON | None) -> None:
        """Close the response's item, part and the response itself; start the next queued one."""
        if self._active is active:
            self._active = None
        plan = active.plan
        transcript = active.transcript_sent if status != "completed" else plan.transcript
        ids = self._ids(active)
        part = _part(plan, transcript)
        item_status = "completed" if status == "completed" else "incomplete"
        item = p.assistant_item(active.item_id, item_status, part)
        active.record.item = item
        if plan.has_audio:
            await self._send({"type": "response.audio.done", **ids})
            await self._send(
                {"type": "response.audio_transcript.done", **ids, "transcript": transcript}
            )
        else:
            await self._send({"type": "response.text.done", **ids, "text": transcript})
        await self._send({"type": "response.content_part.done", **ids, "part": part})
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": active.response_id,
                "output_index": 0,
                "item": item,
            }
        )
        out_ms = bytes_to_ms(active.audio_bytes_sent)
        await self._send(
            {
                "type": "response.done",
                "response": p.response_object(
                    active.response_id,
                    status,
                    self.config,
                    list(plan.modalities),
                    output=[item],
                    status_details=details,
                    usage=p.usage(plan.input_audio_ms, plan.input_text, out_ms, transcript),
                ),
            }
        )
        log.debug(
            "emulator.response_done", response_id=active.response_id, status=status, audio_ms=out_ms
        )
        if self._queued and not self._closed:
            await self._start_response(self._queued.popleft())

    _handlers: ClassVar[Mapping[str, Callable[[EmulatorSession, JSON], Awaitable[None]]]]
    _handlers = MappingProxyType(
        {
            "session.update": _on_session_update,
            "input_audio_buffer.append": _on_append,
            "input_audio_buffer.commit": _on_commit,
            "input_audio_buffer.clear": _on_clear,
            "conversation.item.create": _on_item_create,
            "conversation.item.retrieve": _on_item_retrieve,
            "conversation.item.truncate": _on_item_truncate,
            "conversation.item.delete": _on_item_delete,
            "response.create": _on_response_create,
            "response.cancel": _on_response_cancel,
            "output_audio_buffer.clear": _on_output_clear,
        }
    )


def _part(plan: ResponsePlan, transcript: str) -> JSON:
    if plan.has_audio:
        return {"type": "audio", "transcript": transcript}
    return {"type": "text", "text": transcript}


def _decode_audio(value: object, param: str) -> bytes:
    if not isinstance(value, str):
        raise p.ProtocolError(
            p.ERR_MISSING_PARAMETER, f"Missing required parameter: '{param}'.", param
        )
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except binascii.Error:
        raise p.ProtocolError(
            p.ERR_INVALID_VALUE, f"Invalid '{param}': not valid base64.", param
        ) from None


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait for it to end, without swallowing our own cancellation."""
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise
    except Exception:
        log.exception("emulator.player_failed")
