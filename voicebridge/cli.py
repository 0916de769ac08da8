"""Command line: ``serve``, ``emulator`` and ``loadtest``. It parses and hands over."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog
from dotenv import dotenv_values

from voicebridge import __version__
from voicebridge.config import ConfigError, load_settings, unknown_settings
from voicebridge.logs import configure_logging, stop_logging

EXIT_CONFIG = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m voicebridge",
        description="Real-time speech-to-speech relay to Azure AI Voice Live.",
    )
    parser.add_argument("--version", action="version", version=f"voicebridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the server (settings from the environment and .env)")
    serve.add_argument("--env-file", default=".env", help="dotenv file to read (default: .env)")

    emulator = sub.add_parser("emulator", help="run the local Voice Live emulator alone")
    from voicebridge.emulator import add_emulator_arguments

    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    add_emulator_arguments(emulator)
    emulator.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")

    loadtest = sub.add_parser("loadtest", help="simulate N real-time voice clients")
    from voicebridge.loadtest import add_loadtest_arguments

    add_loadtest_arguments(loadtest)
    return parser


def _use_uvloop() -> None:
    """Run on uvloop where it is installed: the relay's cost is mostly event-loop and
    socket work, which uvloop roughly halves."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command in {"serve", "emulator"}:
        _use_uvloop()
    if args.command == "serve":
        return _serve(args.env_file)
    if args.command == "emulator":
        from voicebridge.emulator import options_from_args, run_emulator

        configure_logging(args.log_level.upper(), "console")
        try:
            run_emulator(options_from_args(args), args.host, args.port)
        finally:
            stop_logging()
        return 0
    from voicebridge import loadtest

    return loadtest.main(args)


def _serve(env_file: str) -> int:
    try:
        settings = load_settings(env_file=env_file)
    except ConfigError as exc:
        print(f"voicebridge: {exc}", file=sys.stderr)
        print("See config/example.env for every setting and its default.", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(settings.log_level, settings.log_format)
    log = structlog.get_logger("voicebridge")
    log.info("app.settings", version=__version__, **settings.redacted())
    file_keys = list(dotenv_values(env_file)) if Path(env_file).is_file() else []
    for warning in unknown_settings(file_keys, os.environ):
        log.warning("app.unknown_setting", note=warning)
    from voicebridge.app import PortInUse, serve

    try:
        asyncio.run(serve(settings))
    except PortInUse as exc:
        stop_logging()
        print(f"voicebridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ConfigError as exc:  # the tools file, read as the app starts
        stop_logging()
        print(f"voicebridge: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    finally:
        stop_logging()  # the last lines (app.stopped) are written before the process exits
    return 0
