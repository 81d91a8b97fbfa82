"""A session's state, and how it is rebuilt by folding its checkpoints.

The SessionActor owns one :class:`SessionState` and mutates it only through
:meth:`SessionState.apply`, the same function that rebuilds it from stored checkpoints
on resume. So what a resumed session believes is exactly what was made durable.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from domain import (
    CheckpointType,
    ManuscriptId,
    PauseReason,
    ProcessingStep,
    SessionId,
    SessionStatus,
    isoformat,
    utcnow,
)
from storage.records import Checkpoint, ImageRecord


class Phase:
    """Where inside the work a session stands (what the next step does)."""

    START = "start"
    LOAD = "load_manuscript"
    CHAPTER_START = "chapter_start"
    ANALYZE = "analyze"
    PROMPTS = "prompts"
    IMAGES = "images"
    CHAPTER_DONE = "chapter_done"
    COMPLETE = "complete"
    DONE = "done"


NEXT_ACTION = {
    Phase.START: "start session",
    Phase.LOAD: "load manuscript",
    Phase.CHAPTER_START: "start next chapter",
    Phase.ANALYZE: "analyze chapter",
    Phase.PROMPTS: "generate prompts",
    Phase.IMAGES: "generate images",
    Phase.CHAPTER_DONE: "complete chapter",
    Phase.COMPLETE: "complete session",
    Phase.DONE: "nothing",
}


@dataclass
class SessionState:
    """Everything a session knows about its own progress."""

    session_id: SessionId
    manuscript_id: ManuscriptId
    style_config: dict[str, Any]
    max_emotional_moments: int
    external_session_id: str = ""
    start_from_chapter: int = 1
    status: SessionStatus = SessionStatus.PENDING
    chapter_numbers: list[int] = field(default_factory=list)
    """Chapters this session illustrates, in order (set when the manuscript loads)."""
    phase: str = Phase.START
    current_chapter: int | None = None
    processed_chapters: list[int] = field(default_factory=list)
    moments: list[dict[str, Any]] = field(default_factory=list)
    """Emotional moments of the current chapter."""
    prompts: list[dict[str, Any]] = field(default_factory=list)
    """Illustration prompts of the current chapter (one per moment)."""
    chapter_images: list[dict[str, Any]] = field(default_factory=list)
    """Image records of the current chapter."""
    total_images_generated: int = 0
    last_sequence_number: int = 0
    last_event_seq: int = 0
    last_checkpoint_type: CheckpointType | None = None
    last_work_checkpoint: CheckpointType | None = None
    """The last milestone of real work (not a pause or an error): where a resume stands."""
    error_message: str | None = None
    epoch: int = 0
    """The lease epoch this run holds (storage.leases): its writes carry it as a fence."""
    owner: str | None = None
    """The instance running the session (recorded in a new session document)."""
    started_at: datetime = field(default_factory=utcnow)
    paused_at: datetime | None = None
    pause_reason: PauseReason | None = None
    """Who paused it (while paused): a shutdown's pause resumes at the next start."""
    completed_at: datetime | None = None

    # -- folding ---------------------------------------------------------------

    def apply(self, cp: Checkpoint) -> None:
        """Advance the state by one checkpoint (live, or replayed on resume)."""
        self.last_sequence_number = cp.sequence_number
        self.last_checkpoint_type = cp.checkpoint_type
        if cp.checkpoint_type not in (CheckpointType.SESSION_PAUSED, CheckpointType.ERROR_OCCURRED):
            self.last_work_checkpoint = cp.checkpoint_type
        state = cp.processing_state
        self.last_event_seq = max(self.last_event_seq, int(state.get("last_event_seq", 0)))
        data = cp.checkpoint_data
        match cp.checkpoint_type:
            case CheckpointType.SESSION_START:
                self.phase = Phase.LOAD
            case CheckpointType.MANUSCRIPT_LOADED:
                self.chapter_numbers = [int(n) for n in data.get("chapter_numbers", [])]
                self.phase = Phase.CHAPTER_START if self.remaining_chapters() else Phase.COMPLETE
            case CheckpointType.CHAPTER_START:
                self.current_chapter = cp.chapter_number
                self.moments, self.prompts, self.chapter_images = [], [], []
                self.phase = Phase.ANALYZE
            case CheckpointType.CHAPTER_ANALYZED:
                self.moments = list(data.get("emotional_moments", []))
                self.phase = Phase.PROMPTS
            case CheckpointType.PROMPTS_GENERATED:
                self.prompts = list(data.get("generated_prompts", []))
                self.phase = Phase.IMAGES if self.prompts else Phase.CHAPTER_DONE
            case CheckpointType.IMAGES_GENERATING:
                image = data.get("image")
                if image is not None:
                    self.chapter_images.append(image)
                    self.total_images_generated += 1
                if len(self.chapter_images) >= len(self.prompts):
                    self.phase = Phase.CHAPTER_DONE
            case CheckpointType.CHAPTER_COMPLETED:
                if (
                    cp.chapter_number is not None
                    and cp.chapter_number not in self.processed_chapters
                ):
                    self.processed_chapters.append(cp.chapter_number)
                self.current_chapter = None
                self.moments, self.prompts, self.chapter_images = [], [], []
                self.phase = Phase.CHAPTER_START if self.remaining_chapters() else Phase.COMPLETE
            case CheckpointType.SESSION_COMPLETED:
                self.phase = Phase.DONE
                self.status = SessionStatus.COMPLETED
                self.completed_at = cp.created_at
            case CheckpointType.SESSION_PAUSED:
                self.paused_at = cp.created_at
                # A pause checkpoint of an older version names no reason: the user's.
                self.pause_reason = PauseReason(data.get("pause_reason", PauseReason.USER))
            case CheckpointType.ERROR_OCCURRED:
                self.error_message = str(data.get("error", "")) or self.error_message

    def describe(self) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(session ``$set`` fields, session file, full new document) of this state."""
        return self.session_fields(), self.session_file(), self.session_document()

    @classmethod
    def rebuild(
        cls, session_doc: dict[str, Any], checkpoints: Iterable[Checkpoint]
    ) -> SessionState:
        """Fold stored checkpoints (in sequence order) onto a session document's basics."""
        state = cls(
            session_id=SessionId(session_doc["session_id"]),
            manuscript_id=ManuscriptId(session_doc["manuscript_id"]),
            style_config=dict(session_doc.get("style_config") or {}),
            max_emotional_moments=int(session_doc.get("max_emotional_moments", 10)),
            external_session_id=str(session_doc.get("external_session_id") or ""),
            start_from_chapter=int(session_doc.get("start_from_chapter") or 1),
        )
        started = session_doc.get("started_at")
        if isinstance(started, str):
            try:
                started = datetime.fromisoformat(started)
            except ValueError:
                started = None
        if isinstance(started, datetime):
            state.started_at = started
        state.epoch = int(session_doc.get("epoch") or 0)
        for cp in checkpoints:
            state.apply(cp)
        state.last_event_seq = max(
            state.last_event_seq, int(session_doc.get("last_event_seq") or 0)
        )
        stored_status = session_doc.get("status")
        if (
            state.phase != Phase.DONE
            and isinstance(stored_status, str)
            and stored_status in (s.value for s in SessionStatus)
        ):
            state.status = SessionStatus(stored_status)
        state.error_message = session_doc.get("error_message") or state.error_message
        reason = session_doc.get("pause_reason")
        if (
            state.status == SessionStatus.PAUSED
            and state.last_checkpoint_type != CheckpointType.SESSION_PAUSED
            and reason in tuple(PauseReason)
        ):
            # Paused while queued: no pause checkpoint, the record says who paused it.
            state.pause_reason = PauseReason(reason)
        return state

    # -- questions -------------------------------------------------------------

    def remaining_chapters(self) -> list[int]:
        """Chapters not yet completed, in order."""
        done = set(self.processed_chapters)
        return [n for n in self.chapter_numbers if n not in done]

    @property
    def total_chapters(self) -> int:
        """How many chapters this session illustrates."""
        return len(self.chapter_numbers)

    @property
    def step(self) -> ProcessingStep:
        """The spec's processing step matching the current phase."""
        return {
            Phase.START: ProcessingStep.INITIALIZING,
            Phase.LOAD: ProcessingStep.LOADING_MANUSCRIPT,
            Phase.CHAPTER_START: ProcessingStep.ANALYZING_CHAPTERS,
            Phase.ANALYZE: ProcessingStep.ANALYZING_CHAPTERS,
            Phase.PROMPTS: ProcessingStep.GENERATING_PROMPTS,
            Phase.IMAGES: ProcessingStep.GENERATING_IMAGES,
            Phase.CHAPTER_DONE: ProcessingStep.GENERATING_IMAGES,
            Phase.COMPLETE: ProcessingStep.COMPLETING_SESSION,
            Phase.DONE: ProcessingStep.COMPLETING_SESSION,
        }[self.phase]

    @property
    def progress_percent(self) -> int:
        """0..100: finished chapters plus the share of the current one."""
        if self.phase == Phase.DONE:
            return 100
        total = self.total_chapters
        if total == 0:
            return 0 if self.phase in (Phase.START, Phase.LOAD) else 99
        share = {
            Phase.ANALYZE: 0.0,
            Phase.PROMPTS: 0.2,
            Phase.IMAGES: 0.3,
            Phase.CHAPTER_DONE: 1.0,
        }.get(self.phase, 0.0)
        if self.phase == Phase.IMAGES and self.prompts:
            share = 0.3 + 0.7 * len(self.chapter_images) / len(self.prompts)
        done = len(self.processed_chapters) + (share if self.current_chapter is not None else 0.0)
        return min(99, int(100 * done / total))

    @property
    def step_status(self) -> dict[str, str]:
        """The original's four-step status: text analysis, prompts, images, output."""
        order = {
            Phase.START: 0,
            Phase.LOAD: 0,
            Phase.CHAPTER_START: 0,
            Phase.ANALYZE: 0,
            Phase.PROMPTS: 1,
            Phase.IMAGES: 2,
            Phase.CHAPTER_DONE: 2,
            Phase.COMPLETE: 3,
            Phase.DONE: 4,
        }[self.phase]
        active = self.status == SessionStatus.RUNNING
        return {
            str(i): "completed"
            if i < order
            else ("processing" if i == order and active else "pending")
            for i in range(4)
        }

    @property
    def last_completed_chapter(self) -> int:
        """The highest finished chapter number (0 if none)."""
        return max(self.processed_chapters, default=0)

    def _pause_reason(self) -> str | None:
        """The reason of the pause the session is in (None unless it is paused)."""
        if self.status != SessionStatus.PAUSED or self.pause_reason is None:
            return None
        return str(self.pause_reason)

    def session_fields(self) -> dict[str, Any]:
        """``$set`` fields of the session document for the current state."""
        return {
            "status": str(self.status),
            "progress_percent": self.progress_percent,
            "current_chapter": self.current_chapter,
            "total_chapters": self.total_chapters,
            "processed_chapters": list(self.processed_chapters),
            "last_completed_chapter": self.last_completed_chapter,
            "last_completed_step": str(self.last_checkpoint_type)
            if self.last_checkpoint_type
            else None,
            "total_images_generated": self.total_images_generated,
            "can_resume": self.status
            in (SessionStatus.PAUSED, SessionStatus.FAILED, SessionStatus.INTERRUPTED),
            "last_event_seq": self.last_event_seq,
            "error_message": self.error_message,
            "paused_at": self.paused_at,
            "pause_reason": self._pause_reason(),
            "completed_at": self.completed_at,
            "last_heartbeat": utcnow(),
            "updated_at": utcnow(),
        }

    def session_document(self) -> dict[str, Any]:
        """A full new ``sessions`` document (without embedded checkpoints)."""
        return {
            "_id": self.session_id,
            "session_id": self.session_id,
            "manuscript_id": self.manuscript_id,
            "external_session_id": self.external_session_id,
            "style_config": self.style_config,
            "max_emotional_moments": self.max_emotional_moments,
            "start_from_chapter": self.start_from_chapter,
            "started_at": self.started_at,
            "owner": self.owner,
            "lease_until": None,
            "epoch": self.epoch,
            "last_sequence_number": 0,
            "checkpoints": [],
            **self.session_fields(),
        }

    def session_file(self) -> dict[str, Any]:
        """The spec's session file format (``active_sessions/{id}.json``).

        ``generated_images`` holds the current chapter's images; every image of the
        session is in the checkpoint files and the ``images`` collection.
        """
        return {
            "session_id": self.session_id,
            "manuscript_id": self.manuscript_id,
            "external_session_id": self.external_session_id,
            "status": str(self.status),
            "progress_percent": self.progress_percent,
            "current_chapter": self.current_chapter,
            "total_chapters": self.total_chapters,
            "style_config": self.style_config,
            "max_emotional_moments": self.max_emotional_moments,
            "start_from_chapter": self.start_from_chapter,
            "last_completed_step": str(self.last_checkpoint_type)
            if self.last_checkpoint_type
            else None,
            "last_completed_chapter": self.last_completed_chapter,
            "last_sequence_number": self.last_sequence_number,
            "last_event_seq": self.last_event_seq,
            "processed_chapters": list(self.processed_chapters),
            "current_prompts": self.prompts,
            "generated_images": self.chapter_images,
            "emotional_moments": self.moments,
            "total_images_generated": self.total_images_generated,
            "can_resume": self.status
            in (SessionStatus.PAUSED, SessionStatus.FAILED, SessionStatus.INTERRUPTED),
            "error_message": self.error_message,
            "started_at": isoformat(self.started_at),
            "paused_at": isoformat(self.paused_at),
            "pause_reason": self._pause_reason(),
            "completed_at": isoformat(self.completed_at),
            "last_heartbeat": isoformat(utcnow()),
        }

    def snapshot(self) -> dict[str, Any]:
        """What status queries and WebSocket snapshots show."""
        return {
            "session_id": self.session_id,
            "manuscript_id": self.manuscript_id,
            "status": str(self.status),
            "progress": self.progress_percent,
            "current_chapter": self.current_chapter,
            "total_chapters": self.total_chapters,
            "chapters_processed": len(self.processed_chapters),
            "images_generated": self.total_images_generated,
            "step": str(self.step),
            "step_status": self.step_status,
            "last_sequence_number": self.last_sequence_number,
            "last_event_seq": self.last_event_seq,
            "last_completed_step": str(self.last_checkpoint_type)
            if self.last_checkpoint_type
            else None,
            "error_message": self.error_message,
            "started_at": isoformat(self.started_at),
        }


def image_record_from_dict(data: dict[str, Any]) -> ImageRecord:
    """An ImageRecord from its JSON form inside checkpoint data."""
    return ImageRecord.from_document(data)
