"""The shipped deployment (deploy/): a real nginx, configured from the shipped site file, in
front of two real voicebridge processes sharing a real Redis, restarted one at a time
while calls are in progress; and the systemd unit and settings example checked as shipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
import wave
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from dotenv import dotenv_values

from tests.certs import make_self_signed_cert
from tests.conftest import ROOT
from tests.nginx_server import NginxServer, nginx_binary, stable_port
from tests.redis_server import RedisServer
from tests.server_process import ServerProcess
from tests.speech import make_speech_pcm
from tests.voice_client import Event, VoiceSocket, is_msg, silence
from voicebridge import errors
from voicebridge.config import Settings, unknown_settings

DEPLOY = ROOT / "deploy"
SITE = DEPLOY / "nginx" / "voicebridge.conf"
UNIT = DEPLOY / "systemd" / "voicebridge@.service"
ENV_EXAMPLE = DEPLOY / "systemd" / "voicebridge.env.example"

NAME = "localhost"
CHROMIUM = "/usr/bin/chromium"
ADMIN_TOKEN = "deploy-test-admin-token"
CLIENT_TOKEN = "deploy-test-client-token"
# Long enough that instance A is still draining (finishing this answer, which the
# emulator speaks back in real time) while the test opens new calls through nginx.
# About 5 s: time to spare both for opening calls during the drain and before the drain's
# grace (SHUTDOWN_GRACE_S, 10 s in the shipped example) would cut the answer.
LONG_TURN = (
    "Hello, I would like to hear about your offer for the new phone plan, and what it "
    "costs each month."
)
SHORT_TURN = "Hello there, how are you?"


# -- rendering the shipped files for a test run ----------------------------------------


def _sub(pattern: str, repl: str, text: str, *, flags: int = re.MULTILINE) -> str:
    """``re.subn`` that insists on a match: if the shipped file changes shape, the test
    says which rewrite no longer applies instead of testing something else."""
    out, count = re.subn(pattern, repl, text, flags=flags)
    assert count, f"{SITE.name} no longer contains {pattern!r}"
    return out


def render_site(
    *, tls_port: int, http_port: int, upstream_ports: list[int], cert: Path, key: Path, logs: Path
) -> str:
    """The shipped site with only its EDIT values changed: loopback test ports instead of
    80/443 (no IPv6 listeners), the test's instances, name, certificate and log paths."""
    text = SITE.read_text()
    instances = re.compile(r"^([ \t]*)server 127\.0\.0\.1:\d+ (.*);\n", flags=re.MULTILINE)
    assert len(instances.findall(text)) >= 2, "the upstream block lists fewer than two instances"
    first = instances.search(text)
    assert first is not None
    indent, params = first.groups()  # the shipped parameters (max_fails, fail_timeout), kept
    lines = "".join(f"{indent}server 127.0.0.1:{port} {params};\n" for port in upstream_ports)
    # The test's instances where the first shipped one was; the other shipped ones dropped.
    text = text[: first.start()] + lines + instances.sub("", text[first.start() :])
    text = _sub(r"^\s*listen \[::\]:\d+.*\n", "", text)
    text = _sub(r"listen 443 ", f"listen 127.0.0.1:{tls_port} ", text)
    text = _sub(r"listen 80([ ;])", rf"listen 127.0.0.1:{http_port}\g<1>", text)
    text = _sub(r"voice\.example\.com", NAME, text)
    text = _sub(r"/etc/ssl/voicebridge/fullchain\.pem", str(cert), text)
    text = _sub(r"/etc/ssl/voicebridge/privkey\.pem", str(key), text)
    return _sub(r"/var/log/nginx/", f"{logs}/", text)


def instance_env(registry_url: str, origin: str) -> dict[str, str]:
    """The shipped settings example, as the instances read it, with the test's names and
    secrets, and no Azure settings: each instance then uses its built-in emulator."""
    example = {k: v or "" for k, v in dotenv_values(ENV_EXAMPLE).items()}
    env = {k: v for k, v in example.items() if not k.startswith("AZURE_") and k != "CALL_STORE"}
    assert "ALLOWED_HOSTS" in env and "SESSION_REGISTRY" in env
    env.update(
        ALLOWED_HOSTS=NAME,
        ALLOWED_ORIGINS=origin,
        ADMIN_TOKEN=ADMIN_TOKEN,
        CLIENT_TOKEN=CLIENT_TOKEN,
        SESSION_REGISTRY=registry_url,
    )
    return env


