"""The Engine: the actors, stores and providers wired together, behind async methods.

The web app and the CLI hold one Engine. Its methods run on the asyncio loop and
talk to actors only by message, receiving answers through :class:`Reply` (never a
pykka future on the loop). Loading what a resume needs (session record, checkpoints,
manuscript) is async I/O done here, before the supervisor gets a ready state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pykka

from actors.events import EventHub
from actors.messages import (
    CheckpointReached,
    ControlSession,
    FlushPersistence,
    GetPersistenceStats,
    LeaseGranted,
    ReleaseManuscript,
    ReserveManuscript,
    StartSession,
    StopAllSessions,
)
from actors.operations import OperatorCommands
from actors.persistence import LeaseSettings, PersistenceActor
from actors.reply import Reply
from actors.session import SessionSettings
from actors.state import Phase, SessionState
from actors.supervisor import SessionSupervisor, SupervisorSettings
from config import Config
from domain import (
    CheckpointType,
    ManuscriptId,
    PauseReason,
    SessionId,
    SessionStatus,
    new_id,
    utcnow,
)
from domain import (
    manuscript_id as valid_manuscript_id,
)
from domain import (
    session_id as valid_session_id,
)
from errors import (
    ConflictError,
    DatabaseUnavailableError,
    IllustratorError,
    ManuscriptBusyError,
    NotFoundError,
    StorageError,
    ValidationError,
)
from pipeline.manuscripts import Manuscript
from pipeline.providers import Providers, build_providers
from storage.base import SessionStore
from storage.database import resolve_store
from storage.files import FileStore, ScanReport
from storage.leases import LeaseOutcome, lease_deadline, local_instance_id, takeable
from storage.reconcile import (
    ReconcileReport,
    StartupReads,
    reconcile_manuscripts,
    reconcile_session,
    try_reconcile,
)
from storage.records import Checkpoint

logger = logging.getLogger(__name__)

LIVE_STATUSES = ("pending", "queued", "running")
RECOVERY_CONCURRENCY = 32
RECOVERY_CHUNKS_IN_FLIGHT = 8
"""Chunks of RECOVERY_CONCURRENCY sessions recovered at once: the database reads of some
overlap the actor starts of others (the engine and the database share the CPUs). 1,000
sessions were all running again 3.7-4.9 s after a restart with 8 (six runs), against
5.3-6.0 s with 2 and a spread of 3.8-6.1 s with 16 (bench/restart_recovery.py)."""

Records = tuple[dict[str, Any] | None, list[Checkpoint]]
"""A session's document and checkpoints as one store (files or database) holds them."""
_READ = object()
"""``load_state(database=_READ)``: read the database record (the default)."""


