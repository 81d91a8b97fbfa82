"""Recovery: sessions that were live when their instance died become interrupted, and resume.

At start-up every live session of the database and the files is a candidate; in a takeover
(the periodic lease check of a server) only database sessions whose lease is free or expired.
Either way a session is taken only with its lease (storage.leases): a session another live
instance runs is left alone. One :class:`Recovery` is one pass, in named steps:

1. :meth:`Recovery.candidates` - the sessions to look at, from the database and the files;
2. :meth:`Recovery.recover_chunk` - per chunk, the leases, then the records and last event
   numbers of the whole chunk in a few queries;
3. :meth:`Recovery.recover_one` - per session, its state rebuilt and recorded as interrupted;
4. :meth:`Recovery.resume` - with auto-resume, its manuscript reserved and its actor started.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from actors.engine.loading import READ, Records
from actors.messages import CheckpointReached
from actors.state import Phase, SessionState
from domain import (
    LIVE_STATUSES,
    CheckpointType,
    PauseReason,
    SessionId,
    SessionStatus,
    utcnow,
)
from errors import DatabaseUnavailableError, ManuscriptBusyError, NotFoundError
from pipeline.manuscripts import Manuscript
from storage.files import ScanReport
from storage.leases import takeable
from storage.reconcile import StartupReads, reconcile_session
from storage.records import Checkpoint

if TYPE_CHECKING:
    from actors.engine.core import Engine

logger = logging.getLogger(__name__)

RECOVERY_CONCURRENCY = 32
RECOVERY_CHUNKS_IN_FLIGHT = 8
"""Chunks of RECOVERY_CONCURRENCY sessions recovered at once: the database reads of some
overlap the actor starts of others (the engine and the database share the CPUs). 1,000
sessions were all running again 3.7-4.9 s after a restart with 8 (six runs), against
5.3-6.0 s with 2 and a spread of 3.8-6.1 s with 16 (bench/restart_recovery.py)."""


class Recovery:
    """One recovery pass of an engine (see the module's docstring)."""

    def __init__(self, engine: Engine, *, auto: bool, takeover: bool) -> None:
        self.engine = engine
        self.auto = auto
        self.takeover = takeover
        # A crash during an earlier recovery leaves sessions "interrupted" before their
        # resumed actor wrote anything: with auto-resume they are picked up again too.
        # So are the sessions the last shutdown paused (a user's pause stays paused).
        live = [str(s) for s in LIVE_STATUSES]
        self.statuses = [*live, str(SessionStatus.INTERRUPTED)] if auto else live
        if auto and not takeover:
            self.statuses.append(str(SessionStatus.PAUSED))
        self.known: dict[str, dict[str, Any]] = {}
        """Database documents of the candidates, as listed (lease acquisition reuses them)."""
        self.recovered: list[str] = []
        # At start-up, reconciliation has just read the files and the database records of
        # every session: those it wrote nothing for are used as read, once. (With no
        # database at start-up, start() read the files, and nothing has written them since.)
        self.reads: StartupReads | None = None
        self.scan = ScanReport()
        self.unchanged: dict[str, tuple[dict[str, Any], list[Checkpoint]]] = {}
        self._manuscripts: dict[str, asyncio.Future[Manuscript]] = {}
        self._in_flight = asyncio.Semaphore(RECOVERY_CHUNKS_IN_FLIGHT)

    async def run(self) -> list[str]:
        """Recover every candidate; the ids of the interrupted sessions found."""
        candidates = await self.candidates()
        ordered = sorted(sid for sid in candidates if not self._is_live_here(sid))
        await asyncio.gather(
            *(
                self.recover_chunk(ordered[start : start + RECOVERY_CONCURRENCY])
                for start in range(0, len(ordered), RECOVERY_CONCURRENCY)
            )
        )
        return self.recovered

    # -- step 1 ------------------------------------------------------------------------

    async def candidates(self) -> set[str]:
        """The sessions of the database and (at start-up) the files that may need recovery."""
        engine = self.engine
        found: set[str] = set()
        if engine.store is not None:
            now = utcnow()
            try:
                listed = await engine.store.list_sessions(statuses=self.statuses, limit=100_000)
            except DatabaseUnavailableError:
                logger.warning("database unavailable during recovery; using files")
                if self.takeover:
                    return set()
                listed = []
            for document in listed:
                if recoverable(document) and (
                    not self.takeover or takeable(document, engine.instance_id, now)
                ):
                    found.add(document["session_id"])
                    self.known[document["session_id"]] = document
        reads, engine._startup_reads = engine._startup_reads, None
        if self.takeover:
            return found
        self.reads = reads
        if self.reads is not None:
            self.scan, self.unchanged = self.reads.scan, self.reads.unchanged
        else:
            self.scan = await asyncio.to_thread(engine.files.scan)
        for sid, document in self.scan.sessions.items():
            if document.get("status") in self.statuses and recoverable(document):
                found.add(sid)
        return found

    # -- step 2 ------------------------------------------------------------------------

    async def recover_chunk(self, slice_: list[str]) -> None:
        """Lease, read and recover one chunk of sessions."""
        engine = self.engine
        async with self._in_flight:
            chunk = [sid for sid in slice_ if not self._is_live_here(sid)]
            engine._starting.update(chunk)
            try:
                # Leases first; then, under them, the records and last event numbers of
                # the whole chunk in a few queries; the driver's pool stays unstarved.
                outcome = await engine._acquire(chunk, self.known)
                for refused, holder in outcome.refused.items():
                    logger.debug("session %s is %s; not recovered here", refused, holder.describe())
                mine = [sid for sid in chunk if sid not in outcome.refused]
                records, event_seqs = await asyncio.gather(
                    self.database_records([sid for sid in mine if sid not in self.unchanged]),
                    self.stored_event_seqs(mine),
                )
                records.update((sid, self.unchanged[sid]) for sid in mine if sid in self.unchanged)
                await asyncio.gather(
                    *(
                        self.recover_one(
                            sid,
                            outcome.granted.get(sid),
                            records.get(sid, READ),
                            None if event_seqs is None else event_seqs.get(sid, 0),
                        )
                        for sid in mine
                    )
                )
            finally:
                engine._starting.difference_update(chunk)

    async def database_records(self, ids: list[str]) -> dict[str, Records | None]:
        """Batched database records of ``ids`` (None: no document); {} if unreachable."""
        store = self.engine.store
        if store is None or not ids:
            return {}
        try:
            found = await store.get_sessions_for_resume(ids)
        except DatabaseUnavailableError:
            return {}
        return {sid: found.get(sid) for sid in ids}

    async def stored_event_seqs(self, ids: list[str]) -> dict[str, int] | None:
        """Highest stored event number of each of ``ids`` (absent: no entries); None if
        unreachable (each session then asks on its own)."""
        store = self.engine.store
        if store is None or not ids:
            return {}
        try:
            return await store.last_event_seqs(ids)
        except DatabaseUnavailableError:
            return None

    # -- step 3 ------------------------------------------------------------------------

    async def recover_one(
        self, sid: str, epoch: int | None, database: Any, event_seq: int | None
    ) -> None:
        """Rebuild one session, record it as interrupted, and resume it (auto-resume)."""
        try:
            state, behind = await self._rebuild(sid, database, event_seq)
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
        persistence = self.engine.persistence
        assert persistence is not None
        recorded = not self.auto or state.last_sequence_number == 0 or sid not in self.known
        if recorded:
            # Record it as interrupted (resumable). A session about to resume with a
            # database record needs no such write: if we crash first, it is still live
            # there and the next start recovers it again.
            persistence.tell(CheckpointReached.status_of(state, behind))
        elif catch_up is not None:
            # Its summary lags its checkpoints (written behind them, cut by the crash;
            # start-up reconciliation left it to us): the next summary catches up, with
            # the status stored meanwhile, on the summary schedule.
            persistence.tell(catch_up)
        self.recovered.append(sid)
        logger.info(
            "session %s was interrupted at checkpoint %d (%s)%s",
            sid,
            state.last_sequence_number,
            state.last_checkpoint_type or CheckpointType.SESSION_START,
            "; taken over from a dead instance" if self.takeover else "",
        )
        if self.auto:
            resumed = await self.resume(state, epoch)
            if not resumed and not recorded:
                # It would stay "running" and be retried at every start.
                persistence.tell(CheckpointReached.status_of(state, behind))

    async def _rebuild(
        self, sid: str, database: Any, event_seq: int | None
    ) -> tuple[SessionState, tuple[Checkpoint, ...]]:
        engine = self.engine
        if self.takeover and engine.store is not None:
            # Its dead owner may have made checkpoint files durable that never reached
            # the database (a shared folder): level them first.
            await reconcile_session(
                engine.store,
                engine.files,
                engine._describe,
                SessionId(sid),
                embedded_keep=engine.config.persistence.embedded_checkpoints,
            )
            database, event_seq = READ, None
        # The scan already read every file: no per-session directory listing (but for a
        # session reconciliation wrote files for since).
        key = SessionId(sid)
        fresh = self.takeover or (
            self.reads is not None and self.reads.reconciled and sid not in self.unchanged
        )
        files = None if fresh else (self.scan.sessions.get(key), self.scan.checkpoints.get(key, []))
        return await engine.load_state_and_lag(sid, files, database, event_seq)

    # -- step 4 ------------------------------------------------------------------------

    async def resume(self, state: SessionState, epoch: int | None) -> bool:
        """Start a recovered session again; False if it cannot run now."""
        engine = self.engine
        sid = state.session_id
        try:
            manuscript = await self._manuscript_of(state.manuscript_id)
        except NotFoundError:
            logger.error("session %s: manuscript %s is gone; not resumed", sid, state.manuscript_id)
            return False
        try:
            await engine._reserve(state)
        except ManuscriptBusyError as exc:
            logger.warning("session %s not resumed: %s", sid, exc.message)
            return False
        if epoch is not None:
            engine._lease_granted(sid, epoch)
        await engine._submit(state, manuscript, resumed=True)
        return True

    async def _manuscript_of(self, mid: str) -> Manuscript:
        # One read per manuscript, however many of its sessions resume.
        if mid not in self._manuscripts:
            self._manuscripts[mid] = asyncio.ensure_future(self.engine.load_manuscript(mid))
        return await self._manuscripts[mid]

    def _is_live_here(self, sid: str) -> bool:
        return self.engine.hub.snapshot(sid) is not None or sid in self.engine._starting


def recoverable(record: dict[str, Any]) -> bool:
    """Whether a session record is one recovery takes up: a live or interrupted one, or
    one paused by a shutdown (never one a user paused)."""
    if record.get("status") != SessionStatus.PAUSED:
        return True
    return record.get("pause_reason") == PauseReason.SHUTDOWN
