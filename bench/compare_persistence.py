"""Benchmark: four ways to persist session checkpoints, side by side on ONE database server.

One embedded SecantusDB server is started for the whole run; every (variant, level) gets
its own database on it, dropped afterwards. At each concurrency level N (``--sessions
1,100,1000``) N simulated sessions each persist ``--steps`` checkpoints one after the
other (a session waits for the acknowledgement before its next checkpoint, as a real one
does). Variants:

- ``actor``: our PersistenceActor driven directly (no pipeline, no SessionActors):
  ``CheckpointReached`` messages with a real Checkpoint, session ``$set`` fields, the
  session file and (first checkpoint) the new session document; group commit of JSON
  files (fsync on, as in production; ``--no-fsync`` to drop it) and one database batch.
- ``naive``: per checkpoint one ``insert_one`` (the checkpoint document) and one
  ``update_one`` (the same ``$push``/``$slice``, ``$max`` and ``$set`` our batch applies)
  with ``j: true``; PyMongo async, at most 64 operations in flight (more starve its event loop).
- ``langgraph``: LangGraph's ``MongoDBSaver`` (langgraph-checkpoint-mongodb) under a
  compiled ``StateGraph`` of sequential nodes, one thread per session, ``durability="sync"``
  (each checkpoint persisted before the next step), ``ainvoke`` of N threads at once. Its
  client uses ``w=1, j=true``. It also writes ``put_writes`` per task (counted apart).
- ``raw``: the database's ceiling for the same operations: every database batch the
  ``actor`` variant wrote at this level (captured at the store, copied), replayed back to
  back through the same store code into a fresh database, with no actors and no files.
  Each checkpoint's latency is its batch's write time. Needs ``actor`` in the same run.
- ``bulk``: per round one ``insert_many`` of N same-size checkpoint documents plus one
  ``bulk_write`` of N session updates: the naive writer's operations (one session update
  per checkpoint) in bulk. Each checkpoint's latency is its round's duration.

Latency is measured where the session learns its checkpoint is durable (the asyncio loop),
from the moment it asked. Checkpoints/s is checkpoints / wall time of the level.

Run: ``.venv/bin/python bench/compare_persistence.py [--sessions 1,100,1000] [--steps 15]
[--quick] [--variants actor,raw,naive,langgraph,bulk] [--payload 600] [--no-fsync] [--json F]``.
``--quick`` uses 5 checkpoints per session. Needs ``pip install -e '.[bench]'`` for the
LangGraph variant (it is skipped with a note otherwise).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypedDict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from checkpoints import (  # noqa: E402  (bench/checkpoints.py)
    replay_batches,
    wait_for_cheap_file_creation,
)
from pymongo import AsyncMongoClient, MongoClient, UpdateOne  # noqa: E402

from actors.messages import CheckpointPersisted, CheckpointReached  # noqa: E402
from actors.persistence import PersistenceActor  # noqa: E402
from actors.state import SessionState  # noqa: E402
from config import PersistenceConfig  # noqa: E402
from domain import CheckpointType, ProcessingStep, SessionId, SessionStatus, new_id  # noqa: E402
from storage.embedded import EmbeddedDatabase  # noqa: E402
from storage.files import FileStore  # noqa: E402
from storage.mongo import MongoStore, open_store  # noqa: E402
from storage.records import Checkpoint, PersistBatch  # noqa: E402

EMBEDDED_KEEP = 16
NAIVE_IN_FLIGHT = 64
ACK_TIMEOUT = 120.0


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


class Workload:
    """Session documents and checkpoints shared by every variant (same sizes)."""

    def __init__(self, steps: int, payload: int) -> None:
        self.steps = steps
        self.blob = "x" * payload

    def new_state(self) -> SessionState:
        state = SessionState(
            session_id=SessionId(new_id()),
            manuscript_id=new_id(),
            style_config={},
            max_emotional_moments=2,
        )
        state.status = SessionStatus.RUNNING
        return state

    def checkpoint(self, state: SessionState, seq: int) -> Checkpoint:
        state.last_sequence_number = seq
        state.last_event_seq = seq
        return Checkpoint(
            session_id=state.session_id,
            sequence_number=seq,
            checkpoint_type=CheckpointType.IMAGES_GENERATING,
            step=ProcessingStep.GENERATING_IMAGES,
            chapter_number=1,
            next_action="next image",
            progress_percent=min(100, seq * 5),
            checkpoint_data={"payload": self.blob},
            processing_state={"total_images_generated": seq},
        )

    @staticmethod
    def session_update(state: SessionState, checkpoint: Checkpoint) -> dict[str, Any]:
        """The update our batch applies to one session (here for one checkpoint)."""
        return {
            "$push": {"checkpoints": {"$each": [checkpoint.compact()], "$slice": -EMBEDDED_KEEP}},
            "$max": {"last_sequence_number": checkpoint.sequence_number},
            "$set": state.session_fields(),
        }


Result = dict[str, Any]


def result(
    variant: str, sessions: int, wall: float, latencies: list[float], **extra: Any
) -> Result:
    count = len(latencies)
    return {
        "variant": variant,
        "sessions": sessions,
        "checkpoints": count,
        "wall_seconds": wall,
        "checkpoints_per_second": count / wall if wall > 0 else float("nan"),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        **extra,
    }


# --------------------------------------------------------------------------- (a) the actor


class AckRef:
    """Stands in for a SessionActor's ref: the actor only calls ``tell``."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[CheckpointPersisted] | None = None

    def tell(self, message: CheckpointPersisted) -> None:
        self.loop.call_soon_threadsafe(self._deliver, message)

    def _deliver(self, message: CheckpointPersisted) -> None:
        if self.future is not None and not self.future.done():
            self.future.set_result(message)


