"""Settings of the local Voice Live emulator, and the command-line flags that build them.

`EmulatorOptions` is a frozen value: a running emulator can swap it for another one
(`RunningEmulator.set_options`) so a test can switch fault injection on and off without a
restart. Options that shape a connection as a whole (`close_after_s`,
`close_after_events`) are read once when the connection opens; everything else is read
each time it is needed, so a change applies to the next audio frame or response.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable

import attrs

DEFAULT_API_KEY = "emulator-key"
RESPONSE_OUTCOMES = ("completed", "failed", "incomplete")
#: ResponseIncompleteDetails.reason (reference 2026-07-15; SDK models).
INCOMPLETE_REASONS = ("content_filter", "max_output_tokens")


def _strings(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(values)


def _non_negative(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value!r}")


def _optional_positive_float(
    _instance: object, attribute: attrs.Attribute[float | None], value: float | None
) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 when set, got {value!r}")


def _optional_positive_int(
    _instance: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value <= 0:
        raise ValueError(f"{attribute.name} must be > 0 when set, got {value!r}")


def _positive_float(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


def _positive_int(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value!r}")


@attrs.frozen
class EmulatorOptions:
    """How the emulator behaves: credentials, pacing and fault injection."""

    #: The key clients must present (`api-key` header, or `Authorization: Bearer <key>`).
    api_key: str = attrs.field(default=DEFAULT_API_KEY, repr=False)
    #: Microsoft Entra ID tokens accepted as `Authorization: Bearer <token>`, as the service
    #: accepts a token its identity platform issued (the emulator cannot check one).
    bearer_tokens: tuple[str, ...] = attrs.field(default=(), converter=_strings, repr=False)
    #: Pace response audio in real time; False sends it as fast as the socket takes it.
    realtime: bool = True
    #: Benchmark mode: every `input_audio_buffer.append` is answered at once by one
    #: `response.audio.delta` carrying the same base64 audio; no VAD and no responses.
    mirror: bool = False
    #: Reject every WebSocket handshake with HTTP 503.
    refuse_connections: bool = False
    #: Drop each connection (TCP abort, no close frame) this many seconds after it opens.
    close_after_s: float | None = attrs.field(default=None, validator=_optional_positive_float)
    #: Drop each connection (TCP abort, no close frame) after sending this many events.
    close_after_events: int | None = attrs.field(default=None, validator=_optional_positive_int)
    #: Wait this long before the first `response.audio.delta` of every response.
    first_audio_delay_s: float = attrs.field(default=0.0, validator=_non_negative)
    #: Send a `server_error` `error` event halfway through every response's audio.
    error_mid_response: bool = False
    #: Duration of the audio carried by each `response.audio.delta`.
    chunk_ms: int = attrs.field(default=100, validator=_positive_int)
    #: The service's cap on one connection: `expires_at` in `session.created`, and at the cap
    #: an `error` with code `session_expired`, then close 1001 (the real cap is about 30
    #: minutes for realtime models; Voice Live API reference, "session.created").
    session_cap_s: float | None = attrs.field(default=None, validator=_optional_positive_float)
    #: Longest utterance (or manually buffered audio) kept in memory; a longer turn is
    #: ended by the server as if the speaker had paused.
    max_utterance_s: float = attrs.field(default=30.0, validator=_positive_float)
    #: Input transcription runs asynchronously with the response (reference 2026-07-15,
    #: conversation.item.input_audio_transcription.completed: "this event can come before
    #: or after the response events"). False: before response.created; True: after it.
    transcription_after_response: bool = False
    #: Every input transcription fails (`...input_audio_transcription.failed`).
    fail_transcription: bool = False
    #: How every response ends: completed; failed (no audio, `status_details.error`); or
    #: incomplete (half the audio, then `status_details.reason`: `incomplete_reason`).
    response_outcome: str = attrs.field(
        default="completed", validator=attrs.validators.in_(RESPONSE_OUTCOMES)
    )
    incomplete_reason: str = attrs.field(
        default="content_filter", validator=attrs.validators.in_(INCOMPLETE_REASONS)
    )
    #: Send a `warning` event with this message after every session.updated.
    session_warning: str | None = None
    #: After every spoken turn, call this tool instead of echoing the turn: a tool's name,
    #: optionally followed by its JSON arguments (``find_product {"name": "headset"}``),
    #: as a typed message would ask for it. Only when the session's tools include it.
    call_tool_after_speech: str | None = None


def add_emulator_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags (`--api-key`, fault injection, pacing) to `parser`."""
    parser.add_argument(
        "--api-key",
        default=DEFAULT_API_KEY,
        help="key clients must send in the api-key header (default: %(default)s)",
    )
    parser.add_argument(
        "--fast",
        action="store_true",
        help="send response audio as fast as possible instead of in real time",
    )
    parser.add_argument(
        "--mirror",
        action="store_true",
        help="benchmark mode: echo every appended audio frame at once as one audio delta",
    )
    parser.add_argument(
        "--refuse", action="store_true", help="reject every connection with HTTP 503"
    )
    parser.add_argument(
        "--close-after-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="drop every connection abruptly this many seconds after it opens",
    )
    parser.add_argument(
        "--close-after-events",
        type=int,
        default=None,
        metavar="N",
        help="drop every connection abruptly after sending N events",
    )
    parser.add_argument(
        "--session-cap-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="expire every connection this long after it opens (session_expired, close 1001)",
    )
    parser.add_argument(
        "--first-audio-delay-s",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="delay before the first audio delta of each response (default: 0)",
    )
    parser.add_argument(
        "--error-mid-response",
        action="store_true",
        help="send an error event halfway through each response's audio",
    )
    parser.add_argument(
        "--chunk-ms",
        type=int,
        default=100,
        metavar="MS",
        help="audio carried by each response.audio.delta (default: %(default)s)",
    )
    parser.add_argument(
        "--bearer-token",
        action="append",
        default=[],
        metavar="TOKEN",
        help="accept this Microsoft Entra token as Authorization: Bearer (repeatable)",
    )
    parser.add_argument(
        "--transcription-after-response",
        action="store_true",
        help="send input transcriptions after response.created instead of before it",
    )
    parser.add_argument(
        "--fail-transcription",
        action="store_true",
        help="fail every input transcription (input_audio_transcription.failed)",
    )
    parser.add_argument(
        "--response-outcome",
        choices=RESPONSE_OUTCOMES,
        default="completed",
        help="how every response ends (default: %(default)s)",
    )
    parser.add_argument(
        "--incomplete-reason",
        choices=INCOMPLETE_REASONS,
        default="content_filter",
        help="status_details.reason of incomplete responses (default: %(default)s)",
    )
    parser.add_argument(
        "--session-warning",
        default=None,
        metavar="MESSAGE",
        help="send a warning event with this message after every session.updated",
    )
    parser.add_argument(
        "--call-tool-after-speech",
        default=None,
        metavar="TOOL",
        help="after every spoken turn call this tool (a name, then optional JSON arguments, "
        'e.g. \'find_product {"name": "headset"}\') instead of echoing the turn',
    )


def options_from_args(args: argparse.Namespace) -> EmulatorOptions:
    """Build `EmulatorOptions` from flags added by `add_emulator_arguments`.

    Raises ValueError (with the flag's meaning in the message) for out-of-range values.
    """
    return EmulatorOptions(
        api_key=args.api_key,
        realtime=not args.fast,
        mirror=args.mirror,
        refuse_connections=args.refuse,
        close_after_s=args.close_after_s,
        close_after_events=args.close_after_events,
        session_cap_s=args.session_cap_s,
        first_audio_delay_s=args.first_audio_delay_s,
        error_mid_response=args.error_mid_response,
        chunk_ms=args.chunk_ms,
        bearer_tokens=tuple(args.bearer_token),
        transcription_after_response=args.transcription_after_response,
        fail_transcription=args.fail_transcription,
        response_outcome=args.response_outcome,
        incomplete_reason=args.incomplete_reason,
        session_warning=args.session_warning,
        call_tool_after_speech=args.call_tool_after_speech,
    )
