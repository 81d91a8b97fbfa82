"""Group commits of the MongoDB store: one idempotent, durable write of a batch.

Idempotency, so that callers (the PersistenceActor) may retry any write:

- checkpoints, log buckets and images have deterministic ``_id`` keys and go in with
  ``insert_many(ordered=False)``; duplicate-key errors (code 11000) are retries, not errors;
- the session document gets each session's compact checkpoints with one guarded update,
  ``{_id: sid, last_sequence_number < first sequence of the batch}`` ->
  ``$push {$each, $slice: -embedded_keep}``, ``$max`` of the sequence and the batch's ``$set``
  fields. If a guarded update matches nothing (a retry of an applied batch, or a missing
  session document), a second, unguarded ``$set`` of those fields follows: the fields land
  even on a retry, and the compact checkpoints are never pushed twice.

Durability of a batch (``write_batch``): its writes go unjournaled (``w: 1, j: false``)
except the last, which is journaled: the checkpoints' insert, or, when session documents
are updated, an ``$inc`` of a mark document after them. The journal is one sequential log:
a journaled write returns once the journal is on disk up to it, hence with every write
acknowledged before it (WiredTiger writes log records in order; MongoDB's ``j: true`` has
the same meaning). The batch is as durable as if every write had been journaled, for one
journal sync instead of one per update: SecantusDB commits every update of a
``bulk_write`` as its own transaction, and with ``j: true`` syncs each one.
tests/storage/test_group_commit.py kills the database right after batches and finds them.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from typing import Any

from pymongo import ASCENDING, UpdateOne

from storage.leases import chunks
from storage.mongo_client import MongoDatabase, new_session_document, settable
from storage.mongo_records import merge_embedded, place
from storage.records import Checkpoint, PersistBatch

logger = logging.getLogger(__name__)

_BULK_PROBE_ID = "\x00bulk-write-probe"
"""A session ``_id`` no real session has: the probe's update matches nothing."""

_Update = tuple[dict[str, Any], dict[str, Any]]
"""One session update: (filter, update document)."""


