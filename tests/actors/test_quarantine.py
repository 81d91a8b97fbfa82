"""A record the database can never store is set aside; every other record goes on.

On the real embedded database: a batch holding a lone surrogate (valid JSON, not
UTF-8), a field name with a NUL or a document over the size limit fails every retry,
so before the writer quarantined such records it kept that batch at the head of its
backlog forever and no other session reached the database.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from actors.messages import CheckpointReached, EventsEmitted, FlushPersistence, GetPersistenceStats
from actors.persistence import PersistenceActor
from actors.reply import Reply
from config import PersistenceConfig
from domain import CheckpointType, ProcessingStep, SessionId, new_id
from storage.files import FileStore
from storage.mongo import open_store
from storage.records import Checkpoint, LogEntry


def _checkpoint(sid: SessionId, data: dict[str, Any]) -> CheckpointReached:
    cp = Checkpoint(
        sid, 1, CheckpointType.SESSION_START, ProcessingStep.INITIALIZING, None, "load", 0, data
    )
    document = {"_id": sid, "session_id": sid, "status": "running", "epoch": 0}
    return CheckpointReached(
        sid,
        cp,
        {"status": "running", "progress_percent": 1},
        {"session_id": sid, "status": "running"},
        new_session=document,
        ack=Reply.for_thread(),
    )


def _read(uri: str, name: str, sids: list[SessionId]) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        store = open_store(uri, name)
        try:
            return {
                sid: (
                    await store.get_session(sid),
                    [cp.sequence_number for cp in await store.list_checkpoints(sid)],
                    [entry.event_seq for entry in await store.list_logs(sid)],
                )
                for sid in sids
            }
        finally:
            await store.close()

    return asyncio.run(read())


@pytest.mark.parametrize(
    "bad",
    [{"style": "\ud800"}, {"a\x00b": 1}, {"blob": "x" * (17 * 1024 * 1024)}],
    ids=["lone-surrogate", "nul-in-key", "too-large"],
)
def test_a_refused_record_is_quarantined_and_the_other_sessions_reach_the_database(
    tmp_path: Path, embedded_db_uri: str, bad: dict[str, Any]
) -> None:
    name = f"t_{new_id()[:12]}"
    files = FileStore(tmp_path, fsync=False)
    files.ensure_layout()
    settings = PersistenceConfig(session_summary_interval_ms=0)
    persistence = PersistenceActor.start(files, lambda: open_store(embedded_db_uri, name), settings)
    poisoned = SessionId(new_id())
    good = [SessionId(new_id()) for _ in range(5)]
    try:
        # The bad checkpoint first, so it would stand at the head of the backlog.
        messages = [_checkpoint(poisoned, bad)] + [_checkpoint(sid, {"ok": 1}) for sid in good]
        for message in messages:
            persistence.tell(message)
        assert all(m.ack is not None and m.ack.result(30) is None for m in messages)
        events = tuple(
            LogEntry(sid, seq, "log", {"message": "m"}) for sid in good for seq in (1, 2)
        )
        persistence.tell(EventsEmitted(events[:2]))
        persistence.tell(EventsEmitted(events[2:]))
        flushed = Reply.for_thread()
        persistence.tell(FlushPersistence(flushed))
        assert flushed.result(30) == 0, "records are still waiting in the backlog"
        stats = Reply.for_thread()
        persistence.tell(GetPersistenceStats(stats))
        counters = stats.result(10)
    finally:
        persistence.stop()

    stored = _read(embedded_db_uri, name, [poisoned, *good])
    for sid in good:
        document, checkpoints, logs = stored[sid]
        assert document is not None and document["last_sequence_number"] == 1
        assert checkpoints == [1]
        assert logs == [1, 2]
    # The poisoned session's own document went in; only its checkpoint was refused.
    assert stored[poisoned][0] is not None and stored[poisoned][1] == []
    quarantined = sorted((tmp_path / "sessions" / "quarantine").glob("*.json"))
    assert [p.name.split("_")[:2] for p in quarantined] == [[poisoned, "checkpoint"]]
    record = json.loads(quarantined[0].read_text())
    assert set(record) == {
        "format_version",
        "session_id",
        "kind",
        "reason",
        "quarantined_at",
        "record",
    }
    assert record["session_id"] == poisoned and record["kind"] == "checkpoint"
    assert record["record"]["sequence_number"] == 1
    assert counters["quarantined"] == 1 and counters["backlog_records"] == 0
    # The files keep the refused record whatever the database said.
    assert [cp.sequence_number for cp in files.load_checkpoints(poisoned)] == [1]
