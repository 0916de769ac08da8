"""The upstream connection and its event parser: bounded connects, no leaks, strict parsing."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import attrs
import pytest
from aiohttp import web
from azure.ai.voicelive.aio import connect
from azure.core.credentials import AccessToken, AzureKeyCredential
from azure.core.exceptions import ClientAuthenticationError
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from tests.conftest import KEY, StartEmulator
from voicebridge.relay import events as ev
from voicebridge.relay.upstream import (
    EntraTokens,
    Upstream,
    UpstreamClosed,
    UpstreamConfig,
    open_connection,
    realtime_url,
)

API_VERSION = "2026-07-15"


def _config(endpoint: str, key: str = KEY) -> UpstreamConfig:
    return UpstreamConfig(
        endpoint=endpoint, api_key=key, model="gpt-realtime", api_version=API_VERSION
    )


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@attrs.define
class Silent:
    """A TCP server that accepts connections and never answers (a black-holed service)."""

    url: str
    held: list[asyncio.StreamWriter] = attrs.field(factory=list)
    accepted: asyncio.Queue[None] = attrs.field(factory=asyncio.Queue)

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.held.append(writer)
        self.accepted.put_nowait(None)


@pytest.fixture
async def silent() -> AsyncIterator[Silent]:
    box = Silent("")
    server = await asyncio.start_server(box.accept, "127.0.0.1", 0)
    box.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    yield box
    for writer in box.held:
        writer.close()
    server.close()
    await server.wait_closed()


@pytest.fixture
async def loop_complaints() -> AsyncIterator[list[str]]:
    """What the loop's exception handler is told (e.g. "Unclosed client session")."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    yield seen
    loop.set_exception_handler(previous)


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("https://res.cognitiveservices.azure.com", "wss://res.cognitiveservices.azure.com"),
        ("https://res.services.ai.azure.com/", "wss://res.services.ai.azure.com"),
        ("http://127.0.0.1:9000", "ws://127.0.0.1:9000"),
        ("ws://127.0.0.1:9000/base", "ws://127.0.0.1:9000/base"),
    ],
)
def test_realtime_url_is_the_sdks(endpoint: str, expected: str) -> None:
    """The URL is what the SDK's own connect() would open (scheme, path, query)."""
    url = realtime_url(_config(endpoint))
    assert url == f"{expected}/voice-live/realtime?api-version={API_VERSION}&model=gpt-realtime"
    # The SDK builds the same URL (plus a telemetry parameter). This private call is
    # test-only: it fails loudly if a new SDK changes how the URL is made.
    manager = connect(
        credential=AzureKeyCredential("k"),
        endpoint=endpoint,
        model="gpt-realtime",
        api_version=API_VERSION,
    )
    sdk = urlsplit(manager._prepare_url())  # type: ignore[attr-defined]
    ours = urlsplit(url)
    sdk_query = {k: v for k, v in parse_qsl(sdk.query) if k != "x-ms-client-sdk"}
    assert (sdk.scheme, sdk.netloc, sdk.path, sdk_query) == (
        ours.scheme,
        ours.netloc,
        ours.path,
        dict(parse_qsl(ours.query)),
    ), f"the SDK now opens {sdk.geturl()!r}; voicebridge opens {url!r}"


async def test_connect_to_a_silent_service_times_out_and_leaks_nothing(
    silent: Silent, loop_complaints: list[str]
) -> None:
    """Timed-out connects release their sockets and HTTP sessions at once."""
    baseline = _open_fds()
    for _ in range(20):
        with pytest.raises(UpstreamClosed, match=r"did not answer within 0\.2 s"):
            await open_connection(_config(silent.url), 0.2)
    gc.collect()
    # Only the silent server's own ends of the connections remain open.
    assert _open_fds() <= baseline + len(silent.held)
    assert len(silent.held) == 20
    assert loop_complaints == []


async def test_cancelled_connect_leaks_nothing(silent: Silent, loop_complaints: list[str]) -> None:
    """A connect cancelled mid-handshake (the caller hung up) releases everything."""
    baseline = _open_fds()
    for _ in range(10):
        attempt = asyncio.ensure_future(open_connection(_config(silent.url), 30))
        await silent.accepted.get()  # the handshake is under way
        attempt.cancel()
        with pytest.raises(asyncio.CancelledError):
            await attempt
    gc.collect()
    assert _open_fds() <= baseline + len(silent.held)
    assert loop_complaints == []


