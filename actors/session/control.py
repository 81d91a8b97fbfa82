"""Between steps: pause and cancel requests, retries of a failed step, and the session's end.

Requests are only noted when they arrive; the session acts on them at the next step
boundary (``_advance``), and waiting out a retry's backoff counts as one.
"""

from __future__ import annotations

import logging
import threading

from actors.messages import AdvanceSession, SessionFinished
from actors.reply import Reply, tell_quietly
from actors.session.checkpoints import CheckpointSending
from actors.state import NEXT_ACTION
from domain import CheckpointType, EventType, PauseReason, SessionStatus
from storage.records import LogEntry

logger = logging.getLogger(__name__)


class SessionControl(CheckpointSending):
    """Steering a session between its steps, and ending it."""

    def _request_pause(self, reason: PauseReason, reply: Reply | None) -> None:
        # A user's pause outweighs a shutdown's: it must not resume by itself.
        if not self._pause_requested or reason == PauseReason.USER:
            self._pause_reason = reason
        self._pause_requested = True
        self._publish_snapshot(pause_requested=True)
        if reply is not None:
            reply.set_result(self._snapshot())
        self._act_now_if_idle()

    def _request_cancel(self, reply: Reply | None) -> None:
        self._cancel_requested = True
        self._publish_snapshot(cancel_requested=True)
        if reply is not None:
            reply.set_result(self._snapshot())
        self._act_now_if_idle()

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
        message = f"{type(exc).__name__}: {exc}"
        if self._attempt < self.settings.step_attempts:
            self._retry_later(message)
        else:
            self._record_failure(message)

    def _retry_later(self, message: str) -> None:
        """Run the failed step again after a backoff that doubles with each attempt."""
        state = self.state
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

    def _record_failure(self, message: str) -> None:
        """The step failed every attempt: the session fails (resumably) at this checkpoint."""
        state = self.state
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
        self._announce_end(status, events)
        self.actor_ref.stop(block=False)

    def _announce_end(self, status: SessionStatus, events: tuple[LogEntry, ...]) -> None:
        """The supervisor publishes a finished session's last events; alone, publish them."""
        if self.supervisor is not None:
            self.supervisor.tell(SessionFinished(self.state.session_id, status, events))
        else:
            self.hub.publish(events)