def instance(log_dir: Path, port: int, env: dict[str, str], name: str) -> ServerProcess:
    """A voicebridge process on ``port`` (ServerProcess picks an ephemeral port, which an
    outgoing connection may take while the instance restarts; production's 8001 is not)."""
    server = ServerProcess(log_dir, **env)
    server.port = port
    server.url = f"http://127.0.0.1:{port}"
    server.ws_url = f"ws://127.0.0.1:{port}/ws/voice"
    server.env["APP_PORT"] = str(port)
    for key, suffix in (("CALL_STORE", "sqlite3"), ("CALL_SPOOL_FILE", "spool.jsonl")):
        server.env[key] = str(log_dir / f"calls-{name}.{suffix}")
    server.log_path = log_dir / f"server-{name}.log"
    return server


# -- a caller ------------------------------------------------------------------------


def has(kind: str, **fields: Any) -> Callable[[list[Event]], bool]:
    return lambda events: any(is_msg(e, kind, **fields) for e in events)


def index_of(events: list[Event], pred: Callable[[list[Event]], bool]) -> int:
    """The index of the first event ``pred`` holds for (``pred`` as :func:`has` makes)."""
    return next(i for i, e in enumerate(events) if pred([e]))


def answered_since(start: int) -> Callable[[list[Event]], bool]:
    """An answer finished after event ``start``: its audio, its transcript, then ready."""

    def check(events: list[Event]) -> bool:
        seen_audio = seen_transcript = False
        for event in events[start:]:
            seen_audio = seen_audio or event[0] == "audio"
            seen_transcript = seen_transcript or is_msg(event, "agent_transcript")
            if seen_audio and seen_transcript and is_msg(event, "status", status="ready"):
                return True
        return False

    return check


class Call:
    """One caller on /ws/voice through nginx; a task reads everything the server sends, as
    a real client's audio player would, so no call stalls behind an unread socket."""

    def __init__(self, voice: VoiceSocket) -> None:
        self.voice = voice
        self.session_id = ""
        self.instance = ""
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @property
    def events(self) -> list[Event]:
        return self.voice.events

    async def _read(self) -> None:
        try:
            while (await self.voice.next(timeout=3600))[0] != "closed":
                self._changed.set()
        finally:
            self._changed.set()

    async def wait(
        self, pred: Callable[[list[Event]], bool], what: str, timeout: float = 20.0
    ) -> None:
        try:
            async with asyncio.timeout(timeout):
                while not pred(self.events):
                    if self._reader.done():
                        raise AssertionError(f"{what}: the call ended first: {self.tail()}")
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{what}: not within {timeout} s: {self.tail()}") from None

    def tail(self) -> list[Any]:
        return [e if e[0] != "audio" else ("audio", len(e[1])) for e in self.events[-8:]]

    @property
    def closed(self) -> bool:
        return self._reader.done()

    async def speak(self, pcm: bytes) -> int:
        """Send an utterance with the pauses around it; the index its answer comes after."""
        start = len(self.events)
        await self.voice.send_audio(silence(300) + pcm + silence(1000))
        return start

    def abandon(self) -> None:
        """Stop reading (the test is over, however it ended)."""
        self._reader.cancel()

    async def hang_up(self) -> None:
        await self.voice.ws.close()
        await asyncio.wait_for(self._reader, 10)


class Site:
    """The deployment as its callers and its operator see it: the public https address."""

    def __init__(self, http: aiohttp.ClientSession, base: str) -> None:
        self.http = http
        self.base = base
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def dial(self) -> Call:
        """A new call, ready to talk, and the instance that holds it (from the registry)."""
        ws = await self.http.ws_connect(
            f"{self.base}/ws/voice?token={CLIENT_TOKEN}",
            origin=self.base,
            protocols=("voicebridge",),
        )
        call = Call(VoiceSocket(ws))
        await call.wait(has("session_started"), "session_started")
        await call.wait(has("status", status="ready"), "ready")
        # A microphone streams from the start (else SESSION_START_TIMEOUT_S ends the call).
        await call.voice.send_audio(silence(100))
        call.session_id = next(
            e[1]["session_id"] for e in call.events if is_msg(e, "session_started")
        )
        record = await self.get_json(f"/sessions/{call.session_id}")
        call.instance = record["instance"]
        return call

    async def get_json(self, path: str) -> Any:
        async with self.http.get(f"{self.base}{path}", headers=self.admin) as resp:
            assert resp.status == 200, (path, resp.status, await resp.text())
            return await resp.json()


