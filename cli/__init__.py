"""Illustrator command line.

``illustrator serve`` runs the server; ``illustrator process FILE`` illustrates a
manuscript in-process (Ctrl-C pauses; running it again resumes); ``watch``,
``manuscripts list`` and ``sessions show|pause|resume|cancel|delete`` drive a running
server; ``sessions list|verify|repair|dump|restore`` work on the stored records.
"""

from __future__ import annotations

import argparse
import logging
import sys

from cli import process, records, remote, serve, watch
from cli.terminal import configure_logging
from config import DEFAULT_CONFIG_PATH, load_config
from errors import ConfigError, IllustratorError

__all__ = ["build_parser", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``illustrator`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    # A server's log is its operation record (INFO); elsewhere INFO would crowd the
    # progress bar and the command's own output.
    configure_logging(
        args.verbose, default=logging.INFO if args.command == "serve" else logging.WARNING
    )
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"illustrator: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        code = args.handler(config, args)
    except IllustratorError as exc:
        print(f"illustrator: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code or 0)


def build_parser() -> argparse.ArgumentParser:
    """Every command and option of ``illustrator``."""
    parser = argparse.ArgumentParser(prog="illustrator", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"configuration file (default: {DEFAULT_CONFIG_PATH}); ILLUSTRATOR_<SECTION>_<KEY>"
        " environment variables override it",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log lines on stderr: -v INFO, -vv DEBUG (default: warnings only;"
        " `serve` logs INFO, -v DEBUG)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve.register(commands)
    process.register(commands)
    watch.register(commands)
    remote.register_manuscripts(commands)

    sessions = commands.add_parser(
        "sessions", help="stored sessions, and sessions of the running server"
    )
    sessions_commands = sessions.add_subparsers(dest="sessions_command", required=True)
    records.register(sessions_commands)
    remote.register_session_controls(sessions_commands)

    import loadtest

    load = commands.add_parser("loadtest", help="load-test a local server over REST and WebSockets")
    loadtest.add_arguments(load)
    load.set_defaults(handler=lambda config, args: loadtest.run(args))
    return parser
