"""Messages between actors: commands are imperatives, events past-tense facts.

The same vocabulary names WebSocket frames, log entries and stored documents.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pykka

from actors.reply import Reply
from actors.state import SessionState
from domain import ManuscriptId, PauseReason, SessionId, SessionStatus
from pipeline.manuscripts import Manuscript
from storage.records import Checkpoint, ImageRecord, LogEntry

# --- to the SessionSupervisor ------------------------------------------------


@dataclass(frozen=True)
class StartSession:
    """Run a session (new or resumed) under supervision, queueing it when at the cap."""

    state: SessionState
    """Everything the session knows so far (fresh, or folded from its checkpoints)."""
    manuscript: Manuscript
    """The manuscript to illustrate."""
    resumed: bool
    """True when continuing from stored checkpoints."""
    reply: Reply | None = None
    """Answered with the session's status once it is running or queued."""


@dataclass(frozen=True)
class SessionFinished:
    """A SessionActor stopped: completed, paused, failed or cancelled."""

    session_id: SessionId
    """Which session."""
    status: SessionStatus
    """Its final status for this run."""
    events: tuple[LogEntry, ...] = ()
    """Final events (complete, paused...), published once the session is deregistered,
    so a client that sees them can resume or restart the session at once."""


@dataclass(frozen=True)
class ControlSession:
    """To the supervisor: deliver a pause or a cancel to a live session (or a queued one)."""

    session_id: SessionId
    """Which session."""
    command: PauseSession | CancelSession
    """What to do; its ``reply`` is answered with the status snapshot, or a NotFoundError
    when the session is not live."""


@dataclass(frozen=True)
class StopTimeout:
    """To the supervisor, from its shutdown timer: stop waiting for sessions to pause."""


@dataclass(frozen=True)
class ReserveManuscript:
    """Hold a manuscript for a session about to be recorded: one live session per manuscript.

    A new session's record is written before it is started; the reservation, taken first,
    makes every other start, resume or restart of the manuscript meanwhile a conflict.
    """

    manuscript_id: ManuscriptId
    """The manuscript."""
    session_id: SessionId
    """The session that will hold it (its StartSession then finds the reservation its own)."""
    reply: Reply
    """Answered with None, or a ManuscriptBusyError naming the live session."""


@dataclass(frozen=True)
class ReleaseManuscript:
    """Give back a reservation whose session was never started (its record failed)."""

    session_id: SessionId
    """The session that reserved it."""


@dataclass(frozen=True)
class StopAllSessions:
    """Shutdown: pause every running session at its next boundary and wait for the pauses."""

    reply: Reply | None = None
    """Answered when every session has stopped (or the timeout passed)."""
    timeout: float = 30.0
    """Seconds to wait for sessions to reach a step boundary."""


# --- to a SessionActor -------------------------------------------------------


@dataclass(frozen=True)
class AdvanceSession:
    """Run the next step (a SessionActor sends this to itself between steps)."""


@dataclass(frozen=True)
class PauseSession:
    """Stop at the next step boundary with a pause checkpoint."""

    reply: Reply | None = None
    """Answered at once with the snapshot (the pause itself lands at the boundary)."""
    reason: PauseReason = PauseReason.USER
    """Who pauses: a user's pause stays paused, a shutdown's resumes at the next start."""


@dataclass(frozen=True)
class CancelSession:
    """Stop at the next step boundary; the session becomes terminally cancelled."""

    reply: Reply | None = None
    """Answered at once with the snapshot."""


@dataclass(frozen=True)
class CheckpointPersisted:
    """The PersistenceActor made a checkpoint (or session update) durable."""

    session_id: SessionId
    """Whose checkpoint."""
    sequence_number: int
    """Which one (0 for a session update without a checkpoint)."""
    error: str | None = None
    """Set when the files could not be written: the checkpoint is NOT durable."""
    fenced: bool = False
    """Set when another instance took the session's lease over: stop, write nothing."""


@dataclass(frozen=True)
class LeaseLost:
    """Another instance holds this session's lease now: stop at once, write nothing."""

    session_id: SessionId
    """Whose lease."""


# --- to the PersistenceActor -------------------------------------------------