class BatchWrites(MongoDatabase):
    """``write_batch``: the PersistenceActor's group commit (see the module doc)."""

    async def write_batch(self, batch: PersistBatch, embedded_keep: int) -> set[str]:
        """One group commit; every part is idempotent, so the whole batch may be retried.

        Returns the sessions whose checkpoints were refused because a newer lease epoch
        already wrote them (the writer was fenced; see storage.leases).

        The log entries and image records ride in the checkpoint documents (or in a log
        bucket per session; storage.mongo_records). Order: buckets and loose image
        records, then checkpoints, then session documents, so that
        whatever a crash cuts off, a stored record never names one that is not stored yet:
        a stored IMAGES_GENERATING checkpoint implies its image record (reconciliation
        copies only missing checkpoints, with their images), and a session document never
        names a checkpoint or counter whose records are missing.
        """
        # The last stage that writes goes journaled (see the module doc), unless it is the
        # session updates: SecantusDB syncs every update of a journaled bulk_write on its
        # own, so a journaled mark follows them instead.
        journaled = _journaled_stage(batch)
        if batch.new_sessions:
            documents = [new_session_document(d) for d in batch.new_sessions]
            coll = self._sessions if journaled == "sessions" else self._batch_sessions
            await self._call(
                "create sessions", lambda: self._insert_many_idempotent(coll, documents)
            )
        # Log buckets and loose image records name nothing stored after them: both at once
        # (one round trip saved per batch), then the checkpoints, which carry the rest.
        placement = place(batch)
        last = journaled == "records"
        outcomes = await asyncio.gather(
            self._insert_all(
                self._images if last else self._batch_images, "store images", placement.images
            ),
            self._insert_documents(
                self._logs if last else self._batch_logs, "store logs", placement.buckets
            ),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        fenced = await self._insert_checkpoints(
            placement.checkpoints,
            self._checkpoints if journaled == "checkpoints" else self._batch_checkpoints,
        )
        if journaled == "mark":
            await self._update_sessions(batch, max(0, embedded_keep), self._batch_sessions)
            await self._sync_journal()
        return fenced

    async def _sync_journal(self) -> None:
        """One journaled write after a batch's unjournaled ones: the journal is on disk up
        to here when it returns, so every write before it is durable too."""
        await self._call(
            "sync journal",
            partial(self._marks.update_one, {"_id": "batch"}, {"$inc": {"n": 1}}, upsert=True),
        )

    async def append_checkpoints(self, checkpoints: list[Checkpoint], embedded_keep: int) -> None:
        """Store checkpoints and embed their compact forms (the latest ``embedded_keep``)."""
        await self.write_batch(PersistBatch(checkpoints=list(checkpoints)), embedded_keep)

    async def _insert_documents(self, coll: Any, what: str, docs: list[dict[str, Any]]) -> None:
        if docs:
            await self._call(what, lambda: self._insert_many_idempotent(coll, docs))

    async def _insert_checkpoints(self, docs: list[dict[str, Any]], coll: Any) -> set[str]:
        """Insert checkpoint documents; settle the ones already stored by their lease epoch.

        Same epoch: a retry; the records it embeds are added to the stored copy if it
        lacks them (storage.mongo_records.merge_embedded). Older stored epoch: a fenced writer's
        leftover at a sequence the new owner has now reached, replaced by ours. Newer
        stored epoch: we are the fenced writer; our checkpoint is dropped and its
        session returned.
        """
        if not docs:
            return set()
        duplicates = await self._call(
            "store checkpoints", lambda: self._insert_many_idempotent(coll, docs)
        )
        fenced: set[str] = set()
        if not duplicates:
            return fenced
        ours = {docs[i]["_id"]: docs[i] for i in duplicates}
        stored: dict[str, dict[str, Any]] = {}
        for chunk in chunks(list(ours)):
            found = await self._find(
                self._checkpoints,
                "read stored checkpoints",
                {"_id": {"$in": chunk}},
                [("_id", ASCENDING)],
                projection={"epoch": 1, "session_id": 1},
            )
            stored.update((doc["_id"], doc) for doc in found)
        for key, doc in ours.items():
            old = int((stored.get(key) or {}).get("epoch") or 0)
            if old > int(doc.get("epoch") or 0):
                fenced.add(doc["session_id"])
            elif old == int(doc.get("epoch") or 0):
                update = merge_embedded(doc)
                if update:
                    await self._call(
                        "merge embedded records", partial(coll.update_one, {"_id": key}, update)
                    )
            elif old < int(doc.get("epoch") or 0):
                logger.warning(
                    "checkpoint %s of a fenced writer (epoch %d) replaced by epoch %d",
                    key,
                    old,
                    doc["epoch"],
                )
                await self._call(
                    "replace fenced checkpoint",
                    partial(coll.replace_one, {"_id": key, "epoch": old}, dict(doc)),
                )
        return fenced

    async def _update_sessions(self, batch: PersistBatch, embedded_keep: int, coll: Any) -> None:
        by_session: dict[str, list[Checkpoint]] = {}
        summarised = (
            batch.checkpoints if batch.summary_checkpoints is None else batch.summary_checkpoints
        )
        for checkpoint in summarised:
            by_session.setdefault(checkpoint.session_id, []).append(checkpoint)
        fields = {sid: settable(values) for sid, values in batch.session_updates.items()}
        ops: list[_Update] = []
        for sid, checkpoints in by_session.items():
            checkpoints.sort(key=lambda cp: cp.sequence_number)
            first, last = checkpoints[0].sequence_number, checkpoints[-1].sequence_number
            update: dict[str, Any] = {
                "$push": {
                    "checkpoints": {
                        "$each": [cp.compact() for cp in checkpoints],
                        "$slice": -embedded_keep,
                    }
                },
                "$max": {"last_sequence_number": last},
            }
            if fields.get(sid):
                update["$set"] = fields[sid]
            ops.append((_fenced(_not_yet_applied(sid, first), batch, sid), update))
        ops.extend(
            (_fenced({"_id": sid}, batch, sid), {"$set": values})
            for sid, values in fields.items()
            if values and sid not in by_session
        )
        if not ops:
            return
        matched = await self._run_updates("update sessions", ops, coll)
        if matched < len(ops):
            # Some update matched nothing: a retry of an applied batch (the guard refused
            # to push its checkpoints again) or a missing session document. The batch's
            # $set fields must still land; repeating a $set is harmless.
            again = [
                (_fenced({"_id": sid}, batch, sid), {"$set": fields[sid]})
                for sid in by_session
                if fields.get(sid)
            ]
            if again:
                await self._run_updates("update sessions (retried batch)", again, coll)

    async def _run_updates(self, what: str, ops: list[_Update], coll: Any) -> int:
        """Apply ops in order, as one bulk_write when the driver can; return matched count."""
        if await self._supports_bulk_updates():
            requests = [UpdateOne(query, update) for query, update in ops]
            result = await self._call(what, lambda: coll.bulk_write(requests, ordered=True))
            return int(result.matched_count)
        matched = 0
        for query, update in ops:
            result = await self._call(what, partial(coll.update_one, query, update))
            matched += int(result.matched_count)
        return matched

    async def _supports_bulk_updates(self) -> bool:
        """Probe once, lazily: mongomock's bulk_write raises TypeError on UpdateOne.

        The probe is a real bulk_write whose only UpdateOne matches no document
        (``_id`` = :data:`_BULK_PROBE_ID`, no upsert), so it changes nothing anywhere.
        """
        if self._bulk_updates is None:
            probe = [UpdateOne({"_id": _BULK_PROBE_ID}, {"$set": {"probe": True}})]
            try:
                await self._call("probe bulk_write", lambda: self._sessions.bulk_write(probe))
                self._bulk_updates = True
            except TypeError:
                self._bulk_updates = False
            logger.info("session updates via bulk_write: %s", self._bulk_updates)
        return self._bulk_updates


def batch_documents(batch: PersistBatch) -> dict[str, int]:
    """Documents ``write_batch`` inserts or updates for ``batch`` by kind, its journaled
    mark included (a first write; a retry writes no more)."""
    placement = place(batch)
    summarised = (
        batch.checkpoints if batch.summary_checkpoints is None else batch.summary_checkpoints
    )
    sessions: set[str] = {cp.session_id for cp in summarised}
    sessions.update(sid for sid, fields in batch.session_updates.items() if fields)
    return {
        "new sessions": len(batch.new_sessions),
        "checkpoints": len(placement.checkpoints),
        "log buckets": len(placement.buckets),
        "images": len(placement.images),
        "session updates": len(sessions),
        "journal marks": int(_journaled_stage(batch) == "mark"),
    }


def _journaled_stage(batch: PersistBatch) -> str:
    """The last stage of ``batch`` that writes, whose write goes journaled: ``mark`` (a
    journaled write after the session updates), ``checkpoints``, ``records`` (image
    records and logs) or ``sessions`` (new session documents)."""
    embedded = batch.checkpoints if batch.summary_checkpoints is None else batch.summary_checkpoints
    if batch.session_updates or embedded:
        return "mark"
    if batch.checkpoints:
        return "checkpoints"
    if batch.images or batch.logs:
        return "records"
    return "sessions"


def _not_yet_applied(session_id: str, first_sequence: int) -> dict[str, Any]:
    """Filter matching the session document only if this batch's checkpoints are new.

    ``create_session`` always sets ``last_sequence_number`` (0), so a plain ``$lt`` guard
    suffices; an ``$or`` with ``$exists`` made SecantusDB scan every session document
    instead of using ``_id`` (bench/checkpoints.py: 8.7 ms per update at 1,000 sessions).
    """
    return {"_id": session_id, "last_sequence_number": {"$lt": first_sequence}}


def _fenced(query: dict[str, Any], batch: PersistBatch, session_id: str) -> dict[str, Any]:
    """``query`` restricted to the lease epoch the batch's writer holds, if it holds one."""
    epoch = batch.session_epochs.get(session_id)
    return query if epoch is None else {**query, "epoch": epoch}
