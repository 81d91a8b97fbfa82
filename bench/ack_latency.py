"""Benchmark: checkpoint acknowledgement latency with 1,000 sessions whose provider calls take 1 s.

Target: "With 1,000 sessions whose provider calls take 1 s, checkpoint acknowledgement
latency p50 at most 5 ms and p99 at most 25 ms", judged on the steady state (all sessions
live, started over a ramp); the start burst and the whole run are printed beside it.

Acknowledgement latency is the PersistenceActor's own: from the moment a SessionActor
builds its ``CheckpointReached`` (``sent_at``) until the batch holding it is durable in
the JSON files and the database and its acknowledgement is sent. Only checkpoints sent by
SessionActors count (the engine's new-session records are reported apart).

Each scenario runs on a fresh embedded SecantusDB and a fresh :class:`Engine` (set up by
``bench/checkpoints.py``'s ``run_one``), with durable files (fsync) and the real
SessionActors. The providers are ``bench/checkpoints.py``'s instant ones (a fixed analysis,
a fixed prompt, a pre-rendered PNG written atomically) wrapped in the project's
``SimulatedLatency``, so that every analysis, prompt and image call takes
``--provider-latency-ms`` (1,000 ms). Scenarios (``--start``):

- ``burst``: all sessions started at once. Its first three checkpoints per session
  (session_start, manuscript_loaded, chapter_start: no provider call between them) are the
  *start burst*; afterwards the sessions stay roughly in step, so every provider second
  ends in a burst of up to N checkpoints.
- ``ramp``: sessions started evenly over ``--ramp-seconds``. The *steady state* is from
  ``--settle-seconds`` after the last start to the first ``session_completed``: all N
  sessions live, their checkpoints spread over time.

A subclass of the PersistenceActor (the real one plus timers, no behaviour change) records
every batch: when it started, its files part (JSON encoding, temp writes, ``syncfs``,
folder fsyncs) and its database part (per store operation), which run at the same time,
and when its acknowledgements went out; for every checkpoint, its ``sent_at`` and batch;
and how long other messages (lease renewals, the summary timer) kept the actor from
committing. So nothing is sampled or truncated (the actor's own sample deque keeps the
last 20,000 only; its histogram, which keeps all, is printed as a cross-check). It also
prints CPU per process and per engine thread group, RSS, loop lag, and what creating a
file costs in the output folder (on a journal-less ext4 it depends on recent deletions).

After each scenario the database batches the actor wrote are written again, in order and
back to back, into a new database on the same server with nothing else running (no
engine, no files): the database's own ceiling for exactly this workload, in checkpoints/s
and database CPU per checkpoint, and the database cores the offered load would need
(``--no-ceiling`` skips it). No design that acknowledges after the database can go faster.

Run: ``.venv/bin/python bench/ack_latency.py [--sessions 1000] [--start burst,ramp]
[--chapters 2] [--moments 10] [--provider-latency-ms 1000] [--ramp-seconds 10] [--quick]
[--no-ceiling] [--json FILE]``. ``--quick`` = 100 sessions, 1 chapter, 5 s ramp.
Offered load: per chapter a session makes ``4 + M`` checkpoints in ``1 + 2M`` provider
calls (analysis, M prompts, M images), so 1,000 sessions offer ~667 checkpoints/s with the
default 10 moments and ~1,200/s with ``--moments 2``, as long as acknowledgements are fast.
``ILLUSTRATOR_*`` environment variables override the configuration, e.g.
``ILLUSTRATOR_PERSISTENCE_SESSION_SUMMARY_INTERVAL_MS=5000``.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from checkpoints import (  # noqa: E402
    SAMPLE_CAP,
    CountingPersistenceActor,
    LogCapture,
    LoopLagProbe,
    SessionWatcher,
    capture_logs,
    checkpoints_per_session,
    file_create_cost_us,
    filesystem_of,
    instant_providers,
    percentile,
    replay_batches,
    run_one,
    save_manuscripts,
    wait_for_cheap_file_creation,
)
from scale import proc_status  # noqa: E402

from actors.engine import Engine  # noqa: E402
from actors.messages import CheckpointReached, EventsEmitted, GetPersistenceStats  # noqa: E402
from actors.persistence import LATENCY_BUCKETS_MS  # noqa: E402
from config import Config, config_from_mapping  # noqa: E402
from pipeline.providers import SimulatedLatency, wrap_providers  # noqa: E402
from storage import atomic  # noqa: E402
from storage.mongo import open_store  # noqa: E402
from storage.mongo_batches import batch_documents  # noqa: E402
from storage.records import PersistBatch  # noqa: E402

TARGET_P50_MS = 5.0
TARGET_P99_MS = 25.0
START_BURST_SEQUENCES = 3
"""session_start, manuscript_loaded, chapter_start: sent back to back, before any provider call."""


# --------------------------------------------------------------------------- timing the batches


@dataclass(slots=True)
class BatchTiming:
    """One commit of the PersistenceActor, in ``time.monotonic()`` seconds."""

    start: float
    messages: int
    io_start: float = 0.0
    io_end: float = 0.0
    """When files and database were both done: the actor's acknowledgement time."""
    end: float = 0.0
    """After every acknowledgement was sent."""
    files_seconds: float = 0.0
    files_count: int = 0
    file_phases: dict[str, float] = field(default_factory=dict)
    db_seconds: float = 0.0
    db_ops: dict[str, float] = field(default_factory=dict)
    prepare_ops: dict[str, float] = field(default_factory=dict)
    """Database calls before the writes (e.g. renewing leases the batch relies on)."""
    session_updates: int = 0