async def run_actor(uri: str, db: str, work: Workload, sessions: int, args: Any) -> Result:
    store = open_store(uri, db)
    await store.ensure_indexes()
    await store.close()
    # Under the run's folder, deleted with it at the end: deleting thousands of files
    # between levels would slow the next level's file creations (see checkpoints.py).
    out = Path(tempfile.mkdtemp(prefix="cmp-actor-", dir=args.base))
    create_us, waited = wait_for_cheap_file_creation(out)
    print(
        f"  actor, {sessions} sessions: creating a file takes {create_us:.0f} us"
        f" (waited {waited:.0f} s for it)",
        flush=True,
    )
    files = FileStore(out, fsync=not args.no_fsync)
    files.ensure_layout()
    settings = PersistenceConfig(fsync=not args.no_fsync, embedded_checkpoints=EMBEDDED_KEEP)
    captured: list[PersistBatch] = []
    args.captured[sessions] = captured

    def recording_store() -> MongoStore:
        store = open_store(uri, db)
        write_batch = store.write_batch

        async def write_and_keep(batch: PersistBatch, keep: int) -> set[str]:
            fenced = await write_batch(batch, keep)
            if measuring.is_set():
                # No copy: neither write_batch nor the actor changes a batch once written,
                # and a deep copy here would be charged to the actor's commit.
                captured.append(batch)
            return fenced

        store.write_batch = write_and_keep  # type: ignore[method-assign]
        return store

    measuring = threading.Event()
    actor = await asyncio.to_thread(PersistenceActor.start, files, recording_store, settings)
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: list[str] = []

    async def session() -> None:
        state = work.new_state()
        ref = AckRef(loop)
        for seq in range(1, work.steps + 1):
            cp = work.checkpoint(state, seq)
            ref.future = loop.create_future()
            message = CheckpointReached(
                session_id=state.session_id,
                checkpoint=cp,
                session_fields=state.session_fields(),
                session_file=state.session_file(),
                new_session=state.session_document() if seq == 1 else None,
                reply_to=ref,  # type: ignore[arg-type]
            )
            actor.tell(message)
            ack = await asyncio.wait_for(ref.future, ACK_TIMEOUT)  # a dead actor never answers
            latencies.append((time.monotonic() - message.sent_at) * 1000)
            if ack.error:
                errors.append(ack.error)

    await session()  # warm-up: connections, indexes, first files (not counted)
    latencies.clear()
    before = await asyncio.to_thread(lambda: actor.proxy().stats.get().as_dict())
    measuring.set()
    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    wall = time.perf_counter() - started
    stats = await asyncio.to_thread(lambda: actor.proxy().stats.get().as_dict())
    await asyncio.to_thread(actor.stop)  # writes the summaries still held back
    measuring.clear()
    batches = stats["batches"] - before["batches"]
    return result(
        "actor",
        sessions,
        wall,
        latencies,
        errors=len(errors),
        batches=batches,
        mean_batch=(stats["checkpoints"] - before["checkpoints"]) / max(1, batches),
        db_backlog=stats["backlog_records"],
    )


# --------------------------------------------------------------------------- (b) naive


