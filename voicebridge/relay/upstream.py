"""The Voice Live connection of one session: open it within a bound, send, receive, close.

Only public SDK names are used: the SDK's :class:`VoiceLiveConnection` (built from an HTTP
session and a WebSocket, its documented constructor), its ``send``, ``recv_bytes`` and
``close``, and :class:`ConnectionClosed`.

Why not ``azure.ai.voicelive.aio.connect()`` (SDK 1.3.1): its context manager builds its
own ``aiohttp.ClientSession`` with aiohttp's default 300 s handshake timeout, which no
public option bounds (``connection_options['handshake_timeout']`` is documented as
ignored), and closes that session only on ``aiohttp.ClientError``. A connect timed out or
cancelled by the relay therefore leaves an unclosed session behind ("Unclosed client
session"), and one left to run holds its socket for up to 300 s: a silent service made
retrying clients exhaust the process's file descriptors. Opening the WebSocket here, with
a session the relay owns and bounds, releases everything as soon as an attempt ends. The
URL and headers follow the SDK's ``_VoiceLiveConnectionManager._prepare_url`` and
``_get_auth_headers``; ``tests/test_upstream.py`` checks them against the SDK's and the
emulator's handshake rules, and redirects are refused as the SDK refuses them.

Two ways to sign in, as the SDK's: the ``api-key`` header, or (``AZURE_AUTH=entra``) a
Microsoft Entra ID token as ``Authorization: Bearer`` for the SDK's default scope
``https://ai.azure.com/.default``, from the one credential the app holds for the process
(:class:`EntraTokens`).
"""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import attrs
import structlog
from azure.ai.voicelive.aio import ConnectionClosed, VoiceLiveConnection
from azure.ai.voicelive.aio import ConnectionError as VoiceLiveConnectionError
from azure.core.credentials import AccessToken
from azure.core.credentials_async import AsyncTokenCredential

from voicebridge import __version__
from voicebridge.voicelive import ENTRA_SCOPE

log = structlog.get_logger(__name__)

#: The path Voice Live serves its realtime WebSocket on, below the resource endpoint.
REALTIME_PATH = "/voice-live/realtime"
CLOSE_TIMEOUT_S = 2.0
USER_AGENT = f"voicebridge/{__version__}"
#: A cached Entra token is replaced this long before it expires.
TOKEN_REFRESH_MARGIN_S = 300.0


class EntraTokens:
    """Microsoft Entra ID tokens for Voice Live from one credential, shared by every session.

    A token is fetched once and reused until shortly before it expires: sessions do not
    each ask the credential (an Azure CLI login starts a process per request), and
    connects that arrive together wait for the same fetch. ``close`` closes the credential.
    """

    def __init__(self, credential: AsyncTokenCredential, scope: str = ENTRA_SCOPE) -> None:
        self.credential = credential
        self.scope = scope
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()

    def __repr__(self) -> str:
        return f"EntraTokens({type(self.credential).__name__}, scope={self.scope!r})"

    def _cached(self) -> str | None:
        token = self._token
        if token is not None and token.expires_on - time.time() > TOKEN_REFRESH_MARGIN_S:
            return token.token
        return None

    async def token(self) -> str:
        """A valid access token (from the cache, or fetched now)."""
        cached = self._cached()
        if cached is not None:
            return cached
        async with self._lock:
            cached = self._cached()
            if cached is not None:
                return cached
            self._token = await self.credential.get_token(self.scope)
            return self._token.token

    def forget(self) -> None:
        """Drop the cached token (the service refused it): the next connect fetches anew."""
        self._token = None

    async def close(self) -> None:
        await self.credential.close()


@attrs.frozen
class UpstreamConfig:
    """Where and how to reach Voice Live (Azure or the local emulator): a model, or a
    Foundry agent (``agent_name``, ``agent_project``, optionally ``agent_version``)."""

    endpoint: str
    api_key: str = attrs.field(repr=False)
    model: str | None
    api_version: str
    backend: str = "azure"
    #: Set with AZURE_AUTH=entra: the bearer tokens sent instead of the api-key header.
    credential: EntraTokens | None = attrs.field(default=None, repr=False)
    agent_name: str = ""
    agent_project: str = ""
    agent_version: str = ""

    @property
    def auth(self) -> str:
        """How connections sign in: ``key`` or ``entra``."""
        return "key" if self.credential is None else "entra"


