"""The phone-channel settings (Twilio, ACS, keypad digits), read from the same environment
mapping as :class:`voicebridge.config.Settings`.

``parse(environ)`` returns the settings and every problem found, so they are listed with
the others in one :class:`~voicebridge.config.ConfigError`.
"""

from __future__ import annotations

import base64
import binascii
import importlib.util
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

from voicebridge.config import MASK, _parse_float, _parse_int, setting_reader

T = TypeVar("T")

DtmfRole = Literal["system", "user", "off"]
DTMF_ROLES: Final = ("system", "user", "off")
#: PCM16 mono rates Call Automation streams (``AudioFormat.PCM16_K_MONO`` / ``PCM24_K_MONO``).
ACS_AUDIO_RATES: Final = (16000, 24000)
#: The package the ACS answer needs, and how to get it.
ACS_PACKAGE: Final = "azure.communication.callautomation"
ACS_INSTALL: Final = "pip install 'voicebridge[acs]'"
#: ACS_EVENTS_KEY travels in a URL query: characters that need no escaping.
_URL_SAFE_KEY = re.compile(r"[A-Za-z0-9._~-]{16,256}")


@attrs.frozen
class PhoneSettings:
    """How phone calls reach the relay."""

    #: The Twilio account's auth token: ``POST /twilio/voice`` checks each request's
    #: ``X-Twilio-Signature`` with it, and answers only when it is set.
    twilio_auth_token: str = attrs.field(default="", repr=False)
    #: Signs the per-call stream tokens; the same on every instance behind a load balancer.
    #: Empty: a random secret per process (fine for one instance).
    token_secret: str = attrs.field(default="", repr=False)
    token_ttl_s: float = 60.0
    #: A stream must say who it is (Twilio's ``start``, ACS's ``AudioMetadata``) within this.
    start_timeout_s: float = 5.0
    #: The URL callers' providers reach this server at (``https://voice.example.com``): the
    #: stream URL in the TwiML, and the URL Twilio signed. Empty: the request's own.
    public_url: str = ""
    dtmf_role: DtmfRole = "system"
    dtmf_gap_ms: int = 1500
    #: Instructions for phone calls instead of AGENT_INSTRUCTIONS_FILE (None: the same).
    instructions_file: Path | None = None
    #: The ACS resource's connection string (``endpoint=https://...;accesskey=...``): when
    #: set, ``POST /acs/incoming`` answers Event Grid's ``IncomingCall`` events with Call
    #: Automation, streaming the call's audio to ``/ws/acs``.
    acs_connection_string: str = attrs.field(default="", repr=False)
    #: The shared secret in the Event Grid subscription's webhook URL (``?key=``), and in
    #: the callback URL given to Call Automation.
    acs_events_key: str = attrs.field(default="", repr=False)
    #: The rate ACS streams the call at (PCM16 mono): 16000 or 24000.
    acs_audio_rate: int = 16000

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.twilio_auth_token)

    @property
    def acs_answer_enabled(self) -> bool:
        return bool(self.acs_connection_string)

    def redacted(self) -> dict[str, Any]:
        return {
            "twilio_auth_token": MASK if self.twilio_auth_token else "",
            "token_secret": MASK if self.token_secret else "",
            "token_ttl_s": self.token_ttl_s,
            "start_timeout_s": self.start_timeout_s,
            "public_url": self.public_url,
            "dtmf_role": self.dtmf_role,
            "dtmf_gap_ms": self.dtmf_gap_ms,
            "instructions_file": str(self.instructions_file) if self.instructions_file else None,
            "acs_connection_string": MASK if self.acs_connection_string else "",
            "acs_events_key": MASK if self.acs_events_key else "",
            "acs_audio_rate": self.acs_audio_rate,
        }


#: Every variable this module reads, with its default as a user would write it.
VARIABLES: Final = {
    "TWILIO_AUTH_TOKEN": "",
    "PHONE_TOKEN_SECRET": "",
    "PHONE_TOKEN_TTL_S": "60",
    "PHONE_START_TIMEOUT_S": "5",
    "PUBLIC_URL": "",
    "DTMF_ROLE": "system",
    "DTMF_GAP_MS": "1500",
    "PHONE_INSTRUCTIONS_FILE": "",
    "ACS_CONNECTION_STRING": "",
    "ACS_EVENTS_KEY": "",
    "ACS_AUDIO_RATE": "16000",
}


def _parse_role(raw: str) -> DtmfRole:
    value = raw.strip().lower()
    if value == "system":
        return "system"
    if value == "user":
        return "user"
    if value == "off":
        return "off"
    raise ValueError(f"must be one of {', '.join(DTMF_ROLES)}, got {raw!r}")


