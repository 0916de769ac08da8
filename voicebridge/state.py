"""What one running app shares between requests, behind a single ``web.AppKey``.

A module of its own so the request handlers (``ws_voice``, ``ops``) and the app factory
(``app``) all import it and never each other: ``app`` → handlers → ``state``.
"""

from __future__ import annotations

import time
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import TYPE_CHECKING

import attrs
from aiohttp import web

from voicebridge.calls import CallLog
from voicebridge.config import Settings
from voicebridge.logs import LimitedLog
from voicebridge.metrics import Metrics
from voicebridge.registry import SessionRegistry
from voicebridge.relay import Session, UpstreamConfig

if TYPE_CHECKING:
    from voicebridge.tools import Toolbox


@attrs.define
class AppState:
    """Everything one running app shares between requests."""

    settings: Settings
    metrics: Metrics
    registry: SessionRegistry
    upstream: UpstreamConfig | None = None
    sessions: dict[str, Session] = attrs.field(factory=dict)
    # The relay each voice socket gets; tests swap in a subclass to reach a failure path.
    session_class: type[Session] = Session
    # Call records (CALL_STORE), or None when off; set by the app's lifecycle.
    calls: CallLog | None = None
    # Tools from TOOLS_FILE, or None; loaded once by the app's lifecycle.
    toolbox: Toolbox | None = None
    # Upstream connects that failed in a row (any success resets it), for /health.
    upstream_failures: int = 0
    draining: bool = False
    started_at: float = attrs.field(factory=time.time)
    # Failures that must not stop a request (a registry unregister) are logged through
    # this, once a minute per event, so a broken registry does not flood the log.
    limited_log: LimitedLog = attrs.field(factory=LimitedLog)
    # The Host names requests may carry (ALLOWED_HOSTS, or its default), worked out once.
    host_names: frozenset[str] = attrs.field(
        default=attrs.Factory(lambda self: self.settings.host_names, takes_self=True)
    )
    # TRUSTED_PROXIES, parsed once.
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = attrs.field(
        default=attrs.Factory(
            lambda self: tuple(ip_network(n) for n in self.settings.trusted_proxies),
            takes_self=True,
        )
    )
    # Sessions each client holds on this instance (MAX_SESSIONS_PER_CLIENT), by
    # voicebridge.access.client_key; a client with none has no entry.
    client_sessions: dict[str, int] = attrs.field(factory=dict)

    @property
    def upstream_degraded(self) -> bool:
        """Voice Live connects failed UPSTREAM_DEGRADED_AFTER times in a row."""
        return self.upstream_failures >= self.settings.upstream_degraded_after

    def accept_calls(self) -> None:
        """Raise 503 (so a proxy tries another instance) when a new call must not start
        here: draining, or the upstream degraded with HEALTH_FAILS_WHEN_DEGRADED."""
        from voicebridge import errors
        from voicebridge.ops import json_error

        if self.draining:
            raise json_error(
                web.HTTPServiceUnavailable, "server is shutting down", errors.ERR_SHUTDOWN
            )
        if self.upstream_degraded and self.settings.health_fails_when_degraded:
            raise json_error(
                web.HTTPServiceUnavailable,
                "this instance cannot reach Voice Live at the moment; try again shortly",
                errors.ERR_UPSTREAM_CONNECT,
            )


STATE = web.AppKey("state", AppState)