@dataclass
class Timeline:
    """Everything the timed actor recorded (read once the run is over)."""

    batches: list[BatchTiming] = field(default_factory=list)
    checkpoints: list[tuple[float, int, str, int]] = field(default_factory=list)
    """Per SessionActor checkpoint: (sent_at, batch index, checkpoint type, sequence)."""
    records: list[tuple[float, int]] = field(default_factory=list)
    """Per new-session record of ``Engine.start_session``: (sent_at, batch index)."""
    other: list[tuple[str, float, float, dict[str, float]]] = field(default_factory=list)
    """Other messages the actor handled (lease renewal and summary timers, flushes):
    (message type, start, end, database seconds per operation outside commits)."""
    database_work: list[tuple[PersistBatch, dict[str, int]]] = field(default_factory=list)
    """Every database batch the actor wrote, in order (batch, log prunes): what the
    ceiling replay (:func:`database_ceiling`) writes again."""


_FILE_PHASES = threading.local()
_INSTRUMENTED: list[bool] = []


def _timed_phase(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        phases: dict[str, float] | None = getattr(_FILE_PHASES, "phases", None)
        if phases is None:  # not inside the actor's file commit (e.g. an image write)
            return function(*args, **kwargs)
        started = time.monotonic()
        try:
            return function(*args, **kwargs)
        finally:
            phases[name] = phases.get(name, 0.0) + time.monotonic() - started

    return timed


def instrument_file_phases() -> None:
    """Time the phases of ``atomic.atomic_write_many`` (looked up as module globals).

    Only calls made inside :meth:`TimedPersistenceActor._write_files` on its thread are
    counted; everyone else goes straight through.
    """
    if _INSTRUMENTED:
        return
    _INSTRUMENTED.append(True)
    for module_name, phase in (
        ("encode_json", "encode"),
        ("_write_temp", "write temps"),
        ("syncfs", "syncfs"),
        ("fsync_dir", "folder fsync"),
    ):
        setattr(atomic, module_name, _timed_phase(phase, getattr(atomic, module_name)))


class TimedPersistenceActor(CountingPersistenceActor):
    """The real PersistenceActor (with the checkpoint bench's counters) and a batch timeline.

    The timeline travels in the ``GetPersistenceStats`` answer as ``bench_timeline``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeline = Timeline()
        self.bench["bench_timeline"] = self.timeline  # type: ignore[assignment]
        self._batch: BatchTiming | None = None
        self._db_ops: dict[str, float] = {}
        """Where the store's calls are being counted right now."""

    def on_start(self) -> None:
        super().on_start()
        store = self._store
        call = getattr(store, "_call", None)
        if call is None:
            return

        async def timed_call(what: str, operation: Any) -> Any:
            started = time.monotonic()
            try:
                return await call(what, operation)
            finally:
                self._db_ops[what] = self._db_ops.get(what, 0.0) + time.monotonic() - started

        store._call = timed_call  # type: ignore[union-attr]  # this instance only

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, CheckpointReached | EventsEmitted | GetPersistenceStats):
            return super().on_receive(message)
        started = time.monotonic()
        outer, self._db_ops = self._db_ops, {}
        try:
            return super().on_receive(message)
        finally:
            name = type(message).__name__
            self.timeline.other.append((name, started, time.monotonic(), self._db_ops))
            self._db_ops = outer

    def _commit(self) -> None:
        if not self._pending:
            return
        index = len(self.timeline.batches)
        batch = BatchTiming(start=time.monotonic(), messages=len(self._pending))
        for message in self._pending:
            if not isinstance(message, CheckpointReached):
                continue
            if message.reply_to is not None and message.checkpoint is not None:
                cp = message.checkpoint
                self.timeline.checkpoints.append(
                    (message.sent_at, index, str(cp.checkpoint_type), cp.sequence_number)
                )
            elif message.ack is not None and message.new_session is not None:
                self.timeline.records.append((message.sent_at, index))
        self._batch = batch
        outer, self._db_ops = self._db_ops, batch.prepare_ops
        try:
            super()._commit()
        finally:
            batch.end = time.monotonic()
            batch.io_end = batch.io_end or batch.end
            batch.io_start = batch.io_start or batch.start
            self.timeline.batches.append(batch)
            self._batch = None
            self._db_ops = outer

    async def _write_both(
        self, checkpoints: list[CheckpointReached], session_files: dict[str, Any]
    ) -> str | None:
        if self._batch is not None:
            self._batch.io_start = time.monotonic()
        try:
            return await super()._write_both(checkpoints, session_files)
        finally:
            if self._batch is not None:
                self._batch.io_end = time.monotonic()

    def _write_files(
        self, checkpoints: list[CheckpointReached], session_files: dict[str, Any]
    ) -> str | None:
        batch = self._batch
        written = self.stats.files_written
        _FILE_PHASES.phases = {}
        started = time.monotonic()
        try:
            return super()._write_files(checkpoints, session_files)
        finally:
            phases, _FILE_PHASES.phases = _FILE_PHASES.phases, None
            if batch is not None:
                batch.files_seconds = time.monotonic() - started
                batch.files_count = self.stats.files_written - written
                batch.file_phases = phases

    keep_database_work = True
    """Keep every database batch for the ceiling replay (off with ``--no-ceiling``)."""

    async def _write_refusing(self, work: Any) -> None:
        await super()._write_refusing(work)
        if self.keep_database_work:
            # No copy: nothing changes a batch once written, and a copy would be charged here.
            self.timeline.database_work.append((work.batch, work.prune))

    async def _drain_async(self) -> None:
        batch = self._batch
        if batch is not None and self._backlog:
            batch.session_updates = len(self._backlog[-1].batch.session_updates)
        outer, self._db_ops = self._db_ops, {}
        started = time.monotonic()
        try:
            await super()._drain_async()
        finally:
            if batch is not None:
                batch.db_seconds = time.monotonic() - started
                batch.db_ops = self._db_ops
            else:  # a drain outside a commit: counted with the message that asked for it
                for what, seconds in self._db_ops.items():
                    outer[what] = outer.get(what, 0.0) + seconds
            self._db_ops = outer


