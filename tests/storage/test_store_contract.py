"""The SessionStore contract, run over every backend of the ``store`` fixture.

Each test runs on mongomock-motor and on the real SecantusDB server (PyMongo async); the
driver-parity tests at the end add Motor.
"""

from __future__ import annotations

import socket
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from pymongo.errors import AutoReconnect
from tests_support import moment

from domain import CheckpointType, ProcessingStep, SessionId, SessionStatus, new_id
from errors import DatabaseUnavailableError
from storage.mongo import MongoStore, open_store
from storage.records import Checkpoint, ImageRecord, LogEntry, PersistBatch

KEEP = 16
"""embedded_keep used by the tests (the config default)."""

CHAPTER_STEPS = [
    (CheckpointType.CHAPTER_START, ProcessingStep.ANALYZING_CHAPTERS),
    (CheckpointType.CHAPTER_ANALYZED, ProcessingStep.ANALYZING_CHAPTERS),
    (CheckpointType.PROMPTS_GENERATED, ProcessingStep.GENERATING_PROMPTS),
    (CheckpointType.IMAGES_GENERATING, ProcessingStep.GENERATING_IMAGES),
    (CheckpointType.IMAGES_GENERATING, ProcessingStep.GENERATING_IMAGES),
    (CheckpointType.IMAGES_GENERATING, ProcessingStep.GENERATING_IMAGES),
    (CheckpointType.IMAGES_GENERATING, ProcessingStep.GENERATING_IMAGES),
    (CheckpointType.CHAPTER_COMPLETED, ProcessingStep.GENERATING_IMAGES),
]
"""Eight checkpoints per chapter, as a real session makes them."""


def session_doc(sid: str | None = None, **fields: Any) -> dict[str, Any]:
    doc = {
        "_id": sid or new_id(),
        "manuscript_id": new_id(),
        "external_session_id": "web-1",
        "status": str(SessionStatus.RUNNING),
        "progress_percent": 0,
        "current_chapter": 0,
        "total_chapters": 3,
        "style_config": {"art_style": "watercolor"},
        "max_emotional_moments": 10,
        "can_resume": False,
    }
    doc.update(fields)
    return doc


def checkpoint(sid: str, seq: int, **fields: Any) -> Checkpoint:
    values: dict[str, Any] = {
        "checkpoint_type": CheckpointType.CHAPTER_START,
        "step": ProcessingStep.ANALYZING_CHAPTERS,
        "chapter_number": 1,
        "next_action": "analyze chapter 1",
        "progress_percent": min(seq, 100),
        "processing_state": {"total_images_generated": seq},
    }
    values.update(fields)
    return Checkpoint(session_id=SessionId(sid), sequence_number=seq, **values)


def chapter_checkpoints(sid: str, chapter: int, first_seq: int, moments: int) -> list[Checkpoint]:
    """One chapter's eight checkpoints; CHAPTER_ANALYZED carries the chapter's moments."""
    made = []
    for offset, (kind, step) in enumerate(CHAPTER_STEPS):
        data: dict[str, Any] = {}
        if kind is CheckpointType.CHAPTER_ANALYZED:
            data = {"emotional_moments": [moment(chapter, i) for i in range(moments)]}
        made.append(
            checkpoint(
                sid,
                first_seq + offset,
                checkpoint_type=kind,
                step=step,
                chapter_number=chapter,
                next_action=f"{kind} done for chapter {chapter}",
                checkpoint_data=data,
            )
        )
    return made


def log_entry(sid: str, seq: int) -> LogEntry:
    return LogEntry(
        session_id=SessionId(sid), event_seq=seq, type="log", payload={"n": seq}, message=f"#{seq}"
    )


def image(sid: str, order: int, chapter: int = 1) -> ImageRecord:
    return ImageRecord(
        session_id=SessionId(sid),
        chapter_number=chapter,
        scene_number=order,
        generation_order=order,
        file_path=f"generated_images/{sid}/c{chapter}_s{order}.png",
        web_url=f"/images/{sid}/c{chapter}_s{order}.png",
        prompt_used=f"prompt {order}",
        checkpoint_sequence=order,
    )


async def raw_count(store: MongoStore, collection: str, query: dict[str, Any]) -> int:
    return await store._db[collection].count_documents(query)


# -- sessions ------------------------------------------------------------------------------


