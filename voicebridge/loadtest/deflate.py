"""permessage-deflate (RFC 7692) for the load-test client: the offer, the answer, the codec.

Browsers offer ``permessage-deflate; client_max_window_bits`` on every WebSocket. A server
that accepts compresses every message it sends and inflates every one it receives, which
costs CPU on every audio frame. ``--offer-deflate`` makes the load test offer the same and,
when the server accepts, really speak it, so that cost shows in the measurements.
"""

from __future__ import annotations

import zlib

import attrs

OFFER = "permessage-deflate; client_max_window_bits"
# Every flushed message ends with this empty stored block; it is left off on the wire and
# put back before inflating (RFC 7692 section 7.2.1).
TAIL = b"\x00\x00\xff\xff"
MAX_WINDOW_BITS = 15
# RFC 7692 allows 8, but zlib cannot write raw deflate with a 256-byte window.
MIN_CLIENT_WINDOW_BITS = 9


class DeflateError(ValueError):
    """The server's answer is not one this client offered or can honour."""


@attrs.frozen
class DeflateParams:
    """What the server accepted."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    client_max_window_bits: int = MAX_WINDOW_BITS


_FLAGS = frozenset({"server_no_context_takeover", "client_no_context_takeover"})
# The smallest window each side's parameter may name. Inflating with the largest window
# reads any smaller one, so server_max_window_bits needs no more than a valid value.
_LOWEST_BITS = {"server_max_window_bits": 8, "client_max_window_bits": MIN_CLIENT_WINDOW_BITS}


def _acceptable(key: str, value: str | None) -> bool:
    if key in _FLAGS:
        return value is None
    lowest = _LOWEST_BITS.get(key)
    if lowest is None or value is None or not value.isdigit():
        return False
    return lowest <= int(value) <= MAX_WINDOW_BITS


def parse_answer(header: str) -> DeflateParams | None:
    """The parameters in a ``Sec-WebSocket-Extensions`` answer; None when deflate was declined."""
    if not header.strip():
        return None
    name, *params = (part.strip() for part in header.split(";"))
    if name.lower() != "permessage-deflate" or "," in header:
        raise DeflateError(f"extensions not offered: {header}")
    found: dict[str, str] = {}
    for param in params:
        key, has_value, value = (s.strip() for s in param.partition("="))
        key = key.lower()
        if key in found or not _acceptable(key, value.strip('"') if has_value else None):
            raise DeflateError(f"cannot accept {param!r} in {header!r}")
        found[key] = value.strip('"')
    return DeflateParams(
        server_no_context_takeover="server_no_context_takeover" in found,
        client_no_context_takeover="client_no_context_takeover" in found,
        client_max_window_bits=int(found.get("client_max_window_bits") or MAX_WINDOW_BITS),
    )


class Codec:
    """Deflates our messages and inflates the server's, with or without context takeover."""

    def __init__(self, params: DeflateParams) -> None:
        self.params = params
        self._compressor = zlib.compressobj(wbits=-params.client_max_window_bits)
        # A full flush also forgets the window, so the next message cannot refer back.
        self._flush = zlib.Z_FULL_FLUSH if params.client_no_context_takeover else zlib.Z_SYNC_FLUSH
        self._decompressor = zlib.decompressobj(wbits=-MAX_WINDOW_BITS)

    def compress(self, message: bytes) -> bytes:
        """The payload of one compressed message (sent with RSV1 set)."""
        compressor = self._compressor
        return (compressor.compress(message) + compressor.flush(self._flush)).removesuffix(TAIL)

    def decompress(self, payload: bytes | bytearray) -> bytes:
        """One message from the payload of a frame with RSV1; raises ``zlib.error`` if bad."""
        decompressor = self._decompressor
        message = decompressor.decompress(payload) + decompressor.decompress(TAIL)
        if self.params.server_no_context_takeover or decompressor.eof:
            # The server starts afresh (or ended its stream): so do we.
            self._decompressor = zlib.decompressobj(wbits=-MAX_WINDOW_BITS)
        return message
