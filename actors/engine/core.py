"""The Engine: the actors, stores and providers wired together, behind async methods.

The web app and the CLI hold one Engine. Its methods run on the asyncio loop and talk to
actors only by message, receiving answers through :class:`Reply` (never a pykka future on the
loop). Its parts, one concern each: this module (start-up, shutdown, the writer's counters,
lease watching), :mod:`.manuscripts`, :mod:`.sessions` (the session commands),
:mod:`.loading` (a session's state from its records), :mod:`.recovery` (start-up recovery
and takeover) and :mod:`.operations` (bundles and verify).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

import pykka

from actors.engine.loading import SessionLoading
from actors.engine.manuscripts import ManuscriptCommands
from actors.engine.operations import OperatorCommands
from actors.engine.recovery import Recovery
from actors.engine.sessions import SessionCommands
from actors.events import EventHub
from actors.messages import FlushPersistence, GetPersistenceStats, StopAllSessions
from actors.persistence import LeaseSettings, PersistenceActor
from actors.reply import Reply
from actors.session import SessionSettings
from actors.state import SessionState
from actors.supervisor import SessionSupervisor, SupervisorSettings
from config import Config
from errors import DatabaseUnavailableError, IllustratorError
from pipeline.providers import Providers, build_providers
from storage.base import SessionStore
from storage.database import resolve_store
from storage.files import FileStore, ScanReport
from storage.leases import local_instance_id
from storage.reconcile import (
    ReconcileReport,
    StartupReads,
    reconcile_manuscripts,
    try_reconcile,
)
from storage.records import Checkpoint

logger = logging.getLogger(__name__)


class Engine(SessionCommands, ManuscriptCommands, SessionLoading, OperatorCommands):
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

    # -- recovery ------------------------------------------------------------------------

    async def recover(
        self, auto_resume: bool | None = None, *, takeover: bool = False
    ) -> list[str]:
        """Sessions that were live when their instance died become interrupted (and resume).

        At start-up (``takeover=False``) every live session of the database and the files
        is a candidate; with ``takeover=True`` (the periodic check of :meth:`watch_leases`)
        only database sessions whose lease is free or expired (see :mod:`.recovery`).
        Returns the ids of the interrupted sessions found.
        """
        auto = self.config.processing.auto_resume if auto_resume is None else auto_resume
        return await Recovery(self, auto=auto, takeover=takeover).run()

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
