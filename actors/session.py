"""SessionActor: runs one session, one message per step, persist-then-proceed.

It owns its :class:`SessionState`; nothing else mutates it. Each step ends in a
checkpoint sent to the PersistenceActor, and the next step starts only when the
acknowledgement (:class:`CheckpointPersisted`) arrives, so ``Pause``, ``Cancel`` and
status queries interleave between steps and nothing a client saw as done can be lost.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pykka

from actors.events import EventHub
from actors.messages import (
    AdvanceSession,
    CancelSession,
    CheckpointPersisted,
    CheckpointReached,
    EventsEmitted,
    LeaseLost,
    PauseSession,
    SessionFinished,
)
from actors.reply import tell_quietly
from actors.state import NEXT_ACTION, Phase, SessionState
from domain import (
    CheckpointType,
    EventType,
    PauseReason,
    ProcessingStep,
    SessionStatus,
    isoformat,
    utcnow,
)
from pipeline.analysis import EmotionalMoment
from pipeline.images import folder_sync_deferred, image_filename
from pipeline.manuscripts import Chapter, Manuscript
from pipeline.prompts import IllustrationPrompt
from pipeline.providers import Providers
from storage.atomic import make_dirs
from storage.records import Checkpoint, ImageRecord, LogEntry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionSettings:
    """What a SessionActor needs besides its state."""

    output_dir: Path
    step_attempts: int = 3
    retry_backoff_ms: int = 200
    max_logs: int = 1000


class SessionActor(pykka.ThreadingActor):
    """Runs one ProcessingSession through the spec's steps."""

    def __init__(
        self,
        state: SessionState,
        manuscript: Manuscript,
        providers: Providers,
        persistence: pykka.ActorRef[Any],
        hub: EventHub,
        settings: SessionSettings,
        supervisor: pykka.ActorRef[Any] | None = None,
        resumed: bool = False,
    ) -> None:
        super().__init__()
        self.state = state
        self.manuscript = manuscript
        self.providers = providers
        self.persistence = persistence
        self.hub = hub
        self.settings = settings
        self.supervisor = supervisor
        self.resumed = resumed
        self._chapters = {c.number: c for c in manuscript.chapters}
        self._awaiting: int | None = None
        self._after_ack: SessionStatus | None = None
        self._unsent: list[LogEntry] = []
        self._pause_requested = False
        self._pause_reason = PauseReason.USER
        self._cancel_requested = False
        self._attempt = 0
        self._retry_timer: threading.Timer | None = None
        self._finished = False
        self._pending_publish: tuple[LogEntry, ...] = ()
        self._durable_snapshot: dict[str, Any] | None = None
        self._image_folder_ready = False
        """This session's image folder exists and its entry is durable."""

    # -- lifecycle ---------------------------------------------------------------

    def on_start(self) -> None:
        state = self.state
        state.status = SessionStatus.RUNNING
        state.error_message = None
        if self.resumed:
            where = (
                f"chapter {state.current_chapter}, {state.last_work_checkpoint}"
                if state.current_chapter
                else str(state.last_work_checkpoint or "the start")
            )
            logger.info("Resuming session %s from %s", state.session_id, where)
            self._emit_log(
                "info", f"Resuming from {where} (checkpoint {state.last_sequence_number})"
            )
        else:
            logger.info("Starting session %s", state.session_id)
        self._emit(EventType.STATUS, {"status": "running", "message": "Processing started"})
        self._flush_events_now()
        self.actor_ref.tell(AdvanceSession())

    def on_stop(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self.hub.drop_snapshot(self.state.session_id)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        # A bug, not a provider error (those are handled per step): report, never raise.
        logger.error(
            "session %s crashed",
            self.state.session_id,
            exc_info=(exception_type, exception_value, traceback),
        )
        self.hub.drop_snapshot(self.state.session_id)
        # Record the failure (resumable: the checkpoints stay authoritative) and tell
        # clients, so the session is not left "running" until the next restart.
        state = self.state
        state.status = SessionStatus.FAILED
        state.error_message = f"internal error: {exception_type.__name__}: {exception_value}"
        self._unsent = []
        self._emit(EventType.ERROR, {"error": state.error_message})
        events = tuple(self._unsent)
        with contextlib.suppress(pykka.ActorDeadError):
            self.persistence.tell(
                CheckpointReached(
                    session_id=state.session_id,
                    checkpoint=None,
                    session_fields=state.session_fields(),
                    session_file=state.session_file(),
                    events=events,
                )
            )
        if self.supervisor is not None:
            self.supervisor.tell(SessionFinished(state.session_id, SessionStatus.FAILED, events))
        else:
            self.hub.publish(events)

    def on_receive(self, message: Any) -> Any:
        match message:
            case AdvanceSession():
                self._retry_timer = None
                if self._awaiting is None and not self._finished:
                    self._advance()
            case CheckpointPersisted(fenced=True):
                self._lease_lost()
            case LeaseLost():
                self._lease_lost()
            case CheckpointPersisted(sequence_number=seq, error=error):
                self._on_persisted(seq, error)
            case PauseSession(reply=reply, reason=reason):
                # A user's pause outweighs a shutdown's: it must not resume by itself.
                if not self._pause_requested or reason == PauseReason.USER:
                    self._pause_reason = reason
                self._pause_requested = True
                self._publish_snapshot(pause_requested=True)
                if reply is not None:
                    reply.set_result(self._snapshot())
                self._act_now_if_idle()
            case CancelSession(reply=reply):
                self._cancel_requested = True
                self._publish_snapshot(cancel_requested=True)
                if reply is not None:
                    reply.set_result(self._snapshot())
                self._act_now_if_idle()
            case _:
                return super().on_receive(message)
        return None

    # -- stepping ----------------------------------------------------------------

    def _act_now_if_idle(self) -> None:
        """Waiting out a retry backoff counts as a boundary: pause/cancel at once."""
        if self._retry_timer is not None and self._awaiting is None:
            self._retry_timer.cancel()
            self._retry_timer = None
            self._advance()

    def _advance(self) -> None:
        if self._cancel_requested:
            self._finish_cancelled()
            return
        if self._pause_requested:
            self._pause()
            return
        try:
            self._run_step()
        except Exception as exc:  # noqa: BLE001 - every step failure is retried, then recorded
            self._step_failed(exc)
        else:
            self._attempt = 0

    def _run_step(self) -> None:
        state = self.state
        match state.phase:
            case Phase.START:
                # The basics travel in the first checkpoint, so its file alone can rebuild
                # the session.
                self._checkpoint(
                    CheckpointType.SESSION_START,
                    ProcessingStep.INITIALIZING,
                    data={
                        "manuscript_id": state.manuscript_id,
                        "external_session_id": state.external_session_id,
                        "style_config": state.style_config,
                        "max_emotional_moments": state.max_emotional_moments,
                        "start_from_chapter": state.start_from_chapter,
                        "started_at": isoformat(state.started_at),
                    },
                )
            case Phase.LOAD:
                self._load_manuscript()
            case Phase.CHAPTER_START:
                self._start_chapter()
            case Phase.ANALYZE:
                self._analyze_chapter()
            case Phase.PROMPTS:
                self._generate_prompts()
            case Phase.IMAGES:
                self._generate_next_image()
            case Phase.CHAPTER_DONE:
                self._complete_chapter()
            case Phase.COMPLETE:
                self._complete_session()
            case Phase.DONE:
                self._finish(SessionStatus.COMPLETED)

    def _load_manuscript(self) -> None:
        first = self.state.start_from_chapter
        numbers = [c.number for c in self.manuscript.chapters if c.number >= first]
        self._emit_step(0, "processing")
        self._emit_log(
            "info", f"Loaded manuscript '{self.manuscript.title}' ({len(numbers)} chapters)"
        )
        self._checkpoint(
            CheckpointType.MANUSCRIPT_LOADED,
            ProcessingStep.LOADING_MANUSCRIPT,
            data={
                "chapter_numbers": numbers,
                "title": self.manuscript.title,
                "total_chapters": len(numbers),
            },
        )

    def _start_chapter(self) -> None:
        number = self.state.remaining_chapters()[0]
        chapter = self._chapters[number]
        self._emit_log("info", f"Chapter {number}: {chapter.title}", chapter=number)
        self._flush_events_now()
        self._checkpoint(
            CheckpointType.CHAPTER_START,
            ProcessingStep.ANALYZING_CHAPTERS,
            chapter=number,
            data={"chapter_title": chapter.title, "word_count": chapter.word_count},
        )

    def _analyze_chapter(self) -> None:
        chapter = self._current_chapter()
        self._emit_step(0, "processing")
        self._flush_events_now()
        moments = self.providers.analyzer.analyze(chapter, self.state.max_emotional_moments)
        self._emit_log(
            "success",
            f"Found {len(moments)} emotional moments in chapter {chapter.number}",
            chapter=chapter.number,
        )
        self._emit_step(0, "completed")
        self._checkpoint(
            CheckpointType.CHAPTER_ANALYZED,
            ProcessingStep.ANALYZING_CHAPTERS,
            chapter=chapter.number,
            data={"emotional_moments": [m.to_dict() for m in moments]},
        )

    def _generate_prompts(self) -> None:
        chapter = self._current_chapter()
        self._emit_step(1, "processing")
        self._flush_events_now()
        style = self.state.style_config
        prompts = [
            self.providers.prompt_writer.write(EmotionalMoment.from_dict(m), chapter, style)
            for m in self.state.moments
        ]
        self._emit_log(
            "success",
            f"Wrote {len(prompts)} prompts for chapter {chapter.number}",
            chapter=chapter.number,
        )
        self._emit_step(1, "completed")
        self._checkpoint(
            CheckpointType.PROMPTS_GENERATED,
            ProcessingStep.GENERATING_PROMPTS,
            chapter=chapter.number,
            data={"generated_prompts": [p.to_dict() for p in prompts]},
        )

    def _generate_next_image(self) -> None:
        state = self.state
        chapter = self._current_chapter()
        scene = len(state.chapter_images) + 1
        prompt = IllustrationPrompt.from_dict(state.prompts[scene - 1])
        moment = EmotionalMoment.from_dict(state.moments[scene - 1])
        relative = (
            Path("generated_images") / state.session_id / image_filename(chapter.number, scene)
        )
        destination = self.settings.output_dir / relative
        if scene == 1:
            self._emit_step(2, "processing")
            self._flush_events_now()
        if destination.exists():
            # Written atomically before a crash or pause cut the checkpoint off: it is
            # complete, and regenerating it would pay for the same image twice. (Its
            # folder entry is synced again with this checkpoint, below.)
            self._emit_log(
                "info",
                f"Image {relative.name} already on disk; not regenerated",
                chapter=chapter.number,
            )
        else:
            if not self._image_folder_ready:
                # Once per actor, durably: the batch syncs this folder for its images but
                # not the entry that names it, which only its creation can sync.
                make_dirs(destination.parent, fsync=True)
                self._image_folder_ready = True
            # The image's data is synced before its rename; its folder, which makes the
            # rename durable, is synced by the checkpoint's batch (one sync for all).
            with folder_sync_deferred():
                self.providers.image_generator.generate(prompt, moment, destination)
        web_url = "/" + relative.as_posix()
        record = ImageRecord(
            session_id=state.session_id,
            chapter_number=chapter.number,
            scene_number=scene,
            generation_order=state.total_images_generated + 1,
            file_path=relative.as_posix(),
            web_url=web_url,
            prompt_used=prompt.prompt,
            checkpoint_sequence=state.last_sequence_number + 1,
        )
        self._emit(
            EventType.IMAGE,
            {
                "image_url": web_url,
                "prompt": prompt.prompt,
                "chapter_number": chapter.number,
                "scene_number": scene,
            },
        )
        last = scene == len(state.prompts)
        if last:
            self._emit_step(2, "completed")
        self._checkpoint(
            CheckpointType.IMAGES_GENERATING,
            ProcessingStep.GENERATING_IMAGES,
            chapter=chapter.number,
            data={
                "image": record.to_json(),
                "scene_number": scene,
                "scenes_total": len(state.prompts),
            },
            images=(record,),
            placed_files=(destination,),
        )

    def _complete_chapter(self) -> None:
        number = self.state.current_chapter
        assert number is not None
        self._emit_log("success", f"Chapter {number} completed", chapter=number)
        self._checkpoint(
            CheckpointType.CHAPTER_COMPLETED, ProcessingStep.GENERATING_IMAGES, chapter=number
        )

    def _complete_session(self) -> None:
        state = self.state
        self._emit_step(3, "processing")
        self._flush_events_now()
        self._checkpoint_terminal(
            CheckpointType.SESSION_COMPLETED,
            ProcessingStep.COMPLETING_SESSION,
            SessionStatus.COMPLETED,
            data={"total_images_generated": state.total_images_generated},
            before=lambda: self._emit_completion(),
        )

    def _emit_completion(self) -> None:
        state = self.state
        self._emit_step(3, "completed")
        self._emit(
            EventType.COMPLETE,
            {
                "images_count": state.total_images_generated,
                "chapters_processed": len(state.processed_chapters),
                "total_chapters": state.total_chapters,
                "message": "Processing completed",
            },
        )

    def _pause(self) -> None:
        self.state.pause_reason = self._pause_reason
        self._checkpoint_terminal(
            CheckpointType.SESSION_PAUSED,
            self.state.step,
            SessionStatus.PAUSED,
            data={
                "next_action": NEXT_ACTION[self.state.phase],
                "pause_reason": str(self._pause_reason),
            },
            before=lambda: self._emit(
                EventType.STATUS,
                {
                    "status": "paused",
                    "message": "Processing paused"
                    if self._pause_reason == PauseReason.USER
                    else "Processing paused by the server's shutdown; the next start resumes it",
                    "pause_reason": str(self._pause_reason),
                },
            ),
        )

    def _finish_cancelled(self) -> None:
        state = self.state
        state.status = SessionStatus.CANCELLED
        self._emit(EventType.STATUS, {"status": "cancelled", "message": "Processing cancelled"})
        self._send(None, after=SessionStatus.CANCELLED)

    def _step_failed(self, exc: Exception) -> None:
        self._attempt += 1
        state = self.state
        message = f"{type(exc).__name__}: {exc}"
        if self._attempt < self.settings.step_attempts:
            delay = self.settings.retry_backoff_ms / 1000 * (2 ** (self._attempt - 1))
            logger.warning(
                "session %s step %s failed (attempt %d/%d), retrying in %.2fs: %s",
                state.session_id,
                state.phase,
                self._attempt,
                self.settings.step_attempts,
                delay,
                message,
            )
            self._emit_log(
                "warning",
                f"Step {state.phase} failed ({message}); retrying",
                chapter=state.current_chapter,
            )
            self._flush_events_now()
            self._retry_timer = threading.Timer(
                delay, tell_quietly, args=(self.actor_ref, AdvanceSession())
            )
            self._retry_timer.daemon = True
            self._retry_timer.start()
            return
        logger.error("session %s failed at %s: %s", state.session_id, state.phase, message)
        self._attempt = 0
        state.error_message = message

        def announce() -> None:
            self._emit(EventType.ERROR, {"error": message})
            self._emit_log("error", f"Processing failed: {message}", chapter=state.current_chapter)

        self._checkpoint_terminal(
            CheckpointType.ERROR_OCCURRED,
            state.step,
            SessionStatus.FAILED,
            data={"error": message, "failed_action": NEXT_ACTION[state.phase]},
            before=announce,
        )

    # -- checkpoints and persistence ---------------------------------------------------

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
        before: Any = None,
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

    def _lease_lost(self) -> None:
        """Another instance runs this session now: stop here and write nothing more.

        Its clients there see it go on; the durable record is the new owner's.
        """
        if self._finished:
            return
        logger.warning(
            "session %s: another instance took it over; stopping here", self.state.session_id
        )
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self._pending_publish = ()
        self._unsent = []
        self.state.status = SessionStatus.INTERRUPTED
        self._finish(SessionStatus.INTERRUPTED)

    def _finish(self, status: SessionStatus, events: tuple[LogEntry, ...] = ()) -> None:
        if self._finished:
            return
        self._finished = True
        logger.info("session %s %s", self.state.session_id, status)
        self.hub.drop_snapshot(self.state.session_id)
        if self.supervisor is not None:
            self.supervisor.tell(SessionFinished(self.state.session_id, status, events))
        else:
            self.hub.publish(events)
        self.actor_ref.stop(block=False)

    # -- events --------------------------------------------------------------------

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

    def _current_chapter(self) -> Chapter:
        number = self.state.current_chapter
        assert number is not None, "no chapter in progress"
        return self._chapters[number]


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
