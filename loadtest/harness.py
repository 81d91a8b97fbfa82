"""``illustrator loadtest``: drive a LOCAL server with N sessions over its REST and WebSocket API.

It creates one manuscript per session, starts the sessions (``POST /api/process``), follows
each on ``/ws/processing/{id}?after=0``, pauses and resumes a share of them, and stops when
all are done or ``--duration`` passes. It reports sessions completed, checkpoints/s (from
the server's ``illustrator_persistence_checkpoints_total``), checkpoint ack latency
p50/p95/p99 (the server's ``/metrics`` histogram, interpolated within its buckets), event
delivery latency (frame ``timestamp`` vs receive time: same machine, same clock) and errors;
then checks integrity through the REST API (checkpoints gap-free from 1, every image listed
and fetchable as a PNG). It writes a JSON report and a PNG plot side by side.

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
import contextlib
import ipaddress
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

import loadtest_report as lr

MAX_SESSIONS, MAX_DURATION, SCRAPE_SECONDS = 2000, 3600.0, 0.5
TEXT = (
    "The storm broke over the dark castle and Mara screamed in terror. Later, in the quiet "
    "garden, she laughed with joy and hope beside Tomas. A strange shadow moved in the "
    "forest; the mystery deepened and fear returned. "
) * 3
FINAL = {"completed", "failed", "cancelled"}


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
    """The ``loadtest`` options (cli.py registers the subcommand)."""
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="a loopback server")
    parser.add_argument("--sessions", type=int, default=10, help=f"1..{MAX_SESSIONS}")
    parser.add_argument("--chapters", type=int, default=2, help="chapters per manuscript")
    parser.add_argument("--moments", type=int, default=2, help="max_emotional_moments (1..20)")
    parser.add_argument(
        "--provider-latency",
        type=int,
        default=0,
        metavar="MS",
        help="what the server runs with (ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS)",
    )
    parser.add_argument("--duration", type=float, default=300.0, help="seconds at most")
    parser.add_argument("--pause-share", type=float, default=0.2, help="share paused+resumed")
    parser.add_argument(
        "--report",
        type=Path,
        default=Path("loadtest-report.json"),
        help="JSON report; the PNG goes next to it",
    )
    parser.add_argument("--token", default="", help="bearer token if the server wants one")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run from parsed arguments; 0 when every session completed and verified."""
    try:
        report = asyncio.run(run_async(args))
    except LoadTestError as exc:
        print(f"illustrator loadtest: {exc}", file=sys.stderr)
        return 2
    s, integrity = report["sessions"], report["integrity"]
    print(
        json.dumps(
            {
                k: report[k]
                for k in (
                    "sessions",
                    "checkpoints",
                    "ack_latency_ms",
                    "event_delivery_ms",
                    "errors",
                )
            },
            indent=1,
            default=str,
        )[:4000]
    )
    print(f"report {report['report_json']}, plot {report['report_png']}")
    ok = s["completed"] == s["requested"] and integrity["ok"] and not report["errors"]["count"]
    return 0 if ok else 1


@dataclass
class Tracker:
    """What the drivers observed."""

    started: float = field(default_factory=time.monotonic)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    delivery: list[tuple[float, float]] = field(default_factory=list)
    analyze_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scrapes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors.append(text[:300])

    def count(self, status: str) -> int:
        return sum(1 for s in self.sessions.values() if s["status"] == status)


