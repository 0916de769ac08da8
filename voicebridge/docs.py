"""The API reference served at ``/docs``: HTTP routes and the WebSocket protocol."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from voicebridge import __version__

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
]

CLIENT_MESSAGES = [
    ("binary", "raw PCM16 LE, 24 kHz, mono; an odd byte is kept for the next frame"),
    ("text", '{"type": "audio", "audio": "<base64 PCM16>"}'),
    ("text", '{"type": "text", "text": "..."} : a typed user message; the agent answers it'),
    ("text", '{"type": "ping"} : answered by pong'),
    (
        "text",
        '{"type": "playback", "played_ms": N} : optional; agent audio of the current '
        "response the client has played, used to truncate the agent's memory on barge-in",
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
        '{"type": "status", "status": "ended", "code": "...", "message": "..."} : '
        "ended by an operator, a time limit, idleness or shutdown; then the socket closes",
    ),
    ("text", '{"type": "clear_audio"} : barge-in: stop playback now and drop queued agent audio'),
    ("text", '{"type": "error", "message": "...", "code": "..."}'),
    ("text", '{"type": "pong"}'),
]

CLOSE_CODES = [
    ("1000", "normal: client, operator, time limit or idle timeout"),
    ("1001", "server shutting down"),
    ("1008", "policy: rate limit exceeded or a client that does not read its audio"),
    ("1009", "frame larger than MAX_FRAME_BYTES"),
    ("1011", "upstream (Voice Live) failure"),
    ("1013", "at capacity (MAX_SESSIONS); retry later"),
]

ERROR_CODES = [
    ("bad_json", "a text frame that is not JSON"),
    ("bad_message", "JSON that is not an object, has no type, or has a bad field"),
    ("unknown_type", "a type other than audio, text, ping, playback"),
    ("bad_audio", "audio that is missing or not valid base64"),
    ("odd_frame", "warning, once per session: an odd-length audio frame; its last byte is kept"),
    ("frame_too_large", "then close 1009"),
    (
        "rate_limited",
        "audio faster than MAX_AUDIO_RATE x real time (then close 1008), or "
        "typed messages past CLIENT_TEXT_PER_MIN (dropped; the session goes on)",
    ),
    (
        "slow_consumer",
        "the client read none of its audio for CLIENT_SEND_TIMEOUT_S; then close 1008",
    ),
    ("upstream_connect_failed", "Voice Live refused or did not answer; then close 1011"),
    ("upstream_closed", "Voice Live dropped the connection; then close 1011"),
    ("at_capacity", "then close 1013"),
    ("(service codes)", "errors reported by Voice Live are passed on with their own code"),
]


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
<h2>Error codes</h2>{_table(("code", "meaning"), ERROR_CODES)}
</body></html>"""
