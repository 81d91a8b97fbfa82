"""Session summaries, written behind their checkpoints on a budget.

A session's *summary* sums its checkpoints up: the session document's fields with its
embedded compact checkpoints (database), and its session file
(``active_sessions/{id}.json``). The checkpoints themselves (checkpoint files and records)
are durable before every acknowledgement; the summary follows:

- at once when it announces a stop (paused, completed, failed, cancelled, interrupted),
  since that is what clients and start-up recovery read of a stopped session;
- otherwise at most once per ``interval`` per session (longer when that many live sessions
  would exceed the budget), and at most ``per_second`` in all (a token bucket holding one
  second's worth, so that summaries falling due together are spread out), oldest first.

Live sessions are shown from memory meanwhile. A summary may lag its checkpoints after a
crash: loading rebuilds a session from its checkpoints, and start-up reconciliation
repairs the summary. Rewriting a summary is the costliest write per checkpoint on both
sides (a document update in the database; a replaced file, whose freed inode slows down
the next file creations on ext4), so with many live sessions this schedule is what keeps
the per-checkpoint cost flat.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from actors.messages import CheckpointReached
from domain import NOT_LIVE_STATUSES, STOPPED_STATUSES
from storage.records import Checkpoint

URGENT_CHECKPOINTS = frozenset({"session_completed", "session_paused", "error_occurred"})
LEAVING_STATUSES = frozenset(STOPPED_STATUSES)
"""A session in one of these is no longer run by anyone: its lease is released."""
URGENT_STATUSES = frozenset(NOT_LIVE_STATUSES)
"""Summaries announcing one of these are written at once; a session starting or
resuming (pending, queued, running) is shown live from memory meanwhile."""


@dataclass
class Summary:
    """A session's summary waiting to be written (the latest of everything held)."""

    session_id: str
    fields: dict[str, Any] = field(default_factory=dict)
    """``$set`` fields of the session document."""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    """Checkpoints whose compact forms are not embedded in the document yet."""
    session_file: dict[str, Any] | None = None
    """The session file's latest contents."""

    @property
    def status(self) -> Any:
        return self.fields.get("status")


class SummarySchedule:
    """Holds summaries and says which are due. Used by the PersistenceActor only.

    Args:
        interval_s: least time between two summaries of one session (0: every batch).
        per_second: summaries per second in all, stops excepted (0: no cap).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        interval_s: float,
        per_second: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s
        self.per_second = per_second
        self._clock = clock
        self._held: dict[str, Summary] = {}
        """Insertion order is roughly due order: a session re-enters after its release."""
        self._urgent: set[str] = set()
        self._written_at: dict[str, float] = {}
        self._written_status: dict[str, Any] = {}
        self._tokens = float(per_second)
        self._refilled_at = clock()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, message: CheckpointReached) -> None:
        """Fold ``message`` into its session's held summary."""
        sid = message.session_id
        summary = self._held.get(sid)
        if summary is None:
            summary = self._held[sid] = Summary(sid)
        summary.fields.update(message.session_fields)
        summary.session_file = message.session_file
        summary.checkpoints.extend(message.summary_checkpoints)
        cp = message.checkpoint
        if cp is not None:
            summary.checkpoints.append(cp)
        status = message.session_fields.get("status")
        if message.new_session is not None:
            # The document inserted with this batch (and its session file) carries the
            # summary already.
            self._written_status.setdefault(sid, message.new_session.get("status"))
            self._written_at.setdefault(sid, self._clock())
        elif cp is None and not message.summary_checkpoints:
            self._urgent.add(sid)  # a bare status change (cancel, interrupted, failed)
        if (cp is not None and str(cp.checkpoint_type) in URGENT_CHECKPOINTS) or (
            status in URGENT_STATUSES and status != self._written_status.get(sid)
        ):
            self._urgent.add(sid)

    def due(self, *, force: bool = False) -> list[Summary]:
        """Take the summaries to write now (all of them with ``force``)."""
        now = self._clock()
        if self.per_second > 0:
            self._tokens = min(
                float(self.per_second),
                self._tokens + (now - self._refilled_at) * self.per_second,
            )
        self._refilled_at = now
        released = [self._take(sid, now) for sid in self._urgent if sid in self._held]
        self._urgent.clear()
        interval = self.interval()
        for sid in list(self._held):
            if not force:
                if now - self._written_at.get(sid, 0.0) < interval:
                    break  # the rest entered later: not due either (roughly)
                if self.per_second > 0 and self._tokens < 1:
                    break
            self._tokens -= 1
            released.append(self._take(sid, now))
        return released

    def interval(self) -> float:
        """Seconds between two summaries of a session: the configured interval, longer
        when that many live sessions would exceed the budget per second."""
        if self.per_second > 0:
            return max(self.interval_s, len(self._written_at) / self.per_second)
        return self.interval_s

    def waiting(self) -> bool:
        """Whether a held summary is already due and only the budget holds it back."""
        if not self._held:
            return False
        oldest = next(iter(self._held))
        return self._clock() - self._written_at.get(oldest, 0.0) >= self.interval()

    def drop(self, session_id: str) -> None:
        """Forget ``session_id``'s held summary (its writes are fenced)."""
        self._held.pop(session_id, None)
        self._urgent.discard(session_id)

    def _take(self, sid: str, now: float) -> Summary:
        summary = self._held.pop(sid)
        if summary.status in LEAVING_STATUSES:  # the session is leaving
            self._written_at.pop(sid, None)
            self._written_status.pop(sid, None)
        else:
            self._written_at[sid] = now
            self._written_status[sid] = summary.status
        return summary


__all__ = [
    "LEAVING_STATUSES",
    "URGENT_STATUSES",
    "URGENT_CHECKPOINTS",
    "Summary",
    "SummarySchedule",
]