async def test_connection_outlives_the_handshake_timeout(start_emu: StartEmulator) -> None:
    """The connect bound covers the handshake only: an open connection keeps working."""
    emu = await start_emu()
    upstream = Upstream(await open_connection(_config(emu.url), 0.3))
    try:
        await asyncio.sleep(0.6)  # twice the handshake bound, on purpose
        await upstream.send({"type": "session.update", "session": {"instructions": "Hi."}})
        kinds = set()
        while "session.updated" not in kinds:
            kinds.add(json.loads(await upstream.receive())["type"])
    finally:
        await upstream.close()


async def test_wrong_key_is_named_without_the_key(start_emu: StartEmulator) -> None:
    """A rejected key says so, and never quotes the key."""
    emu = await start_emu()
    with pytest.raises(UpstreamClosed) as caught:
        await open_connection(_config(emu.url, key="wrong-key-42"), 3)
    assert "401" in caught.value.detail and "wrong-key-42" not in caught.value.detail


async def test_redirect_is_refused(aiohttp_server: Any) -> None:
    """A redirect would forward the key elsewhere: the connect fails instead of following."""
    followed: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        followed.append(request.headers.get("api-key", ""))
        return web.Response(text="no")

    app = web.Application()
    app.router.add_get("/voice-live/realtime", redirect)
    app.router.add_get("/elsewhere", elsewhere)
    server = await aiohttp_server(app)
    with pytest.raises(UpstreamClosed):
        await open_connection(_config(f"http://127.0.0.1:{server.port}"), 3)
    assert followed == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children) | st.dictionaries(st.text(), children),
    max_leaves=10,
)
event_types = st.sampled_from(
    [
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "conversation.item.input_audio_transcription.completed",
        "response.created",
        "response.output_item.added",
        "response.audio.delta",
        "response.audio_transcript.done",
        "response.text.done",
        "response.done",
        "error",
        "something.new",
    ]
)
events = st.fixed_dictionaries(
    {"type": event_types},
    optional={
        "delta": st.one_of(st.text(), json_values),
        "response_id": json_values,
        "item_id": json_values,
        "transcript": json_values,
        "text": json_values,
        "response": st.one_of(json_values, st.fixed_dictionaries({"id": json_values})),
        "item": st.one_of(json_values, st.fixed_dictionaries({"id": json_values})),
        "session": st.one_of(json_values, st.fixed_dictionaries({"id": json_values})),
        "error": json_values,
    },
)


@given(
    st.one_of(
        st.text(),
        st.binary(),
        json_values.map(json.dumps),
        events.map(json.dumps),
    )
)
def test_event_parser_fuzz_only_raises_bad_upstream_event(frame: str | bytes) -> None:
    """Random frames either parse into a typed event (or None) or raise BadUpstreamEvent."""
    try:
        parsed = ev.parse_event(frame)
    except ev.BadUpstreamEvent:
        return
    assert parsed is None or type(parsed).__module__ == ev.__name__


def test_audio_delta_parses_to_pcm() -> None:
    """An audio delta carries its response, item and decoded PCM."""
    frame = json.dumps(
        {"type": "response.audio.delta", "response_id": "r", "item_id": "i", "delta": "AAEC"}
    )
    assert ev.parse_event(frame) == ev.AudioDelta("r", "i", b"\x00\x01\x02")


def test_service_error_keeps_its_code() -> None:
    """The service's error code and message reach the session, bounded in size."""
    frame = json.dumps({"type": "error", "error": {"code": "x" * 500, "message": "bad"}})
    parsed = ev.parse_event(frame)
    assert isinstance(parsed, ev.ServiceError)
    assert parsed.code == "x" * 100 and parsed.message == "bad"


# --- agent mode and Microsoft Entra ID ---------------------------------------------------


class LocalCredential:
    """A local AsyncTokenCredential: the token source, all a test can substitute."""

    def __init__(self, token: str = "entra-token-123", *, fail: bool = False) -> None:
        self.token = token
        self.fail = fail
        self.scopes: list[tuple[str, ...]] = []
        self.closed = False

    async def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.append(scopes)
        if self.fail:
            raise ClientAuthenticationError("no identity here: try az login (test)")
        return AccessToken(self.token, int(time.time()) + 3600)

    async def close(self) -> None:
        self.closed = True

    async def __aenter__(self) -> LocalCredential:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


