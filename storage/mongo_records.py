"""Log entries and image records in the database: written inside the documents they come with.

One document per log line and per image record cost the database 4.3 documents and about
12 index writes per checkpoint. They now ride along (MongoDB's embedding and bucket
patterns):

- a checkpoint document carries the log entries and image records its session brought in
  the same batch (on that session's first checkpoint of the batch): fields ``logs``,
  ``images``, ``first_event_seq``, ``last_event_seq`` and ``has_images``;
- a session's entries in a batch without a checkpoint of it go in one bucket document of
  the ``logs`` collection, ``{_id: "<sid>:b<first>", session_id, event_seq: <last>,
  first_event_seq, entries}``: its ``event_seq`` is its newest entry's, so the one index
  ``(session_id, event_seq)`` finds buckets and single entries alike;
- image records without a checkpoint (reconciliation, restore) stay one per document in
  ``images``, as do the single-entry log documents a database written before this layout
  holds: both are read as they are, no migration needed.

Readers merge the places and drop duplicates: a retried batch, or one the quarantine split
into parts, can place one entry twice. Embedded records leave out ``session_id``, which
their document gives back, and log entries their ``_id`` too (their ``event_seq`` names them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pymongo import ASCENDING

from domain import SessionId
from storage.leases import chunks
from storage.mongo_client import MongoDatabase
from storage.records import ImageRecord, LogEntry, PersistBatch

EVENT_SEQ_CHUNK = 32
"""Sessions per ``last_event_seqs`` query (see :meth:`LogRecords.last_event_seqs`)."""
EMBEDDED = {"logs": 0, "images": 0}
"""Projection that leaves a checkpoint document's embedded records out."""


@dataclass
class Placement:
    """Where one batch's records go: the checkpoint documents (with their embedded
    records), one log bucket per session without a checkpoint, the loose image records."""

    checkpoints: list[dict[str, Any]] = field(default_factory=list)
    buckets: list[dict[str, Any]] = field(default_factory=list)
    images: list[ImageRecord] = field(default_factory=list)


def place(batch: PersistBatch) -> Placement:
    """Put each log entry and image record of ``batch`` into a document (module doc)."""
    placement = Placement(checkpoints=[cp.to_document() for cp in batch.checkpoints])
    first_of: dict[str, dict[str, Any]] = {}
    for doc in placement.checkpoints:
        current = first_of.get(doc["session_id"])
        if current is None or doc["sequence_number"] < current["sequence_number"]:
            first_of[doc["session_id"]] = doc
    loose: dict[str, list[LogEntry]] = {}
    for entry in batch.logs:
        target = first_of.get(entry.session_id)
        if target is None:
            loose.setdefault(entry.session_id, []).append(entry)
        else:
            _embed_logs(target, [entry])
    for image in batch.images:
        target = first_of.get(image.session_id)
        if target is None:
            placement.images.append(image)
        else:
            target.setdefault("images", []).append(_embedded(image.to_document(), keep_id=True))
            target["has_images"] = True
    placement.buckets = [log_bucket(entries) for entries in loose.values()]
    return placement


def log_bucket(entries: list[LogEntry]) -> dict[str, Any]:
    """One ``logs`` document holding ``entries`` (all of one session)."""
    entries = sorted(entries, key=lambda e: e.event_seq)
    first, last = entries[0].event_seq, entries[-1].event_seq
    return {
        "_id": f"{entries[0].session_id}:b{first:010d}",
        "session_id": entries[0].session_id,
        "event_seq": last,
        "first_event_seq": first,
        "entries": [_embedded(e.to_document()) for e in entries],
    }


def _embed_logs(doc: dict[str, Any], entries: list[LogEntry]) -> None:
    doc.setdefault("logs", []).extend(_embedded(e.to_document()) for e in entries)
    seqs = [e.event_seq for e in entries]
    doc["first_event_seq"] = min([*seqs, doc.get("first_event_seq", seqs[0])])
    doc["last_event_seq"] = max([*seqs, doc.get("last_event_seq", seqs[0])])


