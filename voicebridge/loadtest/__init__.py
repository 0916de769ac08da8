"""Load generator: N simulated real-time voice clients against voicebridge or Voice Live.

Each simulated client streams PCM16 24 kHz mono audio at real-time pace, either through the
bridge (``/ws/voice``, one binary frame per chunk) or, with ``--direct``, straight to a Voice
Live endpoint such as the emulator (JSON ``input_audio_buffer.append`` events). It expects
every chunk back: the emulator's mirror mode answers each append with one
``response.audio.delta`` carrying the same bytes, which the bridge relays as one binary frame.
Only loopback targets are accepted.

- ``ws``: a minimal RFC 6455 client on ``asyncio.Protocol`` (handshake, framing);
  ``deflate``: permessage-deflate for it (RFC 7692), offered with ``--offer-deflate``.
- ``client``: one simulated caller: session start, paced chunks, replies decoded.
- ``accounting``: each chunk's stamp; frames sent, back, lost, reordered; time samples.
- ``monitor``: CPU and RSS of the server (``--server-pid``) and of the generator, via psutil.
- ``report``: the ``Report``, its percentiles, its text and JSON forms.
- ``speech``: utterances spoken by espeak-ng (sox converts them) when a run starts;
  ``caller``: one caller of the conversation scenario; ``calls``: its accounting (turns,
  answers, response latency, barge-ins, the echo check).
- ``options``: ``LoadTestConfig`` and the command-line flags; ``runner``: the run and
  ``main`` (with ``--url`` and ``--direct`` together, both, side by side).
- ``phone``: fake phone providers (``TwilioCall``, ``AcsCall``; their common part in
  ``phone_call``), real WebSocket clients speaking Twilio Media Streams and ACS audio
  streaming, with ``playback`` (the provider's playback buffer: marks, clear) and
  ``phone_audio`` (audio in each channel's format, prepared once); ``phone_run``: the
  run of ``--channel twilio|acs``.
- ``capacity`` and ``plots``: what ``make bench`` (:mod:`voicebridge.bench`) makes of the
  reports: steps, the knee (sessions per core), the targets, the page and its pictures.

Two scenarios (``--scenario``): *mirror*, above; and *conversation*, where each caller
speaks real sentences in real time with pauses, the emulator runs as it normally does
(voice activity detection, an answer echoing each turn in real time, 100 ms deltas) and
a share of callers barge in; it reports the response latency, the barge-in reaction and
the answers that came back damaged. With ``--channel twilio`` or ``--channel acs`` the
callers of the conversation are phone calls placed as those providers place them.
"""

from voicebridge.loadtest.accounting import HEADER, make_body
from voicebridge.loadtest.options import (
    LoadTestConfig,
    TargetError,
    add_loadtest_arguments,
    check_loopback,
    config_from_args,
    configs_from_args,
)
from voicebridge.loadtest.report import Report, added_by_bridge, format_report, percentile
from voicebridge.loadtest.runner import cli, main, run

__all__ = [
    "HEADER",
    "LoadTestConfig",
    "Report",
    "TargetError",
    "add_loadtest_arguments",
    "added_by_bridge",
    "check_loopback",
    "cli",
    "config_from_args",
    "configs_from_args",
    "format_report",
    "main",
    "make_body",
    "percentile",
    "run",
]