@pytest.mark.parametrize("version", ["", "7"])
def test_agent_url_is_the_sdks(version: str) -> None:
    """In agent mode the query names the agent, its project and version as the SDK's does."""
    config = UpstreamConfig(
        endpoint="https://res.services.ai.azure.com",
        api_key="",
        model=None,
        api_version=API_VERSION,
        agent_name="helpdesk",
        agent_project="support-project",
        agent_version=version,
    )
    ours = urlsplit(realtime_url(config))
    manager = connect(
        credential=AzureKeyCredential("k"),
        endpoint=config.endpoint,
        api_version=API_VERSION,
        agent_name="helpdesk",
        project_name="support-project",
        agent_version=version or None,
    )
    sdk = urlsplit(manager._prepare_url())  # type: ignore[attr-defined]
    sdk_query = {k: v for k, v in parse_qsl(sdk.query) if k != "x-ms-client-sdk"}
    assert (sdk.scheme, sdk.netloc, sdk.path, sdk_query) == (
        ours.scheme,
        ours.netloc,
        ours.path,
        dict(parse_qsl(ours.query)),
    )
    assert "model" not in sdk_query


async def test_entra_token_is_sent_as_bearer_and_reused(start_emu: StartEmulator) -> None:
    """A credential's token goes as Bearer for the SDK's scope, fetched once for two connects."""
    emu = await start_emu(bearer_tokens=("entra-token-123",))
    credential = LocalCredential()
    tokens = EntraTokens(credential)
    config = attrs.evolve(_config(emu.url, key=""), credential=tokens)
    assert config.auth == "entra"
    for _ in range(2):
        upstream = Upstream(await open_connection(config, 3))
        await upstream.close()
    assert credential.scopes == [("https://ai.azure.com/.default",)]
    handshake = emu.last_handshake()
    assert handshake is not None and handshake["auth"] == "entra"
    assert "entra-token-123" not in repr(config) + repr(tokens)
    await tokens.close()
    assert credential.closed


async def test_refused_token_names_entra_and_the_roles(start_emu: StartEmulator) -> None:
    """A refused token names Entra ID and the roles to check, is not reused, nor quoted."""
    emu = await start_emu(bearer_tokens=("another-token",))
    config = attrs.evolve(_config(emu.url, key=""), credential=EntraTokens(LocalCredential()))
    with pytest.raises(UpstreamClosed) as caught:
        await open_connection(config, 3)
    detail = caught.value.detail
    assert "401" in detail and "AZURE_AUTH=entra" in detail
    credential = config.credential
    assert credential is not None
    with pytest.raises(UpstreamClosed):
        await open_connection(config, 3)  # a refused token is not reused: fetched again
    assert isinstance(credential.credential, LocalCredential)
    assert len(credential.credential.scopes) == 2
    assert "Cognitive Services User" in detail and "Foundry User" in detail
    assert "entra-token-123" not in detail and "127.0.0.1" not in detail


async def test_refused_key_names_the_key_setting(start_emu: StartEmulator) -> None:
    """A refused API key names key mode and the setting to check."""
    emu = await start_emu()
    with pytest.raises(UpstreamClosed) as caught:
        await open_connection(_config(emu.url, key="wrong-key-42"), 3)
    assert "AZURE_AUTH=key" in caught.value.detail
    assert "AZURE_OPENAI_KEY" in caught.value.detail


async def test_failed_sign_in_is_an_upstream_failure() -> None:
    """A credential without a token fails the connect clearly; the details go to the log."""
    config = attrs.evolve(
        _config("ws://127.0.0.1:9"), credential=EntraTokens(LocalCredential(fail=True))
    )
    with capture_logs() as logs, pytest.raises(UpstreamClosed) as caught:
        await open_connection(config, 3)
    assert "Microsoft Entra ID sign-in failed" in caught.value.detail
    assert "try az login (test)" not in caught.value.detail
    assert any(e["event"] == "upstream.entra_token_failed" for e in logs)


async def test_agent_connection_reaches_the_emulator_as_an_agent(start_emu: StartEmulator) -> None:
    """An agent connection with a token is accepted; its session names the agent."""
    emu = await start_emu(bearer_tokens=("entra-token-123",))
    config = UpstreamConfig(
        endpoint=emu.url,
        api_key="",
        model=None,
        api_version=API_VERSION,
        credential=EntraTokens(LocalCredential()),
        agent_name="helpdesk",
        agent_project="support-project",
    )
    upstream = Upstream(await open_connection(config, 3))
    try:
        created = json.loads(await upstream.receive())
    finally:
        await upstream.close()
    assert created["session"]["agent"]["name"] == "helpdesk"
    handshake = emu.last_handshake()
    assert handshake is not None
    assert handshake["query"]["agent-project-name"] == "support-project"
    assert "model" not in handshake["query"]
