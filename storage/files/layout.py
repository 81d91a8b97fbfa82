"""Where the file store's files live: the output root's folders and the path of each file.

Ids are validated before any path is built from them, and nothing is written or deleted
through a folder that resolves outside the root.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from domain import SessionId, manuscript_id, session_id
from errors import InvalidIdError, StorageError, ValidationError
from storage import atomic

logger = logging.getLogger(__name__)

SESSION_NAME = re.compile(r"^([0-9a-f-]{36})\.json$")
"""``{session_id}.json``: the name of a session file."""
CHECKPOINT_NAME = re.compile(r"^([0-9a-f-]{36})_([0-9]{1,18})\.json$")
"""``{session_id}_{seq}.json``: the name of a checkpoint file (ours pad ``seq`` to 8 digits)."""


def valid_id(value: object) -> SessionId:
    """The id itself if it is a canonical (lower-case) UUID; raise InvalidIdError otherwise.

    Stricter than ``domain.session_id``, which normalises upper case: one session must
    never have two spellings on disk.
    """
    sid = session_id(value)
    if sid != value:
        raise InvalidIdError(
            "session_id must be a lower-case UUID", details={"field": "session_id"}
        )
    return sid


def canonical(text: str) -> SessionId | None:
    """The session id a file name spells, or None if it is not a canonical UUID."""
    try:
        return valid_id(text)
    except InvalidIdError:
        return None


def list_dir(folder: Path) -> list[os.DirEntry[str]]:
    """The entries of ``folder`` by name, temp files left out; none if it cannot be listed."""
    try:
        with os.scandir(folder) as entries:
            kept = [entry for entry in entries if not atomic.is_temp_name(entry.name)]
    except FileNotFoundError:
        return []
    except OSError as exc:  # start-up must go on: report, and treat the folder as empty
        logger.warning("Cannot list %s: %s", folder, exc)
        return []
    return sorted(kept, key=lambda entry: entry.name)


class FileLayout:
    """The folders under one output root and the path of every file in them.

    Args:
        root: the output directory (``illustrator_output/``).
        fsync: make every write durable; turn off only for tests and benchmarks.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.use_syncfs = atomic.syncfs_available()
        """Group commits sync data with one syncfs(2) per filesystem (else per file)."""
        self.sessions_dir = self.root / "sessions" / "active_sessions"
        self.checkpoints_dir = self.root / "sessions" / "checkpoints"
        self.recovery_dir = self.root / "sessions" / "recovery"
        self.images_dir = self.root / "generated_images"
        self.exports_dir = self.root / "exports"
        self.manuscripts_dir = self.root / "manuscripts"
        self._inside: set[str] = set()
        """Folders found inside the root (symlinks resolved): every batch writes to the
        same few, and resolving them costs an lstat per path component."""

    def _folders(self) -> tuple[Path, ...]:
        return (
            self.sessions_dir,
            self.checkpoints_dir,
            self.recovery_dir,
            self.images_dir,
            self.exports_dir,
            self.manuscripts_dir,
        )

    def ensure_layout(self) -> None:
        """Create the output folders (durably) if missing."""
        for folder in self._folders():
            atomic.make_dirs(folder, fsync=self.fsync)
        logger.info("File store ready at %s (syncfs group commit: %s)", self.root, self.use_syncfs)

    def remove_stale_temp_files(self, *, min_age_seconds: float = 0.0) -> int:
        """Remove temp files left by writes that a crash interrupted; return how many.

        Call at start-up before any writer runs, or pass ``min_age_seconds`` to spare
        writes that may be in flight.
        """
        cutoff = time.time() - min_age_seconds if min_age_seconds > 0 else None
        removed = atomic.remove_temp_files(self._folders(), older_than=cutoff)
        if removed:
            logger.warning("Removed %d leftover temp files under %s", removed, self.root)
        return removed

    # -- paths (ids validated before any path is built) -------------------------

    def session_path(self, session_id_: str) -> Path:
        """``sessions/active_sessions/{session_id}.json``."""
        return self.sessions_dir / f"{valid_id(session_id_)}.json"

    def checkpoint_path(self, session_id_: str, seq: int) -> Path:
        """``sessions/checkpoints/{session_id}_{seq:08d}.json``."""
        sid = valid_id(session_id_)
        if type(seq) is not int or seq < 1:
            raise ValidationError(
                "sequence_number must be a positive integer", details={"field": "sequence_number"}
            )
        return self.checkpoints_dir / f"{sid}_{seq:08d}.json"

    def manuscript_path(self, manuscript_id_: str) -> Path:
        """``manuscripts/{manuscript_id}.json``."""
        return self.manuscripts_dir / f"{manuscript_id(manuscript_id_)}.json"

    def recovery_path(self, session_id_: str) -> Path:
        """``sessions/recovery/{session_id}.json``."""
        return self.recovery_dir / f"{valid_id(session_id_)}.json"

    def _inside_root(self, folder: str | Path) -> bool:
        """Whether ``folder``, symlinks resolved, lies inside the root (remembered if so)."""
        key = os.fspath(folder)
        if key in self._inside:
            return True
        if not Path(key).resolve().is_relative_to(self.root.resolve()):
            return False
        self._inside.add(key)
        return True

    def _prepare_folders(self, paths: list[Path]) -> None:
        for folder in dict.fromkeys(path.parent for path in paths):
            if not self._inside_root(folder):
                raise StorageError(f"refusing to write outside {self.root}: {folder}")
            atomic.make_dirs(folder, fsync=self.fsync)
