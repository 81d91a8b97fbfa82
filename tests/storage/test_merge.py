"""The one merge rule of files and database (storage/merge.py), case by case."""

from __future__ import annotations

import logging

import pytest

from domain import CheckpointType, ProcessingStep, SessionId
from storage.merge import merge_checkpoints, newest_record, resumable_prefix
from storage.records import Checkpoint

SID = SessionId("0123456789abcdef0123456789abcdef")


def cp(seq: int, epoch: int = 1, note: str = "") -> Checkpoint:
    return Checkpoint(
        session_id=SID,
        sequence_number=seq,
        checkpoint_type=CheckpointType.CHAPTER_START,
        step=ProcessingStep.ANALYZING_CHAPTERS,
        chapter_number=1,
        next_action=note or f"step {seq}",
        progress_percent=seq,
        epoch=epoch,
    )


def notes(checkpoints: list[Checkpoint]) -> list[str]:
    return [c.next_action for c in checkpoints]


def test_each_side_contributes_what_only_it_holds() -> None:
    merged = merge_checkpoints([cp(1), cp(2)], [cp(1), cp(3)])
    assert [c.sequence_number for c in merged.checkpoints] == [1, 2, 3]
    assert merged.files_win and merged.conflicts == [] and merged.newest == 3


def test_a_conflict_goes_to_the_newer_lease_epoch_whatever_the_side() -> None:
    # The database reaches further, but the files' checkpoint 2 is of the newer owner.
    merged = merge_checkpoints(
        [cp(1), cp(2, 1, "stale"), cp(3, 1, "stale")], [cp(1), cp(2, 2, "owner")]
    )
    assert not merged.files_win
    assert notes(merged.checkpoints) == ["step 1", "owner", "stale"]
    assert merged.conflicts == [2]
    # ... and resuming stops where the epoch goes down: checkpoint 3 is redone.
    assert notes(resumable_prefix(SID, merged.checkpoints)) == ["step 1", "owner"]


@pytest.mark.parametrize(
    ("database", "files", "winner"),
    [
        ([cp(1), cp(2, 1, "db"), cp(3)], [cp(1), cp(2, 1, "files")], "db"),
        ([cp(1), cp(2, 1, "db")], [cp(1), cp(2, 1, "files"), cp(3)], "files"),
        ([cp(1), cp(2, 1, "db")], [cp(1), cp(2, 1, "files")], "files"),  # a tie: files
    ],
)
def test_under_one_epoch_the_side_reaching_the_higher_sequence_wins(
    database: list[Checkpoint], files: list[Checkpoint], winner: str
) -> None:
    merged = merge_checkpoints(database, files)
    assert merged.checkpoints[1].next_action == winner
    assert merged.conflicts == [2]


def test_resuming_stops_at_a_gap(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="storage.merge"):
        prefix = resumable_prefix(SID, [cp(1), cp(2), cp(4), cp(5)])
    assert [c.sequence_number for c in prefix] == [1, 2]
    assert "checkpoint 3 missing" in caplog.text


def test_the_database_document_with_a_newer_session_files_status() -> None:
    document = {"session_id": SID, "status": "running", "last_sequence_number": 4, "epoch": 3}
    newer_file = {
        "session_id": SID,
        "status": "paused",
        "pause_reason": "user",
        "last_sequence_number": 6,
    }
    merged = newest_record(document, newer_file)
    assert merged is not None
    assert merged["status"] == "paused" and merged["pause_reason"] == "user"
    assert merged["epoch"] == 3  # the document's fields stay
    older_file = {**newer_file, "last_sequence_number": 4}
    assert newest_record(document, older_file) == document
    assert newest_record(None, older_file) == older_file
    assert newest_record(None, None) is None
