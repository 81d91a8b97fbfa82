"""Benchmark: durable JSON file writes, one by one versus group commit.

Writes batches of 1, 100 and 1,000 checkpoint files of ~2 KB three ways:

- ``write_json x N``: one atomic write per file (fsync file, rename, fsync folder each);
- ``write_many fsync``: group commit with one fsync per temp file, renames, one folder fsync;
- ``write_many syncfs``: group commit with one syncfs(2) for the batch's data.

Prints files/s (total files / total time) and batch latency (median, p99) per case.
Run: ``.venv/bin/python bench/file_writes.py [--dir PATH] [--quick]``. The default
directory is ``illustrator_output/`` (git-ignored, on the disk the server really uses);
a tmpfs directory would make every sync free and the figures meaningless.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoints import filesystem_of  # noqa: E402  (bench/checkpoints.py)

from domain import CheckpointType, ProcessingStep, SessionId, new_id  # noqa: E402
from storage import atomic  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.records import Checkpoint  # noqa: E402

BATCH_SIZES = (1, 100, 1000)
ROUNDS = {1: 300, 100: 40, 1000: 10}
QUICK_ROUNDS = {1: 50, 100: 8, 1000: 3}


def document(session: SessionId, seq: int) -> dict:
    """A checkpoint file of about 2 KB."""
    cp = Checkpoint(
        session_id=session,
        sequence_number=seq,
        checkpoint_type=CheckpointType.PROMPTS_GENERATED,
        step=ProcessingStep.GENERATING_PROMPTS,
        chapter_number=seq % 40 + 1,
        next_action="generate images",
        progress_percent=seq % 100,
        checkpoint_data={
            "generated_prompts": [{"scene": i, "prompt": "a quiet harbour " * 14} for i in range(6)]
        },
        processing_state={"processed_chapters": list(range(1, 8)), "total_images_generated": 12},
    )
    return cp.to_json()


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (with few rounds, p99 is the slowest batch)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def run_case(
    store: FileStore, size: int, rounds: int, write: Callable
) -> tuple[float, list[float]]:
    """Write ``rounds`` batches of ``size`` new files; return (total seconds, latencies)."""
    session = SessionId(new_id())
    seq = 0
    latencies: list[float] = []
    for round_number in range(rounds + 1):
        items = []
        for _ in range(size):
            seq += 1
            items.append((store.checkpoint_path(session, seq), document(session, seq)))
        started = time.perf_counter()
        write(store, items)
        elapsed = time.perf_counter() - started
        if round_number:  # the first round warms caches and creates folders
            latencies.append(elapsed)
    return sum(latencies), latencies


def one_by_one(store: FileStore, items: list) -> None:
    for path, doc in items:
        store.write_json(path, doc)


def grouped(use_syncfs: bool) -> Callable:
    def write(store: FileStore, items: list) -> None:
        store.use_syncfs = use_syncfs
        store.write_many(items)

    return write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_dir = Path(__file__).resolve().parents[1] / "illustrator_output"
    parser.add_argument("--dir", type=Path, default=default_dir, help="where to write")
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    rounds = QUICK_ROUNDS if args.quick else ROUNDS
    modes: dict[str, Callable] = {"write_json x N": one_by_one, "write_many fsync": grouped(False)}
    if atomic.syncfs_available():
        modes["write_many syncfs"] = grouped(True)
    size_on_disk = len(atomic.encode_json(document(SessionId(new_id()), 1)))
    print(
        f"python {platform.python_version()}, {platform.system()} {platform.release()}, "
        f"{os.cpu_count()} CPUs; filesystem {filesystem_of(args.dir.resolve())}"
    )
    print(f"file size {size_on_disk} bytes; syncfs available: {atomic.syncfs_available()}")
    print(f"{'mode':<20}{'batch':>6}{'rounds':>8}{'files/s':>11}{'median ms':>12}{'p99 ms':>10}")
    with tempfile.TemporaryDirectory(prefix="bench-file-writes-", dir=args.dir) as scratch:
        for size in BATCH_SIZES:
            for name, write in modes.items():
                root = Path(scratch) / f"{size}-{name.replace(' ', '_')}"
                store = FileStore(root)
                store.ensure_layout()
                total, latencies = run_case(store, size, rounds[size], write)
                print(
                    f"{name:<20}{size:>6}{rounds[size]:>8}{size * len(latencies) / total:>11,.0f}"
                    f"{statistics.median(latencies) * 1000:>12.2f}"
                    f"{percentile(latencies, 0.99) * 1000:>10.2f}",
                    flush=True,
                )
                shutil.rmtree(root)


if __name__ == "__main__":
    main()