async def test_session_is_created_read_updated_and_a_retried_create_is_a_noop(store):
    doc = session_doc()
    await store.create_session(doc)
    await store.create_session({**doc, "status": "failed"})
    await store.update_session(doc["_id"], {"status": "paused", "progress_percent": 40})

    got = await store.get_session(doc["_id"])
    assert got is not None
    assert got["status"] == "paused"
    assert got["progress_percent"] == 40
    assert got["style_config"] == {"art_style": "watercolor"}
    assert got["last_sequence_number"] == 0
    assert got["checkpoints"] == []
    assert await store.get_session(SessionId(new_id())) is None


async def test_datetimes_come_back_timezone_aware_utc(store):
    sid = new_id()
    started = datetime(2026, 1, 2, 3, 4, 5, 6000, tzinfo=UTC)
    await store.create_session(session_doc(sid, started_at=started))
    await store.append_checkpoints([checkpoint(sid, 1, created_at=started)], KEEP)
    await store.log_events([log_entry(sid, 1)])

    got = await store.get_session(SessionId(sid))
    assert got["started_at"] == started
    assert got["started_at"].tzinfo is UTC
    assert got["created_at"].tzinfo is UTC
    assert got["checkpoints"][0]["created_at"].tzinfo is UTC
    [stored] = await store.list_checkpoints(SessionId(sid))
    assert stored.created_at == started
    assert stored.created_at.tzinfo is UTC
    [entry] = await store.list_logs(SessionId(sid))
    assert entry.timestamp.tzinfo is UTC


async def test_list_sessions_filters_by_status_and_manuscript_newest_first(store):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    manuscript = new_id()
    docs = [
        session_doc(status="running", manuscript_id=manuscript, created_at=base),
        session_doc(status="paused", manuscript_id=manuscript, created_at=base + timedelta(1)),
        session_doc(status="completed", created_at=base + timedelta(2)),
    ]
    for doc in docs:
        await store.create_session(doc)

    everything = await store.list_sessions()
    assert [d["_id"] for d in everything] == [d["_id"] for d in reversed(docs)]
    live = await store.list_sessions(statuses=["running", "paused"])
    assert [d["_id"] for d in live] == [docs[1]["_id"], docs[0]["_id"]]
    mine = await store.list_sessions(manuscript_id=manuscript, limit=1)
    assert [d["_id"] for d in mine] == [docs[1]["_id"]]


ALL_DRIVERS = [("mongomock", None), ("secantus", "pymongo"), ("secantus", "motor")]
"""(backend, driver) of the paging tests: the three drivers."""


@pytest.mark.parametrize(("backend", "driver"), ALL_DRIVERS)
async def test_list_manuscripts_pages_with_offset_and_counts_them(store_factory, backend, driver):
    store = await store_factory(backend, driver=driver)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = [new_id() for _ in range(5)]
    for n, mid in enumerate(ids):
        await store.create_manuscript(
            {"_id": mid, "title": f"M{n}", "chapters": [], "created_at": base + timedelta(n)}
        )
    pages = [await store.list_manuscripts(limit=2, offset=offset) for offset in (0, 2, 4, 6)]
    assert [[m["_id"] for m in page] for page in pages] == [
        [ids[4], ids[3]], [ids[2], ids[1]], [ids[0]], []
    ]  # fmt: skip
    assert await store.count_manuscripts() == 5


@pytest.mark.parametrize(("backend", "driver"), ALL_DRIVERS)
async def test_list_sessions_pages_with_offset_and_counts_the_matches(
    store_factory, backend, driver
):
    store = await store_factory(backend, driver=driver)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    manuscript = new_id()
    docs = [
        session_doc(
            status="completed" if n % 2 else "paused",
            manuscript_id=manuscript if n < 5 else new_id(),
            created_at=base + timedelta(n),
        )
        for n in range(7)
    ]
    for doc in docs:
        await store.create_session(doc)
    newest_first = [d["_id"] for d in reversed(docs)]

    pages = [await store.list_sessions(limit=3, offset=offset) for offset in (0, 3, 6, 9)]
    assert [[d["_id"] for d in page] for page in pages] == [
        newest_first[:3], newest_first[3:6], newest_first[6:], []
    ]  # fmt: skip
    assert await store.count_sessions() == 7
    mine = await store.list_sessions(manuscript_id=manuscript, statuses=["paused"], offset=1)
    assert [d["_id"] for d in mine] == [docs[2]["_id"], docs[0]["_id"]]
    assert await store.count_sessions(manuscript_id=manuscript, statuses=["paused"]) == 3
    assert await store.count_sessions(statuses=["running"]) == 0


