"""Typed settings, read from the environment and a ``.env`` file.

Every setting has a default and a type. ``Settings.from_environ`` takes a plain mapping so
tests pass a dict instead of patching ``os.environ``; every problem found is collected and
raised together as one :class:`ConfigError`, so a user fixes a bad ``.env`` in one go.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import ipaddress
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import attrs
from dotenv import dotenv_values

from voicebridge import voicelive
from voicebridge.voicelive import OPENAI_VOICES

if TYPE_CHECKING:
    from voicebridge.calls.settings import CallSettings
    from voicebridge.phone.settings import PhoneSettings

T = TypeVar("T")

__all__ = ["OPENAI_VOICES", "ConfigError", "Settings", "load_settings", "mask_url"]

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
DEFAULT_API_VERSION = "2026-07-15"
#: The model the built-in emulator stands in for when no deployment is named.
DEFAULT_EMULATOR_MODEL = "gpt-realtime"
AUTH_MODES = ("key", "entra")
PREFLIGHT_MODES = ("off", "warn", "require")
#: Values of the on/off settings that turn a feature off.
OFF = "off"
MASK = "***"
CALLER_NOTICE_MAX_CHARS = 500
#: Calls of one response run at once, at most (TOOLS_MAX_CONCURRENT).
MAX_TOOLS_CONCURRENT = 64


class ConfigError(Exception):
    """Raised with every problem found in the settings, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid settings:\n" + "\n".join(f"  - {p}" for p in problems))


# Query parameters whose value is a credential (api-key, access_token, sig, password...).
_SECRET_QUERY = re.compile(r"key|token|pass|secret|sig|auth|credential|code", re.IGNORECASE)


def setting_reader(
    environ: Mapping[str, str], problems: list[str]
) -> Callable[[str, Callable[[str], T], T], T]:
    """``get(name, convert, default)`` for the settings modules of other parts: an unset or
    blank variable is the default; one ``convert`` refuses is the default too, with the
    problem (``NAME: why``) added to ``problems``."""

    def get(name: str, convert: Callable[[str], T], default: T) -> T:
        raw = environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return convert(raw.strip())
        except ValueError as exc:
            problems.append(f"{name}: {exc}")
            return default

    return get


def shown_path(path: Path) -> str:
    """A path as a problem names it: a relative one with what it resolves to, since the
    working directory of a service is rarely the one its operator has in mind."""
    if path.is_absolute():
        return str(path)
    return f"{path} (resolved to {path.absolute()})"


