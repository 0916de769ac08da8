"""A minimal RFC 6455 WebSocket client on ``asyncio.Protocol``: handshake and framing.

The load generator speaks WebSocket through this rather than aiohttp's client: at 200
sessions (10,000 frames a second each way) aiohttp's per-message task wake-ups and queues
cost a whole core, while here a frame is one timer callback and one ``write`` out and one
``data_received`` back, so the generator leaves the CPU to the server it measures.

It does only what the load test needs: client side, no TLS, text and binary messages
(fragmented ones reassembled), pings answered, a bounded closing handshake, and
permessage-deflate (:mod:`voicebridge.loadtest.deflate`) when offered and accepted.
Subclasses receive whole messages through ``on_open``, ``on_text``, ``on_binary`` and
``on_end``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import struct
import time
import zlib
from collections.abc import Mapping
from typing import cast

import attrs
from yarl import URL

from voicebridge.loadtest import deflate

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10
FIN, RSV1, RSV2_3 = 0x80, 0x40, 0x30
CLOSE_NORMAL = 1000
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_MAX_HANDSHAKE = 65_536
_CLOSE_WAIT_S = 2.0


def masked(data: bytes, mask: bytes, offset: int = 0) -> bytes:
    """``data`` XOR the masking key, as if ``data`` started ``offset`` bytes into a payload."""
    if not data:
        return b""
    n = len(data)
    start = offset % 4
    key = (mask * (n // 4 + 2))[start : start + n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def frame_head(first: int, length: int, mask: bytes) -> bytes:
    """A client frame's header: ``first`` (FIN, RSV bits, opcode), length, masking key."""
    if length < 126:
        head = struct.pack("!BB", first, 0x80 | length)
    elif length < 65_536:
        head = struct.pack("!BBH", first, 0x80 | 126, length)
    else:
        head = struct.pack("!BBQ", first, 0x80 | 127, length)
    return head + mask


