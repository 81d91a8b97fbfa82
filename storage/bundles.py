"""Recovery bundles: one self-contained, human-readable JSON file per session.

A bundle holds the session (in the spec's session-file format), every checkpoint, the
logs, the image records and the manuscript, so an operator can read it, move it to
another machine and restore it into any database (even an empty one), from which the
session resumes. Written on error, on pause, at shutdown and on demand.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from domain import FORMAT_VERSION, SessionId, isoformat, manuscript_id, session_id, utcnow
from errors import ValidationError
from storage.base import SessionStore
from storage.files import FileStore
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


async def restore_bundle(
    bundle: dict[str, Any],
    store: SessionStore,
    files: FileStore,
    describe: SessionDescriber,
    *,
    embedded_keep: int = 16,
) -> SessionId:
    """Import a (validated) bundle into the database and the files; idempotent.

    A session that was live when dumped is restored as ``interrupted`` so it can resume.
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
    if base.get("status") in ("pending", "queued", "running"):
        base["status"] = "interrupted"
    fields, session_file, full_document = describe(base, checkpoints)

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
    return sid


def load_bundle_file(files: FileStore, path: Path) -> dict[str, Any]:
    """Read and validate a bundle (ValidationError naming what is wrong)."""
    bundle = files.load_bundle(path)
    if bundle.get("kind", BUNDLE_KIND) != BUNDLE_KIND:
        raise ValidationError(f"{path} is not an Illustrator session bundle")
    return bundle


def _json_safe(document: dict[str, Any]) -> dict[str, Any]:
    from datetime import datetime

    return {k: isoformat(v) if isinstance(v, datetime) else v for k, v in document.items()}
