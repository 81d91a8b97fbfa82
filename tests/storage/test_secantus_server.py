"""The embedded database's process: SecantusDB with its index catalog read once per chunk,
each database's profiling level kept, ``$in`` over strings answered by a set lookup, and
updates that rewrite only the index entries they change (storage/secantus_server.py).

Two sides. In-process, on SecantusDB's own ``Storage``, the patch must cut the catalog
reads of a bulk write from several per document to one per chunk, and read a profiling
level once until it is set again. Over the wire, on the engine's real database process,
indexes must still be exact after the writes the patch touches (duplicates refused,
collations applied, an index created between two batches filled by the second, updated
keys moved), commands profiled exactly while profiling is on, and a ``$in`` must match
exactly what SecantusDB's own matcher matches; after updates of every kind the index
entries and unique-key claims must equal those of unpatched SecantusDB."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import secantus
from pymongo import AsyncMongoClient
from pymongo.errors import BulkWriteError
from secantus import collation as secantus_collation
from secantus import query as secantus_query
from secantus import storage as secantus_storage

from storage import secantus_server

DB, COLL = "patch", "docs"
CASELESS = {"locale": "en", "strength": 2}


@pytest.fixture
def patched_storage_class() -> Iterator[type]:
    """SecantusDB's Storage with the patch applied, restored afterwards."""
    store = secantus_storage.Storage
    names = (
        "_iter_indexes",
        "get_profile",
        "set_profile",
        *secantus_server.CHUNK_METHODS,
        *secantus_server.REWRITE_METHODS,
    )
    saved = {name: store.__dict__[name] for name in names}
    op_matches = secantus_query._op_matches
    try:
        yield store
    finally:
        for name, value in saved.items():
            setattr(store, name, value)
        secantus_query._op_matches = op_matches


def _count_catalog_reads(store: Any) -> list[int]:
    """Count the catalog scans SecantusDB really makes (beneath the patch, if applied)."""
    reads = [0]
    original = store._iter_indexes

    def counting(self: Any, db: str, coll: str) -> Any:
        reads[0] += 1
        return original(self, db, coll)

    store._iter_indexes = counting
    return reads


def _catalog_reads(reads: list[int], write: Any) -> int:
    """How many catalog scans ``write()`` makes."""
    before = reads[0]
    write()
    return reads[0] - before


def _bulk_write_reads(patched: bool) -> tuple[int, int, int]:
    """Catalog scans of a 200-document insert, a 200-document update and a one-document
    update (fresh storage)."""
    reads = _count_catalog_reads(secantus_storage.Storage)
    if patched:
        assert secantus_server.apply_patch()
    storage = secantus_storage.Storage(":memory:")
    try:
        storage.create_index(DB, COLL, "session_seq", {"session_id": 1, "seq": 1}, {"unique": True})
        docs = [{"_id": f"s:{n:05d}", "session_id": "s", "seq": n, "v": 0} for n in range(200)]
        inserted = _catalog_reads(reads, lambda: storage.insert(DB, COLL, docs, ordered=False))
        updated = _catalog_reads(
            reads,
            lambda: storage.update_matching(DB, COLL, {}, {"$inc": {"seq": 1000}}, multi=True),
        )
        one = _catalog_reads(
            reads, lambda: storage.update_matching(DB, COLL, {"_id": "s:00007"}, {"$set": {"v": 1}})
        )
        assert storage.count_matching(DB, COLL, {"seq": {"$gte": 1000}}) == 200
        return inserted, updated, one
    finally:
        storage.close()


def test_patch_reads_the_index_catalog_once_per_chunk_not_per_document(
    patched_storage_class: type,
) -> None:
    # pyproject pins the checked version; a new one must be checked before it is let in.
    assert secantus.__version__ in secantus_server.PATCHED_VERSIONS
    before = _bulk_write_reads(patched=False)
    after = _bulk_write_reads(patched=True)

    assert before[0] >= 400 and before[1] >= 400, before  # two or more per document
    assert after[0] <= 2 and after[1] <= 2, after  # one per chunk
    assert after[2] < before[2], (before, after)  # planning the filter reads it too


