"""Several instances on one database (guarantee 7, docs/architecture.md): two engines in
one process.

Each engine has its own ``instance_id``; they share the database and the output folder
(a shared volume), as a deployment of several servers would. The crash version, with
real server processes and ``kill -9``, is tests/crash/test_multi_instance_crash.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from tests_support import EventRecorder, make_manuscript, store_maker

from actors.engine import Engine
from actors.persistence import PersistenceActor
from config import config_from_mapping
from errors import ConflictError, DatabaseUnavailableError
from pipeline.providers import STAGE_ANALYZE, STAGE_IMAGE, RecordingProviders
from storage.verify import verify

pytestmark = pytest.mark.timeout(120)

LEASE = 0.6
"""Seconds: short, so that takeovers happen quickly."""


class StalledRenewals(PersistenceActor):
    """An instance whose lease renewals stall (a long GC pause, a partition...)."""

    def _renew_leases(self) -> None:
        return None


async def start_instance(
    tmp_path: Path,
    store_factory: Any,
    name: str,
    providers: Any,
    folder: str = "shared-output",
    **kwargs: Any,
) -> Engine:
    config = config_from_mapping(
        {
            "output": {"directory": str(tmp_path / folder)},
            "processing": {
                "retry_backoff_ms": 5,
                "auto_resume": True,
                "instance_id": name,
                "lease_seconds": LEASE,
            },
            "providers": {"image_size": 64},
        },
        env={},
    )
    engine = Engine(config, store_factory, providers=providers, **kwargs)
    await engine.start()
    return engine


@pytest.fixture
async def instances(tmp_path: Path, backend: str, request: pytest.FixtureRequest):
    """``await make(name, providers, **engine_kwargs)``: instances sharing everything."""
    factory = store_maker(backend, request)(f"t_{uuid.uuid4().hex[:12]}")
    engines: list[Engine] = []

    async def make(name: str, providers: Any, *, wrap: Any = None, **kwargs: Any) -> Engine:
        made = factory if wrap is None else (lambda: wrap(factory()))
        engine = await start_instance(tmp_path, made, name, providers, **kwargs)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        if engine.supervisor is not None:
            await engine.stop(pause_timeout=10)


def gate_on_first_analysis() -> tuple[RecordingProviders, threading.Event, threading.Event]:
    """Providers whose first analysis call blocks until ``release`` is set."""
    entered, release = threading.Event(), threading.Event()

    def before_call(stage: str, key: Any) -> None:
        if stage == STAGE_ANALYZE and not entered.is_set():
            entered.set()
            release.wait(30)

    return RecordingProviders(before_call=before_call), entered, release


async def wait_until(condition: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def test_a_session_run_by_a_live_instance_is_not_taken_by_another(instances) -> None:
    providers, entered, release = gate_on_first_analysis()
    a = await instances("instance-a", providers)
    b = await instances("instance-b", RecordingProviders())
    mid = await a.save_manuscript(make_manuscript(1))
    sid = (await a.start_session(mid, max_emotional_moments=1))["session_id"]
    try:
        await asyncio.to_thread(entered.wait, 20)
        # Three lease periods pass: A renews, so B may neither resume nor take it over.
        for _ in range(3):
            assert await b.recover(takeover=True) == []
            await asyncio.sleep(LEASE)
        with pytest.raises(ConflictError, match="instance-a"):
            await b.resume_session(sid)
        with pytest.raises(ConflictError, match="instance-a"):
            await b.cancel_stopped_session(sid)
        document = await b.store.get_session(sid)
        assert (document["owner"], document["epoch"]) == ("instance-a", 1)
    finally:
        release.set()
    assert await EventRecorder(a).wait_final(sid) == "completed"
    await a.flush()
    document = await b.store.get_session(sid)
    assert document["status"] == "completed"
    assert document["owner"] is None  # released when it finished


async def test_a_stalled_instance_is_taken_over_and_fenced(instances, tmp_path: Path) -> None:
    stalled, entered, release = gate_on_first_analysis()
    a = await instances("instance-a", stalled, persistence_class=StalledRenewals)
    taker = RecordingProviders()
    b = await instances("instance-b", taker)
    b_events = EventRecorder(b)
    mid = await a.save_manuscript(make_manuscript(2))
    sid = (await a.start_session(mid, max_emotional_moments=2))["session_id"]
    await asyncio.to_thread(entered.wait, 20)  # A is inside chapter 1's analysis

    # A's lease runs out; B takes the session over and finishes it.
    taken = await wait_until(lambda: b.recover(takeover=True), what="the takeover")
    assert taken == [sid]
    assert await b_events.wait_final(sid) == "completed"
    await b.flush()

    # A wakes up: its analysis result must not reach any record, and A stops.
    release.set()
    await wait_until(
        lambda: asyncio.sleep(0, result=a.live_snapshot(sid) is None), what="A to stop"
    )
    await a.flush()
    stats = await a.persistence_stats()
    assert stats["fenced_sessions"] == 1

    document = await b.store.get_session(sid)
    assert document["status"] == "completed"
    assert document["epoch"] == 2 and document["owner"] is None
    checkpoints = await b.store.list_checkpoints(sid)
    assert [cp.sequence_number for cp in checkpoints] == list(range(1, len(checkpoints) + 1))
    epochs = [cp.epoch for cp in checkpoints]
    assert epochs == sorted(epochs) and epochs[-1] == 2
    # A made only the first three checkpoints (start, manuscript, chapter 1 start).
    assert epochs.count(1) == 3
    # B redid nothing A had made durable, and made each image once.
    assert taker.repeated() == {}
    assert taker.count(STAGE_ANALYZE) == 2  # both chapters: A's never became durable
    assert taker.count(STAGE_IMAGE) == 4
    # Files (shared folder) and database agree, images match their records.
    report = await verify(b.store, b.files, b.output_dir)
    assert report.ok, report.render()


class Partition:
    """A store that fails like an unreachable database while ``down`` is set."""

    def __init__(self, store: Any, down: threading.Event) -> None:
        self._store = store
        self._down = down
        self.seeds = getattr(store, "seeds", ())

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not asyncio.iscoroutinefunction(attribute) or name == "close":
            return attribute

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self._down.is_set():
                raise DatabaseUnavailableError(f"partitioned ({name})")
            return await attribute(*args, **kwargs)

        return call


async def test_an_instance_cut_off_from_the_database_is_fenced_when_it_returns(instances) -> None:
    """A partition: A keeps working on its own files (guarantee 4), B takes the session
    over, and when A reaches the database again nothing of A's lands in the record."""
    cut_off = threading.Event()
    stalled, entered, release = gate_on_first_analysis()
    a = await instances(
        "instance-a", stalled, wrap=lambda store: Partition(store, cut_off), folder="a-output"
    )
    b = await instances("instance-b", RecordingProviders(), folder="b-output")
    b_events, a_events = EventRecorder(b), EventRecorder(a)
    mid = await a.save_manuscript(make_manuscript(2))
    await b.save_manuscript(make_manuscript(2), mid)  # B's folder has its own copy
    sid = (await a.start_session(mid, max_emotional_moments=2))["session_id"]
    await asyncio.to_thread(entered.wait, 20)
    cut_off.set()

    taken = await wait_until(lambda: b.recover(takeover=True), what="the takeover")
    assert taken == [sid]
    assert await b_events.wait_final(sid) == "completed"
    await b.flush()
    before = await b.store.list_checkpoints(sid)

    release.set()  # A goes on, on its files alone
    assert await a_events.wait_final(sid) == "completed"
    assert (await a.persistence_stats())["backlog_records"] > 0
    cut_off.clear()  # A reaches the database again: the breaker's probe drains A's backlog

    async def drained() -> bool:
        return await a.flush() == 0

    await wait_until(drained, what="A's backlog to drain")
    stats = await a.persistence_stats()
    assert stats["fenced_sessions"] == 1

    document = await b.store.get_session(sid)
    assert (document["status"], document["epoch"], document["owner"]) == ("completed", 2, None)
    after = await b.store.list_checkpoints(sid)
    assert [cp.to_json() for cp in after] == [cp.to_json() for cp in before]
    assert [cp.epoch for cp in after].count(1) == 3