def mask_url(url: str) -> str:
    """The URL with its credentials replaced by ``***``, for logs and error messages: the
    password in the userinfo (a userinfo without one is masked whole: it may be a token),
    and the value of any query parameter named like a credential (``api-key``, ``token``,
    ``password``, ``sig``...)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostinfo = netloc.rpartition("@")
            user, colon, _password = userinfo.partition(":")
            netloc = f"{user}:***@{hostinfo}" if colon else f"***@{hostinfo}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(_SECRET_QUERY.search(k) for k, _ in pairs):
                query = urlencode([(k, MASK if _SECRET_QUERY.search(k) else v) for k, v in pairs])
        return urlunsplit(parts._replace(netloc=netloc, query=query, fragment=""))
    except ValueError:
        return "<unparsable url>"


@attrs.frozen
class Settings:
    """The effective configuration of one voicebridge process."""

    # Upstream (Azure AI Voice Live, or the built-in emulator)
    voicelive_backend: str = "emulator"
    # A URL may hold a credential: repr shows it masked.
    azure_openai_endpoint: str = attrs.field(default="", repr=mask_url)
    azure_openai_key: str = attrs.field(default="", repr=False)
    azure_openai_deployment: str = ""
    azure_api_version: str = DEFAULT_API_VERSION
    # key (api-key header) or entra (a Microsoft Entra ID bearer token).
    azure_auth: str = "key"
    # Agent mode: a Foundry Agent Service agent instead of a model.
    voicelive_agent_name: str = ""
    voicelive_agent_project: str = ""
    voicelive_agent_version: str = ""
    upstream_connect_timeout_s: float = 10.0
    # Continuity (used by the relay): reconnect and rotate the upstream, keep the record.
    upstream_reconnect_s: float = 15.0
    upstream_rotate_s: float = 0.0
    upstream_heartbeat_s: float = 5.0
    reconnect_hold_audio_ms: int = 5000
    conversation_max_chars: int = 20000

    # The agent
    voice_name: str = "alloy"
    voice_temperature: float | None = None
    voice_endpoint_id: str = ""
    voice_rate: str = ""
    turn_detection: str = "server_vad"
    vad_threshold: float = 0.5
    vad_prefix_padding_ms: int = 300
    vad_silence_duration_ms: int = 500
    vad_remove_filler_words: bool = False
    vad_languages: tuple[str, ...] = ()
    end_of_utterance: str = OFF
    # "" turns input transcription off.
    transcription_model: str = "whisper-1"
    transcription_language: str = ""
    transcription_phrases: tuple[str, ...] = ()
    # "" turns noise reduction off.
    noise_reduction: str = "azure_deep_noise_suppression"
    echo_cancellation: bool = True
    agent_instructions_file: Path = Path("agent_instructions.md")
    enable_proactive_greeting: bool = False
    caller_notice: str = ""
    # /health: the upstream counts as degraded after this many connects in a row failed;
    # with health_fails_when_degraded, /health then answers 503 so a balancer stops routing.
    upstream_degraded_after: int = 3
    health_fails_when_degraded: bool = False
    # At start-up, open one Voice Live session with these credentials and settings:
    # off, warn (log it; /health degraded) or require (do not start).
    upstream_preflight: str = "off"
    # While degraded, the upstream is checked this often (one session opened and closed);
    # a pass makes the instance healthy again. 0 = only a successful call does.
    upstream_probe_s: float = 15.0
    # Server-side tools (voicebridge.tools): the TOML file that defines them (None: no
    # tools); whether the client's `tool` messages carry arguments and outputs; how many
    # calls of one response run at once.
    tools_file: Path | None = None
    tools_show_arguments: bool = False
    tools_max_concurrent: int = 4

    # Server
    app_host: str = "0.0.0.0"
    app_port: int = 8000
    static_dir: Path = Path("static")
    log_level: str = "INFO"
    log_format: str = "console"
    max_connections: int = 1000
    request_timeout_s: float = 5.0
    # HTTPS and WSS served directly (PEM files); both or neither. Behind a TLS-terminating
    # proxy, leave them empty.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None

    # Sessions and limits
    session_registry: str = attrs.field(default="memory", repr=False)
    max_sessions: int = 100
    session_max_duration_s: float = 1500.0
    session_warning_s: float = 60.0
    session_idle_timeout_s: float = 120.0
    session_start_timeout_s: float = 20.0
    max_sessions_per_client: int = 10
    shutdown_grace_s: float = 10.0
    max_frame_bytes: int = 65536
    client_send_buffer_ms: int = 3000
    client_send_timeout_s: float = 5.0
    client_text_per_min: int = 20
    max_audio_rate: float = 1.5
    max_frames_per_s: float = 200.0
    rate_window_s: float = 10.0
    registry_heartbeat_s: float = 5.0
    registry_ttl_s: float = 15.0

    # Access
    client_token: str = attrs.field(default="", repr=False)
    admin_token: str = attrs.field(default="", repr=False)
    # Call records (CALL_*), parsed by voicebridge.calls.settings.
    calls: CallSettings = attrs.field(factory=lambda: _call_settings_default())  # noqa: PLW0108 (defined below the class)
    # Phone channels (TWILIO_*, PHONE_*, DTMF_*), parsed by voicebridge.phone.settings.
    phone: PhoneSettings = attrs.field(factory=lambda: _phone_settings_default())  # noqa: PLW0108 (defined below the class)
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Proxies (addresses or networks) whose X-Forwarded-For names the real client.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def uses_emulator(self) -> bool:
        return self.voicelive_backend == "emulator"

    @property
    def agent_mode(self) -> bool:
        """A Foundry agent answers, with its own model and instructions."""
        return bool(self.voicelive_agent_name)

    @property
    def voicelive_model(self) -> str | None:
        """The model named on the connection; None in agent mode (the agent has one)."""
        if self.agent_mode:
            return None
        return self.azure_openai_deployment or DEFAULT_EMULATOR_MODEL

    @property
    def voicelive_target(self) -> voicelive.Target:
        """What the configuration is checked against: model or agent, api-version, auth."""
        return voicelive.Target(
            model=self.voicelive_model,
            agent=self.agent_mode,
            api_version=self.azure_api_version,
            auth=self.azure_auth,
        )

    @property
    def client_tokens(self) -> tuple[str, ...]:
        """The accepted client tokens: ``CLIENT_TOKEN`` holds one, or several
        comma-separated (one per client; a comma cannot travel in a subprotocol anyway)."""
        return tuple(t for t in (p.strip() for p in self.client_token.split(",")) if t)

    @property
    def host_names(self) -> frozenset[str]:
        """The Host names requests may carry: ``ALLOWED_HOSTS``, or by default the loopback
        names plus ``APP_HOST`` when it names one address rather than every one."""
        if self.allowed_hosts:
            return frozenset(self.allowed_hosts)
        names = set(LOOPBACK_NAMES)
        if self.app_host not in WILDCARD_HOSTS:
            names.add(normalise_host(self.app_host))
        return frozenset(names)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Settings:
        """Build settings from a mapping of environment variables, or raise ConfigError."""
        return _Loader(environ).load()

    def redacted(self) -> dict[str, Any]:
        """The settings as a dict safe to log or show: secrets masked."""
        out: dict[str, Any] = {}
        for field in attrs.fields(Settings):
            value = getattr(self, field.name)
            if field.name in _SECRET_FIELDS:
                value = MASK if value else ""
            elif field.name in _URL_FIELDS:
                value = mask_url(value)
            elif isinstance(value, Path):
                value = str(value.absolute())
            elif isinstance(value, tuple):
                value = list(value)
            elif field.name in ("calls", "phone"):
                value = value.redacted()
            out[field.name] = value
        return out

    def voicelive_findings(self) -> tuple[list[str], list[str]]:
        """The session.update and the connection these settings make, checked against what
        Voice Live documents (voicebridge.voicelive.RULES): the invalid combinations
        (settings loading refuses them) and the doubtful ones (logged at start-up)."""
        # Imported here: the relay package imports this module.
        from voicebridge.relay.session_config import build_session_config

        problems: list[str] = []
        warnings: list[str] = []
        session = build_session_config(self, "")
        for finding in voicelive.check(session, self.voicelive_target):
            rule = finding.rule
            names = " / ".join(rule.settings) or "settings"
            text = f"{names}: {finding.message} (source: {rule.source})"
            (problems if rule.severity == "error" else warnings).append(text)
        if self.agent_mode and self.azure_openai_deployment:
            warnings.append(
                "AZURE_OPENAI_DEPLOYMENT: not sent in agent mode, where the agent names its "
                f"own model (source: {voicelive.SRC_REFERENCE}#websocket-endpoint)"
            )
        if self.azure_auth == "entra" and self.azure_openai_key:
            warnings.append("AZURE_OPENAI_KEY: not used, since AZURE_AUTH is entra")
        return problems, warnings

    def read_instructions(self) -> str:
        """The agent's system prompt, read afresh so edits apply to the next session."""
        return self.agent_instructions_file.read_text(encoding="utf-8")


