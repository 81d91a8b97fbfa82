"""``illustrator sessions verify``: check every session's records against each other.

Verification only reads: it scans the files, queries the database (no write, no index,
no lease) and starts no actor, so what it reports is what is stored. Healing is
``illustrator sessions repair`` (storage.reconcile), and the server's own start-up.

For each session: every file readable; every file record storable in the database;
sequence numbers gap-free from 1 in the database and in the files; both hold the same
checkpoints; the session file, the session document and the last checkpoint agree on
status, progress and chapters; the stored events run gap-free up to the session's last
event; every image record has its PNG on disk, and every PNG on disk has a record.
Quarantined records (``sessions/quarantine/``) are listed. A session another live
instance runs (its lease) is not compared: its summaries are written behind its work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain import SessionId, utcnow
from errors import IllustratorError
from storage.atomic import FileProblemError, load_json
from storage.base import SessionRecords
from storage.files import FileStore, ScanReport
from storage.leases import takeable
from storage.records import Checkpoint
from storage.storable import database_problem

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class VerifyReport:
    """What verification found."""

    sessions: int = 0
    checkpoints: int = 0
    images: int = 0
    events: int = 0
    problems: list[str] = field(default_factory=list)
    """Disagreements and gaps between the records of sessions."""
    file_problems: list[str] = field(default_factory=list)
    """Files that cannot be read or trusted, or hold what the database cannot store."""
    quarantined: list[str] = field(default_factory=list)
    """Records the writer set aside (sessions/quarantine/)."""
    live: list[str] = field(default_factory=list)
    """Sessions another live instance runs: not compared."""

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not (self.problems or self.file_problems or self.quarantined)

    def render(self) -> str:
        """A readable report."""
        lines = [
            f"Checked {self.sessions} sessions, {self.checkpoints} checkpoints,"
            f" {self.images} images, {self.events} events.",
        ]
        sections = (
            (self.file_problems, "files cannot be trusted"),
            (self.quarantined, "quarantined records (sessions/quarantine/)"),
            (self.problems, "problems"),
            (self.live, "sessions not compared: live on a running instance"),
        )
        for items, title in sections:
            if items:
                lines.append(f"{len(items)} {title}:")
                lines += [f"  - {item}" for item in items]
        if self.ok:
            lines.append(
                "OK: files readable, sequence numbers and events gap-free, files and database"
                " agree, images match their records."
            )
        else:
            lines.append("NOT OK: `illustrator sessions repair` heals what the other side holds.")
        return "\n".join(lines)


async def verify(
    store: SessionRecords | None,
    files: FileStore,
    output_dir: Path,
    *,
    keep_logs: int = 1000,
) -> VerifyReport:
    """Check every session known to the files or the database (reads only).

    ``keep_logs``: ``processing.max_logs_per_session``; a session holding that many
    events may have had its oldest ones pruned on purpose.
    """
    report = VerifyReport()
    scan = await asyncio.to_thread(files.scan)
    report.file_problems = [f"{p.path}: {p.kind} file ({p.detail})" for p in scan.problems]
    report.file_problems += _unstorable_files(files, scan)
    report.quarantined = await asyncio.to_thread(_quarantined, files.root)
    db_sessions: dict[str, dict[str, Any]] = {}
    if store is None:
        report.problems.append("no database configured: only the files were checked")
    else:
        try:
            listed = await store.list_sessions(limit=1_000_000)
        except IllustratorError as exc:
            report.problems.append(f"database unreadable: {exc}")
            store = None
        else:
            for document in listed:
                sid = document.get("session_id", document.get("_id"))
                if isinstance(sid, str):
                    db_sessions[sid] = document
                else:
                    report.problems.append(f"a session document has no id: {document!r:.120}")
    for sid in sorted(set(scan.sessions) | set(scan.checkpoints) | set(db_sessions)):
        report.sessions += 1
        try:
            await _verify_session(
                SessionId(sid), store, scan, db_sessions.get(sid), report, output_dir, keep_logs
            )
        except Exception as exc:  # noqa: BLE001 - one odd record must not hide the others
            report.problems.append(f"{sid}: could not be checked: {type(exc).__name__}: {exc}")
    return report


async def _verify_session(
    sid: SessionId,
    store: SessionRecords | None,
    scan: ScanReport,
    document: dict[str, Any] | None,
    report: VerifyReport,
    output_dir: Path,
    keep_logs: int,
) -> None:
    in_files = scan.checkpoints.get(sid, [])
    session_file = scan.sessions.get(sid)
    file_seqs = [cp.sequence_number for cp in in_files]
    if file_seqs != list(range(1, len(file_seqs) + 1)):
        report.problems.append(f"{sid}: checkpoint files are not gap-free: {_gaps(file_seqs)}")
    report.checkpoints += len(file_seqs)
    if document is not None and not takeable(document, "", utcnow()):
        report.live.append(
            f"{sid}: run by instance {document.get('owner')}"
            f" (lease until {document.get('lease_until')})"
        )
        return
    if session_file is not None:
        report.problems += _summary_problems(sid, "session file", session_file, in_files)
    if store is None:
        return
    if document is None:
        report.problems.append(f"{sid}: in the files but not in the database")
        return
    in_db = await store.list_checkpoints(sid)
    db_seqs = [cp.sequence_number for cp in in_db]
    if db_seqs != list(range(1, len(db_seqs) + 1)):
        report.problems.append(f"{sid}: database checkpoints are not gap-free: {_gaps(db_seqs)}")
    if db_seqs != file_seqs:
        report.problems.append(
            f"{sid}: files hold checkpoints {_span(file_seqs)}, the database {_span(db_seqs)}"
        )
    else:
        differing = [
            a.sequence_number
            for a, b in zip(in_files, in_db, strict=True)
            if a.to_json() != b.to_json()
        ]
        if differing:
            report.problems.append(
                f"{sid}: checkpoints {differing[:10]} differ between files and database"
            )
    report.problems += _summary_problems(sid, "session document", document, in_db)
    if session_file is None:
        report.problems.append(f"{sid}: no session file (the database has the session)")
    elif session_file.get("status") != document.get("status"):
        report.problems.append(
            f"{sid}: the session file says {session_file.get('status')},"
            f" the session document {document.get('status')}"
        )
    summaries = [document, session_file]
    await _verify_events(store, sid, summaries, [*in_db, *in_files], report, keep_logs)
    await _verify_images(store, sid, output_dir, in_db, report)


def _summary_problems(
    sid: str, where: str, summary: dict[str, Any], checkpoints: list[Checkpoint]
) -> list[str]:
    """Where a session summary (file or document) disagrees with its last checkpoint."""
    status = summary.get("status")
    if not checkpoints:
        return []
    last = checkpoints[-1]
    state = last.processing_state
    problems = []
    told: dict[str, tuple[Any, Any]] = {
        "last_sequence_number": (summary.get("last_sequence_number"), last.sequence_number),
        "progress_percent": (summary.get("progress_percent"), last.progress_percent),
    }
    if "processed_chapters" in state:
        told["processed_chapters"] = (
            sorted(summary.get("processed_chapters") or []),
            sorted(state["processed_chapters"]),
        )
    if "total_chapters" in state:
        told["total_chapters"] = (summary.get("total_chapters"), state["total_chapters"])
    for key, (said, expected) in told.items():
        if said != expected:
            problems.append(
                f"{sid}: the {where} says {key} {said}, its last checkpoint"
                f" ({last.sequence_number}, {last.checkpoint_type}) {expected}"
            )
    last_type = str(last.checkpoint_type)
    # Completed <=> the last checkpoint completed the session; paused => it paused it (a
    # paused session resumed, cancelled or interrupted since has another status).
    if (last_type == "session_completed") != (status == "completed") or (
        status == "paused" and last_type != "session_paused"
    ):
        problems.append(
            f"{sid}: the {where} says {status}, but its last checkpoint is"
            f" {last.sequence_number} ({last_type})"
        )
    return problems


async def _verify_events(
    store: SessionRecords,
    sid: SessionId,
    summaries: list[dict[str, Any] | None],
    checkpoints: list[Checkpoint],
    report: VerifyReport,
    keep_logs: int,
) -> None:
    """The stored events run from 1 (or the pruned start) to the session's last event."""
    claimed = [int(s.get("last_event_seq") or 0) for s in summaries if s is not None]
    claimed += [int(cp.processing_state.get("last_event_seq") or 0) for cp in checkpoints]
    last = max(claimed, default=0)
    seqs = sorted({entry.event_seq for entry in await store.list_logs(sid, 0, 1 << 40)})
    report.events += len(seqs)
    top = max(last, seqs[-1] if seqs else 0)
    start = 1
    if seqs and len(seqs) >= keep_logs:
        start = seqs[0]  # the oldest were pruned (processing.max_logs_per_session)
    missing = sorted(set(range(start, top + 1)) - set(seqs))
    if missing:
        report.problems.append(
            f"{sid}: events {_ranges(missing)} are missing from the database (the session's"
            f" last event is {top}; {len(seqs)} stored"
            f"{', ' + _ranges(seqs) if seqs else ''})"
        )