class Engine(OperatorCommands):
    """Everything a server or CLI needs to run sessions."""

    def __init__(
        self,
        config: Config,
        store_factory: Callable[[], SessionStore] | None,
        *,
        providers: Providers | None = None,
        persistence_class: type[PersistenceActor] = PersistenceActor,
    ) -> None:
        self.config = config
        self.persistence_class = persistence_class
        self.output_dir = config.output_dir
        self.files = FileStore(self.output_dir, fsync=config.persistence.fsync)
        self.store_factory = store_factory
        self.store: SessionStore | None = None
        self.providers = providers or build_providers(config.providers)
        self.hub = EventHub()
        self.persistence: pykka.ActorRef[Any] | None = None
        self.supervisor: pykka.ActorRef[Any] | None = None
        self.database_ok = False
        self.last_reconcile: ReconcileReport | None = None
        self._startup_reads: StartupReads | None = None
        self._bundle_tasks: set[asyncio.Task[Any]] = set()
        self.instance_id = config.processing.instance_id or local_instance_id()
        """Our name as a lease owner (storage.leases)."""
        self.leases = LeaseSettings(self.instance_id, config.processing.lease_seconds)
        self._takeover_task: asyncio.Task[None] | None = None
        self._starting: set[str] = set()
        """Sessions between their lease and their actor: not candidates for recovery."""

    # -- lifecycle -----------------------------------------------------------------------

    async def start(
        self, database: Awaitable[Callable[[], SessionStore] | None] | None = None
    ) -> None:
        """Open the stores and start the actors (database trouble only degrades).

        ``database``, if given, yields the store factory once the database is up (an
        embedded server takes about a second to start): the engine reads its files for
        the start-up reconciliation meanwhile. It replaces the constructor's factory.
        """
        self.hub = EventHub(asyncio.get_running_loop())
        self.hub.subscribe(None, self._bundle_on_stop)
        await asyncio.to_thread(self._prepare_files)
        # Reconciliation, or else recover(), reads every file: scanned once, from now on.
        scan = asyncio.ensure_future(asyncio.to_thread(self.files.scan))
        try:
            if database is not None:
                self.store_factory = await database
            if self.store_factory is not None:
                self.store = await resolve_store(self.store_factory())
                try:
                    await self.store.ensure_indexes()
                    self.database_ok = True
                except DatabaseUnavailableError as exc:
                    logger.warning("database unavailable at start-up (%s); running on files", exc)
            if self.database_ok:
                await self._reconcile(scan)
            else:
                self._startup_reads = StartupReads(await scan, {}, reconciled=False)
        except BaseException:
            if not scan.done():
                scan.cancel()  # start-up failed; the scan's thread ends on its own
            elif not scan.cancelled():
                scan.exception()  # read, so that a failed scan is not reported twice
            raise
        processing = self.config.processing
        self.persistence = self.persistence_class.start(
            self.files, self.store_factory, self.config.persistence, self.leases
        )
        self.supervisor = SessionSupervisor.start(
            self.providers,
            self.persistence,
            self.hub,
            SupervisorSettings(
                max_concurrent_sessions=processing.max_concurrent_sessions,
                session=SessionSettings(
                    output_dir=self.output_dir,
                    step_attempts=processing.step_attempts,
                    retry_backoff_ms=processing.retry_backoff_ms,
                    max_logs=processing.max_logs_per_session,
                ),
            ),
        )

    async def _reconcile(self, scan: Awaitable[ScanReport]) -> None:
        """Level the files and the database before anything runs (see storage.reconcile)."""
        assert self.store is not None
        report = await try_reconcile(
            self.store,
            self.files,
            self._describe,
            embedded_keep=self.config.persistence.embedded_checkpoints,
            owner=self.instance_id,
            scan=scan,
        )
        if report is not None and (report.checkpoints_to_database or report.checkpoints_to_files):
            logger.info(
                "reconciled %d sessions: %d checkpoints to the database, %d to the files",
                report.sessions_checked,
                report.checkpoints_to_database,
                report.checkpoints_to_files,
            )
        if report is not None:
            # recover() runs next: what reconciliation read serves it once (see there).
            self._startup_reads, report.reads = report.reads, None
        self.last_reconcile = report
        await self._reconcile_manuscripts()

    @staticmethod
    def _describe(
        base: dict[str, Any], checkpoints: list[Checkpoint]
    ) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        return SessionState.rebuild(base, checkpoints).describe()

    async def _reconcile_manuscripts(self) -> None:
        assert self.store is not None
        try:
            await reconcile_manuscripts(self.store, self.files, self.last_reconcile)
        except DatabaseUnavailableError as exc:
            logger.warning("manuscripts not reconciled: database unavailable (%s)", exc)

    def _prepare_files(self) -> None:
        self.files.ensure_layout()
        removed = self.files.remove_stale_temp_files()
        if removed:
            logger.info("removed %d temp files left by a crash", removed)

    async def stop(self, pause_timeout: float = 30.0) -> None:
        """Pause running sessions at their next boundary, flush, and stop the actors."""
        if self._takeover_task is not None:
            self._takeover_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._takeover_task
            self._takeover_task = None
        if self.supervisor is not None:
            reply = Reply.for_loop()
            self.supervisor.tell(StopAllSessions(reply=reply, timeout=pause_timeout))
            try:
                await reply.wait(pause_timeout + 5)
            except TimeoutError:
                logger.warning("sessions did not pause within %.0fs", pause_timeout)
        await self.flush()
        if self._bundle_tasks:
            await asyncio.gather(*self._bundle_tasks, return_exceptions=True)
        for ref in (self.supervisor, self.persistence):
            if ref is not None:
                await asyncio.to_thread(_stop_actor, ref)
        self.supervisor = self.persistence = None
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def flush(self, timeout: float = 30.0) -> int:
        """Write everything pending; returns the database backlog left."""
        if self.persistence is None:
            return 0
        reply = Reply.for_loop()
        self.persistence.tell(FlushPersistence(reply))
        return int(await reply.wait(timeout))

    async def persistence_stats(self, *, with_samples: bool = False) -> dict[str, Any]:
        """Counters of the PersistenceActor."""
        assert self.persistence is not None
        reply = Reply.for_loop()
        self.persistence.tell(GetPersistenceStats(reply, with_samples))
        result: dict[str, Any] = await reply.wait(10)
        return result

    # -- manuscripts ---------------------------------------------------------------------

    async def save_manuscript(
        self, manuscript: Manuscript, manuscript_id: str | None = None
    ) -> str:
        """Store a manuscript (database and file); returns its id.

        All or nothing: if the database refuses it (anything but being unreachable, when
        the file alone is the record), the file just written is removed again.
        """
        mid = valid_manuscript_id(manuscript_id) if manuscript_id else ManuscriptId(new_id())
        path = self._manuscript_path(mid)
        existed = await asyncio.to_thread(path.exists)
        document = await asyncio.to_thread(self._write_manuscript_file, mid, manuscript)
        if self.store is not None:
            try:
                if await self.store.get_manuscript(mid) is None:
                    await self.store.create_manuscript(document)
            except DatabaseUnavailableError:
                logger.warning("manuscript %s stored in files only (database unavailable)", mid)
            except Exception:
                if not existed:
                    await asyncio.to_thread(path.unlink, missing_ok=True)
                raise
        return mid

    def _write_manuscript_file(self, mid: ManuscriptId, manuscript: Manuscript) -> dict[str, Any]:
        document = {"_id": mid, "manuscript_id": mid, **manuscript.to_dict()}
        self.files.write_json(self._manuscript_path(mid), document)
        return document

    async def load_manuscript(self, manuscript_id: str) -> Manuscript:
        """A stored manuscript (database first, then its file)."""
        mid = valid_manuscript_id(manuscript_id)
        document: dict[str, Any] | None = None
        if self.store is not None:
            try:
                document = await self.store.get_manuscript(mid)
            except DatabaseUnavailableError:
                document = None
        if document is None:
            path = self._manuscript_path(mid)
            if path.exists():
                document = await asyncio.to_thread(self.files.load_json, path)
        if document is None:
            raise NotFoundError(f"manuscript {mid} not found")
        return Manuscript.from_dict(document)

    def _manuscript_path(self, mid: str) -> Path:
        return self.files.manuscript_path(mid)

    # -- sessions ------------------------------------------------------------------------

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
                return await self._submit(state, manuscript, resumed=True)
            except BaseException:
                self._release(state)
                raise
        finally:
            self._starting.discard(sid)

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
        return await self._control(session_id, "pause")

    async def cancel_session(self, session_id: str) -> dict[str, Any]:
        """Cancel a live session at its next step boundary (terminal)."""
        return await self._control(session_id, "cancel")

    async def _control(self, session_id: str, action: str) -> dict[str, Any]:
        if self.supervisor is None:
            raise ConflictError("the engine is not running")
        sid = valid_session_id(session_id)
        reply = Reply.for_loop()
        self.supervisor.tell(ControlSession(sid, action, reply))
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

    # -- loading for resume ------------------------------------------------------------------

    async def load_state(
        self,
        session_id: str,
        files: Records | None = None,
        database: Records | None | object = _READ,
        stored_event_seq: int | None = None,
    ) -> SessionState:
        """Rebuild a session's state from the newest durable record (database or files).

        ``files`` and ``database`` pass the session's records when a scan or a batched
        query already read them (``database=None``: it has no database document);
        ``stored_event_seq`` the highest event number of its stored log entries, likewise.
        """
        state, _ = await self._load_state(session_id, files, database, stored_event_seq)
        return state

    async def _load_state(
        self,
        session_id: str,
        files: Records | None,
        database: Records | None | object,
        stored_event_seq: int | None,
    ) -> tuple[SessionState, tuple[Checkpoint, ...]]:
        """:meth:`load_state`, with the checkpoints its stored summary lacks."""
        sid = valid_session_id(session_id)
        document, checkpoints = await self._load_records(sid, files, database)
        state = SessionState.rebuild(document, checkpoints)
        if stored_event_seq is None:
            stored_event_seq = await self._max_stored_event_seq(sid, state.last_event_seq)
        state.last_event_seq = max(state.last_event_seq, stored_event_seq)
        summarised = int(document.get("last_sequence_number") or 0)
        return state, tuple(cp for cp in checkpoints if cp.sequence_number > summarised)

    async def _load_records(
        self,
        sid: SessionId,
        files: Records | None = None,
        database: Records | None | object = _READ,
    ) -> tuple[dict[str, Any], list[Checkpoint]]:
        db_document: dict[str, Any] | None = None
        db_checkpoints: list[Checkpoint] = []
        if database is not _READ:
            if database is not None:
                db_document, db_checkpoints = database  # type: ignore[misc]
        elif self.store is not None:
            try:
                found = await self.store.get_session_for_resume(sid)
            except DatabaseUnavailableError:
                found = None
                logger.warning("database unavailable; resuming %s from files", sid)
            if found is not None:
                db_document, db_checkpoints = found
        if files is None:
            files = await asyncio.to_thread(self._load_files, sid)
        file_document, file_checkpoints = files
        document = db_document or file_document
        if document is None:
            raise NotFoundError(f"session {sid} not found")
        # One checkpoint per sequence: the database's, unless the files hold one of a
        # newer lease epoch (written by the current owner while the database was away).
        merged: dict[int, Checkpoint] = {}
        for cp in [*db_checkpoints, *file_checkpoints]:
            have = merged.get(cp.sequence_number)
            if have is None or cp.epoch > have.epoch:
                merged[cp.sequence_number] = cp
        ordered: list[Checkpoint] = []
        for seq in sorted(merged):
            if seq != len(ordered) + 1:
                logger.error(
                    "session %s: checkpoint %d missing; resuming from %d",
                    sid,
                    len(ordered) + 1,
                    len(ordered),
                )
                break
            if ordered and merged[seq].epoch < ordered[-1].epoch:
                # Epochs never go down along a session: this is the leftover of a writer
                # fenced by a takeover, beyond where the new owner got. It is redone.
                logger.warning(
                    "session %s: checkpoints from %d on were written under an older lease "
                    "(epoch %d < %d); resuming from %d",
                    sid,
                    seq,
                    merged[seq].epoch,
                    ordered[-1].epoch,
                    len(ordered),
                )
                break
            ordered.append(merged[seq])
        # The newer record wins for the status (e.g. a pause written while the database
        # was down).
        if (
            file_document is not None
            and db_document is not None
            and int(file_document.get("last_sequence_number") or 0)
            > int(db_document.get("last_sequence_number") or 0)
        ):
            document = {
                **db_document,
                **{k: file_document[k] for k in ("status", "error_message") if k in file_document},
            }
        return document, ordered

    def _load_files(self, sid: SessionId) -> tuple[dict[str, Any] | None, list[Checkpoint]]:
        document = self.files.load_session_file(sid)
        return document, self.files.load_checkpoints(sid)

    async def _max_stored_event_seq(self, sid: SessionId, after: int) -> int:
        if self.store is None:
            return 0
        try:
            entries = await self.store.list_logs(sid, after_event_seq=after, limit=100_000)
        except DatabaseUnavailableError:
            return 0
        return max((e.event_seq for e in entries), default=0)

    # -- start-up recovery ---------------------------------------------------------------------

    async def recover(
        self, auto_resume: bool | None = None, *, takeover: bool = False
    ) -> list[str]:
        """Sessions that were live when their instance died become interrupted (and resume).

        At start-up (``takeover=False``) every live session of the database and the files
        is a candidate; with ``takeover=True`` (the periodic check of :meth:`watch_leases`)
        only database sessions whose lease is free or expired. Either way a session is
        taken only with its lease (storage.leases): a session another live instance runs
        is left alone. Returns the ids of the interrupted sessions found.
        """
        auto = self.config.processing.auto_resume if auto_resume is None else auto_resume
        # A crash during an earlier recovery leaves sessions "interrupted" before their
        # resumed actor wrote anything: with auto-resume they are picked up again too.
        # So are the sessions the last shutdown paused (a user's pause stays paused).
        statuses = [*LIVE_STATUSES, "interrupted"] if auto else list(LIVE_STATUSES)
        if auto and not takeover:
            statuses.append("paused")
        candidates: set[str] = set()
        known: dict[str, dict[str, Any]] = {}
        now = utcnow()
        if self.store is not None:
            try:
                for document in await self.store.list_sessions(statuses=statuses, limit=100_000):
                    if not _recoverable(document):
                        continue
                    if not takeover or takeable(document, self.instance_id, now):
                        candidates.add(document["session_id"])
                        known[document["session_id"]] = document
            except DatabaseUnavailableError:
                logger.warning("database unavailable during recovery; using files")
                if takeover:
                    return []
        # At start-up, reconciliation has just read the files and the database records of
        # every session: those it wrote nothing for are used as read, once. (With no
        # database at start-up, start() read the files, and nothing has written them since.)
        reads = None if takeover else self._startup_reads
        self._startup_reads = None
        if takeover:
            scan = ScanReport()
        elif reads is not None:
            scan = reads.scan
        else:
            scan = await asyncio.to_thread(self.files.scan)
        unchanged = reads.unchanged if reads is not None else {}
        for sid, document in scan.sessions.items():
            if document.get("status") in statuses and _recoverable(document):
                candidates.add(sid)
        recovered: list[str] = []
        manuscripts: dict[str, asyncio.Future[Manuscript]] = {}

        async def manuscript_of(mid: str) -> Manuscript:
            # One read per manuscript, however many of its sessions resume.
            if mid not in manuscripts:
                manuscripts[mid] = asyncio.ensure_future(self.load_manuscript(mid))
            return await manuscripts[mid]

        async def recover_one(
            sid: str, epoch: int | None, database: Any, event_seq: int | None
        ) -> None:
            try:
                if takeover and self.store is not None:
                    # Its dead owner may have made checkpoint files durable that never
                    # reached the database (a shared folder): level them first.
                    await reconcile_session(
                        self.store,
                        self.files,
                        self._describe,
                        SessionId(sid),
                        embedded_keep=self.config.persistence.embedded_checkpoints,
                    )
                    database, event_seq = _READ, None
                # The scan already read every file: no per-session directory listing (but
                # for a session reconciliation wrote files for since).
                key = SessionId(sid)
                fresh = takeover or (
                    reads is not None and reads.reconciled and sid not in unchanged
                )
                files = None if fresh else (scan.sessions.get(key), scan.checkpoints.get(key, []))
                state, behind = await self._load_state(sid, files, database, event_seq)
            except NotFoundError:
                return
            if state.phase == Phase.DONE:
                return
            if state.status == SessionStatus.PAUSED and state.pause_reason != PauseReason.SHUTDOWN:
                return  # its record said shutdown, its last checkpoint says a user paused it
            catch_up = CheckpointReached.status_of(state, behind) if behind else None
            state.status = SessionStatus.INTERRUPTED
            if epoch is not None:
                state.epoch = epoch
            assert self.persistence is not None
            recorded = not auto or state.last_sequence_number == 0 or sid not in known
            if recorded:
                # Record it as interrupted (resumable). A session about to resume with a
                # database record needs no such write: if we crash first, it is still
                # live there and the next start recovers it again.
                self.persistence.tell(CheckpointReached.status_of(state, behind))
            elif catch_up is not None:
                # Its summary lags its checkpoints (written behind them, cut by the crash;
                # start-up reconciliation left it to us): the next summary catches up,
                # with the status stored meanwhile, on the summary schedule.
                self.persistence.tell(catch_up)
            recovered.append(sid)
            logger.info(
                "session %s was interrupted at checkpoint %d (%s)%s",
                sid,
                state.last_sequence_number,
                state.last_checkpoint_type or CheckpointType.SESSION_START,
                "; taken over from a dead instance" if takeover else "",
            )
            if auto:
                try:
                    manuscript = await manuscript_of(state.manuscript_id)
                except NotFoundError:
                    logger.error(
                        "session %s: manuscript %s is gone; not resumed", sid, state.manuscript_id
                    )
                    if not recorded:  # it would stay "running" and be retried at every start
                        self.persistence.tell(CheckpointReached.status_of(state, behind))
                    return
                try:
                    await self._reserve(state)
                except ManuscriptBusyError as exc:
                    logger.warning("session %s not resumed: %s", sid, exc.message)
                    if not recorded:
                        self.persistence.tell(CheckpointReached.status_of(state, behind))
                    return
                if epoch is not None:
                    self._lease_granted(sid, epoch)
                await self._submit(state, manuscript, resumed=True)

        in_flight = asyncio.Semaphore(RECOVERY_CHUNKS_IN_FLIGHT)

        async def recover_chunk(slice_: list[str]) -> None:
            async with in_flight:
                chunk = [sid for sid in slice_ if not self._is_live_here(sid)]
                self._starting.update(chunk)
                try:
                    # Leases first; then, under them, the records and last event numbers
                    # of the whole chunk in a few queries; the driver's pool stays unstarved.
                    outcome = await self._acquire(chunk, known)
                    for refused, holder in outcome.refused.items():
                        logger.debug(
                            "session %s is %s; not recovered here", refused, holder.describe()
                        )
                    mine = [sid for sid in chunk if sid not in outcome.refused]
                    records, event_seqs = await asyncio.gather(
                        self._database_records([sid for sid in mine if sid not in unchanged]),
                        self._stored_event_seqs(mine),
                    )
                    records.update((sid, unchanged[sid]) for sid in mine if sid in unchanged)
                    await asyncio.gather(
                        *(
                            recover_one(
                                sid,
                                outcome.granted.get(sid),
                                records.get(sid, _READ),
                                None if event_seqs is None else event_seqs.get(sid, 0),
                            )
                            for sid in mine
                        )
                    )
                finally:
                    self._starting.difference_update(chunk)

        ordered = sorted(sid for sid in candidates if not self._is_live_here(sid))
        await asyncio.gather(
            *(
                recover_chunk(ordered[start : start + RECOVERY_CONCURRENCY])
                for start in range(0, len(ordered), RECOVERY_CONCURRENCY)
            )
        )
        return recovered

    def _is_live_here(self, sid: str) -> bool:
        return self.hub.snapshot(sid) is not None or sid in self._starting

    async def _database_records(self, ids: list[str]) -> dict[str, Records | None]:
        """Batched database records of ``ids`` (None: no document); {} if unreachable."""
        if self.store is None or not ids:
            return {}
        try:
            found = await self.store.get_sessions_for_resume(ids)
        except DatabaseUnavailableError:
            return {}
        return {sid: found.get(sid) for sid in ids}

    async def _stored_event_seqs(self, ids: list[str]) -> dict[str, int] | None:
        """Highest stored event number of each of ``ids`` (absent: no entries); None if
        unreachable (each session then asks on its own)."""
        if self.store is None or not ids:
            return {}
        try:
            return await self.store.last_event_seqs(ids)
        except DatabaseUnavailableError:
            return None

    def watch_leases(self) -> None:
        """Take over, every half lease, the sessions of instances that died (a server's job)."""
        if self.store is None or self._takeover_task is not None:
            return
        self._takeover_task = asyncio.get_running_loop().create_task(self._watch_leases())

    async def _watch_leases(self) -> None:
        period = self.leases.ttl_seconds / 2
        while True:
            await asyncio.sleep(period * random.uniform(0.8, 1.2))
            try:
                taken = await self.recover(takeover=True)
            except IllustratorError as exc:
                logger.warning("lease check failed: %s", exc)
                continue
            if taken:
                logger.info("took over %d sessions of instances that stopped", len(taken))


def _stop_actor(ref: pykka.ActorRef[Any]) -> None:
    with contextlib.suppress(pykka.ActorDeadError):
        ref.stop(block=True, timeout=60)


def _recoverable(record: dict[str, Any]) -> bool:
    """Whether a session record is one recovery takes up: a live or interrupted one, or
    one paused by a shutdown (never one a user paused)."""
    if record.get("status") != SessionStatus.PAUSED:
        return True
    return record.get("pause_reason") == PauseReason.SHUTDOWN