def _index_tables_after_a_workload(patched: bool) -> list[Any]:
    """Index entries and catalog after writes interleaved with index changes (fresh storage)."""
    if patched:
        assert secantus_server.apply_patch()
    storage = secantus_storage.Storage(":memory:")
    try:
        storage.create_index(DB, COLL, "name_ci", {"name": 1}, {"collation": CASELESS})
        storage.insert(DB, COLL, [{"_id": n, "name": f"Name{n}"} for n in range(20)])
        # Created between two writes: the next write must see it, with its collation.
        storage.create_index(DB, COLL, "colour", {"colour": 1}, {"collation": CASELESS})
        storage.insert(DB, COLL, [{"_id": 100 + n, "colour": "Red"} for n in range(20)])
        storage.update_matching(DB, COLL, {"_id": {"$lt": 10}}, {"$set": {"colour": "Blue"}},
                                multi=True)  # fmt: skip
        # An array value makes the colour index multikey, inside a chunk.
        storage.insert(
            DB, COLL, [{"_id": 200, "colour": "Green"}, {"_id": 201, "colour": ["A", "b"]}]
        )
        storage.drop_index(DB, COLL, "name_ci")
        storage.update_matching(DB, COLL, {"_id": 3}, {"$set": {"name": "Renamed"}})
        storage.update_matching(DB, COLL, {"_id": 300}, {"$set": {"colour": "Grey"}}, upsert=True)
        tables = (secantus_storage._IDX_ENTRIES_TABLE, secantus_storage._IDX_TABLE)
        return [[tuple(row) for row in storage._cursor(table)] for table in tables]
    finally:
        storage.close()


def test_patched_writes_leave_the_same_index_entries_as_unpatched_ones(
    patched_storage_class: type,
) -> None:
    unpatched = _index_tables_after_a_workload(patched=False)
    patched = _index_tables_after_a_workload(patched=True)

    entries, catalog = unpatched
    assert len(entries) >= 44  # the colour index: a document each, more for the array
    assert any(b"multikey" in row[-1] for row in catalog)
    assert patched == unpatched


def _index_tables_after_updates(patched: bool) -> list[Any]:
    """Index entries, unique claims and catalog after updates of every kind (fresh storage)."""
    if patched:
        assert secantus_server.apply_patch()
    storage = secantus_storage.Storage(":memory:")
    update = functools.partial(storage.update_matching, DB, COLL)
    try:
        storage.create_index(DB, COLL, "key", {"key": 1}, {"unique": True})
        storage.create_index(DB, COLL, "live_status", {"status": 1},
                             {"partialFilterExpression": {"live": True}})  # fmt: skip
        storage.create_index(DB, COLL, "opt", {"opt": 1}, {"sparse": True})
        storage.create_index(DB, COLL, "tags_name", {"tags": 1, "name": 1},
                             {"collation": CASELESS})  # fmt: skip
        storage.insert(DB, COLL, [
            {"_id": n, "key": f"k{n}", "status": "new", "live": n % 2 == 0, "opt": n,
             "tags": ["a"], "name": f"N{n}", "note": ""}
            for n in range(40)
        ])  # fmt: skip
        update({}, {"$set": {"note": "touched"}, "$inc": {"epoch": 1}}, multi=True)
        update({"_id": {"$lt": 10}}, {"$set": {"status": "running"}}, multi=True)
        update({"_id": {"$lt": 20}}, {"$set": {"live": True}}, multi=True)  # into the partial
        update({"_id": 4}, {"$set": {"live": False, "status": "gone"}})  # out of it
        update({"_id": {"$gte": 30}}, {"$unset": {"opt": ""}}, multi=True)  # sparse: out
        update({"_id": 5}, {"$push": {"tags": "B"}})  # multikey grows
        update({"_id": 6}, {"$set": {"name": "n6"}})  # equal under the collation, new bytes
        update({"_id": 7}, {"$set": {"key": "k7"}})  # no change at all
        update({"_id": 8}, {"key": "k8", "status": "replaced"})  # a replacement
        update({"_id": 99}, {"$set": {"key": "k99"}}, upsert=True)
        with pytest.raises(secantus_storage.IndexConflict):  # a unique key taken mid-chunk
            update({"_id": {"$in": [20, 21]}}, {"$set": {"key": "kz", "tags": []}}, multi=True)
        with pytest.raises(secantus_storage.IndexConflict):
            update({"_id": 12}, {"$set": {"key": "k13"}})
        update({"_id": {"$gte": 10}}, {"$set": {"note": "again"}}, multi=True)
        tables = (
            secantus_storage._IDX_ENTRIES_TABLE,
            secantus_storage._UNIQ_TABLE,
            secantus_storage._IDX_TABLE,
        )
        docs = storage.find_matching(DB, COLL, {})
        return [[tuple(row) for row in storage._cursor(table)] for table in tables] + [docs]
    finally:
        storage.close()


