"""Who may open a voice session and who may use the ops routes: pure rules, no I/O.

Every function takes plain values the handler pulled from the request (a header, a query
parameter, the peer address), never the request itself, so each rule has a table-driven
test with no server. Token comparisons are constant-time.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Final
from urllib.parse import urlsplit

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
DEFAULT_PROTOCOL: Final = "voicebridge"
TOKEN_PROTOCOL_PREFIX: Final = "token."


def is_loopback(remote: str | None) -> bool:
    """True for a loopback IP address (IPv4 or IPv6); False for anything else or nothing."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def token_matches(given: str, expected: str) -> bool:
    """Compare two tokens in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def client_token_ok(query_token: str, offered_protocols_header: str, expected: str) -> bool:
    """The client token may come as ``?token=`` or as an offered subprotocol ``token.<TOKEN>``.

    ``offered_protocols_header`` is the raw ``Sec-WebSocket-Protocol`` value (comma-separated).
    An empty candidate never matches.
    """
    candidates = [query_token]
    candidates.extend(
        p.strip().removeprefix(TOKEN_PROTOCOL_PREFIX) for p in offered_protocols_header.split(",")
    )
    ok = False
    for candidate in candidates:
        # Check all candidates so timing does not reveal which one matched.
        ok |= bool(candidate) and token_matches(candidate, expected)
    return ok


def choose_protocol(offered_header: str) -> tuple[str, ...]:
    """Select ``voicebridge`` if offered (or nothing is); else echo the client's first offer.

    A browser fails the handshake unless one of its offered subprotocols is selected, so a
    client offering only ``token.<TOKEN>`` gets that entry back.
    """
    offered = [p.strip() for p in offered_header.split(",")]
    offered = [p for p in offered if p]
    if not offered or DEFAULT_PROTOCOL in offered:
        return (DEFAULT_PROTOCOL,)
    return (offered[0],)


def origin_ok(origin: str | None, host: str, allowed: tuple[str, ...]) -> bool:
    """May a page from ``origin`` open a session on this server (reached as ``host``)?

    Browsers always send Origin; a native client that sends none is not a browser and is
    not checked here. With ``allowed`` set (``ALLOWED_ORIGINS``) exactly those origins, or
    any for ``*``; otherwise the server's own origin and loopback pages.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if allowed:
        return "*" in allowed or origin in allowed
    parts = urlsplit(origin)
    if parts.hostname in LOOPBACK_HOSTS:
        return True
    return parts.netloc == host


def admin_ok(authorization_header: str, remote: str | None, expected: str) -> bool:
    """Ops routes: ``Authorization: Bearer <ADMIN_TOKEN>``; without a token, loopback only."""
    if not expected:
        return is_loopback(remote)
    scheme, _, token = authorization_header.partition(" ")
    return scheme.lower() == "bearer" and token_matches(token.strip(), expected)
