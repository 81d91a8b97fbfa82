"""The storage Protocols: what each consumer needs of the database, and ``SessionStore``,
all of them, which every implementation fulfils (and the contract tests check).

Each consumer names the smallest protocol it uses: the lease keeper ``LeaseStore``,
verify and the operator commands ``SessionRecords``, the single writer ``BatchStore``.
"""

from __future__ import annotations

from typing import Any, Protocol

from domain import ManuscriptId, SessionId
from storage.leases import LeaseOutcome
from storage.records import Checkpoint, ImageRecord, LogEntry, PersistBatch


class DatabaseHandle(Protocol):
    """Opening, probing and closing the database."""

    async def ensure_indexes(self) -> None:
        """Create the collections' indexes (idempotent; called at start-up)."""

    async def ping(self) -> None:
        """Raise DatabaseUnavailableError unless the database answers."""

    async def close(self) -> None:
        """Release the client."""


class BatchStore(DatabaseHandle, Protocol):
    """The single writer's group commit.

    Every write is idempotent: writing the same checkpoint, log entry or image record
    twice leaves one copy and raises nothing, so callers may retry freely.
    """

    async def write_batch(self, batch: PersistBatch, embedded_keep: int) -> set[str]:
        """One group commit: checkpoints, session updates, logs and images, idempotently.

        Returns the sessions whose writer was fenced (a newer lease epoch wrote first)."""


class LeaseStore(DatabaseHandle, Protocol):
    """Session ownership between instances (rules in ``storage.leases``)."""

    async def acquire_leases(
        self,
        session_ids: list[str],
        owner: str,
        ttl_seconds: float,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> LeaseOutcome:
        """Take the leases that are free, ours, expired or held by a dead local process."""

    async def renew_leases(
        self, epochs: dict[str, int], owner: str, ttl_seconds: float
    ) -> set[str]:
        """Extend our leases; returns the sessions whose lease we lost."""

    async def check_leases(self, epochs: dict[str, int], owner: str) -> set[str]:
        """The sessions whose lease (owner and epoch) is no longer ours."""


class SessionRecords(Protocol):
    """Sessions and their checkpoints, logs and image records."""

    async def create_session(self, document: dict[str, Any]) -> None:
        """Insert a ProcessingSession document (``_id`` = session id); a retry is a no-op."""

    async def update_session(self, session_id: SessionId, fields: dict[str, Any]) -> None:
        """``$set`` fields of a session document."""

    async def get_session(self, session_id: SessionId) -> dict[str, Any] | None:
        """The session document, or None."""

    async def list_sessions(
        self,
        *,
        statuses: list[str] | None = None,
        manuscript_id: ManuscriptId | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Session documents, newest first, optionally filtered; at most ``limit`` of
        them after skipping the first ``offset`` (in the database: a page reads only
        its own documents)."""

    async def count_sessions(
        self, *, statuses: list[str] | None = None, manuscript_id: ManuscriptId | None = None
    ) -> int:
        """How many session documents match these filters."""

    async def get_resumable_sessions(self) -> list[dict[str, Any]]:
        """Sessions with ``can_resume`` true, newest first."""

    async def get_session_for_resume(
        self, session_id: SessionId
    ) -> tuple[dict[str, Any], list[Checkpoint]] | None:
        """The session document plus all its checkpoints in sequence order (latest last)."""

    async def get_sessions_for_resume(
        self, session_ids: list[str], documents: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, tuple[dict[str, Any], list[Checkpoint]]]:
        """The same for many sessions at once (those without a document are left out);
        ``documents``: session documents the caller has just read (only the checkpoints
        are read then)."""

    async def delete_session(self, session_id: SessionId) -> None:
        """Delete a session with its checkpoints, logs and image records."""

    async def append_checkpoints(self, checkpoints: list[Checkpoint], embedded_keep: int) -> None:
        """Store checkpoints and embed their compact forms (at most ``embedded_keep`` kept)."""

    async def list_checkpoints(self, session_id: SessionId, after: int = 0) -> list[Checkpoint]:
        """Checkpoints with sequence number greater than ``after``, in order."""

    async def add_images(self, images: list[ImageRecord]) -> None:
        """Store image records."""

    async def list_images(self, session_id: SessionId) -> list[ImageRecord]:
        """Image records in generation order."""

    async def log_events(self, entries: list[LogEntry]) -> None:
        """Store log/event entries."""

    async def list_logs(
        self, session_id: SessionId, after_event_seq: int = 0, limit: int = 100
    ) -> list[LogEntry]:
        """Entries with event_seq greater than ``after_event_seq``, in order."""

    async def last_event_seqs(self, session_ids: list[str]) -> dict[str, int]:
        """The highest stored event_seq of each of ``session_ids`` that has entries."""

    async def prune_logs(self, session_id: SessionId, keep: int) -> None:
        """Delete all but the newest ``keep`` entries of a session."""


class ManuscriptRecords(Protocol):
    """Manuscripts with their chapters."""

    async def create_manuscript(self, document: dict[str, Any]) -> None:
        """Insert a manuscript document (``_id`` = manuscript id) with its chapters."""

    async def get_manuscript(self, manuscript_id: ManuscriptId) -> dict[str, Any] | None:
        """The manuscript with chapters, or None."""

    async def list_manuscripts(self, limit: int = 1000, offset: int = 0) -> list[dict[str, Any]]:
        """Manuscripts without chapter contents, newest first, the first ``offset`` skipped."""

    async def count_manuscripts(self) -> int:
        """How many manuscripts are stored."""

    async def delete_manuscript(self, manuscript_id: ManuscriptId) -> bool:
        """Delete; True if it existed."""


class SessionStore(BatchStore, LeaseStore, SessionRecords, ManuscriptRecords, Protocol):
    """Async database of sessions, checkpoints, logs, images and manuscripts: every
    protocol above (``storage.mongo.MongoStore`` over three drivers)."""