def test_patched_updates_leave_the_same_index_entries_as_unpatched_ones(
    patched_storage_class: type,
) -> None:
    unpatched = _index_tables_after_updates(patched=False)
    patched = _index_tables_after_updates(patched=True)

    entries, claims, _catalog, docs = unpatched
    assert len(entries) > 120 and len(claims) == 41
    keys = {doc["_id"]: doc["key"] for doc in docs}
    assert (keys[20], keys[21]) == ("kz", "k21")  # what came before the refusal stays
    assert patched == unpatched


def test_patched_update_rewrites_only_the_index_entries_it_changes(
    patched_storage_class: type,
) -> None:
    rewritten: list[list[str]] = []
    original = patched_storage_class._delete_index_entries

    def counting(self: Any, db: str, coll: str, doc: Any, indexes: Any, *args: Any,
                 **kwargs: Any) -> None:  # fmt: skip
        rewritten.append([index[0] for index in indexes])
        original(self, db, coll, doc, indexes, *args, **kwargs)

    patched_storage_class._delete_index_entries = counting
    assert secantus_server.apply_patch()
    storage = secantus_storage.Storage(":memory:")
    try:
        for name in ("status", "owner", "manuscript"):
            storage.create_index(DB, COLL, name, {name: 1}, {})
        storage.insert(DB, COLL, [{"_id": n, "status": "running", "epoch": 1} for n in range(50)])
        storage.update_matching(DB, COLL, {}, {"$inc": {"epoch": 1}}, multi=True)
        storage.update_matching(DB, COLL, {"_id": 3}, {"$set": {"lease": 9}})
        untouched, rewritten[:] = list(rewritten), []
        storage.update_matching(DB, COLL, {}, {"$set": {"status": "paused"}}, multi=True)
        storage.update_matching(DB, COLL, {"_id": 3}, {"$set": {"owner": "b"}})
    finally:
        storage.close()

    assert untouched == [[]] * 51
    assert rewritten == [["status"]] * 50 + [["owner"]]


def test_profiling_level_is_read_once_and_follows_every_change(
    patched_storage_class: type,
) -> None:
    assert secantus_server.apply_patch()
    storage = secantus_storage.Storage(":memory:")
    reads = 0
    cursor = storage._cursor

    def counting_cursor(table: str, *args: Any, **kwargs: Any) -> Any:
        nonlocal reads
        reads += table == secantus_storage._PROFILE_TABLE
        return cursor(table, *args, **kwargs)

    storage._cursor = counting_cursor
    try:
        levels = [storage.get_profile(DB)["level"] for _ in range(100)]
        assert (levels, reads) == ([0] * 100, 1)

        storage.set_profile(DB, level=2, slowms=7)
        assert storage.get_profile(DB) == {"level": 2, "slowms": 7, "sampleRate": 1.0}
        assert storage.get_profile("other")["level"] == 0
        storage.get_profile(DB)["level"] = 1  # a caller's copy, not the cache
        storage.set_profile(DB, level=0)
        assert [storage.get_profile(DB)["level"] for _ in range(10)] == [0] * 10
    finally:
        storage.close()


