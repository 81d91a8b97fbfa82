"""The load test's drivers: one task per session over REST and its WebSocket, the
``/metrics`` scraper and the progress line (see the package docstring)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp

from loadtest import report as lr
from loadtest.integrity import check_integrity, cleanup
from loadtest.options import LoadTestError, check_options

SCRAPE_SECONDS = 0.5
TEXT = (
    "The storm broke over the dark castle and Mara screamed in terror. Later, in the quiet "
    "garden, she laughed with joy and hope beside Tomas. A strange shadow moved in the "
    "forest; the mystery deepened and fear returned. "
) * 3
FINAL = {"completed", "failed", "cancelled"}


@dataclass
class Tracker:
    """What the drivers observed."""

    started: float = field(default_factory=time.monotonic)
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    manuscripts: list[str] = field(default_factory=list)
    """Ids of the manuscripts the run created (also of sessions that did not start)."""
    delivery: list[tuple[float, float]] = field(default_factory=list)
    analyze_ms: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    scrapes: list[tuple[float, dict[str, Any]]] = field(default_factory=list)

    def error(self, text: str) -> None:
        self.errors.append(text[:300])

    def count(self, status: str) -> int:
        return sum(1 for s in self.sessions.values() if s["status"] == status)


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    """The whole load test; returns the report (also written to disk)."""
    base = check_options(args)
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
        integrity = await check_integrity(http, tracker)
        removed = await cleanup(http, tracker) if args.cleanup else None
    return lr.write_report(args, base, tracker, wall, stopped_by, integrity, removed)


async def _post(http: aiohttp.ClientSession, path: str, body: dict[str, Any] | None = None) -> Any:
    async with http.post(path, json=body if body is not None else {}) as response:
        data = await response.json()
        if response.status >= 400:
            raise RuntimeError(f"POST {path}: {response.status} {data.get('error')}")
        return data


async def _drive(
    http: aiohttp.ClientSession, index: int, args: argparse.Namespace, tracker: Tracker, pause: bool
) -> None:
    """One session: manuscript, start, follow (pause + resume if chosen) to a final state."""
    sid = await _start(http, index, args, tracker)
    if sid is None:
        return
    info = tracker.sessions[sid] = {
        "status": "running",
        "images": None,
        "paused": False,
        "pause": "chosen" if pause else "no",
    }
    try:
        await _follow(http, sid, info, tracker)
    except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
        tracker.error(f"session {sid}: {exc!r}")


async def _start(
    http: aiohttp.ClientSession, index: int, args: argparse.Namespace, tracker: Tracker
) -> str | None:
    """Store a manuscript and start a session of it; its id, or None (an error noted)."""
    chapters = [
        {"number": n, "title": f"Part {n}", "content": TEXT} for n in range(1, args.chapters + 1)
    ]
    try:
        created = await _post(
            http,
            "/api/manuscripts",
            {"title": f"Load {index}", "author": "loadtest", "chapters": chapters},
        )
        tracker.manuscripts.append(created["manuscript_id"])
        started = await _post(
            http,
            "/api/process",
            {"manuscript_id": created["manuscript_id"], "max_emotional_moments": args.moments},
        )
    except (aiohttp.ClientError, RuntimeError, ValueError) as exc:
        tracker.error(f"session {index} did not start: {exc}")
        return None
    return started["session_id"]


async def _follow(
    http: aiohttp.ClientSession, sid: str, info: dict[str, Any], tracker: Tracker
) -> None:
    """Follow a session's frames to its end, timing them; pause and resume it if chosen."""
    analyze_from: datetime | None = None
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
                async with http.post(f"/api/process/{sid}/pause", json={}) as response:
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