async def _verify_images(
    store: SessionRecords,
    sid: SessionId,
    output_dir: Path,
    checkpoints: list[Checkpoint],
    report: VerifyReport,
) -> None:
    records = await store.list_images(sid)
    report.images += len(records)
    recorded = set()
    for image in records:
        path = (output_dir / image.file_path).resolve()
        recorded.add(path)
        if not path.is_relative_to(output_dir.resolve()):
            report.problems.append(
                f"{sid}: image record points outside the output folder: {image.file_path}"
            )
            continue
        try:
            head = path.read_bytes()[:8]
        except OSError:
            report.problems.append(f"{sid}: image {image.file_path} is missing on disk")
            continue
        if head != PNG_MAGIC:
            report.problems.append(f"{sid}: image {image.file_path} is not a PNG")
    folder = output_dir / "generated_images" / sid
    if folder.is_dir():
        for path in sorted(folder.glob("*.png")):
            if path.resolve() not in recorded:
                report.problems.append(f"{sid}: {path.name} on disk has no image record")
    named = {
        (cp.chapter_number, cp.checkpoint_data["image"].get("scene_number"))
        for cp in checkpoints
        if "image" in cp.checkpoint_data
    }
    have = {(i.chapter_number, i.scene_number) for i in records}
    if named != have:
        report.problems.append(
            f"{sid}: image checkpoints name {len(named)} images, the image records are "
            f"{len(have)} (missing {sorted(named - have)[:5]}, extra {sorted(have - named)[:5]})"
        )


