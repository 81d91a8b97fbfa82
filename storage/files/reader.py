"""Loading the file store's files back, defensively: a bad file is skipped and reported.

Loading never trusts a bad file and never raises for one: it logs it, reports a
:class:`FileProblem`, and goes on, so start-up recovery always gets every valid record
there is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from domain import RESUMABLE_STATUSES, SessionId, SessionStatus, isoformat
from storage.atomic import FileProblem, FileProblemError, load_json
from storage.files.formats import check_session, load_bundle, parse_checkpoint
from storage.files.layout import (
    CHECKPOINT_NAME,
    SESSION_NAME,
    FileLayout,
    canonical,
    list_dir,
    valid_id,
)
from storage.records import Checkpoint

logger = logging.getLogger(__name__)

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


def _report(problems: list[FileProblem], problem: FileProblem) -> None:
    logger.warning("Skipping %s file %s: %s", problem.kind, problem.path, problem.detail)
    problems.append(problem)


class FileReader(FileLayout):
    """The loading half of the FileStore (never raises for a bad file)."""

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
            check_session(doc, sid, path)
        except FileProblemError as exc:
            _report(problems, exc.problem)
            return None
        return doc

    def load_session_file(self, session_id_: str) -> dict[str, Any] | None:
        """The session file if it exists and is valid, else None (problems are logged)."""
        path = self.session_path(session_id_)
        if not path.exists() and not path.is_symlink():
            return None
        return self._load_session(path, valid_id(session_id_), [])

    def _load_checkpoints(
        self, only: SessionId | None, problems: list[FileProblem]
    ) -> dict[SessionId, list[Checkpoint]]:
        found: list[tuple[SessionId, int, bool, Path]] = []
        for entry in list_dir(self.checkpoints_dir):
            if only is not None and not entry.name.startswith(f"{only}_"):
                continue
            path = Path(entry.path)
            match = CHECKPOINT_NAME.match(entry.name)
            sid = canonical(match.group(1)) if match else None
            if match is None or sid is None or int(match.group(2)) < 1:
                _report(problems, FileProblem(path, "foreign", "not {session_id}_{seq}.json"))
            elif not entry.is_file(follow_symlinks=False):
                _report(problems, FileProblem(path, "foreign", "not a regular file"))
            else:
                found.append((sid, int(match.group(2)), len(match.group(2)) == 8, path))
        chosen: dict[SessionId, dict[int, Checkpoint]] = {}
        for sid, seq, _padded, path in sorted(found, key=lambda item: item[2]):
            try:  # unpadded names (other writers) first, so our padded file wins a tie
                chosen.setdefault(sid, {})[seq] = parse_checkpoint(load_json(path), sid, seq, path)
            except FileProblemError as exc:
                _report(problems, exc.problem)
        return {sid: [by_seq[s] for s in sorted(by_seq)] for sid, by_seq in chosen.items()}

    def load_checkpoints(self, session_id_: str) -> list[Checkpoint]:
        """Valid checkpoints of one session in sequence order; bad files are skipped."""
        sid = valid_id(session_id_)
        return self._load_checkpoints(sid, []).get(sid, [])

    def latest_checkpoint(self, session_id_: str) -> Checkpoint | None:
        """The valid checkpoint with the highest sequence number, or None."""
        checkpoints = self.load_checkpoints(session_id_)
        return checkpoints[-1] if checkpoints else None

    def scan(self) -> ScanReport:
        """Load every session file and checkpoint file; report (and log) bad ones."""
        report = ScanReport()
        for entry in list_dir(self.sessions_dir):
            path = Path(entry.path)
            match = SESSION_NAME.match(entry.name)
            sid = canonical(match.group(1)) if match else None
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
        facts["can_resume"] = status in RESUMABLE_STATUSES
    return facts
