"""PersistenceActor details that the session tests cannot pin down deterministically."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pykka

from actors.messages import CheckpointPersisted, CheckpointReached, GetPersistenceStats
from actors.persistence import PersistenceActor
from actors.reply import Reply
from config import PersistenceConfig
from domain import CheckpointType, ProcessingStep, SessionId, new_id
from storage.files import FileStore
from storage.records import Checkpoint


class Gated(PersistenceActor):
    """Holds its first checkpoint until the test has queued more messages behind it."""

    gate = threading.Event()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, CheckpointReached):
            type(self).gate.wait(10)
        return super().on_receive(message)


class Collector(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self.acked = threading.Event()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, CheckpointPersisted):
            self.acked.set()
        return None


def test_a_checkpoint_is_committed_even_when_a_query_was_the_last_message(tmp_path: Path) -> None:
    files = FileStore(tmp_path)
    files.ensure_layout()
    persistence = Gated.start(files, None, PersistenceConfig())
    collector_ref = Collector.start()
    collector = collector_ref.proxy().acked.get()
    try:
        sid = SessionId(new_id())
        cp = Checkpoint(
            sid, 1, CheckpointType.SESSION_START, ProcessingStep.INITIALIZING, None, "load", 0
        )
        persistence.tell(
            CheckpointReached(
                sid, cp, {}, {"session_id": sid, "status": "running"}, reply_to=collector_ref
            )
        )
        stats = Reply.for_thread()
        persistence.tell(GetPersistenceStats(stats))  # queued behind the held checkpoint
        Gated.gate.set()
        stats.result(10)
        assert collector.wait(10), "the checkpoint was never committed nor acknowledged"
        assert [c.sequence_number for c in files.load_checkpoints(sid)] == [1]
    finally:
        Gated.gate.set()
        persistence.stop()
        collector_ref.stop()


def _summaries_written_at_once(tmp_path: Path, budget: int) -> tuple[list[int], list[int]]:
    """20 sessions, 2 checkpoints each, summary interval 0: the session documents'
    last_sequence_number right after the acks, and after a flush."""
    import asyncio

    from actors.messages import FlushPersistence
    from storage.mongo import open_store

    store = open_store("mongodb://unused", f"t_{new_id()[:8]}", driver="mongomock")
    files = FileStore(tmp_path)
    files.ensure_layout()
    settings = PersistenceConfig(session_summary_interval_ms=0, session_summaries_per_second=budget)
    persistence = PersistenceActor.start(files, lambda: store, settings)
    sessions = [SessionId(new_id()) for _ in range(20)]
    try:
        for seq, kind in ((1, CheckpointType.SESSION_START), (2, CheckpointType.CHAPTER_START)):
            acks = []
            for sid in sessions:
                cp = Checkpoint(sid, seq, kind, ProcessingStep.INITIALIZING, None, "next", seq)
                ack = Reply.for_thread()
                document = {"_id": sid, "session_id": sid, "status": "running", "epoch": 0}
                persistence.tell(
                    CheckpointReached(
                        sid,
                        cp,
                        {"status": "running", "progress_percent": seq},
                        {"session_id": sid, "status": "running"},
                        new_session=document if seq == 1 else None,
                        ack=ack,
                    )
                )
                acks.append(ack)
            assert all(ack.result(10) is None for ack in acks)

        def summaries() -> list[int]:
            async def read() -> list[int]:
                return [
                    int((await store.get_session(sid) or {}).get("last_sequence_number", 0))
                    for sid in sessions
                ]

            return asyncio.run(read())

        at_ack = summaries()
        flushed = Reply.for_thread()
        persistence.tell(FlushPersistence(flushed))
        assert flushed.result(10) == 0
        return at_ack, summaries()
    finally:
        persistence.stop()


def test_session_summaries_are_capped_per_second_and_flushed_later(tmp_path: Path) -> None:
    # No cap: with interval 0 every checkpoint's summary is written with its batch.
    at_ack, flushed = _summaries_written_at_once(tmp_path / "uncapped", budget=0)
    assert at_ack == [2] * 20 and flushed == [2] * 20
    # 1 per second for 20 live sessions: each session's next summary is 20 s away (the
    # inserted session document stood for the first), so both checkpoints are durable
    # (acknowledged) before the summary, which a flush (or the timer, or shutdown) writes.
    at_ack, flushed = _summaries_written_at_once(tmp_path / "capped", budget=1)
    assert at_ack == [0] * 20 and flushed == [2] * 20


def _send(
    persistence: pykka.ActorRef[Any],
    sid: SessionId,
    seq: int,
    kind: CheckpointType,
    status: str = "running",
    placed: tuple[Path, ...] = (),
) -> str | None:
    """One checkpoint with its session file (and placed files); the ack's outcome."""
    cp = Checkpoint(sid, seq, kind, ProcessingStep.ANALYZING_CHAPTERS, 1, "next", seq)
    ack = Reply.for_thread()
    persistence.tell(
        CheckpointReached(
            sid,
            cp,
            {"status": status, "progress_percent": seq},
            {"session_id": sid, "status": status, "last_sequence_number": seq},
            new_session={"_id": sid, "session_id": sid, "status": status} if seq == 1 else None,
            ack=ack,
            placed_files=placed,
        )
    )
    return ack.result(10)


