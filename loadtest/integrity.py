"""After a load test: the integrity check over the REST API, and the clean-up.

Integrity: each session's checkpoints gap-free from 1, its images listed (as many as its
completion said) and fetchable as PNGs. Clean-up (``--cleanup``): every session and
manuscript the run created is deleted through the API, files included.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Protocol

import aiohttp


class Created(Protocol):
    """What the run created (loadtest.harness.Tracker)."""

    sessions: dict[str, dict[str, Any]]
    manuscripts: list[str]


async def check_integrity(http: aiohttp.ClientSession, tracker: Created) -> dict[str, Any]:
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


async def cleanup(http: aiohttp.ClientSession, tracker: Created) -> dict[str, Any]:
    """Delete the run's sessions, then its manuscripts; counts and any failure."""
    problems: list[str] = []
    gate = asyncio.Semaphore(16)

    async def delete(path: str) -> bool:
        async with gate, http.delete(path) as response:
            if response.status in (200, 404):  # 404: gone already
                return response.status == 200
            problems.append(f"DELETE {path}: HTTP {response.status} {await response.text()}")
            return False

    sessions = await asyncio.gather(
        *(delete(f"/api/sessions/{sid}") for sid in tracker.sessions), return_exceptions=True
    )
    manuscripts = await asyncio.gather(
        *(delete(f"/api/manuscripts/{mid}") for mid in tracker.manuscripts),
        return_exceptions=True,
    )
    failures = [r for r in (*sessions, *manuscripts) if isinstance(r, BaseException)]
    problems += [f"cleanup: {r!r}" for r in failures]
    return {
        "sessions_deleted": sum(1 for r in sessions if r is True),
        "manuscripts_deleted": sum(1 for r in manuscripts if r is True),
        "ok": not problems,
        "problems": problems[:50],
    }
