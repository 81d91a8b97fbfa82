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