def _check_options(args: argparse.Namespace) -> str:
    base = loopback_base(args.url)
    if not 1 <= args.sessions <= MAX_SESSIONS or not 1 <= args.chapters <= 50:
        raise LoadTestError(f"need 1 <= --sessions <= {MAX_SESSIONS} and 1 <= --chapters <= 50")
    if not 1 <= args.moments <= 20 or not 0 < args.duration <= MAX_DURATION:
        raise LoadTestError(f"need 1 <= --moments <= 20 and 0 < --duration <= {MAX_DURATION:.0f}")
    if not 0 <= args.pause_share <= 1 or args.provider_latency < 0:
        raise LoadTestError("need 0 <= --pause-share <= 1 and --provider-latency >= 0")
    return base


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    """The whole load test; returns the report (also written to disk)."""
    base = _check_options(args)
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    connector = aiohttp.TCPConnector(limit=0)  # the default 100 would count open WebSockets
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(
        base, connector=connector, timeout=timeout, headers=headers
    ) as http:
        try:
            async with http.get("/metrics") as response:
                response.raise_for_status()
                baseline = lr.parse_metrics(await response.text())
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            raise LoadTestError(f"server at {base} does not answer /metrics: {exc}") from exc
        tracker = Tracker()
        tracker.scrapes.append((0.0, baseline))
        stop = asyncio.Event()
        helpers = [asyncio.create_task(_scrape(http, tracker, stop))]
        if not args.quiet:
            helpers.append(asyncio.create_task(_progress(tracker, args.sessions, stop)))
        pause_every = round(1 / args.pause_share) if args.pause_share > 0 else 0
        drivers = [
            asyncio.create_task(
                _drive(http, i, args, tracker, pause_every > 0 and i % pause_every == 0)
            )
            for i in range(args.sessions)
        ]
        done, pending = await asyncio.wait(drivers, timeout=args.duration)
        stopped_by = "completion" if not pending else "duration"
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for task in done:
            if task.exception() is not None:
                tracker.error(f"driver: {task.exception()!r}")
        wall = time.monotonic() - tracker.started
        stop.set()
        await asyncio.gather(*helpers, return_exceptions=True)
        await _scrape_once(http, tracker)
        if not args.quiet:
            print(file=sys.stderr)
        integrity = await _verify(http, tracker)
    return lr.write_report(args, base, tracker, wall, stopped_by, integrity)


async def _post(http: aiohttp.ClientSession, path: str, body: dict[str, Any] | None = None) -> Any:
    async with http.post(path, json=body) as response:
        data = await response.json()
        if response.status >= 400:
            raise RuntimeError(f"POST {path}: {response.status} {data.get('error')}")
        return data


async def _drive(
    http: aiohttp.ClientSession, index: int, args: argparse.Namespace, tracker: Tracker, pause: bool
) -> None:
    """One session: manuscript, start, follow (pause + resume if chosen) to a final state."""
    chapters = [
        {"number": n, "title": f"Part {n}", "content": TEXT} for n in range(1, args.chapters + 1)
    ]
    try:
        created = await _post(
            http,
            "/api/manuscripts",
            {"title": f"Load {index}", "author": "loadtest", "chapters": chapters},
        )
        started = await _post(
            http,
            "/api/process",
            {"manuscript_id": created["manuscript_id"], "max_emotional_moments": args.moments},
        )
    except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
        tracker.error(f"session {index} did not start: {exc}")
        return
    sid = started["session_id"]
    info = tracker.sessions[sid] = {
        "status": "running",
        "images": None,
        "paused": False,
        "pause": "chosen" if pause else "no",
    }
    analyze_from: datetime | None = None
    try:
        async with http.ws_connect(f"/ws/processing/{sid}?after=0", heartbeat=30) as ws:
            live_after = 1 << 62
            async for message in ws:
                received = time.time()
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = json.loads(message.data)
                kind, seq = frame.get("type"), frame.get("event_seq")
                if kind == "snapshot":
                    live_after = int(frame.get("last_event_seq") or 0)
                    continue
                stamp = datetime.fromisoformat(frame["timestamp"]) if "timestamp" in frame else None
                if stamp is not None and isinstance(seq, int) and seq > live_after:  # not a replay
                    tracker.delivery.append(
                        (time.monotonic() - tracker.started, (received - stamp.timestamp()) * 1000)
                    )
                if kind == "step" and frame.get("step") == 0 and stamp is not None:
                    if frame.get("status") == "processing":
                        analyze_from = stamp
                    elif analyze_from is not None:
                        tracker.analyze_ms.append((stamp - analyze_from).total_seconds() * 1000)
                        analyze_from = None
                if kind == "progress" and info["pause"] == "chosen":
                    info["pause"] = "requested"
                    async with http.post(f"/api/process/{sid}/pause") as response:
                        if response.status == 409:
                            info["pause"] = "too late"  # it finished first
                        elif response.status >= 400:
                            tracker.error(f"pause {sid}: {response.status}")
                elif kind == "status" and frame.get("status") == "paused":
                    info["paused"] = True
                    await _post(http, f"/api/process/resume/{sid}")
                elif kind == "complete":
                    info.update(status="completed", images=frame.get("images_count"))
                    return
                elif kind == "error" or (kind == "status" and frame.get("status") in FINAL):
                    info["status"] = str(frame.get("status") or "failed")
                    tracker.error(f"session {sid}: {frame.get('error') or frame.get('status')}")
                    return
                elif kind == "resync":
                    tracker.error(f"session {sid}: websocket fell behind (resync)")
                    return
            tracker.error(f"session {sid}: websocket closed before the session finished")
    except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
        tracker.error(f"session {sid}: {exc!r}")


