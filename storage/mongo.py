"""The MongoDB implementation of SessionStore: one async code path for three drivers.

The drivers are PyMongo's ``AsyncMongoClient`` (default), Motor and mongomock-motor (unit
tests). The code below uses only the API all three share (FINDINGS.md): no ``aggregate()``,
``watch()``, ``with_options()`` or transactions, ``cursor.limit(n)`` instead of
``to_list(n)``, and ``close()`` awaited only when it returns an awaitable.

Idempotency, so that callers (the PersistenceActor) may retry any write:

- checkpoints, logs and images have deterministic ``_id`` keys and go in with
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

Transient connection errors are retried with a short backoff and then surface as
DatabaseUnavailableError; any other driver error surfaces as StorageError.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, UpdateOne, WriteConcern
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from domain import ManuscriptId, SessionId, utcnow
from errors import DatabaseUnavailableError, StorageError
from storage.leases import (
    LeaseHolder,
    LeaseOutcome,
    chunks,
    is_dead_local_owner,
    lease_deadline,
    takeable,
)
from storage.records import Checkpoint, ImageRecord, LogEntry, PersistBatch

logger = logging.getLogger(__name__)

T = TypeVar("T")

DRIVERS = ("pymongo", "motor", "mongomock")
DUPLICATE_KEY = 11000
MANAGED_SESSION_FIELDS = frozenset({"_id", "checkpoints", "last_sequence_number", "epoch"})
"""Session fields only the store writes; they are dropped from caller ``$set`` updates."""
_UNJOURNALED = WriteConcern(w=1, j=False)
"""The write concern of a batch's writes before its journaled mark (see the module doc)."""
COMMIT_MARKS = "commit_marks"
"""Collection of the one document whose journaled ``$inc`` ends every batch."""
_EVENT_SEQ_CHUNK = 32
"""Sessions per query of :meth:`MongoStore.last_event_seqs`."""
_BULK_PROBE_ID = "\x00bulk-write-probe"
"""A session ``_id`` no real session has: the probe's update matches nothing."""

INDEXES: list[tuple[str, str, tuple[str, ...], bool]] = [
    ("sessions", "status_can_resume", ("status", "can_resume"), False),
    ("sessions", "manuscript_id", ("manuscript_id",), False),
    ("sessions", "external_session_id", ("external_session_id",), False),
    ("checkpoints", "session_sequence_unique", ("session_id", "sequence_number"), True),
    ("logs", "session_event_seq", ("session_id", "event_seq"), False),
    ("images", "session_generation_order", ("session_id", "generation_order"), False),
]
"""(collection, index name, ascending fields, unique) of every index we create."""

_NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]

_Update = tuple[dict[str, Any], dict[str, Any]]
"""One session update: (filter, update document)."""


def open_store(
    uri: str,
    database: str,
    driver: str = "pymongo",
    server_selection_timeout_ms: int = 2000,
    *,
    retry_attempts: int = 3,
) -> MongoStore:
    """Create a client for ``driver`` and wrap ``database`` in a MongoStore.

    Synchronous and free of I/O: every driver connects lazily, so call ``await
    store.ping()`` or ``await store.ensure_indexes()`` to find out whether the database
    answers. Writes use ``w=1, j=true`` whatever the URI says (acknowledged work must survive
    a crash). ``retryWrites`` comes from the URI: the embedded SecantusDB's URI carries
    ``retryWrites=false`` (FINDINGS: its writes slow down otherwise); our own retries are
    safe because every write is idempotent. ``uri`` is ignored by the mongomock driver.

    Raises:
        ValueError: unknown driver.
    """
    options: dict[str, Any] = {
        "serverSelectionTimeoutMS": server_selection_timeout_ms,
        "w": 1,
        "journal": True,
        "appname": "illustrator",
    }
    client: Any
    if driver == "pymongo":
        from pymongo import AsyncMongoClient

        client = AsyncMongoClient(uri, **options)
    elif driver == "motor":
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(uri, **options)
    elif driver == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        client = AsyncMongoMockClient(w=1, journal=True)
    else:
        raise ValueError(f"unknown MongoDB driver {driver!r}; expected one of {list(DRIVERS)}")
    logger.info("opened %s store on database %s", driver, database)
    store = MongoStore(client, database, retry_attempts=retry_attempts)
    if driver != "mongomock":
        from pymongo.uri_parser import parse_uri

        nodes = parse_uri(uri)["nodelist"]  # a unix socket has no port: (path, None)
        store.seeds = tuple((str(host), int(port or 0)) for host, port in nodes)
    return store


