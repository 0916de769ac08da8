"""Prometheus metrics of one process, in a registry of its own (no module globals)."""

from __future__ import annotations

import attrs
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


def _make_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@attrs.define
class Metrics:
    """The counters ops watch on ``/metrics``."""

    registry: CollectorRegistry = attrs.field(factory=_make_registry)
    active: Gauge = attrs.field(init=False)
    sessions: Counter = attrs.field(init=False)
    audio_in: Counter = attrs.field(init=False)
    audio_out: Counter = attrs.field(init=False)
    latency: Histogram = attrs.field(init=False)
    barge_ins: Counter = attrs.field(init=False)
    errors: Counter = attrs.field(init=False)
    upstream_connect: Histogram = attrs.field(init=False)
    send_overflows: Counter = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        r = self.registry
        self.active = Gauge("voicebridge_active_sessions", "Live voice sessions", registry=r)
        self.sessions = Counter(
            "voicebridge_sessions", "Sessions ended, by how they ended", ["reason"], registry=r
        )
        self.audio_in = Counter(
            "voicebridge_audio_in_seconds", "Client audio relayed upstream", registry=r
        )
        self.audio_out = Counter(
            "voicebridge_audio_out_seconds", "Agent audio relayed to clients", registry=r
        )
        self.latency = Histogram(
            "voicebridge_response_latency_seconds",
            "User speech stopped to first agent audio",
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0),
            registry=r,
        )
        self.barge_ins = Counter("voicebridge_barge_ins", "User interruptions", registry=r)
        self.errors = Counter(
            "voicebridge_errors", "Errors sent to clients, by code", ["code"], registry=r
        )
        self.upstream_connect = Histogram(
            "voicebridge_upstream_connect_seconds",
            "Time to open and configure the Voice Live connection",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0),
            registry=r,
        )
        self.send_overflows = Counter(
            "voicebridge_send_buffer_overflows",
            "Sessions ended because the client did not read its audio",
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
