"""One emulated Voice Live conversation: the state machine behind one WebSocket.

`EmulatorSession` takes raw client frames (`handle`) and produces server events through a
send callback; it never touches the socket itself, so the transport (server.py) owns
authentication, fault injection and closing. What it does:

* `session.update` -> validated, merged, echoed in `session.updated`;
* `input_audio_buffer.append` -> decoded from the session's input format to PCM16 24 kHz
  (formats.py) -> energy VAD (vad.py) -> speech_started / speech_stopped ->
  committed -> conversation.item.created -> an automatic response, with the input
  transcription (`.delta` events, then `.completed` or, injected, `.failed`) before
  `response.created` or, as the service may send it, after;
* responses "answer" by echoing the user's utterance back as the agent's voice (or, for a
  typed message, tone bursts as long as the answer text; with nothing to answer, a chime),
  streamed by a player task in `chunk_ms` deltas in the session's output format, in real
  time unless told otherwise;
* response.cancel, barge-in (speech while a response plays), item create / retrieve /
  truncate / delete, buffer commit / clear, and the service's `error` event for bad input;
* on demand: responses that end `failed` or `incomplete`, and a `warning` after each
  session.updated;
* tools (session `tools`): a typed user message that starts with a tool's name,
  ``find_product {"name": "headset"}`` (several joined by ``;``), makes the next response
  call it: a function call (arguments streamed, then the client's function_call_output
  and response.create get spoken answer "The tool said: <output>"), or an MCP tool (an
  mcp_approval_request when the server's require_approval asks for one, then the
  service-side mcp_call with an output made up here). MCP servers are listed
  (mcp_list_tools.*) after each session.updated that adds one. With
  ``call_tool_after_speech`` every spoken turn calls that tool instead of being echoed.

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
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

import attrs
import orjson
import structlog

from voicebridge.audio_format import AudioFormat
from voicebridge.emulator import formats
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
#: Function and MCP call arguments are streamed in deltas of this many characters, one
#: every ARGUMENTS_DELTA_S when pacing in real time (a model writes them token by token).
ARGUMENTS_CHUNK_CHARS = 16
ARGUMENTS_DELTA_S = 0.02
#: The tools an MCP server offers when its entry names no allowed_tools.
DEFAULT_MCP_TOOLS = ("search",)

ToolItemKind = Literal["function_call", "mcp_approval_request", "mcp_call"]


@attrs.frozen
class PlannedCall:
    """One tool call a response makes: its output item's type, the tool and arguments."""

    kind: ToolItemKind
    name: str
    arguments: str
    server_label: str | None = None
    approval_request_id: str | None = None


@attrs.frozen
class Answer:
    """What the next response answers: committed user audio, or a typed user message;
    tools it calls instead; or what it says about tool results (``reply``)."""

    audio: bytes = b""
    text: str = ""
    calls: tuple[PlannedCall, ...] = ()
    reply: tuple[str, ...] = ()


@attrs.frozen
class ResponsePlan:
    """A response ready to play: its audio, its transcript, and what it was asked for;
    or, with ``calls``, the tools it calls (no audio, no message)."""

    audio: bytes
    transcript: str
    modalities: tuple[str, ...]
    input_audio_ms: int
    input_text: str
    calls: tuple[PlannedCall, ...] = ()

    @property
    def has_audio(self) -> bool:
        return "audio" in self.modalities


@attrs.define(eq=False)
class ItemRecord:
    """A conversation item as the client saw it (no audio), and its assistant audio length."""

    item: JSON
    #: Assistant audio sent for the item, in bytes of `audio_format` (the session's
    #: output format when its response started).
    audio_bytes: int = 0
    audio_format: AudioFormat = formats.PCM16_24K


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
class ToolItem:
    """One output item of a tool response, as far as the player has streamed it."""

    call: PlannedCall
    item_id: str
    call_id: str
    record: ItemRecord
    arguments_sent: int = 0
    done: bool = False