# --------------------------------------------------------------------------- one scenario


def slow_providers(args: argparse.Namespace) -> Any:
    """Instant providers behind the project's SimulatedLatency: every call takes the latency."""
    latency = SimulatedLatency(args.provider_latency_ms, args.provider_latency_max_ms)
    return wrap_providers(instant_providers(args.moments, not args.no_image_fsync), latency)


def cpu_times(pid: int | str = "self") -> tuple[float, float]:
    """User and system (kernel) CPU seconds a process or ``self/task/TID`` has used, from /proc."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def cpu_seconds(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far."""
    return sum(cpu_times(pid))


class ThreadCpuSampler:
    """CPU seconds per thread of this process, grouped by Python thread name, once a second.

    Session threads end when their session does, so each thread's CPU time is sampled
    while it lives (up to a second of a dying thread's time is missed).
    """

    def __init__(self, interval: float = 1.0) -> None:
        self.interval = interval
        self._first: dict[int, tuple[float, float]] = {}
        self._last: dict[int, tuple[float, float]] = {}
        self._group: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        for thread in threading.enumerate():
            tid = thread.native_id
            if tid is None:
                continue
            used = cpu_times(f"self/task/{tid}")
            self._first.setdefault(tid, used)
            self._last[tid] = used
            self._group[tid] = thread.name.split("-")[0].rstrip("_0123456789") or thread.name

    def _run(self) -> None:
        while True:
            self._sample()
            if self._stop.wait(self.interval):
                return

    def stop(self) -> dict[str, tuple[float, float]]:
        """Stop; (CPU seconds, of which kernel) per thread group (SessionActor, asyncio...)."""
        self._stop.set()
        self._thread.join()
        self._sample()
        total: dict[str, float] = defaultdict(float)
        kernel: dict[str, float] = defaultdict(float)
        for tid, (user, system) in self._last.items():
            first_user, first_system = self._first[tid]
            total[self._group[tid]] += user - first_user + system - first_system
            kernel[self._group[tid]] += system - first_system
        ordered = sorted(total, key=lambda group: -total[group])
        return {group: (total[group], kernel[group]) for group in ordered if total[group] > 0}


def child_pids() -> list[int]:
    """This process's children (the embedded database server), from /proc."""
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        try:
            pids.extend(int(p) for p in (task / "children").read_text().split())
        except OSError:
            continue
    return pids


async def start_sessions(
    engine: Engine, manuscript_ids: list[str], ramp_seconds: float, moments: int
) -> tuple[list[Any], float]:
    """Start a session of each manuscript at once (``ramp_seconds`` 0) or evenly over
    ``ramp_seconds``.

    Returns the ``start_session`` results (or exceptions) and when the last one returned.
    """
    loop = asyncio.get_running_loop()
    origin = loop.time()
    sessions = len(manuscript_ids)

    async def start(i: int) -> Any:
        if ramp_seconds > 0:
            await asyncio.sleep(max(0.0, origin + i * ramp_seconds / sessions - loop.time()))
        return await engine.start_session(manuscript_ids[i], max_emotional_moments=moments)

    results = await asyncio.gather(*(start(i) for i in range(sessions)), return_exceptions=True)
    return results, time.monotonic()


