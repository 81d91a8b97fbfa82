"""Benchmark: checkpoint throughput and acknowledgement latency of the whole engine.

For each concurrency level (``--sessions 1,100,1000``) it starts a fresh embedded
SecantusDB and a fresh :class:`Engine` with *instant* providers (fixed moments, a fixed
prompt, a pre-rendered 16 px PNG written atomically), saves one manuscript, starts N
sessions at once and waits, event-driven through the EventHub, until all N announced
``complete`` (or failed, or the timeout passed). It then prints, per level:

- checkpoints persisted (acknowledged by the PersistenceActor) and the number expected;
- wall seconds (first ``start_session`` call to last ``complete`` event) and checkpoints/s;
- ack latency p50/p99/max in ms (``persistence_stats()["ack_latency_samples_ms"]``, which
  keeps the last 20,000 samples: above that the percentiles cover only the tail of the run);
- batches, mean batch size (messages per commit, checkpoints per commit) and largest batch;
- time spent writing files and the database per batch, event-loop lag, peak thread count;

and a final table. Every warning or error the engine logs is counted and the first few
are printed with their source location and traceback.

Run: ``.venv/bin/python bench/checkpoints.py [--sessions 1,100,1000] [--chapters 2]
[--moments 2] [--output-dir PATH] [--timeout S] [--no-image-fsync] [--json FILE]``.

The default output directory is a fresh temporary folder (removed afterwards unless
``--keep``); it must be on a real disk, not tmpfs, or every fsync is free. The
configuration comes from the defaults plus ``ILLUSTRATOR_*`` environment overrides
(e.g. ``ILLUSTRATOR_PERSISTENCE_FSYNC=false``); output directory and
``max_concurrent_sessions`` are set by this script.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from tests_support import make_manuscript  # noqa: E402

from actors.engine import Engine  # noqa: E402
from actors.messages import CheckpointReached, GetPersistenceStats  # noqa: E402
from actors.persistence import PersistenceActor  # noqa: E402
from config import Config, config_from_mapping  # noqa: E402
from pipeline.analysis import EmotionalMoment  # noqa: E402
from pipeline.images import LocalImageGenerator, write_file_atomically  # noqa: E402
from pipeline.manuscripts import Chapter  # noqa: E402
from pipeline.prompts import IllustrationPrompt  # noqa: E402
from pipeline.providers import Providers  # noqa: E402
from storage.database import open_database  # noqa: E402
from storage.records import PersistBatch  # noqa: E402

SAMPLE_CAP = 20_000
"""``PersistenceStats.ack_latency_samples`` keeps this many samples."""


# --------------------------------------------------------------------------- instant providers


class InstantAnalyzer:
    """Returns the same ``count`` moments (valid positions in the chapter) at once."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._cache: dict[tuple[int, int], list[EmotionalMoment]] = {}

    def analyze(self, chapter: Chapter, max_moments: int) -> list[EmotionalMoment]:
        n = max(1, min(self.count, max_moments))
        key = (chapter.number, n)
        found = self._cache.get(key)
        if found is None:
            found = [self._moment(chapter, i) for i in range(n)]
            self._cache[key] = found  # a race only builds the same list twice
        return list(found)

    @staticmethod
    def _moment(chapter: Chapter, i: int) -> EmotionalMoment:
        length = len(chapter.content)
        start = min(length, i * 40)
        end = min(length, start + 40)
        return EmotionalMoment(
            text_excerpt=chapter.content[start:end],
            start_position=start,
            end_position=end,
            emotional_tones=("joy", "hope") if i % 2 == 0 else ("fear", "mystery"),
            intensity_score=0.5,
            context=chapter.content[start:end],
            characters_present=("Mara",),
            setting_description="a castle",
            narrative_context="bench",
        )


