"""What a valid file is: the fields and types of session files, checkpoints and bundles.

Each check raises :class:`FileProblemError` naming the file and what is wrong with it;
the loaders turn that into a reported, skipped file and the writers into a refusal.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from domain import SessionStatus
from errors import InvalidIdError, ValidationError
from storage.atomic import FileProblemError, load_json
from storage.files.layout import valid_id
from storage.records import Checkpoint

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
        check_bundle(bundle, path)
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


def check_session(doc: dict[str, Any], expected: str, path: Path) -> None:
    """Check a session file's document: its fields, its id (``expected``) and its status."""
    _require(doc, ("session_id", "status"), path)
    _check_types(doc, _SESSION_TYPES, path)
    if doc["session_id"] != expected:
        raise FileProblemError(path, "corrupt", f"session_id {doc['session_id']!r:.60} != name")
    if doc["status"] not in _STATUSES:
        raise FileProblemError(path, "corrupt", f"unknown status {doc['status']!r:.60}")


def parse_checkpoint(doc: dict[str, Any], sid: str, seq: int | None, path: Path) -> Checkpoint:
    """The checkpoint a file holds, checked against the session and sequence its name gives."""
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


def check_bundle(bundle: dict[str, Any], path: Path) -> None:
    """Check a recovery bundle: its own fields, its session file and every checkpoint in it."""
    _require(bundle, _BUNDLE_REQUIRED, path)
    _check_types(bundle, _BUNDLE_TYPES, path)
    try:
        sid = valid_id(bundle["session_id"])
    except InvalidIdError as exc:
        raise FileProblemError(path, "corrupt", "session_id is not a UUID") from exc
    check_session(bundle["session"], sid, path)
    for number, item in enumerate(bundle["checkpoints"], 1):
        if not isinstance(item, dict):
            raise FileProblemError(path, "corrupt", f"checkpoints[{number}] is not an object")
        parse_checkpoint(item, sid, None, path)
    for key in ("images", "logs"):
        if not all(isinstance(item, dict) for item in bundle.get(key, [])):
            raise FileProblemError(path, "corrupt", f"{key} must be a list of objects")
