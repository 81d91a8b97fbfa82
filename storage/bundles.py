"""Recovery bundles: one self-contained, human-readable JSON file per session.

A bundle holds the session (in the spec's session-file format), every checkpoint, the
logs, the image records and the manuscript, so an operator can read it, move it to
another machine and restore it into any database (even an empty one), from which the
session resumes. Written on error, on pause, at shutdown and on demand.

Restoring never rolls a record back: a bundle older than what the database or the files
hold (a higher checkpoint, a different checkpoint under the same number, another status
at the same checkpoint) is refused and nothing is changed, unless ``force`` says to
replace the session with the bundle. Then files and database both end up as the bundle.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain import (
    FORMAT_VERSION,
    LIVE_STATUSES,
    SessionId,
    isoformat,
    manuscript_id,
    session_id,
    utcnow,
)
from errors import ConflictError, ValidationError
from storage import atomic
from storage.base import SessionStore
from storage.files import FileStore
from storage.leases import takeable
from storage.reconcile import SessionDescriber
from storage.records import Checkpoint, ImageRecord, LogEntry, PersistBatch

logger = logging.getLogger(__name__)

BUNDLE_KIND = "illustrator-session-bundle"


def make_bundle(
    session_file: dict[str, Any],
    checkpoints: list[Checkpoint],
    *,
    logs: list[LogEntry] = (),  # type: ignore[assignment]
    images: list[ImageRecord] = (),  # type: ignore[assignment]
    manuscript: dict[str, Any] | None = None,
    reason: str = "on demand",
) -> dict[str, Any]:
    """Assemble a bundle (JSON-safe) from a session's records."""
    log_documents = []
    for entry in logs:
        document = entry.to_document()
        document["timestamp"] = isoformat(entry.timestamp)
        log_documents.append(document)
    return {
        "format_version": FORMAT_VERSION,
        "kind": BUNDLE_KIND,
        "reason": reason,
        "created_at": isoformat(utcnow()),
        "session_id": session_file["session_id"],
        "session": session_file,
        "checkpoints": [cp.to_json() for cp in checkpoints],
        "images": [image.to_json() for image in images],
        "logs": log_documents,
        "manuscript": _json_safe(manuscript) if manuscript is not None else None,
    }


@dataclass
class RestoreResult:
    """What a restore did."""

    session_id: SessionId
    replaced: list[str] = field(default_factory=list)
    """With ``force``: what of the newer record was removed."""


async def restore_bundle(
    bundle: dict[str, Any],
    store: SessionStore,
    files: FileStore,
    describe: SessionDescriber,
    *,
    embedded_keep: int = 16,
    force: bool = False,
) -> RestoreResult:
    """Import a (validated) bundle into the database and the files; idempotent.

    A session that was live when dumped is restored as ``interrupted`` so it can resume.

    Raises:
        ConflictError: the stored session is newer than the bundle or differs from it
            (and ``force`` is off), or another live instance runs it; nothing changed.
    """
    sid = session_id(bundle["session_id"])
    checkpoints = sorted(
        (Checkpoint.from_document(c) for c in bundle["checkpoints"]),
        key=lambda c: c.sequence_number,
    )
    if [c.sequence_number for c in checkpoints] != list(range(1, len(checkpoints) + 1)):
        raise ValidationError(
            "bundle checkpoints are not gap-free from 1", details={"field": "checkpoints"}
        )
    base = dict(bundle["session"])
    if base.get("status") in LIVE_STATUSES:
        base["status"] = "interrupted"
    fields, session_file, full_document = describe(base, checkpoints)

    result = RestoreResult(sid)
    newer = await _newer_than_bundle(store, files, sid, checkpoints, str(fields.get("status")))
    if newer:
        if not force:
            raise ConflictError(
                f"session {sid} is not restored: {'; '.join(newer)}. Restoring this bundle"
                f" (checkpoint {len(checkpoints)}, {fields.get('status')}) would roll it back;"
                " nothing was changed.",
                details={"session_id": sid, "newer": newer},
            )
        result.replaced = await _remove_newer(store, files, sid, len(checkpoints), bundle)

    manuscript = bundle.get("manuscript")
    if manuscript:
        mid = manuscript_id(manuscript.get("manuscript_id") or manuscript.get("_id"))
        document = {**manuscript, "_id": mid, "manuscript_id": mid}
        document.pop("format_version", None)
        if await store.get_manuscript(mid) is None:
            await store.create_manuscript(document)
        path = files.manuscript_path(mid)
        await asyncio.to_thread(files.write_json, path, document)

    if await store.get_session(sid) is None:
        await store.create_session(full_document)
    logs = [LogEntry.from_document(entry) for entry in bundle.get("logs") or []]
    images = [ImageRecord.from_document(image) for image in bundle.get("images") or []]
    await store.write_batch(
        PersistBatch(
            checkpoints=checkpoints, session_updates={sid: fields}, logs=logs, images=images
        ),
        embedded_keep,
    )
    items = [files.checkpoint_entry(cp) for cp in checkpoints]
    items.append(files.session_file_entry(sid, session_file))
    await asyncio.to_thread(files.write_many, items)
    logger.info("restored session %s (%d checkpoints) from a bundle", sid, len(checkpoints))
    return result