@attrs.define(eq=False)
class ToolResponse:
    """A response that calls tools; the player task adds and streams its items."""

    response_id: str
    plan: ResponsePlan
    items: list[ToolItem] = attrs.field(factory=list)
    task: asyncio.Task[None] | None = None


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
    # Input audio in the session's input format -> PCM16 24 kHz, what the rest works on.
    _decoder: formats.InputDecoder = attrs.field(init=False)
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
    _active: ActiveResponse | ToolResponse | None = attrs.field(init=False, default=None)
    # MCP servers listed on this connection: label -> (url and allowed tools, tool names).
    _mcp_servers: dict[str, tuple[tuple[str, tuple[str, ...]], tuple[str, ...]]] = attrs.field(
        init=False, factory=dict
    )
    # mcp_approval_request items not answered yet, by item id.
    _approvals: dict[str, PlannedCall] = attrs.field(init=False, factory=dict)
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
        self._decoder = formats.InputDecoder(formats.input_format(self.config))

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
        if formats.input_format(new) != self._decoder.format:
            # Buffered audio is already PCM16 24 kHz, so it stays valid; appends from now
            # on are read in the new format (a 16 kHz odd sample held back is dropped).
            self._decoder = formats.InputDecoder(formats.input_format(new))
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
        await self._list_mcp_tools()

    async def _list_mcp_tools(self) -> None:
        """List the tools of each MCP server the session names anew: an mcp_list_tools
        item, then mcp_list_tools.in_progress and .completed (how-to: "On session start,
        Voice Live calls each MCP server's tool listing endpoint and emits mcp_list_tools
        events"). The tools are its allowed_tools (or DEFAULT_MCP_TOOLS); a server on a
        ``.invalid`` host (RFC 2606: never resolves) fails with mcp_list_tools.failed."""
        servers = [t for t in self.config.get("tools") or [] if t.get("type") == "mcp"]
        labels = {server["server_label"] for server in servers}
        for label in set(self._mcp_servers) - labels:
            del self._mcp_servers[label]
        for server in servers:
            label = server["server_label"]
            allowed = tuple(server.get("allowed_tools") or ())
            key = (server["server_url"], allowed)
            if label in self._mcp_servers and self._mcp_servers[label][0] == key:
                continue
            item_id = self.ids.new("item")
            previous = self._last_item_id()
            record = ItemRecord(p.mcp_list_tools_item(item_id, label, []))
            self._remember(item_id, record)
            await self._send(
                {
                    "type": "conversation.item.created",
                    "previous_item_id": previous,
                    "item": record.item,
                }
            )
            await self._send({"type": "mcp_list_tools.in_progress", "item_id": item_id})
            if (urlsplit(server["server_url"]).hostname or "").endswith(".invalid"):
                self._mcp_servers[label] = (key, ())
                await self._send({"type": "mcp_list_tools.failed", "item_id": item_id})
                continue
            names = allowed or DEFAULT_MCP_TOOLS
            record.item = p.mcp_list_tools_item(
                item_id,
                label,
                [
                    {
                        "name": name,
                        "description": f"{name} on {label} (emulated)",
                        "input_schema": {"type": "object", "properties": {}},
                    }
                    for name in names
                ],
            )
            self._mcp_servers[label] = (key, names)
            await self._send({"type": "mcp_list_tools.completed", "item_id": item_id})

    def _tool_calls(self, text: str) -> tuple[PlannedCall, ...]:
        """The calls a typed message asks for: it starts with a tool's name (see
        parse_tool_request). Nothing unless the session has tools and its tool_choice is
        not "none"; an MCP tool only once its server's tools are listed."""
        tools = self.config.get("tools") or []
        if not tools or self.config.get("tool_choice") == "none":
            return ()
        functions = {t["name"] for t in tools if t.get("type") == "function"}
        servers = {t["server_label"]: t for t in tools if t.get("type") == "mcp"}
        mcp: dict[str, str] = {}  # tool name -> server label (the first server wins)
        for label in servers:
            for name in self._mcp_servers.get(label, ((), ()))[1]:
                mcp.setdefault(name, label)
        calls = []
        for name, arguments in parse_tool_request(text, functions | set(mcp)):
            if name in functions:
                calls.append(PlannedCall("function_call", name, arguments))
                continue
            label = mcp[name]
            asks = p.needs_approval(servers[label], name)
            kind: ToolItemKind = "mcp_approval_request" if asks else "mcp_call"
            calls.append(PlannedCall(kind, name, arguments, label))
        return tuple(calls)

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
            data = binascii.a2b_base64(audio, strict_mode=True)
        except binascii.Error as exc:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE, f"Invalid 'audio': not valid base64 ({exc}).", "audio"
            ) from None
        # pcm16 is whole 2-byte samples; G.711 is one byte a sample, so any count will do.
        if self._decoder.format.codec == "pcm16" and len(data) % 2:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE,
                "Invalid 'audio': pcm16 audio must be whole 16-bit samples (an even byte count).",
                "audio",
            )
        if self.get_options().mirror:
            await self._mirror(audio, data)
            return
        # From here on input audio is PCM16 24 kHz, so positions and lengths are in its
        # bytes (audio.BYTES_PER_MS) whatever the session's input format.
        pcm = self._decoder.feed(data)
        self._position += len(pcm)
        if self._vad is None:
            await self._append_manual(pcm)
        else:
            await self._append_vad(self._vad, pcm)

    async def _mirror(self, audio: str, data: bytes) -> None:
        # Benchmark mode: no decoding into state, no VAD; one delta per append, converted
        # only when the output format is not the input's.
        source = self._decoder.format
        target = formats.output_format(self.config)
        if target != source:
            out = formats.from_pcm24k(target, formats.to_internal(source, data))
            audio = binascii.b2a_base64(out, newline=False).decode("ascii")
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
        after_speech = self.get_options().call_tool_after_speech
        calls = self._tool_calls(after_speech) if after_speech else ()
        self._pending = Answer(audio=audio, calls=calls)
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
        if kind not in CREATABLE_ITEMS:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE,
                f"Invalid value: {kind!r}. Supported values are: "
                + ", ".join(f"'{k}'" for k in CREATABLE_ITEMS)
                + ".",
                "item.type",
            )
        item_id = item.get("id") or self.ids.new("item")
        if not isinstance(item_id, str) or item_id in self._items:
            raise p.ProtocolError(
                p.ERR_INVALID_VALUE, f"Item id {item_id!r} is invalid or already used.", "item.id"
            )
        answer: Answer | None = None
        approval: tuple[PlannedCall, bool] | None = None
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
                    # In the session's input format, as appended audio is (OpenAI
                    # Realtime reference, "input_audio" content: "parsed as the format
                    # specified in the session input audio type configuration").
                    pcm = _decode_input_audio(part.get("audio"), formats.input_format(self.config))
                    if role == "user":
                        answer = Answer(audio=pcm)
                    parts.append({"type": "input_audio", "transcript": part.get("transcript")})
                    continue
                if part.get("type") == "input_text" and role == "user":
                    text = part.get("text")
                    if isinstance(text, str):
                        answer = Answer(text=text, calls=self._tool_calls(text))
                parts.append(dict(part))
            stored["content"] = parts
        elif kind == "function_call":
            # SDK FunctionCallItem: name, call_id and arguments are required.
            for key in ("name", "call_id", "arguments"):
                _require_string(item, key)
            stored["status"] = item.get("status") or "completed"
        elif kind == "function_call_output":
            call_id = _require_string(item, "call_id")
            output = _require_string(item, "output")
            if not any(
                r.item.get("type") == "function_call" and r.item.get("call_id") == call_id
                for r in self._items.values()
            ):
                raise p.ProtocolError(
                    p.ERR_INVALID_TOOL_CALL_ID,
                    f"Tool call ID '{call_id}' not found in conversation.",
                )
            # ResponseFunctionCallOutputItem has no status.
            stored = {
                "id": item_id,
                "object": "realtime.item",
                "type": kind,
                "call_id": call_id,
                "output": output,
            }
            reply = self._pending.reply if self._pending is not None else ()
            answer = Answer(reply=(*reply, f"The tool said: {output}"))
        else:  # mcp_approval_response (SDK MCPApprovalResponseRequestItem)
            request_id = _require_string(item, "approval_request_id")
            approve = item.get("approve")
            if not isinstance(approve, bool):
                raise p.ProtocolError(
                    p.ERR_MISSING_PARAMETER,
                    "Missing required boolean parameter: 'approve'.",
                    "item.approve",
                )
            call = self._approvals.pop(request_id, None)
            if call is None:
                # The service's code for this is not documented; the emulator refuses an
                # answer to no (or an already answered) approval request as an invalid value.
                raise p.ProtocolError(
                    p.ERR_INVALID_VALUE,
                    f"No pending MCP approval request '{request_id}' in the conversation.",
                    "item.approval_request_id",
                )
            # ResponseMCPApprovalResponseItem has no status.
            stored = {
                "id": item_id,
                "object": "realtime.item",
                "type": kind,
                "approval_request_id": request_id,
                "approve": approve,
            }
            if isinstance(item.get("reason"), str):
                stored["reason"] = item["reason"]
            approval = (
                attrs.evolve(call, kind="mcp_call", approval_request_id=request_id),
                approve,
            )
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
        if approval is not None:
            call, approved = approval
            log.info("emulator.mcp_approval", tool=call.name, approved=approved)
            if approved:
                # The service runs the approved call in a response of its own (the SDK's
                # MCP sample sends nothing after the approval but waits for mcp_call).
                self._pending = Answer(calls=(call,))
                await self._request_response(tuple(self.config["modalities"]), automatic=True)
            else:
                self._pending = Answer(reply=(f"The call to {call.name} was not approved.",))

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
        sent_ms = record.audio_format.ms(record.audio_bytes)
        if audio_end_ms <= 0 or audio_end_ms > sent_ms:
            raise p.ProtocolError(
                p.ERR_TRUNCATE_INVALID,
                f"audio_end_ms must be between 1 and the {sent_ms} ms of audio sent for "
                f"item '{item_id}', got {audio_end_ms}.",
                "audio_end_ms",
            )
        record.audio_bytes = record.audio_format.bytes_for(audio_end_ms)
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
        if answer is not None and answer.calls:
            in_ms = bytes_to_ms(len(answer.audio))
            return ResponsePlan(b"", "", modalities, in_ms, answer.text, calls=answer.calls)
        if answer is None:
            transcript, audio, in_ms, in_text = GREETING_TRANSCRIPT, greeting_audio(), 0, ""
        elif answer.reply:
            in_ms, in_text = 0, ""
            transcript = " ".join(answer.reply)
            audio = speech_like_audio(transcript) if "audio" in modalities else b""
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
        if plan.calls:
            await self._start_tool_response(plan)
            return
        response_id = self.ids.new("resp")
        item_id = self.ids.new("item")
        modalities = list(plan.modalities)
        item = p.assistant_item(item_id, "in_progress", None)
        # The response speaks the output format the session has as it starts.
        record = ItemRecord(item, audio_format=formats.output_format(self.config))
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
                # Made at 24 kHz, sent in the output format: chunk_ms is whole ms, so every
                # chunk but the last maps onto whole samples at 8 and 16 kHz.
                chunk = formats.from_pcm24k(
                    active.record.audio_format,
                    audio[index * chunk_bytes : (index + 1) * chunk_bytes],
                )
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
        details = {"type": "cancelled", "reason": reason}
        if isinstance(active, ToolResponse):
            await self._finish_tools(active, "cancelled", details)
        else:
            await self._finish(active, "cancelled", details)

    # --- responses that call tools -------------------------------------------------------
    # The OpenAI Realtime / Voice Live function-calling flow (reference 2026-07-15,
    # "response.function_call_arguments.delta/done"; SDK ServerEventResponseFunctionCall*):
    # response.created; per call response.output_item.added (a function_call item with
    # empty arguments), conversation.item.created, the arguments in deltas, .done (with
    # call_id and name), response.output_item.done; then response.done whose output holds
    # every call. MCP calls (how-to-voice-live-mcp-server; SDK ServerEventResponseMcpCall*)
    # stream response.mcp_call_arguments.*, then response.mcp_call.in_progress/.completed.

    async def _start_tool_response(self, plan: ResponsePlan) -> None:
        response_id = self.ids.new("resp")
        active = ToolResponse(response_id, plan)
        self._active = active
        self.responses += 1
        await self._send(
            {
                "type": "response.created",
                "response": p.response_object(
                    response_id, "in_progress", self.config, list(plan.modalities)
                ),
            }
        )
        if self._held_transcripts:
            held, self._held_transcripts = self._held_transcripts, []
            await self._send_all(held)
        if not self._closed:
            active.task = asyncio.create_task(
                self._play_tools(active), name=f"emulator-{response_id}"
            )

    def _tool_item(
        self, state: ToolItem, arguments: str, *, done: bool, output: str | None
    ) -> JSON:
        call = state.call
        if call.kind == "function_call":
            status = "completed" if done else "in_progress"
            return p.function_call_item(state.item_id, state.call_id, call.name, arguments, status)
        assert call.server_label is not None
        if call.kind == "mcp_approval_request":
            return p.mcp_approval_request_item(
                state.item_id, call.server_label, call.name, call.arguments
            )
        return p.mcp_call_item(
            state.item_id,
            call.server_label,
            call.name,
            arguments,
            approval_request_id=call.approval_request_id,
            output=output,
        )

    async def _play_tools(self, active: ToolResponse) -> None:
        """Add and stream each call of the response, then finish it (the player task).
        Tool responses always complete: ``response_outcome`` shapes spoken ones only."""
        realtime = self.get_options().realtime
        response_id = active.response_id
        for index, call in enumerate(active.plan.calls):
            item_id = self.ids.new("item")
            call_id = self.ids.new("call") if call.kind == "function_call" else ""
            state = ToolItem(call, item_id, call_id, ItemRecord({}))
            arguments = "" if call.kind != "mcp_approval_request" else call.arguments
            state.record.item = self._tool_item(state, arguments, done=False, output=None)
            previous = self._last_item_id()
            self._remember(item_id, state.record)
            active.items.append(state)
            item = state.record.item
            await self._send(
                {
                    "type": "response.output_item.added",
                    "response_id": response_id,
                    "output_index": index,
                    "item": item,
                }
            )
            await self._send(
                {"type": "conversation.item.created", "previous_item_id": previous, "item": item}
            )
            if call.kind != "mcp_approval_request":
                kind = (
                    "response.function_call_arguments.delta"
                    if call.kind == "function_call"
                    else "response.mcp_call_arguments.delta"
                )
                step = ARGUMENTS_CHUNK_CHARS
                for start in range(0, len(call.arguments), step):
                    if realtime:
                        await asyncio.sleep(ARGUMENTS_DELTA_S)
                    delta = call.arguments[start : start + step]
                    state.arguments_sent += len(delta)
                    event: JSON = {
                        "type": kind,
                        "response_id": response_id,
                        "item_id": item_id,
                        "output_index": index,
                        "delta": delta,
                    }
                    if call.kind == "function_call":
                        event["call_id"] = call_id
                    await self._send(event)
            await self._close_tool_item(active, index, state, completed=True)
        async with self._lock:
            await self._finish_tools(active, "completed", None)

    async def _close_tool_item(
        self, active: ToolResponse, index: int, state: ToolItem, *, completed: bool
    ) -> None:
        """The closing events of one call: its arguments done (cut short when the response
        was cancelled: ".done is also emitted when a Response is interrupted"), for MCP the
        call itself, and response.output_item.done."""
        state.done = True
        call = state.call
        arguments = call.arguments if completed else call.arguments[: state.arguments_sent]
        ids = {"response_id": active.response_id, "item_id": state.item_id, "output_index": index}
        output: str | None = None
        if call.kind == "function_call":
            await self._send(
                {
                    "type": "response.function_call_arguments.done",
                    **ids,
                    "call_id": state.call_id,
                    "name": call.name,
                    "arguments": arguments,
                }
            )
        elif call.kind == "mcp_call":
            await self._send(
                {"type": "response.mcp_call_arguments.done", **ids, "arguments": arguments}
            )
            if completed:
                where = {"item_id": state.item_id, "output_index": index}
                await self._send({"type": "response.mcp_call.in_progress", **where})
                output = orjson.dumps(
                    {"result": f"emulated answer of {call.name} on {call.server_label}"}
                ).decode()
                await self._send({"type": "response.mcp_call.completed", **where})
        elif completed:
            self._approvals[state.item_id] = call
        item = self._tool_item(state, arguments, done=True, output=output)
        if call.kind == "function_call" and not completed:
            item["status"] = "incomplete"
        state.record.item = item
        await self._send(
            {
                "type": "response.output_item.done",
                "response_id": active.response_id,
                "output_index": index,
                "item": item,
            }
        )

    async def _finish_tools(self, active: ToolResponse, status: str, details: JSON | None) -> None:
        """Close the calls still open and the response; start the next queued one. The
        outputs of completed MCP calls are what the next response speaks about."""
        if self._active is active:
            self._active = None
        for index, state in enumerate(active.items):
            if not state.done:
                await self._close_tool_item(active, index, state, completed=False)
        items = [state.record.item for state in active.items]
        outputs = [
            f"The tool said: {item['output']}"
            for item in items
            if item["type"] == "mcp_call" and item.get("output") is not None
        ]
        if outputs:
            self._pending = Answer(reply=tuple(outputs))
        plan = active.plan
        written = "".join(item.get("arguments") or "" for item in items)
        await self._send(
            {
                "type": "response.done",
                "response": p.response_object(
                    active.response_id,
                    status,
                    self.config,
                    list(plan.modalities),
                    output=items,
                    status_details=details,
                    usage=p.usage(plan.input_audio_ms, plan.input_text, 0, written),
                ),
            }
        )
        log.debug(
            "emulator.response_done",
            response_id=active.response_id,
            status=status,
            calls=len(items),
        )
        if self._queued and not self._closed:
            await self._start_response(self._queued.popleft())

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
        out_ms = active.record.audio_format.ms(active.audio_bytes_sent)
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


