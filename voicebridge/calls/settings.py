"""The call-record settings, read from the same environment mapping as
:class:`voicebridge.config.Settings`.

``parse(environ)`` returns the settings and every problem found (so the caller can list
them with its own, in one :class:`~voicebridge.config.ConfigError`);
``CallSettings.from_environ`` raises that error itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
from urllib.parse import urlsplit

import attrs

from voicebridge.config import (  # the same rules as every setting
    ConfigError,
    _parse_float,
    _parse_int,
    mask_url,
    setting_reader,
)

T = TypeVar("T")

StoreKind = Literal["off", "sqlite", "postgresql"]
Redaction = Literal["off", "numbers", "all"]

DEFAULT_STORE: Final = "sqlite:///data/calls.sqlite3"
DEFAULT_SPOOL: Final = Path("data/calls.spool.jsonl")
_OFF: Final = frozenset({"off", "none", "false", "no", "0", "disabled"})
_ON: Final = frozenset({"true", "on", "yes", "1", "all"})
_SQLITE_SCHEMES: Final = ("sqlite", "sqlite+aiosqlite")
_POSTGRES_SCHEMES: Final = ("postgresql", "postgres", "postgresql+asyncpg")


def shown_store(store: str) -> str:
    """A ``CALL_STORE`` value fit to show: a PostgreSQL URL with its password masked."""
    return mask_url(store) if store_kind(store) == "postgresql" else store


def store_kind(store: str) -> StoreKind:
    """What a normalised ``CALL_STORE`` value names."""
    if store == "off":
        return "off"
    scheme = store.partition("://")[0].lower()
    return "postgresql" if scheme in _POSTGRES_SCHEMES else "sqlite"


@attrs.frozen
class Prices:
    """USD per 1M tokens, as Voice Live's ``response.done`` usage counts them.

    The defaults are OpenAI's public list prices for ``gpt-realtime`` (text in 4, cached
    0.40, out 16; audio in 32, cached 0.40, out 64). What an Azure resource is billed
    depends on its model, deployment type and agreement; set the ``CALL_PRICE_*``
    settings from its price sheet.
    """

    text_in: float = 4.0
    text_out: float = 16.0
    audio_in: float = 32.0
    audio_out: float = 64.0
    cached_in: float = 0.4

    @property
    def known(self) -> bool:
        """Whether any price is set (with all at 0, no cost is estimated)."""
        return any(v > 0 for v in attrs.astuple(self))


@attrs.frozen
class CallSettings:
    """Where and how call records are kept."""

    #: ``off``, or the SQLAlchemy-style URL of the store (``sqlite:///path``,
    #: ``postgresql://user:pw@host/db``); shown masked.
    store: str = attrs.field(default=DEFAULT_STORE, repr=shown_store)
    retention_days: float = 30.0
    redact: Redaction = "numbers"
    queue_max: int = 1000
    spool_file: Path = DEFAULT_SPOOL
    spool_max_mb: float = 512.0
    write_timeout_s: float = 5.0
    retry_s: float = 5.0
    prices: Prices = attrs.Factory(Prices)

    @property
    def kind(self) -> StoreKind:
        """``off``, ``sqlite`` or ``postgresql``."""
        return store_kind(self.store)

    @property
    def enabled(self) -> bool:
        return self.kind != "off"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> CallSettings:
        """The settings, or :class:`ConfigError` listing every problem."""
        settings, problems = parse(environ)
        if problems:
            raise ConfigError(problems)
        return settings

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log: the store URL masked."""
        return {
            "store": shown_store(self.store),
            "retention_days": self.retention_days,
            "redact": self.redact,
            "queue_max": self.queue_max,
            "spool_file": str(self.spool_file),
            "spool_max_mb": self.spool_max_mb,
            "write_timeout_s": self.write_timeout_s,
            "retry_s": self.retry_s,
            "prices_per_1m": attrs.asdict(self.prices),
        }

    def notes(self) -> list[str]:
        """Things worth a warning at start-up (not errors)."""
        notes = []
        if self.enabled and not self.prices.known:
            notes.append("every CALL_PRICE_* is 0: call costs are not estimated")
        return notes


