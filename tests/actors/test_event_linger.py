"""Events that claim nothing durable wait for their session's next checkpoint and ride in its
database document (actors.persistence.linger); a replay, the linger's end and shutdown
write them without one."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

from actors.messages import (
    CheckpointReached,
    EventsEmitted,
    GetPersistenceStats,
    PendingEvents,
    ReleaseEvents,
)
from actors.persistence import PersistenceActor
from actors.reply import Reply
from config import PersistenceConfig
from domain import CheckpointType, ProcessingStep, SessionId, new_id
from storage.files import FileStore
from storage.mongo import MongoStore, open_store
from storage.records import Checkpoint, LogEntry


class Ticked(PersistenceActor):
    """Says when it has handled a linger tick (the tick's batch is written by then)."""

    ticked = threading.Event()

    def on_receive(self, message: Any) -> Any:
        result = super().on_receive(message)
        if isinstance(message, ReleaseEvents):
            type(self).ticked.set()
        return result


def start(tmp_path: Path, linger_ms: int) -> tuple[Any, MongoStore]:
    store = open_store("mongodb://unused", f"t_{new_id()[:8]}", driver="mongomock")
    files = FileStore(tmp_path)
    files.ensure_layout()
    settings = PersistenceConfig(events_linger_ms=linger_ms)
    return Ticked.start(files, lambda: store, settings), store


def event(sid: SessionId, seq: int) -> LogEntry:
    return LogEntry(session_id=sid, event_seq=seq, type="step", payload={"step": seq})


def stored_seqs(store: MongoStore, sid: SessionId) -> list[int]:
    return [e.event_seq for e in asyncio.run(store.list_logs(sid))]


def raw(store: MongoStore, collection: str, sid: SessionId) -> list[dict[str, Any]]:
    return asyncio.run(store._db[collection].find({"session_id": sid}).to_list(None))


def test_held_events_ride_in_the_next_checkpoints_document(tmp_path: Path) -> None:
    persistence, store = start(tmp_path, linger_ms=600_000)
    sid = SessionId(new_id())
    try:
        persistence.tell(EventsEmitted(entries=(event(sid, 1), event(sid, 2))))
        handled = Reply.for_thread()  # the events are handled (a batch would be out) first
        persistence.tell(GetPersistenceStats(handled))
        handled.result(10)
        cp = Checkpoint(
            sid, 1, CheckpointType.SESSION_START, ProcessingStep.INITIALIZING, None, "load", 0
        )
        ack = Reply.for_thread()
        persistence.tell(CheckpointReached(sid, cp, {}, {}, events=(event(sid, 3),), ack=ack))
        assert ack.result(10) is None
        assert raw(store, "logs", sid) == []
        [document] = raw(store, "checkpoints", sid)
        assert [e["event_seq"] for e in document["logs"]] == [1, 2, 3]
        assert stored_seqs(store, sid) == [1, 2, 3]
    finally:
        persistence.stop()


def test_events_held_past_the_linger_are_written_on_their_own(tmp_path: Path) -> None:
    Ticked.ticked.clear()
    persistence, store = start(tmp_path, linger_ms=20)
    sid = SessionId(new_id())
    try:
        persistence.tell(EventsEmitted(entries=(event(sid, 1),)))
        assert Ticked.ticked.wait(10), "the linger timer never fired"
        assert stored_seqs(store, sid) == [1]
        assert raw(store, "checkpoints", sid) == []
    finally:
        persistence.stop()


def test_a_replay_and_shutdown_write_held_events_first(tmp_path: Path) -> None:
    persistence, store = start(tmp_path, linger_ms=600_000)
    sid, other = SessionId(new_id()), SessionId(new_id())
    stopped = False
    try:
        persistence.tell(EventsEmitted(entries=(event(sid, 1),)))
        persistence.tell(EventsEmitted(entries=(event(other, 1),)))
        reply = Reply.for_thread()
        persistence.tell(PendingEvents(sid, 0, reply))
        database_up, waiting = reply.result(10)
        assert database_up and waiting == []  # written, not waiting
        assert stored_seqs(store, sid) == [1]
        assert stored_seqs(store, other) == []  # still held for its checkpoint
        persistence.stop()
        stopped = True
        assert stored_seqs(store, other) == [1]
    finally:
        if not stopped:
            persistence.stop()