@attrs.frozen
class Handshake:
    """The upgrade request, and the ``Sec-WebSocket-Accept`` value the answer must carry."""

    request: bytes
    accept: bytes
    offer_deflate: bool

    @classmethod
    def build(
        cls, url: URL, headers: Mapping[str, str], *, offer_deflate: bool = False
    ) -> Handshake:
        if any("\r" in v or "\n" in v for v in headers.values()):
            raise ValueError("header values must not contain line breaks")
        key = base64.b64encode(os.urandom(16))
        lines = [
            f"GET {url.raw_path_qs} HTTP/1.1",
            f"Host: {url.raw_authority}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key.decode()}",
            "Sec-WebSocket-Version: 13",
            "User-Agent: voicebridge-loadtest",
            *([f"Sec-WebSocket-Extensions: {deflate.OFFER}"] if offer_deflate else []),
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return cls(
            request=("\r\n".join(lines) + "\r\n\r\n").encode(),
            accept=base64.b64encode(hashlib.sha1(key + _GUID).digest()),
            offer_deflate=offer_deflate,
        )


@attrs.frozen
class Template:
    """A message ``before + var + after`` in which only ``var`` changes from send to send.

    Everything but ``var`` is masked once, so sending an uncompressed frame masks a few
    dozen bytes. The masking key is random per connection (or per run, for messages
    :class:`Prepared` once for every connection), not per frame: the per-frame rule
    protects browsers behind caching proxies, and a loopback load generator has neither.
    """

    opcode: int
    before: bytes
    after: bytes
    head: bytes
    var_key: int
    var_len: int
    masked_after: bytes

    @classmethod
    def build(cls, opcode: int, before: bytes, var_len: int, after: bytes, mask: bytes) -> Template:
        length = len(before) + var_len + len(after)
        return cls(
            opcode=opcode,
            before=before,
            after=after,
            head=frame_head(FIN | opcode, length, mask) + masked(before, mask),
            var_key=int.from_bytes(masked(bytes(var_len), mask, len(before)), "little"),
            var_len=var_len,
            masked_after=masked(after, mask, len(before) + var_len),
        )

    def frame(self, var: bytes | bytearray) -> bytes:
        """The whole masked frame, uncompressed."""
        masked_var = (int.from_bytes(var, "little") ^ self.var_key).to_bytes(self.var_len, "little")
        return b"".join((self.head, masked_var, self.masked_after))

    def message(self, var: bytes | bytearray) -> bytes:
        """The unmasked message, for sending compressed."""
        return b"".join((self.before, var, self.after))


@attrs.frozen
class Prepared:
    """A whole message prepared once for many sends: its payload and its masked frame."""

    opcode: int
    payload: bytes
    wire: bytes  # the uncompressed frame, masked with the key it was built for

    @classmethod
    def build(cls, opcode: int, payload: bytes, mask: bytes) -> Prepared:
        wire = frame_head(FIN | opcode, len(payload), mask) + masked(payload, mask)
        return cls(opcode=opcode, payload=payload, wire=wire)


class WebSocketClient(asyncio.Protocol):
    """One client connection; it owns the socket, subclasses handle the messages."""

    def __init__(self, handshake: Handshake, mask: bytes | None = None) -> None:
        self.handshake = handshake
        self.transport: asyncio.Transport | None = None
        self.deflate: deflate.Codec | None = None
        self.upgraded = False
        self.closing = False  # a close was sent or answered, or the connection aborted
        self.bytes_sent = 0
        self.bytes_received = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Random per connection unless given: frames prepared once for a whole run are
        # masked with the run's key (see Template on why that is fine here).
        self.mask = mask if mask is not None else os.urandom(4)
        self._ended = False
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._fragments_first = 0

    # -- for subclasses ---------------------------------------------------------------------

    def on_open(self) -> None:
        """The upgrade succeeded (``self.deflate`` says whether deflate was accepted)."""

    def on_text(self, payload: bytes | bytearray, now: int) -> None:
        """A whole text message arrived at ``now`` (``perf_counter_ns``)."""

    def on_binary(self, buf: bytes | bytearray, start: int, end: int, now: int) -> None:
        """A whole binary message arrived: ``buf[start:end]``, not copied."""

    def on_end(self, reason: str | None) -> None:
        """The connection is over, once: ``reason`` is None when this side closed it."""

    # -- sending ----------------------------------------------------------------------------

    def template(self, opcode: int, before: bytes, var_len: int, after: bytes) -> Template:
        """A frame template masked with this connection's key."""
        return Template.build(opcode, before, var_len, after, self.mask)

    def send_template(self, template: Template, var: bytes | bytearray) -> None:
        """Send ``template`` with ``var`` filled in, compressed if deflate was accepted."""
        if self.deflate is None:
            self.write(template.frame(var))
        else:
            self.send(template.opcode, template.message(var))

    def send_prepared(self, message: Prepared) -> None:
        """Send a prepared message (built with this connection's key), compressed if agreed."""
        if self.deflate is None:
            self.write(message.wire)
        else:
            self.send(message.opcode, message.payload)

    def send(self, opcode: int, payload: bytes) -> None:
        """Send one message in one frame; data messages compressed if deflate was accepted."""
        first = FIN | opcode
        if self.deflate is not None and opcode < OP_CLOSE:
            payload = self.deflate.compress(payload)
            first |= RSV1
        self.write(frame_head(first, len(payload), self.mask) + masked(payload, self.mask))

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)
            self.bytes_sent += len(data)

    async def close(self) -> None:
        """Closing handshake, bounded; then drop the connection."""
        if not self.closing:
            self.closing = True
            self.send(OP_CLOSE, struct.pack("!H", CLOSE_NORMAL))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), _CLOSE_WAIT_S)
        if self.transport is not None and not self.closed.done():
            self.transport.abort()
        # Let connection_lost run so the socket is released before the caller goes on.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.closed), 0.5)

    def abort(self, reason: str) -> None:
        """Drop the connection now, for ``reason``."""
        self.closing = True
        self._end(reason)
        if self.transport is not None:
            self.transport.abort()

    def _end(self, reason: str | None) -> None:
        if not self._ended:
            self._ended = True
            self.on_end(reason)

    # -- asyncio.Protocol -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport implements the interface without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.write(self.handshake.request)

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(None if self.closing else "connection lost")
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter_ns()
        self.bytes_received += len(data)
        if not self.upgraded:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > _MAX_HANDSHAKE:
                    self.abort("bad handshake")
                return
            head, data = bytes(self._buf[:end]), bytes(self._buf[end + 4 :])
            self._buf.clear()
            if not self._upgrade(head):
                return
        if self._buf:
            self._buf += data
            used = self._parse(self._buf, now)
            del self._buf[:used]
        else:
            used = self._parse(data, now)
            if used < len(data):
                self._buf += data[used:]

    # -- receiving --------------------------------------------------------------------------

    def _upgrade(self, head: bytes) -> bool:
        """Check the server's answer; True when the connection is now a WebSocket."""
        status, *lines = head.split(b"\r\n")
        parts = status.split(b" ", 2)
        code = parts[1].decode("ascii", "replace") if len(parts) > 1 else "?"
        if code != "101":
            self.abort(f"handshake {code}")
            return False
        headers: dict[bytes, bytes] = {}
        for line in lines:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = headers[name] + b", " + value if name in headers else value
        if headers.get(b"sec-websocket-accept") != self.handshake.accept:
            self.abort("bad handshake")
            return False
        try:
            params = deflate.parse_answer(headers.get(b"sec-websocket-extensions", b"").decode())
        except (deflate.DeflateError, UnicodeDecodeError):
            self.abort("bad extension answer")
            return False
        if params is not None:
            if not self.handshake.offer_deflate:
                self.abort("bad extension answer")
                return False
            self.deflate = deflate.Codec(params)
        self.upgraded = True
        self.on_open()
        return True

    def _parse(self, buf: bytes | bytearray, now: int) -> int:
        """Handle every whole frame in ``buf``; return how many bytes were used."""
        pos, n = 0, len(buf)
        while n - pos >= 2 and not self._ended:
            first, second = buf[pos], buf[pos + 1]
            length, start = second & 0x7F, pos + 2
            if length == 126:
                if n - pos < 4:
                    break
                length, start = (buf[pos + 2] << 8) | buf[pos + 3], pos + 4
            elif length == 127:
                if n - pos < 10:
                    break
                length, start = int.from_bytes(buf[pos + 2 : pos + 10], "big"), pos + 10
            if second & 0x80:
                self.abort("masked frame from server")
                return n
            if first & RSV2_3 or (first & RSV1 and self.deflate is None):
                self.abort("reserved bits set")
                return n
            end = start + length
            if end > n:
                break
            self._on_frame(first, buf, start, end, now)
            pos = end
        return pos

    def _on_frame(self, first: int, buf: bytes | bytearray, start: int, end: int, now: int) -> None:
        opcode = first & 0x0F
        if opcode == OP_PING:
            self.send(OP_PONG, bytes(buf[start:end]))
        elif opcode == OP_CLOSE:
            if not self.closing:
                self.closing = True
                code = int.from_bytes(buf[start : start + 2], "big") if end - start >= 2 else 0
                self._end(f"closed {code}" if code else "closed")
                self.send(OP_CLOSE, bytes(buf[start : start + 2]))
            if self.transport is not None:
                self.transport.close()
        elif opcode == OP_CONT:
            self._fragments.append(bytes(buf[start:end]))
            if first & FIN:
                whole = b"".join(self._fragments)
                self._fragments = []
                self._on_message(self._fragments_first, whole, 0, len(whole), now)
        elif first & FIN:
            self._on_message(first, buf, start, end, now)
        else:
            self._fragments_first = first
            self._fragments = [bytes(buf[start:end])]

    def _on_message(
        self, first: int, buf: bytes | bytearray, start: int, end: int, now: int
    ) -> None:
        if first & RSV1 and self.deflate is not None:
            try:
                buf = self.deflate.decompress(buf[start:end])
            except zlib.error:
                self.abort("bad deflate data")
                return
            start, end = 0, len(buf)
        if first & 0x0F == OP_TEXT:
            self.on_text(buf[start:end], now)
        else:
            self.on_binary(buf, start, end, now)
