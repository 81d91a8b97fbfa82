"""The MongoDB implementation of SessionStore: one async code path for three drivers.

``MongoStore`` is assembled from one module per concept: the client, its collections and
retries (``storage.mongo_client``), the batch writes of the single writer
(``storage.mongo_batches``), the leases (``storage.mongo_leases``), and here the queries
and single-record writes the API, recovery and operator commands use.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

from pymongo import ASCENDING, DESCENDING

from domain import ManuscriptId, SessionId, utcnow
from storage.leases import chunks
from storage.mongo_batches import BatchWrites
from storage.mongo_client import (
    COMMIT_MARKS,
    DRIVERS,
    INDEXES,
    NEWEST_FIRST,
    as_utc,
    new_session_document,
    settable,
)
from storage.mongo_leases import LeaseQueries
from storage.records import Checkpoint, ImageRecord, LogEntry

__all__ = ["COMMIT_MARKS", "DRIVERS", "INDEXES", "MongoStore", "open_store"]

logger = logging.getLogger(__name__)

_EVENT_SEQ_CHUNK = 32
"""Sessions per query of :meth:`MongoStore.last_event_seqs`."""


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
    ``retryWrites=false`` (its writes slow down otherwise); our own retries are
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


class MongoStore(BatchWrites, LeaseQueries):
    """SessionStore over a MongoDB database (collections ``sessions``, ``checkpoints``,
    ``logs``, ``images``, ``manuscripts``); its constructor is ``MongoDatabase``'s."""

    # -- sessions ----------------------------------------------------------------------

    async def create_session(self, document: dict[str, Any]) -> None:
        """Insert a session document; a retry (same ``_id``) is a no-op, the first one wins."""
        doc = new_session_document(document)
        await self._call("create session", lambda: self._insert_one_idempotent(self._sessions, doc))

    async def update_session(self, session_id: SessionId, fields: dict[str, Any]) -> None:
        """``$set`` fields (store-managed fields such as ``checkpoints`` are ignored)."""
        fields = settable(fields)
        if fields:
            await self._call(
                "update session",
                lambda: self._sessions.update_one({"_id": session_id}, {"$set": fields}),
            )

    async def get_session(self, session_id: SessionId) -> dict[str, Any] | None:
        """The session document, or None."""
        doc = await self._call("get session", lambda: self._sessions.find_one({"_id": session_id}))
        return as_utc(doc) if doc is not None else None

    async def list_sessions(
        self,
        *,
        statuses: list[str] | None = None,
        manuscript_id: ManuscriptId | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Session documents, newest (``created_at``) first, optionally filtered; the
        first ``offset`` matches are skipped by the database."""
        query = _session_query(statuses, manuscript_id)
        return await self._find(
            self._sessions, "list sessions", query, NEWEST_FIRST, limit, offset=offset
        )

    async def count_sessions(
        self, *, statuses: list[str] | None = None, manuscript_id: ManuscriptId | None = None
    ) -> int:
        """How many session documents ``list_sessions`` with these filters could return."""
        query = _session_query(statuses, manuscript_id)
        return int(
            await self._call("count sessions", lambda: self._sessions.count_documents(query))
        )

    async def get_resumable_sessions(self) -> list[dict[str, Any]]:
        """Sessions with ``can_resume`` true, newest first."""
        return await self._find(
            self._sessions, "list resumable sessions", {"can_resume": True}, NEWEST_FIRST
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

    # -- checkpoints, logs, images -----------------------------------------------------

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
        return as_utc(doc) if doc is not None else None

    async def list_manuscripts(self, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        """Manuscripts newest first, the first ``offset`` skipped; chapters keep their
        title and number, not ``content``."""
        return await self._find(
            self._manuscripts,
            "list manuscripts",
            {},
            NEWEST_FIRST,
            limit,
            projection={"chapters.content": 0},
            offset=offset,
        )

    async def count_manuscripts(self) -> int:
        """How many manuscripts are stored."""
        return int(
            await self._call("count manuscripts", lambda: self._manuscripts.count_documents({}))
        )

    async def delete_manuscript(self, manuscript_id: ManuscriptId) -> bool:
        """Delete; True if it existed."""
        result = await self._call(
            "delete manuscript", lambda: self._manuscripts.delete_one({"_id": manuscript_id})
        )
        return bool(result.deleted_count)


def _session_query(
    statuses: list[str] | None, manuscript_id: ManuscriptId | None
) -> dict[str, Any]:
    query: dict[str, Any] = {}
    if statuses is not None:
        query["status"] = {"$in": [str(s) for s in statuses]}
    if manuscript_id is not None:
        query["manuscript_id"] = manuscript_id
    return query
