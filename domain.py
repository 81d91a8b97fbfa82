"""Names shared by every layer: ids, statuses, checkpoint types, processing steps.

Values are the specification's names (``docs/architecture.md``): enum values are the lower-case
spellings that appear in the session file format (``"last_completed_step": "chapter_analyzed"``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import NewType

from errors import InvalidIdError

SessionId = NewType("SessionId", str)
ManuscriptId = NewType("ManuscriptId", str)

FORMAT_VERSION = 1
"""Version stamped on every JSON file and recovery bundle we write."""


class SessionStatus(StrEnum):
    """Lifecycle of a ProcessingSession."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"

    @property
    def is_live(self) -> bool:
        """A live session has (or is waiting for) an actor working on it."""
        return self in LIVE_STATUSES

    @property
    def is_terminal(self) -> bool:
        """A terminal session never runs again."""
        return self in TERMINAL_STATUSES


LIVE_STATUSES = (SessionStatus.PENDING, SessionStatus.QUEUED, SessionStatus.RUNNING)
"""A session with (or waiting for) an actor: recovery takes these up after a crash."""
RESUMABLE_STATUSES = (SessionStatus.PAUSED, SessionStatus.FAILED, SessionStatus.INTERRUPTED)
"""A session that stopped before its end and can resume from its last checkpoint."""
TERMINAL_STATUSES = (SessionStatus.COMPLETED, SessionStatus.CANCELLED)
"""A session that never runs again."""
STOPPED_STATUSES = (
    SessionStatus.PAUSED,
    SessionStatus.COMPLETED,
    SessionStatus.FAILED,
    SessionStatus.CANCELLED,
)
"""What a run of a session ends with (its actor stops; it leaves its lease)."""
NOT_LIVE_STATUSES = tuple(s for s in SessionStatus if s not in LIVE_STATUSES)
"""Every status but the live ones."""


class PauseReason(StrEnum):
    """Who paused a session: recorded in its pause checkpoint and its records."""

    USER = "user"
    """A client or operator asked: it stays paused until someone resumes it."""
    SHUTDOWN = "shutdown"
    """The server stopped (Ctrl-C, SIGTERM): the next start resumes it
    (``processing.auto_resume``)."""


class EventType(StrEnum):
    """What a session's event (a ``logs`` record, a WebSocket frame) reports."""

    STATUS = "status"
    """The session's status changed (running, paused, cancelled...)."""
    STEP = "step"
    """One of the spec's four steps started or completed."""
    PROGRESS = "progress"
    """A checkpoint was reached: progress, counters, its sequence number."""
    LOG = "log"
    """A line of the session's log."""
    IMAGE = "image"
    """An image was made and stored."""
    COMPLETE = "complete"
    """The session illustrated every chapter."""
    ERROR = "error"
    """The session failed; it can be resumed from its last checkpoint."""


class CheckpointType(StrEnum):
    """The spec's ten checkpoint types."""

    SESSION_START = "session_start"
    MANUSCRIPT_LOADED = "manuscript_loaded"
    CHAPTER_START = "chapter_start"
    CHAPTER_ANALYZED = "chapter_analyzed"
    PROMPTS_GENERATED = "prompts_generated"
    IMAGES_GENERATING = "images_generating"
    CHAPTER_COMPLETED = "chapter_completed"
    SESSION_COMPLETED = "session_completed"
    SESSION_PAUSED = "session_paused"
    ERROR_OCCURRED = "error_occurred"


class ProcessingStep(StrEnum):
    """The spec's six processing steps."""

    INITIALIZING = "initializing"
    LOADING_MANUSCRIPT = "loading_manuscript"
    ANALYZING_CHAPTERS = "analyzing_chapters"
    GENERATING_PROMPTS = "generating_prompts"
    GENERATING_IMAGES = "generating_images"
    COMPLETING_SESSION = "completing_session"


def new_id() -> str:
    """A fresh random UUID in canonical text form."""
    return str(uuid.uuid4())


def validate_uuid(value: object, what: str = "id") -> str:
    """Return ``value`` as a canonical UUID string, or raise InvalidIdError.

    Every id is checked here before it names a record or a file, so no path is ever
    built from unvalidated input (``../../etc/passwd`` or a 10,000-character id).
    """
    if not isinstance(value, str) or len(value) != 36:
        raise InvalidIdError(f"{what} must be a UUID", details={"field": what})
    try:
        parsed = uuid.UUID(value)
    except ValueError as exc:
        raise InvalidIdError(f"{what} must be a UUID", details={"field": what}) from exc
    canonical = str(parsed)
    if canonical != value:  # one spelling per id: lower-case, hyphenated, no braces
        raise InvalidIdError(f"{what} must be a UUID", details={"field": what})
    return canonical


def session_id(value: object) -> SessionId:
    """Validate a session id."""
    return SessionId(validate_uuid(value, "session_id"))


def manuscript_id(value: object) -> ManuscriptId:
    """Validate a manuscript id."""
    return ManuscriptId(validate_uuid(value, "manuscript_id"))


def utcnow() -> datetime:
    """Timezone-aware now, truncated to milliseconds (what BSON keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def isoformat(value: datetime | None) -> str | None:
    """ISO-8601 text for JSON, tolerant of the naive datetimes some drivers return."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.isoformat()
