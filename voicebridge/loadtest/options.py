"""What one load-test run does, and the command-line flags that say it.

`LoadTestConfig` is a frozen, validated value; only loopback targets are accepted, so the
load test cannot be pointed at someone else's server.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from collections.abc import Mapping
from typing import Any

import attrs
import psutil  # type: ignore[import-untyped,unused-ignore]
from yarl import URL

from voicebridge.config import DEFAULT_API_VERSION
from voicebridge.protocol import BYTES_PER_MS

DEFAULT_MODEL = "bench"
BROWSER = "browser"
TWILIO = "twilio"
ACS = "acs"
CHANNELS = (BROWSER, TWILIO, ACS)
ACS_SAMPLE_RATES = (16_000, 24_000)
MIRROR = "mirror"
CONVERSATION = "conversation"
SCENARIOS = (MIRROR, CONVERSATION)
MAX_SESSIONS = 10_000
MAX_SECONDS = 3_600.0


class TargetError(ValueError):
    """The target URL is not a loopback WebSocket URL."""


def check_loopback(url: str) -> URL:
    """Parse a ws:// URL and refuse anything that is not on this machine's loopback."""
    parsed = URL(url)
    if parsed.scheme != "ws":
        raise TargetError(f"not a plain WebSocket URL (ws://): {url}")
    host = parsed.host or ""
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise TargetError(f"only loopback targets are allowed (127.0.0.0/8, ::1): {url}")
    return parsed


