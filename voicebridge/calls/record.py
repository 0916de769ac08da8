"""What a call record holds: the call, its turns in order, its token usage. Plain values,
no I/O; one JSON shape for the spool file and the admin routes (``as_dict``/``from_dict``).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, cast

import attrs

TurnKind = Literal["user", "user_text", "agent", "tool", "reconnect"]
TURN_KINDS: Final = ("user", "user_text", "agent", "tool", "reconnect")
UTC: Final = dt.UTC
#: Version of the record's JSON shape (spool lines carry it).
RECORD_VERSION: Final = 1


def utc(ts: float) -> dt.datetime:
    """A unix time as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(ts, UTC)


def iso(when: dt.datetime) -> str:
    """``2025-01-31T12:00:00.123Z``: ISO 8601, UTC, milliseconds."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(text: str) -> dt.datetime:
    """An ISO 8601 time or date as an aware datetime (no zone means UTC); ValueError."""
    value = dt.datetime.fromisoformat(text.strip())
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


def _get(source: object, key: str) -> object:
    # Voice Live's usage arrives as a dict (parsed JSON) or as an SDK model, which is a
    # mapping too; anything else counts as absent.
    if isinstance(source, Mapping):
        return source.get(key)
    return getattr(source, key, None)


@attrs.frozen
class Usage:
    """Tokens of one or more responses, as ``response.done`` reports them."""

    responses: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_text: int = 0
    input_audio: int = 0
    input_image: int = 0
    cached: int = 0
    cached_text: int = 0
    cached_audio: int = 0
    output_text: int = 0
    output_audio: int = 0
    reasoning: int = 0

    @classmethod
    def from_event(cls, usage: object) -> Usage:
        """One response's ``usage`` object (``TokenUsage`` in the SDK). Missing fields
        count 0. Cached tokens without a text/audio split are split in proportion to the
        input's own text and audio tokens."""
        inp = _get(usage, "input_token_details")
        out = _get(usage, "output_token_details")
        cached_details = _get(inp, "cached_tokens_details")
        input_text, input_audio = _int(_get(inp, "text_tokens")), _int(_get(inp, "audio_tokens"))
        cached = _int(_get(inp, "cached_tokens"))
        cached_text = _int(_get(cached_details, "text_tokens"))
        cached_audio = _int(_get(cached_details, "audio_tokens"))
        if cached and not (cached_text or cached_audio):
            both = input_text + input_audio
            cached_text = round(cached * input_text / both) if both else cached
            cached_audio = cached - cached_text
        input_tokens = _int(_get(usage, "input_tokens"))
        output_tokens = _int(_get(usage, "output_tokens"))
        total = _int(_get(usage, "total_tokens")) or input_tokens + output_tokens
        return cls(
            responses=1,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            total_tokens=total,
            input_text=input_text,
            input_audio=input_audio,
            input_image=_int(_get(inp, "image_tokens")),
            cached=cached,
            cached_text=min(cached_text, input_text) if input_text else cached_text,
            cached_audio=min(cached_audio, input_audio) if input_audio else cached_audio,
            output_text=_int(_get(out, "text_tokens")),
            output_audio=_int(_get(out, "audio_tokens")),
            reasoning=_int(_get(out, "reasoning_tokens")),
        )

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            *(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )

    def as_dict(self) -> dict[str, int]:
        return cast(dict[str, int], attrs.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Usage:
        return cls(**{f.name: _int(data.get(f.name)) for f in attrs.fields(cls)})


@attrs.frozen
class Turn:
    """One step of a call, in order: something the caller said or typed, an answer, a
    tool call, a reconnect of the Voice Live connection."""

    seq: int
    at: dt.datetime
    kind: TurnKind
    #: What was said or typed; for an agent turn, the words the caller heard.
    text: str = ""
    #: An agent turn cut short by a barge-in: the words the caller did not hear.
    unheard: str = ""
    response_id: str | None = None
    interrupted: bool = False
    #: An interrupted agent turn: the share of its audio that was played.
    heard_share: float | None = None
    #: An agent turn: from the end of the caller's speech to the first audio.
    latency_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    #: A tool's name, or a reconnect's cause (``lost``, ``rotation``).
    name: str | None = None
    #: A tool's outcome (``ok``, ``error``...), or a reconnect's (``restored``, ``failed``).
    outcome: str | None = None
    duration_ms: float | None = None

    def as_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["at"] = iso(self.at)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Turn:
        values = {f.name: data.get(f.name, f.default) for f in attrs.fields(cls)}
        values["at"] = parse_iso(str(data["at"]))
        values["text"] = str(values["text"] or "")
        values["unheard"] = str(values["unheard"] or "")
        values["interrupted"] = bool(values["interrupted"])
        return cls(**values)


def _percentile(values: Sequence[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)], 1)