def _embedded(document: dict[str, Any], *, keep_id: bool = False) -> dict[str, Any]:
    left_out = ("session_id",) if keep_id else ("_id", "session_id")
    return {k: v for k, v in document.items() if k not in left_out}


def merge_embedded(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The update adding ``doc``'s embedded records to the stored copy of ``doc`` (a
    retried or re-split batch may have put other records in it); None if it has none."""
    update: dict[str, Any] = {}
    if doc.get("logs"):
        update["$addToSet"] = {"logs": {"$each": doc["logs"]}}
        update["$min"] = {"first_event_seq": doc["first_event_seq"]}
        update["$max"] = {"last_event_seq": doc["last_event_seq"]}
    if doc.get("images"):
        update.setdefault("$addToSet", {})["images"] = {"$each": doc["images"]}
        update["$set"] = {"has_images": True}
    return update or None


def _entries_of(doc: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The entries a ``logs`` or checkpoint document holds, as whole log documents."""
    if key not in doc:
        return [doc] if key == "entries" else []
    return [{**entry, "session_id": doc["session_id"]} for entry in doc.get(key) or []]


class LogRecords(MongoDatabase):
    """The log and image queries of ``MongoStore`` over the layout of the module doc."""

    async def log_events(self, entries: list[LogEntry]) -> None:
        """Store log/event entries, one bucket per session (a retried call is a no-op)."""
        by_session: dict[str, list[LogEntry]] = {}
        for entry in entries:
            by_session.setdefault(entry.session_id, []).append(entry)
        buckets = [log_bucket(group) for group in by_session.values()]
        if buckets:
            await self._call(
                "store logs", lambda: self._insert_many_idempotent(self._logs, buckets)
            )

    async def list_logs(
        self, session_id: SessionId, after_event_seq: int = 0, limit: int = 100
    ) -> list[LogEntry]:
        """Up to ``limit`` entries with event_seq greater than ``after_event_seq``, in order.

        Each document read holds at least one entry past ``after_event_seq`` and the
        documents of one place follow each other in event order, so the first ``limit``
        documents of each place hold the ``limit`` first entries.
        """
        if limit <= 0:
            return []
        documents = await self._find(
            self._logs,
            "list logs",
            {"session_id": session_id, "event_seq": {"$gt": after_event_seq}},
            [("event_seq", ASCENDING)],
            limit,
        )
        checkpoints = await self._find(
            self._checkpoints,
            "list checkpoint logs",
            {"session_id": session_id, "last_event_seq": {"$gt": after_event_seq}},
            [("sequence_number", ASCENDING)],
            limit,
            projection={"session_id": 1, "logs": 1},
        )
        found: dict[int, dict[str, Any]] = {}
        for doc in documents:
            for entry in _entries_of(doc, "entries"):
                found.setdefault(int(entry["event_seq"]), entry)
        for doc in checkpoints:
            for entry in _entries_of(doc, "logs"):
                found.setdefault(int(entry["event_seq"]), entry)
        seqs = sorted(seq for seq in found if seq > after_event_seq)[:limit]
        return [LogEntry.from_document(found[seq]) for seq in seqs]

    async def last_event_seqs(self, session_ids: list[str]) -> dict[str, int]:
        """The highest stored ``event_seq`` of each session that has log entries.

        One query per place per 32 sessions, only the two fields read. Unpatched
        SecantusDB tests every document against the whole ``$in`` list (8 ids per query
        was cheapest then); storage/secantus_server.py makes that a set lookup, and with
        32 ids per query these reads of recovering 1,000 sessions took 1.16 s in all,
        against 2.05 s with 8 (bench/restart_recovery.py).
        """

        async def read(coll: Any, field: str, ids: list[str]) -> list[dict[str, Any]]:
            query = {"session_id": {"$in": ids}, field: {"$gt": 0}}
            projection = {"_id": 0, "session_id": 1, field: 1}
            return [
                {"session_id": d["session_id"], "seq": d[field]}
                for d in await coll.find(query, projection).to_list(None)
            ]

        last: dict[str, int] = {}
        for chunk in chunks(list(dict.fromkeys(session_ids)), EVENT_SEQ_CHUNK):
            for coll, field_name in (
                (self._logs, "event_seq"),
                (self._checkpoints, "last_event_seq"),
            ):
                docs = await self._call(
                    "last event numbers", partial(read, coll, field_name, chunk)
                )
                for doc in docs:
                    sid, seq = doc["session_id"], int(doc["seq"])
                    if seq > last.get(sid, 0):
                        last[sid] = seq
        return last

    async def prune_logs(self, session_id: SessionId, keep: int) -> None:
        """Delete all but the newest ``keep`` entries (by event_seq) of a session."""
        query = {"session_id": session_id}
        documents = await self._find(self._logs, "read logs to prune", query, [("_id", 1)])
        checkpoints = await self._find(
            self._checkpoints,
            "read checkpoint logs to prune",
            {**query, "last_event_seq": {"$gt": 0}},
            [("_id", ASCENDING)],
            projection={"session_id": 1, "logs": 1, "first_event_seq": 1, "last_event_seq": 1},
        )
        seqs = sorted(
            {int(e["event_seq"]) for d in documents for e in _entries_of(d, "entries")}
            | {int(e["event_seq"]) for d in checkpoints for e in _entries_of(d, "logs")},
            reverse=True,
        )
        if len(seqs) <= keep:
            return
        cutoff = seqs[keep]  # the newest entry that has to go, and all below it
        await self._call(
            "prune logs",
            lambda: self._logs.delete_many({**query, "event_seq": {"$lte": cutoff}}),
        )
        await self._call(
            "prune checkpoint logs",
            lambda: self._checkpoints.update_many(
                {**query, "last_event_seq": {"$lte": cutoff}},
                {"$unset": {"logs": "", "first_event_seq": "", "last_event_seq": ""}},
            ),
        )
        for coll, key, docs in (
            (self._logs, "entries", documents),
            (self._checkpoints, "logs", checkpoints),
        ):
            for doc in docs:
                await self._cut_below(coll, key, doc, cutoff)

    async def _cut_below(self, coll: Any, key: str, doc: dict[str, Any], cutoff: int) -> None:
        """Drop the entries at or below ``cutoff`` from a document that also holds newer
        ones (the documents wholly below it are gone already)."""
        entries = doc.get(key)
        if not entries or int(doc.get("first_event_seq") or 0) > cutoff:
            return
        kept = [e for e in entries if int(e["event_seq"]) > cutoff]
        if not kept or len(kept) == len(entries):
            return
        first = min(int(e["event_seq"]) for e in kept)
        await self._call(
            "prune logs",
            partial(
                coll.update_one,
                {"_id": doc["_id"]},
                {"$set": {key: kept, "first_event_seq": first}},
            ),
        )

    async def add_images(self, images: list[ImageRecord]) -> None:
        """Store image records (a retried record is a no-op)."""
        await self._insert_all(self._images, "store images", images)

    async def list_images(self, session_id: SessionId) -> list[ImageRecord]:
        """Image records in generation order, once each."""
        documents = await self._find(
            self._images, "list images", {"session_id": session_id}, [("_id", ASCENDING)]
        )
        checkpoints = await self._find(
            self._checkpoints,
            "list checkpoint images",
            {"session_id": session_id, "has_images": True},
            [("sequence_number", ASCENDING)],
            projection={"session_id": 1, "images": 1},
        )
        found: dict[str, dict[str, Any]] = {doc["_id"]: doc for doc in documents}
        for doc in checkpoints:
            for image in _entries_of(doc, "images"):
                found.setdefault(image["_id"], image)
        ordered = sorted(found.values(), key=lambda d: (int(d["generation_order"]), d["_id"]))
        return [ImageRecord.from_document(doc) for doc in ordered]