async def run_scenario(
    config: Config,
    store_factory: Any,
    sessions: int,
    args: argparse.Namespace,
    capture: LogCapture,
) -> dict[str, Any]:
    """One scenario (``args.scenario``) on a fresh engine; returns raw figures and the timeline."""
    ramp = args.ramp_seconds if args.scenario == "ramp" else 0.0
    engine = Engine(
        config,
        store_factory,
        providers=slow_providers(args),
        persistence_class=TimedPersistenceActor,
    )
    await engine.start()
    if not engine.database_ok:
        print("  WARNING: database not reachable at start-up; running on files only", flush=True)
    watcher = SessionWatcher(engine.hub, sessions)
    manuscript_ids = await save_manuscripts(engine, sessions, args.chapters)
    rss_before = proc_status()
    children = child_pids()
    cpu_before = cpu_seconds(), sum(cpu_seconds(pid) for pid in children)
    probe = LoopLagProbe()
    threads_cpu = ThreadCpuSampler()
    started = time.monotonic()
    results, all_started = await start_sessions(engine, manuscript_ids, ramp, args.moments)
    start_errors = [r for r in results if isinstance(r, BaseException)]
    if start_errors:
        print(f"  {len(start_errors)} start_session calls failed; first: {start_errors[0]!r}")
    watcher.expect(sessions - len(start_errors))
    per_session_s = args.chapters * (1 + 2 * args.moments) * args.provider_latency_ms / 1000
    timeout = args.timeout or max(600.0, ramp + 10 * per_session_s)
    timed_out = not await watcher.wait(timeout)
    finished = time.monotonic()
    cpu_after = cpu_seconds(), sum(cpu_seconds(pid) for pid in children)
    await probe.stop()
    cpu_by_thread = threads_cpu.stop()
    if timed_out:
        watcher.report_stall(engine, timeout)
    rss_engine = proc_status()
    create_us = file_create_cost_us(config.output_dir)  # after the run's own inode churn
    rss_database = sum(proc_status(pid).get("VmRSS", 0) for pid in child_pids())
    stats = await engine.persistence_stats(with_samples=True)
    backlog_left = await engine.flush()
    watcher.unsubscribe()
    await engine.stop()
    timeline: Timeline = stats.pop("bench_timeline")
    ceiling = None
    if timeline.database_work and engine.database_ok:
        print(
            f"  writing the run's {len(timeline.database_work)} database batches again, alone",
            flush=True,
        )
        ceiling = await database_ceiling(
            args.database_uri, timeline.database_work, config.persistence.embedded_checkpoints
        )
    return {
        "scenario": args.scenario,
        "sessions": sessions,
        "ramp_seconds": ramp,
        "completed": len(watcher.completed),
        "failed": len(watcher.failed),
        "start_errors": len(start_errors),
        "timed_out": timed_out,
        "started": started,
        "all_started": all_started,
        "finished": finished,
        "checkpoints_expected": sessions * checkpoints_per_session(args.chapters, args.moments),
        "stats": {k: v for k, v in stats.items() if k != "ack_latency_samples_ms"},
        "actor_samples": len(stats["ack_latency_samples_ms"]),
        "backlog_left": backlog_left,
        "loop_lags": list(zip(probe.times, probe.lags, strict=True)),
        "peak_threads": probe.peak_threads,
        "rss_before_kib": rss_before,
        "rss_engine_kib": rss_engine,
        "file_create_us_after": create_us,
        "rss_database_kib": rss_database,
        "cpu_cores_engine": (cpu_after[0] - cpu_before[0]) / (finished - started),
        "cpu_cores_database": (cpu_after[1] - cpu_before[1]) / (finished - started),
        "cpu_seconds_by_thread": cpu_by_thread,
        "timeline": timeline,
        "database_ceiling": ceiling,
        "offered_per_second": offered_load(args),
        "log_counts": dict(capture.counts),
        "log_first": list(capture.first),
    }


async def database_ceiling(
    uri: str, work: list[tuple[PersistBatch, dict[str, int]]], keep: int
) -> dict[str, Any]:
    """The database alone: the run's own batches written again, in order and back to back,
    through the same store code into a new database on the same server (stopped with the
    scenario), with no engine, no files and no sessions running. Whatever acknowledges
    after the database cannot sustain more checkpoints/s than this (nor can a writer behind
    the acknowledgement keep up with more for long)."""
    store = open_store(uri, "ack_latency_ceiling")
    children = child_pids()
    try:
        await store.ensure_indexes()
        cpu_before = sum(cpu_seconds(pid) for pid in children)
        started = time.perf_counter()
        await replay_batches(store, work, keep)
        wall = time.perf_counter() - started
        cpu = sum(cpu_seconds(pid) for pid in children) - cpu_before
    finally:
        await store.close()
    checkpoints = sum(len(batch.checkpoints) for batch, _ in work)
    records = sum(len(batch) for batch, _ in work)
    return {
        "batches": len(work),
        "checkpoints": checkpoints,
        "records": records,
        "documents": sum((Counter(batch_documents(batch)) for batch, _ in work), Counter()),
        "seconds": wall,
        "checkpoints_per_second": checkpoints / wall if wall else 0.0,
        "records_per_second": records / wall if wall else 0.0,
        "database_cpu_seconds": cpu,
        "database_cpu_ms_per_checkpoint": 1000 * cpu / checkpoints if checkpoints else 0.0,
    }


# --------------------------------------------------------------------------- analysis


@dataclass(slots=True)
class Ack:
    """One checkpoint's acknowledgement, split where its time went (ms)."""

    sent_at: float
    batch: int
    type: str
    sequence: int
    latency: float
    queued: float
    """Sent until its batch started (mailbox, previous commit, GIL)."""
    prepare: float
    """Batch start until files and database writes started."""
    write: float
    """Files and database, written at the same time."""


def acks_of(timeline: Timeline) -> list[Ack]:
    """Every SessionActor checkpoint with its latency and its parts."""
    acks = []
    for sent_at, index, kind, sequence in timeline.checkpoints:
        b = timeline.batches[index]
        acks.append(
            Ack(
                sent_at=sent_at,
                batch=index,
                type=kind,
                sequence=sequence,
                latency=(b.io_end - sent_at) * 1000,
                queued=(b.start - sent_at) * 1000,
                prepare=(b.io_start - b.start) * 1000,
                write=(b.io_end - b.io_start) * 1000,
            )
        )
    return acks