async def test_resumable_sessions_are_those_with_can_resume_newest_first(store):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    old = session_doc(can_resume=True, status="paused", created_at=base)
    new = session_doc(can_resume=True, status="interrupted", created_at=base + timedelta(1))
    done = session_doc(can_resume=False, status="completed", created_at=base + timedelta(2))
    for doc in (old, new, done):
        await store.create_session(doc)

    resumable = await store.get_resumable_sessions()
    assert [d["_id"] for d in resumable] == [new["_id"], old["_id"]]


# -- checkpoints ---------------------------------------------------------------------------


async def test_retried_checkpoint_batch_is_a_noop(store):
    sid = new_id()
    await store.create_session(session_doc(sid))
    batch = [checkpoint(sid, seq) for seq in (1, 2, 3)]
    await store.append_checkpoints(batch, KEEP)
    await store.append_checkpoints(batch, KEEP)

    for seq in (1, 2, 3):
        count = await raw_count(store, "checkpoints", {"session_id": sid, "sequence_number": seq})
        assert count == 1
    session = await store.get_session(SessionId(sid))
    assert [c["sequence_number"] for c in session["checkpoints"]] == [1, 2, 3]
    assert session["last_sequence_number"] == 3


async def test_embedded_checkpoints_stay_bounded_while_all_remain_stored(store):
    sid = new_id()
    await store.create_session(session_doc(sid))
    for seq in range(1, 41):
        await store.append_checkpoints([checkpoint(sid, seq)], embedded_keep=5)

    session = await store.get_session(SessionId(sid))
    assert [c["sequence_number"] for c in session["checkpoints"]] == [36, 37, 38, 39, 40]
    assert session["last_sequence_number"] == 40
    stored = await store.list_checkpoints(SessionId(sid))
    assert [c.sequence_number for c in stored] == list(range(1, 41))
    later = await store.list_checkpoints(SessionId(sid), after=38)
    assert [c.sequence_number for c in later] == [39, 40]


async def test_session_for_resume_has_all_checkpoints_in_sequence_order(store):
    sid = new_id()
    await store.create_session(session_doc(sid))
    await store.append_checkpoints([checkpoint(sid, seq) for seq in (3, 1, 2)], KEEP)
    await store.append_checkpoints([checkpoint(sid, 5), checkpoint(sid, 4)], KEEP)

    resumed = await store.get_session_for_resume(SessionId(sid))
    assert resumed is not None
    session, checkpoints = resumed
    assert session["_id"] == sid
    assert [c.sequence_number for c in checkpoints] == [1, 2, 3, 4, 5]
    assert [c["sequence_number"] for c in session["checkpoints"]] == [1, 2, 3, 4, 5]
    assert await store.get_session_for_resume(SessionId(new_id())) is None


async def test_sessions_for_resume_in_bulk_match_one_by_one_with_or_without_documents(store):
    sids = [new_id() for _ in range(40)]  # more than one chunk of 32
    for n, sid in enumerate(sids):
        await store.create_session(session_doc(sid))
        await store.append_checkpoints([checkpoint(sid, seq) for seq in range(1, n % 4 + 1)], KEEP)
    missing = new_id()
    one_by_one = {sid: await store.get_session_for_resume(SessionId(sid)) for sid in sids}
    documents = {doc["_id"]: doc for doc in await store.list_sessions(limit=100)}

    read = await store.get_sessions_for_resume([*sids, missing])
    given = await store.get_sessions_for_resume([*sids, missing], documents=documents)

    assert read == given == one_by_one
    assert all(given[sid][0] is documents[sid] for sid in sids)  # not read again
    assert [len(given[sid][1]) for sid in sids[:5]] == [0, 1, 2, 3, 0]


async def test_checkpoint_round_trips_unchanged(store):
    sid = new_id()
    await store.create_session(session_doc(sid))
    [original] = chapter_checkpoints(sid, 7, 1, moments=10)[1:2]
    await store.append_checkpoints([original], KEEP)

    [stored] = await store.list_checkpoints(SessionId(sid))
    assert stored == original


async def test_checkpoints_of_a_missing_session_are_still_stored(store):
    sid = new_id()
    await store.write_batch(
        PersistBatch(checkpoints=[checkpoint(sid, 1)], session_updates={sid: {"status": "x"}}),
        KEEP,
    )
    assert [c.sequence_number for c in await store.list_checkpoints(SessionId(sid))] == [1]
    assert await store.get_session(SessionId(sid)) is None