@attrs.frozen
class Latency:
    """Response latencies of a call (ms): the caller stops speaking, the agent's first
    audio arrives."""

    count: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    max_ms: float | None = None

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency:
        return cls(
            count=len(values),
            p50_ms=_percentile(values, 0.5),
            p95_ms=_percentile(values, 0.95),
            max_ms=round(max(values), 1) if values else None,
        )


@attrs.frozen
class CallRecord:
    """One finished call."""

    call_id: str
    channel: str
    instance: str
    client: str
    started_at: dt.datetime
    ended_at: dt.datetime
    end_reason: str
    close_code: int | None = None
    metadata: Mapping[str, str] = attrs.field(factory=dict)
    turns: tuple[Turn, ...] = ()
    barge_ins: int = 0
    reconnects: int = 0
    tool_calls: int = 0
    latency: Latency = attrs.Factory(Latency)
    usage: Usage = attrs.Factory(Usage)
    #: Estimated from ``usage`` and the configured prices; None when no price is set.
    cost_usd: float | None = None
    #: Turns left out because the call had more than the recorder keeps.
    dropped_turns: int = 0
    #: The redaction applied (``off``, ``numbers``, ``all``).
    redaction: str = "off"
    #: The first thing the caller said or typed, shortened (for lists).
    preview: str = ""
    #: For a list: how many turns there are (``turns`` itself is then empty).
    turn_count: int | None = attrs.field(default=None, eq=False)

    @property
    def duration_s(self) -> float:
        return round(max(0.0, (self.ended_at - self.started_at).total_seconds()), 3)

    @property
    def n_turns(self) -> int:
        return self.turn_count if self.turn_count is not None else len(self.turns)

    def summary(self) -> dict[str, Any]:
        """What ``GET /calls`` lists for a call."""
        return {
            "call_id": self.call_id,
            "channel": self.channel,
            "instance": self.instance,
            "client": self.client,
            "started_at": iso(self.started_at),
            "ended_at": iso(self.ended_at),
            "duration_s": self.duration_s,
            "end_reason": self.end_reason,
            "close_code": self.close_code,
            "turn_count": self.n_turns,
            "barge_ins": self.barge_ins,
            "reconnects": self.reconnects,
            "tool_calls": self.tool_calls,
            "latency": attrs.asdict(self.latency),
            "usage": self.usage.as_dict(),
            "cost_usd": self.cost_usd,
            "preview": self.preview,
        }

    def as_dict(self) -> dict[str, Any]:
        """The whole record (``GET /calls/{id}``, and one spool line)."""
        data = self.summary()
        data.update(
            version=RECORD_VERSION,
            metadata=dict(self.metadata),
            dropped_turns=self.dropped_turns,
            redaction=self.redaction,
            turns=[turn.as_dict() for turn in self.turns],
        )
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CallRecord:
        """The inverse of ``as_dict``; KeyError/ValueError/TypeError on a bad shape."""
        latency = data.get("latency") or {}
        close_code = data.get("close_code")
        cost = data.get("cost_usd")
        return cls(
            call_id=str(data["call_id"]),
            channel=str(data.get("channel", "")),
            instance=str(data.get("instance", "")),
            client=str(data.get("client", "")),
            started_at=parse_iso(str(data["started_at"])),
            ended_at=parse_iso(str(data["ended_at"])),
            end_reason=str(data.get("end_reason", "")),
            close_code=int(close_code) if close_code is not None else None,
            metadata={str(k): str(v) for k, v in (data.get("metadata") or {}).items()},
            turns=tuple(Turn.from_dict(t) for t in data.get("turns") or ()),
            barge_ins=_int(data.get("barge_ins")),
            reconnects=_int(data.get("reconnects")),
            tool_calls=_int(data.get("tool_calls")),
            latency=Latency(
                count=_int(latency.get("count")),
                p50_ms=latency.get("p50_ms"),
                p95_ms=latency.get("p95_ms"),
                max_ms=latency.get("max_ms"),
            ),
            usage=Usage.from_dict(data.get("usage") or {}),
            cost_usd=float(cost) if cost is not None else None,
            dropped_turns=_int(data.get("dropped_turns")),
            redaction=str(data.get("redaction", "off")),
            preview=str(data.get("preview", "")),
        )