async def _scrape_once(http: aiohttp.ClientSession, tracker: Tracker) -> None:
    try:
        async with http.get("/metrics") as response:
            parsed = lr.parse_metrics(await response.text())
    except (aiohttp.ClientError, OSError, ValueError) as exc:
        tracker.error(f"/metrics: {exc!r}")
        return
    tracker.scrapes.append((time.monotonic() - tracker.started, parsed))


async def _scrape(http: aiohttp.ClientSession, tracker: Tracker, stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), SCRAPE_SECONDS)
        except TimeoutError:
            await _scrape_once(http, tracker)


async def _progress(tracker: Tracker, total: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        done = sum(1 for s in tracker.sessions.values() if s["status"] != "running")
        elapsed = time.monotonic() - tracker.started
        scrapes = tracker.scrapes
        rate = 0.0
        if len(scrapes) > 1 and scrapes[-1][0] > 0:
            rate = (scrapes[-1][1]["checkpoints"] - scrapes[0][1]["checkpoints"]) / scrapes[-1][0]
        bar = "#" * int(30 * done / total) + "-" * (30 - int(30 * done / total))
        print(
            f"\r[{bar}] {done}/{total} done, {len(tracker.sessions)} started,"
            f" {rate:.0f} ckpt/s, {len(tracker.errors)} errors, {elapsed:.0f}s ",
            end="",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)


async def _verify(http: aiohttp.ClientSession, tracker: Tracker) -> dict[str, Any]:
    """Each session's checkpoints gap-free from 1 and its images listed and fetchable."""
    problems: list[str] = []
    counts = {"checkpoints": 0, "images_listed": 0, "images_fetched": 0}
    gate = asyncio.Semaphore(16)

    async def get(path: str) -> tuple[int, bytes]:
        async with gate, http.get(path) as response:
            return response.status, await response.read()

    async def one(sid: str, info: dict[str, Any]) -> None:
        status, body = await get(f"/api/sessions/{sid}/checkpoints")
        seqs = (
            [c["sequence_number"] for c in json.loads(body)["checkpoints"]] if status == 200 else []
        )
        counts["checkpoints"] += len(seqs)
        if status != 200 or seqs != list(range(1, len(seqs) + 1)) or not seqs:
            problems.append(
                f"{sid}: checkpoints not gap-free from 1 (HTTP {status}, {len(seqs)} found)"
            )
        status, body = await get(f"/api/sessions/{sid}/images")
        images = json.loads(body)["images"] if status == 200 else []
        counts["images_listed"] += len(images)
        if (
            info["status"] == "completed"
            and info["images"] is not None
            and len(images) != info["images"]
        ):
            problems.append(f"{sid}: {len(images)} images listed, completion said {info['images']}")
        for image in images:
            code, data = await get(image["url"])
            if code == 200 and data.startswith(b"\x89PNG\r\n\x1a\n"):
                counts["images_fetched"] += 1
            else:
                problems.append(f"{sid}: image {image['url']} -> HTTP {code}, {len(data)} bytes")

    results = await asyncio.gather(
        *(one(s, i) for s, i in tracker.sessions.items()), return_exceptions=True
    )
    problems += [f"verify: {r!r}" for r in results if isinstance(r, BaseException)]
    return {
        "sessions_checked": len(tracker.sessions),
        **counts,
        "ok": not problems,
        "problems": problems[:50],
        "problem_count": len(problems),
    }


def main(argv: list[str] | None = None) -> int:
    """``python -m loadtest`` without the rest of the CLI."""
    parser = argparse.ArgumentParser(
        prog="illustrator loadtest", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