class MongoStore:
    """SessionStore over a MongoDB database (collections ``sessions``, ``checkpoints``,
    ``logs``, ``images``, ``manuscripts``).

    Args:
        client: an AsyncMongoClient, AsyncIOMotorClient or AsyncMongoMockClient (owned: closed
            by :meth:`close`).
        database: database name.
        retry_attempts: attempts per operation on connection errors; the worst-case stall
            before DatabaseUnavailableError is about ``retry_attempts`` x the client's
            server selection timeout.
        retry_backoff_s: first pause between attempts (doubles each time).
        max_concurrency: operations in flight at once (FINDINGS: PyMongo async starves
            tasks beyond its pool of 100).
    """

    def __init__(
        self,
        client: Any,
        database: str,
        *,
        retry_attempts: int = 3,
        retry_backoff_s: float = 0.05,
        max_concurrency: int = 64,
    ) -> None:
        self._client = client
        self._db = client[database]
        self.database_name = database
        self.seeds: tuple[tuple[str, int], ...] = ()
        """(host, port) of the servers in the URI, (path, 0) for a unix socket; empty for
        the in-memory driver."""
        self._sessions = self._db["sessions"]
        self._checkpoints = self._db["checkpoints"]
        self._logs = self._db["logs"]
        self._images = self._db["images"]
        self._manuscripts = self._db["manuscripts"]
        self._marks = self._db[COMMIT_MARKS]
        # The batch's own handles: unjournaled, made durable by the mark (write_batch).
        unjournaled = partial(self._db.get_collection, write_concern=_UNJOURNALED)
        self._batch_sessions = unjournaled("sessions")
        self._batch_checkpoints = unjournaled("checkpoints")
        self._batch_logs = unjournaled("logs")
        self._batch_images = unjournaled("images")
        self._attempts = max(1, retry_attempts)
        self._backoff_s = retry_backoff_s
        self._gate = asyncio.Semaphore(max_concurrency)
        self._bulk_updates: bool | None = None

    @property
    def bulk_session_updates(self) -> bool | None:
        """Whether this driver runs ``bulk_write`` of UpdateOne (None until first probed)."""
        return self._bulk_updates

    # -- lifecycle ---------------------------------------------------------------------

    async def ensure_indexes(self) -> None:
        """Create every index of :data:`INDEXES` (idempotent)."""
        for collection, name, fields, unique in INDEXES:
            keys = [(field, ASCENDING) for field in fields]
            coll = self._db[collection]
            await self._call(
                f"create index {collection}.{name}",
                partial(coll.create_index, keys, name=name, unique=unique),
            )

    async def ping(self) -> None:
        """Raise DatabaseUnavailableError unless the server answers (one attempt)."""
        try:
            await self._client.admin.command("ping")
        except PyMongoError as exc:
            raise DatabaseUnavailableError(
                f"database does not answer: {exc}", details={"operation": "ping"}
            ) from exc

    async def close(self) -> None:
        """Close the client (a coroutine in PyMongo async, a plain call in the others)."""
        result = self._client.close()
        if inspect.isawaitable(result):
            await result

    async def drop_database(self) -> None:
        """Drop the whole database (tests and benchmarks only)."""
        await self._call("drop database", lambda: self._client.drop_database(self.database_name))

    # -- sessions ----------------------------------------------------------------------

    async def create_session(self, document: dict[str, Any]) -> None:
        """Insert a session document; a retry (same ``_id``) is a no-op, the first one wins."""
        doc = _new_session_document(document)
        await self._call("create session", lambda: self._insert_one_idempotent(self._sessions, doc))

    async def update_session(self, session_id: SessionId, fields: dict[str, Any]) -> None:
        """``$set`` fields (store-managed fields such as ``checkpoints`` are ignored)."""
        fields = _settable(fields)
        if fields:
            await self._call(
                "update session",
                lambda: self._sessions.update_one({"_id": session_id}, {"$set": fields}),
            )

    async def get_session(self, session_id: SessionId) -> dict[str, Any] | None:
        """The session document, or None."""
        doc = await self._call("get session", lambda: self._sessions.find_one({"_id": session_id}))
        return _utc(doc) if doc is not None else None

    async def list_sessions(
        self,
        *,
        statuses: list[str] | None = None,
        manuscript_id: ManuscriptId | None = None,
        limit: int = 1000,
    ) -> list[dict[str, Any]]:
        """Session documents, newest (``created_at``) first, optionally filtered."""
        query: dict[str, Any] = {}
        if statuses is not None:
            query["status"] = {"$in": [str(s) for s in statuses]}
        if manuscript_id is not None:
            query["manuscript_id"] = manuscript_id
        return await self._find(self._sessions, "list sessions", query, _NEWEST_FIRST, limit)

    async def count_sessions(self, statuses: list[str]) -> dict[str, int]:
        """Counts per status, by the server: /metrics reads no session document."""
        counts = {}
        for status in statuses:
            query = {"status": str(status)}
            counts[str(status)] = int(
                await self._call("count sessions", partial(self._sessions.count_documents, query))
            )
        return counts

    async def get_resumable_sessions(self) -> list[dict[str, Any]]:
        """Sessions with ``can_resume`` true, newest first."""
        return await self._find(
            self._sessions, "list resumable sessions", {"can_resume": True}, _NEWEST_FIRST
        )

    async def get_session_for_resume(
        self, session_id: SessionId
    ) -> tuple[dict[str, Any], list[Checkpoint]] | None:
        """The session document plus all its checkpoints in sequence order, or None."""
        session = await self.get_session(session_id)
        if session is None:
            return None
        return session, await self.list_checkpoints(session_id)

    async def get_sessions_for_resume(
        self, session_ids: list[str], documents: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, tuple[dict[str, Any], list[Checkpoint]]]:
        """:meth:`get_session_for_resume` of many sessions, two queries per 32 of them
        (one: the checkpoints, when ``documents`` has the session documents)."""
        found: dict[str, tuple[dict[str, Any], list[Checkpoint]]] = {}
        for chunk in chunks(list(dict.fromkeys(session_ids))):
            if documents is None:
                chunk_documents = await self._find(
                    self._sessions, "get sessions", {"_id": {"$in": chunk}}, [("_id", ASCENDING)]
                )
            else:
                chunk_documents = [documents[sid] for sid in chunk if sid in documents]
            if not chunk_documents:
                continue
            docs = await self._find(
                self._checkpoints,
                "list checkpoints",
                {"session_id": {"$in": [d["_id"] for d in chunk_documents]}},
                [("session_id", ASCENDING), ("sequence_number", ASCENDING)],
            )
            by_session: dict[str, list[Checkpoint]] = {}
            for doc in docs:
                by_session.setdefault(doc["session_id"], []).append(Checkpoint.from_document(doc))
            for document in chunk_documents:
                found[document["_id"]] = (document, by_session.get(document["_id"], []))
        return found

    async def delete_session(self, session_id: SessionId) -> None:
        """Delete checkpoints, logs and images, then the session document itself (last, so
        an interrupted delete still lists the session and can simply be repeated)."""
        for coll in (self._checkpoints, self._logs, self._images):
            await self._call(
                "delete session records",
                partial(coll.delete_many, {"session_id": session_id}),
            )
        await self._call("delete session", lambda: self._sessions.delete_one({"_id": session_id}))

    # -- leases (storage.leases) ---------------------------------------------------------

    async def acquire_leases(
        self,
        session_ids: list[str],
        owner: str,
        ttl_seconds: float,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> LeaseOutcome:
        """Take the leases of ``session_ids`` that are free, ours, expired or dead-owned.

        Per 32 sessions: at most two ``update_many`` that raise the epoch, each filtered on
        the holder it saw (an owner we may replace, or an expired ``lease_until``), so of
        two instances racing for a session exactly one matches; then one read tells which
        we got. ``known`` passes session documents already read (e.g. by recovery).
        """
        outcome = LeaseOutcome(granted={}, refused={}, missing=[])
        for chunk in chunks(list(dict.fromkeys(session_ids))):
            now = utcnow()
            if known is not None and all(sid in known for sid in chunk):
                docs = {sid: known[sid] for sid in chunk}
            else:
                docs = await self._lease_documents(chunk)
            replaceable: set[Any] = {None, "", owner}
            by_owner: list[str] = []
            expired: list[str] = []
            before: dict[str, int] = {}
            for sid in chunk:
                doc = docs.get(sid)
                if doc is None:
                    outcome.missing.append(sid)
                elif not takeable(doc, owner, now):
                    outcome.refused[sid] = _holder(doc)
                else:
                    before[sid] = int(doc.get("epoch") or 0)
                    holder = doc.get("owner")
                    if holder in replaceable or is_dead_local_owner(str(holder)):
                        replaceable.add(holder)
                        by_owner.append(sid)
                    else:
                        expired.append(sid)
            take = {
                "$set": {"owner": owner, "lease_until": lease_deadline(ttl_seconds, now)},
                "$inc": {"epoch": 1},
            }
            for ids, guard in (
                (by_owner, {"owner": {"$in": sorted(replaceable, key=str)}}),
                (expired, {"lease_until": {"$lt": now}}),
            ):
                if ids:
                    await self._call(
                        "acquire leases",
                        partial(self._sessions.update_many, {"_id": {"$in": ids}, **guard}, take),
                    )
            if not before:
                continue
            after = await self._lease_documents(list(before))
            for sid, epoch in before.items():
                doc = after.get(sid) or {}
                if doc.get("owner") == owner and int(doc.get("epoch") or 0) > epoch:
                    outcome.granted[sid] = int(doc["epoch"])
                else:  # another instance won the race
                    outcome.refused[sid] = _holder(doc, sid)
        return outcome

    async def renew_leases(
        self, epochs: dict[str, int], owner: str, ttl_seconds: float
    ) -> set[str]:
        """Extend our leases; returns the sessions whose lease we no longer hold."""
        lost: set[str] = set()
        for chunk in chunks(list(epochs)):
            until = lease_deadline(ttl_seconds)
            await self._call(
                "renew leases",
                partial(
                    self._sessions.update_many,
                    {"_id": {"$in": chunk}, "owner": owner},
                    {"$set": {"lease_until": until}},
                ),
            )
            lost |= await self._lost_leases({sid: epochs[sid] for sid in chunk}, owner)
        return lost

    async def check_leases(self, epochs: dict[str, int], owner: str) -> set[str]:
        """The sessions of ``epochs`` whose lease (owner and epoch) is no longer ours."""
        lost: set[str] = set()
        for chunk in chunks(list(epochs)):
            lost |= await self._lost_leases({sid: epochs[sid] for sid in chunk}, owner)
        return lost

    async def _lost_leases(self, epochs: dict[str, int], owner: str) -> set[str]:
        docs = await self._lease_documents(list(epochs))
        return {
            sid
            for sid, epoch in epochs.items()
            if sid in docs and (docs[sid].get("owner") != owner or docs[sid].get("epoch") != epoch)
        }

    async def _lease_documents(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        docs = await self._find(
            self._sessions,
            "read leases",
            {"_id": {"$in": ids}},
            [("_id", ASCENDING)],
            projection={"owner": 1, "lease_until": 1, "epoch": 1},
        )
        return {doc["_id"]: doc for doc in docs}

    # -- checkpoints, logs, images -----------------------------------------------------

    async def write_batch(self, batch: PersistBatch, embedded_keep: int) -> set[str]:
        """One group commit; every part is idempotent, so the whole batch may be retried.

        Returns the sessions whose checkpoints were refused because a newer lease epoch
        already wrote them (the writer was fenced; see storage.leases).

        Order: image records and logs, then checkpoints, then session documents, so that
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
            documents = [_new_session_document(d) for d in batch.new_sessions]
            coll = self._sessions if journaled == "sessions" else self._batch_sessions
            await self._call(
                "create sessions", lambda: self._insert_many_idempotent(coll, documents)
            )
        # Image records and logs name nothing stored after them: both at once (one round
        # trip saved per batch), then the checkpoints naming them.
        last = journaled == "records"
        outcomes = await asyncio.gather(
            self._insert_all(
                self._images if last else self._batch_images, "store images", batch.images
            ),
            self._insert_all(self._logs if last else self._batch_logs, "store logs", batch.logs),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
        fenced = await self._insert_checkpoints(
            batch.checkpoints,
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

    async def list_checkpoints(self, session_id: SessionId, after: int = 0) -> list[Checkpoint]:
        """Checkpoints with sequence number greater than ``after``, in order."""
        docs = await self._find(
            self._checkpoints,
            "list checkpoints",
            {"session_id": session_id, "sequence_number": {"$gt": after}},
            [("sequence_number", ASCENDING)],
        )
        return [Checkpoint.from_document(doc) for doc in docs]

    async def add_images(self, images: list[ImageRecord]) -> None:
        """Store image records (a retried record is a no-op)."""
        await self._insert_all(self._images, "store images", images)

    async def list_images(self, session_id: SessionId) -> list[ImageRecord]:
        """Image records in generation order."""
        docs = await self._find(
            self._images,
            "list images",
            {"session_id": session_id},
            [("generation_order", ASCENDING), ("_id", ASCENDING)],
        )
        return [ImageRecord.from_document(doc) for doc in docs]

    async def log_events(self, entries: list[LogEntry]) -> None:
        """Store log/event entries (a retried entry is a no-op)."""
        await self._insert_all(self._logs, "store logs", entries)

    async def list_logs(
        self, session_id: SessionId, after_event_seq: int = 0, limit: int = 100
    ) -> list[LogEntry]:
        """Up to ``limit`` entries with event_seq greater than ``after_event_seq``, in order."""
        docs = await self._find(
            self._logs,
            "list logs",
            {"session_id": session_id, "event_seq": {"$gt": after_event_seq}},
            [("event_seq", ASCENDING)],
            limit,
        )
        return [LogEntry.from_document(doc) for doc in docs]

    async def last_event_seqs(self, session_ids: list[str]) -> dict[str, int]:
        """The highest stored ``event_seq`` of each session that has log entries.

        One query per 32 sessions, only the two fields read. Unpatched SecantusDB tests
        every entry against the whole ``$in`` list (8 ids per query was cheapest then);
        storage/secantus_server.py makes that a set lookup, and with 32 ids per query
        these reads of recovering 1,000 sessions took 1.16 s in all, against 2.05 s with 8
        (bench/restart_recovery.py).
        """

        async def read(ids: list[str]) -> list[dict[str, Any]]:
            projection = {"_id": 0, "session_id": 1, "event_seq": 1}
            return await self._logs.find({"session_id": {"$in": ids}}, projection).to_list(None)

        last: dict[str, int] = {}
        for chunk in chunks(list(dict.fromkeys(session_ids)), _EVENT_SEQ_CHUNK):
            docs = await self._call("last event numbers", partial(read, chunk))
            for doc in docs:
                sid, seq = doc["session_id"], int(doc["event_seq"])
                if seq > last.get(sid, 0):
                    last[sid] = seq
        return last

    async def prune_logs(self, session_id: SessionId, keep: int) -> None:
        """Delete all but the newest ``keep`` entries (by event_seq) of a session."""
        query: dict[str, Any] = {"session_id": session_id}
        if keep > 0:
            # The newest entry that has to go: everything at or below it goes with it.
            cutoff = await self._call(
                "find log cutoff",
                lambda: (
                    self._logs.find(query, {"event_seq": 1})
                    .sort([("event_seq", DESCENDING)])
                    .skip(keep)
                    .limit(1)
                    .to_list(None)
                ),
            )
            if not cutoff:
                return
            query = {**query, "event_seq": {"$lte": cutoff[0]["event_seq"]}}
        await self._call("prune logs", lambda: self._logs.delete_many(query))

    # -- manuscripts -------------------------------------------------------------------

    async def create_manuscript(self, document: dict[str, Any]) -> None:
        """Insert a manuscript with its chapters; a retry (same ``_id``) is a no-op."""
        doc = dict(document)
        doc.setdefault("created_at", utcnow())
        await self._call(
            "create manuscript", lambda: self._insert_one_idempotent(self._manuscripts, doc)
        )

    async def get_manuscript(self, manuscript_id: ManuscriptId) -> dict[str, Any] | None:
        """The manuscript with chapters, or None."""
        doc = await self._call(
            "get manuscript", lambda: self._manuscripts.find_one({"_id": manuscript_id})
        )
        return _utc(doc) if doc is not None else None

    async def list_manuscripts(self, limit: int = 1000) -> list[dict[str, Any]]:
        """Manuscripts newest first; chapters keep their title and number, not ``content``."""
        return await self._find(
            self._manuscripts,
            "list manuscripts",
            {},
            _NEWEST_FIRST,
            limit,
            projection={"chapters.content": 0},
        )

    async def delete_manuscript(self, manuscript_id: ManuscriptId) -> bool:
        """Delete; True if it existed."""
        result = await self._call(
            "delete manuscript", lambda: self._manuscripts.delete_one({"_id": manuscript_id})
        )
        return bool(result.deleted_count)

    # -- helpers -----------------------------------------------------------------------

    async def _call(self, what: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run ``operation``, retrying connection errors; wrap driver errors in ours."""
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                async with self._gate:
                    return await operation()
            except ConnectionFailure as exc:
                if attempt == self._attempts:
                    raise DatabaseUnavailableError(
                        f"database unavailable ({what}): {exc}",
                        details={"operation": what, "attempts": attempt},
                    ) from exc
                logger.warning("%s: %s; retry %d in %.0f ms", what, exc, attempt, delay * 1000)
                await asyncio.sleep(delay)
                delay *= 2
            except PyMongoError as exc:
                raise StorageError(f"{what} failed: {exc}", details={"operation": what}) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _find(
        self,
        coll: Any,
        what: str,
        query: dict[str, Any],
        sort: list[tuple[str, int]],
        limit: int = 0,
        projection: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        # .limit() rather than to_list(n): mongomock ignores n (FINDINGS).
        docs = await self._call(
            what,
            lambda: coll.find(query, projection).sort(sort).limit(max(0, limit)).to_list(None),
        )
        return [_utc(doc) for doc in docs]

    async def _insert_all(
        self, coll: Any, what: str, records: Iterable[Checkpoint | LogEntry | ImageRecord]
    ) -> None:
        docs = [record.to_document() for record in records]
        if docs:
            await self._call(what, lambda: self._insert_many_idempotent(coll, docs))

    async def _insert_checkpoints(self, checkpoints: list[Checkpoint], coll: Any) -> set[str]:
        """Insert checkpoints; settle the ones already stored by their lease epoch.

        Same epoch: a retry, nothing to do. Older stored epoch: a fenced writer's
        leftover at a sequence the new owner has now reached, replaced by ours. Newer
        stored epoch: we are the fenced writer; our checkpoint is dropped and its
        session returned.
        """
        if not checkpoints:
            return set()
        docs = [cp.to_document() for cp in checkpoints]
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

    @staticmethod
    async def _insert_many_idempotent(coll: Any, docs: list[dict[str, Any]]) -> list[int]:
        """Insert, ignoring duplicate keys; returns the indexes of the duplicates."""
        try:
            # Copies: the drivers may add fields to the documents they are given.
            await coll.insert_many([dict(doc) for doc in docs], ordered=False)
        except BulkWriteError as exc:
            details = exc.details or {}
            errors = details.get("writeErrors") or []
            if details.get("writeConcernErrors") or not errors:
                raise
            if any(error.get("code") != DUPLICATE_KEY for error in errors):
                raise
            logger.debug("%d of %d documents were already stored", len(errors), len(docs))
            return [int(error.get("index", -1)) for error in errors if "index" in error]
        return []

    @staticmethod
    async def _insert_one_idempotent(coll: Any, doc: dict[str, Any]) -> None:
        try:
            await coll.insert_one(dict(doc))
        except DuplicateKeyError:
            logger.debug("document %s was already stored", doc.get("_id"))

    async def _update_sessions(self, batch: PersistBatch, embedded_keep: int, coll: Any) -> None:
        by_session: dict[str, list[Checkpoint]] = {}
        summarised = (
            batch.checkpoints if batch.summary_checkpoints is None else batch.summary_checkpoints
        )
        for checkpoint in summarised:
            by_session.setdefault(checkpoint.session_id, []).append(checkpoint)
        fields = {sid: _settable(values) for sid, values in batch.session_updates.items()}
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


def _new_session_document(document: dict[str, Any]) -> dict[str, Any]:
    doc = dict(document)
    doc.setdefault("created_at", utcnow())
    doc.setdefault("last_sequence_number", 0)
    doc.setdefault("checkpoints", [])
    return doc


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


def _holder(doc: dict[str, Any], session_id: str = "") -> LeaseHolder:
    until = _utc(doc.get("lease_until"))
    return LeaseHolder(
        session_id=str(doc.get("_id", session_id)),
        owner=str(doc.get("owner") or "unknown"),
        lease_until=until if isinstance(until, datetime) else None,
    )


def _settable(fields: dict[str, Any]) -> dict[str, Any]:
    dropped = MANAGED_SESSION_FIELDS.intersection(fields)
    if dropped:
        logger.warning("ignoring store-managed session fields in update: %s", sorted(dropped))
    return {key: value for key, value in fields.items() if key not in MANAGED_SESSION_FIELDS}


def _utc(value: Any) -> Any:
    """Datetimes in a document as tz-aware UTC (drivers return naive UTC by default)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, dict):
        return {key: _utc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_utc(item) for item in value]
    return value
