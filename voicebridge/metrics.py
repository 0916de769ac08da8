"""Prometheus metrics of one process, in a registry of its own (no module globals)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import attrs
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from voicebridge.errors import CODES

__all__ = ["CONTENT_TYPE_LATEST", "ERROR_LABELS", "OTHER_ERROR", "Metrics", "error_label"]

# Error codes Voice Live reports (the emulator's ERR_* constants in
# voicebridge/emulator/protocol.py; a test keeps them included). The relay passes the
# service's own codes on to clients, and a label value per distinct string would let the
# service, or anything upstream, grow the metric without bound.
VOICE_LIVE_ERROR_CODES: Final = frozenset(
    {
        "invalid_json",
        "invalid_event",
        "missing_required_parameter",
        "invalid_value",
        "unknown_parameter",
        "emulator_unsupported",
        "input_audio_buffer_commit_empty",
        "input_audio_buffer_full",
        "response_cancel_not_active",
        "conversation_already_has_active_response",
        "item_not_found",
        "item_truncate_invalid_audio_end_ms",
        "emulator_injected_fault",
        "session_expired",
        "invalid_tool_call_id",
    }
)
OTHER_ERROR: Final = "other"
# Every value the ``code`` label of ``voicebridge_errors_total`` can take.
ERROR_LABELS: Final = frozenset(CODES) | VOICE_LIVE_ERROR_CODES | {OTHER_ERROR}


def error_label(code: str) -> str:
    """``code`` itself when it is a known code, else ``"other"``."""
    return code if code in ERROR_LABELS else OTHER_ERROR


def _make_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


@attrs.define
class Metrics:
    """The counters ops watch on ``/metrics``."""

    registry: CollectorRegistry = attrs.field(factory=_make_registry)
    active: Gauge = attrs.field(init=False)
    active_by_channel: Gauge = attrs.field(init=False)
    sessions: Counter = attrs.field(init=False)
    audio_in: Counter = attrs.field(init=False)
    audio_out: Counter = attrs.field(init=False)
    latency: Histogram = attrs.field(init=False)
    barge_ins: Counter = attrs.field(init=False)
    errors: Counter = attrs.field(init=False)
    upstream_connect: Histogram = attrs.field(init=False)
    send_overflows: Counter = attrs.field(init=False)
    upstream_reconnects: Counter = attrs.field(init=False)
    tool_calls: Counter = attrs.field(init=False)
    tool_duration: Histogram = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        # No `*_created` series: they double every counter and nobody graphs them. The
        # switch is process-wide in prometheus-client; every Metrics wants it off.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        r = self.registry
        self.active = Gauge("voicebridge_active_sessions", "Live voice sessions", registry=r)
        self.active_by_channel = Gauge(
            "voicebridge_channel_sessions",
            "Live voice sessions by channel (browser, twilio, acs)",
            ["channel"],
            registry=r,
        )
        self.sessions = Counter(
            "voicebridge_sessions",
            "Sessions ended, by how they ended and their channel",
            ["reason", "channel"],
            registry=r,
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
            "voicebridge_errors",
            'Errors sent to clients, by code (unknown codes as "other")',
            ["code"],
            registry=r,
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
        self.upstream_reconnects = Counter(
            "voicebridge_upstream_reconnects",
            "Voice Live connections replaced mid-session, by cause (lost, rotation) and "
            "outcome (restored, failed)",
            ["cause", "outcome"],
            registry=r,
        )
        self.tool_calls = Counter(
            "voicebridge_tool_calls",
            "Function calls the agent made, by tool (unknown names as 'unknown') and outcome",
            ["tool", "outcome"],
            registry=r,
        )
        self.tool_duration = Histogram(
            "voicebridge_tool_duration_seconds",
            "Time a tool call took, waiting for a free slot included",
            ["tool"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
            registry=r,
        )

    def count_error(self, code: str) -> None:
        """Count one error sent to a client; unknown codes are counted as ``"other"``."""
        self.errors.labels(code=error_label(code)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


CHANNELS: Final = ("browser", "twilio", "acs")


def set_active(metrics: Metrics, channels: Iterable[str]) -> None:
    """The live-session gauges, from the channel of every live session."""
    counts = dict.fromkeys(CHANNELS, 0)
    total = 0
    for channel in channels:
        counts[channel] = counts.get(channel, 0) + 1
        total += 1
    metrics.active.set(total)
    for channel, count in counts.items():
        metrics.active_by_channel.labels(channel=channel).set(count)
