"""SummarySchedule: when a session's summary (document fields, session file) is written."""

from __future__ import annotations

from typing import Any

from actors.messages import CheckpointReached
from actors.persistence.summaries import SummarySchedule
from domain import CheckpointType, ProcessingStep, SessionId, new_id
from storage.records import Checkpoint


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reached(
    sid: SessionId,
    seq: int,
    kind: CheckpointType = CheckpointType.CHAPTER_START,
    status: str = "running",
    *,
    new: bool = False,
) -> CheckpointReached:
    cp = Checkpoint(sid, seq, kind, ProcessingStep.ANALYZING_CHAPTERS, 1, "next", seq)
    fields: dict[str, Any] = {"status": status, "progress_percent": seq}
    return CheckpointReached(
        sid,
        cp,
        fields,
        {"session_id": sid, "status": status, "last_sequence_number": seq},
        new_session={"_id": sid, "status": status} if new else None,
    )


def test_a_new_sessions_next_summary_waits_an_interval_and_carries_the_latest() -> None:
    clock = Clock()
    schedule = SummarySchedule(interval_s=10, per_second=0, clock=clock)
    sid = SessionId(new_id())
    schedule.hold(reached(sid, 1, CheckpointType.SESSION_START, new=True))
    schedule.hold(reached(sid, 2))
    assert schedule.due() == []
    clock.now += 9.9
    schedule.hold(reached(sid, 3))
    assert schedule.due() == []
    clock.now += 0.2
    [summary] = schedule.due()
    assert [cp.sequence_number for cp in summary.checkpoints] == [1, 2, 3]
    assert summary.fields["progress_percent"] == 3
    assert summary.session_file is not None and summary.session_file["last_sequence_number"] == 3
    assert len(schedule) == 0
    schedule.hold(reached(sid, 4))
    assert schedule.due() == [], "the interval starts again from the last summary"


def test_a_stop_is_written_at_once_whatever_the_budget() -> None:
    clock = Clock()
    schedule = SummarySchedule(interval_s=10, per_second=1, clock=clock)
    sessions = [SessionId(new_id()) for _ in range(3)]
    for sid in sessions:
        schedule.hold(reached(sid, 1, CheckpointType.SESSION_START, new=True))
    schedule.hold(reached(sessions[0], 2, CheckpointType.SESSION_PAUSED, "paused"))
    schedule.hold(reached(sessions[1], 2, CheckpointType.SESSION_COMPLETED, "completed"))
    schedule.hold(reached(sessions[2], 2, CheckpointType.ERROR_OCCURRED, "failed"))
    released = schedule.due()
    assert {s.session_id: s.status for s in released} == {
        sessions[0]: "paused",
        sessions[1]: "completed",
        sessions[2]: "failed",
    }


def test_summaries_falling_due_together_are_spread_by_the_budget_oldest_first() -> None:
    clock = Clock()
    schedule = SummarySchedule(interval_s=1, per_second=4, clock=clock)
    sessions = [SessionId(new_id()) for _ in range(10)]
    for sid in sessions:
        schedule.hold(reached(sid, 1, CheckpointType.SESSION_START, new=True))
    for sid in sessions:
        schedule.hold(reached(sid, 2))
    # 10 live sessions at 4/s: each one's interval grows to 2.5 s.
    assert schedule.interval() == 2.5
    clock.now += 2.5
    first = schedule.due()
    assert [s.session_id for s in first] == sessions[:4], "one second's worth at most"
    assert schedule.waiting()
    assert schedule.due() == [], "no tokens left at the same instant"
    clock.now += 0.5
    assert [s.session_id for s in schedule.due()] == sessions[4:6]
    clock.now += 1.0
    assert [s.session_id for s in schedule.due()] == sessions[6:10]
    assert not schedule.waiting() and len(schedule) == 0


def test_force_takes_everything_and_drop_forgets_a_fenced_session() -> None:
    clock = Clock()
    schedule = SummarySchedule(interval_s=60, per_second=1, clock=clock)
    kept, fenced = SessionId(new_id()), SessionId(new_id())
    for sid in (kept, fenced):
        schedule.hold(reached(sid, 1, CheckpointType.SESSION_START, new=True))
        schedule.hold(reached(sid, 2))
    schedule.drop(fenced)
    assert schedule.due() == []
    assert [s.session_id for s in schedule.due(force=True)] == [kept]
    assert len(schedule) == 0