class UpstreamClosed(Exception):
    """The Voice Live connection ended or could not be used; ``detail`` is secret-free."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UpstreamRefused(UpstreamClosed):
    """Voice Live refused the credentials (HTTP 401/403): permanent until fixed."""


def realtime_url(config: UpstreamConfig) -> str:
    """The WebSocket URL: ``ws(s)://host/path/voice-live/realtime?api-version=..&model=..``,
    or with ``agent-name``, ``agent-project-name`` (and ``agent-version``) for an agent."""
    parts = urlsplit(config.endpoint)
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    params = {"api-version": config.api_version}
    if config.model:
        params["model"] = config.model
    if config.agent_name:
        params["agent-name"] = config.agent_name
        params["agent-project-name"] = config.agent_project
        if config.agent_version:
            params["agent-version"] = config.agent_version
    for key, value in parse_qsl(parts.query):
        params.setdefault(key, value)
    path = parts.path.rstrip("/") + REALTIME_PATH
    return urlunsplit((scheme, parts.netloc, path, urlencode(params), ""))


async def _refuse_redirect(
    session: aiohttp.ClientSession,
    context: SimpleNamespace,
    params: aiohttp.TraceRequestRedirectParams,
) -> None:
    # A redirect would forward the api-key header to wherever it points.
    params.response.close()
    raise aiohttp.ClientError("Voice Live answered with a redirect, which is refused")


async def open_connection(
    config: UpstreamConfig, timeout_s: float, *, heartbeat_s: float = 5.0
) -> VoiceLiveConnection:
    """Open the WebSocket within ``timeout_s``; on any failure nothing stays open.

    ``heartbeat_s``: a ping this often; a service that does not answer one within half of
    it is treated as gone (aiohttp closes the socket), so a silent upstream (frozen
    process, network black hole) is noticed within seconds.

    Raises :class:`UpstreamClosed` with a secret-free description; a cancellation releases
    the socket and the HTTP session before it propagates.
    """
    headers = await _auth_headers(config, timeout_s)
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_redirect)
    http = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        trace_configs=[trace],
        headers={"User-Agent": USER_AGENT},
    )
    try:
        ws = await http.ws_connect(
            realtime_url(config),
            headers=headers,
            max_msg_size=16 * 1024 * 1024,
            heartbeat=heartbeat_s,
            timeout=aiohttp.ClientWSTimeout(ws_close=CLOSE_TIMEOUT_S),
        )
    except BaseException as exc:
        # Shielded: a cancelled connect must still close its session, or it leaks.
        await asyncio.shield(http.close())
        if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            raise UpstreamClosed(f"Voice Live did not answer within {timeout_s:g} s") from None
        if isinstance(exc, aiohttp.ClientError | OSError):
            refused = isinstance(exc, aiohttp.WSServerHandshakeError) and exc.status in (401, 403)
            if refused and config.credential is not None:
                config.credential.forget()
            detail = describe(exc, auth=config.auth)
            error = UpstreamRefused if refused else UpstreamClosed
            raise error(f"could not connect to Voice Live: {detail}") from None
        raise
    return VoiceLiveConnection(http, ws)


async def _auth_headers(config: UpstreamConfig, timeout_s: float) -> dict[str, str]:
    """``api-key``, or ``Authorization: Bearer`` with an Entra token (as the SDK's
    ``_get_auth_headers``); the token is fetched within ``timeout_s``."""
    if config.credential is None:
        return {"api-key": config.api_key}
    try:
        async with asyncio.timeout(timeout_s):
            token = await config.credential.token()
    except TimeoutError:
        raise UpstreamClosed(
            f"no Microsoft Entra ID token within {timeout_s:g} s (AZURE_AUTH=entra)"
        ) from None
    except Exception as exc:
        # azure-identity explains which sources it tried; that is for the operator's log.
        log.warning("upstream.entra_token_failed", error=str(exc)[:2000])
        raise UpstreamClosed(
            "Microsoft Entra ID sign-in failed (AZURE_AUTH=entra): this process has no "
            "usable identity; use a managed identity in Azure, or sign in with `az login` "
            "where it runs (details in the server log)"
        ) from None
    return {"Authorization": f"Bearer {token}"}


class Upstream:
    """One open Voice Live connection: the session's only way to talk to the service."""

    def __init__(self, conn: VoiceLiveConnection) -> None:
        self._conn = conn

    async def send(self, event: dict[str, Any]) -> None:
        try:
            await self._conn.send(event)
        except (VoiceLiveConnectionError, ConnectionError, aiohttp.ClientError) as exc:
            raise UpstreamClosed(describe(exc)) from None

    async def send_audio(self, b64: str) -> None:
        """``input_audio_buffer.append`` of already base64-encoded PCM."""
        await self.send({"type": "input_audio_buffer.append", "audio": b64})

    async def receive(self) -> bytes:
        """The next server frame, raw; raises :class:`UpstreamClosed` when the socket ends."""
        try:
            return await self._conn.recv_bytes()
        except ConnectionClosed as exc:
            raise UpstreamClosed(f"closed with code {exc.code}") from None
        except (VoiceLiveConnectionError, ConnectionError, aiohttp.ClientError) as exc:
            raise UpstreamClosed(describe(exc)) from None

    async def close(self) -> None:
        """Close the socket and its HTTP session; bounded whatever the service does."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S * 2):
                await self._conn.close()
        except TimeoutError:
            pass


def describe(exc: BaseException, *, auth: str = "key") -> str:
    """A short, secret-free description of a connection failure. A refused sign-in names
    the mode (``auth``: key or entra) and what to check."""
    cause = exc.__cause__ if isinstance(exc, VoiceLiveConnectionError) else exc
    if isinstance(exc, ConnectionClosed):
        return f"closed with code {exc.code}"
    if isinstance(cause, aiohttp.WSServerHandshakeError):
        if cause.status in (401, 403):
            return _refused(cause.status, auth)
        return f"handshake failed with HTTP {cause.status}"
    if isinstance(cause, aiohttp.ClientConnectorError):
        # Not the host or port: clients see this, and the address is an internal detail.
        # os.strerror: asyncio's own strerror quotes the address it tried.
        code = cause.os_error.errno
        reason = os.strerror(code) if code else type(cause.os_error).__name__
        return f"cannot reach the voice service ({reason})"
    if isinstance(cause, OSError | aiohttp.ClientError):
        return type(cause).__name__
    return type(exc).__name__


def _refused(status: int, auth: str) -> str:
    if auth == "entra":
        # Roles: the reference's "Authentication" section (2026-07-15).
        return (
            f"the service refused the Microsoft Entra ID token (HTTP {status}, AZURE_AUTH=entra);"
            " check that this identity has the 'Cognitive Services User' and 'Foundry User'"
            " roles on the Voice Live resource (for an agent, on its project too)"
        )
    return (
        f"the service refused the API key (HTTP {status}, AZURE_AUTH=key); check that "
        "the key (AZURE_OPENAI_KEY) belongs to this Voice Live resource"
    )