def _normalise_store(raw: str) -> str:
    value = raw.strip()
    if value.lower() in _OFF:
        return "off"
    if "://" not in value:
        # A bare path is a SQLite file.
        return f"sqlite:///{value}"
    scheme = value.partition("://")[0].lower()
    if scheme in _SQLITE_SCHEMES:
        parts = urlsplit(value)
        if not parts.path.strip("/"):
            raise ValueError("a SQLite URL needs a file: sqlite:///data/calls.sqlite3")
        return value
    if scheme in _POSTGRES_SCHEMES:
        parts = urlsplit(value)
        if not parts.hostname and "host=" not in parts.query:
            raise ValueError("a PostgreSQL URL needs a host: postgresql://user:pw@host/db")
        return value
    # Only the scheme is echoed: the rest may hold a password.
    raise ValueError(
        f"must be 'off', a SQLite file (a path or sqlite:///path) or a postgresql:// URL, "
        f"got scheme {scheme!r}"
    )


def _parse_redact(raw: str) -> Redaction:
    value = raw.strip().lower()
    if value in _OFF:
        return "off"
    if value in _ON:
        return "all"
    if value == "numbers":
        return "numbers"
    raise ValueError(f"expected off, numbers or true (numbers and emails), got {raw!r}")


_PRICE_VARS: Final = {
    "text_in": "CALL_PRICE_TEXT_IN_PER_1M",
    "text_out": "CALL_PRICE_TEXT_OUT_PER_1M",
    "audio_in": "CALL_PRICE_AUDIO_IN_PER_1M",
    "audio_out": "CALL_PRICE_AUDIO_OUT_PER_1M",
    "cached_in": "CALL_PRICE_CACHED_IN_PER_1M",
}

#: Every variable this module reads, with its default as a user would write it.
VARIABLES: Final = {
    "CALL_STORE": DEFAULT_STORE,
    "CALL_RETENTION_DAYS": "30",
    "CALL_REDACT": "numbers",
    "CALL_QUEUE_MAX": "1000",
    "CALL_SPOOL_FILE": str(DEFAULT_SPOOL),
    "CALL_SPOOL_MAX_MB": "512",
    "CALL_WRITE_TIMEOUT_S": "5",
    "CALL_RETRY_S": "5",
    **{name: f"{getattr(Prices(), key):g}" for key, name in _PRICE_VARS.items()},
}


def parse(environ: Mapping[str, str]) -> tuple[CallSettings, list[str]]:
    """The call settings from an environment mapping, and every problem found (the
    settings hold defaults where a value was bad)."""
    problems: list[str] = []
    get = setting_reader(environ, problems)

    d = CallSettings()
    prices = Prices(
        **{
            key: get(name, _parse_float, getattr(Prices(), key))
            for key, name in _PRICE_VARS.items()
        }
    )
    values: dict[str, Any] = {
        "store": get("CALL_STORE", _normalise_store, d.store),
        "retention_days": get("CALL_RETENTION_DAYS", _parse_float, d.retention_days),
        "redact": get("CALL_REDACT", _parse_redact, d.redact),
        "queue_max": get("CALL_QUEUE_MAX", _parse_int, d.queue_max),
        "spool_file": get("CALL_SPOOL_FILE", Path, d.spool_file),
        "spool_max_mb": get("CALL_SPOOL_MAX_MB", _parse_float, d.spool_max_mb),
        "write_timeout_s": get("CALL_WRITE_TIMEOUT_S", _parse_float, d.write_timeout_s),
        "retry_s": get("CALL_RETRY_S", _parse_float, d.retry_s),
        "prices": prices,
    }
    checks = (
        (values["retention_days"] >= 0, "CALL_RETENTION_DAYS: must be 0 (keep) or more"),
        (values["queue_max"] > 0, "CALL_QUEUE_MAX: must be more than 0"),
        (values["spool_max_mb"] > 0, "CALL_SPOOL_MAX_MB: must be more than 0"),
        (values["write_timeout_s"] > 0, "CALL_WRITE_TIMEOUT_S: must be more than 0"),
        (values["retry_s"] > 0, "CALL_RETRY_S: must be more than 0"),
        *((getattr(prices, k) >= 0, f"{n}: must be 0 or more") for k, n in _PRICE_VARS.items()),
    )
    problems.extend(message for ok, message in checks if not ok)
    return CallSettings(**values), problems
