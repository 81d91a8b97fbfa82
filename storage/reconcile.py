"""Start-up reconciliation of the JSON files with the database.

After an outage the files may be ahead of the database (checkpoints acknowledged on
fsync alone); after files were deleted the database may be ahead of the files. For every
session this brings the lagging side up to date. Checkpoints are immutable and keyed by
``(session_id, sequence_number)``, so "catching up" is copying what one side lacks; when
both sides hold a different record under the same sequence number, the side whose
session reaches the higher sequence number wins. Every decision is logged, and every
record written is listed with its direction (``ReconcileReport.healed``).

A file record the database can never store (a lone surrogate, a 64-bit overflow, a
document over 16 MB: storage.storable) is not copied: the session's database side is
left as it is, with a warning (``ReconcileReport.skipped``), and so is a session whose
stored values cannot even be folded into a state. Start-up survives any stored value.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain import SessionId, SessionStatus, utcnow
from errors import DatabaseUnavailableError
from storage.base import SessionStore
from storage.files import FileStore, ScanReport
from storage.leases import chunks, takeable
from storage.merge import MergedCheckpoints, merge_checkpoints, newest_record
from storage.reconcile_manuscripts import reconcile_manuscripts
from storage.reconcile_report import ReconcileReport, StartupReads
from storage.records import Checkpoint, ImageRecord, PersistBatch
from storage.storable import database_problem

__all__ = [
    "ReconcileReport",
    "SessionDescriber",
    "StartupReads",
    "reconcile",
    "reconcile_manuscripts",
    "reconcile_session",
    "try_reconcile",
]

logger = logging.getLogger(__name__)

SessionDescriber = Callable[
    [dict[str, Any], list[Checkpoint]], tuple[dict[str, Any], dict[str, Any], dict[str, Any]]
]
"""``(base document, checkpoints) -> (session $set fields, session file, full new document)``."""


@dataclass
class _Writes:
    """What leveling some sessions writes: one database batch, one group of files."""

    batch: PersistBatch = field(default_factory=PersistBatch)
    files: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)

    def add(self, batch: PersistBatch) -> None:
        self.batch.checkpoints += batch.checkpoints
        self.batch.session_updates.update(batch.session_updates)
        self.batch.images += batch.images
        self.batch.summary_checkpoints = [
            *(self.batch.summary_checkpoints or []),
            *(batch.summary_checkpoints or []),
        ]

    async def apply(self, store: SessionStore, files: FileStore, embedded_keep: int) -> None:
        if self.batch.session_updates:
            await store.write_batch(self.batch, embedded_keep)
        if self.files:
            await asyncio.to_thread(files.write_many, self.files)


async def reconcile(
    store: SessionStore,
    files: FileStore,
    describe: SessionDescriber,
    *,
    embedded_keep: int = 16,
    owner: str | None = None,
    scan: Awaitable[ScanReport] | None = None,
    level_live: bool = False,
) -> ReconcileReport:
    """Bring the files and the database level with each other (see module docstring).

    With ``owner`` (our instance id), sessions another live instance holds the lease of
    are left alone: their files and records are that instance's, in flux. ``scan``: the
    scan of the files, if the caller started it already (default: scanned here).
    ``level_live``: also bring the lagging summaries of live sessions level (an
    explicit repair; at start-up, recovery does it with the session's next write).
    """
    report = ReconcileReport()
    # The files are read on a worker thread while the database lists its sessions.
    scan_report, listed = await asyncio.gather(
        scan if scan is not None else asyncio.to_thread(files.scan),
        store.list_sessions(limit=1_000_000),
    )
    db_documents = {d["session_id"]: d for d in listed}
    session_ids = set(scan_report.sessions) | set(scan_report.checkpoints) | set(db_documents)
    now = utcnow()
    ours = []
    for sid in sorted(session_ids):
        document = db_documents.get(sid)
        if owner is None or document is None or takeable(document, owner, now):
            ours.append(sid)
        else:
            report.not_ours.append(
                f"session {sid}: run by instance {document.get('owner')}; left to it"
            )
    unchanged: dict[str, tuple[dict[str, Any], list[Checkpoint]]] = {}
    for chunk in chunks(ours):
        # The database's checkpoints of 32 sessions in one query (their documents were
        # just listed).
        stored = await store.get_sessions_for_resume(
            [sid for sid in chunk if sid in db_documents], documents=db_documents
        )
        writes = _Writes()  # one database batch and one file group per chunk
        for sid in chunk:
            key = SessionId(sid)
            report.sessions_checked += 1
            wrote = await _guarded(
                key,
                report,
                _reconcile_session(
                    store,
                    files,
                    describe,
                    key,
                    file_document=scan_report.sessions.get(key),
                    file_checkpoints=scan_report.checkpoints.get(key, []),
                    db_document=db_documents.get(sid),
                    db_checkpoints=stored[sid][1] if sid in stored else None,
                    report=report,
                    writes=writes,
                    level_live=level_live,
                ),
            )
            if not wrote and sid in stored:
                unchanged[sid] = stored[sid]
        await writes.apply(store, files, embedded_keep)
    report.reads = StartupReads(scan_report, unchanged)
    return report


async def reconcile_session(
    store: SessionStore,
    files: FileStore,
    describe: SessionDescriber,
    sid: SessionId,
    *,
    embedded_keep: int = 16,
) -> ReconcileReport:
    """Level one session (e.g. one taken over from a dead instance on a shared folder,
    whose last checkpoint files may not have reached the database)."""
    report = ReconcileReport(sessions_checked=1)
    writes = _Writes()
    file_document = await asyncio.to_thread(files.load_session_file, sid)
    file_checkpoints = await asyncio.to_thread(files.load_checkpoints, sid)
    db_document = await store.get_session(sid)
    await _guarded(
        sid,
        report,
        _reconcile_session(
            store,
            files,
            describe,
            sid,
            file_document=file_document,
            file_checkpoints=file_checkpoints,
            db_document=db_document,
            report=report,
            writes=writes,
        ),
    )
    await writes.apply(store, files, embedded_keep)
    return report


async def _guarded(sid: SessionId, report: ReconcileReport, leveling: Awaitable[bool]) -> bool:
    """Run one session's leveling; a stored value it cannot handle skips that session
    (with a warning) instead of failing the others. An unreachable database still
    stops reconciliation (start-up then goes on degraded)."""
    try:
        return await leveling
    except DatabaseUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - any stored value must not stop start-up
        report.skip("session %s left as it is: %s: %s", sid, type(exc).__name__, exc)
        return False


async def _reconcile_session(
    store: SessionStore,
    files: FileStore,
    describe: SessionDescriber,
    sid: SessionId,
    *,
    file_document: dict[str, Any] | None,
    file_checkpoints: list[Checkpoint],
    db_document: dict[str, Any] | None,
    report: ReconcileReport,
    writes: _Writes,
    db_checkpoints: list[Checkpoint] | None = None,
    level_live: bool = False,
) -> bool:
    """Decide how to level one session; its writes go into ``writes`` (the caller applies
    them), except a missing session document, which is created at once. Returns whether
    anything is written for it."""
    if db_checkpoints is None:
        db_checkpoints = await store.list_checkpoints(sid) if db_document is not None else []
    merged = _merge_reporting_conflicts(sid, db_checkpoints, file_checkpoints, report)
    ordered = merged.checkpoints
    base = newest_record(db_document, file_document)
    if base is None:
        # Only checkpoint files survive: rebuild the facts they carry.
        base = await asyncio.to_thread(files.load_session_state, sid)
        if base is None or "manuscript_id" not in base:
            report.decide(
                "session %s has checkpoints but no session record; left for an operator", sid
            )
            return False
    fields, session_file, full_document = describe(base, ordered)

    in_files = {cp.sequence_number for cp in file_checkpoints}
    in_db = {cp.sequence_number for cp in db_checkpoints}
    missing_in_db = [cp for cp in ordered if cp.sequence_number not in in_db]
    missing_in_files = [cp for cp in ordered if cp.sequence_number not in in_files]
    # Summaries (session document, session file) are written behind their checkpoints
    # (actors.persistence.summaries), so a session live when its instance died has them lagging.
    # recover() takes it over right after this and brings its summary up with the next
    # one written (actors.engine.recovery): a summary merely behind is left to that rather than
    # written twice, once here, for every such session at each start.
    left_to_recovery = (
        not level_live
        and _is_live(fields.get("status"))
        and db_document is not None
        and file_document is not None
        and not missing_in_db
        and not missing_in_files
    )
    newest = ordered[-1].sequence_number if ordered else 0
    leveled = _Leveling(sid, ordered, newest, merged.files_win, left_to_recovery)
    # File entries first: a session file that would not load back fails here, before
    # anything of this session is written.
    stale_file = file_document is None or (
        int(file_document.get("last_sequence_number") or 0) < newest and not left_to_recovery
    )
    items = [files.checkpoint_entry(cp) for cp in missing_in_files]
    if stale_file:
        items.append(files.session_file_entry(sid, session_file))
    wrote = await _level_database(
        store, leveled, db_document, missing_in_db, fields, full_document, report, writes
    )
    if items:
        writes.files += items
        _report_file_leveling(
            report, leveled, missing_in_files, session_file if stale_file else None
        )
    return wrote or bool(items)


def _merge_reporting_conflicts(
    sid: SessionId,
    db_checkpoints: list[Checkpoint],
    file_checkpoints: list[Checkpoint],
    report: ReconcileReport,
) -> MergedCheckpoints:
    """Both sides' checkpoints merged (storage.merge); each checkpoint they disagree on is
    reported with the side that wins it."""
    merged = merge_checkpoints(db_checkpoints, file_checkpoints)
    by_seq = {cp.sequence_number: cp for cp in file_checkpoints}
    for seq in merged.conflicts:
        side = "files" if merged.checkpoints[seq - 1] is by_seq.get(seq) else "database"
        text = (
            f"session {sid} checkpoint {seq} differs; the {side}' one wins "
            f"(newer lease epoch, or else the side reaching the higher sequence, {merged.newest})"
        )
        report.conflicts.append(text)
        report.decide("%s", text)
    return merged


def _report_file_leveling(
    report: ReconcileReport,
    leveled: _Leveling,
    missing_in_files: list[Checkpoint],
    rewritten_file: dict[str, Any] | None,
) -> None:
    """Count and report the files side of one session: checkpoint files copied from the
    database, and the session file when it is rewritten."""
    sid = leveled.sid
    report.checkpoints_to_files += len(missing_in_files)
    if rewritten_file is not None:
        report.session_files_rewritten += 1
    report.decide(
        "session %s: %d checkpoints copied from the database to the files%s",
        sid,
        len(missing_in_files),
        ", session file rewritten" if rewritten_file is not None else "",
    )
    if missing_in_files:
        report.heal(f"session {sid}: checkpoint files {_seqs(missing_in_files)}, database -> file")
    if rewritten_file is not None:
        report.heal(
            f"session {sid}: session file rewritten at checkpoint {leveled.newest}"
            f" (status {rewritten_file.get('status')}),"
            f" {'file checkpoints' if leveled.files_win else 'database'} -> file"
        )


@dataclass(frozen=True)
class _Leveling:
    """What one session's leveling decided before writing."""

    sid: SessionId
    ordered: list[Checkpoint]
    """Every checkpoint of the session, both sides merged, in order."""
    newest: int
    files_win: bool
    left_to_recovery: bool


async def _level_database(
    store: SessionStore,
    leveled: _Leveling,
    db_document: dict[str, Any] | None,
    missing_in_db: list[Checkpoint],
    fields: dict[str, Any],
    full_document: dict[str, Any],
    report: ReconcileReport,
    writes: _Writes,
) -> bool:
    """The database side of one session; returns whether anything is written."""
    sid, newest = leveled.sid, leveled.newest
    created = full_document if db_document is None else None
    blocked = _unstorable(sid, missing_in_db, fields, created)
    if blocked is not None:
        # Every write of it would fail, however often retried: the database side stays
        # as it is; the files keep the record (the writer quarantines such records).
        report.skip("%s; the database side of session %s is left as it is", blocked, sid)
        return False
    if db_document is None:
        report.decide("session %s is missing from the database; created from the files", sid)
        await store.create_session(full_document)
        report.sessions_created_in_database += 1
        report.heal(f"session {sid}: session document created, file -> database")
    # The session document's summary is written behind its checkpoints (see the
    # PersistenceActor), so after a crash it may lag even when no checkpoint is missing.
    summary_last = 0 if db_document is None else int(db_document.get("last_sequence_number") or 0)
    if not missing_in_db and (summary_last >= newest or leveled.left_to_recovery):
        return db_document is None
    images = [
        ImageRecord.from_document(cp.checkpoint_data["image"])
        for cp in missing_in_db
        if "image" in cp.checkpoint_data
    ]
    writes.add(
        PersistBatch(
            checkpoints=missing_in_db,
            session_updates={sid: fields},
            images=images,
            summary_checkpoints=[cp for cp in leveled.ordered if cp.sequence_number > summary_last],
        )
    )
    report.checkpoints_to_database += len(missing_in_db)
    if missing_in_db:
        report.decide(
            "session %s: %d checkpoints copied from the files to the database",
            sid,
            len(missing_in_db),
        )
        report.heal(
            f"session {sid}: checkpoints {_seqs(missing_in_db)}, file -> database"
            f" (with {len(images)} image records)"
        )
    else:
        report.decide("session %s: session summary brought up to checkpoint %d", sid, newest)
    report.heal(
        f"session {sid}: session document brought up to checkpoint {newest}"
        f" (status {fields.get('status')}),"
        f" {'file' if leveled.files_win else 'database checkpoints'} -> database"
    )
    return True


def _unstorable(
    sid: SessionId,
    checkpoints: list[Checkpoint],
    fields: dict[str, Any],
    new_document: dict[str, Any] | None,
) -> str | None:
    """Why a record about to be copied to the database can never be stored, or None."""
    for cp in checkpoints:
        why = database_problem(cp.to_document())
        if why is not None:
            return f"checkpoint file {cp.sequence_number} of session {sid} holds {why}"
    for label, document in (("session summary", fields), ("session file", new_document)):
        why = database_problem(document) if document is not None else None
        if why is not None:
            return f"the {label} of session {sid} holds {why}"
    return None


def _seqs(checkpoints: list[Checkpoint]) -> str:
    numbers = [cp.sequence_number for cp in checkpoints]
    if numbers == list(range(numbers[0], numbers[-1] + 1)) and len(numbers) > 1:
        return f"{numbers[0]}-{numbers[-1]}"
    return ", ".join(str(n) for n in numbers)


async def try_reconcile(
    store: SessionStore | None,
    files: FileStore,
    describe: SessionDescriber,
    *,
    embedded_keep: int = 16,
    owner: str | None = None,
    scan: Awaitable[ScanReport] | None = None,
) -> ReconcileReport | None:
    """Reconcile unless the database is unreachable (then start-up goes on degraded)."""
    if store is None:
        return None
    try:
        return await reconcile(
            store, files, describe, embedded_keep=embedded_keep, owner=owner, scan=scan
        )
    except DatabaseUnavailableError as exc:
        logger.warning("reconciliation skipped: database unavailable (%s)", exc)
        return None


def _is_live(status: Any) -> bool:
    try:
        return SessionStatus(status).is_live
    except ValueError:
        return False
