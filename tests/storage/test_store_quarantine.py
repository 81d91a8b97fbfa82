"""The writer's quarantine against the real embedded database: halving finds refused records."""

from __future__ import annotations

import json
from pathlib import Path

from actors.persistence.quarantine import Quarantine, join, split
from domain import CheckpointType, ProcessingStep, SessionId, new_id
from errors import StorageError
from storage.mongo import open_store
from storage.records import Checkpoint, LogEntry, PersistBatch


async def test_halving_writes_every_accepted_record_and_quarantines_the_refused_ones(
    tmp_path: Path, embedded_db_uri: str
) -> None:
    store = open_store(embedded_db_uri, f"t_{new_id()[:12]}")
    sid = SessionId(new_id())
    await store.create_session({"_id": sid, "session_id": sid, "status": "running", "epoch": 0})
    logs = [LogEntry(sid, seq, "log", {"message": f"m{seq}"}) for seq in range(1, 10)]
    checkpoint = Checkpoint(
        sid, 1, CheckpointType.SESSION_START, ProcessingStep.INITIALIZING, None, "load", 0
    )
    batch = PersistBatch(
        checkpoints=[checkpoint],
        logs=logs,
        session_updates={sid: {"status": "running", "progress_percent": 1}},
    )
    refused = {4, 7}
    attempts: list[int] = []

    async def write(part: PersistBatch) -> None:
        # What a server refusing two records looks like: the whole batch fails.
        attempts.append(len(part))
        if any(entry.event_seq in refused for entry in part.logs):
            raise StorageError("store logs failed: write error")
        await store.write_batch(part, 16)

    quarantine = Quarantine(tmp_path, fsync=False)
    try:
        await quarantine.write_around(batch, write, StorageError("store logs failed"))
        stored = [entry.event_seq for entry in await store.list_logs(sid)]
        checkpoints = [cp.sequence_number for cp in await store.list_checkpoints(sid)]
        document = await store.get_session(sid)
    finally:
        await store.close()

    assert stored == [seq for seq in range(1, 10) if seq not in refused]
    assert checkpoints == [1]
    assert document is not None and document["last_sequence_number"] == 1
    assert quarantine.count == 2
    files = sorted((tmp_path / "sessions" / "quarantine").glob(f"{sid}_log_*.json"))
    assert sorted(json.loads(p.read_text())["record"]["event_seq"] for p in files) == [4, 7]
    # Halving, not one write per record: far fewer attempts than 2 x 11 records.
    assert len(attempts) < 2 * len(split(batch))


def test_split_and_join_keep_every_record_and_its_order() -> None:
    sid = SessionId(new_id())
    checkpoint = Checkpoint(
        sid, 3, CheckpointType.CHAPTER_START, ProcessingStep.ANALYZING_CHAPTERS, 1, "next", 10
    )
    batch = PersistBatch(
        checkpoints=[checkpoint],
        logs=[LogEntry(sid, 1, "log", {})],
        session_updates={sid: {"status": "running"}},
        new_sessions=[{"_id": sid}],
        session_epochs={sid: 2},
    )
    records = split(batch)
    assert [r.kind for r in records] == ["session", "log", "checkpoint", "summary"]
    again = join(records)
    assert again.new_sessions == batch.new_sessions and again.logs == batch.logs
    assert again.checkpoints == batch.checkpoints
    assert again.summary_checkpoints == [checkpoint]
    assert again.session_updates == batch.session_updates and again.session_epochs == {sid: 2}
