"""Persist, then proceed: a step's checkpoint is built, sent to the writer, and acknowledged.

A step ends in :meth:`CheckpointSending._checkpoint`; the checkpoint goes to the
PersistenceActor with the step's events, and the next step starts only when its
:class:`CheckpointPersisted` arrives (``_on_persisted``), so nothing a client saw as done
can be lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from actors.messages import AdvanceSession, CheckpointReached
from actors.session.events import SessionEvents
from actors.state import NEXT_ACTION, SessionState
from domain import CheckpointType, ProcessingStep, SessionStatus, utcnow
from storage.records import Checkpoint, ImageRecord

logger = logging.getLogger(__name__)


class CheckpointSending(SessionEvents):
    """Building checkpoints, sending them, and going on once they are durable."""

    def _checkpoint(
        self,
        checkpoint_type: CheckpointType,
        step: ProcessingStep,
        *,
        chapter: int | None = None,
        data: dict[str, Any] | None = None,
        images: tuple[ImageRecord, ...] = (),
        placed_files: tuple[Path, ...] = (),
    ) -> None:
        state = self.state
        cp = self._make_checkpoint(checkpoint_type, step, chapter, data or {})
        state.apply(cp)
        self._emit_progress()
        self._send(cp, images=images, placed_files=placed_files)

    def _checkpoint_terminal(
        self,
        checkpoint_type: CheckpointType,
        step: ProcessingStep,
        status: SessionStatus,
        *,
        data: dict[str, Any],
        before: Callable[[], None] | None = None,
    ) -> None:
        state = self.state
        state.status = status
        cp = self._make_checkpoint(checkpoint_type, step, state.current_chapter, data)
        state.apply(cp)
        if before is not None:
            before()
        self._emit_progress()
        self._send(cp, after=status)

    def _make_checkpoint(
        self,
        checkpoint_type: CheckpointType,
        step: ProcessingStep,
        chapter: int | None,
        data: dict[str, Any],
    ) -> Checkpoint:
        state = self.state
        return Checkpoint(
            session_id=state.session_id,
            sequence_number=state.last_sequence_number + 1,
            checkpoint_type=checkpoint_type,
            step=step,
            chapter_number=chapter,
            next_action="",  # filled below once the state has advanced
            progress_percent=0,
            checkpoint_data=data,
            epoch=state.epoch,
        )

    def _send(
        self,
        cp: Checkpoint | None,
        *,
        images: tuple[ImageRecord, ...] = (),
        after: SessionStatus | None = None,
        placed_files: tuple[Path, ...] = (),
    ) -> None:
        state = self.state
        if cp is not None:
            # The state has applied cp: record where it leads and the counters it reached.
            cp = _with_outcome(cp, state)
        fields = state.session_fields()
        new_session = (
            state.session_document() if cp is not None and cp.sequence_number == 1 else None
        )
        events = tuple(self._unsent)
        self._unsent = []
        self._awaiting = cp.sequence_number if cp is not None else 0
        self._after_ack = after
        self._pending_publish = events
        self.persistence.tell(
            CheckpointReached(
                session_id=state.session_id,
                checkpoint=cp,
                session_fields=fields,
                session_file=state.session_file(),
                images=images,
                placed_files=placed_files,
                new_session=new_session,
                reply_to=self.actor_ref,
                events=events,
            )
        )

    def _on_persisted(self, seq: int, error: str | None) -> None:
        if self._awaiting is None or seq != self._awaiting:
            logger.warning(
                "session %s: unexpected ack %s (awaiting %s)",
                self.state.session_id,
                seq,
                self._awaiting,
            )
            return
        self._awaiting = None
        if error is not None:
            # The files could not be written: nothing after the last durable checkpoint
            # may be claimed. Stop; a resume continues from what is durable.
            logger.error(
                "session %s: checkpoint %s not durable: %s", self.state.session_id, seq, error
            )
            self.state.status = SessionStatus.FAILED
            self.state.error_message = f"storage failure: {error}"
            self._finish(SessionStatus.FAILED)
            return
        events, self._pending_publish = self._pending_publish, ()
        if self._after_ack is not None:
            self._finish(self._after_ack, events)
            return
        self.hub.publish(events)
        self._publish_snapshot()
        self.actor_ref.tell(AdvanceSession())


def _with_outcome(cp: Checkpoint, state: SessionState) -> Checkpoint:
    """The checkpoint completed with the state it leads to (next action, counters)."""
    return replace(
        cp,
        next_action=NEXT_ACTION[state.phase],
        progress_percent=state.progress_percent,
        processing_state={
            "phase": state.phase,
            "current_chapter": state.current_chapter,
            "processed_chapters": list(state.processed_chapters),
            "total_chapters": state.total_chapters,
            "total_images_generated": state.total_images_generated,
            "last_event_seq": state.last_event_seq,
            "status": str(state.status),
        },
        created_at=utcnow(),
    )