async def instance_id(server: ServerProcess) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["instance"])


async def health_status(server: ServerProcess) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/health") as resp:
        return resp.status, (await resp.json())["status"]


async def until(check: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.05)


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech() -> dict[str, bytes]:
    return {"long": make_speech_pcm(LONG_TURN), "short": make_speech_pcm(SHORT_TURN)}


@pytest.fixture
async def servers() -> AsyncIterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    await asyncio.gather(*(s.stop() for s in started))


# -- the rolling restart -----------------------------------------------------------------


@pytest.mark.skipif(nginx_binary() is None, reason="nginx is not installed (apt-get install nginx)")
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed")
async def test_rolling_restart_behind_nginx_cuts_no_call(
    tmp_path: Path, servers: list[ServerProcess], speech: dict[str, bytes]
) -> None:
    """Through the shipped nginx site over wss: SIGTERM on one instance lets its calls finish
    the answer and close 1001 (the browser page on it reconnects, through nginx, to the
    other), new calls go to the other, whose calls never notice; the restarted instance
    takes calls again."""
    cert, key = make_self_signed_cert(tmp_path, NAME)
    ports: set[int] = set()
    while len(ports) < 4:
        ports.add(stable_port())
    tls_port, http_port, a_port, b_port = ports
    base = f"https://{NAME}:{tls_port}"
    redis = RedisServer().start()
    nginx: NginxServer | None = None
    calls: list[Call] = []
    browsers = contextlib.AsyncExitStack()
    try:
        env = instance_env(redis.url, base)
        servers.extend([instance(tmp_path, a_port, env, "a"), instance(tmp_path, b_port, env, "b")])
        a, b = await asyncio.gather(*(s.start() for s in servers))
        a_id, b_id = await instance_id(a), await instance_id(b)
        site_conf = render_site(
            tls_port=tls_port,
            http_port=http_port,
            upstream_ports=[a.port, b.port],
            cert=cert,
            key=key,
            logs=tmp_path,
        )
        nginx = NginxServer(tmp_path / "nginx", site_conf, port=tls_port)
        await asyncio.to_thread(nginx.start)
        access_log = tmp_path / "voicebridge.access.log"

        tls = ssl.create_default_context(cafile=str(cert))
        connector = aiohttp.TCPConnector(ssl=tls, family=socket.AF_INET)
        async with aiohttp.ClientSession(connector=connector) as http:
            site = Site(http, base)

            # The edge: a name it does not serve is dropped, a foreign page refused, the
            # per-instance metrics not exposed, the admin routes need the token.
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await http.get(f"{base}/health", headers={"Host": "rebind.example"})
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(
                    f"{base}/ws/voice?token={CLIENT_TOKEN}", origin="https://evil.example"
                )
            assert refused.value.status == 403
            async with http.get(f"{base}/metrics") as resp:
                assert resp.status == 404
            async with http.get(f"{base}/sessions") as resp:
                assert resp.status == 401
            async with http.get(f"http://127.0.0.1:{http_port}/", headers={"Host": NAME},
                                allow_redirects=False) as resp:  # fmt: skip
                assert resp.status == 301
                assert resp.headers["Location"] == f"https://{NAME}/"

            # A browser through the site: the page over https, its call answered. The
            # instance it lands on is the one stopped below, so its reconnect is seen too.
            page = await browsers.enter_async_context(browser_page(base, silent_wav(tmp_path)))
            await page.goto("/")
            await page.fill("#token", CLIENT_TOKEN)
            await page.click("#start")
            await page.wait_for_function(
                "() => window.voicebridge.client.sessionId !== null", timeout=15_000
            )
            first_page_session = await page.evaluate("() => window.voicebridge.client.sessionId")
            await page.fill("#text-input", "Hello through nginx")
            await page.click("#send-text")
            await page.locator("#transcript .bubble-agent").first.wait_for(timeout=15_000)
            record = await site.get_json(f"/sessions/{first_page_session}")
            if record["instance"] == b_id:
                a, b, a_id, b_id, a_port, b_port = b, a, b_id, a_id, b_port, a_port

            # Four calls, spread over both instances (least_conn).
            on: dict[str, list[Call]] = {a_id: [], b_id: []}
            for _ in range(8):
                if all(len(held) >= 2 for held in on.values()):
                    break
                call = await site.dial()
                calls.append(call)
                on[call.instance].append(call)
            a1, a2 = on[a_id][:2]
            b1, b2 = on[b_id][:2]
            # Any instance lists every instance's calls: the registry is Redis.
            listing = await site.get_json("/sessions")
            assert {s["instance"] for s in listing["sessions"]} == {a_id, b_id}
            assert {a1.session_id, a2.session_id, b1.session_id, b2.session_id} <= {
                s["session_id"] for s in listing["sessions"]
            }

            # Mid-conversation on both instances: each agent is answering when A is stopped.
            hold = await a1.speak(speech["long"])
            b1_turn = await b1.speak(speech["long"])
            await a1.wait(lambda ev: any(e[0] == "audio" for e in ev[hold:]), "a1 answer starts")
            await b1.wait(lambda ev: any(e[0] == "audio" for e in ev[b1_turn:]), "b1 answer starts")
            stopped_at = time.monotonic()
            a.signal(signal.SIGTERM)

            # A's calls are told; the idle one is closed at once, for the client to reconnect.
            for call in (a1, a2):
                await call.wait(has("status", status="shutting_down"), "shutting_down", 5)
            await a2.wait(lambda ev: ev[-1][0] == "closed", "a2 closed", 10)
            assert a2.voice.closed_code == errors.CLOSE_GOING_AWAY
            check_drain_end(a2)
            assert await health_status(a) == (503, "draining")

            # New calls while A drains: nginx offers them to A (fewest calls), gets 503 and
            # hands the same upgrade to B; the caller sees only B's 101.
            during_drain = [await site.dial(), await site.dial()]
            calls.extend(during_drain)
            assert [c.instance for c in during_drain] == [b_id, b_id]
            opened_s = time.monotonic() - stopped_at
            assert not a1.closed, "A finished draining before the new calls: machine too slow?"
            assert await health_status(a) == (503, "draining")
            health = await site.get_json("/health")  # the site stays healthy meanwhile
            assert health["status"] == "healthy" and health["instance"] == b_id

            # a1's answer plays to its end, then the call closes 1001 with the hint.
            await a1.wait(lambda ev: ev[-1][0] == "closed", "a1 closed", 15)
            closed_s = time.monotonic() - stopped_at
            assert a1.voice.closed_code == errors.CLOSE_GOING_AWAY
            notice = index_of(a1.events, has("status", status="shutting_down"))
            assert any(e[0] == "audio" for e in a1.events[notice:]), "answer cut at SIGTERM"
            assert answered_since(hold)(a1.events), "a1's answer did not finish"
            check_drain_end(a1)
            assert await a.wait(timeout=15) == 0
            drain_s = time.monotonic() - stopped_at

            # The page's call was on A: closed 1001, the page reconnects through nginx, to B.
            await page.wait_for_function(
                """(first) => {
                    const c = window.voicebridge.client;
                    return c.state === 'open' && c.sessionId && c.sessionId !== first;
                }""",
                arg=first_page_session,
                timeout=20_000,
            )
            assert "shutting_down" in await page.evaluate("() => window.voicebridge.statusHistory")
            divider = page.locator("#transcript .divider")
            assert await divider.get_attribute("data-reason") == "reconnect"
            page_session = await page.evaluate("() => window.voicebridge.client.sessionId")
            assert (await site.get_json(f"/sessions/{page_session}"))["instance"] == b_id

            # B's answer ran across A's drain, untouched.
            await b1.wait(answered_since(b1_turn), "b1 answer completes", 20)

            # A restarts on its port while a call on B talks on.
            a = instance(tmp_path, a_port, env, "a-restarted")
            servers.append(a)
            b2_turn = await b2.speak(speech["short"])
            await asyncio.gather(
                a.start(), b2.wait(answered_since(b2_turn), "b2 answer during A's restart", 20)
            )
            a_id = await instance_id(a)

            # nginx takes A back once its fail_timeout is over: new calls reach it again.
            async def lands_on_a() -> Call | None:
                call = await site.dial()
                calls.append(call)
                if call.instance == a_id:
                    return call
                await call.hang_up()
                return None

            a3: Call = await until(lands_on_a, "a new call on the restarted A", 15)
            turn = await a3.speak(speech["short"])
            await a3.wait(answered_since(turn), "a3 answer on the restarted A", 20)

            # No call on B ever heard of the restart.
            for call in (b1, b2, *during_drain):
                assert not call.closed, call.tail()
                for status in ("shutting_down", "ended"):
                    assert not has("status", status=status)(call.events), call.tail()
                assert not call.voice.messages("error"), call.voice.messages("error")

            for call in calls:
                if not call.closed:
                    await call.hang_up()
            await page.click("#stop")

            async def registry_empty() -> bool:
                return (await site.get_json("/sessions"))["count"] == 0

            await until(registry_empty, "every call unregistered")

        # Every call's line is written when it closes: one upgrade A answered 503 and B 101.
        def retried_upgrade() -> bool:
            return bool(
                re.search(r"/ws/voice .* 101 .*upstream_status=503, 101", access_log.read_text())
            )

        await until(retried_upgrade, "an upgrade retried from draining A to B in the access log")
        assert CLIENT_TOKEN not in access_log.read_text()
        print(
            f"A's drain: new calls placed on B by {opened_s:.1f} s, the last answer done and "
            f"its call closed at {closed_s:.1f} s, the process gone at {drain_s:.1f} s"
        )
    except BaseException:
        for server in servers:
            print(f"--- {server.log_path.name}\n{server.log()}")
        if nginx is not None:
            print(f"--- nginx error log\n{nginx.error_log()}")
        raise
    finally:
        await browsers.aclose()
        for call in calls:
            call.abandon()
        if nginx is not None:
            nginx.stop()
        redis.cleanup()