class InstantPromptWriter:
    """Returns one fixed prompt."""

    PROMPT = IllustrationPrompt(
        provider="local",
        prompt="a quiet harbour at dawn, watercolour",
        style_modifiers=("watercolour",),
        negative_prompt="text",
        technical_params={"width": 16, "height": 16},
    )

    def write(
        self, moment: EmotionalMoment, chapter: Chapter, style_config: Any
    ) -> IllustrationPrompt:
        return self.PROMPT


class InstantImageGenerator:
    """Writes a PNG rendered once at start-up; atomically (fsync file and folder) by default."""

    def __init__(self, fsync: bool = True) -> None:
        moment = InstantAnalyzer._moment(Chapter(number=1, title="x", content="x" * 80), 0)
        self.png = LocalImageGenerator(16).render(InstantPromptWriter.PROMPT, moment)
        self.fsync = fsync

    def generate(
        self, prompt: IllustrationPrompt, moment: EmotionalMoment, destination: Path
    ) -> None:
        destination = Path(destination)
        if self.fsync:
            write_file_atomically(destination, self.png)
            return
        temp = destination.with_name(f".{destination.name}.{threading.get_ident()}.tmp")
        temp.write_bytes(self.png)
        os.replace(temp, destination)


def instant_providers(moments: int, image_fsync: bool) -> Providers:
    """Providers that cost (almost) nothing but the image file write."""
    return Providers(
        InstantAnalyzer(moments), InstantPromptWriter(), InstantImageGenerator(image_fsync)
    )


# --------------------------------------------------------------------------- counting persistence


