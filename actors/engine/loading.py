"""Loading a session's state for resume, from the newest durable record of either store.

The database and the files are merged by the one rule of :mod:`storage.merge`; the state is
the fold of the resumable checkpoints (:meth:`SessionState.rebuild`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from actors.state import SessionState
from domain import SessionId
from domain import session_id as valid_session_id
from errors import DatabaseUnavailableError, NotFoundError
from storage.base import SessionStore
from storage.files import FileStore
from storage.merge import merge_checkpoints, newest_record, resumable_prefix
from storage.records import Checkpoint

logger = logging.getLogger(__name__)

Records = tuple[dict[str, Any] | None, list[Checkpoint]]
"""A session's document and checkpoints as one store (files or database) holds them."""
READ = object()
"""``load_state(database=READ)``: read the database record (the default)."""


class SessionLoading:
    """Rebuilding sessions from their records, mixed into the Engine."""

    store: SessionStore | None
    files: FileStore

    async def load_state(
        self,
        session_id: str,
        files: Records | None = None,
        database: Records | None | object = READ,
        stored_event_seq: int | None = None,
    ) -> SessionState:
        """Rebuild a session's state from the newest durable record (database or files).

        ``files`` and ``database`` pass the session's records when a scan or a batched
        query already read them (``database=None``: it has no database document);
        ``stored_event_seq`` the highest event number of its stored log entries, likewise.
        """
        state, _ = await self.load_state_and_lag(session_id, files, database, stored_event_seq)
        return state

    async def load_state_and_lag(
        self,
        session_id: str,
        files: Records | None,
        database: Records | None | object,
        stored_event_seq: int | None,
    ) -> tuple[SessionState, tuple[Checkpoint, ...]]:
        """:meth:`load_state`, with the checkpoints its stored summary lacks."""
        sid = valid_session_id(session_id)
        document, checkpoints = await self.load_records(sid, files, database)
        state = SessionState.rebuild(document, checkpoints)
        if stored_event_seq is None:
            stored_event_seq = await self._max_stored_event_seq(sid, state.last_event_seq)
        state.last_event_seq = max(state.last_event_seq, stored_event_seq)
        summarised = int(document.get("last_sequence_number") or 0)
        return state, tuple(cp for cp in checkpoints if cp.sequence_number > summarised)

    async def load_records(
        self,
        sid: SessionId,
        files: Records | None = None,
        database: Records | None | object = READ,
    ) -> tuple[dict[str, Any], list[Checkpoint]]:
        """The session's record and resumable checkpoints, both stores merged."""
        db_document: dict[str, Any] | None = None
        db_checkpoints: list[Checkpoint] = []
        if database is not READ:
            if database is not None:
                db_document, db_checkpoints = database  # type: ignore[misc]
        elif self.store is not None:
            try:
                found = await self.store.get_session_for_resume(sid)
            except DatabaseUnavailableError:
                found = None
                logger.warning("database unavailable; resuming %s from files", sid)
            if found is not None:
                db_document, db_checkpoints = found
        if files is None:
            files = await asyncio.to_thread(self._load_files, sid)
        file_document, file_checkpoints = files
        document = newest_record(db_document, file_document)
        if document is None:
            raise NotFoundError(f"session {sid} not found")
        merged = merge_checkpoints(db_checkpoints, file_checkpoints)
        return document, resumable_prefix(sid, merged.checkpoints)

    def _load_files(self, sid: SessionId) -> Records:
        document = self.files.load_session_file(sid)
        return document, self.files.load_checkpoints(sid)

    async def _max_stored_event_seq(self, sid: SessionId, after: int) -> int:
        if self.store is None:
            return 0
        try:
            entries = await self.store.list_logs(sid, after_event_seq=after, limit=100_000)
        except DatabaseUnavailableError:
            return 0
        return max((e.event_seq for e in entries), default=0)
