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

from pymongo import ASCENDING

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
from storage.mongo_records import EMBEDDED, LogRecords
from storage.records import Checkpoint

__all__ = ["COMMIT_MARKS", "DRIVERS", "INDEXES", "MongoStore", "open_store"]

logger = logging.getLogger(__name__)


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


class MongoStore(BatchWrites, LogRecords, LeaseQueries):
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
            projection=EMBEDDED,
        )
        return [Checkpoint.from_document(doc) for doc in docs]

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