async def test_write_batch_stores_every_record_kind_and_a_retry_changes_nothing(store):
    first, second = new_id(), new_id()
    for sid in (first, second):
        await store.create_session(session_doc(sid))
    batch = PersistBatch(
        checkpoints=[checkpoint(first, 1), checkpoint(first, 2), checkpoint(second, 1)],
        session_updates={
            first: {"status": "running", "progress_percent": 20},
            second: {"current_chapter": 2},
        },
        logs=[log_entry(first, 1), log_entry(first, 2), log_entry(second, 1)],
        images=[image(first, 1), image(second, 1)],
    )
    await store.write_batch(batch, KEEP)
    await store.write_batch(batch, KEEP)

    one = await store.get_session(SessionId(first))
    assert one["progress_percent"] == 20
    assert [c["sequence_number"] for c in one["checkpoints"]] == [1, 2]
    two = await store.get_session(SessionId(second))
    assert two["current_chapter"] == 2
    assert [c["sequence_number"] for c in two["checkpoints"]] == [1]
    assert await raw_count(store, "checkpoints", {}) == 3
    assert [e.event_seq for e in await store.list_logs(SessionId(first))] == [1, 2]
    assert [i.generation_order for i in await store.list_images(SessionId(second))] == [1]
    # One document per checkpoint: its session's log entries and image records ride in
    # its first checkpoint of the batch, once each after the retry.
    assert await raw_count(store, "logs", {}) == 0
    assert await raw_count(store, "images", {}) == 0
    carrier = await store._db["checkpoints"].find_one({"_id": f"{first}:00000001"})
    assert [e["event_seq"] for e in carrier["logs"]] == [1, 2]
    assert [i["generation_order"] for i in carrier["images"]] == [1]


async def test_retried_batch_still_applies_its_session_fields(store):
    # The first attempt stored the checkpoints and pushed them (e.g. its reply was lost);
    # the retry must not push them again but must still apply the $set fields.
    sid = new_id()
    await store.create_session(session_doc(sid))
    checkpoints = [checkpoint(sid, 1), checkpoint(sid, 2)]
    await store.append_checkpoints(checkpoints, KEEP)
    await store.write_batch(
        PersistBatch(checkpoints=checkpoints, session_updates={sid: {"status": "paused"}}), KEEP
    )

    session = await store.get_session(SessionId(sid))
    assert session["status"] == "paused"
    assert [c["sequence_number"] for c in session["checkpoints"]] == [1, 2]


async def test_store_managed_session_fields_cannot_be_overwritten(store):
    sid = new_id()
    await store.create_session(session_doc(sid))
    await store.append_checkpoints([checkpoint(sid, 1)], KEEP)
    await store.write_batch(
        PersistBatch(
            checkpoints=[checkpoint(sid, 2)],
            session_updates={sid: {"last_sequence_number": 99, "checkpoints": [], "status": "p"}},
        ),
        KEEP,
    )
    session = await store.get_session(SessionId(sid))
    assert session["status"] == "p"
    assert session["last_sequence_number"] == 2
    assert [c["sequence_number"] for c in session["checkpoints"]] == [1, 2]


async def test_large_session_document_stays_small_and_all_checkpoints_remain(store):
    sid = new_id()
    chapters, moments = 300, 10
    await store.create_session(session_doc(sid, total_chapters=chapters))
    for chapter in range(1, chapters + 1):
        batch = chapter_checkpoints(sid, chapter, (chapter - 1) * 8 + 1, moments)
        await store.write_batch(
            PersistBatch(checkpoints=batch, session_updates={sid: {"current_chapter": chapter}}),
            KEEP,
        )

    raw = await store._db["sessions"].find_one({"_id": sid})
    size = len(bson.encode(raw))
    assert size < 2 * 1024 * 1024
    assert size < 16 * 1024, f"the session document grew to {size} bytes"
    stored = await store.list_checkpoints(SessionId(sid))
    assert [c.sequence_number for c in stored] == list(range(1, chapters * 8 + 1))
    analyzed = [c for c in stored if c.checkpoint_type is CheckpointType.CHAPTER_ANALYZED]
    assert len(analyzed) == chapters
    assert all(len(c.checkpoint_data["emotional_moments"]) == moments for c in analyzed)
    assert analyzed[-1].checkpoint_data["emotional_moments"][9] == moment(chapters, 9)


# -- logs and images -----------------------------------------------------------------------


