"""Per-call accumulation: what the session tells about a call, kept in memory until it ends.

Every method is synchronous, cheap and never raises into the session: it appends to
lists and adds up numbers. ``ended()`` builds the finished :class:`CallRecord` (ordering
the turns, cutting interrupted answers to what was heard, redacting, costing) and hands
it to the writer's ``submit``, which never blocks either.

Times (``at``) are unix seconds (``time.time()``); omitted, they are now. Turns are
ordered by their time, so pass for ``user_said`` when the caller *started* that
utterance (a transcript arrives after the answer may have begun), and for an answer the
time its first audio was sent (``response_latency`` does) or the caller cut it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, Protocol

import attrs
import structlog

from voicebridge.calls.cost import estimate
from voicebridge.calls.record import CallRecord, Latency, Turn, TurnKind, Usage, utc
from voicebridge.calls.redact import redact, redact_mapping
from voicebridge.calls.settings import Prices, Redaction

log = structlog.get_logger(__name__)

#: Turns one record keeps; past it, later turns are counted in ``dropped_turns``.
MAX_TURNS: Final = 5000
#: Characters one turn's text keeps.
MAX_TEXT_CHARS: Final = 20_000
PREVIEW_CHARS: Final = 160

Submit = Callable[[CallRecord], None]
#: Told of each response's usage as it arrives (the Prometheus token counters).
UsageHook = Callable[[Usage], None]


class Recorder(Protocol):
    """What a session calls; :class:`CallRecorder` or, with records off, a no-op."""

    def user_said(self, text: str, at: float | None = None) -> None: ...
    def user_typed(self, text: str, at: float | None = None) -> None: ...
    def agent_started(self, response_id: str, at: float | None = None) -> None: ...
    def agent_said(self, response_id: str | None, text: str, at: float | None = None) -> None: ...
    def agent_interrupted(
        self, response_id: str, played_ms: float, sent_ms: float, at: float | None = None
    ) -> None: ...
    def response_latency(
        self, latency_ms: float, *, response_id: str | None = None, at: float | None = None
    ) -> None: ...
    def usage(self, response_id: str | None, usage: object) -> None: ...
    def barge_in(self, at: float | None = None) -> None: ...
    def reconnected(
        self, cause: str, outcome: str, at: float | None = None, *, duration_ms: float | None = None
    ) -> None: ...
    def tool_call(
        self, name: str, duration_ms: float, outcome: str, at: float | None = None
    ) -> None: ...
    def set_metadata(self, **values: str) -> None: ...
    def ended(self, reason: str, close_code: int | None, at: float | None = None) -> None: ...


def _clean(text: str) -> str:
    # PostgreSQL text cannot hold NUL; nothing a person says contains one.
    return text.replace("\x00", "").strip()[:MAX_TEXT_CHARS]


@attrs.define
class _Draft:
    """A turn while the call goes on."""

    seq: int
    at: float
    kind: TurnKind
    text: str = ""
    response_id: str | None = None
    heard_share: float | None = None
    latency_ms: float | None = None
    usage: Usage | None = None
    name: str | None = None
    outcome: str | None = None
    duration_ms: float | None = None

    @property
    def kept(self) -> bool:
        """Whether the turn says anything (an answer mentioned only with no words, no
        audio and no barge-in is left out)."""
        return bool(
            self.text
            or self.kind in ("tool", "reconnect")
            or self.heard_share is not None
            or self.latency_ms is not None
        )

    def build(self, mode: Redaction) -> Turn:
        # Redacted whole before it is split, so a number cut by the barge-in is still
        # recognised (masking keeps the words apart, so the split falls where it would).
        text, unheard = redact(self.text, mode), ""
        if self.heard_share is not None:
            words = text.split()
            kept = round(len(words) * max(0.0, min(1.0, self.heard_share)))
            text, unheard = " ".join(words[:kept]), " ".join(words[kept:])
        return Turn(
            seq=self.seq,
            at=utc(self.at),
            kind=self.kind,
            text=text,
            unheard=unheard,
            response_id=self.response_id,
            interrupted=self.heard_share is not None,
            heard_share=round(self.heard_share, 3) if self.heard_share is not None else None,
            latency_ms=self.latency_ms,
            input_tokens=self.usage.input_tokens if self.usage else None,
            output_tokens=self.usage.output_tokens if self.usage else None,
            name=self.name,
            outcome=self.outcome,
            duration_ms=self.duration_ms,
        )


@attrs.define
class CallRecorder:
    """One call's record in the making. Create with :meth:`CallLog.recorder`."""

    call_id: str
    channel: str
    instance: str
    client: str
    submit: Submit | None
    prices: Prices = attrs.Factory(Prices)
    redaction: Redaction = "numbers"
    on_usage: UsageHook | None = None
    started_at: float = attrs.Factory(time.time)
    metadata: dict[str, str] = attrs.Factory(dict)
    _turns: list[_Draft] = attrs.Factory(list)
    _answers: dict[str, _Draft] = attrs.Factory(dict)
    _usage: Usage = attrs.Factory(Usage)
    _usage_seen: set[str] = attrs.Factory(set)
    _latencies: list[float] = attrs.Factory(list)
    _barge_ins: int = 0
    _reconnects: int = 0
    _tool_calls: int = 0
    _dropped: int = 0
    _seq: int = 0
    _done: bool = False

    # -- what happened ------------------------------------------------------------------

    def user_said(self, text: str, at: float | None = None) -> None:
        """A final transcript of the caller's speech; ``at``: when the caller began."""
        self._add("user", text, at)

    def user_typed(self, text: str, at: float | None = None) -> None:
        """A typed message from the caller."""
        self._add("user_text", text, at)

    def agent_started(self, response_id: str, at: float | None = None) -> None:
        """A response's first audio was sent: the answer's turn time. (With a latency,
        ``response_latency`` says the same.)"""
        self._answer(response_id, time.time() if at is None else at)

    def agent_said(self, response_id: str | None, text: str, at: float | None = None) -> None:
        """The agent's final transcript (or text) of one response."""
        turn = self._answer(response_id, at)
        if turn is None:
            return
        text = _clean(text)
        if text and text != turn.text:
            turn.text = f"{turn.text} {text}".strip() if turn.text else text

    def agent_interrupted(
        self, response_id: str, played_ms: float, sent_ms: float, at: float | None = None
    ) -> None:
        """The caller barged in: of ``sent_ms`` of this response's audio, ``played_ms``
        were heard. Before or after the response's transcript arrives."""
        turn = self._answer(response_id, at)
        if turn is not None:
            turn.heard_share = played_ms / sent_ms if sent_ms > 0 else 0.0

    def response_latency(
        self, latency_ms: float, *, response_id: str | None = None, at: float | None = None
    ) -> None:
        """A response's first audio, ``latency_ms`` after the caller stopped speaking.
        With ``response_id`` it is also that answer's turn time (``at``)."""
        if len(self._latencies) < MAX_TURNS:
            self._latencies.append(round(float(latency_ms), 1))
        if response_id is not None:
            turn = self._answer(response_id, at)
            if turn is not None and turn.latency_ms is None:
                turn.latency_ms = round(float(latency_ms), 1)

    def usage(self, response_id: str | None, usage: object) -> None:
        """The ``usage`` of a ``response.done`` (a dict or the SDK's ``TokenUsage``);
        counted once per response id."""
        if self._done or usage is None:
            return
        if response_id is not None:
            if response_id in self._usage_seen:
                return
            self._usage_seen.add(response_id)
        try:
            counted = Usage.from_event(usage)
        except Exception:  # a malformed usage must never reach the session
            log.warning("calls.bad_usage", call_id=self.call_id)
            return
        self._usage = self._usage + counted
        if response_id is not None:
            turn = self._answers.get(response_id)
            if turn is not None:
                turn.usage = counted
        if self.on_usage is not None:
            self.on_usage(counted)

    def barge_in(self, at: float | None = None) -> None:
        """The caller talked over the agent."""
        self._barge_ins += 1

    def reconnected(
        self, cause: str, outcome: str, at: float | None = None, *, duration_ms: float | None = None
    ) -> None:
        """The Voice Live connection was replaced: ``cause`` ``lost`` or ``rotation``,
        ``outcome`` ``restored`` or ``failed``."""
        self._reconnects += 1
        turn = self._add("reconnect", "", at, force=True)
        if turn is not None:
            turn.name, turn.outcome, turn.duration_ms = cause, outcome, duration_ms

    def tool_call(
        self, name: str, duration_ms: float, outcome: str, at: float | None = None
    ) -> None:
        """A tool ran (``at``: when it started)."""
        self._tool_calls += 1
        turn = self._add("tool", "", at, force=True)
        if turn is not None:
            turn.name, turn.outcome, turn.duration_ms = name, outcome, round(duration_ms, 1)

    def set_metadata(self, **values: str) -> None:
        """Add caller or call details (a caller number, a provider's call id...); phone
        numbers in them are masked like the transcripts."""
        self.metadata.update({k: _clean(str(v)) for k, v in values.items()})

    def ended(self, reason: str, close_code: int | None, at: float | None = None) -> None:
        """The call is over: build the record and hand it to the writer. Once; never
        blocks and never raises."""
        if self._done:
            return
        self._done = True
        try:
            record = self.build(reason, close_code, at)
        except Exception:
            log.exception("calls.record_build_failed", call_id=self.call_id)
            return
        if self.submit is not None:
            try:
                self.submit(record)
            except Exception:
                log.exception("calls.submit_failed", call_id=self.call_id)

    # -- the record -------------------------------------------------------------------

    def build(self, reason: str, close_code: int | None, at: float | None = None) -> CallRecord:
        """The finished record (``ended`` calls this)."""
        mode = self.redaction
        ended_at = time.time() if at is None else at
        # Stable: turns with the same time stay in the order they were told.
        drafts = sorted(self._turns, key=lambda d: d.at)
        turns = tuple(d.build(mode) for d in drafts if d.kept)
        turns = tuple(attrs.evolve(t, seq=i) for i, t in enumerate(turns))
        preview = next((t.text for t in turns if t.kind in ("user", "user_text") and t.text), "")
        return CallRecord(
            call_id=self.call_id,
            channel=self.channel,
            instance=self.instance,
            client=redact(self.client, mode),
            started_at=utc(self.started_at),
            ended_at=utc(max(ended_at, self.started_at)),
            end_reason=reason,
            close_code=close_code,
            metadata=redact_mapping(self.metadata, mode),
            turns=turns,
            barge_ins=self._barge_ins,
            reconnects=self._reconnects,
            tool_calls=self._tool_calls,
            latency=Latency.of(self._latencies),
            usage=self._usage,
            cost_usd=estimate(self._usage, self.prices),
            dropped_turns=self._dropped,
            redaction=mode,
            preview=preview[:PREVIEW_CHARS],
        )

    def _add(
        self, kind: TurnKind, text: str, at: float | None, force: bool = False
    ) -> _Draft | None:
        if self._done:
            return None
        text = _clean(text)
        if not text and not force:
            return None
        if len(self._turns) >= MAX_TURNS:
            self._dropped += 1
            return None
        turn = _Draft(self._seq, time.time() if at is None else at, kind, text)
        self._seq += 1
        self._turns.append(turn)
        return turn

    def _answer(self, response_id: str | None, at: float | None) -> _Draft | None:
        """The agent turn of ``response_id`` (created at its first mention); its time is
        the earliest time told about it."""
        if self._done:
            return None
        turn = self._answers.get(response_id) if response_id is not None else None
        if turn is None:
            turn = self._add("agent", "", at, force=True)
            if turn is None:
                return None
            turn.response_id = response_id
            if response_id is not None:
                self._answers[response_id] = turn
        elif at is not None and at < turn.at:
            turn.at = at
        return turn


@attrs.define
class NullRecorder:
    """The recorder when call records are off: every method does nothing."""

    def user_said(self, text: str, at: float | None = None) -> None:
        pass

    def user_typed(self, text: str, at: float | None = None) -> None:
        pass

    def agent_started(self, response_id: str, at: float | None = None) -> None:
        pass

    def agent_said(self, response_id: str | None, text: str, at: float | None = None) -> None:
        pass

    def agent_interrupted(
        self, response_id: str, played_ms: float, sent_ms: float, at: float | None = None
    ) -> None:
        pass

    def response_latency(
        self, latency_ms: float, *, response_id: str | None = None, at: float | None = None
    ) -> None:
        pass

    def usage(self, response_id: str | None, usage: object) -> None:
        pass

    def barge_in(self, at: float | None = None) -> None:
        pass

    def reconnected(
        self, cause: str, outcome: str, at: float | None = None, *, duration_ms: float | None = None
    ) -> None:
        pass

    def tool_call(
        self, name: str, duration_ms: float, outcome: str, at: float | None = None
    ) -> None:
        pass

    def set_metadata(self, **values: str) -> None:
        pass

    def ended(self, reason: str, close_code: int | None, at: float | None = None) -> None:
        pass
