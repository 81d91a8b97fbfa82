"""``illustrator sessions verify``: check every session's records against each other.

For each session: sequence numbers gap-free from 1 in the database and in the files;
the files and the database hold the same checkpoints; the session record's last
sequence number matches; every image record has its PNG on disk, and every PNG on disk
has a record.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain import SessionId
from errors import DatabaseUnavailableError
from storage.base import SessionStore
from storage.files import FileStore

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class VerifyReport:
    """Problems found, per session."""

    sessions: int = 0
    checkpoints: int = 0
    images: int = 0
    problems: list[str] = field(default_factory=list)
    file_problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems

    def render(self) -> str:
        """A readable report."""
        lines = [
            f"Checked {self.sessions} sessions, {self.checkpoints} checkpoints,"
            f" {self.images} images.",
        ]
        if self.file_problems:
            lines.append(f"{len(self.file_problems)} unreadable files were skipped:")
            lines += [f"  - {p}" for p in self.file_problems]
        if self.ok:
            lines.append(
                "OK: sequence numbers gap-free, files and database agree,"
                " images match their records."
            )
        else:
            lines.append(f"{len(self.problems)} problems:")
            lines += [f"  - {p}" for p in self.problems]
        return "\n".join(lines)


async def verify(store: SessionStore | None, files: FileStore, output_dir: Path) -> VerifyReport:
    """Check every session known to the files or the database."""
    report = VerifyReport()
    scan = await asyncio.to_thread(files.scan)
    report.file_problems = [f"{p.path}: {p.kind} ({p.detail})" for p in scan.problems]
    db_sessions: dict[SessionId, dict[str, Any]] = {}
    if store is None:
        report.problems.append("no database configured: only the files were checked")
    else:
        try:
            db_sessions = {
                SessionId(d["session_id"]): d for d in await store.list_sessions(limit=1_000_000)
            }
        except DatabaseUnavailableError as exc:
            report.problems.append(f"database unreachable: {exc}")
            store = None
    for sid in sorted(set(scan.sessions) | set(scan.checkpoints) | set(db_sessions)):
        report.sessions += 1
        in_files = scan.checkpoints.get(sid, [])
        file_seqs = [cp.sequence_number for cp in in_files]
        if file_seqs != list(range(1, len(file_seqs) + 1)):
            report.problems.append(f"{sid}: checkpoint files are not gap-free: {_gaps(file_seqs)}")
        report.checkpoints += len(file_seqs)
        if store is None:
            continue
        document = db_sessions.get(sid)
        if document is None:
            report.problems.append(f"{sid}: in the files but not in the database")
            continue
        in_db = await store.list_checkpoints(sid)
        db_seqs = [cp.sequence_number for cp in in_db]
        if db_seqs != list(range(1, len(db_seqs) + 1)):
            report.problems.append(
                f"{sid}: database checkpoints are not gap-free: {_gaps(db_seqs)}"
            )
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
        if db_seqs and int(document.get("last_sequence_number") or 0) != db_seqs[-1]:
            report.problems.append(
                f"{sid}: session record says last checkpoint"
                f" {document.get('last_sequence_number')}, "
                f"the checkpoints end at {db_seqs[-1]}"
            )
        await _verify_images(store, sid, output_dir, report)
        named = {
            (cp.chapter_number, cp.checkpoint_data["image"].get("scene_number"))
            for cp in in_db
            if "image" in cp.checkpoint_data
        }
        recorded = {(i.chapter_number, i.scene_number) for i in await store.list_images(sid)}
        if named != recorded:
            report.problems.append(
                f"{sid}: image checkpoints name {len(named)} images, the image records are "
                f"{len(recorded)} (missing {sorted(named - recorded)[:5]},"
                f" extra {sorted(recorded - named)[:5]})"
            )
    return report


async def _verify_images(
    store: SessionStore, sid: SessionId, output_dir: Path, report: VerifyReport
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


def _span(seqs: list[int]) -> str:
    return f"1..{seqs[-1]} ({len(seqs)})" if seqs else "none"


def _gaps(seqs: list[int]) -> str:
    expected = set(range(1, max(seqs, default=0) + 1))
    missing = sorted(expected - set(seqs))
    duplicates = sorted({s for s in seqs if seqs.count(s) > 1})
    return f"missing {missing[:10]}, duplicated {duplicates[:10]}"
