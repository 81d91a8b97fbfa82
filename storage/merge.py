"""The one rule that merges what the files and the database hold of a session.

Both stores keep a session's checkpoints, numbered from 1, and a session record (the session
file, the session document). Loading a session for resume, start-up reconciliation, verify and
repair all merge the two sides with the functions here, so they never disagree on which record
is the newer one:

- **Checkpoints, number by number.** A number held by one side only is taken from it. Held by
  both and different, the one written under the newer lease epoch wins (the other is the
  leftover of a writer a takeover fenced); under one epoch, the side that reaches the higher
  sequence number wins (it saw more of the session), the files on a tie (they are written
  first).
- **The session record.** The database document is the base (it holds every field); when the
  session file's summary is newer (a pause or a failure recorded while the database was away),
  its status fields win.
- **Resuming** takes the merged chain from checkpoint 1 while it has no gap and its epochs never
  go down (:func:`resumable_prefix`); what lies beyond is redone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from storage.records import Checkpoint

logger = logging.getLogger(__name__)

STATUS_FIELDS = ("status", "error_message", "pause_reason", "paused_at")
"""The fields a newer session file brings over an older session document."""


@dataclass(frozen=True)
class MergedCheckpoints:
    """Both sides' checkpoints merged, one per sequence number, in order."""

    checkpoints: list[Checkpoint]
    files_win: bool
    """Whether the files reach the higher sequence number (or as high as the database)."""
    conflicts: list[int] = field(default_factory=list)
    """Numbers both sides hold with different checkpoints (the winner is in ``checkpoints``)."""

    @property
    def newest(self) -> int:
        return self.checkpoints[-1].sequence_number if self.checkpoints else 0


def merge_checkpoints(database: list[Checkpoint], files: list[Checkpoint]) -> MergedCheckpoints:
    """Merge two sides' checkpoints by the rule of this module."""
    in_db = {cp.sequence_number: cp for cp in database}
    in_files = {cp.sequence_number: cp for cp in files}
    files_win = max(in_files, default=0) >= max(in_db, default=0)
    merged: list[Checkpoint] = []
    conflicts: list[int] = []
    for seq in sorted(in_db.keys() | in_files.keys()):
        there, here = in_db.get(seq), in_files.get(seq)
        if there is None or here is None:
            merged.append(here or there)  # type: ignore[arg-type]
            continue
        if here.to_json() != there.to_json():
            conflicts.append(seq)
        if here.epoch != there.epoch:
            merged.append(here if here.epoch > there.epoch else there)
        else:
            merged.append(here if files_win else there)
    return MergedCheckpoints(merged, files_win, conflicts)


def newest_record(
    database: dict[str, Any] | None, files: dict[str, Any] | None
) -> dict[str, Any] | None:
    """The session record of both sides' documents (None if neither has one)."""
    if database is None or files is None:
        return database or files
    if _summary_seq(files) > _summary_seq(database):
        return {**database, **{k: files[k] for k in STATUS_FIELDS if k in files}}
    return database


def resumable_prefix(sid: str, checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """The merged checkpoints a session resumes from: from 1, gap-free, epochs never down."""
    ordered: list[Checkpoint] = []
    for cp in checkpoints:
        expected = len(ordered) + 1
        if cp.sequence_number != expected:
            logger.error(
                "session %s: checkpoint %d missing; resuming from %d", sid, expected, expected - 1
            )
            break
        if ordered and cp.epoch < ordered[-1].epoch:
            # Epochs never go down along a session: this is the leftover of a writer fenced
            # by a takeover, beyond where the new owner got. It is redone.
            logger.warning(
                "session %s: checkpoints from %d on were written under an older lease "
                "(epoch %d < %d); resuming from %d",
                sid,
                expected,
                cp.epoch,
                ordered[-1].epoch,
                expected - 1,
            )
            break
        ordered.append(cp)
    return ordered


def _summary_seq(document: dict[str, Any]) -> int:
    return int(document.get("last_sequence_number") or 0)
