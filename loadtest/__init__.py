"""``illustrator loadtest``: drive a LOCAL server with N sessions over its REST and WebSocket API.

It creates one manuscript per session, starts the sessions (``POST /api/process``), follows
each on ``/ws/processing/{id}?after=0``, pauses and resumes a share of them, and stops when
all are done or ``--duration`` passes. It reports sessions completed, checkpoints/s (from
the server's ``illustrator_persistence_checkpoints_total``), checkpoint ack latency
p50/p95/p99 (the server's ``/metrics`` histogram, interpolated within its buckets), event
delivery latency (frame ``timestamp`` vs receive time: same machine, same clock) and errors;
then checks integrity through the REST API (checkpoints gap-free from 1, every image listed
and fetchable as a PNG) and, with ``--cleanup``, deletes the sessions and manuscripts it
created. It writes a JSON report and a PNG plot side by side, prints the figures, the
integrity result and one ``PASS`` or ``FAIL`` line (exit code 0 only on PASS).

Provider latency is a property of the SERVER: start it with
``ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS=MS illustrator serve`` and pass the same
``--provider-latency MS`` here. The harness cannot read the setting back (no endpoint
exposes configuration); it measures the analysis step (``step 0 processing`` ->
``completed`` timestamps, which wrap one provider call) and warns when that is shorter
than the declared latency.

Only loopback URLs are accepted (127.0.0.0/8, ::1, localhost): this is not a tool to load
anyone else's server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from loadtest.harness import run_async
from loadtest.options import LoadTestError, add_arguments, check_options, loopback_base

__all__ = [
    "LoadTestError",
    "add_arguments",
    "check_options",
    "loopback_base",
    "main",
    "run",
    "run_async",
]


def run(args: argparse.Namespace) -> int:
    """Run from parsed arguments; 0 when the verdict is PASS, 1 on FAIL, 2 when refused."""
    try:
        report = asyncio.run(run_async(args))
    except LoadTestError as exc:
        print(f"illustrator loadtest: {exc}", file=sys.stderr)
        return 2
    shown = ("sessions", "checkpoints", "ack_latency_ms", "event_delivery_ms", "errors")
    print(json.dumps({k: report[k] for k in shown}, indent=1, default=str)[:4000])
    integrity = report["integrity"]
    print(
        f"integrity: {'ok' if integrity['ok'] else 'FAILED'}: {integrity['sessions_checked']}"
        f" sessions, {integrity['checkpoints']} checkpoints, {integrity['images_fetched']}/"
        f"{integrity['images_listed']} images fetched, {integrity['problem_count']} problems"
    )
    for problem in integrity["problems"][:10]:
        print(f"  - {problem}")
    cleanup = report["cleanup"]
    if cleanup is not None:
        print(
            f"cleanup: {cleanup['sessions_deleted']} sessions and"
            f" {cleanup['manuscripts_deleted']} manuscripts deleted,"
            f" {len(cleanup['problems'])} problems"
        )
    print(f"report {report['report_json']}, plot {report['report_png']}")
    verdict = report["verdict"]
    print("PASS" if verdict["pass"] else f"FAIL: {'; '.join(verdict['reasons'])}")
    return 0 if verdict["pass"] else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest`` without the rest of the CLI."""
    parser = argparse.ArgumentParser(
        prog="illustrator loadtest", description=__doc__.splitlines()[0] if __doc__ else None
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