def test_patch_is_refused_for_a_version_it_was_not_checked_against(
    patched_storage_class: type, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secantus, "__version__", "0.0.0-unchecked")
    original = patched_storage_class.__dict__["_insert_chunk"]

    assert secantus_server.apply_patch() is False
    assert patched_storage_class.__dict__["_insert_chunk"] is original


IN_DOCUMENTS: list[dict[str, Any]] = [
    {"_id": 1, "s": "a"},
    {"_id": 2, "s": "B"},
    {"_id": 3, "s": ["x", "b"]},
    {"_id": 4, "s": [["a"]]},
    {"_id": 5},
    {"_id": 6, "s": None},
    {"_id": 7, "s": 1},
    {"_id": 8, "s": {"k": "a"}},
    {"_id": 9, "s": [1, "a"]},
    {"_id": 10, "s": True},
    {"_id": 11, "s": [{"k": "a"}, {"k": "z"}]},
    {"_id": 12, "s": ""},
]
IN_FILTERS: list[dict[str, Any]] = [
    {"s": {"$in": ["a", "b"]}},
    {"s": {"$in": ["B"]}},
    {"s": {"$in": []}},
    {"s": {"$in": [""]}},
    {"s": {"$in": ["a", None]}},  # not all strings: SecantusDB's own path
    {"s": {"$in": ["a", 1]}},
    {"s": {"$in": [["a"]]}},
    {"s": {"$nin": ["a", "b"]}},
    {"s.k": {"$in": ["a"]}},
    {"s.0": {"$in": ["x", "a"]}},
    {"_id": {"$in": [1, 2]}, "s": {"$in": ["a", "B", "zz"]}},
    {"$or": [{"s": {"$in": ["x"]}}, {"s": {"$in": ["B"]}}]},
    {"s": {"$not": {"$in": ["a"]}}},
]


def _in_matches(patched: bool, collation: Any = None) -> list[list[Any]]:
    if patched:
        assert secantus_server.apply_patch()
    return [
        [doc["_id"] for doc in IN_DOCUMENTS if secantus_query.matches(doc, f, collation=collation)]
        for f in IN_FILTERS
    ]


def test_patched_string_in_matches_exactly_what_secantus_matches(
    patched_storage_class: type,
) -> None:
    caseless = secantus_collation.parse(CASELESS)
    unpatched = (_in_matches(patched=False), _in_matches(False, caseless))
    patched = (_in_matches(patched=True), _in_matches(True, caseless))

    assert unpatched[0][0] == [1, 3, 9]  # the fixture covers arrays (one level deep only)
    assert unpatched[1][1] == [2, 3]  # and a collation (case-insensitive "B")
    assert patched == unpatched


def test_patched_string_in_is_one_set_lookup_not_one_comparison_per_candidate(
    patched_storage_class: type,
) -> None:
    comparisons = [0]
    original = secantus_query._in_candidate_matches

    def counting(*args: Any, **kwargs: Any) -> bool:
        comparisons[0] += 1
        return original(*args, **kwargs)

    secantus_query._in_candidate_matches = counting
    ids = [str(uuid.UUID(int=n)) for n in range(1000)]
    query = {"session_id": {"$in": ids}}
    try:
        unpatched = [secantus_query.matches({"session_id": sid}, query) for sid in ids[::100]]
        before, comparisons[0] = comparisons[0], 0
        assert secantus_server.apply_patch()
        patched = [secantus_query.matches({"session_id": sid}, query) for sid in ids[::100]]
    finally:
        secantus_query._in_candidate_matches = original

    assert unpatched == patched == [True] * 10
    assert before == sum(range(1, 1000, 100))  # every candidate up to the match
    assert comparisons[0] == 0


