"""Writing and deleting the file store's files: atomically, durably, only inside the root.

Writes go through :mod:`storage.atomic` (unique temp file, fsync, rename, fsync of the
folder) and stamp ``format_version``; a document that would not load back is refused
before anything touches the disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from domain import FORMAT_VERSION
from errors import StorageError, ValidationError
from storage import atomic
from storage.atomic import FileProblemError
from storage.files.formats import check_bundle, check_session
from storage.files.layout import CHECKPOINT_NAME, FileLayout, list_dir, valid_id
from storage.records import Checkpoint

logger = logging.getLogger(__name__)


class FileWriter(FileLayout):
    """The writing half of the FileStore."""

    def write_json(self, path: Path, data: dict[str, Any], *, indent: int | None = None) -> None:
        """Atomically and durably replace ``path`` (inside the root) with ``data``.

        Raises:
            ValidationError: ``data`` cannot be encoded as JSON (nothing written).
            StorageError: the file system failed (the old file, if any, is intact).
        """
        payload = atomic.encode_json(data, indent=indent)
        try:
            self._prepare_folders([path])
            atomic.atomic_write(path, payload, fsync=self.fsync)
        except OSError as exc:
            raise StorageError(f"could not write {path}: {exc}") from exc

    def write_many(
        self, items: list[tuple[Path, dict[str, Any]]], placed: list[Path] | None = None
    ) -> None:
        """Write a batch of files as one group commit (see ``atomic.atomic_write_many``).

        Every document is encoded before anything touches the disk, so a bad document
        fails the batch without writing any of it. List checkpoint files before the
        session file that sums them up. ``placed``: files already in place whose folders
        are to be synced with the batch (images). Returns once every file is durable.

        Raises:
            ValidationError: a document cannot be encoded as JSON, or a placed file is
                outside the output folder (nothing written).
            StorageError: the file system failed; each final file is old or new, never
                torn, and a retry of the whole batch is safe.
        """
        encoded = [(path, atomic.encode_json(data)) for path, data in items]
        # A placed file's folder is what the batch syncs for it.
        outside = [p for p in placed or () if not self._inside_root(os.path.dirname(p))]
        if outside:
            raise ValidationError(f"placed files outside the output folder: {outside}")
        try:
            self._prepare_folders([path for path, _ in encoded])
            count = atomic.atomic_write_many(
                encoded, fsync=self.fsync, use_syncfs=self.use_syncfs, placed=placed or ()
            )
        except OSError as exc:
            raise StorageError(f"group commit of {len(encoded)} files failed: {exc}") from exc
        logger.debug("Group commit wrote %d files", count)

    def session_file_entry(
        self, session_id_: str, data: dict[str, Any]
    ) -> tuple[Path, dict[str, Any]]:
        """A checked ``(path, document)`` pair of a session file, for :meth:`write_many`.

        Raises:
            InvalidIdError: bad id. ValidationError: the document would not load back.
        """
        path = self.session_path(session_id_)
        doc = {**data, "session_id": data.get("session_id", session_id_)}
        try:
            check_session(doc, valid_id(session_id_), path)
        except FileProblemError as exc:
            raise ValidationError(f"invalid session file: {exc.problem.detail}") from exc
        return path, doc

    def checkpoint_entry(self, cp: Checkpoint) -> tuple[Path, dict[str, Any]]:
        """The ``(path, document)`` pair of a checkpoint file, for :meth:`write_many`."""
        return self.checkpoint_path(cp.session_id, cp.sequence_number), cp.to_json()

    def write_session_file(self, session_id_: str, data: dict[str, Any]) -> Path:
        """Write ``sessions/active_sessions/{session_id}.json``; return its path."""
        path, doc = self.session_file_entry(session_id_, data)
        self.write_json(path, doc, indent=2)
        return path

    def write_checkpoint(self, cp: Checkpoint) -> Path:
        """Write one checkpoint file (rewriting the same one is a no-op in effect)."""
        path, doc = self.checkpoint_entry(cp)
        self.write_json(path, doc)
        return path

    def write_recovery_bundle(self, session_id_: str, bundle: dict[str, Any]) -> Path:
        """Write a self-contained, human-readable recovery bundle; return its path.

        Raises:
            ValidationError: the bundle would not pass :func:`load_bundle`.
        """
        path = self.recovery_path(session_id_)
        sid = valid_id(session_id_)
        doc = {"format_version": FORMAT_VERSION, **bundle}
        doc["session_id"] = doc.get("session_id", sid)
        round_trip = json.loads(atomic.encode_json(doc))
        try:
            if round_trip["session_id"] != sid:
                raise FileProblemError(path, "corrupt", "session_id disagrees with the name")
            check_bundle(round_trip, path)
        except FileProblemError as exc:
            raise ValidationError(f"invalid recovery bundle: {exc.problem.detail}") from exc
        self.write_json(path, doc, indent=2)
        return path

    # -- deleting -------------------------------------------------------------------

    def delete_session_files(self, session_id_: str) -> int:
        """Remove a session's file, checkpoint files, bundle and images; return the count.

        Symlinks are removed, never followed; nothing outside the root is touched.
        """
        sid = valid_id(session_id_)
        folders = (self.sessions_dir, self.checkpoints_dir, self.recovery_dir, self.images_dir)
        outside = [folder for folder in folders if not self._inside_root(folder)]
        if outside:
            raise StorageError(f"refusing to delete through folders outside {self.root}: {outside}")
        victims = [self.session_path(sid), self.recovery_path(sid)]
        victims += [
            Path(e.path)
            for e in list_dir(self.checkpoints_dir)
            if (m := CHECKPOINT_NAME.match(e.name)) and m.group(1) == sid
        ]
        removed = 0
        for path in victims:
            try:
                path.unlink()
            except FileNotFoundError:
                continue  # deleted meanwhile: not ours to count
            except OSError as exc:
                raise StorageError(f"could not delete {path}: {exc}") from exc
            removed += 1
        images = self.images_dir / sid
        if images.is_symlink():
            images.unlink()
            removed += 1
        elif images.is_dir():
            removed += sum(len(files) for _, _, files in os.walk(images)) + 1
            shutil.rmtree(images)
        if self.fsync:
            for folder in folders:
                if folder.is_dir():
                    atomic.fsync_dir(folder)
        logger.info("Deleted %d files of session %s", removed, sid)
        return removed
