"""Benchmark: size of the ``sessions`` document, and the cost of one checkpoint append.

Starts a fresh embedded SecantusDB in a temporary folder (stopped and removed at the end),
then, through :class:`storage.mongo.MongoStore` (PyMongo async, ``j: true``):

1. builds a 1-chapter and a 300-chapter session (8 checkpoints per chapter; the
   CHAPTER_ANALYZED checkpoint of each chapter carries its 10 emotional moments), one
   ``write_batch`` per chapter, and prints each session document's BSON size;
2. appends ``--appends`` single checkpoints (``append_checkpoints``, one round trip each)
   to each session and prints median and p99 latency in ms;
3. prints the documents' sizes again after the appends (they must not have grown).

The embedded list is bounded (``$push`` + ``$slice``, ``--keep`` compact checkpoints), so
the append cost should not depend on the session's length (measured on SecantusDB: an
unbounded ``$push`` reached 33 ms at 3,000 elements).

Run: ``.venv/bin/python bench/session_document.py [--chapters 300] [--appends 300]
[--keep 16] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import bson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tests_support import moment  # noqa: E402

from domain import CheckpointType, ProcessingStep, SessionId, new_id  # noqa: E402
from storage.embedded import EmbeddedDatabase  # noqa: E402
from storage.mongo import MongoStore, open_store  # noqa: E402
from storage.records import Checkpoint, PersistBatch  # noqa: E402

CHAPTER_STEPS = [
    (CheckpointType.CHAPTER_START, ProcessingStep.ANALYZING_CHAPTERS),
    (CheckpointType.CHAPTER_ANALYZED, ProcessingStep.ANALYZING_CHAPTERS),
    (CheckpointType.PROMPTS_GENERATED, ProcessingStep.GENERATING_PROMPTS),
    *[(CheckpointType.IMAGES_GENERATING, ProcessingStep.GENERATING_IMAGES)] * 4,
    (CheckpointType.CHAPTER_COMPLETED, ProcessingStep.GENERATING_IMAGES),
]
MOMENTS_PER_CHAPTER = 10


def make_checkpoint(
    sid: str, seq: int, kind: CheckpointType, step: ProcessingStep, chapter: int
) -> Checkpoint:
    data: dict[str, Any] = {}
    if kind is CheckpointType.CHAPTER_ANALYZED:
        data = {"emotional_moments": [moment(chapter, i) for i in range(MOMENTS_PER_CHAPTER)]}
    return Checkpoint(
        session_id=SessionId(sid),
        sequence_number=seq,
        checkpoint_type=kind,
        step=step,
        chapter_number=chapter,
        next_action=f"continue after {kind} of chapter {chapter}",
        progress_percent=50,
        checkpoint_data=data,
        processing_state={"current_chapter": chapter, "total_images_generated": seq // 2},
    )


async def build_session(store: MongoStore, chapters: int, keep: int) -> tuple[str, int]:
    """Create a session with ``chapters`` chapters of checkpoints; return (id, last seq)."""
    sid = new_id()
    await store.create_session(
        {
            "_id": sid,
            "manuscript_id": new_id(),
            "external_session_id": "bench",
            "status": "running",
            "progress_percent": 0,
            "current_chapter": 0,
            "total_chapters": chapters,
            "style_config": {"art_style": "watercolor", "color_palette": "muted"},
            "max_emotional_moments": MOMENTS_PER_CHAPTER,
            "can_resume": True,
        }
    )
    seq = 0
    for chapter in range(1, chapters + 1):
        batch = []
        for kind, step in CHAPTER_STEPS:
            seq += 1
            batch.append(make_checkpoint(sid, seq, kind, step, chapter))
        await store.write_batch(
            PersistBatch(checkpoints=batch, session_updates={sid: {"current_chapter": chapter}}),
            keep,
        )
    return sid, seq


async def document_size(store: MongoStore, sid: str) -> int:
    doc = await store._db["sessions"].find_one({"_id": sid})
    return len(bson.encode(doc))


async def time_appends(
    store: MongoStore, sid: str, after: int, count: int, keep: int
) -> list[float]:
    samples = []
    for seq in range(after + 1, after + count + 1):
        checkpoint = make_checkpoint(
            sid, seq, CheckpointType.IMAGES_GENERATING, ProcessingStep.GENERATING_IMAGES, 1
        )
        started = time.perf_counter()
        await store.append_checkpoints([checkpoint], keep)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


async def run(uri: str, args: argparse.Namespace) -> dict[str, Any]:
    store = open_store(uri, "bench_session_document")
    results: dict[str, Any] = {"keep": args.keep, "appends": args.appends}
    try:
        await store.ensure_indexes()
        for label, chapters in (("1_chapter", 1), (f"{args.chapters}_chapters", args.chapters)):
            started = time.perf_counter()
            sid, last = await build_session(store, chapters, args.keep)
            build_s = time.perf_counter() - started
            size_before = await document_size(store, sid)
            await time_appends(store, sid, last, 20, args.keep)  # warm-up, not measured
            samples = await time_appends(store, sid, last + 20, args.appends, args.keep)
            size_after = await document_size(store, sid)
            stored = len(await store.list_checkpoints(SessionId(sid)))
            results[label] = {
                "checkpoints_stored": stored,
                "build_seconds": round(build_s, 2),
                "document_bytes_before_appends": size_before,
                "document_bytes_after_appends": size_after,
                "append_median_ms": round(statistics.median(samples), 3),
                "append_p99_ms": round(p99(samples), 3),
            }
            print(
                f"{label:>13}: sessions document "
                f"{size_before:,} B (after appends {size_after:,} B, {stored} checkpoints); append "
                f"median {statistics.median(samples):.2f} ms, p99 {p99(samples):.2f} ms "
                f"over {len(samples)} appends (built in {build_s:.1f} s)",
                flush=True,
            )
    finally:
        await store.drop_database()
        await store.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapters", type=int, default=300)
    parser.add_argument("--appends", type=int, default=300)
    parser.add_argument("--keep", type=int, default=16, help="embedded compact checkpoints")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="bench-session-document-") as tmp,
        EmbeddedDatabase(Path(tmp) / "database") as database,
    ):
        results = asyncio.run(run(database.uri, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
