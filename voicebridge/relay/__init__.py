"""The relay: one client WebSocket to one Voice Live connection, in small parts.

| module | concern |
|---|---|
| :mod:`.session` | wires the parts for one client in one TaskGroup; why a session ends |
| :mod:`.channel` | the client socket: output queue, byte budget, writer, stall clock, close |
| :mod:`.turns` | pure: responses, what was written and played of each, the barge-in plan |
| :mod:`.continuity` | reconnect after an unexpected end, rotation before expiry |
| :mod:`.link` | the link to Voice Live across connections; holds input while switching |
| :mod:`.conversation` | pure: the conversation as text, replayed to a new connection |
| :mod:`.upstream` | the Voice Live connection: open within a bound, send, receive, close |
| :mod:`.events` | pure: upstream frames parsed into typed events |
| :mod:`.session_config` | the ``session.update`` payload built from the settings |
| :mod:`.limits` | token buckets for the rate limits |
| :mod:`.stats` | per-session counters shown in ``/sessions`` and the end-of-session log |
"""

from voicebridge.relay.session import Session
from voicebridge.relay.upstream import UpstreamConfig

__all__ = ["Session", "UpstreamConfig"]
