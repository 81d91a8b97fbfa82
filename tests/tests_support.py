"""Helpers shared by the tests and the benchmarks (bench/ puts tests/ on its path): event
recorder, sample manuscripts and emotional moments, store factories."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from actors.engine import Engine
from pipeline.manuscripts import Chapter, Manuscript
from storage import atomic
from storage.mongo import open_store
from storage.records import LogEntry

FINAL = {"completed", "failed", "paused", "cancelled"}


def moment(chapter: int, index: int) -> dict[str, Any]:
    return {
        "text_excerpt": f"Chapter {chapter}, moment {index}: the storm broke over the harbour "
        "as she finally read the letter her brother had never sent." * 2,
        "start_position": index * 400,
        "end_position": index * 400 + 180,
        "emotional_tones": ["tension", "melancholy", "courage"],
        "intensity_score": 0.5 + index / 40,
        "context": "The harbour at night, after the funeral.",
        "characters_present": ["Mara", "Tomas"],
        "setting_description": "A rain-lashed stone quay lit by a single lantern.",
        "narrative_context": "Turning point of the chapter.",
    }


def store_maker(backend: str, request: pytest.FixtureRequest) -> Callable[[str], Any]:
    """``store_maker(backend, request)(name)``: a store factory for database ``name`` that
    several engines (restarts, instances) share: one in-memory store for mongomock, a new
    client of the test run's SecantusDB server otherwise."""
    uri = request.getfixturevalue("embedded_db_uri") if backend == "secantus" else ""
    made: dict[str, Any] = {}

    def for_database(name: str) -> Any:
        if backend == "mongomock":
            made.setdefault(name, open_store("mongodb://unused", name, driver="mongomock"))
            return lambda: made[name]
        return lambda: open_store(uri, name)

    return for_database


class EventRecorder:
    """Records every event an engine publishes and lets a test await one."""

    def __init__(self, engine: Engine) -> None:
        self.events: dict[str, list[LogEntry]] = defaultdict(list)
        self._waiters: list[tuple[str, Callable[[LogEntry], bool], asyncio.Future[LogEntry]]] = []
        engine.hub.subscribe(None, self._on_event)

    def _on_event(self, entry: LogEntry) -> None:
        self.events[entry.session_id].append(entry)
        for waiter in list(self._waiters):
            sid, predicate, future = waiter
            if sid == entry.session_id and predicate(entry) and not future.done():
                future.set_result(entry)
                self._waiters.remove(waiter)

    async def wait_for(
        self, sid: str, predicate: Callable[[LogEntry], bool], timeout: float = 60
    ) -> LogEntry:
        """The first event (already seen or future) of ``sid`` matching ``predicate``."""
        for entry in self.events[sid]:
            if predicate(entry):
                return entry
        future: asyncio.Future[LogEntry] = asyncio.get_running_loop().create_future()
        self._waiters.append((sid, predicate, future))
        return await asyncio.wait_for(future, timeout)

    async def wait_final(self, sid: str, after_seq: int = 0, timeout: float = 60) -> str:
        """Wait for the session's next final status after event ``after_seq``."""
        entry = await self.wait_for(
            sid, lambda e: e.event_seq > after_seq and final_status(e) is not None, timeout
        )
        status = final_status(entry)
        assert status is not None
        return status


def final_status(entry: LogEntry) -> str | None:
    """The final status an event announces, if any."""
    if entry.type == "complete":
        return "completed"
    if entry.type == "error":
        return "failed"
    if entry.type == "status" and entry.payload.get("status") in FINAL:
        return str(entry.payload["status"])
    return None


def make_manuscript(chapters: int = 3) -> Manuscript:
    """A small manuscript with emotional text in every chapter."""
    body = (
        "The storm broke over the dark castle and Mara screamed in terror. "
        "Later, in the quiet garden, she laughed with joy and hope beside Tomas. "
        "A strange shadow moved in the forest; the mystery deepened and fear returned. "
        "At dawn the sea was calm and peaceful, and they felt a gentle warmth. "
    )
    return Manuscript(
        title="The Test of Time",
        author="Tester",
        chapters=tuple(
            Chapter(number=n, title=f"Part {n}", content=body * (2 + n))
            for n in range(1, chapters + 1)
        ),
    )


def record_folder_syncs(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders ``storage.atomic`` syncs from now on, in order (each is still synced)."""
    synced: list[Path] = []
    fsync_dir = atomic.fsync_dir

    def recording_fsync_dir(folder: Path) -> None:
        synced.append(Path(folder))
        fsync_dir(folder)

    monkeypatch.setattr(atomic, "fsync_dir", recording_fsync_dir)
    return synced