async def run_naive(uri: str, db: str, work: Workload, sessions: int, args: Any) -> Result:
    store = open_store(uri, db)
    await store.ensure_indexes()
    await store.close()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, w=1, journal=True)
    database = client[db]
    gate = asyncio.Semaphore(NAIVE_IN_FLIGHT)
    latencies: list[float] = []

    async def session() -> None:
        state = work.new_state()
        async with gate:
            await database.sessions.insert_one(state.session_document())
        for seq in range(1, work.steps + 1):
            asked = time.monotonic()
            cp = work.checkpoint(state, seq)
            async with gate:
                await database.checkpoints.insert_one(cp.to_document())
            async with gate:
                await database.sessions.update_one(
                    {"_id": state.session_id}, work.session_update(state, cp)
                )
            latencies.append((time.monotonic() - asked) * 1000)

    await session()  # warm-up (not counted)
    latencies.clear()
    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    wall = time.perf_counter() - started
    await client.close()
    return result("naive", sessions, wall, latencies)


# --------------------------------------------------------------------------- (c) LangGraph


def langgraph_available() -> str | None:
    """None when langgraph-checkpoint-mongodb imports, else why not."""
    try:
        import langgraph.checkpoint.mongodb  # noqa: F401
        import langgraph.graph  # noqa: F401
    except ImportError as exc:
        return f"{exc} (pip install -e '.[bench]')"
    return None


async def run_langgraph(uri: str, db: str, work: Workload, sessions: int, args: Any) -> Result:
    from langgraph.checkpoint.mongodb import MongoDBSaver
    from langgraph.graph import END, START, StateGraph

    latencies: list[float] = []
    writes: list[float] = []

    class TimedSaver(MongoDBSaver):
        async def aput(self, *a: Any, **k: Any) -> Any:
            asked = time.monotonic()
            answer = await super().aput(*a, **k)
            latencies.append((time.monotonic() - asked) * 1000)
            return answer

        async def aput_writes(self, *a: Any, **k: Any) -> None:
            asked = time.monotonic()
            await super().aput_writes(*a, **k)
            writes.append((time.monotonic() - asked) * 1000)

    class State(TypedDict):
        step: int
        payload: str

    def node(state: State) -> dict[str, Any]:
        return {"step": state["step"] + 1, "payload": work.blob}

    # Checkpoints per thread with durability="sync": the input (-1) plus one per super-step
    # (0 .. nodes), so ``steps - 2`` nodes give ``steps`` checkpoints.
    builder = StateGraph(State)
    names = [f"step_{i}" for i in range(max(1, work.steps - 2))]
    for name in names:
        builder.add_node(name, node)
    for left, right in zip([START, *names], [*names, END], strict=True):
        builder.add_edge(left, right)
    client: MongoClient[dict[str, Any]] = MongoClient(uri, w=1, journal=True)
    saver = await asyncio.to_thread(TimedSaver, client, db_name=db)
    graph = builder.compile(checkpointer=saver)

    async def session() -> None:
        config = {"configurable": {"thread_id": new_id()}}
        await graph.ainvoke({"step": 0, "payload": work.blob}, config, durability="sync")

    await session()  # warm-up (not counted)
    latencies.clear()
    writes.clear()
    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    wall = time.perf_counter() - started
    client.close()
    return result(
        "langgraph",
        sessions,
        wall,
        latencies,
        put_writes=len(writes),
        put_writes_p50_ms=percentile(writes, 0.5),
    )


# --------------------------------------------------------------------------- (d) raw ceiling


async def run_raw(uri: str, db: str, work: Workload, sessions: int, args: Any) -> Result:
    batches: list[PersistBatch] | None = args.captured.get(sessions)
    if not batches:
        raise SystemExit("the raw variant replays the actor's batches: list actor before raw")
    store = open_store(uri, db)
    await store.ensure_indexes()
    started = time.perf_counter()
    seconds = await replay_batches(store, ((batch, {}) for batch in batches), EMBEDDED_KEEP)
    wall = time.perf_counter() - started
    latencies = [
        1000 * took for batch, took in zip(batches, seconds, strict=True) for _ in batch.checkpoints
    ]
    await store.close()
    return result(
        "raw",
        sessions,
        wall,
        latencies,
        batches=len(batches),
        session_updates=sum(len(b.session_updates) for b in batches),
    )


async def run_bulk(uri: str, db: str, work: Workload, sessions: int, args: Any) -> Result:
    store = open_store(uri, db)
    await store.ensure_indexes()
    await store.close()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri, w=1, journal=True)
    database = client[db]
    states = [work.new_state() for _ in range(sessions)]
    latencies: list[float] = []
    warm = work.new_state()  # warm-up: connection and first writes (not counted)
    await database.sessions.insert_one(warm.session_document())
    await database.checkpoints.insert_one(work.checkpoint(warm, 1).to_document())
    started = time.perf_counter()
    await database.sessions.insert_many([s.session_document() for s in states], ordered=False)
    for seq in range(1, work.steps + 1):
        asked = time.monotonic()
        cps = [work.checkpoint(s, seq) for s in states]
        await database.checkpoints.insert_many([cp.to_document() for cp in cps], ordered=False)
        await database.sessions.bulk_write(
            [
                UpdateOne({"_id": s.session_id}, work.session_update(s, cp))
                for s, cp in zip(states, cps, strict=True)
            ],
            ordered=False,
        )
        latencies.extend([(time.monotonic() - asked) * 1000] * sessions)
    wall = time.perf_counter() - started
    await client.close()
    return result("bulk", sessions, wall, latencies)


