"""A batch's unjournaled writes are made durable by its last, journaled one (storage.mongo).

Against a real SecantusDB process killed with SIGKILL right after ``write_batch`` returns:
whatever a batch wrote must be there after the restart. Without the journaled last write
the database loses the last acknowledged unjournaled writes (measured on SecantusDB: the
last few dozen); this test fails then.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from domain import CheckpointType, ProcessingStep, SessionId, new_id
from storage.embedded import EmbeddedDatabase
from storage.mongo import COMMIT_MARKS, open_store
from storage.records import Checkpoint, ImageRecord, LogEntry, PersistBatch

SESSIONS = 20
BATCHES = 30


def checkpoint(sid: SessionId, seq: int) -> Checkpoint:
    return Checkpoint(
        session_id=sid,
        sequence_number=seq,
        checkpoint_type=CheckpointType.CHAPTER_START,
        step=ProcessingStep.ANALYZING_CHAPTERS,
        chapter_number=seq,
        next_action="analyze_chapter",
        progress_percent=seq,
        checkpoint_data={"payload": "x" * 400},
        epoch=1,
    )


def batch_number(n: int, sessions: list[SessionId], summaries: bool = True) -> PersistBatch:
    """Batch ``n`` (from 1): one checkpoint, log, image record (and summary) per session."""
    return PersistBatch(
        new_sessions=[
            {"_id": sid, "session_id": sid, "status": "running", "epoch": 1} for sid in sessions
        ]
        if n == 1
        else [],
        checkpoints=[checkpoint(sid, n) for sid in sessions],
        logs=[
            LogEntry(session_id=sid, event_seq=n, type="progress", payload={"n": n})
            for sid in sessions
        ],
        images=[
            ImageRecord(
                session_id=sid,
                chapter_number=n,
                scene_number=1,
                generation_order=n,
                file_path=f"{sid}/{n}.png",
                web_url=f"/images/{sid}/{n}.png",
                prompt_used="a prompt",
                checkpoint_sequence=n,
            )
            for sid in sessions
        ],
        session_updates={sid: {"status": "running", "progress_percent": n} for sid in sessions}
        if summaries
        else {},
        # None: the batch's checkpoints are embedded in their session documents (an update).
        summary_checkpoints=None if summaries else [],
    )


@pytest.mark.parametrize("summaries", [True, False], ids=["mark-last", "checkpoints-last"])
async def test_acknowledged_batches_survive_kill_9_of_the_database(tmp_path, summaries):
    sessions = [SessionId(new_id()) for _ in range(SESSIONS)]
    with EmbeddedDatabase(tmp_path / "db") as database:
        store = open_store(database.uri, "group_commit", server_selection_timeout_ms=1000)
        try:
            await store.ensure_indexes()
            for n in range(1, BATCHES + 1):
                await store.write_batch(batch_number(n, sessions, summaries), embedded_keep=8)
            killed = database.pid
            assert killed is not None
            os.kill(killed, signal.SIGKILL)  # at once: nothing else was written since
            deadline = time.monotonic() + 30
            while database.is_running():
                assert time.monotonic() < deadline, "the killed database did not go away"
                time.sleep(0.05)

            database.start()
            assert database.pid != killed
            for sid in sessions:
                stored = await store.list_checkpoints(sid)
                assert [cp.sequence_number for cp in stored] == list(range(1, BATCHES + 1))
                logs = await store.list_logs(sid, limit=1000)
                assert [e.event_seq for e in logs] == list(range(1, BATCHES + 1))
                images = await store.list_images(sid)
                assert [i.generation_order for i in images] == list(range(1, BATCHES + 1))
                document = await store.get_session(sid)
                assert document is not None
                if summaries:
                    assert document["last_sequence_number"] == BATCHES
                    assert document["progress_percent"] == BATCHES
                    assert [c["sequence_number"] for c in document["checkpoints"]] == list(
                        range(BATCHES - 7, BATCHES + 1)
                    )
        finally:
            await store.close()


async def test_a_batch_updating_session_documents_ends_with_a_journaled_mark(store):
    sid = SessionId(new_id())
    await store.write_batch(batch_number(1, [sid]), embedded_keep=8)
    await store.write_batch(batch_number(2, [sid]), embedded_keep=8)
    await store.write_batch(batch_number(3, [sid], summaries=False), embedded_keep=8)
    await store.write_batch(PersistBatch(), embedded_keep=8)  # empty: nothing to make durable
    mark = await store._db[COMMIT_MARKS].find_one({"_id": "batch"})
    assert mark is not None and mark["n"] == 2, "only the batches with session updates"