def test_the_session_file_is_written_behind_its_checkpoints_and_at_once_on_a_stop(
    tmp_path: Path,
) -> None:
    files = FileStore(tmp_path)
    files.ensure_layout()
    settings = PersistenceConfig(session_summary_interval_ms=60_000)
    persistence = PersistenceActor.start(files, None, settings)
    paused, stopped = SessionId(new_id()), SessionId(new_id())
    try:
        for sid in (paused, stopped):
            assert _send(persistence, sid, 1, CheckpointType.SESSION_START) is None
            session_file = files.load_session_file(sid)
            assert session_file is not None and session_file["last_sequence_number"] == 1
            assert _send(persistence, sid, 2, CheckpointType.MANUSCRIPT_LOADED) is None
            assert _send(persistence, sid, 3, CheckpointType.CHAPTER_START) is None
            assert [cp.sequence_number for cp in files.load_checkpoints(sid)] == [1, 2, 3]
            # Behind its checkpoints (not rewritten with each one), never ahead of them.
            assert files.load_session_file(sid)["last_sequence_number"] == 1
        assert _send(persistence, paused, 4, CheckpointType.SESSION_PAUSED, "paused") is None
        assert files.load_session_file(paused)["status"] == "paused"
        assert files.load_session_file(paused)["last_sequence_number"] == 4
    finally:
        persistence.stop()
    # Stopping writes what is held.
    assert files.load_session_file(stopped)["last_sequence_number"] == 3


def test_a_failed_file_write_is_reported_in_the_ack_and_the_writer_lives_on(
    tmp_path: Path,
) -> None:
    from errors import StorageError

    class FailingFiles(FileStore):
        fail = True

        def write_many(self, items: list[tuple[Path, dict[str, Any]]], placed: Any = None) -> None:
            if self.fail:
                raise StorageError("group commit of 2 files failed: [Errno 28] No space left")
            super().write_many(items, placed)

    files = FailingFiles(tmp_path)
    files.ensure_layout()
    persistence = PersistenceActor.start(files, None, PersistenceConfig())
    sid = SessionId(new_id())
    try:
        outcome = _send(persistence, sid, 1, CheckpointType.SESSION_START)
        assert outcome is not None and "No space left" in outcome
        assert files.load_checkpoints(sid) == []
        FailingFiles.fail = False
        assert _send(persistence, sid, 1, CheckpointType.SESSION_START) is None
        assert [cp.sequence_number for cp in files.load_checkpoints(sid)] == [1]
    finally:
        persistence.stop()


def test_a_placed_file_outside_the_output_folder_fails_its_ack_and_the_writer_lives_on(
    tmp_path: Path,
) -> None:
    files = FileStore(tmp_path / "out")
    files.ensure_layout()
    persistence = PersistenceActor.start(files, None, PersistenceConfig())
    sid = SessionId(new_id())
    try:
        outcome = _send(persistence, sid, 1, CheckpointType.SESSION_START, placed=(tmp_path,))
        assert outcome is not None and "outside the output folder" in outcome
        assert files.load_checkpoints(sid) == []
        image = files.images_dir / sid / "chapter_1_scene_1.png"
        image.parent.mkdir(parents=True)
        image.write_bytes(b"png")
        assert _send(persistence, sid, 1, CheckpointType.SESSION_START, placed=(image,)) is None
        assert [cp.sequence_number for cp in files.load_checkpoints(sid)] == [1]
    finally:
        persistence.stop()
