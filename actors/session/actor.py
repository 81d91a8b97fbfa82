"""SessionActor: the pykka actor put together from the layers of :mod:`actors.session`.

Here are its lifecycle hooks and its mailbox; what a message sets going lives in the
layers: :mod:`.steps`, :mod:`.control`, :mod:`.checkpoints`, :mod:`.events`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import replace
from typing import Any

import pykka

from actors.messages import (
    AdvanceSession,
    CancelSession,
    CheckpointPersisted,
    CheckpointReached,
    LeaseLost,
    PauseSession,
)
from actors.session.checkpoints import CheckpointSending
from actors.session.control import SessionControl
from actors.session.events import SessionEvents
from actors.session.steps import SessionSteps
from domain import EventType, SessionStatus

logger = logging.getLogger(__name__)


class SessionActor(
    SessionSteps, SessionControl, CheckpointSending, SessionEvents, pykka.ThreadingActor
):
    """Runs one ProcessingSession through the spec's steps."""

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
            self.persistence.tell(replace(CheckpointReached.status_of(state), events=events))
        self._announce_end(SessionStatus.FAILED, events)

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
                self._request_pause(reason, reply)
            case CancelSession(reply=reply):
                self._request_cancel(reply)
            case _:
                return super().on_receive(message)
        return None
