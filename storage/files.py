"""The JSON file store: session files, checkpoint files and recovery bundles on disk.

Layout under the output root (``illustrator_output/``)::

    sessions/active_sessions/{session_id}.json       the spec's session file format
    sessions/checkpoints/{session_id}_{seq:08d}.json one file per checkpoint
    sessions/recovery/{session_id}.json              self-contained recovery bundle
    generated_images/{session_id}/...                images (written by the pipeline)
    exports/                                         exported manuscripts

Writes are atomic and durable (:mod:`storage.atomic`) and stamp ``format_version``.
Loading never trusts a bad file and never raises for one: it skips it and reports a
:class:`FileProblem`, so start-up recovery always gets every valid record there is.
Ids are validated before any path is built from them. The PersistenceActor and
start-up recovery call this synchronously from worker threads.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from domain import (
    FORMAT_VERSION,
    SessionId,
    SessionStatus,
    isoformat,
    manuscript_id,
    session_id,
)
from errors import InvalidIdError, StorageError, ValidationError
from storage import atomic
from storage.atomic import MAX_FILE_BYTES, FileProblem, FileProblemError, ProblemKind, load_json
from storage.records import Checkpoint

__all__ = [
    "MAX_FILE_BYTES",
    "FileProblem",
    "FileProblemError",
    "FileStore",
    "ProblemKind",
    "ScanReport",
    "load_bundle",
    "load_json",
]

logger = logging.getLogger(__name__)

_SESSION_NAME = re.compile(r"^([0-9a-f-]{36})\.json$")
_CHECKPOINT_NAME = re.compile(r"^([0-9a-f-]{36})_([0-9]{1,18})\.json$")
_NONE = type(None)
_INT = (int,)
_TEXT = (str, datetime, _NONE)  # timestamps: ISO text on disk, datetimes accepted on write
_CHECKPOINT_TYPES: dict[str, tuple[type, ...]] = {
    "session_id": (str,),
    "sequence_number": _INT,
    "checkpoint_type": (str,),
    "step": (str,),
    "chapter_number": (int, _NONE),
    "next_action": (str,),
    "progress_percent": _INT,
    "checkpoint_data": (dict,),
    "processing_state": (dict,),
    "epoch": _INT,
    "created_at": _TEXT,
}
_CHECKPOINT_REQUIRED = ("session_id", "sequence_number", "checkpoint_type", "step")
_SESSION_TYPES: dict[str, tuple[type, ...]] = {
    "session_id": (str,),
    "status": (str,),
    "manuscript_id": (str, _NONE),
    "progress_percent": (int, _NONE),
    "current_chapter": (int, _NONE),
    "total_chapters": (int, _NONE),
    "style_config": (dict, _NONE),
    "max_emotional_moments": (int, _NONE),
    "last_completed_step": (str, _NONE),
    "last_completed_chapter": (int, _NONE),
    "last_sequence_number": (int, _NONE),
    "processed_chapters": (list,),
    "current_prompts": (list,),
    "generated_images": (list,),
    "emotional_moments": (list,),
    "total_images_generated": (int, _NONE),
    "started_at": _TEXT,
    "last_heartbeat": _TEXT,
}
_BUNDLE_TYPES: dict[str, tuple[type, ...]] = {
    "session_id": (str,),
    "session": (dict,),
    "checkpoints": (list,),
    "images": (list,),
    "logs": (list,),
    "manuscript": (dict, _NONE),
}
_BUNDLE_REQUIRED = ("format_version", "session_id", "session", "checkpoints")
_STATUSES = frozenset(status.value for status in SessionStatus)
_STATUS_FROM_CHECKPOINT = {
    "session_completed": SessionStatus.COMPLETED,
    "session_paused": SessionStatus.PAUSED,
    "error_occurred": SessionStatus.FAILED,
}
_CARRIED_FACTS = (
    "manuscript_id",
    "external_session_id",
    "style_config",
    "max_emotional_moments",
    "total_chapters",
    "processed_chapters",
    "total_images_generated",
    "last_event_seq",
)


@dataclass
class ScanReport:
    """Everything valid on disk, plus what was skipped."""

    sessions: dict[SessionId, dict[str, Any]] = field(default_factory=dict)
    """Valid session files by session id."""
    checkpoints: dict[SessionId, list[Checkpoint]] = field(default_factory=dict)
    """Valid checkpoints by session id, in sequence order."""
    problems: list[FileProblem] = field(default_factory=list)

    def session_ids(self) -> set[SessionId]:
        """Every session with a valid session file or at least one valid checkpoint."""
        return set(self.sessions) | set(self.checkpoints)


def load_bundle(path: Path) -> dict[str, Any]:
    """Read and check a recovery bundle (e.g. one an operator moved in to restore).

    A bundle is ``{"format_version", "session_id", "session": {...session file...},
    "checkpoints": [...checkpoint JSON...]}`` plus optional ``images``, ``logs`` and
    ``manuscript``.

    Raises:
        ValidationError: naming the file and what is wrong with it.
    """
    try:
        bundle = load_json(path)
        _check_bundle(bundle, path)
    except FileProblemError as exc:
        raise ValidationError(
            f"recovery bundle {path} is {exc.problem.kind}: {exc.problem.detail}",
            details={"path": str(path), "kind": exc.problem.kind},
        ) from exc
    return bundle


def _check_types(doc: dict[str, Any], types: dict[str, tuple[type, ...]], path: Path) -> None:
    for key, allowed in types.items():
        if key not in doc:
            continue
        value = doc[key]
        if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
            names = " or ".join("null" if t is _NONE else t.__name__ for t in allowed)
            raise FileProblemError(path, "corrupt", f"{key!r} must be {names}, got {value!r:.80}")


def _require(doc: dict[str, Any], keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if key not in doc]
    if missing:
        raise FileProblemError(path, "corrupt", f"missing {', '.join(missing)}")


def _check_session(doc: dict[str, Any], expected: str, path: Path) -> None:
    _require(doc, ("session_id", "status"), path)
    _check_types(doc, _SESSION_TYPES, path)
    if doc["session_id"] != expected:
        raise FileProblemError(path, "corrupt", f"session_id {doc['session_id']!r:.60} != name")
    if doc["status"] not in _STATUSES:
        raise FileProblemError(path, "corrupt", f"unknown status {doc['status']!r:.60}")


def _parse_checkpoint(doc: dict[str, Any], sid: str, seq: int | None, path: Path) -> Checkpoint:
    _require(doc, _CHECKPOINT_REQUIRED, path)
    _check_types(doc, _CHECKPOINT_TYPES, path)
    if doc["session_id"] != sid or (seq is not None and doc["sequence_number"] != seq):
        raise FileProblemError(path, "corrupt", "session_id/sequence_number disagree with name")
    if doc["sequence_number"] < 1:
        raise FileProblemError(path, "corrupt", "sequence_number must be positive")
    try:
        return Checkpoint.from_document(doc)
    except (KeyError, TypeError, ValueError) as exc:
        raise FileProblemError(path, "corrupt", f"not a checkpoint: {exc}") from exc


def _check_bundle(bundle: dict[str, Any], path: Path) -> None:
    _require(bundle, _BUNDLE_REQUIRED, path)
    _check_types(bundle, _BUNDLE_TYPES, path)
    try:
        sid = _valid_id(bundle["session_id"])
    except InvalidIdError as exc:
        raise FileProblemError(path, "corrupt", "session_id is not a UUID") from exc
    _check_session(bundle["session"], sid, path)
    for number, item in enumerate(bundle["checkpoints"], 1):
        if not isinstance(item, dict):
            raise FileProblemError(path, "corrupt", f"checkpoints[{number}] is not an object")
        _parse_checkpoint(item, sid, None, path)
    for key in ("images", "logs"):
        if not all(isinstance(item, dict) for item in bundle.get(key, [])):
            raise FileProblemError(path, "corrupt", f"{key} must be a list of objects")


def _report(problems: list[FileProblem], problem: FileProblem) -> None:
    logger.warning("Skipping %s file %s: %s", problem.kind, problem.path, problem.detail)
    problems.append(problem)


def _valid_id(value: object) -> SessionId:
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


def _canonical(text: str) -> SessionId | None:
    try:
        return _valid_id(text)
    except InvalidIdError:
        return None


def _list_dir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            kept = [entry for entry in entries if not atomic.is_temp_name(entry.name)]
    except FileNotFoundError:
        return []
    except OSError as exc:  # start-up must go on: report, and treat the folder as empty
        logger.warning("Cannot list %s: %s", folder, exc)
        return []
    return sorted(kept, key=lambda entry: entry.name)


class FileStore:
    """JSON files under one output root, written atomically, loaded defensively.

    Holds no mutable state besides its settings, so worker threads may share one
    (temp names are unique); there should still be one writer per file at a time
    (the PersistenceActor).

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
        return self.sessions_dir / f"{_valid_id(session_id_)}.json"

    def checkpoint_path(self, session_id_: str, seq: int) -> Path:
        """``sessions/checkpoints/{session_id}_{seq:08d}.json``."""
        sid = _valid_id(session_id_)
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
        return self.recovery_dir / f"{_valid_id(session_id_)}.json"

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

    # -- writing ----------------------------------------------------------------

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
            _check_session(doc, _valid_id(session_id_), path)
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
        sid = _valid_id(session_id_)
        doc = {"format_version": FORMAT_VERSION, **bundle}
        doc["session_id"] = doc.get("session_id", sid)
        round_trip = json.loads(atomic.encode_json(doc))
        try:
            if round_trip["session_id"] != sid:
                raise FileProblemError(path, "corrupt", "session_id disagrees with the name")
            _check_bundle(round_trip, path)
        except FileProblemError as exc:
            raise ValidationError(f"invalid recovery bundle: {exc.problem.detail}") from exc
        self.write_json(path, doc, indent=2)
        return path

    # -- loading (never raises for a bad file) -------------------------------------

    def load_json(self, path: Path) -> dict[str, Any]:
        """See the module function :func:`load_json`."""
        return load_json(path)

    def load_bundle(self, path: Path) -> dict[str, Any]:
        """See the module function :func:`load_bundle`."""
        return load_bundle(path)

    def _load_session(
        self, path: Path, sid: SessionId, problems: list[FileProblem]
    ) -> dict[str, Any] | None:
        try:
            doc = load_json(path)
            _check_session(doc, sid, path)
        except FileProblemError as exc:
            _report(problems, exc.problem)
            return None
        return doc

    def load_session_file(self, session_id_: str) -> dict[str, Any] | None:
        """The session file if it exists and is valid, else None (problems are logged)."""
        path = self.session_path(session_id_)
        if not path.exists() and not path.is_symlink():
            return None
        return self._load_session(path, _valid_id(session_id_), [])

    def _load_checkpoints(
        self, only: SessionId | None, problems: list[FileProblem]
    ) -> dict[SessionId, list[Checkpoint]]:
        found: list[tuple[SessionId, int, bool, Path]] = []
        for entry in _list_dir(self.checkpoints_dir):
            if only is not None and not entry.name.startswith(f"{only}_"):
                continue
            path = Path(entry.path)
            match = _CHECKPOINT_NAME.match(entry.name)
            sid = _canonical(match.group(1)) if match else None
            if match is None or sid is None or int(match.group(2)) < 1:
                _report(problems, FileProblem(path, "foreign", "not {session_id}_{seq}.json"))
            elif not entry.is_file(follow_symlinks=False):
                _report(problems, FileProblem(path, "foreign", "not a regular file"))
            else:
                found.append((sid, int(match.group(2)), len(match.group(2)) == 8, path))
        chosen: dict[SessionId, dict[int, Checkpoint]] = {}
        for sid, seq, _padded, path in sorted(found, key=lambda item: item[2]):
            try:  # unpadded names (other writers) first, so our padded file wins a tie
                chosen.setdefault(sid, {})[seq] = _parse_checkpoint(load_json(path), sid, seq, path)
            except FileProblemError as exc:
                _report(problems, exc.problem)
        return {sid: [by_seq[s] for s in sorted(by_seq)] for sid, by_seq in chosen.items()}

    def load_checkpoints(self, session_id_: str) -> list[Checkpoint]:
        """Valid checkpoints of one session in sequence order; bad files are skipped."""
        sid = _valid_id(session_id_)
        return self._load_checkpoints(sid, []).get(sid, [])

    def latest_checkpoint(self, session_id_: str) -> Checkpoint | None:
        """The valid checkpoint with the highest sequence number, or None."""
        checkpoints = self.load_checkpoints(session_id_)
        return checkpoints[-1] if checkpoints else None

    def scan(self) -> ScanReport:
        """Load every session file and checkpoint file; report (and log) bad ones."""
        report = ScanReport()
        for entry in _list_dir(self.sessions_dir):
            path = Path(entry.path)
            match = _SESSION_NAME.match(entry.name)
            sid = _canonical(match.group(1)) if match else None
            if sid is None:
                _report(report.problems, FileProblem(path, "foreign", "not {session_id}.json"))
            elif not entry.is_file(follow_symlinks=False):
                _report(report.problems, FileProblem(path, "foreign", "not a regular file"))
            elif (doc := self._load_session(path, sid, report.problems)) is not None:
                report.sessions[sid] = doc
        report.checkpoints = self._load_checkpoints(None, report.problems)
        logger.info(
            "Scanned %s: %d session files, %d sessions with checkpoints, %d problems",
            self.root,
            len(report.sessions),
            len(report.checkpoints),
            len(report.problems),
        )
        return report

    def load_session_state(self, session_id_: str) -> dict[str, Any] | None:
        """The newest valid record of a session, or None if there is none.

        The session file when valid (``"recovered_from": "session_file"``); when it is
        missing, bad, or older than the newest valid checkpoint (its
        ``last_sequence_number`` is lower), the facts that checkpoint knows are laid
        over it and ``"recovered_from"`` is ``"checkpoint"``.
        """
        doc = self.load_session_file(session_id_)
        checkpoints = self.load_checkpoints(session_id_)
        if not checkpoints:
            return None if doc is None else {**doc, "recovered_from": "session_file"}
        file_seq = doc.get("last_sequence_number") if doc is not None else None
        newest = checkpoints[-1].sequence_number
        if doc is not None and (not isinstance(file_seq, int) or file_seq >= newest):
            return {**doc, "recovered_from": "session_file"}
        return {**(doc or {}), **_facts_from_checkpoints(checkpoints, has_file=doc is not None)}

    # -- deleting -------------------------------------------------------------------

    def delete_session_files(self, session_id_: str) -> int:
        """Remove a session's file, checkpoint files, bundle and images; return the count.

        Symlinks are removed, never followed; nothing outside the root is touched.
        """
        sid = _valid_id(session_id_)
        folders = (self.sessions_dir, self.checkpoints_dir, self.recovery_dir, self.images_dir)
        outside = [folder for folder in folders if not self._inside_root(folder)]
        if outside:
            raise StorageError(f"refusing to delete through folders outside {self.root}: {outside}")
        victims = [self.session_path(sid), self.recovery_path(sid)]
        victims += [
            Path(e.path)
            for e in _list_dir(self.checkpoints_dir)
            if (m := _CHECKPOINT_NAME.match(e.name)) and m.group(1) == sid
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


def _facts_from_checkpoints(checkpoints: list[Checkpoint], *, has_file: bool) -> dict[str, Any]:
    newest = checkpoints[-1]
    facts: dict[str, Any] = {}
    for cp in checkpoints:  # oldest first: the newest value of each fact wins
        for source in (cp.checkpoint_data, cp.processing_state):
            facts.update({key: source[key] for key in _CARRIED_FACTS if key in source})
    status = _STATUS_FROM_CHECKPOINT.get(str(newest.checkpoint_type))
    if status is None and not has_file:
        status = SessionStatus.INTERRUPTED
    facts.update(
        {
            "session_id": newest.session_id,
            "progress_percent": newest.progress_percent,
            "current_chapter": newest.processing_state.get(
                "current_chapter", newest.chapter_number
            ),
            "last_completed_step": str(newest.checkpoint_type),
            "last_sequence_number": newest.sequence_number,
            "next_action": newest.next_action,
            "step": str(newest.step),
            "last_heartbeat": isoformat(newest.created_at),
            "recovered_from": "checkpoint",
        }
    )
    if status is not None:
        facts["status"] = str(status)
        facts["can_resume"] = status in (
            SessionStatus.PAUSED,
            SessionStatus.FAILED,
            SessionStatus.INTERRUPTED,
        )
    return facts