_SECRET_FIELDS = frozenset({"azure_openai_key", "client_token", "admin_token"})
# Settings holding a URL: shown through mask_url, since a URL can carry a credential.
_URL_FIELDS = frozenset({"session_registry", "azure_openai_endpoint"})

#: Host names that always mean this machine.
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
#: APP_HOST values that bind every address, so name no host.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def normalise_host(host: str) -> str:
    """A Host header or host name as ALLOWED_HOSTS compares it: lower case, no port, no
    brackets around an IPv6 address, no trailing dot. A Host that cannot be parsed comes
    back empty (and so matches nothing)."""
    host = host.strip().lower()
    if host.startswith("["):
        inside, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return ""
        host = inside
    elif host.count(":") == 1:
        host, _, port = host.partition(":")
        if not port.isdigit():
            return ""
    return host.rstrip(".")


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"expected true or false, got {raw!r}")


def _parse_float(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None


def _parse_int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"expected a whole number, got {raw!r}") from None


def _parse_list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip().rstrip("/") for item in raw.split(",") if item.strip())


def _parse_words(raw: str) -> tuple[str, ...]:
    """Comma-separated values kept as written (phrases, language codes)."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def _parse_choice(*choices: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def _parse_off(raw: str) -> str:
    """A value, or "" for off / none / false."""
    value = raw.strip()
    return "" if value.lower() in {"off", "none", "false", "0"} else value


def _parse_networks(raw: str) -> tuple[str, ...]:
    """IP addresses or networks (``127.0.0.1``, ``10.0.0.0/8``, ``::1``), normalised."""
    networks = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        try:
            networks.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(
                f"expected IP addresses or networks such as 127.0.0.1 or 10.0.0.0/8, got {item!r}"
            ) from None
    return tuple(networks)


def _parse_hosts(raw: str) -> tuple[str, ...]:
    hosts = []
    for item in (part.strip() for part in raw.split(",")):
        if not item:
            continue
        if item == "*":
            hosts.append(item)
            continue
        if "/" in item or "@" in item:
            raise ValueError(f"expected host names such as app.example.com, got {item!r}")
        host = normalise_host(item)
        if not host:
            raise ValueError(f"not a host name: {item!r}")
        hosts.append(host)
    return tuple(hosts)


class _Loader:
    """Reads one variable at a time and collects the problems instead of stopping."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.env = environ
        self.problems: list[str] = []
        self.read: set[str] = set()  # every setting name looked at: the known names

    def get(self, name: str, parse: Callable[[str], T], default: T) -> T:
        self.read.add(name)
        raw = self.env.get(name)
        if raw is None or raw.strip() == "":
            return default
        try:
            return parse(raw.strip())
        except ValueError as exc:
            self.problems.append(f"{name}: {exc}")
            return default

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.problems.append(message)

    def given(self, name: str) -> bool:
        self.read.add(name)
        return bool(self.env.get(name, "").strip())

    def aliased(self, name: str) -> str:
        """A seed setting or its SDK-samples alias (AZURE_VOICELIVE_*): either may be set;
        both only to the same value."""
        alias = _ALIASES[name]
        value, other = self.get(name, str, ""), self.get(alias, str, "")
        if value and other and value != other:
            self.problems.append(
                f"{name} and {alias}: both set, to different values; set one of them"
            )
        return value or other

    def load(self) -> Settings:
        g = self.get
        d = Settings()
        azure_given = any(self.given(n) for n in (*_AZURE_VARS, *_ALIASES.values()))
        backend = g("VOICELIVE_BACKEND", str, "azure" if azure_given else "emulator").lower()
        key = self.aliased("AZURE_OPENAI_KEY")
        agent_name = g("VOICELIVE_AGENT_NAME", str, "")
        # Entra ID unless a key is given; a Foundry agent takes Entra ID only. The built-in
        # emulator is reached with a key of its own, or as an agent with a token of its own.
        no_key = not key and backend == "azure"
        auth = g(
            "AZURE_AUTH", _parse_choice(*AUTH_MODES), "entra" if agent_name or no_key else "key"
        )
        values: dict[str, Any] = {
            "voicelive_backend": backend,
            "azure_openai_endpoint": self.aliased("AZURE_OPENAI_ENDPOINT"),
            "azure_openai_key": key,
            "azure_openai_deployment": self.aliased("AZURE_OPENAI_DEPLOYMENT"),
            "azure_api_version": g("AZURE_API_VERSION", str, d.azure_api_version),
            "azure_auth": auth,
            "voicelive_agent_name": agent_name,
            "voicelive_agent_project": g("VOICELIVE_AGENT_PROJECT", str, ""),
            "voicelive_agent_version": g("VOICELIVE_AGENT_VERSION", str, ""),
            "upstream_connect_timeout_s": g(
                "UPSTREAM_CONNECT_TIMEOUT_S", _parse_float, d.upstream_connect_timeout_s
            ),
            "voice_name": g("VOICE_NAME", str, ""),
            "voice_temperature": g("VOICE_TEMPERATURE", _parse_float, None),
            "voice_endpoint_id": g("VOICE_ENDPOINT_ID", str, ""),
            "voice_rate": g("VOICE_RATE", str, ""),
            "turn_detection": g("TURN_DETECTION", str, d.turn_detection).lower(),
            "vad_remove_filler_words": g(
                "VAD_REMOVE_FILLER_WORDS", _parse_bool, d.vad_remove_filler_words
            ),
            "vad_languages": g("VAD_LANGUAGES", _parse_words, d.vad_languages),
            "end_of_utterance": g("END_OF_UTTERANCE", _parse_off, "") or OFF,
            "transcription_model": g("TRANSCRIPTION_MODEL", _parse_off, None),
            "transcription_language": g("TRANSCRIPTION_LANGUAGE", str, ""),
            "transcription_phrases": g(
                "TRANSCRIPTION_PHRASES", _parse_words, d.transcription_phrases
            ),
            "noise_reduction": g("NOISE_REDUCTION", _parse_off, d.noise_reduction),
            "echo_cancellation": g("ECHO_CANCELLATION", _parse_bool, d.echo_cancellation),
            "vad_threshold": g("VAD_THRESHOLD", _parse_float, d.vad_threshold),
            "vad_prefix_padding_ms": g(
                "VAD_PREFIX_PADDING_MS", _parse_int, d.vad_prefix_padding_ms
            ),
            "vad_silence_duration_ms": g(
                "VAD_SILENCE_DURATION_MS", _parse_int, d.vad_silence_duration_ms
            ),
            "agent_instructions_file": g(
                "AGENT_INSTRUCTIONS_FILE", Path, d.agent_instructions_file
            ),
            "enable_proactive_greeting": g(
                "ENABLE_PROACTIVE_GREETING", _parse_bool, d.enable_proactive_greeting
            ),
            "caller_notice": g("CALLER_NOTICE", str, d.caller_notice),
            "upstream_degraded_after": g(
                "UPSTREAM_DEGRADED_AFTER", _parse_int, d.upstream_degraded_after
            ),
            "upstream_preflight": g("UPSTREAM_PREFLIGHT", str, d.upstream_preflight).lower(),
            "upstream_probe_s": g("UPSTREAM_PROBE_S", _parse_float, d.upstream_probe_s),
            "health_fails_when_degraded": g(
                "HEALTH_FAILS_WHEN_DEGRADED", _parse_bool, d.health_fails_when_degraded
            ),
            "tools_file": g("TOOLS_FILE", Path, d.tools_file),
            "tools_show_arguments": g("TOOLS_SHOW_ARGUMENTS", _parse_bool, d.tools_show_arguments),
            "tools_max_concurrent": g("TOOLS_MAX_CONCURRENT", _parse_int, d.tools_max_concurrent),
            "upstream_reconnect_s": g("UPSTREAM_RECONNECT_S", _parse_float, d.upstream_reconnect_s),
            "upstream_rotate_s": g("UPSTREAM_ROTATE_S", _parse_float, d.upstream_rotate_s),
            "upstream_heartbeat_s": g("UPSTREAM_HEARTBEAT_S", _parse_float, d.upstream_heartbeat_s),
            "reconnect_hold_audio_ms": g(
                "RECONNECT_HOLD_AUDIO_MS", _parse_int, d.reconnect_hold_audio_ms
            ),
            "conversation_max_chars": g(
                "CONVERSATION_MAX_CHARS", _parse_int, d.conversation_max_chars
            ),
            "app_host": g("APP_HOST", str, d.app_host),
            "app_port": g("APP_PORT", _parse_int, d.app_port),
            "static_dir": g("STATIC_DIR", Path, d.static_dir),
            "log_level": g("LOG_LEVEL", str, d.log_level).upper(),
            "log_format": g("LOG_FORMAT", str, d.log_format).lower(),
            "max_connections": g("MAX_CONNECTIONS", _parse_int, d.max_connections),
            "request_timeout_s": g("REQUEST_TIMEOUT_S", _parse_float, d.request_timeout_s),
            "tls_cert_file": g("TLS_CERT_FILE", Path, None),
            "tls_key_file": g("TLS_KEY_FILE", Path, None),
            "session_registry": g("SESSION_REGISTRY", str, d.session_registry),
            "max_sessions": g("MAX_SESSIONS", _parse_int, d.max_sessions),
            "session_max_duration_s": g(
                "SESSION_MAX_DURATION_S", _parse_float, d.session_max_duration_s
            ),
            "session_warning_s": g("SESSION_WARNING_S", _parse_float, d.session_warning_s),
            "session_idle_timeout_s": g(
                "SESSION_IDLE_TIMEOUT_S", _parse_float, d.session_idle_timeout_s
            ),
            "session_start_timeout_s": g(
                "SESSION_START_TIMEOUT_S", _parse_float, d.session_start_timeout_s
            ),
            "max_sessions_per_client": g(
                "MAX_SESSIONS_PER_CLIENT", _parse_int, d.max_sessions_per_client
            ),
            "shutdown_grace_s": g("SHUTDOWN_GRACE_S", _parse_float, d.shutdown_grace_s),
            "max_frame_bytes": g("MAX_FRAME_BYTES", _parse_int, d.max_frame_bytes),
            "client_send_buffer_ms": g(
                "CLIENT_SEND_BUFFER_MS", _parse_int, d.client_send_buffer_ms
            ),
            "client_send_timeout_s": g(
                "CLIENT_SEND_TIMEOUT_S", _parse_float, d.client_send_timeout_s
            ),
            "client_text_per_min": g("CLIENT_TEXT_PER_MIN", _parse_int, d.client_text_per_min),
            "max_audio_rate": g("MAX_AUDIO_RATE", _parse_float, d.max_audio_rate),
            "max_frames_per_s": g("MAX_FRAMES_PER_S", _parse_float, d.max_frames_per_s),
            "rate_window_s": g("RATE_WINDOW_S", _parse_float, d.rate_window_s),
            "registry_heartbeat_s": g("REGISTRY_HEARTBEAT_S", _parse_float, d.registry_heartbeat_s),
            "registry_ttl_s": g("REGISTRY_TTL_S", _parse_float, d.registry_ttl_s),
            "client_token": g("CLIENT_TOKEN", str, ""),
            "admin_token": g("ADMIN_TOKEN", str, ""),
            "allowed_origins": g("ALLOWED_ORIGINS", _parse_list, d.allowed_origins),
            "allowed_hosts": g("ALLOWED_HOSTS", _parse_hosts, d.allowed_hosts),
            "trusted_proxies": g("TRUSTED_PROXIES", _parse_networks, d.trusted_proxies),
        }
        self.apply_model_defaults(values)
        self.validate(values)
        # Imported here: voicebridge.calls.settings imports this module.
        from voicebridge.calls.settings import VARIABLES
        from voicebridge.calls.settings import parse as parse_calls

        values["calls"], call_problems = parse_calls(self.env)
        self.problems.extend(call_problems)
        self.read.update(VARIABLES)
        from voicebridge.phone.settings import VARIABLES as PHONE_VARIABLES
        from voicebridge.phone.settings import parse as parse_phone

        values["phone"], phone_problems = parse_phone(self.env)
        self.problems.extend(phone_problems)
        self.read.update(PHONE_VARIABLES)
        settings = Settings(**values)
        self.problems.extend(settings.voicelive_findings()[0])
        if self.problems:
            raise ConfigError(self.problems)
        return settings

    def validate_tls(self, cert: Path | None, key: Path | None) -> None:
        """Both files or neither, each readable, and a certificate that goes with the key."""
        if (cert is None) != (key is None):
            given, missing = (
                ("TLS_CERT_FILE", "TLS_KEY_FILE")
                if key is None
                else (
                    "TLS_KEY_FILE",
                    "TLS_CERT_FILE",
                )
            )
            self.problems.append(f"{missing}: required with {given} (HTTPS needs both files)")
            return
        if cert is None or key is None:
            return
        import ssl

        for name, path in (("TLS_CERT_FILE", cert), ("TLS_KEY_FILE", key)):
            if not path.is_file():
                self.problems.append(f"{name}: no such file: {shown_path(path)}")
                return
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            # The message names no key material, only what is wrong with the pair.
            mismatch = getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH"
            why = (
                "the private key does not belong to the certificate"
                if mismatch
                else "they are not a PEM certificate and its PEM private key"
            )
            self.problems.append(
                f"TLS_CERT_FILE / TLS_KEY_FILE: {shown_path(cert)}, {shown_path(key)}: {why}"
            )

    def apply_model_defaults(self, v: dict[str, Any]) -> None:
        """Voice and transcription model not set: those the model (or agent) takes."""
        agent = bool(v["voicelive_agent_name"])
        model = None if agent else v["azure_openai_deployment"] or DEFAULT_EMULATOR_MODEL
        family = voicelive.model_family(model, agent=agent)
        if not v["voice_name"]:
            v["voice_name"] = voicelive.DEFAULT_VOICE[family]
        if v["transcription_model"] is None:
            v["transcription_model"] = voicelive.DEFAULT_TRANSCRIPTION[family]

    def validate(self, v: dict[str, Any]) -> None:
        c = self.check
        c(
            v["voicelive_backend"] in {"azure", "emulator"},
            f"VOICELIVE_BACKEND: must be 'azure' or 'emulator', got {v['voicelive_backend']!r}",
        )
        if v["voicelive_backend"] == "azure":
            c(
                bool(v["azure_openai_endpoint"]),
                "AZURE_OPENAI_ENDPOINT: required when the backend is azure",
            )
            if v["azure_auth"] == "key":
                # Only when AZURE_AUTH=key is explicit: without a key, entra is the default.
                c(bool(v["azure_openai_key"]), "AZURE_OPENAI_KEY: required with AZURE_AUTH=key")
            elif importlib.util.find_spec("azure.identity") is None:
                why = "AZURE_AUTH is entra" if self.given("AZURE_AUTH") else "no API key is set"
                self.problems.append(
                    f"AZURE_AUTH: {why}, so Microsoft Entra ID is used, which needs the "
                    "azure-identity package: pip install 'voicebridge[entra]' (or set "
                    "AZURE_OPENAI_KEY)"
                )
            if not v["voicelive_agent_name"]:
                c(
                    bool(v["azure_openai_deployment"]),
                    "AZURE_OPENAI_DEPLOYMENT: required when the backend is azure (the Voice "
                    "Live model, e.g. gpt-realtime), unless VOICELIVE_AGENT_NAME names an agent",
                )
            endpoint = v["azure_openai_endpoint"]
            if endpoint:
                parts = urlsplit(endpoint)
                c(
                    parts.scheme in {"http", "https", "ws", "wss"} and bool(parts.netloc),
                    "AZURE_OPENAI_ENDPOINT: must be an http(s) or ws(s) URL such as "
                    "https://my-resource.services.ai.azure.com",
                )
        c(
            v["upstream_preflight"] in PREFLIGHT_MODES,
            f"UPSTREAM_PREFLIGHT: must be one of {', '.join(PREFLIGHT_MODES)}, "
            f"got {v['upstream_preflight']!r}",
        )
        c(v["upstream_probe_s"] >= 0, "UPSTREAM_PROBE_S: must be 0 (off) or more")
        c(
            v["upstream_probe_s"] > 0 or not v["health_fails_when_degraded"],
            "UPSTREAM_PROBE_S: must be more than 0 with HEALTH_FAILS_WHEN_DEGRADED=true (a "
            "degraded instance refuses calls, so only the probe can find the service back)",
        )
        c(0.0 <= v["vad_threshold"] <= 1.0, "VAD_THRESHOLD: must be between 0 and 1")
        c(v["vad_prefix_padding_ms"] >= 0, "VAD_PREFIX_PADDING_MS: must be 0 or more")
        c(v["vad_silence_duration_ms"] > 0, "VAD_SILENCE_DURATION_MS: must be more than 0")
        c(1 <= v["app_port"] <= 65535, f"APP_PORT: must be 1..65535, got {v['app_port']}")
        self.validate_tls(v["tls_cert_file"], v["tls_key_file"])
        c(v["log_level"] in LOG_LEVELS, f"LOG_LEVEL: must be one of {', '.join(LOG_LEVELS)}")
        c(v["log_format"] in {"console", "json"}, "LOG_FORMAT: must be 'console' or 'json'")
        c(bool(v["voice_name"].strip()), "VOICE_NAME: must not be empty")
        self.validate_voicelive(v)
        instructions: Path = v["agent_instructions_file"]
        try:
            instructions.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.problems.append(
                f"AGENT_INSTRUCTIONS_FILE: cannot read {shown_path(instructions)}: {reason}"
            )
        tools_file: Path | None = v["tools_file"]
        if tools_file is not None:
            # What the file defines is checked by voicebridge.tools.load_toolbox; here only
            # that there is a file to read.
            try:
                tools_file.read_bytes()
            except OSError as exc:
                self.problems.append(
                    f"TOOLS_FILE: cannot read {shown_path(tools_file)}: {exc.strerror or exc}"
                )
        c(
            1 <= v["tools_max_concurrent"] <= MAX_TOOLS_CONCURRENT,
            f"TOOLS_MAX_CONCURRENT: must be 1..{MAX_TOOLS_CONCURRENT}",
        )
        registry = v["session_registry"]
        c(
            registry == "memory" or registry.startswith(("redis://", "rediss://")),
            "SESSION_REGISTRY: must be 'memory' or a redis:// URL",
        )
        for name, key in (
            ("MAX_SESSIONS", "max_sessions"),
            ("MAX_FRAME_BYTES", "max_frame_bytes"),
            ("CLIENT_SEND_BUFFER_MS", "client_send_buffer_ms"),
            ("CLIENT_TEXT_PER_MIN", "client_text_per_min"),
            ("UPSTREAM_DEGRADED_AFTER", "upstream_degraded_after"),
            ("MAX_CONNECTIONS", "max_connections"),
        ):
            c(v[key] > 0, f"{name}: must be more than 0")
        for name, key in (
            ("SESSION_MAX_DURATION_S", "session_max_duration_s"),
            ("SESSION_IDLE_TIMEOUT_S", "session_idle_timeout_s"),
            ("UPSTREAM_CONNECT_TIMEOUT_S", "upstream_connect_timeout_s"),
            ("MAX_AUDIO_RATE", "max_audio_rate"),
            ("RATE_WINDOW_S", "rate_window_s"),
            ("CLIENT_SEND_TIMEOUT_S", "client_send_timeout_s"),
            ("REGISTRY_HEARTBEAT_S", "registry_heartbeat_s"),
            ("REGISTRY_TTL_S", "registry_ttl_s"),
            ("MAX_FRAMES_PER_S", "max_frames_per_s"),
            ("SESSION_START_TIMEOUT_S", "session_start_timeout_s"),
            ("UPSTREAM_HEARTBEAT_S", "upstream_heartbeat_s"),
            ("REQUEST_TIMEOUT_S", "request_timeout_s"),
        ):
            c(v[key] > 0, f"{name}: must be more than 0")
        for name, key in (
            ("SHUTDOWN_GRACE_S", "shutdown_grace_s"),
            ("SESSION_WARNING_S", "session_warning_s"),
            ("UPSTREAM_RECONNECT_S", "upstream_reconnect_s"),
            ("UPSTREAM_ROTATE_S", "upstream_rotate_s"),
            ("RECONNECT_HOLD_AUDIO_MS", "reconnect_hold_audio_ms"),
            ("CONVERSATION_MAX_CHARS", "conversation_max_chars"),
            ("MAX_SESSIONS_PER_CLIENT", "max_sessions_per_client"),
        ):
            c(v[key] >= 0, f"{name}: must be 0 or more")
        c(
            len(v["caller_notice"]) <= CALLER_NOTICE_MAX_CHARS,
            f"CALLER_NOTICE: must be at most {CALLER_NOTICE_MAX_CHARS} characters",
        )

        c(
            v["registry_ttl_s"] > v["registry_heartbeat_s"],
            "REGISTRY_TTL_S: must be longer than REGISTRY_HEARTBEAT_S",
        )
        c(
            v["max_frame_bytes"] <= 4 * 1024 * 1024,
            "MAX_FRAME_BYTES: must be at most 4194304 (4 MiB)",
        )

    def validate_voicelive(self, v: dict[str, Any]) -> None:
        """The new Voice Live settings one by one; their combinations are checked against
        voicebridge.voicelive.RULES once the settings are built."""
        c = self.check
        agent = v["voicelive_agent_name"]
        if agent:
            c(
                bool(v["voicelive_agent_project"]),
                "VOICELIVE_AGENT_PROJECT: required with VOICELIVE_AGENT_NAME (the Foundry "
                "project that holds the agent; the SDK's connect() requires both)",
            )
        else:
            for name in ("VOICELIVE_AGENT_PROJECT", "VOICELIVE_AGENT_VERSION"):
                c(not self.given(name), f"{name}: set without VOICELIVE_AGENT_NAME")
        c(
            v["turn_detection"] != "none",
            "TURN_DETECTION: none is not offered: the relay relies on the service to detect "
            "the caller's turns",
        )
        if v["transcription_model"] == "":
            for name in ("TRANSCRIPTION_LANGUAGE", "TRANSCRIPTION_PHRASES"):
                c(not self.given(name), f"{name}: set while TRANSCRIPTION_MODEL is off")
        if v["voice_endpoint_id"]:
            c(
                v["voice_name"] not in OPENAI_VOICES,
                "VOICE_ENDPOINT_ID: names a custom voice deployment; VOICE_NAME must be that "
                f"custom voice, not the OpenAI voice {v['voice_name']!r}",
            )


