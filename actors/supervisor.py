"""SessionSupervisor: the registry of live sessions, their cap, and their queue.

It starts a SessionActor per session (or queues it when ``max_concurrent_sessions``
are running), forwards pause/cancel, starts the next queued session when one
finishes, and pauses everything at shutdown. Loading state for a resume is async
work done before a StartSession reaches it (see ``actors.engine``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import pykka

from actors.events import EventHub
from actors.messages import (
    CheckpointReached,
    ControlSession,
    PauseSession,
    ReleaseManuscript,
    ReserveManuscript,
    SessionFinished,
    StartSession,
    StopAllSessions,
    StopTimeout,
)
from actors.reply import Reply, tell_quietly
from actors.session import SessionActor, SessionSettings
from domain import ManuscriptId, PauseReason, SessionId, SessionStatus
from errors import ConflictError, ManuscriptBusyError, NotFoundError
from pipeline.providers import Providers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SupervisorSettings:
    """Limits of the supervisor."""

    max_concurrent_sessions: int
    session: SessionSettings


class SessionSupervisor(pykka.ThreadingActor):
    """Creates, finds, limits and stops SessionActors."""

    def __init__(
        self,
        providers: Providers,
        persistence: pykka.ActorRef[Any],
        hub: EventHub,
        settings: SupervisorSettings,
    ) -> None:
        super().__init__()
        self.providers = providers
        self.persistence = persistence
        self.hub = hub
        self.settings = settings
        self._running: dict[SessionId, pykka.ActorRef[Any]] = {}
        self._queued: OrderedDict[SessionId, StartSession] = OrderedDict()
        self._stopping: list[tuple[Reply | None, threading.Timer | None]] = []
        self._holders: dict[ManuscriptId, SessionId] = {}
        """The live (running, queued or reserved) session of each manuscript: at most one."""
        self._held: dict[SessionId, ManuscriptId] = {}

    def on_receive(self, message: Any) -> Any:
        match message:
            case StartSession():
                self._start(message)
            case ReserveManuscript(manuscript_id=mid, session_id=sid, reply=reply):
                try:
                    self._hold(mid, sid)
                except ConflictError as exc:
                    reply.set_exception(exc)
                else:
                    reply.set_result(None)
            case ReleaseManuscript(session_id=sid):
                if sid not in self._running and sid not in self._queued:
                    self._let_go(sid)
            case SessionFinished(session_id=sid, events=events):
                self._running.pop(sid, None)
                self._let_go(sid)
                self.hub.drop_snapshot(sid)
                self.hub.publish(events)
                self._start_queued()
                self._answer_stop_waiters()
            case ControlSession():
                self._control(message)
            case StopAllSessions(reply=reply, timeout=timeout):
                self._stop_all(reply, timeout)
            case StopTimeout():
                self._answer_stop_waiters(force=True)
            case _:
                return super().on_receive(message)
        return None

    def on_stop(self) -> None:
        for ref in list(self._running.values()):
            ref.stop(block=False)

    # -- starting ------------------------------------------------------------------

    def _start(self, message: StartSession) -> None:
        sid = message.state.session_id
        if sid in self._running or sid in self._queued:
            if message.reply is not None:
                message.reply.set_result({"is_existing": True, **(self._snapshot_of(sid) or {})})
            return
        if self._stopping:
            if message.reply is not None:
                message.reply.set_exception(ConflictError("the server is shutting down"))
            return
        try:
            self._hold(message.state.manuscript_id, sid)
        except ConflictError as exc:
            if message.reply is not None:
                message.reply.set_exception(exc)
            return
        if len(self._running) >= self.settings.max_concurrent_sessions:
            message.state.status = SessionStatus.QUEUED
            self._queued[sid] = message
            self.hub.put_snapshot({**message.state.snapshot(), "queued": True})
            logger.info("session %s queued (%d running)", sid, len(self._running))
        else:
            self._launch(message)
        if message.reply is not None:
            message.reply.set_result({"is_existing": False, **(self._snapshot_of(sid) or {})})

    def _launch(self, message: StartSession) -> None:
        state = message.state
        # Visible as running before its thread starts, so the caller's answer has it.
        state.status = SessionStatus.RUNNING
        self.hub.put_snapshot(
            {**state.snapshot(), "pause_requested": False, "cancel_requested": False}
        )
        ref = SessionActor.start(
            state,
            message.manuscript,
            self.providers,
            self.persistence,
            self.hub,
            self.settings.session,
            supervisor=self.actor_ref,
            resumed=message.resumed,
        )
        self._running[state.session_id] = ref

    def _start_queued(self) -> None:
        while (
            self._queued
            and len(self._running) < self.settings.max_concurrent_sessions
            and not self._stopping
        ):
            _, message = self._queued.popitem(last=False)
            self._launch(message)

    # -- control -------------------------------------------------------------------

    def _control(self, message: ControlSession) -> None:
        sid, command = message.session_id, message.command
        reply = command.reply
        ref = self._running.get(sid)
        if ref is not None:
            try:
                ref.tell(command)
            except pykka.ActorDeadError:
                if reply is not None:
                    reply.set_exception(ConflictError(f"session {sid} is finishing"))
            return
        queued = self._queued.pop(sid, None)
        if queued is None:
            if reply is not None:
                reply.set_exception(NotFoundError(f"session {sid} is not running"))
            return
        # A queued session never started this run: record the new status directly.
        state = queued.state
        if isinstance(command, PauseSession):
            state.status = SessionStatus.PAUSED
            state.pause_reason = command.reason
        else:
            state.status = SessionStatus.CANCELLED
        self.hub.drop_snapshot(sid)
        self._let_go(sid)
        self.persistence.tell(CheckpointReached.status_of(state))
        if reply is not None:
            reply.set_result(state.snapshot())

    # -- one live session per manuscript -------------------------------------------------

    def _hold(self, mid: ManuscriptId, sid: SessionId) -> None:
        """Make ``sid`` the live session of ``mid``; ManuscriptBusyError if another one is."""
        holder = self._holders.setdefault(mid, sid)
        if holder != sid:
            raise ManuscriptBusyError(mid, holder)
        self._held[sid] = mid

    def _let_go(self, sid: SessionId) -> None:
        """``sid`` is no longer live: its manuscript is free."""
        mid = self._held.pop(sid, None)
        if mid is not None and self._holders.get(mid) == sid:
            del self._holders[mid]

    def _snapshot_of(self, sid: SessionId) -> dict[str, Any] | None:
        snapshot = self.hub.snapshot(sid)
        if snapshot is None and sid in self._queued:
            snapshot = self._queued[sid].state.snapshot()
        return snapshot

    # -- shutdown --------------------------------------------------------------------

    def _stop_all(self, reply: Reply | None, timeout: float) -> None:
        for sid in list(self._queued):
            self._control(ControlSession(sid, PauseSession(reason=PauseReason.SHUTDOWN)))
        timer = threading.Timer(timeout, tell_quietly, args=(self.actor_ref, StopTimeout()))
        timer.daemon = True
        timer.start()
        self._stopping.append((reply, timer))
        for ref in list(self._running.values()):
            with contextlib.suppress(pykka.ActorDeadError):
                ref.tell(PauseSession(reason=PauseReason.SHUTDOWN))
        self._answer_stop_waiters()

    def _answer_stop_waiters(self, force: bool = False) -> None:
        if not self._stopping or (self._running and not force):
            return
        if self._running:
            logger.warning("%d sessions did not pause in time", len(self._running))
        for reply, timer in self._stopping:
            if timer is not None:
                timer.cancel()
            if reply is not None:
                reply.set_result(len(self._running))
        self._stopping = [(None, None)]  # stay in stopping mode: no new sessions