def windows_of(result: dict[str, Any], acks: list[Ack], settle: float) -> list[tuple[str, Any]]:
    """The named windows of a scenario: ``(name, predicate on Ack)``; the judged one first."""
    completions = [a.sent_at for a in acks if a.type == "session_completed"]
    first_completed = min(completions, default=result["finished"])
    steady_from = result["all_started"] + settle
    whole = ("whole run", lambda a: True)
    if result["scenario"] == "burst":
        return [
            (
                f"start burst (seq 1-{START_BURST_SEQUENCES}, no provider call yet)",
                lambda a: a.sequence <= START_BURST_SEQUENCES,
            ),
            (
                "after the start burst, all live (in step)",
                lambda a: a.sequence > START_BURST_SEQUENCES and a.sent_at < first_completed,
            ),
            ("sessions completing", lambda a: a.sent_at >= first_completed),
            whole,
        ]
    return [
        (
            "STEADY STATE (all live, spread)",
            lambda a: steady_from <= a.sent_at < first_completed,
        ),
        ("ramp-up (sessions starting)", lambda a: a.sent_at < steady_from),
        ("sessions completing", lambda a: a.sent_at >= first_completed),
        whole,
    ]


def summarise(
    acks: list[Ack], timeline: Timeline, lags: list[tuple[float, float]]
) -> dict[str, Any]:
    """Latency percentiles, rate, batches and the time breakdown of a set of acks."""
    if not acks:
        return {"checkpoints": 0}
    latencies = [a.latency for a in acks]
    first, last = min(a.sent_at for a in acks), max(a.sent_at for a in acks)
    indexes = sorted({a.batch for a in acks})
    batches = [timeline.batches[i] for i in indexes]
    per_batch = Counter(a.batch for a in acks)
    file_phases: Counter[str] = Counter()
    db_ops: Counter[str] = Counter()
    prepare_ops: Counter[str] = Counter()
    for b in batches:
        file_phases.update(b.file_phases)
        db_ops.update(b.db_ops)
        prepare_ops.update(b.prepare_ops)
    n = len(batches)
    window_lags = [lag for t, lag in lags if first <= t <= last]
    return {
        "checkpoints": len(acks),
        "seconds": last - first,
        "checkpoints_per_second": len(acks) / (last - first) if last > first else float("nan"),
        "p50_ms": percentile(latencies, 0.50),
        "p95_ms": percentile(latencies, 0.95),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies),
        "share_le_5_ms": sum(1 for x in latencies if x <= 5) / len(latencies),
        "share_le_25_ms": sum(1 for x in latencies if x <= 25) / len(latencies),
        "queued_p50_ms": percentile([a.queued for a in acks], 0.50),
        "queued_p99_ms": percentile([a.queued for a in acks], 0.99),
        "mean_queued_ms": sum(a.queued for a in acks) / len(acks),
        "mean_prepare_ms": sum(a.prepare for a in acks) / len(acks),
        "mean_write_ms": sum(a.write for a in acks) / len(acks),
        "batches": n,
        "mean_checkpoints_per_batch": len(acks) / n,
        "median_checkpoints_per_batch": percentile(list(per_batch.values()), 0.5),
        "largest_checkpoints_per_batch": max(per_batch.values()),
        "mean_messages_per_batch": sum(b.messages for b in batches) / n,
        "batch_ms": _per_batch(batches, lambda b: (b.end - b.start) * 1000),
        "files_ms": _per_batch(batches, lambda b: b.files_seconds * 1000),
        "db_ms": _per_batch(batches, lambda b: b.db_seconds * 1000),
        "write_ms": _per_batch(batches, lambda b: (b.io_end - b.io_start) * 1000),
        "prepare_ms": _per_batch(batches, lambda b: (b.io_start - b.start) * 1000),
        "acks_out_ms": _per_batch(batches, lambda b: (b.end - b.io_end) * 1000),
        "mean_files_per_batch": sum(b.files_count for b in batches) / n,
        "mean_session_updates_per_batch": sum(b.session_updates for b in batches) / n,
        "file_phases_ms_per_batch": {k: 1000 * v / n for k, v in file_phases.most_common()},
        "db_ops_ms_per_batch": {k: 1000 * v / n for k, v in db_ops.most_common()},
        "prepare_ops_ms_per_batch": {k: 1000 * v / n for k, v in prepare_ops.most_common()},
        "loop_lag_p50_ms": percentile(window_lags, 0.5),
        "loop_lag_p99_ms": percentile(window_lags, 0.99),
        "loop_lag_max_ms": max(window_lags, default=float("nan")),
    }


def _per_batch(
    batches: list[BatchTiming], value: Callable[[BatchTiming], float]
) -> dict[str, float]:
    values = [value(b) for b in batches]
    return {
        "mean": sum(values) / len(values),
        "p50": percentile(values, 0.5),
        "p99": percentile(values, 0.99),
    }


def histogram_shares(stats: dict[str, Any]) -> dict[str, float]:
    """The actor's own (never truncated) histogram: share of acks at most 5 and 25 ms."""
    counts = stats["ack_latency_counts"]
    total = sum(counts) or 1
    upto = dict(zip(LATENCY_BUCKETS_MS, counts, strict=False))
    below = 0
    shares: dict[str, float] = {}
    for bound in LATENCY_BUCKETS_MS:
        below += upto[bound]
        if bound in (5, 25):
            shares[f"<= {bound} ms"] = below / total
    return shares


