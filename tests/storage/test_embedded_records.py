"""Log entries and image records ride in the documents they come with (storage.mongo_records),
over every backend of the ``store`` fixture: read back as one list wherever they were put,
once each, also from a database written one document per entry before this layout."""

from __future__ import annotations

from test_store_contract import KEEP, checkpoint, image, log_entry, raw_count

from domain import SessionId, new_id
from storage.mongo_records import log_bucket
from storage.records import PersistBatch


async def write_three_places(store, sid: str) -> None:
    """Entries 1-3 one per document (the layout before), 4-6 in a bucket, 7-9 in the
    checkpoint they came with; image 1 on its own, image 2 in the checkpoint."""
    await store._db["logs"].insert_many([log_entry(sid, n).to_document() for n in (1, 2, 3)])
    await store._db["images"].insert_one(image(sid, 1).to_document())
    await store.write_batch(PersistBatch(logs=[log_entry(sid, n) for n in (4, 5, 6)]), KEEP)
    await store.write_batch(
        PersistBatch(
            checkpoints=[checkpoint(sid, 1)],
            logs=[log_entry(sid, n) for n in (7, 8, 9)],
            images=[image(sid, 2)],
        ),
        KEEP,
    )


async def test_entries_read_as_one_list_from_every_place_and_page_with_after(store):
    sid = new_id()
    await write_three_places(store, sid)

    assert await raw_count(store, "logs", {"session_id": sid}) == 4  # 3 singles + 1 bucket
    entries = await store.list_logs(SessionId(sid))
    assert [e.event_seq for e in entries] == list(range(1, 10))
    assert entries[7].payload == {"n": 8} and entries[7].session_id == sid
    pages, after = [], 0
    while page := await store.list_logs(SessionId(sid), after, limit=2):
        pages.append([e.event_seq for e in page])
        after = page[-1].event_seq
    assert pages == [[1, 2], [3, 4], [5, 6], [7, 8], [9]]
    assert [e.event_seq for e in await store.list_logs(SessionId(sid), 5, limit=3)] == [6, 7, 8]
    assert await store.last_event_seqs([sid]) == {sid: 9}
    images = await store.list_images(SessionId(sid))
    assert [(i.generation_order, i.session_id) for i in images] == [(1, sid), (2, sid)]
    [stored] = await store.list_checkpoints(SessionId(sid))
    assert stored.sequence_number == 1  # the embedded records are not part of it


async def test_an_entry_placed_twice_by_a_split_batch_is_read_once(store):
    # The quarantine re-writes a refused batch in parts: an entry first stored in a bucket
    # may come again inside a checkpoint, and a checkpoint stored bare may come again
    # carrying records.
    sid = new_id()
    await store.write_batch(PersistBatch(logs=[log_entry(sid, 1)]), KEEP)
    await store.write_batch(PersistBatch(checkpoints=[checkpoint(sid, 1)]), KEEP)
    await store.write_batch(
        PersistBatch(
            checkpoints=[checkpoint(sid, 1)],
            logs=[log_entry(sid, 1), log_entry(sid, 2)],
            images=[image(sid, 1)],
        ),
        KEEP,
    )
    assert [e.event_seq for e in await store.list_logs(SessionId(sid))] == [1, 2]
    assert [i.generation_order for i in await store.list_images(SessionId(sid))] == [1]
    assert await store.last_event_seqs([sid]) == {sid: 2}
    assert await raw_count(store, "checkpoints", {"session_id": sid}) == 1


async def test_prune_keeps_the_newest_entries_wherever_they_are(store):
    sid, other = new_id(), new_id()
    await write_three_places(store, sid)
    await write_three_places(store, other)

    await store.prune_logs(SessionId(sid), keep=5)  # cuts inside the bucket
    assert [e.event_seq for e in await store.list_logs(SessionId(sid))] == [5, 6, 7, 8, 9]
    await store.prune_logs(SessionId(sid), keep=2)  # cuts inside the checkpoint
    assert [e.event_seq for e in await store.list_logs(SessionId(sid))] == [8, 9]
    assert await store.last_event_seqs([sid]) == {sid: 9}
    await store.prune_logs(SessionId(sid), keep=0)
    assert await store.list_logs(SessionId(sid)) == []
    assert await store.last_event_seqs([sid]) == {}
    assert len(await store.list_checkpoints(SessionId(sid))) == 1  # checkpoints stay
    assert len(await store.list_images(SessionId(sid))) == 2  # and so do the images
    assert len(await store.list_logs(SessionId(other))) == 9


async def test_delete_session_removes_the_embedded_records_with_their_documents(store):
    sid = new_id()
    await write_three_places(store, sid)
    await store.delete_session(SessionId(sid))
    assert await store.list_logs(SessionId(sid)) == []
    assert await store.list_images(SessionId(sid)) == []
    assert await store.last_event_seqs([sid]) == {}


def test_a_bucket_is_named_by_its_first_entry_and_found_by_its_last():
    sid = new_id()
    bucket = log_bucket([log_entry(sid, 12), log_entry(sid, 10), log_entry(sid, 11)])
    assert bucket["_id"] == f"{sid}:b0000000010"
    assert (bucket["first_event_seq"], bucket["event_seq"]) == (10, 12)
    assert [e["event_seq"] for e in bucket["entries"]] == [10, 11, 12]
    assert "session_id" not in bucket["entries"][0] and "_id" not in bucket["entries"][0]