async def test_logs_page_by_event_seq_and_ignore_duplicates(store):
    sid, other = new_id(), new_id()
    await store.log_events([log_entry(sid, seq) for seq in range(10, 0, -1)])
    await store.log_events([log_entry(sid, 3), log_entry(other, 1)])

    page = await store.list_logs(SessionId(sid), limit=4)
    assert [e.event_seq for e in page] == [1, 2, 3, 4]
    page = await store.list_logs(SessionId(sid), after_event_seq=4, limit=4)
    assert [e.event_seq for e in page] == [5, 6, 7, 8]
    page = await store.list_logs(SessionId(sid), after_event_seq=8, limit=4)
    assert [e.event_seq for e in page] == [9, 10]
    assert page[0] == replace(log_entry(sid, 9), timestamp=page[0].timestamp)


async def test_last_event_seqs_name_each_sessions_highest_stored_entry(store):
    ids = [new_id() for _ in range(19)]  # more than one query's worth of sessions
    await store.log_events(
        [log_entry(sid, seq) for n, sid in enumerate(ids[:-1]) for seq in range(n + 1, 0, -1)]
    )
    last = await store.last_event_seqs([*ids, ids[0]])
    assert last == {sid: n + 1 for n, sid in enumerate(ids[:-1])}  # none for the silent one


async def test_prune_logs_keeps_the_newest_entries(store):
    sid, other = new_id(), new_id()
    await store.log_events([log_entry(sid, seq) for seq in range(1, 21)])
    await store.log_events([log_entry(other, seq) for seq in range(1, 4)])

    await store.prune_logs(SessionId(sid), keep=5)
    assert [e.event_seq for e in await store.list_logs(SessionId(sid))] == [16, 17, 18, 19, 20]
    await store.prune_logs(SessionId(sid), keep=50)
    assert len(await store.list_logs(SessionId(sid))) == 5
    await store.prune_logs(SessionId(sid), keep=0)
    assert await store.list_logs(SessionId(sid)) == []
    assert len(await store.list_logs(SessionId(other))) == 3