def per_interval(
    acks: list[Ack], timeline: Timeline, origin: float, step: float
) -> list[dict[str, Any]]:
    """Checkpoints, rate, latency and batches per ``step`` seconds of ``sent_at``."""
    buckets: dict[int, list[Ack]] = defaultdict(list)
    for a in acks:
        buckets[int((a.sent_at - origin) // step)].append(a)
    rows = []
    for key in sorted(buckets):
        group = buckets[key]
        latencies = [a.latency for a in group]
        batches = [timeline.batches[i] for i in {a.batch for a in group}]
        rows.append(
            {
                "t": key * step,
                "checkpoints": len(group),
                "per_second": len(group) / step,
                "p50_ms": percentile(latencies, 0.5),
                "p99_ms": percentile(latencies, 0.99),
                "max_ms": max(latencies),
                "checkpoints_per_batch": len(group) / len(batches),
                "files_ms": 1000 * sum(b.files_seconds for b in batches) / len(batches),
                "db_ms": 1000 * sum(b.db_seconds for b in batches) / len(batches),
            }
        )
    return rows


def other_messages(timeline: Timeline) -> dict[str, dict[str, Any]]:
    """Per message type the actor handled besides checkpoints: how long it kept the actor
    from committing (commits it ran meanwhile left out) and its database calls."""
    starts = [b.start for b in timeline.batches]
    found: dict[str, dict[str, Any]] = {}
    for name, start, end, ops in timeline.other:
        nested = sum(
            b.end - b.start
            for b in timeline.batches[bisect.bisect_left(starts, start) :]
            if b.start <= end
        )
        busy = max(0.0, end - start - nested)
        entry = found.setdefault(name, {"count": 0, "seconds": 0.0, "max_ms": 0.0, "ops": {}})
        entry["count"] += 1
        entry["seconds"] += busy
        entry["max_ms"] = max(entry["max_ms"], busy * 1000)
        for what, seconds in ops.items():
            entry["ops"][what] = entry["ops"].get(what, 0.0) + seconds
    return found


def analyse(result: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Windows, records, cross-checks and the per-interval table of one scenario."""
    timeline: Timeline = result["timeline"]
    acks = acks_of(timeline)
    lags = result["loop_lags"]
    windows = {
        name: summarise([a for a in acks if keep(a)], timeline, lags)
        for name, keep in windows_of(result, acks, args.settle_seconds)
    }
    records = [
        (timeline.batches[index].io_end - sent_at) * 1000 for sent_at, index in timeline.records
    ]
    stats = result["stats"]
    return {
        "windows": windows,
        "new_session_records": {
            "count": len(records),
            "p50_ms": percentile(records, 0.5),
            "p99_ms": percentile(records, 0.99),
            "max_ms": max(records, default=float("nan")),
        },
        "other_messages": other_messages(timeline),
        "actor_histogram": histogram_shares(stats),
        "actor_observed": sum(stats["ack_latency_counts"]),
        "actor_samples_kept": result["actor_samples"],
        "actor_samples_truncated": sum(stats["ack_latency_counts"]) > SAMPLE_CAP,
        "interval_seconds": args.interval_seconds,
        "intervals": per_interval(acks, timeline, result["started"], args.interval_seconds),
    }


# --------------------------------------------------------------------------- printing


def _ms(d: dict[str, float]) -> str:
    return f"{d['mean']:.1f}/{d['p50']:.1f}/{d['p99']:.1f}"


def print_scenario(result: dict[str, Any], analysis: dict[str, Any]) -> None:
    r, stats = result, result["stats"]
    wall = r["finished"] - r["started"]
    mean_messages = stats["bench_messages"] / max(1, stats["batches"])
    print(
        f"  sessions {r['sessions']}: completed {r['completed']}, failed {r['failed']},"
        f" start errors {r['start_errors']}{', TIMED OUT' if r['timed_out'] else ''};"
        f" wall {wall:.1f} s (all started after {r['all_started'] - r['started']:.1f} s)\n"
        f"  checkpoints acknowledged {stats['checkpoints']} (expected"
        f" {r['checkpoints_expected']}), {stats['checkpoints'] / wall:.0f} ckpt/s over the run;"
        f" batches {stats['batches']}, mean {mean_messages:.1f} messages,"
        f" largest {stats['largest_batch']}; db failures {stats['db_failures']},"
        f" backlog left {r['backlog_left']}",
        flush=True,
    )
    header = (
        f"  {'window':<46} {'ckpts':>6} {'ckpt/s':>7} {'p50':>7} {'p95':>7} {'p99':>7}"
        f" {'max':>7} {'<=5ms':>6} {'<=25ms':>6} {'batches':>7} {'ckpt/b':>6} {'lag p99':>7}"
    )
    print(header + "\n  " + "-" * (len(header) - 2))
    for name, w in analysis["windows"].items():
        if not w["checkpoints"]:
            print(f"  {name:<46} {'(empty)':>6}")
            continue
        print(
            f"  {name:<46} {w['checkpoints']:>6} {w['checkpoints_per_second']:>7.0f}"
            f" {w['p50_ms']:>7.1f} {w['p95_ms']:>7.1f} {w['p99_ms']:>7.1f} {w['max_ms']:>7.1f}"
            f" {100 * w['share_le_5_ms']:>5.0f}% {100 * w['share_le_25_ms']:>5.0f}%"
            f" {w['batches']:>7} {w['mean_checkpoints_per_batch']:>6.1f}"
            f" {w['loop_lag_p99_ms']:>7.1f}"
        )
    print("  (latencies in ms; ckpt/b: SessionActor checkpoints per batch holding any)")
    for name, w in analysis["windows"].items():
        if not w["checkpoints"]:
            continue
        print(
            f"  -- {name}: per checkpoint, mean ms: queued {w['mean_queued_ms']:.1f}"
            f" (p50 {w['queued_p50_ms']:.1f}, p99 {w['queued_p99_ms']:.1f}),"
            f" batch prepare {w['mean_prepare_ms']:.1f}, files||database {w['mean_write_ms']:.1f}\n"
            f"     per batch mean/p50/p99 ms: whole commit {_ms(w['batch_ms'])},"
            f" files {_ms(w['files_ms'])}, database {_ms(w['db_ms'])},"
            f" files||database {_ms(w['write_ms'])}, prepare {_ms(w['prepare_ms'])},"
            f" acks out {_ms(w['acks_out_ms'])}\n"
            f"     per batch: {w['mean_messages_per_batch']:.1f} messages,"
            f" {w['mean_files_per_batch']:.1f} files, {w['mean_session_updates_per_batch']:.1f}"
            f" session updates; files: "
            + ", ".join(f"{k} {v:.2f}" for k, v in w["file_phases_ms_per_batch"].items())
            + "; database: "
            + ", ".join(f"{k} {v:.2f}" for k, v in w["db_ops_ms_per_batch"].items())
            + (
                "; database before the writes: "
                + ", ".join(f"{k} {v:.2f}" for k, v in w["prepare_ops_ms_per_batch"].items())
                if w["prepare_ops_ms_per_batch"]
                else ""
            )
        )
    rec = analysis["new_session_records"]
    hist = analysis["actor_histogram"]
    others = "; ".join(
        f"{name} x{o['count']}: {o['seconds']:.2f} s, max {o['max_ms']:.0f} ms"
        + "".join(f", {what} {seconds:.2f} s" for what, seconds in o["ops"].items())
        for name, o in analysis["other_messages"].items()
    )
    print(
        f"  new-session records (Engine.start_session, not counted above): {rec['count']},"
        f" p50 {rec['p50_ms']:.1f}, p99 {rec['p99_ms']:.1f}, max {rec['max_ms']:.1f} ms\n"
        f"  actor busy with other messages (not committing): {others or 'none'}\n"
        f"  actor's own histogram (all {analysis['actor_observed']} acks): "
        + ", ".join(f"{k} {100 * v:.1f}%" for k, v in hist.items())
        + f"; its sample deque kept {analysis['actor_samples_kept']}"
        + (
            " (TRUNCATED: its percentiles would cover the tail only)"
            if analysis["actor_samples_truncated"]
            else ""
        )
    )
    engine_rss, before = r["rss_engine_kib"], r["rss_before_kib"]
    print(
        f"  CPU over the run: engine {r['cpu_cores_engine']:.2f} cores, database process"
        f" {r['cpu_cores_database']:.2f} cores (of {os.cpu_count()}, shared with other jobs);"
        " engine CPU s by thread (kernel part): "
        + ", ".join(
            f"{k} {total:.1f} ({kernel:.1f})"
            for k, (total, kernel) in r["cpu_seconds_by_thread"].items()
        )
    )
    ceiling = r["database_ceiling"]
    if ceiling:
        cores = ceiling["database_cpu_ms_per_checkpoint"] * r["offered_per_second"] / 1000
        per = max(1, ceiling["checkpoints"])
        documents = sum(ceiling["documents"].values()) / per
        kinds = ", ".join(f"{n / per:.2f} {kind}" for kind, n in ceiling["documents"].items())
        print(
            f"  database alone (the run's {ceiling['batches']} batches written again back to"
            f" back, no engine): {ceiling['checkpoints_per_second']:.0f} ckpt/s"
            f" ({ceiling['records_per_second']:.0f} records/s,"
            f" {ceiling['records'] / max(1, ceiling['checkpoints']):.1f} per checkpoint, written"
            f" as {documents:.2f} documents per checkpoint: {kinds}) in"
            f" {ceiling['seconds']:.1f} s; database CPU"
            f" {ceiling['database_cpu_ms_per_checkpoint']:.2f} ms per checkpoint, so the"
            f" offered {r['offered_per_second']:.0f} ckpt/s need {cores:.2f} database cores"
        )
    print(
        f"  creating a file in the output folder after the run: {r['file_create_us_after']:.0f} us"
    )
    print(
        f"  RSS: engine {engine_rss.get('VmRSS', 0) / 1024:.0f} MB"
        f" (peak {engine_rss.get('VmHWM', 0) / 1024:.0f} MB, before the sessions"
        f" {before.get('VmRSS', 0) / 1024:.0f} MB), database process"
        f" {r['rss_database_kib'] / 1024:.0f} MB; peak threads {r['peak_threads']}"
        + (
            " (the engine's figures include the database batches kept for the replay;"
            " --no-ceiling keeps none)"
            if r["database_ceiling"]
            else ""
        )
    )
    print(
        f"  per {analysis['interval_seconds']:g} s (by sent_at):"
        " t s | ckpts/s | p50 | p99 | max ms | ckpt/batch | files ms | db ms"
    )
    for row in analysis["intervals"]:
        print(
            f"    {row['t']:5.0f} | {row['per_second']:6.0f} | {row['p50_ms']:6.1f} |"
            f" {row['p99_ms']:7.1f} | {row['max_ms']:7.1f} | {row['checkpoints_per_batch']:5.1f} |"
            f" {row['files_ms']:5.1f} | {row['db_ms']:6.1f}"
        )
    if r["log_counts"]:
        print(f"  engine log records: {r['log_counts']}")
        for text in r["log_first"]:
            print("    " + text.replace("\n", "\n    "))
    sys.stdout.flush()


def verdict(rows: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> list[str]:
    """One line per scenario on the target; the ramp's steady state is the judged figure."""
    lines = []
    for result, analysis in rows:
        for name, w in analysis["windows"].items():
            if name == "whole run" or name.startswith("STEADY"):
                if not w["checkpoints"]:
                    lines.append(f"{result['scenario']:>5} {name}: no checkpoints in the window")
                    continue
                ok = w["p50_ms"] <= TARGET_P50_MS and w["p99_ms"] <= TARGET_P99_MS
                judged = " <- judged" if name.startswith("STEADY") else ""
                lines.append(
                    f"{result['scenario']:>5} {name:<32} p50 {w['p50_ms']:7.1f} ms"
                    f" (<= {TARGET_P50_MS:g}), p99 {w['p99_ms']:7.1f} ms (<= {TARGET_P99_MS:g}):"
                    f" {'MET' if ok else 'MISSED'}{judged}"
                )
    return lines


def offered_load(args: argparse.Namespace) -> float:
    """Checkpoints/s N sessions ask for: ``4 + M`` per chapter of ``1 + 2M`` provider calls."""
    calls = 1 + 2 * args.moments
    return args.sessions * (4 + args.moments) / (calls * args.provider_latency_ms / 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--start", default="burst,ramp", help="scenarios, comma-separated: burst, ramp"
    )
    parser.add_argument("--chapters", type=int, default=2)
    parser.add_argument(
        "--moments", type=int, default=10, help="moments (images) per chapter (config default 10)"
    )
    parser.add_argument("--provider-latency-ms", type=int, default=1000)
    parser.add_argument(
        "--provider-latency-max-ms", type=int, default=0, help="> min: a deterministic spread"
    )
    parser.add_argument("--ramp-seconds", type=float, default=10.0)
    parser.add_argument(
        "--settle-seconds", type=float, default=2.0, help="after the last start, before steady"
    )
    parser.add_argument("--interval-seconds", type=float, default=2.0, help="timeline step")
    parser.add_argument("--timeout", type=float, default=0, help="seconds per scenario")
    parser.add_argument("--quick", action="store_true", help="100 sessions, 1 chapter, 5 s ramp")
    parser.add_argument("--output-dir", type=Path, default=None, help="default: a temp folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary output folder")
    parser.add_argument("--no-image-fsync", action="store_true", help="write images without fsync")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    parser.add_argument("--verbose", action="store_true", help="show the engine's INFO logs")
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip replaying the run's database batches alone (the database's ceiling)",
    )
    args = parser.parse_args()
    if args.quick:
        args.sessions, args.chapters, args.ramp_seconds = 100, 1, 5.0
    scenarios = [s.strip() for s in args.start.split(",") if s.strip()]
    if not scenarios or any(s not in ("burst", "ramp") for s in scenarios):
        parser.error("--start takes burst and/or ramp")
    if args.sessions < 1 or args.chapters < 1 or not 1 <= args.moments <= 20:
        parser.error("need --sessions >= 1, --chapters >= 1 and --moments in 1..20")

    capture = capture_logs(args.verbose)
    instrument_file_phases()
    TimedPersistenceActor.keep_database_work = not args.no_ceiling

    temporary = args.output_dir is None
    base = Path(tempfile.mkdtemp(prefix="illustrator-ack-")) if temporary else args.output_dir
    base = base.resolve()
    base.mkdir(parents=True, exist_ok=True)
    config = config_from_mapping({"output": {"directory": str(base)}}, env=os.environ)
    overrides = {k: v for k, v in os.environ.items() if k.startswith("ILLUSTRATOR_")}
    create_us, waited = wait_for_cheap_file_creation(base)
    print(
        f"output {base} on {filesystem_of(base)}; creating a file there takes"
        f" {create_us:.0f} us (waited {waited:.0f} s for it); {os.cpu_count()} CPUs;"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n"
        f"{args.sessions} sessions x {args.chapters} chapters x {args.moments} moments ="
        f" {checkpoints_per_session(args.chapters, args.moments)} checkpoints per session;"
        f" every provider call {args.provider_latency_ms}"
        f"{f'-{args.provider_latency_max_ms}' if args.provider_latency_max_ms else ''} ms;"
        f" image fsync {'off' if args.no_image_fsync else 'on'}\n"
        f"offered load once all run: {offered_load(args):.0f} checkpoints/s"
        " (if acknowledgements took no time)\n"
        f"persistence {asdict(config.persistence)}\n"
        f"environment overrides {overrides or 'none'}",
        flush=True,
    )
    rows: list[tuple[dict[str, Any], dict[str, Any]]] = []
    try:
        for scenario in scenarios:
            args.scenario = scenario
            how = "at once" if scenario == "burst" else f"over {args.ramp_seconds:g} s"
            print(f"\n== {scenario}: {args.sessions} sessions started {how}", flush=True)
            capture.reset()
            result = run_one(args.sessions, base, args, capture, level=run_scenario)
            analysis = analyse(result, args)
            print_scenario(result, analysis)
            rows.append((result, analysis))
    finally:
        if rows:
            print("\nTarget: ack latency p50 <= 5 ms and p99 <= 25 ms (1,000 sessions, 1 s calls)")
            for line in verdict(rows):
                print("  " + line)
        if args.json is not None:
            out = [
                {**{k: v for k, v in r.items() if k not in ("timeline", "loop_lags")}, **a}
                for r, a in rows
            ]
            args.json.write_text(json.dumps(out, indent=2, default=str), encoding="utf-8")
        if temporary and not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    bad = any(
        r["timed_out"] or r["failed"] or r["start_errors"] or r["completed"] < r["sessions"]
        for r, _ in rows
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
