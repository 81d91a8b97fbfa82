"""Session commands of the Engine: start, resume, pause, cancel, and the leases they take.

Each command validates its input, takes the session's lease (storage.leases) and its
manuscript's reservation (one live session per manuscript, held by the supervisor), and then
hands a ready state to the supervisor. Answers come back through :class:`Reply`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pykka

from actors.engine.loading import READ, Records
from actors.events import EventHub
from actors.messages import (
    CancelSession,
    CheckpointReached,
    ControlSession,
    LeaseGranted,
    PauseSession,
    ReleaseManuscript,
    ReserveManuscript,
    StartSession,
)
from actors.persistence import LeaseSettings
from actors.reply import Reply
from actors.state import Phase, SessionState
from config import Config
from domain import PauseReason, SessionId, SessionStatus, new_id
from domain import manuscript_id as valid_manuscript_id
from domain import session_id as valid_session_id
from errors import ConflictError, DatabaseUnavailableError, StorageError, ValidationError
from pipeline.manuscripts import Manuscript
from storage.base import SessionStore
from storage.leases import LeaseOutcome, lease_deadline

logger = logging.getLogger(__name__)


class SessionCommands:
    """Starting and steering sessions, mixed into the Engine."""

    config: Config
    store: SessionStore | None
    hub: EventHub
    persistence: pykka.ActorRef[Any] | None
    supervisor: pykka.ActorRef[Any] | None
    instance_id: str
    leases: LeaseSettings
    _starting: set[str]

    if TYPE_CHECKING:  # the other parts of the Engine

        async def load_manuscript(self, manuscript_id: str) -> Manuscript: ...
        async def load_state(
            self,
            session_id: str,
            files: Records | None = None,
            database: Records | None | object = READ,
            stored_event_seq: int | None = None,
        ) -> SessionState: ...
        async def flush(self, timeout: float = 30.0) -> int: ...

    async def start_session(
        self,
        manuscript_id: str,
        *,
        style_config: dict[str, Any] | None = None,
        max_emotional_moments: int | None = None,
        external_session_id: str = "",
        start_from_chapter: int = 1,
    ) -> dict[str, Any]:
        """Start a new session of a stored manuscript; returns its snapshot."""
        manuscript = await self.load_manuscript(manuscript_id)
        moments = max_emotional_moments or self.config.processing.default_max_moments
        if not 1 <= moments <= 20:
            raise ValidationError(
                "max_emotional_moments must be between 1 and 20",
                details={"field": "max_emotional_moments"},
            )
        numbers = [c.number for c in manuscript.chapters]
        if start_from_chapter < 1 or start_from_chapter > max(numbers):
            raise ValidationError(
                f"start_from_chapter must be between 1 and {max(numbers)}",
                details={"field": "start_from_chapter"},
            )
        state = SessionState(
            session_id=SessionId(new_id()),
            manuscript_id=valid_manuscript_id(manuscript_id),
            style_config=dict(style_config or {}),
            max_emotional_moments=moments,
            external_session_id=external_session_id,
            start_from_chapter=start_from_chapter,
            epoch=1,
            owner=self.instance_id,
        )
        # One live session per manuscript: the supervisor holds the manuscript for this
        # session before its record exists, so racing starts and restarts get a conflict.
        await self._reserve(state)
        try:
            return await self._record_and_submit(state, manuscript)
        except BaseException:
            self._release(state)
            raise

    async def _record_and_submit(
        self, state: SessionState, manuscript: Manuscript
    ) -> dict[str, Any]:
        """Make a new session's record durable, then start it."""
        # The session record is durable before anyone learns its id: a crash right after
        # the reply leaves a pending session that recovery resumes, never a dangling id.
        # It is born leased to us (epoch 1).
        assert self.persistence is not None, "engine not started"
        self.persistence.tell(LeaseGranted(state.session_id, state.epoch))
        durable = Reply.for_loop()
        self.persistence.tell(
            CheckpointReached(
                session_id=state.session_id,
                checkpoint=None,
                session_fields=state.session_fields(),
                session_file=state.session_file(),
                new_session={
                    **state.session_document(),
                    "lease_until": lease_deadline(self.leases.ttl_seconds),
                },
                ack=durable,
            )
        )
        self._starting.add(state.session_id)
        try:
            error = await durable.wait(60)
            if error is not None:
                raise StorageError(f"could not record the new session: {error}")
            return await self._submit(state, manuscript, resumed=False)
        finally:
            self._starting.discard(state.session_id)

    async def resume_session(self, session_id: str) -> dict[str, Any]:
        """Resume a paused, failed or interrupted session from its last checkpoint."""
        sid = valid_session_id(session_id)
        live = self.hub.snapshot(sid)
        if live is not None:
            return {"is_existing": True, **live}
        if sid in self._starting:
            raise ConflictError(f"session {sid} is being started; try again in a moment")
        self._starting.add(sid)
        try:
            # The lease first, then the state: read under the lease, it is final.
            epoch = await self._take_lease(sid)
            state = await self.load_state(sid)
            if (
                state.status in (SessionStatus.COMPLETED, SessionStatus.CANCELLED)
                or state.phase == Phase.DONE
            ):
                raise ConflictError(f"session {sid} is {state.status} and cannot be resumed")
            manuscript = await self.load_manuscript(state.manuscript_id)
            await self._reserve(state)  # before the lease is kept: a refusal lets it expire
            try:
                if epoch is not None:
                    state.epoch = epoch
                    self._lease_granted(sid, epoch)
                await self._record_resume(state)
                return await self._submit(state, manuscript, resumed=True)
            except BaseException:
                self._release(state)
                raise
        finally:
            self._starting.discard(sid)

    async def _record_resume(self, state: SessionState) -> None:
        """Make the resume durable before answering it. A resume writes no checkpoint: its
        status is all that records it, so a kill -9 before the session's next checkpoint
        would otherwise find the session paused by its user again, and leave it so."""
        assert self.persistence is not None, "engine not started"
        state.status = SessionStatus.PENDING
        durable = Reply.for_loop()
        self.persistence.tell(replace(CheckpointReached.status_of(state), ack=durable))
        error = await durable.wait(60)
        if error is not None:
            raise StorageError(
                f"could not record the resume of session {state.session_id}: {error}"
            )

    async def claim_session(self, session_id: str) -> int | None:
        """Take the lease of a session that is not live here (ConflictError if another
        live instance runs it); the epoch, or None without a database record."""
        return await self._take_lease(valid_session_id(session_id))

    async def _take_lease(self, sid: SessionId) -> int | None:
        """Our epoch for ``sid``; ConflictError if another live instance runs it.

        None when the database cannot tell (unreachable, or the session is in the files
        only): then the session runs unleased, on files first (guarantee 4).
        """
        outcome = await self._acquire([sid])
        if sid in outcome.refused:
            raise ConflictError(
                f"session {sid} is {outcome.refused[sid].describe()}; resume it there, or "
                "wait until that lease expires"
            )
        return outcome.granted.get(sid)

    async def _acquire(
        self, ids: list[str], known: dict[str, dict[str, Any]] | None = None
    ) -> LeaseOutcome:
        if self.store is None:
            return LeaseOutcome(granted={}, refused={}, missing=list(ids))
        try:
            return await self.store.acquire_leases(
                ids, self.instance_id, self.leases.ttl_seconds, known
            )
        except DatabaseUnavailableError:
            logger.warning("database unavailable; %d sessions run without a lease", len(ids))
            return LeaseOutcome(granted={}, refused={}, missing=list(ids))

    async def _reserve(self, state: SessionState) -> None:
        """Hold the session's manuscript for it (ManuscriptBusyError when another session of
        it is live): the supervisor allows one live session per manuscript."""
        assert self.supervisor is not None, "engine not started"
        reserved = Reply.for_loop()
        self.supervisor.tell(ReserveManuscript(state.manuscript_id, state.session_id, reserved))
        await reserved.wait(30)

    def _release(self, state: SessionState) -> None:
        """Give the manuscript back if the session did not start after all."""
        if self.supervisor is not None:
            self.supervisor.tell(ReleaseManuscript(state.session_id))

    def _lease_granted(self, sid: str, epoch: int) -> None:
        assert self.persistence is not None, "engine not started"
        self.persistence.tell(LeaseGranted(SessionId(sid), epoch))

    async def _submit(
        self, state: SessionState, manuscript: Manuscript, *, resumed: bool
    ) -> dict[str, Any]:
        assert self.supervisor is not None, "engine not started"
        reply = Reply.for_loop()
        self.supervisor.tell(
            StartSession(state=state, manuscript=manuscript, resumed=resumed, reply=reply)
        )
        result: dict[str, Any] = await reply.wait(30)
        return result

    async def pause_session(self, session_id: str) -> dict[str, Any]:
        """Ask a live session to pause at its next step boundary."""
        reply = Reply.for_loop()
        return await self._control(session_id, PauseSession(reply, PauseReason.USER), reply)

    async def cancel_session(self, session_id: str) -> dict[str, Any]:
        """Cancel a live session at its next step boundary (terminal)."""
        reply = Reply.for_loop()
        return await self._control(session_id, CancelSession(reply), reply)

    async def _control(
        self, session_id: str, command: PauseSession | CancelSession, reply: Reply
    ) -> dict[str, Any]:
        if self.supervisor is None:
            raise ConflictError("the engine is not running")
        sid = valid_session_id(session_id)
        self.supervisor.tell(ControlSession(sid, command))
        result: dict[str, Any] = await reply.wait(30)
        return result

    async def cancel_stopped_session(self, session_id: str) -> dict[str, Any]:
        """Cancel a session that is not live (paused, failed, interrupted): it can never resume.

        A live session is cancelled through its actor instead (:meth:`cancel_session`).
        """
        sid = valid_session_id(session_id)
        if self.hub.snapshot(sid) is not None:
            return await self.cancel_session(sid)
        epoch = await self._take_lease(sid)
        state = await self.load_state(sid)
        if state.status.is_terminal or state.phase == Phase.DONE:
            raise ConflictError(f"session {sid} is {state.status} and cannot be cancelled")
        if epoch is not None:
            state.epoch = epoch
            self._lease_granted(sid, epoch)  # released by the cancelled status below
        state.status = SessionStatus.CANCELLED
        assert self.persistence is not None, "engine not started"
        self.persistence.tell(CheckpointReached.status_of(state))
        await self.flush()
        logger.info("session %s cancelled while %s", sid, "stopped")
        return state.snapshot()

    def live_snapshot(self, session_id: str) -> dict[str, Any] | None:
        """The live snapshot of a running or queued session (memory only, no I/O)."""
        return self.hub.snapshot(session_id)
