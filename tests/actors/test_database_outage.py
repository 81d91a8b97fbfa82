"""Guarantee 4: a database outage stops nothing and loses nothing.

A real SecantusDB server is stopped in the middle of a session: the session keeps going
with the JSON files as the durable record (acknowledged after fsync), the backlog shows
in the persistence stats, and when the server returns every checkpoint, event and image
record reaches it exactly once and in order, without restarting the engine.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from tests_support import EventRecorder, make_manuscript

from actors.engine import Engine
from config import config_from_mapping
from pipeline.providers import RecordingProviders
from storage.embedded import EmbeddedDatabase
from storage.mongo import open_store

pytestmark = pytest.mark.timeout(240)


class Gate:
    """Holds a provider call until the test lets it through."""

    def __init__(self, stage: str, key: Any) -> None:
        self.stage, self.key = stage, key
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, stage: str, key: Any) -> None:
        if (stage, key) == (self.stage, self.key):
            self.reached.set()
            self.release.wait(120)


async def test_outage_mid_session_keeps_processing_and_catches_up_in_order(tmp_path: Path) -> None:
    database = EmbeddedDatabase(tmp_path / "db")
    uri = database.start()
    gates = [Gate("analyze", 2), Gate("analyze", 3)]

    def before_call(stage: str, key: Any) -> None:
        for gate in gates:
            gate(stage, key)

    config = config_from_mapping(
        {
            "output": {"directory": str(tmp_path / "out")},
            "mongodb": {"server_selection_timeout_ms": 300},
            "processing": {"retry_backoff_ms": 5},
            "providers": {"image_size": 32},
        },
        env={},
    )
    recording = RecordingProviders(before_call=before_call)
    engine = Engine(
        config,
        lambda: open_store(uri, "illustrator", server_selection_timeout_ms=300),
        providers=recording,
    )
    await engine.start()
    try:
        recorder = EventRecorder(engine)
        mid = await engine.save_manuscript(make_manuscript(3))
        sid = (await engine.start_session(mid, max_emotional_moments=2))["session_id"]

        assert await asyncio.to_thread(gates[0].reached.wait, 60)
        await asyncio.to_thread(database.stop)  # the database dies mid-session
        gates[0].release.set()

        # Chapter 2 is processed and acknowledged while the database is down.
        assert await asyncio.to_thread(gates[1].reached.wait, 60)
        stats = await engine.persistence_stats()
        assert stats["breaker_open"] is True
        assert stats["backlog_records"] > 0
        on_disk = engine.files.load_checkpoints(sid)
        acked = [e.payload["sequence_number"] for e in recorder.events[sid] if e.type == "progress"]
        assert set(acked) <= {cp.sequence_number for cp in on_disk}
        assert any(
            cp.chapter_number == 2 and str(cp.checkpoint_type) == "chapter_completed"
            for cp in on_disk
        )

        await asyncio.to_thread(database.start)  # it comes back (same data, same port)
        gates[1].release.set()
        assert await recorder.wait_final(sid, timeout=120) == "completed"

        # Caught up without a restart: the probe sees it back, the backlog drains.
        for _ in range(200):
            if await engine.flush() == 0:
                break
            await asyncio.sleep(0.05)
        stats = await engine.persistence_stats()
        assert stats["backlog_records"] == 0
        assert stats["breaker_open"] is False

        checkpoints = await engine.store.list_checkpoints(sid)
        files = engine.files.load_checkpoints(sid)
        assert [cp.sequence_number for cp in checkpoints] == list(range(1, len(files) + 1))
        assert [cp.to_json() for cp in checkpoints] == [cp.to_json() for cp in files]
        logs = await engine.store.list_logs(sid, limit=10_000)
        assert [e.event_seq for e in logs] == list(range(1, len(logs) + 1))
        assert [e.event_seq for e in logs] == [e.event_seq for e in recorder.events[sid]]
        images = await engine.store.list_images(sid)
        assert [i.generation_order for i in images] == list(range(1, 7))
        document = await engine.store.get_session(sid)
        assert document["status"] == "completed"
        assert document["last_sequence_number"] == len(files)
        assert recording.repeated() == {}
    finally:
        for gate in gates:
            gate.release.set()
        await engine.stop()
        await asyncio.to_thread(database.stop)