VARIANTS: dict[str, Callable[..., Any]] = {
    "actor": run_actor,
    "naive": run_naive,
    "langgraph": run_langgraph,
    "raw": run_raw,
    "bulk": run_bulk,
}


# --------------------------------------------------------------------------- report


def print_table(rows: list[Result]) -> None:
    header = (
        f"{'sessions':>8} {'variant':<10} {'ckpts':>7} {'wall s':>8} {'ckpt/s':>8}"
        f" {'p50 ms':>9} {'p99 ms':>9} {'x raw':>6} {'x naive':>7} {'x lgraph':>8}"
    )
    print("\n" + header + "\n" + "-" * len(header))
    for sessions in sorted({r["sessions"] for r in rows}):
        level = {r["variant"]: r for r in rows if r["sessions"] == sessions}
        for name, r in level.items():
            ratios = []
            for other in ("raw", "naive", "langgraph"):
                base = level.get(other, {}).get("checkpoints_per_second")
                ratios.append(f"{r['checkpoints_per_second'] / base:.2f}" if base else "-")
            print(
                f"{sessions:>8} {name:<10} {r['checkpoints']:>7} {r['wall_seconds']:>8.2f}"
                f" {r['checkpoints_per_second']:>8.0f} {r['p50_ms']:>9.2f} {r['p99_ms']:>9.2f}"
                f" {ratios[0]:>6} {ratios[1]:>7} {ratios[2]:>8}"
            )
    print(
        "\nx raw / x naive / x lgraph: this row's checkpoints/s divided by that variant's"
        " at the same level."
    )


async def run_all(
    uri: str, args: argparse.Namespace, levels: list[int], names: list[str]
) -> list[Result]:
    rows: list[Result] = []
    work = Workload(args.steps, args.payload)
    for sessions in levels:
        print(f"\n== {sessions} concurrent sessions x {args.steps} checkpoints", flush=True)
        for name in names:
            db = f"cmp_{name}_{sessions}_{os.getpid()}"
            row = await VARIANTS[name](uri, db, work, sessions, args)
            extras = {
                k: v for k, v in row.items() if k not in ("variant", "sessions", "wall_seconds")
            }
            print(
                f"  {name:<10} {row['checkpoints_per_second']:8.0f} ckpt/s"
                f"  p50 {row['p50_ms']:.2f} ms"
                f"  p99 {row['p99_ms']:.2f} ms  wall {row['wall_seconds']:.2f}s  {extras}",
                flush=True,
            )
            rows.append(row)
            client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(uri)
            await client.drop_database(db)
            await client.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,100,1000", help="comma-separated levels")
    parser.add_argument("--steps", type=int, default=15, help="checkpoints per session")
    parser.add_argument("--quick", action="store_true", help="5 checkpoints per session")
    parser.add_argument("--variants", default="actor,raw,naive,langgraph,bulk")
    parser.add_argument("--payload", type=int, default=600, help="checkpoint_data bytes")
    parser.add_argument("--no-fsync", action="store_true", help="actor: files without fsync")
    parser.add_argument("--dir", default=None, help="temp folder parent (a real disk)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    args.captured = {}
    if args.quick:
        args.steps = 5
    levels = [int(s) for s in args.sessions.split(",") if s.strip()]
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(names) - set(VARIANTS)
    if unknown or args.steps < 3:
        parser.error(f"unknown variants {sorted(unknown)} or --steps < 3")
    missing = langgraph_available() if "langgraph" in names else None
    if missing:
        print(f"langgraph variant skipped: {missing}", flush=True)
        names.remove("langgraph")
    base = args.base = Path(tempfile.mkdtemp(prefix="cmp-db-", dir=args.dir))
    database = EmbeddedDatabase(base / "database")
    uri = database.start()
    print(
        f"SecantusDB at {uri}; data in {base}; {os.cpu_count()} CPUs;"
        f" Python {sys.version.split()[0]}; payload {args.payload} B;"
        f" actor fsync {'off' if args.no_fsync else 'on'}",
        flush=True,
    )
    rows: list[Result] = []
    try:
        rows = asyncio.run(run_all(uri, args, levels, names))
    finally:
        database.stop()
        shutil.rmtree(base, ignore_errors=True)
        if rows:
            print_table(rows)
        if args.json is not None:
            args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