async def _newer_than_bundle(
    store: SessionStore,
    files: FileStore,
    sid: SessionId,
    checkpoints: list[Checkpoint],
    status: str,
) -> list[str]:
    """What the stored session holds that the bundle would roll back (empty: nothing)."""
    last = len(checkpoints)
    by_seq = {cp.sequence_number: cp.to_json() for cp in checkpoints}
    found = await store.get_session_for_resume(sid)
    file_document = await asyncio.to_thread(files.load_session_file, sid)
    file_checkpoints = await asyncio.to_thread(files.load_checkpoints, sid)
    sides = [("the files hold", file_document, file_checkpoints)]
    if found is not None:
        document, db_checkpoints = found
        if not takeable(document, "", utcnow()):
            raise ConflictError(
                f"session {sid} is running on instance {document.get('owner')}; pause it"
                " before restoring it (nothing was changed)",
                details={"session_id": sid, "owner": document.get("owner")},
            )
        sides.insert(0, ("the database holds", document, db_checkpoints))
    newer = []
    for holds, summary, stored in sides:
        record = "session document" if holds.startswith("the database") else "session file"
        summary_last = int((summary or {}).get("last_sequence_number") or 0)
        reached = max([summary_last, *(cp.sequence_number for cp in stored)])
        differing = [
            cp.sequence_number
            for cp in stored
            if cp.sequence_number in by_seq and cp.to_json() != by_seq[cp.sequence_number]
        ]
        if reached > last:
            newer.append(f"{holds} checkpoint {reached} ({_status(summary)})")
        elif differing:
            newer.append(f"{holds} other checkpoints under numbers {differing[:5]}")
        elif summary is not None and summary_last == last and summary.get("status") != status:
            newer.append(f"the {record} says {_status(summary)} at checkpoint {last}")
    return newer


def _status(summary: dict[str, Any] | None) -> str:
    return str(summary.get("status")) if summary is not None else "no session record"


_CHECKPOINT_FILE = re.compile(r"^[0-9a-f-]{36}_([0-9]{1,18})\.json$")


async def _remove_newer(
    store: SessionStore, files: FileStore, sid: SessionId, last: int, bundle: dict[str, Any]
) -> list[str]:
    """Clear what the bundle replaces: the session's database records, its checkpoint
    files beyond the bundle, and its images the bundle does not name. (A crash in
    between leaves the bundle itself: restoring it again finishes the job.)"""
    await store.delete_session(sid)
    removed = [f"database records of session {sid} (replaced by the bundle's)"]

    def clear_files() -> list[str]:
        lines = []
        for path in sorted(files.checkpoints_dir.glob(f"{sid}_*.json")):
            match = _CHECKPOINT_FILE.match(path.name)
            if match is not None and int(match.group(1)) > last:
                path.unlink()
                lines.append(f"checkpoint file {path.name}")
        named = {Path(str(image.get("file_path", ""))).name for image in bundle.get("images") or []}
        folder = files.images_dir / sid
        if folder.is_dir() and not folder.is_symlink():
            for path in sorted(folder.glob("*.png")):
                if path.name not in named:
                    path.unlink()
                    lines.append(f"image {sid}/{path.name} (not in the bundle)")
        if files.fsync:
            for synced in (files.checkpoints_dir, folder):
                if synced.is_dir():
                    atomic.fsync_dir(synced)
        return lines

    return removed + await asyncio.to_thread(clear_files)


def load_bundle_file(files: FileStore, path: Path) -> dict[str, Any]:
    """Read and validate a bundle (ValidationError naming what is wrong)."""
    bundle = files.load_bundle(path)
    if bundle.get("kind", BUNDLE_KIND) != BUNDLE_KIND:
        raise ValidationError(f"{path} is not an Illustrator session bundle")
    return bundle


def _json_safe(document: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    return {k: isoformat(v) if isinstance(v, datetime) else v for k, v in document.items()}