def _positive(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _non_negative(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _share(_inst: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be between 0 and 1, got {value!r}")


def in_share(index: int, share: float) -> bool:
    """Whether the ``index``-th session is one of a ``share`` of them, spread evenly."""
    return int((index + 1) * share) > int(index * share)


def _loopback(_inst: object, _attribute: attrs.Attribute[Any], value: str) -> None:
    check_loopback(value)


def _one_line(_inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if "\r" in value or "\n" in value:
        raise ValueError(f"{attribute.name} must not contain line breaks")


@attrs.frozen
class LoadTestConfig:
    """One load-test run: the target, how many sessions, for how long, at what pace."""

    url: str = attrs.field(validator=_loopback)
    sessions: int = attrs.field(
        validator=[attrs.validators.ge(1), attrs.validators.le(MAX_SESSIONS)]
    )
    seconds: float = attrs.field(validator=[_positive, attrs.validators.le(MAX_SECONDS)])
    frame_ms: int = attrs.field(
        default=20, validator=[attrs.validators.ge(1), attrs.validators.le(1000)]
    )
    ramp: float = attrs.field(default=0.0, validator=[_non_negative])
    direct: bool = False
    api_key: str = attrs.field(default="", repr=False, validator=_one_line)
    token: str | None = attrs.field(default=None, repr=False)
    server_pid: int | None = None
    drain: float = attrs.field(default=2.0, validator=[_non_negative])
    connect_timeout: float = attrs.field(default=10.0, validator=[_positive])
    model: str = DEFAULT_MODEL
    api_version: str = DEFAULT_API_VERSION
    #: The share of sessions that offer permessage-deflate as browsers do (True: all).
    offer_deflate: float = attrs.field(default=0.0, converter=float, validator=_share)
    progress: bool = True
    scenario: str = attrs.field(default=MIRROR, validator=attrs.validators.in_(SCENARIOS))
    #: Conversation: the share of callers who barge in (on every other answer).
    barge_in: float = attrs.field(default=0.25, validator=_share)
    #: Conversation: the mean pause before the next utterance, once an answer has ended.
    pause: float = attrs.field(default=1.0, validator=[_non_negative])
    voice: str = attrs.field(default="en-us", validator=_one_line)
    #: Who calls: browsers on /ws/voice, or a phone provider (Twilio, ACS) per call.
    channel: str = attrs.field(default=BROWSER, validator=attrs.validators.in_(CHANNELS))
    #: Twilio: the server's TWILIO_AUTH_TOKEN, to sign the voice webhook.
    twilio_auth_token: str = attrs.field(default="", repr=False)
    #: ACS: the server's PHONE_TOKEN_SECRET, to mint each call's stream token.
    phone_token_secret: str = attrs.field(default="", repr=False)
    acs_sample_rate: int = attrs.field(
        default=16_000, validator=attrs.validators.in_(ACS_SAMPLE_RATES)
    )

    def __attrs_post_init__(self) -> None:
        if self.channel == BROWSER:
            return
        problems = []
        if self.scenario != CONVERSATION:
            problems.append(
                "phone channels run the conversation scenario (mirror frames are stamped"
                " PCM, which a μ-law or resampled path cannot carry back intact)"
            )
        if self.direct:
            problems.append("--direct talks to Voice Live; phone channels call the bridge")
        if self.frame_ms != 20:
            problems.append("phone providers send 20 ms frames (--frame-ms 20)")
        if self.channel == TWILIO and not self.twilio_auth_token:
            problems.append("--channel twilio needs the server's TWILIO_AUTH_TOKEN")
        if self.channel == ACS and not self.phone_token_secret:
            problems.append("--channel acs needs the server's PHONE_TOKEN_SECRET")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def phone(self) -> bool:
        """Phone calls (Twilio or ACS) rather than browsers."""
        return self.channel != BROWSER

    @property
    def frame_bytes(self) -> int:
        """Bytes of PCM16 audio in one chunk of ``frame_ms``."""
        return BYTES_PER_MS * self.frame_ms

    def target_url(self) -> URL:
        """The URL actually dialled (Voice Live route and query added in direct mode)."""
        url = check_loopback(self.url)
        if self.direct:
            if url.path in ("", "/"):
                url = url.with_path("/voice-live/realtime")
            query = {"api-version": self.api_version, "model": self.model}
            query.update(url.query)
            url = url.with_query(query)
        elif self.token:
            url = url.update_query(token=self.token)
        return url

    def headers(self) -> dict[str, str]:
        """Extra handshake headers: the api-key for Voice Live (the bridge takes ``?token=``)."""
        if self.direct and self.api_key:
            return {"api-key": self.api_key}
        return {}


def add_loadtest_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m voicebridge loadtest``."""
    parser.add_argument("--url", help="bridge WebSocket URL, e.g. ws://127.0.0.1:8000/ws/voice")
    parser.add_argument("--sessions", type=int, default=1, help="concurrent clients (1)")
    parser.add_argument("--seconds", type=float, default=10.0, help="streaming time (10)")
    parser.add_argument("--frame-ms", type=int, default=20, help="audio per frame in ms (20)")
    parser.add_argument("--ramp", type=float, default=0.0, help="spread session starts (0 s)")
    parser.add_argument("--drain", type=float, default=2.0, help="grace for late frames (2 s)")
    parser.add_argument("--connect-timeout", type=float, default=10.0, help="per session (10 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    parser.add_argument(
        "--direct",
        metavar="WS_URL",
        help="talk Voice Live straight to this endpoint (e.g. the emulator) instead of --url;"
        " with --url as well, run both (direct first) and report what the bridge adds",
    )
    parser.add_argument("--api-key", default=None, help="api-key for --direct")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model query for --direct")
    parser.add_argument("--api-version", default=DEFAULT_API_VERSION, help="for --direct")
    parser.add_argument(
        "--server-pid",
        type=int,
        help="sample this process's CPU and RSS (of the bridge run in a comparison)",
    )
    parser.add_argument("--token", default=None, help="client token for /ws/voice")
    parser.add_argument(
        "--offer-deflate",
        nargs="?",
        type=float,
        const=1.0,
        default=0.0,
        metavar="SHARE",
        help="offer permessage-deflate as browsers do, and speak it if the server accepts;"
        " with SHARE (0..1) only that share of the sessions offers it",
    )
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default=None,
        help="mirror: tagged frames the emulator's mirror mode sends straight back;"
        " conversation: callers speak (espeak-ng) and pause, the emulator answers (default:"
        " mirror for browsers, conversation for phone channels)",
    )
    parser.add_argument(
        "--barge-in",
        type=float,
        default=0.25,
        metavar="SHARE",
        help="conversation: share of callers who talk over every other answer (0.25)",
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="conversation: mean pause after an answer before the next utterance (1)",
    )
    parser.add_argument("--voice", default="en-us", help="conversation: espeak-ng voice (en-us)")
    parser.add_argument(
        "--channel",
        choices=CHANNELS,
        default=BROWSER,
        help="browser: clients of /ws/voice; twilio: calls as Twilio places them (voice"
        " webhook, then Media Streams on /ws/twilio); acs: Azure Communication Services"
        " audio streaming on /ws/acs. Phone channels run the conversation scenario; --url"
        " names the server (its host and port)",
    )
    parser.add_argument(
        "--twilio-auth-token",
        default=None,
        help="twilio: the server's TWILIO_AUTH_TOKEN (default: $TWILIO_AUTH_TOKEN)",
    )
    parser.add_argument(
        "--phone-token-secret",
        default=None,
        help="acs: the server's PHONE_TOKEN_SECRET (default: $PHONE_TOKEN_SECRET)",
    )
    parser.add_argument(
        "--acs-sample-rate",
        type=int,
        choices=ACS_SAMPLE_RATES,
        default=16_000,
        help="acs: PCM16 sample rate of the stream (16000)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def configs_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> list[LoadTestConfig]:
    """One run's config, or two (direct, then the bridge) when both targets are given."""
    if args.url and args.direct:
        direct = config_from_args(args, environ)
        bridge = config_from_args(argparse.Namespace(**{**vars(args), "direct": None}), environ)
        return [attrs.evolve(direct, server_pid=None), bridge]
    return [config_from_args(args, environ)]


def config_from_args(
    args: argparse.Namespace, environ: Mapping[str, str] | None = None
) -> LoadTestConfig:
    """Build the run's config from parsed arguments (raises ValueError on bad values).

    With ``--direct`` the run talks to that endpoint, whatever ``--url`` says.
    """
    env = dict(os.environ) if environ is None else environ
    url = args.direct or args.url
    if not url:
        raise ValueError("give --url ws://HOST:PORT/ws/voice or --direct ws://HOST:PORT")
    api_key = args.api_key if args.api_key is not None else env.get("AZURE_OPENAI_KEY", "")
    token = args.token if args.token is not None else env.get("CLIENT_TOKEN") or None
    if args.server_pid is not None and not psutil.pid_exists(args.server_pid):
        raise ValueError(f"--server-pid {args.server_pid}: no such process")
    return LoadTestConfig(
        url=url,
        sessions=args.sessions,
        seconds=args.seconds,
        frame_ms=args.frame_ms,
        ramp=args.ramp,
        direct=bool(args.direct),
        api_key=api_key,
        token=token,
        server_pid=args.server_pid,
        drain=args.drain,
        connect_timeout=args.connect_timeout,
        model=args.model,
        api_version=args.api_version,
        offer_deflate=args.offer_deflate,
        progress=not args.quiet,
        scenario=args.scenario
        or (MIRROR if (getattr(args, "channel", None) or BROWSER) == BROWSER else CONVERSATION),
        barge_in=args.barge_in,
        pause=args.pause,
        voice=args.voice,
        **_phone_settings(args, env),
    )


def _phone_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    channel = getattr(args, "channel", None) or BROWSER
    if channel == BROWSER:
        return {}
    token = getattr(args, "twilio_auth_token", None)
    secret = getattr(args, "phone_token_secret", None)
    return {
        "channel": channel,
        "twilio_auth_token": token if token is not None else env.get("TWILIO_AUTH_TOKEN", ""),
        "phone_token_secret": secret if secret is not None else env.get("PHONE_TOKEN_SECRET", ""),
        "acs_sample_rate": getattr(args, "acs_sample_rate", 16_000),
    }