async def test_images_come_back_in_generation_order_once(store):
    sid = new_id()
    records = [image(sid, order, chapter=1 + order // 3) for order in (5, 1, 4, 2, 3)]
    await store.add_images(records)
    await store.add_images(records[:2])

    listed = await store.list_images(SessionId(sid))
    assert [i.generation_order for i in listed] == [1, 2, 3, 4, 5]
    # to_document() fills an empty illustration_id with the record's key.
    assert listed[0] == replace(records[1], illustration_id=records[1].key)


async def test_delete_session_removes_its_records_only(store):
    sid, other = new_id(), new_id()
    for each in (sid, other):
        await store.create_session(session_doc(each))
        await store.write_batch(
            PersistBatch(
                checkpoints=[checkpoint(each, 1)],
                logs=[log_entry(each, 1)],
                images=[image(each, 1)],
            ),
            KEEP,
        )

    await store.delete_session(SessionId(sid))
    assert await store.get_session(SessionId(sid)) is None
    assert await store.list_checkpoints(SessionId(sid)) == []
    assert await store.list_logs(SessionId(sid)) == []
    assert await store.list_images(SessionId(sid)) == []
    assert await store.get_session(SessionId(other)) is not None
    assert len(await store.list_checkpoints(SessionId(other))) == 1
    assert len(await store.list_logs(SessionId(other))) == 1
    assert len(await store.list_images(SessionId(other))) == 1


# -- manuscripts ---------------------------------------------------------------------------


async def test_manuscripts_are_created_listed_without_contents_and_deleted(store):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    chapters = [
        {"number": n, "title": f"Chapter {n}", "content": "words " * 500, "word_count": 500}
        for n in (1, 2)
    ]
    older = {"_id": new_id(), "title": "Old", "author": "A", "chapters": chapters,
             "created_at": base}  # fmt: skip
    newer = {"_id": new_id(), "title": "New", "author": "B", "chapters": chapters[:1],
             "created_at": base + timedelta(1)}  # fmt: skip
    await store.create_manuscript(older)
    await store.create_manuscript(newer)
    await store.create_manuscript({**newer, "title": "retried"})

    got = await store.get_manuscript(older["_id"])
    assert got["title"] == "Old"
    assert got["chapters"] == chapters
    listed = await store.list_manuscripts()
    assert [m["title"] for m in listed] == ["New", "Old"]
    assert listed[1]["chapters"] == [
        {"number": 1, "title": "Chapter 1", "word_count": 500},
        {"number": 2, "title": "Chapter 2", "word_count": 500},
    ]
    assert [m["title"] for m in await store.list_manuscripts(limit=1)] == ["New"]
    assert await store.delete_manuscript(older["_id"]) is True
    assert await store.delete_manuscript(older["_id"]) is False
    assert await store.get_manuscript(older["_id"]) is None


# -- indexes, probing, failures -------------------------------------------------------------


async def test_indexes_exist_and_the_checkpoint_sequence_index_is_unique(store):
    await store.ensure_indexes()  # a second call is harmless
    names = {
        collection: await store._db[collection].index_information()
        for collection in ("sessions", "checkpoints", "logs", "images")
    }
    assert {"status_can_resume", "manuscript_id", "external_session_id"} <= set(names["sessions"])
    unique = names["checkpoints"]["session_sequence_unique"]
    assert unique["unique"] is True
    assert [tuple(key) for key in unique["key"]] == [("session_id", 1), ("sequence_number", 1)]
    assert "session_event_seq" in names["logs"]
    assert "session_generation_order" in names["images"]


async def test_bulk_write_probe_picks_the_drivers_way(store, request):
    sid = new_id()
    await store.create_session(session_doc(sid))
    await store.write_batch(PersistBatch(session_updates={sid: {"status": "paused"}}), KEEP)

    expected = "mongomock" not in request.node.callspec.id
    assert store.bulk_session_updates is expected
    assert (await store.get_session(SessionId(sid)))["status"] == "paused"
    assert await raw_count(store, "sessions", {}) == 1  # the probe wrote nothing


class FlakyCollection:
    """Proxy that fails the first ``failures`` calls of ``method`` like a dropped link."""

    def __init__(self, inner: Any, method: str, failures: int) -> None:
        self._inner, self._method, self.failures = inner, method, failures

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._inner, name)
        if name != self._method:
            return attribute

        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if self.failures > 0:
                self.failures -= 1
                raise AutoReconnect("connection reset (simulated)")
            return await attribute(*args, **kwargs)

        return flaky


async def test_transient_disconnects_are_retried(store, monkeypatch):
    sid = new_id()
    flaky = FlakyCollection(store._checkpoints, "insert_many", 2)
    monkeypatch.setattr(store, "_checkpoints", flaky)
    await store.append_checkpoints([checkpoint(sid, 1)], KEEP)
    assert [c.sequence_number for c in await store.list_checkpoints(SessionId(sid))] == [1]


async def test_persistent_disconnects_surface_as_database_unavailable(store, monkeypatch):
    flaky = FlakyCollection(store._logs, "insert_many", 99)
    monkeypatch.setattr(store, "_logs", flaky)
    with pytest.raises(DatabaseUnavailableError) as caught:
        await store.log_events([log_entry(new_id(), 1)])
    assert isinstance(caught.value.__cause__, AutoReconnect)
    assert flaky.failures == 99 - 3


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_unreachable_server_raises_database_unavailable(driver):
    uri = f"mongodb://127.0.0.1:{closed_port()}/?directConnection=true&retryWrites=false"
    store = open_store(uri, "nowhere", driver=driver, server_selection_timeout_ms=100)
    try:
        with pytest.raises(DatabaseUnavailableError):
            await store.ping()
        with pytest.raises(DatabaseUnavailableError) as caught:
            await store.create_session(session_doc())
        assert caught.value.details["attempts"] == 3
    finally:
        await store.close()


# -- driver parity -------------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["pymongo", "motor"])
async def test_real_server_drivers_share_the_write_and_resume_path(store_factory, driver):
    store = await store_factory("secantus", driver=driver)
    await store.ping()
    sid = new_id()
    await store.create_session(session_doc(sid))
    batch = PersistBatch(
        checkpoints=chapter_checkpoints(sid, 1, 1, moments=3),
        session_updates={sid: {"current_chapter": 1}},
        logs=[log_entry(sid, 1)],
        images=[image(sid, 1)],
    )
    await store.write_batch(batch, KEEP)
    await store.write_batch(batch, KEEP)

    resumed = await store.get_session_for_resume(SessionId(sid))
    assert resumed is not None
    session, checkpoints = resumed
    assert session["current_chapter"] == 1
    assert [c.sequence_number for c in checkpoints] == list(range(1, 9))
    assert checkpoints == batch.checkpoints
    assert store.bulk_session_updates is True
