"""The events a session emits and the snapshot of it that clients see.

Events collect as the step runs and travel with its checkpoint, so a client is told of a
step only once it is durable; events that claim nothing durable (a step starting) are
flushed at once. The snapshot shows only what is durable while a checkpoint is on its way.
"""

from __future__ import annotations

from typing import Any

from actors.messages import EventsEmitted
from actors.session.base import SessionBase
from domain import EventType
from storage.records import LogEntry


class SessionEvents(SessionBase):
    """Emitting events and publishing snapshots."""

    def _emit(
        self,
        type_: EventType,
        payload: dict[str, Any],
        *,
        level: str = "info",
        message: str = "",
        chapter: int | None = None,
    ) -> None:
        state = self.state
        state.last_event_seq += 1
        self._unsent.append(
            LogEntry(
                session_id=state.session_id,
                event_seq=state.last_event_seq,
                type=type_,
                payload=payload,
                level=level,
                message=message or payload.get("message", ""),
                chapter_number=chapter if chapter is not None else state.current_chapter,
                step_name=str(state.step),
            )
        )

    def _emit_step(self, step: int, status: str) -> None:
        """The spec's step ``step`` (0-3) is ``processing`` or ``completed``."""
        self._emit(EventType.STEP, {"step": step, "status": status})

    def _emit_log(self, level: str, message: str, *, chapter: int | None = None) -> None:
        self._emit(
            EventType.LOG,
            {"level": level, "message": message},
            level=level,
            message=message,
            chapter=chapter,
        )

    def _emit_progress(self) -> None:
        state = self.state
        self._emit(
            EventType.PROGRESS,
            {
                "progress": state.progress_percent,
                "message": f"{state.last_checkpoint_type}",
                "sequence_number": state.last_sequence_number,
                "checkpoint_type": str(state.last_checkpoint_type),
                "total_chapters": state.total_chapters,
                "chapters_processed": len(state.processed_chapters),
                "images_generated": state.total_images_generated,
                "current_chapter": state.current_chapter,
            },
        )

    def _flush_events_now(self) -> None:
        """Send events that claim nothing durable (a step starting) without waiting."""
        events = tuple(self._unsent)
        if not events:
            self._publish_snapshot()
            return
        self._unsent = []
        self.persistence.tell(EventsEmitted(entries=events, keep=self.settings.max_logs))
        self.hub.publish(events)
        self._publish_snapshot()

    def _snapshot(self, **extra: Any) -> dict[str, Any]:
        if self._awaiting is not None and self._durable_snapshot is not None:
            # A checkpoint is on its way to disk: show only what is already durable.
            snap = dict(self._durable_snapshot)
        else:
            snap = self.state.snapshot()
            self._durable_snapshot = snap
        snap = dict(snap)
        snap["pause_requested"] = self._pause_requested
        snap["cancel_requested"] = self._cancel_requested
        snap.update(extra)
        return snap

    def _publish_snapshot(self, **extra: Any) -> None:
        if not self._finished:
            self.hub.put_snapshot(self._snapshot(**extra))
