"""The phone-channel settings (Twilio, ACS, keypad digits), read from the same environment
mapping as :class:`voicebridge.config.Settings`.

``parse(environ)`` returns the settings and every problem found, so they are listed with
the others in one :class:`~voicebridge.config.ConfigError`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

from voicebridge.config import MASK, _parse_float, _parse_int

T = TypeVar("T")

DtmfRole = Literal["system", "user", "off"]
DTMF_ROLES: Final = ("system", "user", "off")


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

    @property
    def twilio_enabled(self) -> bool:
        return bool(self.twilio_auth_token)

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


def parse(environ: Mapping[str, str]) -> tuple[PhoneSettings, list[str]]:
    """The phone settings from an environment mapping, and every problem found."""
    problems: list[str] = []

    def get(name: str, convert: Callable[[str], T], default: T) -> T:
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return convert(raw.strip())
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            return default

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
    instructions: Path | None = values["instructions_file"]
    if instructions is not None:
        try:
            instructions.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            problems.append(f"PHONE_INSTRUCTIONS_FILE: cannot read {instructions}: {reason}")
    return PhoneSettings(**values), problems
