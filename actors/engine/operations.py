"""Operator commands of the Engine: recovery bundles (dump, restore) and verification."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from actors.state import SessionState
from config import Config
from domain import EventType, SessionId, SessionStatus
from domain import session_id as valid_session_id
from errors import ConflictError, DatabaseUnavailableError
from storage.base import SessionStore
from storage.bundles import RestoreResult, load_bundle_file, make_bundle, restore_bundle
from storage.files import FileStore
from storage.records import Checkpoint, ImageRecord
from storage.verify import VerifyReport, verify

logger = logging.getLogger(__name__)


class OperatorCommands:
    """Recovery bundles and verification, mixed into the Engine."""

    store: SessionStore | None
    files: FileStore
    output_dir: Path
    config: Config
    _bundle_tasks: set[asyncio.Task[Any]]

    if TYPE_CHECKING:  # SessionLoading

        async def load_records(self, sid: SessionId) -> tuple[dict[str, Any], list[Checkpoint]]: ...

    def _bundle_on_stop(self, entry: Any) -> None:
        """On pause or error (and so at shutdown), write the session's recovery bundle."""
        stopped = entry.type == EventType.ERROR or (
            entry.type == EventType.STATUS and entry.payload.get("status") == SessionStatus.PAUSED
        )
        if not stopped:
            return
        reason = "error" if entry.type == EventType.ERROR else "pause"
        task = asyncio.get_running_loop().create_task(
            self._write_bundle_quietly(entry.session_id, reason)
        )
        self._bundle_tasks.add(task)
        task.add_done_callback(self._bundle_tasks.discard)

    async def _write_bundle_quietly(self, session_id: str, reason: str) -> None:
        try:
            await self.dump_session(session_id, reason=reason)
        except Exception:  # noqa: BLE001 - a bundle is a convenience; the records stay durable
            logger.exception("could not write the recovery bundle of %s", session_id)

    async def dump_session(self, session_id: str, *, reason: str = "on demand") -> Path:
        """Write ``sessions/recovery/{id}.json`` from the newest records; return its path."""
        sid = valid_session_id(session_id)
        document, checkpoints = await self.load_records(sid)
        state = SessionState.rebuild(document, checkpoints)
        logs: list[Any] = []
        images: list[Any] = []
        manuscript: dict[str, Any] | None = None
        if self.store is not None:
            try:
                logs = await self.store.list_logs(sid, limit=1_000_000)
                images = await self.store.list_images(sid)
                manuscript = await self.store.get_manuscript(state.manuscript_id)
            except DatabaseUnavailableError:
                logger.warning("bundle of %s: database unavailable, logs left out", sid)
        if not images:
            images = [
                ImageRecord.from_document(cp.checkpoint_data["image"])
                for cp in checkpoints
                if "image" in cp.checkpoint_data
            ]
        if manuscript is None:
            path = self.files.manuscript_path(state.manuscript_id)
            if path.exists():
                manuscript = await asyncio.to_thread(self.files.load_json, path)
        bundle = make_bundle(
            state.session_file(),
            checkpoints,
            logs=logs,
            images=images,
            manuscript=manuscript,
            reason=reason,
        )
        return await asyncio.to_thread(self.files.write_recovery_bundle, sid, bundle)

    async def restore_bundle(self, path: Path, *, force: bool = False) -> str:
        """Import a bundle file into the database and the files; returns the session id.

        Raises:
            ConflictError: the stored session is newer than the bundle (unless ``force``
                replaces it) or is live somewhere; nothing changed.
        """
        return (await self.restore_bundle_file(path, force=force)).session_id

    async def restore_bundle_file(self, path: Path, *, force: bool = False) -> RestoreResult:
        """:meth:`restore_bundle`, with what a forced restore replaced."""
        if self.store is None:
            raise ConflictError("restoring needs a database")
        bundle = await asyncio.to_thread(load_bundle_file, self.files, path)
        if self.hub.snapshot(bundle["session_id"]) is not None:  # type: ignore[attr-defined]
            raise ConflictError(f"session {bundle['session_id']} is running here; pause it first")
        return await restore_bundle(
            bundle,
            self.store,
            self.files,
            lambda base, checkpoints: SessionState.rebuild(base, checkpoints).describe(),
            embedded_keep=self.config.persistence.embedded_checkpoints,
            force=force,
        )

    async def verify(self) -> VerifyReport:
        """Check every session (see storage.verify); reads only."""
        return await verify(
            self.store,
            self.files,
            self.output_dir,
            keep_logs=self.config.processing.max_logs_per_session,
        )