def _unstorable_files(files: FileStore, scan: ScanReport) -> list[str]:
    """File records the database can never take (reconciliation skips them)."""
    found = []
    for sid, document in sorted(scan.sessions.items()):
        why = database_problem(document)
        if why is not None:
            found.append(f"{files.session_path(sid)}: holds {why}; the database cannot store it")
    for checkpoints in scan.checkpoints.values():
        for cp in checkpoints:
            why = database_problem(cp.to_document())
            if why is not None:
                path = files.checkpoint_path(cp.session_id, cp.sequence_number)
                found.append(f"{path}: holds {why}; the database cannot store it")
    return found


def quarantine_dir(root: Path) -> Path:
    """``sessions/quarantine/``: records the persistence writer could not store."""
    return root / "sessions" / "quarantine"


def _quarantined(root: Path) -> list[str]:
    """One line per file of the quarantine folder (format: the persistence writer's)."""
    folder = quarantine_dir(root)
    try:
        paths = sorted(p for p in folder.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [f"{folder}: cannot be listed ({exc.strerror})"]
    lines = []
    for path in paths:
        try:
            doc = load_json(path)
        except FileProblemError as exc:
            lines.append(f"{path}: {exc.problem.kind} file ({exc.problem.detail})")
            continue
        lines.append(
            f"{path.name}: {doc.get('kind', '?')} record of session {doc.get('session_id', '?')},"
            f" quarantined at {doc.get('quarantined_at', '?')}: {doc.get('reason', '?')}"
        )
    return lines


def _span(seqs: list[int]) -> str:
    return f"1..{seqs[-1]} ({len(seqs)})" if seqs else "none"


def _gaps(seqs: list[int]) -> str:
    expected = set(range(1, max(seqs, default=0) + 1))
    missing = sorted(expected - set(seqs))
    duplicates = sorted({s for s in seqs if seqs.count(s) > 1})
    return f"missing {missing[:10]}, duplicated {duplicates[:10]}"


def _ranges(numbers: list[int], at_most: int = 8) -> str:
    """``[1, 2, 3, 7, 9, 10]`` -> ``"1-3, 7, 9-10"`` (the first ``at_most`` runs)."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a}-{b}" if a != b else str(a) for a, b in runs[:at_most]]
    if len(runs) > at_most:
        text.append(f"... ({len(runs) - at_most} more runs)")
    return ", ".join(text)
