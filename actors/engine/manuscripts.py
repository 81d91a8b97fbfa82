"""Manuscripts, as the Engine stores and loads them (database and file)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from domain import ManuscriptId, new_id
from domain import manuscript_id as valid_manuscript_id
from errors import DatabaseUnavailableError, NotFoundError
from pipeline.manuscripts import Manuscript
from storage.base import SessionStore
from storage.files import FileStore

logger = logging.getLogger(__name__)


class ManuscriptCommands:
    """Saving and loading manuscripts, mixed into the Engine."""

    store: SessionStore | None
    files: FileStore

    async def save_manuscript(
        self, manuscript: Manuscript, manuscript_id: str | None = None
    ) -> str:
        """Store a manuscript (database and file); returns its id.

        All or nothing: if the database refuses it (anything but being unreachable, when
        the file alone is the record), the file just written is removed again.
        """
        mid = valid_manuscript_id(manuscript_id) if manuscript_id else ManuscriptId(new_id())
        path = self._manuscript_path(mid)
        existed = await asyncio.to_thread(path.exists)
        document = await asyncio.to_thread(self._write_manuscript_file, mid, manuscript)
        if self.store is not None:
            try:
                if await self.store.get_manuscript(mid) is None:
                    await self.store.create_manuscript(document)
            except DatabaseUnavailableError:
                logger.warning("manuscript %s stored in files only (database unavailable)", mid)
            except Exception:
                if not existed:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                raise
        return mid

    def _write_manuscript_file(self, mid: ManuscriptId, manuscript: Manuscript) -> dict[str, Any]:
        document = {"_id": mid, "manuscript_id": mid, **manuscript.to_dict()}
        self.files.write_json(self._manuscript_path(mid), document)
        return document

    async def load_manuscript(self, manuscript_id: str) -> Manuscript:
        """A stored manuscript (database first, then its file)."""
        mid = valid_manuscript_id(manuscript_id)
        document: dict[str, Any] | None = None
        if self.store is not None:
            try:
                document = await self.store.get_manuscript(mid)
            except DatabaseUnavailableError:
                document = None
        if document is None:
            path = self._manuscript_path(mid)
            if path.exists():
                document = await asyncio.to_thread(self.files.load_json, path)
        if document is None:
            raise NotFoundError(f"manuscript {mid} not found")
        return Manuscript.from_dict(document)

    def _manuscript_path(self, mid: str) -> Path:
        return self.files.manuscript_path(mid)