@dataclass(frozen=True)
class CheckpointReached:
    """A session reached a milestone; persist it, then acknowledge ``reply_to``.

    Carries everything that must be durable before the session may proceed.
    """

    session_id: SessionId
    """Whose milestone."""
    checkpoint: Checkpoint | None
    """The checkpoint (None for a status change that has no checkpoint, e.g. cancel)."""
    session_fields: dict[str, Any]
    """``$set`` fields of the session document (status, progress, counters)."""
    session_file: dict[str, Any]
    """The spec's session file contents (``active_sessions/{id}.json``)."""
    images: tuple[ImageRecord, ...] = ()
    """Image records made durable with this checkpoint."""
    placed_files: tuple[Path, ...] = ()
    """Files this step put in place without syncing their folder (its image, see
    ``pipeline.images.folder_sync_deferred``): synced with this batch, before the ack."""
    new_session: dict[str, Any] | None = None
    """A full session document to create first (the first checkpoint of a new session)."""
    reply_to: pykka.ActorRef[Any] | None = None
    """Told :class:`CheckpointPersisted` once durable."""
    events: tuple[LogEntry, ...] = ()
    """Events emitted with this milestone, stored in the same batch."""
    ack: Reply | None = None
    """For callers that are not actors: answered with None once durable (or the error)."""
    sent_at: float = field(default_factory=time.monotonic)
    """When the session sent it (acknowledgement latency is measured from here)."""
    summary_checkpoints: tuple[Checkpoint, ...] = ()
    """Checkpoints already durable that the stored summary lacks (a summary left behind
    by a crash, see actors.persistence.summaries): they go into the next summary written."""

    @classmethod
    def status_of(
        cls, state: SessionState, behind: tuple[Checkpoint, ...] = ()
    ) -> CheckpointReached:
        """A status change without a checkpoint (cancelled, interrupted, paused while
        queued); a session that never reached its first checkpoint gets its document.
        ``behind``: durable checkpoints its stored summary lacks (recovery)."""
        return cls(
            session_id=state.session_id,
            checkpoint=None,
            session_fields=state.session_fields(),
            session_file=state.session_file(),
            new_session=state.session_document() if state.last_sequence_number == 0 else None,
            summary_checkpoints=behind,
        )


@dataclass(frozen=True)
class EventsEmitted:
    """Events (logs, progress...) to store; no acknowledgement."""

    entries: tuple[LogEntry, ...]
    """In event-sequence order."""
    keep: int = 1000
    """Bound on stored entries per session."""


@dataclass(frozen=True)
class FlushPersistence:
    """Write everything pending and answer: the files at once, the database backlog
    too unless the breaker is open (a dead database is retried by its probe only)."""

    reply: Reply
    """Answered with the backlog size left (0 when the database is caught up)."""


@dataclass(frozen=True)
class PendingEvents:
    """A WebSocket replay's question: commit what is pending, then which of a session's
    events after ``after`` the database does not hold yet (they wait in the backlog)."""

    session_id: str
    after: int
    reply: Reply
    """Answered with ``(database_up, events)``: whether the breaker is closed, and the
    session's events after ``after`` still in the backlog, in order."""


@dataclass(frozen=True)
class LeaseGranted:
    """The engine took a session's lease: renew it while the session lives, and fence
    the session's database writes with its epoch."""

    session_id: SessionId
    """Whose lease."""
    epoch: int
    """The epoch granted (the fencing token)."""
    granted_at: float = field(default_factory=time.monotonic)
    """When it was granted (the lease is trusted locally for two thirds of its length)."""


@dataclass(frozen=True)
class RenewLeases:
    """Timer tick: renew the leases of live sessions."""


@dataclass(frozen=True)
class LeasesRenewed:
    """The lease keeper's answer: which leases it extended (as asked at ``asked``)."""

    asked: float
    """``time.monotonic()`` when the renewal was sent: the leases are trusted from there."""
    renewed: dict[str, int]
    """Session id -> epoch, extended."""
    lost: dict[str, int]
    """Session id -> epoch, held by another instance now."""


@dataclass(frozen=True)
class FlushSummaries:
    """Timer tick: write the session summaries that have come due."""


@dataclass(frozen=True)
class ReleaseEvents:
    """Timer tick: events held for their session's next checkpoint longer than the linger
    go into the next batch on their own (actors.persistence.linger)."""


@dataclass(frozen=True)
class RetryBacklog:
    """Timer tick: try the database backlog again."""


@dataclass(frozen=True)
class GetPersistenceStats:
    """Ask for counters: batches, records, backlog, latency histogram."""

    reply: Reply
    """Answered with a stats dict."""
    with_samples: bool = False
    """Also copy the recent ack latencies (up to 20,000; benchmarks only)."""


__all__ = [
    "AdvanceSession",
    "CancelSession",
    "CheckpointPersisted",
    "CheckpointReached",
    "ControlSession",
    "EventsEmitted",
    "FlushPersistence",
    "FlushSummaries",
    "ReleaseEvents",
    "GetPersistenceStats",
    "LeaseGranted",
    "LeaseLost",
    "PauseSession",
    "LeasesRenewed",
    "RenewLeases",
    "ReleaseManuscript",
    "ReserveManuscript",
    "RetryBacklog",
    "SessionFinished",
    "StartSession",
    "StopAllSessions",
    "StopTimeout",
]
