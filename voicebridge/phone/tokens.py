"""Per-call stream tokens: what lets a phone provider's WebSocket in, and nothing else.

The route that answers a call (``POST /twilio/voice``, or the ACS answer) mints a token
bound to the channel and the call (Twilio's ``CallSid``), valid for a short while; the
stream presents it (Twilio: a custom parameter of ``<Stream>``; ACS: ``?token=`` in the
transport URL) and is refused without it. Tokens are HMAC-SHA256 signed with
``PHONE_TOKEN_SECRET``, so any instance behind the load balancer accepts a token another
minted. The format is ``v1.<payload>.<mac>``, both parts base64url: the payload is
``channel|subject|expiry`` (unix seconds).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time

import attrs

_VERSION = "v1"
#: Longer tokens are refused before any work is done on them.
MAX_TOKEN_CHARS = 512
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class BadToken(ValueError):
    """The token is malformed, forged, for another channel or call, or expired."""


@attrs.frozen
class StreamGrant:
    channel: str
    subject: str
    expires_at: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())


def mint(
    secret: bytes, *, channel: str, subject: str, ttl_s: float, now: float | None = None
) -> str:
    """A token for one stream of ``channel`` for call ``subject`` (no ``|`` in either)."""
    if "|" in channel or "|" in subject:
        raise ValueError("channel and subject must not contain '|'")
    expires = int((time.time() if now is None else now) + ttl_s)
    payload = _b64(f"{channel}|{subject}|{expires}".encode())
    return f"{_VERSION}.{payload}.{_mac(secret, payload)}"


def verify(secret: bytes, token: str, *, channel: str, now: float | None = None) -> StreamGrant:
    """The grant a valid token carries; :class:`BadToken` saying why it is not valid."""
    if not token or len(token) > MAX_TOKEN_CHARS:
        raise BadToken("missing or oversized token")
    version, _, rest = token.partition(".")
    payload, _, mac = rest.partition(".")
    if version != _VERSION or not _B64URL.fullmatch(payload) or not _B64URL.fullmatch(mac):
        raise BadToken("malformed token")
    expected = _mac(secret, payload)
    if not hmac.compare_digest(expected.encode(), mac.encode("utf-8", "surrogatepass")):
        raise BadToken("token signature does not match")
    try:
        token_channel, subject, expires = _unb64(payload).decode().split("|")
        expires_at = float(int(expires))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise BadToken("malformed token payload") from None
    if token_channel != channel:
        raise BadToken(f"token is for channel {token_channel!r}, not {channel!r}")
    if (time.time() if now is None else now) > expires_at:
        raise BadToken("token expired")
    return StreamGrant(channel=token_channel, subject=subject, expires_at=expires_at)
