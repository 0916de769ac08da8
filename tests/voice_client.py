"""A small test client for ``/ws/voice`` that records everything the server sends."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp

FRAME_BYTES = 960  # 20 ms of PCM16 at 24 kHz

Event = tuple[str, Any]  # ("json", dict) | ("audio", bytes) | ("closed", close code)


class VoiceSocket:
    """Wraps a client WebSocket; reads events in order and remembers them all."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.closed_code: int | None = None

    async def next(self, timeout: float = 15.0) -> Event:
        async with asyncio.timeout(timeout):
            msg = await self.ws.receive()
        if msg.type is aiohttp.WSMsgType.TEXT:
            event: Event = ("json", json.loads(msg.data))
        elif msg.type is aiohttp.WSMsgType.BINARY:
            event = ("audio", msg.data)
        else:
            self.closed_code = self.ws.close_code
            event = ("closed", self.ws.close_code)
        self.events.append(event)
        return event

    async def until(self, pred: Callable[[Event], bool], timeout: float = 20.0) -> list[Event]:
        """Read events until one satisfies ``pred``; return those read, that one last."""
        seen: list[Event] = []
        async with asyncio.timeout(timeout):
            while True:
                event = await self.next(timeout)
                seen.append(event)
                if pred(event):
                    return seen
                if event[0] == "closed":
                    raise AssertionError(f"socket closed before the awaited event: {seen[-5:]}")

    async def until_type(self, kind: str, timeout: float = 20.0, **fields: Any) -> dict[str, Any]:
        events = await self.until(lambda e: is_msg(e, kind, **fields), timeout)
        last = events[-1][1]
        assert isinstance(last, dict)
        return last

    async def until_closed(self, timeout: float = 20.0) -> int | None:
        await self.until(lambda e: e[0] == "closed", timeout)
        return self.closed_code

    async def send_audio(self, pcm: bytes, frame: int = FRAME_BYTES) -> None:
        for i in range(0, len(pcm), frame):
            await self.ws.send_bytes(pcm[i : i + frame])

    def messages(self, kind: str | None = None) -> list[dict[str, Any]]:
        return [
            e[1] for e in self.events if e[0] == "json" and (kind is None or e[1]["type"] == kind)
        ]

    def statuses(self) -> list[str]:
        return [m["status"] for m in self.messages("status")]

    def audio_bytes(self) -> int:
        return sum(len(e[1]) for e in self.events if e[0] == "audio")


async def open_voice(client: Any, **kwargs: Any) -> VoiceSocket:
    """Open /ws/voice on an aiohttp test client (or ClientSession with a base URL)."""
    return VoiceSocket(await client.ws_connect("/ws/voice", **kwargs))


async def started(client: Any) -> VoiceSocket:
    """Open /ws/voice and wait until the session is started and ready."""
    voice = await open_voice(client)
    await voice.until_type("session_started")
    await voice.until_type("status", status="ready")
    return voice


def is_msg(event: Event, kind: str, **fields: Any) -> bool:
    if event[0] != "json" or event[1].get("type") != kind:
        return False
    return all(event[1].get(k) == v for k, v in fields.items())


def silence(ms: int) -> bytes:
    return b"\x00\x00" * (24 * ms)


def tone(ms: int, freq: float = 440.0, amplitude: float = 0.3) -> bytes:
    """A sine tone, loud enough for any voice activity detector."""
    import math
    from array import array

    n = 24 * ms
    step = 2 * math.pi * freq / 24000
    peak = amplitude * 32767
    return array("h", (int(peak * math.sin(i * step)) for i in range(n))).tobytes()


class StuckClient:
    """A WebSocket client that never reads, with a tiny receive buffer, on a raw socket.

    aiohttp's own client keeps reading into memory, so it cannot play a peer that stops
    reading; this one completes the handshake and then only ever writes.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, host: str, port: int, path: str = "/ws/voice") -> StuckClient:
        import base64
        import os
        import socket

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (host, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        return cls(reader, writer)

    async def send_binary(self, payload: bytes) -> None:
        import os
        import struct

        mask = os.urandom(4)
        size = len(payload)
        if size < 126:
            header = struct.pack("!BB", 0x82, 0x80 | size)
        elif size < 65536:
            header = struct.pack("!BBH", 0x82, 0x80 | 126, size)
        else:
            header = struct.pack("!BBQ", 0x82, 0x80 | 127, size)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    def close(self) -> None:
        self.writer.transport.abort()
