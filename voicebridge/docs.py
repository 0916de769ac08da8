"""The API reference served at ``/docs``: HTTP routes and the WebSocket protocol."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from aiohttp import web

from voicebridge import __version__
from voicebridge.errors import CODES

ROUTES = [
    (
        "GET",
        "/health",
        '200 {"status": "healthy", ...}; 503 {"status": "draining"} during shutdown',
    ),
    ("GET", "/", "redirect to /static/index.html"),
    ("GET", "/static/...", "the browser test client"),
    (
        "GET",
        "/config",
        "what the browser client needs: backend, client_token_required, sample_rate",
    ),
    ("WS", "/ws/voice", "one voice session (protocol below); ?token= when CLIENT_TOKEN is set"),
    ("GET", "/sessions", "live sessions of every instance with per-session metrics (admin)"),
    ("GET", "/sessions/{id}", "one session (admin)"),
    ("DELETE", "/sessions/{id}", "end that session, wherever it runs (admin); 202, or 404"),
    ("GET", "/metrics", "Prometheus text format"),
    ("GET", "/docs", "this page"),
    ("GET", "/calls", "call records, newest first; filters from, to, channel, reason, q (admin)"),
    ("GET", "/calls/{id}", "one call record with its turns (admin)"),
    ("GET", "/calls/{id}/transcript", "one call as plain text (admin)"),
]

CLIENT_MESSAGES = [
    ("binary", "raw PCM16 LE, 24 kHz, mono; an odd byte is kept for the next frame"),
    ("text", '{"type": "audio", "audio": "<base64 PCM16>"}'),
    ("text", '{"type": "text", "text": "..."} : a typed user message; the agent answers it'),
    ("text", '{"type": "ping"} : answered by pong'),
    (
        "text",
        '{"type": "playback", "response_id": "...", "played_ms": N} : optional; how much of '
        "that response's audio (id from its audio_start) the client has played, used to "
        "truncate the agent's memory on barge-in; without response_id: the response written last",
    ),
]

SERVER_MESSAGES = [
    ("binary", "raw PCM16 LE, 24 kHz, mono: the agent's voice"),
    (
        "text",
        '{"type": "session_started", "session_id": "...", "backend": "azure|emulator", '
        '"voice": "...", "sample_rate": 24000}',
    ),
    ("text", '{"type": "user_transcript", "text": "..."}'),
    (
        "text",
        '{"type": "agent_transcript_delta", "text": "...", "response_id": "..."} : live '
        "captions as the agent speaks",
    ),
    ("text", '{"type": "agent_transcript", "text": "..."}'),
    ("text", '{"type": "agent_text", "text": "..."}'),
    ("text", '{"type": "status", "status": "listening|processing|agent_speaking|ready"}'),
    (
        "text",
        '{"type": "status", "status": "ending", "code": "session_time_limit", '
        '"seconds_left": 60} : warning before the time limit',
    ),
    (
        "text",
        '{"type": "status", "status": "shutting_down", "grace_s": 10} : the server is '
        "restarting; the current response may finish, then close 1001",
    ),
    (
        "text",
        '{"type": "status", "status": "reconnecting", "code": "upstream_closed|'
        'response_interrupted"} : the Voice Live connection ended; the call carries on over '
        "a new one and ready follows",
    ),
    (
        "text",
        '{"type": "status", "status": "ended", "code": "...", "message": "..."} : '
        "ended by an operator, a time limit, idleness or shutdown; then the socket closes",
    ),
    (
        "text",
        '{"type": "audio_start", "response_id": "..."} : just before a response\'s first '
        "audio frame; the binary frames after it belong to that response",
    ),
    ("text", '{"type": "clear_audio"} : barge-in: stop playback now and drop queued agent audio'),
    (
        "text",
        '{"type": "tool", "name": "...", "call_id": "...", "status": "started|done|failed", '
        '"duration_ms": N} : the agent is using one of the operator\'s tools',
    ),
    ("text", '{"type": "error", "message": "...", "code": "..."}'),
    ("text", '{"type": "pong"}'),
]

CLOSE_CODES = [
    ("1000", "normal: client, operator, time limit or idle timeout"),
    ("1001", "server shutting down"),
    ("1008", "policy: audio rate limit, token or origin"),
    ("1009", "frame larger than MAX_FRAME_BYTES"),
    ("1011", "upstream (Voice Live) or internal failure"),
    ("1013", "try again later: at capacity (MAX_SESSIONS) or a network too slow for the audio"),
]

ERROR_CODES = [
    (
        code,
        "goes on" if info.close is None else str(info.close),
        "yes" if info.retry else "no",
        info.summary,
    )
    for code, info in CODES.items()
] + [("(service codes)", "goes on", "no", "errors reported by Voice Live, with their own code")]


def _table(headers: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td><code>{escape(c)}</code></td>" if i < len(r) - 1 else f"<td>{escape(c)}</td>"
            for i, c in enumerate(r)
        )
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_docs() -> str:
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>voicebridge API {__version__}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#1d2430}}
table{{border-collapse:collapse;width:100%;margin:1rem 0}}td,th{{border-bottom:1px solid #dde3ea;
padding:.4rem .6rem;text-align:left;vertical-align:top}}code{{font-size:.9em}}h1{{margin-bottom:0}}
</style></head><body>
<h1>voicebridge API</h1><p>Version {__version__}. Admin routes need
<code>Authorization: Bearer $ADMIN_TOKEN</code>; without ADMIN_TOKEN they answer loopback only.</p>
<h2>HTTP routes</h2>{_table(("method", "path", "answer"), ROUTES)}
<h2>WebSocket <code>/ws/voice</code>: client to server</h2>{_table(("frame", "content"), CLIENT_MESSAGES)}
<h2>Server to client</h2>{_table(("frame", "content"), SERVER_MESSAGES)}
<h2>Close codes</h2>{_table(("code", "meaning"), CLOSE_CODES)}
<h2>Error codes</h2><p>What each code does to the session and whether a client should
reconnect on its own (the browser client follows this table).</p>
{_table(("code", "closes with", "reconnect", "meaning"), ERROR_CODES)}
</body></html>"""


async def docs_page(request: web.Request) -> web.Response:
    """The API reference page."""
    return web.Response(text=render_docs(), content_type="text/html")


def add_routes(app: web.Application) -> None:
    """The API reference routes."""
    app.router.add_get("/docs", docs_page)