def _parse_public_url(raw: str) -> str:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"must be an http(s) URL such as https://voice.example.com, got {raw!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return raw.strip().rstrip("/")


def _parse_acs_rate(raw: str) -> int:
    if raw not in {str(rate) for rate in ACS_AUDIO_RATES}:
        raise ValueError(f"must be 16000 or 24000, got {raw!r}")
    return int(raw)


def _connection_string_problem(value: str) -> str | None:
    """What is wrong with an ACS connection string, in words that do not repeat it."""
    fields: dict[str, str] = {}
    for element in value.split(";"):
        name, _, field = element.strip().partition("=")
        if name:
            fields[name.lower()] = field.strip()
    endpoint = urlsplit(fields.get("endpoint", ""))
    if endpoint.scheme != "https" or not endpoint.netloc:
        return "must be endpoint=https://<resource>.communication.azure.com/;accesskey=<key>"
    try:
        if not base64.b64decode(fields.get("accesskey", ""), validate=True):
            return "the accesskey part is missing"
    except (binascii.Error, ValueError):
        return "the accesskey part is not base64 (copy the whole connection string)"
    return None


def _package_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _acs_problems(values: Mapping[str, Any]) -> list[str]:
    """ACS answering needs its key, an https PUBLIC_URL and the Call Automation package.
    No message repeats a secret."""
    if not values["acs_connection_string"]:
        return []
    problems: list[str] = []
    if (why := _connection_string_problem(values["acs_connection_string"])) is not None:
        problems.append(f"ACS_CONNECTION_STRING: {why}")
    key: str = values["acs_events_key"]
    if not key:
        problems.append(
            "ACS_EVENTS_KEY: required with ACS_CONNECTION_STRING: the key= in the Event Grid "
            "subscription's webhook URL (e.g. openssl rand -hex 32)"
        )
    elif not _URL_SAFE_KEY.fullmatch(key):
        problems.append(
            "ACS_EVENTS_KEY: must be 16 to 256 letters, digits or - _ . ~ "
            "(e.g. openssl rand -hex 32)"
        )
    if not values["public_url"].startswith("https://"):
        problems.append(
            "PUBLIC_URL: an https URL is required with ACS_CONNECTION_STRING: Call Automation "
            "streams to wss://<its host>/ws/acs and posts call events to <it>/acs/events"
        )
    if not _package_installed(ACS_PACKAGE):
        problems.append(
            "ACS_CONNECTION_STRING: answering ACS calls needs the "
            f"azure-communication-callautomation package: {ACS_INSTALL}"
        )
    return problems


def parse(environ: Mapping[str, str]) -> tuple[PhoneSettings, list[str]]:
    """The phone settings from an environment mapping, and every problem found."""
    problems: list[str] = []
    get = setting_reader(environ, problems)

    d = PhoneSettings()
    values: dict[str, Any] = {
        "twilio_auth_token": get("TWILIO_AUTH_TOKEN", str, ""),
        "token_secret": get("PHONE_TOKEN_SECRET", str, ""),
        "token_ttl_s": get("PHONE_TOKEN_TTL_S", _parse_float, d.token_ttl_s),
        "start_timeout_s": get("PHONE_START_TIMEOUT_S", _parse_float, d.start_timeout_s),
        "public_url": get("PUBLIC_URL", _parse_public_url, ""),
        "dtmf_role": get("DTMF_ROLE", _parse_role, d.dtmf_role),
        "dtmf_gap_ms": get("DTMF_GAP_MS", _parse_int, d.dtmf_gap_ms),
        "instructions_file": get("PHONE_INSTRUCTIONS_FILE", Path, None),
        "acs_connection_string": get("ACS_CONNECTION_STRING", str, ""),
        "acs_events_key": get("ACS_EVENTS_KEY", str, ""),
        "acs_audio_rate": get("ACS_AUDIO_RATE", _parse_acs_rate, d.acs_audio_rate),
    }
    checks = (
        (values["token_ttl_s"] > 0, "PHONE_TOKEN_TTL_S: must be more than 0"),
        (values["start_timeout_s"] > 0, "PHONE_START_TIMEOUT_S: must be more than 0"),
        (values["dtmf_gap_ms"] > 0, "DTMF_GAP_MS: must be more than 0"),
        (
            not values["token_secret"] or len(values["token_secret"]) >= 16,
            "PHONE_TOKEN_SECRET: must be at least 16 characters (e.g. openssl rand -hex 32)",
        ),
    )
    problems.extend(message for ok, message in checks if not ok)
    problems.extend(_acs_problems(values))
    instructions: Path | None = values["instructions_file"]
    if instructions is not None:
        try:
            instructions.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"PHONE_INSTRUCTIONS_FILE: cannot read {instructions}: {reason}")
    return PhoneSettings(**values), problems