@contextlib.asynccontextmanager
async def browser_page(base: str, microphone: Path) -> AsyncIterator[Any]:
    """Headless Chromium on the site (trusting its test certificate), with a fake mic."""
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={microphone}",
            ],
        )
        try:
            context = await browser.new_context(base_url=base, ignore_https_errors=True)
            await context.grant_permissions(["microphone"], origin=base)
            yield await context.new_page()
        finally:
            await browser.close()


def silent_wav(directory: Path) -> Path:
    """Five seconds of silence (the fake microphone loops it): the page's turn is typed."""
    path = directory / "silence.wav"
    with wave.open(str(path), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(48_000)
        wav.writeframes(bytes(2 * 5 * 48_000))
    return path


def check_drain_end(call: Call) -> None:
    """The last status before the 1001: the call ended for a restart, with the code a
    client reconnects on."""
    ended = call.voice.messages("status")[-1]
    assert ended["status"] == "ended", ended
    assert ended["code"] == errors.ERR_SHUTDOWN, ended
    assert "reconnect" in ended["message"]
    assert errors.CODES[errors.ERR_SHUTDOWN].retry


# -- the systemd unit and the settings example --------------------------------------------


def test_env_example_is_valid_settings() -> None:
    """The shipped settings example loads as voicebridge settings, with no unknown names."""
    env = {k: v or "" for k, v in dotenv_values(ENV_EXAMPLE).items()}
    assert "APP_PORT" not in env and "APP_HOST" not in env  # the unit sets them
    settings = Settings.from_environ(
        {**env, "AGENT_INSTRUCTIONS_FILE": str(ROOT / "agent_instructions.md")}
    )
    assert settings.admin_token and settings.allowed_hosts
    assert settings.trusted_proxies == ("127.0.0.1/32", "::1/128")  # callers, not nginx
    assert settings.session_registry.startswith("redis://")
    assert unknown_settings(env, {}) == []


def _unit_value(name: str) -> str:
    values = re.findall(rf"^{name}=(.*)$", UNIT.read_text(), flags=re.MULTILINE)
    assert len(values) == 1, (name, values)
    return values[0]


def test_systemd_unit_outlasts_the_drain() -> None:
    """The unit stops with SIGTERM and waits well past the drain grace before a SIGKILL."""
    env = dotenv_values(ENV_EXAMPLE)
    grace = float(env.get("SHUTDOWN_GRACE_S") or Settings().shutdown_grace_s)
    assert _unit_value("KillSignal") == "SIGTERM"
    assert float(_unit_value("TimeoutStopSec")) >= grace + 20
    assert "APP_PORT=%i" in _unit_value("ExecStart")
    assert _unit_value("Restart") == "on-failure"


@pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)
def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """`systemd-analyze verify` finds nothing to say about the unit, and its hardening
    leaves an exposure level of at most 2 (of 10) by `systemd-analyze security`."""
    shutil.copy(UNIT, tmp_path / UNIT.name)
    instance = tmp_path / "voicebridge@8001.service"
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(instance)], capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr.strip() == "" and verify.stdout.strip() == "", verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--threshold=20", str(instance)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert security.returncode == 0, security.stdout[-3000:]