class CountingPersistenceActor(PersistenceActor):
    """The real PersistenceActor, plus exact batch sizes and time per commit phase.

    Its extra counters are added to the ``GetPersistenceStats`` answer under ``bench_*``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bench = {
            "bench_messages": 0,
            "bench_checkpoint_messages": 0,
            "bench_batches_with_checkpoints": 0,
            "bench_files_seconds": 0.0,
            "bench_db_seconds": 0.0,
            "bench_commit_seconds": 0.0,
        }

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, GetPersistenceStats):
            message.reply.set_result({**self.stats.as_dict(message.with_samples), **self.bench})
            return None
        return super().on_receive(message)

    def _commit(self) -> None:
        if self._pending:
            checkpoints = sum(
                1
                for m in self._pending
                if isinstance(m, CheckpointReached) and m.checkpoint is not None
            )
            self.bench["bench_messages"] += len(self._pending)
            self.bench["bench_checkpoint_messages"] += checkpoints
            self.bench["bench_batches_with_checkpoints"] += 1 if checkpoints else 0
        started = time.perf_counter()
        super()._commit()
        self.bench["bench_commit_seconds"] += time.perf_counter() - started

    def _write_files(
        self, checkpoints: list[CheckpointReached], session_files: dict[str, Any]
    ) -> str | None:
        started = time.perf_counter()
        try:
            return super()._write_files(checkpoints, session_files)
        finally:
            self.bench["bench_files_seconds"] += time.perf_counter() - started

    async def _drain_async(self) -> None:
        # Every database write goes through here: concurrently with the files inside a
        # commit (``_write_both``), and alone from ``_drain_backlog``.
        started = time.perf_counter()
        try:
            await super()._drain_async()
        finally:
            self.bench["bench_db_seconds"] += time.perf_counter() - started


# --------------------------------------------------------------------------- log capture


class LogCapture(logging.Handler):
    """Counts WARNING+ records and keeps the first few distinct ones with their origin."""

    def __init__(self, keep: int = 8) -> None:
        super().__init__(logging.WARNING)
        self.keep = keep
        self.counts: collections.Counter[str] = collections.Counter()
        self.first: list[str] = []
        self._seen: set[tuple[str, int]] = set()
        self._lock2 = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock2:
            self.counts[record.levelname] += 1
            key = (record.pathname, record.lineno)
            if key in self._seen or len(self.first) >= self.keep:
                return
            self._seen.add(key)
            where = f"{record.pathname}:{record.lineno}"
            text = f"{record.levelname} {record.name} ({where}): {record.getMessage()}"
            if record.exc_info:
                text += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
            self.first.append(text)

    def reset(self) -> None:
        with self._lock2:
            self.counts.clear()
            self.first.clear()
            self._seen.clear()


def capture_logs(verbose: bool) -> LogCapture:
    """Log to stderr (INFO with ``verbose``, else WARNING) and count WARNING+ in the capture."""
    capture = LogCapture()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger().addHandler(capture)
    return capture


# --------------------------------------------------------------------------- one level


async def save_manuscripts(engine: Any, count: int, chapters: int) -> list[str]:
    """One manuscript per session to start: the engine runs one live session per
    manuscript (a second start answers ManuscriptBusyError). Saved before the timing."""
    ids: list[str] = []
    for first in range(0, count, 100):
        batch = [make_manuscript(chapters) for _ in range(first, min(count, first + 100))]
        ids.extend(await asyncio.gather(*(engine.save_manuscript(m) for m in batch)))
    return ids


def checkpoints_per_session(chapters: int, moments: int) -> int:
    """session_start, manuscript_loaded, per chapter (start, analyzed, prompts, M images,
    completed), session_completed."""
    return 2 + chapters * (4 + moments) + 1


def file_create_cost_us(folder: Path, count: int = 50) -> float:
    """Median microseconds to create (and close) one empty file in a new subfolder of ``folder``.

    Every checkpoint creates two files (temp files renamed into place), so this bounds the
    files part. The probe's files are left for the caller's clean-up of ``folder``: deleting
    them here would itself slow the next creations (see :func:`wait_for_cheap_file_creation`).
    """
    probe = Path(tempfile.mkdtemp(prefix=".create-probe-", dir=folder))
    times = []
    for i in range(count):
        started = time.perf_counter()
        os.close(os.open(probe / f"{i}.json", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        times.append(time.perf_counter() - started)
    return 1e6 * percentile(times, 0.5)


def wait_for_cheap_file_creation(
    folder: Path, *, limit_us: float = 60.0, timeout_s: float = 90.0
) -> tuple[float, float]:
    """Wait until creating a file in ``folder`` costs at most ``limit_us``; return (cost, s waited).

    On ext4 without a journal (this project's VM) every file creation skips the inodes
    deleted in the last 60 s, or 360 s while their inode table block is not yet written back
    (``recently_deleted()`` in fs/ext4/ialloc.c; perf showed it taking 45 % of the CPU of a
    write loop). After a clean-up of thousands of files (a previous run's output) creating a
    file costs 0.5-1.3 ms instead of 20-60 us for a minute or more. A server does not delete
    files in bulk (and a journaled ext4 skips this check); a benchmark that starts in that
    window measures the previous run's clean-up, so it waits it out, up to ``timeout_s``.
    """
    started = time.monotonic()
    cost = file_create_cost_us(folder)
    while cost > limit_us and time.monotonic() - started < timeout_s:
        time.sleep(2.0)
        cost = file_create_cost_us(folder)
    return cost, time.monotonic() - started


async def replay_batches(
    store: Any, work: Iterable[tuple[PersistBatch, dict[str, int]]], keep: int
) -> list[float]:
    """Write database batches again, in order and back to back, through the store code
    (each with its log prunes): the database's own ceiling for exactly these writes.

    Returns the seconds of each batch.
    """
    seconds: list[float] = []
    for batch, prune in work:
        started = time.monotonic()
        await store.write_batch(batch, keep)
        for session_id, kept in prune.items():
            await store.prune_logs(session_id, kept)
        seconds.append(time.monotonic() - started)
    return seconds


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def thread_summary(limit: int = 12) -> str:
    """Threads grouped by their innermost project/library frame (for stall reports)."""
    groups: collections.Counter[str] = collections.Counter()
    names = {t.ident: t.name for t in threading.enumerate()}
    for ident, frame in sys._current_frames().items():
        stack = traceback.extract_stack(frame)
        where = next(
            (
                f"{Path(f.filename).name}:{f.lineno} {f.name}"
                for f in reversed(stack)
                if "/work/main/" in f.filename and "/.venv/" not in f.filename
            ),
            f"{Path(stack[-1].filename).name}:{stack[-1].lineno} {stack[-1].name}"
            if stack
            else "?",
        )
        kind = names.get(ident, "?").split("-")[0]
        groups[f"{kind:<18} {where}"] += 1
    return "\n".join(f"    {n:5d} x {k}" for k, n in groups.most_common(limit))


class SessionWatcher:
    """Follows the EventHub until ``expected`` sessions are final.

    Final: a ``complete`` event, or an ``error`` / ``failed`` / ``paused`` / ``cancelled``
    status (recorded in ``failed`` with the event that ended it).
    """

    def __init__(self, hub: Any, expected: int) -> None:
        self.expected = expected
        self.completed: set[str] = set()
        self.failed: dict[str, str] = {}
        self.last_event_at = time.perf_counter()
        self._done = asyncio.Event()
        self.unsubscribe = hub.subscribe(None, self._on_event)

    def _on_event(self, entry: Any) -> None:
        self.last_event_at = time.perf_counter()
        if entry.type == "complete":
            self.completed.add(entry.session_id)
        elif entry.type == "error" or (
            entry.type == "status"
            and entry.payload.get("status") in ("failed", "paused", "cancelled")
        ):
            self.failed.setdefault(entry.session_id, f"{entry.type}: {entry.payload}")
        else:
            return
        self._check()

    def _check(self) -> None:
        if len(self.completed) + len(self.failed) >= self.expected:
            self._done.set()

    def expect(self, expected: int) -> None:
        """Wait for ``expected`` sessions instead (e.g. only those that started)."""
        self.expected = expected
        self._check()

    async def wait(self, timeout: float) -> bool:
        """True once all expected sessions are final; False after ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def report_stall(self, engine: Engine, timeout: float) -> None:
        """Print what the live sessions were doing and where every thread was."""
        idle = time.perf_counter() - self.last_event_at
        print(
            f"  TIMEOUT after {timeout:.0f}s: {len(self.completed)} completed,"
            f" {len(self.failed)} failed of {self.expected};"
            f" last event {idle:.1f}s ago; {threading.active_count()} threads",
            flush=True,
        )
        phases = collections.Counter(
            f"{s.get('status')}/{s.get('current_step', s.get('phase', '?'))}"
            for s in engine.hub.snapshots()
        )
        print(f"  live snapshots: {dict(phases.most_common(8))}", flush=True)
        print("  threads by innermost frame:\n" + thread_summary(), flush=True)


class LoopLagProbe:
    """Measures event-loop lag (a 10 ms sleep's overshoot) and the peak thread count.

    Started on creation (inside the running loop); ``lags`` in ms, ``times`` the
    ``time.monotonic()`` at which each was taken.
    """

    def __init__(self, interval: float = 0.01) -> None:
        self.interval = interval
        self.lags: list[float] = []
        self.times: list[float] = []
        self.peak_threads = threading.active_count()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            before = time.perf_counter()
            await asyncio.sleep(self.interval)
            self.lags.append((time.perf_counter() - before - self.interval) * 1000)
            self.times.append(time.monotonic())
            self.peak_threads = max(self.peak_threads, threading.active_count())

    async def stop(self) -> None:
        """Stop probing (waits for the last sample)."""
        self._stop.set()
        await self._task


async def run_level(
    config: Config, store_factory: Any, sessions: int, args: argparse.Namespace, capture: LogCapture
) -> dict[str, Any]:
    """Run ``sessions`` concurrent sessions on a fresh engine; return the figures."""
    per_session = checkpoints_per_session(args.chapters, args.moments)
    engine = Engine(
        config,
        store_factory,
        providers=instant_providers(args.moments, not args.no_image_fsync),
        persistence_class=CountingPersistenceActor,
    )
    await engine.start()
    if not engine.database_ok:
        print("  WARNING: database not reachable at start-up; running on files only", flush=True)

    watcher = SessionWatcher(engine.hub, sessions)
    completed, failed = watcher.completed, watcher.failed
    mids = await save_manuscripts(engine, sessions, args.chapters)

    probe = LoopLagProbe()
    started = time.perf_counter()
    results = await asyncio.gather(
        *(engine.start_session(mid, max_emotional_moments=args.moments) for mid in mids),
        return_exceptions=True,
    )
    submitted = time.perf_counter()
    start_errors = [r for r in results if isinstance(r, BaseException)]
    expected_final = sessions - len(start_errors)
    if start_errors:
        first = start_errors[0]
        print(f"  {len(start_errors)} start_session calls failed; first:", flush=True)
        print("".join(traceback.format_exception(first)).rstrip(), flush=True)
    watcher.expect(expected_final)  # wait only for the sessions that did start

    timeout = args.timeout if args.timeout else max(120.0, 0.6 * sessions)
    timed_out = not await watcher.wait(timeout)
    finished = time.perf_counter()
    await probe.stop()
    if timed_out:
        watcher.report_stall(engine, timeout)

    stats = await engine.persistence_stats(with_samples=True)
    backlog_left = await engine.flush()
    stop_started = time.perf_counter()
    watcher.unsubscribe()
    await engine.stop()
    stop_seconds = time.perf_counter() - stop_started

    samples = list(stats["ack_latency_samples_ms"])
    wall = finished - started
    batches = stats["batches"] or 1
    return {
        "sessions": sessions,
        "completed": len(completed),
        "failed": len(failed),
        "failed_examples": list(failed.items())[:3],
        "start_errors": len(start_errors),
        "timed_out": timed_out,
        "checkpoints": stats["checkpoints"],
        "checkpoints_expected": sessions * per_session,
        "wall_seconds": wall,
        "submit_seconds": submitted - started,
        "checkpoints_per_second": stats["checkpoints"] / wall if wall > 0 else float("nan"),
        "ack_samples": len(samples),
        "ack_samples_truncated": stats["checkpoints"] > SAMPLE_CAP,
        "ack_p50_ms": percentile(samples, 0.50),
        "ack_p99_ms": percentile(samples, 0.99),
        "ack_max_ms": max(samples) if samples else float("nan"),
        "ack_mean_all_ms": stats["ack_latency_sum_ms"] / max(1, sum(stats["ack_latency_counts"])),
        "batches": stats["batches"],
        "mean_batch_messages": stats["bench_messages"] / batches,
        "mean_batch_checkpoints": stats["bench_checkpoint_messages"]
        / max(1, stats["bench_batches_with_checkpoints"]),
        "largest_batch": stats["largest_batch"],
        "batch_size_counts": stats["batch_size_counts"],
        "events": stats["events"],
        "files_written": stats["files_written"],
        "db_batches": stats["db_batches"],
        "db_failures": stats["db_failures"],
        "backlog_left": backlog_left,
        "files_ms_per_batch": 1000 * stats["bench_files_seconds"] / batches,
        "db_ms_per_batch": 1000 * stats["bench_db_seconds"] / batches,
        "commit_busy_share": stats["bench_commit_seconds"] / wall if wall > 0 else float("nan"),
        "loop_lag_p99_ms": percentile(probe.lags, 0.99),
        "loop_lag_max_ms": max(probe.lags) if probe.lags else float("nan"),
        "peak_threads": probe.peak_threads,
        "engine_stop_seconds": stop_seconds,
        "log_counts": dict(capture.counts),
        "log_first": list(capture.first),
    }


Level = Callable[
    [Config, Any, int, argparse.Namespace, LogCapture], Coroutine[Any, Any, dict[str, Any]]
]
"""``level(config, store_factory, sessions, args, capture)`` runs one level on a fresh engine."""


def run_one(
    sessions: int,
    base: Path,
    args: argparse.Namespace,
    capture: LogCapture,
    level: Level | None = None,
) -> dict[str, Any]:
    """Fresh database + engine for one level (the database is started on the main thread).

    ``level`` is the coroutine that runs it (default :func:`run_level`).
    """
    out = base / f"sessions_{sessions}"
    if out.exists():
        # Set aside, not deleted: deleting thousands of files makes every file creation
        # slow for half a minute (wait_for_cheap_file_creation); ``base`` goes at the end.
        out.rename(Path(tempfile.mkdtemp(prefix=".previous-", dir=base)) / out.name)
    create_us, waited = wait_for_cheap_file_creation(base)
    if waited >= 2:
        print(f"  (waited {waited:.0f} s until creating a file cost {create_us:.0f} us)")
    config = config_from_mapping(
        {
            "output": {"directory": str(out)},
            "processing": {"max_concurrent_sessions": max(sessions, 1), "auto_resume": False},
        },
        env=os.environ,
    )
    capture.reset()
    db_started = time.perf_counter()
    handle = open_database(config)
    db_seconds = time.perf_counter() - db_started
    args.database_uri = handle.uri  # for a level that opens a client of its own
    try:
        result = asyncio.run(
            (level or run_level)(config, handle.store_factory(config), sessions, args, capture)
        )
    finally:
        stop_started = time.perf_counter()
        handle.stop()
        db_stop = time.perf_counter() - stop_started
    result.update(db_start_seconds=db_seconds, db_stop_seconds=db_stop, database=handle.kind)
    return result


def print_level(r: dict[str, Any]) -> None:
    trunc = f" (last {SAMPLE_CAP} of {r['checkpoints']})" if r["ack_samples_truncated"] else ""
    print(
        f"  sessions {r['sessions']}: completed {r['completed']}, failed {r['failed']},"
        f" start errors {r['start_errors']}{', TIMED OUT' if r['timed_out'] else ''}\n"
        f"  checkpoints persisted {r['checkpoints']} (expected {r['checkpoints_expected']}),"
        f" events {r['events']}, files {r['files_written']}\n"
        f"  wall {r['wall_seconds']:.2f}s (submitting {r['submit_seconds']:.2f}s),"
        f" {r['checkpoints_per_second']:.0f} checkpoints/s\n"
        f"  ack latency p50 {r['ack_p50_ms']:.2f} ms, p99 {r['ack_p99_ms']:.2f} ms,"
        f" max {r['ack_max_ms']:.2f} ms{trunc}\n"
        f"  batches {r['batches']}, mean {r['mean_batch_messages']:.1f} messages"
        f" ({r['mean_batch_checkpoints']:.1f} checkpoints per batch holding any),"
        f" largest {r['largest_batch']}\n"
        f"  per batch: files {r['files_ms_per_batch']:.2f} ms,"
        f" database {r['db_ms_per_batch']:.2f} ms;"
        f" persistence busy {100 * r['commit_busy_share']:.0f}% of wall;"
        f" db batches {r['db_batches']},"
        f" db failures {r['db_failures']}, backlog left {r['backlog_left']}\n"
        f"  loop lag p99 {r['loop_lag_p99_ms']:.1f} ms, max {r['loop_lag_max_ms']:.1f} ms;"
        f" peak threads {r['peak_threads']}; engine stop {r['engine_stop_seconds']:.2f}s,"
        f" db start {r['db_start_seconds']:.2f}s / stop {r['db_stop_seconds']:.2f}s",
        flush=True,
    )
    if r["failed_examples"]:
        print(f"  failed sessions (first): {r['failed_examples']}", flush=True)
    if r["log_counts"]:
        print(f"  engine log records: {r['log_counts']}", flush=True)
        for text in r["log_first"]:
            print("    " + text.replace("\n", "\n    "), flush=True)


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'sessions':>8} {'ckpts':>7} {'wall s':>8} {'ckpt/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
        f" {'batches':>8} {'msg/b':>7} {'ckpt/b':>7} {'largest':>7} {'ok':>6} {'warn/err':>8}"
    )
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        problems = sum(r["log_counts"].values())
        print(
            f"{r['sessions']:>8} {r['checkpoints']:>7} {r['wall_seconds']:>8.2f}"
            f" {r['checkpoints_per_second']:>8.0f} {r['ack_p50_ms']:>8.2f} {r['ack_p99_ms']:>8.2f}"
            f" {r['batches']:>8} {r['mean_batch_messages']:>7.1f}"
            f" {r['mean_batch_checkpoints']:>7.1f}"
            f" {r['largest_batch']:>7} {r['completed']:>6} {problems:>8}"
        )
    print(
        "\nckpts: checkpoints acknowledged;"
        " msg/b: messages (checkpoints + event batches) per commit;"
        " ckpt/b: checkpoints per commit holding any; ok: sessions completed."
    )


def filesystem_of(path: Path) -> str:
    """``type (device on mount)`` of the mount holding ``path``."""
    best = ("", "unknown", "?")
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount, fstype = line.split()[:3]
                if str(path).startswith(mount) and len(mount) >= len(best[0]):
                    best = (mount, fstype, device)
    except OSError:
        pass
    return f"{best[1]} ({best[2]} on {best[0]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sessions", default="1,100,1000", help="comma-separated concurrency levels"
    )
    parser.add_argument("--chapters", type=int, default=2)
    parser.add_argument(
        "--moments", type=int, default=2, help="moments (images) per chapter, 1..20"
    )
    parser.add_argument(
        "--output-dir", type=Path, default=None, help="default: a new temporary folder"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    parser.add_argument(
        "--timeout", type=float, default=0, help="seconds per level (default max(120, 0.6*N))"
    )
    parser.add_argument("--no-image-fsync", action="store_true", help="write images without fsync")
    parser.add_argument(
        "--json", type=Path, default=None, help="also write the figures as JSON here"
    )
    parser.add_argument("--verbose", action="store_true", help="show the engine's INFO logs")
    args = parser.parse_args()
    levels = [int(s) for s in args.sessions.split(",") if s.strip()]
    if not 1 <= args.moments <= 20 or args.chapters < 1 or any(n < 1 for n in levels):
        parser.error("need --moments in 1..20, --chapters >= 1 and sessions >= 1")

    capture = capture_logs(args.verbose)

    temporary = args.output_dir is None
    base = (
        Path(tempfile.mkdtemp(prefix="illustrator-bench-"))
        if temporary
        else args.output_dir.resolve()
    )
    base.mkdir(parents=True, exist_ok=True)
    probe_config = config_from_mapping({"output": {"directory": str(base)}}, env=os.environ)
    print(
        f"output {base} on {filesystem_of(base)}; {os.cpu_count()} CPUs;"
        f" Python {sys.version.split()[0]}\n"
        f"{args.chapters} chapters x {args.moments} moments = "
        f"{checkpoints_per_session(args.chapters, args.moments)} checkpoints per session;"
        f" image fsync {'off' if args.no_image_fsync else 'on'}\n"
        f"persistence {asdict(probe_config.persistence)}\n"
        f"mongodb driver {probe_config.mongodb.driver},"
        f" uri {probe_config.mongodb.uri or '(embedded)'}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    try:
        for sessions in levels:
            print(f"\n== {sessions} concurrent sessions", flush=True)
            result = run_one(sessions, base, args, capture)
            print_level(result)
            rows.append(result)
    finally:
        if rows:
            print_table(rows)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2, default=str), encoding="utf-8")
        if temporary and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    bad = any(
        r["timed_out"] or r["failed"] or r["start_errors"] or r["completed"] < r["sessions"]
        for r in rows
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
