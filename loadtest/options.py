"""The options of ``illustrator loadtest`` and their checks (loopback servers only)."""

from __future__ import annotations

import argparse
import ipaddress
import os
from pathlib import Path
from urllib.parse import urlsplit

MAX_SESSIONS, MAX_DURATION = 2000, 3600.0
TOKEN_ENV = "ILLUSTRATOR_TOKEN"


class LoadTestError(Exception):
    """A refused option or an unreachable server (exit code 2)."""


def loopback_base(url: str) -> str:
    """``scheme://host:port`` of a loopback URL; LoadTestError for anything else."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https") or not host:
        raise LoadTestError(f"--url must be http(s)://host:port, got {url!r}")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise LoadTestError(
            f"refusing to load {host!r}: only loopback servers (127.0.0.0/8, ::1, localhost) "
            "may be load-tested"
        )
    return f"{parts.scheme}://{parts.netloc}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``loadtest`` options (the CLI registers the subcommand)."""
    parser.add_argument(
        "--url",
        default="http://127.0.0.1:8080",
        help="a loopback server (default: %(default)s)",
    )
    parser.add_argument(
        "--sessions", type=int, default=10, help=f"sessions, 1..{MAX_SESSIONS} (default: 10)"
    )
    parser.add_argument(
        "--chapters", type=int, default=2, help="chapters per manuscript, 1..50 (default: 2)"
    )
    parser.add_argument(
        "--moments", type=int, default=2, help="max_emotional_moments, 1..20 (default: 2)"
    )
    parser.add_argument(
        "--provider-latency",
        type=int,
        default=0,
        metavar="MS",
        help="the provider latency the server runs with"
        " (ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS; default: 0)",
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=300.0,
        help=f"seconds at most, up to {MAX_DURATION:.0f} (default: 300)",
    )
    parser.add_argument(
        "--pause-share",
        type=float,
        default=0.2,
        help="share of the sessions paused and resumed, 0..1 (default: 0.2)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("loadtest-report.json"),
        help="JSON report; the PNG plot goes next to it (default: ./loadtest-report.json)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV, ""),
        help=f"bearer token if the server wants one (default: ${TOKEN_ENV}, else none)",
    )
    parser.add_argument(
        "--cleanup",
        action="store_true",
        help="at the end, delete the sessions and manuscripts the run created, with their"
        " files (default: off: they stay for inspection)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar (default: off)")


def check_options(args: argparse.Namespace) -> str:
    """The server's base URL, once every option is in range; LoadTestError otherwise."""
    base = loopback_base(args.url)
    if not 1 <= args.sessions <= MAX_SESSIONS or not 1 <= args.chapters <= 50:
        raise LoadTestError(f"need 1 <= --sessions <= {MAX_SESSIONS} and 1 <= --chapters <= 50")
    if not 1 <= args.moments <= 20 or not 0 < args.duration <= MAX_DURATION:
        raise LoadTestError(f"need 1 <= --moments <= 20 and 0 < --duration <= {MAX_DURATION:.0f}")
    if not 0 <= args.pause_share <= 1 or args.provider_latency < 0:
        raise LoadTestError("need 0 <= --pause-share <= 1 and --provider-latency >= 0")
    return base