#: The items a client may create (SDK: ConversationRequestItem's sub-classes this emulator
#: implements).
CREATABLE_ITEMS = ("message", "function_call", "function_call_output", "mcp_approval_response")
_TOOL_NAME_AT = re.compile(r"\s*([A-Za-z0-9_-]{1,64})")
_JSON = json.JSONDecoder()


def parse_tool_request(text: str, names: set[str] | frozenset[str]) -> list[tuple[str, str]]:
    """The tool calls a typed message asks for: ``name {json}``, several joined by ``;``.

    Each call is a tool's name, then its arguments as written: a JSON object (kept
    verbatim), or else the text up to the next ``;`` (so a test can send arguments that
    are not JSON). Nothing when the message does not start with one of ``names``; parsing
    stops at the first part that names no tool.
    """
    calls: list[tuple[str, str]] = []
    pos = 0
    while True:
        match = _TOOL_NAME_AT.match(text, pos)
        if match is None or match.group(1) not in names:
            return calls
        end = match.end()
        if end < len(text) and not (text[end].isspace() or text[end] in "{;"):
            return calls  # a longer word that merely starts with a tool's name
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
        try:
            if text[pos : pos + 1] != "{":
                raise ValueError
            _, stop = _JSON.raw_decode(text, pos)
        except ValueError:
            stop = text.find(";", pos)
            stop = len(text) if stop < 0 else stop
        calls.append((match.group(1), text[pos:stop].strip()))
        pos = stop
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if text[pos : pos + 1] != ";":
            return calls
        pos += 1


def _require_string(item: Mapping[str, Any], key: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise p.ProtocolError(
            p.ERR_MISSING_PARAMETER, f"Missing required parameter: 'item.{key}'.", f"item.{key}"
        )
    return value


def _part(plan: ResponsePlan, transcript: str) -> JSON:
    if plan.has_audio:
        return {"type": "audio", "transcript": transcript}
    return {"type": "text", "text": transcript}


def _decode_input_audio(value: object, fmt: AudioFormat) -> bytes:
    """An item's base64 `input_audio` in the input format `fmt`, as PCM16 24 kHz."""
    param = "item.content.audio"
    data = _decode_audio(value, param)
    try:
        return formats.to_internal(fmt, data)
    except ValueError as exc:
        raise p.ProtocolError(p.ERR_INVALID_VALUE, f"Invalid '{param}': {exc}.", param) from None


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
