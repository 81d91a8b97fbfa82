"""The database client under the MongoDB store: collections, retries, shared helpers.

The drivers are PyMongo's ``AsyncMongoClient`` (default), Motor and mongomock-motor (unit
tests). The store uses only the API all three share: no ``aggregate()``, ``watch()``,
``with_options()`` or transactions, ``cursor.limit(n)`` instead of ``to_list(n)``
(mongomock ignores ``n``), and ``close()`` awaited only when it returns an awaitable.

Transient connection errors are retried with a short backoff and then surface as
DatabaseUnavailableError; any other driver error surfaces as StorageError.

The store itself is assembled in ``storage.mongo`` from this base, the batch writes
(``storage.mongo_batches``) and the leases (``storage.mongo_leases``).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from pymongo import ASCENDING, DESCENDING, WriteConcern
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, PyMongoError

from domain import utcnow
from errors import DatabaseUnavailableError, StorageError
from storage.records import Checkpoint, ImageRecord, LogEntry

logger = logging.getLogger(__name__)

T = TypeVar("T")

DRIVERS = ("pymongo", "motor", "mongomock")
DUPLICATE_KEY = 11000
MANAGED_SESSION_FIELDS = frozenset({"_id", "checkpoints", "last_sequence_number", "epoch"})
"""Session fields only the store writes; they are dropped from caller ``$set`` updates."""
UNJOURNALED = WriteConcern(w=1, j=False)
"""The write concern of a batch's writes before its journaled mark (see the module doc)."""
COMMIT_MARKS = "commit_marks"
"""Collection of the one document whose journaled ``$inc`` ends every batch."""

INDEXES: list[tuple[str, str, tuple[str, ...], bool]] = [
    ("sessions", "status_can_resume", ("status", "can_resume"), False),
    ("sessions", "manuscript_id", ("manuscript_id",), False),
    ("sessions", "external_session_id", ("external_session_id",), False),
    ("checkpoints", "session_sequence_unique", ("session_id", "sequence_number"), True),
    ("logs", "session_event_seq", ("session_id", "event_seq"), False),
    ("images", "session_generation_order", ("session_id", "generation_order"), False),
]
"""(collection, index name, ascending fields, unique) of every index we create."""

NEWEST_FIRST = [("created_at", DESCENDING), ("_id", DESCENDING)]


class MongoDatabase:
    """The collections of one MongoDB database and the one way to call the driver.

    Args:
        client: an AsyncMongoClient, AsyncIOMotorClient or AsyncMongoMockClient (owned: closed
            by :meth:`close`).
        database: database name.
        retry_attempts: attempts per operation on connection errors; the worst-case stall
            before DatabaseUnavailableError is about ``retry_attempts`` x the client's
            server selection timeout.
        retry_backoff_s: first pause between attempts (doubles each time).
        max_concurrency: operations in flight at once (PyMongo's async client starves
            tasks beyond its pool of 100 connections).
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
        unjournaled = partial(self._db.get_collection, write_concern=UNJOURNALED)
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
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        # .limit() rather than to_list(n): mongomock ignores n.
        docs = await self._call(
            what,
            lambda: (
                coll.find(query, projection)
                .sort(sort)
                .skip(max(0, offset))
                .limit(max(0, limit))
                .to_list(None)
            ),
        )
        return [as_utc(doc) for doc in docs]

    async def _insert_all(
        self, coll: Any, what: str, records: Iterable[Checkpoint | LogEntry | ImageRecord]
    ) -> None:
        docs = [record.to_document() for record in records]
        if docs:
            await self._call(what, lambda: self._insert_many_idempotent(coll, docs))

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


def new_session_document(document: dict[str, Any]) -> dict[str, Any]:
    doc = dict(document)
    doc.setdefault("created_at", utcnow())
    doc.setdefault("last_sequence_number", 0)
    doc.setdefault("checkpoints", [])
    return doc


def settable(fields: dict[str, Any]) -> dict[str, Any]:
    dropped = MANAGED_SESSION_FIELDS.intersection(fields)
    if dropped:
        logger.warning("ignoring store-managed session fields in update: %s", sorted(dropped))
    return {key: value for key, value in fields.items() if key not in MANAGED_SESSION_FIELDS}


def as_utc(value: Any) -> Any:
    """Datetimes in a document as tz-aware UTC (drivers return naive UTC by default)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
    if isinstance(value, dict):
        return {key: as_utc(item) for key, item in value.items()}
    if isinstance(value, list):
        return [as_utc(item) for item in value]
    return value
