"""Who may open a voice session and who may use the ops routes: pure rules, no I/O.

Every function takes plain values the handler pulled from the request (a header, a query
parameter, the peer address), never the request itself, so each rule has a table-driven
test with no server. Token comparisons are constant-time, and work on the raw bytes a
client sent: a header holding bytes that are not UTF-8 reaches Python as a string with
surrogate escapes, which must compare unequal rather than raise.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Collection, Sequence
from typing import Final
from urllib.parse import urlsplit

from voicebridge.config import LOOPBACK_NAMES, normalise_host

LOOPBACK_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
DEFAULT_PROTOCOL: Final = "voicebridge"
TOKEN_PROTOCOL_PREFIX: Final = "token."
ANY: Final = "*"


def is_loopback(remote: str | None) -> bool:
    """True for a loopback IP address (IPv4 or IPv6); False for anything else or nothing."""
    if not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def _raw(value: str) -> bytes:
    # surrogatepass encodes every string, including the surrogate escapes aiohttp decodes
    # non-UTF-8 header bytes to; a plain .encode() raises on them (a 500 instead of a 401).
    return value.encode("utf-8", "surrogatepass")


def token_matches(given: str, expected: str) -> bool:
    """Compare two tokens in constant time; never raises, whatever bytes ``given`` holds."""
    return hmac.compare_digest(_raw(given), _raw(expected))


def _candidates(query_token: str, offered_protocols_header: str) -> list[str]:
    candidates = [query_token]
    candidates.extend(
        p.strip().removeprefix(TOKEN_PROTOCOL_PREFIX) for p in offered_protocols_header.split(",")
    )
    return candidates


def find_client_token(
    query_token: str, offered_protocols_header: str, tokens: Sequence[str]
) -> str | None:
    """The accepted token the client presents, as ``?token=`` or as an offered subprotocol
    ``token.<TOKEN>``; None when it presents none of ``tokens``.

    ``offered_protocols_header`` is the raw ``Sec-WebSocket-Protocol`` value
    (comma-separated). An empty candidate never matches.
    """
    found: str | None = None
    for candidate in _candidates(query_token, offered_protocols_header):
        for token in tokens:
            # Check every pair so timing does not reveal which one matched.
            if token_matches(candidate, token) and candidate and found is None:
                found = token
    return found


def client_token_ok(query_token: str, offered_protocols_header: str, expected: str) -> bool:
    """Does the client present ``expected`` (see :func:`find_client_token`)?"""
    return find_client_token(query_token, offered_protocols_header, (expected,)) is not None


def choose_protocol(offered_header: str, tokens: Sequence[str] = ()) -> tuple[str, ...]:
    """The subprotocol to select: ``voicebridge`` if offered (or nothing is), else an
    offered ``token.<TOKEN>`` holding one of ``tokens``, else none.

    A browser fails the handshake unless one of its offered subprotocols is selected, so a
    client offering only ``token.<TOKEN>`` gets that entry back; anything else a client
    offers is never echoed.
    """
    offered = [p.strip() for p in offered_header.split(",")]
    offered = [p for p in offered if p]
    if not offered or DEFAULT_PROTOCOL in offered:
        return (DEFAULT_PROTOCOL,)
    for protocol in offered:
        if protocol.startswith(TOKEN_PROTOCOL_PREFIX):
            token = find_client_token("", protocol, tokens)
            if token is not None:
                return (TOKEN_PROTOCOL_PREFIX + token,)
    return ()


def host_ok(host_header: str | None, allowed: Collection[str]) -> bool:
    """Does the request's ``Host`` name this server (``ALLOWED_HOSTS``, ``*`` for any)?

    This is what stops DNS rebinding: a page on ``rebind.attacker.example`` whose name
    now resolves to this server sends that name as Host (and as Origin), never ours.
    A request without a Host matches nothing.
    """
    if ANY in allowed:
        return True
    if not host_header:
        return False
    name = normalise_host(host_header)
    return bool(name) and name in allowed


def is_loopback_host(host_header: str | None) -> bool:
    """Does the ``Host`` header name this machine by a loopback name?"""
    return bool(host_header) and normalise_host(host_header or "") in LOOPBACK_NAMES


def origin_ok(origin: str | None, host: str, allowed: tuple[str, ...]) -> bool:
    """May a page from ``origin`` open a session on this server (reached as ``host``)?

    Browsers always send Origin; a native client that sends none is not a browser and is
    not checked here. The server's own origin (the one ``host`` names, which already
    passed ``ALLOWED_HOSTS``) is always allowed, and so are the ``ALLOWED_ORIGINS`` (any
    for ``*``); while ``ALLOWED_ORIGINS`` is empty, pages on loopback names are too.
    """
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if ANY in allowed or origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if parts.scheme in {"http", "https"} and parts.netloc.lower() == host.lower():
        return True
    return not allowed and hostname in LOOPBACK_HOSTS


def admin_ok(
    authorization_header: str, remote: str | None, host_header: str | None, expected: str
) -> bool:
    """Ops routes: ``Authorization: Bearer <ADMIN_TOKEN>``; without a token, a loopback
    peer that also names a loopback Host (a proxy on this machine forwarding a public
    name, or a rebound page, is not this machine's operator)."""
    if not expected:
        return is_loopback(remote) and is_loopback_host(host_header)
    scheme, _, token = authorization_header.partition(" ")
    return scheme.lower() == "bearer" and token_matches(token.strip(), expected)


def client_key(token: str | None, remote: str | None, tokens: Sequence[str]) -> str:
    """Whom ``MAX_SESSIONS_PER_CLIENT`` counts a session against: the token when each
    client has its own (``CLIENT_TOKEN`` lists several), else the peer address (one
    shared token names no client: counting by it would cap everyone together)."""
    if token is not None and len(tokens) > 1:
        return f"token#{tokens.index(token) + 1}"
    return f"address {remote or 'unknown'}"


def loggable(value: str | None, limit: int = 120) -> str | None:
    """A client-supplied header value made safe for one log line: at most ``limit``
    characters, non-ASCII, control characters and surrogate escapes backslash-escaped."""
    if value is None:
        return None
    return ascii(value[:limit])[1:-1]


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def forwarded_client(
    remote: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]
) -> str | None:
    """The client a trusted proxy says it forwards: None when the peer is no trusted proxy
    or the headers name no usable address (the peer's own address stands then).

    ``forwarded_for`` holds every ``X-Forwarded-For`` header value. The list is read from
    the right, as each proxy appends the address it received from: trusted proxies are
    skipped, and the first address that is not one is the client. Anything to its left
    was written by the client itself and is not believed.
    """
    if not trusted or not _in(remote, trusted):
        return None
    hops = [hop.strip() for value in forwarded_for for hop in value.split(",")]
    for hop in reversed(hops):
        try:
            address = ipaddress.ip_address(hop)
        except ValueError:
            return None  # a malformed hop: nothing further left can be trusted
        if not any(address in network for network in trusted):
            return str(address)
    return None


def _in(remote: str | None, trusted: Sequence[Network]) -> bool:
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    return any(address in network for network in trusted)
