"""Prometheus counters of call records: tokens and estimated cost as they are reported,
and what became of each record. Registered in the app's registry, so ``/metrics`` shows
them with the rest."""

from __future__ import annotations

from typing import Final

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge

from voicebridge.calls.record import Usage

#: ``voicebridge_call_tokens_total{kind}``: each token counted once, by what it cost.
TOKEN_KINDS: Final = ("text_in", "audio_in", "cached_in", "text_out", "audio_out")
#: ``voicebridge_call_records_total{outcome}``: ``written`` (to the store at once),
#: ``spooled`` (to the spool file), ``replayed`` (from the spool into the store),
#: ``rejected`` (the store refused it: kept in the ``.rejected`` file), ``lost`` (not even
#: the spool could keep it: logged with its call id).
OUTCOMES: Final = ("written", "spooled", "replayed", "rejected", "lost")


@attrs.define
class CallMetrics:
    registry: CollectorRegistry = attrs.field(factory=lambda: CollectorRegistry(auto_describe=True))
    tokens: Counter = attrs.field(init=False)
    cost: Counter = attrs.field(init=False)
    records: Counter = attrs.field(init=False)
    overflows: Counter = attrs.field(init=False)
    store_up: Gauge = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.tokens = Counter(
            "voicebridge_call_tokens", "Voice Live tokens of answers, by kind", ["kind"], registry=r
        )
        self.cost = Counter(
            "voicebridge_call_cost_usd", "Estimated cost of answers at CALL_PRICE_*", registry=r
        )
        self.records = Counter(
            "voicebridge_call_records",
            "Call records by what became of them",
            ["outcome"],
            registry=r,
        )
        self.overflows = Counter(
            "voicebridge_call_queue_overflows",
            "Records sent straight to the spool because the writer queue was full",
            registry=r,
        )
        self.store_up = Gauge(
            "voicebridge_call_store_up", "1 while the call store answers, else 0", registry=r
        )
        for kind in TOKEN_KINDS:
            self.tokens.labels(kind=kind)
        for outcome in OUTCOMES:
            self.records.labels(outcome=outcome)

    def count_usage(self, usage: Usage, cost: float | None) -> None:
        counts = {
            "text_in": max(0, usage.input_text - usage.cached_text),
            "audio_in": max(0, usage.input_audio - usage.cached_audio),
            "cached_in": usage.cached_text + usage.cached_audio,
            "text_out": usage.output_text,
            "audio_out": usage.output_audio,
        }
        for kind, count in counts.items():
            if count:
                self.tokens.labels(kind=kind).inc(count)
        if cost:
            self.cost.inc(cost)

    def count(self, outcome: str, n: int = 1) -> None:
        if n:
            self.records.labels(outcome=outcome).inc(n)
