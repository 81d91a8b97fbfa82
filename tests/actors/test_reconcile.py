"""Start-up reconciliation: the lagging side (files or database) is brought up to date."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from tests_support import EventRecorder, make_manuscript, store_maker

from actors.engine import Engine
from actors.messages import CheckpointReached, PauseSession
from actors.persistence import PersistenceActor
from config import config_from_mapping
from pipeline.providers import RecordingProviders
from storage.mongo import open_store

pytestmark = pytest.mark.timeout(180)


def engine_config(out: Path) -> Any:
    return config_from_mapping(
        {
            "output": {"directory": str(out)},
            "processing": {"auto_resume": False},
            "providers": {"image_size": 32},
        },
        env={},
    )


async def start_engine(out: Path, factory: Any, **kwargs: Any) -> Engine:
    kwargs.setdefault("providers", RecordingProviders())
    engine = Engine(engine_config(out), factory, **kwargs)
    await engine.start()
    return engine


@contextlib.asynccontextmanager
async def running_engine(out: Path, factory: Any, **kwargs: Any) -> AsyncIterator[Engine]:
    """A started engine (a restart on ``out``), stopped on the way out."""
    engine = await start_engine(out, factory, **kwargs)
    try:
        yield engine
    finally:
        await engine.stop()


async def run_one(engine: Engine) -> str:
    recorder = EventRecorder(engine)
    mid = await engine.save_manuscript(make_manuscript(2))
    sid = (await engine.start_session(mid, max_emotional_moments=2))["session_id"]
    await recorder.wait_final(sid)
    await engine.flush()
    return str(sid)


async def test_files_ahead_of_an_empty_database_fill_it(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    first = await start_engine(tmp_path / "out", databases(f"a{uuid.uuid4().hex[:8]}"))
    sid = await run_one(first)
    expected = [cp.to_json() for cp in await first.store.list_checkpoints(sid)]
    images = [i.to_json() for i in await first.store.list_images(sid)]
    await first.stop()

    # Same files, a database that never saw them (as after an outage of the whole run).
    async with running_engine(tmp_path / "out", databases(f"b{uuid.uuid4().hex[:8]}")) as second:
        assert second.last_reconcile is not None
        assert second.last_reconcile.checkpoints_to_database == len(expected)
        assert second.last_reconcile.sessions_created_in_database == 1
        assert [cp.to_json() for cp in await second.store.list_checkpoints(sid)] == expected
        assert [i.to_json() for i in await second.store.list_images(sid)] == images
        document = await second.store.get_session(sid)
        assert document["status"] == "completed"
        assert document["last_sequence_number"] == len(expected)
        assert await second.store.get_manuscript(document["manuscript_id"]) is not None


async def test_deleted_files_are_rewritten_from_the_database(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"c{uuid.uuid4().hex[:8]}"
    first = await start_engine(tmp_path / "out", databases(name))
    sid = await run_one(first)
    expected = [cp.to_json() for cp in await first.store.list_checkpoints(sid)]
    await first.stop()
    shutil.rmtree(tmp_path / "out" / "sessions")

    async with running_engine(tmp_path / "out", databases(name)) as second:
        assert second.last_reconcile is not None
        assert second.last_reconcile.checkpoints_to_files == len(expected)
        assert [cp.to_json() for cp in second.files.load_checkpoints(sid)] == expected
        session_file = second.files.load_session_file(sid)
        assert session_file["status"] == "completed"
        assert session_file["last_sequence_number"] == len(expected)


class PauseAtFive(PersistenceActor):
    def on_receive(self, message: Any) -> Any:
        if (
            isinstance(message, CheckpointReached)
            and message.checkpoint
            and message.checkpoint.sequence_number == 5
        ):
            message.reply_to.tell(PauseSession())
        return super().on_receive(message)


async def test_the_side_with_the_higher_sequence_wins_the_session_record(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    stale_name, fresh_name = f"d{uuid.uuid4().hex[:8]}", f"e{uuid.uuid4().hex[:8]}"
    # The stale database saw the session only up to its pause (checkpoint 6).
    first = await start_engine(
        tmp_path / "stale", databases(stale_name), persistence_class=PauseAtFive
    )
    sid = await run_one(first)
    await first.stop()
    # The files of a later run (resumed to completion) are ahead of it.
    for item in ("sessions", "manuscripts", "generated_images"):
        shutil.copytree(tmp_path / "stale" / item, tmp_path / "ahead" / item)
    second = await start_engine(tmp_path / "ahead", databases(fresh_name))
    recorder = EventRecorder(second)
    await second.resume_session(sid)
    await recorder.wait_final(sid)
    await second.flush()
    total = len(await second.store.list_checkpoints(sid))
    await second.stop()

    async with running_engine(tmp_path / "ahead", databases(stale_name)) as third:
        document = await third.store.get_session(sid)
        assert document["status"] == "completed", "the files reach the higher sequence and win"
        assert document["last_sequence_number"] == total
        assert [cp.sequence_number for cp in await third.store.list_checkpoints(sid)] == list(
            range(1, total + 1)
        )
        assert any("copied from the files" in d for d in third.last_reconcile.decisions)


async def test_session_summary_is_written_behind_and_a_lagging_one_is_repaired(
    tmp_path: Path, backend: str, request
) -> None:
    import asyncio
    import threading

    databases = store_maker(backend, request)
    name = f"j{uuid.uuid4().hex[:8]}"
    reached, release = threading.Event(), threading.Event()

    def hold(stage: str, key: Any) -> None:
        if (stage, key) == ("analyze", 2):
            reached.set()
            release.wait(60)

    config = config_from_mapping(
        {
            "output": {"directory": str(tmp_path / "out")},
            "processing": {"auto_resume": False},
            "providers": {"image_size": 32},
            "persistence": {"session_summary_interval_ms": 60_000},
        },
        env={},
    )
    engine = Engine(config, databases(name), providers=RecordingProviders(before_call=hold))
    await engine.start()
    try:
        recorder = EventRecorder(engine)
        mid = await engine.save_manuscript(make_manuscript(2))
        sid = (await engine.start_session(mid, max_emotional_moments=2))["session_id"]
        assert await asyncio.to_thread(reached.wait, 60)
        acked = [e.payload["sequence_number"] for e in recorder.events[sid] if e.type == "progress"]
        stored = [cp.sequence_number for cp in await engine.store.list_checkpoints(sid)]
        assert set(acked) <= set(stored), "every acknowledged checkpoint is in the database"
        summary = await engine.store.get_session(sid)
        # Written behind, status included: the document is still the one inserted at the
        # start (clients see the live snapshot: test_web_flow); stopping is written at once.
        assert summary["status"] == "pending"
        assert summary["last_sequence_number"] < max(acked), "the summary is written behind"
        release.set()
        assert await recorder.wait_final(sid) == "completed"
        await engine.flush()
        total = len(await engine.store.list_checkpoints(sid))
        assert (await engine.store.get_session(sid))["last_sequence_number"] == total
        # A crash before the summary was written leaves it behind its checkpoints.
        await engine.store._sessions.update_one(
            {"_id": sid}, {"$set": {"last_sequence_number": 3, "status": "running"}}
        )
    finally:
        release.set()
        await engine.stop()

    async with running_engine(tmp_path / "out", databases(name)) as again:
        repaired = await again.store.get_session(sid)
        assert repaired["last_sequence_number"] == total
        assert repaired["status"] == "completed"
        assert any("summary brought up" in d for d in again.last_reconcile.decisions)


async def as_if_killed(
    tmp_path: Path,
    databases: Any,
    name: str,
    status: str,
    *,
    summary_at: int | None = None,
    before_stop: Any = None,
) -> tuple[str, int]:
    """A session paused at its 6th checkpoint, then made to look as after a kill -9 in
    ``status``: every checkpoint durable on both sides; with ``summary_at``, its summaries
    (session document, session file; written behind) left at that checkpoint. Returns the
    session id and its number of checkpoints."""
    first = await start_engine(tmp_path / "out", databases(name), persistence_class=PauseAtFive)
    sid = await run_one(first)
    newest = len(await first.store.list_checkpoints(sid))
    fields: dict[str, Any] = {"status": status, "can_resume": status == "interrupted"}
    update: dict[str, Any] = {"$set": fields}
    file_fields = dict(fields)
    if summary_at is not None:
        update = {
            "$set": {**fields, "last_sequence_number": summary_at},
            "$push": {"checkpoints": {"$each": [], "$slice": summary_at}},
        }
        file_fields["last_sequence_number"] = summary_at
    await first.store._sessions.update_one({"_id": sid}, update)
    session_file = first.files.load_session_file(sid)
    first.files.write_session_file(sid, {**session_file, **file_fields})
    if before_stop is not None:
        await before_stop(first, session_file)
    await first.stop()
    return sid, newest


async def assert_recorded_interrupted(engine: Engine, sid: str, newest: int | None = None) -> None:
    """Both summaries (session document, session file) say interrupted and resumable, and
    with ``newest``, reach that checkpoint."""
    await engine.flush()
    document = await engine.store.get_session(sid)
    session_file = engine.files.load_session_file(sid)
    assert document["status"] == "interrupted" and document["can_resume"] is True
    assert session_file["status"] == "interrupted"
    if newest is not None:
        assert document["last_sequence_number"] == newest
        assert [c["sequence_number"] for c in document["checkpoints"]] == list(range(1, newest + 1))
        assert session_file["last_sequence_number"] == newest


async def test_a_session_left_interrupted_by_a_crash_during_recovery_resumes(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"k{uuid.uuid4().hex[:8]}"
    # As after a kill between recovery marking it and its resumed actor's first checkpoint:
    sid, _ = await as_if_killed(tmp_path, databases, name, "interrupted")

    async with running_engine(tmp_path / "out", databases(name)) as second:
        recorder = EventRecorder(second)
        assert sid in await second.recover(auto_resume=True)
        assert await recorder.wait_final(sid) == "completed"


async def test_a_session_whose_manuscript_is_gone_is_recorded_interrupted_not_left_running(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"m{uuid.uuid4().hex[:8]}"

    async def delete_manuscript(engine: Engine, session_file: dict[str, Any]) -> None:
        mid = session_file["manuscript_id"]
        assert await engine.store.delete_manuscript(mid)
        engine._manuscript_path(mid).unlink()

    # As after a kill -9 mid-run, and the manuscript deleted meanwhile.
    sid, _ = await as_if_killed(tmp_path, databases, name, "running", before_stop=delete_manuscript)

    async with running_engine(tmp_path / "out", databases(name)) as second:
        assert sid in await second.recover(auto_resume=True)
        await assert_recorded_interrupted(second, sid)


async def test_a_live_sessions_lagging_summary_is_left_to_recovery_which_brings_it_up(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"n{uuid.uuid4().hex[:8]}"
    sid, newest = await as_if_killed(tmp_path, databases, name, "running", summary_at=3)

    async with running_engine(tmp_path / "out", databases(name)) as second:
        report = second.last_reconcile
        assert report is not None
        assert not [d for d in report.decisions if sid in d], "nothing to level: left to recover()"
        assert (await second.store.get_session(sid))["last_sequence_number"] == 3
        assert sid in await second.recover(auto_resume=False)
        await assert_recorded_interrupted(second, sid, newest)


async def test_a_resumed_sessions_lagging_summary_catches_up_without_a_gap(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"o{uuid.uuid4().hex[:8]}"
    sid, _ = await as_if_killed(tmp_path, databases, name, "running", summary_at=3)

    async with running_engine(tmp_path / "out", databases(name)) as second:
        recorder = EventRecorder(second)
        assert sid in await second.recover(auto_resume=True)
        assert await recorder.wait_final(sid) == "completed"
        await second.flush()
        total = len(await second.store.list_checkpoints(sid))
        document = await second.store.get_session(sid)
        assert document["status"] == "completed"
        assert document["last_sequence_number"] == total
        embedded = [c["sequence_number"] for c in document["checkpoints"]]
        assert embedded == list(range(total - len(embedded) + 1, total + 1)), "no gap"
        assert len(embedded) == min(total, second.config.persistence.embedded_checkpoints)


class CountingReads:
    """Counts the start-up reads recover() may take from reconciliation instead."""

    def __init__(self, engine: Engine) -> None:
        self.scans = 0
        self.records: list[str] = []
        scan, records = engine.files.scan, engine.store.get_sessions_for_resume

        def counted_scan() -> Any:
            self.scans += 1
            return scan()

        async def counted_records(ids: list[str], **kwargs: Any) -> Any:
            self.records += ids
            return await records(ids, **kwargs)

        engine.files.scan = counted_scan  # type: ignore[method-assign]
        engine.store.get_sessions_for_resume = counted_records  # type: ignore[method-assign]


async def test_recovery_at_start_up_uses_what_reconciliation_read_and_reads_afresh_after(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"p{uuid.uuid4().hex[:8]}"
    sid, newest = await as_if_killed(tmp_path, databases, name, "running")

    async with running_engine(tmp_path / "out", databases(name)) as second:
        reads = CountingReads(second)
        assert sid in await second.recover(auto_resume=False)
        assert (reads.scans, reads.records) == (0, [])  # left as read: not read again
        await assert_recorded_interrupted(second, sid, newest)
        await second.recover(auto_resume=True)  # once only: a later recovery reads afresh
        assert reads.scans == 1 and reads.records == [sid]


async def test_files_are_read_while_the_database_opens_and_reconciled_once_it_is_up(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"o{uuid.uuid4().hex[:8]}"
    sid, newest = await as_if_killed(tmp_path, databases, name, "running")
    engine = Engine(engine_config(tmp_path / "out"), None, providers=RecordingProviders())
    scanned = asyncio.Event()
    scan = engine.files.scan
    loop = asyncio.get_running_loop()

    def scan_and_tell() -> Any:
        report = scan()
        loop.call_soon_threadsafe(scanned.set)
        return report

    async def database_up_after_the_scan() -> Any:
        await scanned.wait()  # never set unless the files are read before the database
        return databases(name)

    engine.files.scan = scan_and_tell  # type: ignore[method-assign]
    await asyncio.wait_for(engine.start(database_up_after_the_scan()), 20)
    try:
        reads = CountingReads(engine)
        assert engine.database_ok and engine.store is not None
        assert engine.last_reconcile is not None and engine.last_reconcile.sessions_checked == 1
        assert sid in await engine.recover(auto_resume=False)
        assert (reads.scans, reads.records) == (0, [])  # the early scan served both
        await assert_recorded_interrupted(engine, sid, newest)
    finally:
        await engine.stop()


async def test_with_the_database_down_at_start_up_recovery_uses_the_start_up_scan(
    tmp_path: Path, request
) -> None:
    databases = store_maker("mongomock", request)  # for the first run; the second has none
    sid, _ = await as_if_killed(tmp_path, databases, f"d{uuid.uuid4().hex[:8]}", "running")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    uri = f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false"

    async with running_engine(
        tmp_path / "out", lambda: open_store(uri, "down", server_selection_timeout_ms=100)
    ) as engine:
        assert not engine.database_ok
        scans: list[str] = []
        scan, load = engine.files.scan, engine._load_files
        engine.files.scan = lambda: scans.append("all") or scan()  # type: ignore[method-assign]
        engine._load_files = lambda s: scans.append(s) or load(s)  # type: ignore[method-assign]

        assert sid in await engine.recover(auto_resume=False)
        assert scans == []  # the files as start() read them: nothing wrote them since
        await engine.recover(auto_resume=False)  # once only: a later recovery scans
        assert scans == ["all"]


async def test_a_session_reconciliation_wrote_for_is_read_again_by_recovery(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    name = f"q{uuid.uuid4().hex[:8]}"
    sid, newest = await as_if_killed(tmp_path, databases, name, "running")
    for path in (tmp_path / "out" / "sessions" / "checkpoints").glob(f"{sid}_*.json"):
        path.unlink()  # files behind the database: reconciliation rewrites them

    async with running_engine(tmp_path / "out", databases(name)) as second:
        assert second.last_reconcile is not None
        assert second.last_reconcile.checkpoints_to_files == newest
        reads = CountingReads(second)
        assert sid in await second.recover(auto_resume=False)
        assert (reads.scans, reads.records) == (0, [sid])
        await assert_recorded_interrupted(second, sid, newest)


async def test_a_file_record_the_database_cannot_store_is_skipped_and_start_up_goes_on(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    first = await start_engine(tmp_path / "out", databases(f"s{uuid.uuid4().hex[:8]}"))
    sid = await run_one(first)
    other = await run_one(first)
    await first.stop()
    # A lone surrogate is valid JSON but never valid UTF-8: no database can store it.
    path = first.files.checkpoint_path(sid, 4)
    document = json.loads(path.read_text())
    document["checkpoint_data"]["note"] = "\ud800"
    path.write_text(json.dumps(document))

    # A database that never saw the sessions: reconciliation copies the files into it.
    async with running_engine(tmp_path / "out", databases(f"t{uuid.uuid4().hex[:8]}")) as second:
        report = second.last_reconcile
        assert report is not None
        assert any(
            f"checkpoint file 4 of session {sid} holds text that is not valid UTF-8" in line
            for line in report.skipped
        ), report.skipped
        assert await second.store.get_session(sid) is None, "its database side is left as is"
        assert (await second.store.get_session(other))["status"] == "completed"
        assert any(f"session {other}: checkpoints 1-" in line for line in report.healed)
        assert (await second.load_state(sid)).status == "completed"  # from its files
        verified = await second.verify()
        assert not verified.ok
        unstorable = f"{path}: holds text that is not valid UTF-8"
        assert any(unstorable in problem for problem in verified.file_problems)