_AZURE_VARS = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_KEY", "AZURE_OPENAI_DEPLOYMENT")
#: The SDK samples' names for the seed settings, accepted as aliases.
_ALIASES = {
    "AZURE_OPENAI_ENDPOINT": "AZURE_VOICELIVE_ENDPOINT",
    "AZURE_OPENAI_KEY": "AZURE_VOICELIVE_API_KEY",
    "AZURE_OPENAI_DEPLOYMENT": "AZURE_VOICELIVE_MODEL",
}


def _call_settings_default() -> CallSettings:
    from voicebridge.calls.settings import CallSettings

    return CallSettings()


def _phone_settings_default() -> PhoneSettings:
    from voicebridge.phone.settings import PhoneSettings

    return PhoneSettings()


#: Settings read by other parts than :class:`Settings` (so they are not "unknown").
OTHER_SETTINGS: set[str] = set()


def known_settings() -> frozenset[str]:
    """Every setting name voicebridge reads."""
    loader = _Loader({})
    with contextlib.suppress(ConfigError):
        loader.load()
    return frozenset(loader.read | OTHER_SETTINGS)


def unknown_settings(env_file_keys: Iterable[str], environ: Mapping[str, str]) -> list[str]:
    """Warnings for names that look like settings but are none: every key of the ``.env``
    file, and environment variables that share a known setting's first word (AZURE_,
    VAD_, LOG_, ...). Each names the closest known setting when there is one."""
    known = known_settings()
    candidates = set(env_file_keys) | {
        name
        for name in environ
        if name.startswith(_OWN_PREFIXES)
        or difflib.get_close_matches(name, known, n=1, cutoff=0.85)
    }
    warnings = []
    for name in sorted(candidates - known):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
        hint = f"; did you mean {close[0]}?" if close else ""
        warnings.append(f"{name} is not a voicebridge setting and is ignored{hint}")
    return warnings


# Environment variables with these prefixes are taken to be meant for voicebridge; other
# names are checked only when they are one typo away from a setting (so SESSION_MANAGER
# or APPDATA in a desktop environment are left alone).
_OWN_PREFIXES = (
    "AZURE_",
    "VOICELIVE_",
    "VAD_",
    "UPSTREAM_",
    "TRANSCRIPTION_",
    "CALL_",
    "TOOLS_",
    "TLS_",
    "TWILIO_",
    "PHONE_",
    "DTMF_",
    "ACS_",
)


def load_settings(
    environ: Mapping[str, str] | None = None, env_file: str | os.PathLike[str] | None = ".env"
) -> Settings:
    """Settings from a ``.env`` file overlaid by the environment (the environment wins)."""
    merged: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        merged.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    merged.update(os.environ if environ is None else environ)
    return Settings.from_environ(merged)