@pytest.fixture
async def collection(embedded_db_uri: str) -> Any:
    client: Any = AsyncMongoClient(embedded_db_uri)
    name = f"patch_{uuid.uuid4().hex[:12]}"
    try:
        yield client[name]["docs"]
    finally:
        await client.drop_database(name)
        await client.close()


async def test_embedded_server_keeps_indexes_exact_through_bulk_writes(collection: Any) -> None:
    await collection.create_index([("session_id", 1), ("seq", 1)], unique=True, name="unique_seq")
    await collection.create_index([("name", 1)], name="name_ci", collation=CASELESS)
    first = [{"session_id": "a", "seq": n, "name": f"Name{n}"} for n in range(50)]
    duplicate = {"session_id": "a", "seq": 7, "name": "again"}

    with pytest.raises(BulkWriteError) as refused:
        await collection.insert_many([*first, duplicate], ordered=False)

    assert [e["code"] for e in refused.value.details["writeErrors"]] == [11000]
    assert await collection.count_documents({}) == 50
    found = collection.find({"name": "NAME7"}, collation=CASELESS)
    assert [doc["seq"] for doc in await found.hint("name_ci").to_list(None)] == [7]

    # An index created between two batches is filled by the second, with its own options
    # (a memo that outlived its chunk would write these keys without the collation).
    await collection.create_index([("colour", 1)], name="colour", collation=CASELESS)
    await collection.insert_many(
        [{"session_id": "b", "seq": n, "name": "x", "colour": "Red"} for n in range(30)]
    )
    red = collection.find({"colour": "RED"}, collation=CASELESS).hint("colour")
    assert len(await red.to_list(None)) == 30

    # Updated keys move in every index.
    await collection.update_many({"session_id": "b"}, {"$set": {"colour": "blue"}})
    for colour, count in (("RED", 0), ("BLUE", 30)):
        cursor = collection.find({"colour": colour}, collation=CASELESS).hint("colour")
        assert len(await cursor.to_list(None)) == count
    with pytest.raises(BulkWriteError):
        await collection.insert_many([{"session_id": "b", "seq": 3}])


async def test_embedded_server_answers_long_string_in_lists_exactly(collection: Any) -> None:
    ids = [f"session-{n:04d}" for n in range(600)]
    await collection.create_index([("session_id", 1)], name="session")
    await collection.insert_many(
        [{"session_id": sid, "n": n, "tags": [sid, "all"]} for n, sid in enumerate(ids)]
        + [{"session_id": 7, "n": -1}, {"n": -2}]
    )
    wanted = ids[::3] + ["no-such-session"]

    by_index = await collection.find({"session_id": {"$in": wanted}}).to_list(None)
    by_array = await collection.find({"tags": {"$in": wanted}}).to_list(None)
    mixed = await collection.find({"session_id": {"$in": [*wanted, 7]}}).to_list(None)
    caseless = collection.find({"session_id": {"$in": ["SESSION-0003"]}}, collation=CASELESS)

    assert sorted(doc["n"] for doc in by_index) == list(range(0, 600, 3))
    assert sorted(doc["n"] for doc in by_array) == list(range(0, 600, 3))
    assert sorted(doc["n"] for doc in mixed) == [-1, *range(0, 600, 3)]
    assert [doc["n"] for doc in await caseless.to_list(None)] == [3]


async def test_embedded_server_profiles_commands_only_while_profiling_is_on(
    collection: Any,
) -> None:
    database = collection.database
    profiled = database["system.profile"]

    await collection.insert_one({"n": 1})
    assert (await database.command("profile", 2))["was"] == 0
    await collection.insert_one({"n": 2})
    await collection.find_one({"n": 2})
    assert (await database.command("profile", 0))["was"] == 2
    seen = await profiled.count_documents({})
    await collection.insert_one({"n": 3})

    assert seen >= 2
    assert await profiled.count_documents({}) == seen
    assert (await database.command("profile", -1))["was"] == 0
