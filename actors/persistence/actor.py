"""The PersistenceActor: batches, files, database work, summaries (see the package)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import pykka

from actors.messages import (
    CheckpointPersisted,
    CheckpointReached,
    EventsEmitted,
    FlushPersistence,
    FlushSummaries,
    GetPersistenceStats,
    LeaseGranted,
    LeasesRenewed,
    PendingEvents,
    ReleaseEvents,
    RenewLeases,
    RetryBacklog,
)
from actors.persistence.backlog import BacklogWriter, DatabaseWork
from actors.persistence.keeper import HeldLease, LeaseKeeper, LeaseSettings, close_loop
from actors.persistence.leases import LeaseHolder
from actors.persistence.linger import EventLinger
from actors.persistence.quarantine import Quarantine
from actors.persistence.stats import PersistenceStats, publish
from actors.persistence.summaries import LEAVING_STATUSES, Summary, SummarySchedule
from actors.reply import tell_quietly
from config import PersistenceConfig
from errors import StorageError, ValidationError
from storage.base import SessionStore
from storage.database import resolve_store
from storage.files import FileStore
from storage.records import PersistBatch

logger = logging.getLogger(__name__)

SUMMARY_IDLE_SECONDS = 0.5
"""The summary timer writes due summaries itself only after this long without a batch."""


class PersistenceActor(EventLinger, LeaseHolder, BacklogWriter, pykka.ThreadingActor):
    """Writes files and the database in batches, then acknowledges the senders."""

    def __init__(
        self,
        files: FileStore,
        store_factory: Callable[[], SessionStore] | None,
        settings: PersistenceConfig,
        leases: LeaseSettings | None = None,
    ) -> None:
        super().__init__()
        self.files = files
        self.store_factory = store_factory
        self.settings = settings
        self.lease_settings = leases
        self._leases: dict[str, HeldLease] = {}
        self._fenced: set[str] = set()
        self._lease_timer: threading.Timer | None = None
        self._keeper: LeaseKeeper | None = None
        self.stats = PersistenceStats()
        self._pending: list[CheckpointReached | EventsEmitted] = []
        self._lingering: dict[str, list[tuple[float, EventsEmitted]]] = {}
        self._linger_timer: threading.Timer | None = None
        self._backlog: deque[DatabaseWork] = deque()
        self._quarantine = Quarantine(files.root, fsync=files.fsync)
        self._probe: threading.Thread | None = None
        self._stopping = threading.Event()
        self._log_counts: dict[str, int] = {}
        self._summaries = SummarySchedule(
            settings.session_summary_interval_ms / 1000, settings.session_summaries_per_second
        )
        self._summary_timer: threading.Timer | None = None
        self._last_commit_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._store: SessionStore | None = None

    # -- lifecycle ---------------------------------------------------------------

    def on_start(self) -> None:
        # The database client lives on this thread's own loop: no sharing with the web loop.
        self._loop = asyncio.new_event_loop()
        if self.store_factory is not None:
            self._store = self._loop.run_until_complete(resolve_store(self.store_factory()))
        publish(self.actor_urn, self.stats)
        logger.info("persistence started (batch %d records)", self.settings.batch_max_records)

    def on_stop(self) -> None:
        self._stop_lingering()
        self._commit()
        for timer in (self._summary_timer, self._lease_timer):
            if timer is not None:
                timer.cancel()
        if self._keeper is not None:
            self._keeper.stop()
        self._write_summaries(self._summaries.due(force=True))
        if not self.stats.breaker_open:
            self._drain_backlog()
        if self._backlog:
            logger.warning(
                "persistence stopping with %d database records not yet written;"
                " the files hold them",
                sum(len(w) for w in self._backlog),
            )
        self._stopping.set()
        publish(self.actor_urn, None)
        if self._store is not None and self._loop is not None:
            try:
                self._loop.run_until_complete(self._store.close())
            except Exception:  # noqa: BLE001 - closing a dead client must not block shutdown
                logger.debug("closing the store failed", exc_info=True)
        if self._loop is not None:
            close_loop(self._loop)

    def on_failure(self, exception_type: Any, exception_value: Any, traceback: Any) -> None:
        logger.error(
            "persistence actor crashed", exc_info=(exception_type, exception_value, traceback)
        )

    def on_receive(self, message: Any) -> Any:
        match message:
            case EventsEmitted() if self._hold_events(message):
                pass
            case CheckpointReached() | EventsEmitted():
                if isinstance(message, CheckpointReached):
                    self._release_events(message.session_id)  # before it: they came first
                    lease = self._leases.get(message.session_id)
                    if lease is not None and message.reply_to is not None:
                        lease.reply_to = message.reply_to
                self._pending.append(message)
                if (
                    len(self._pending) >= self.settings.batch_max_records
                    or self.actor_inbox.empty()
                ):
                    self._commit()
            case FlushPersistence(reply=reply):
                self._release_events()
                self._commit()
                self._flush_summaries(force=True)
                reply.set_result(sum(len(w) for w in self._backlog))
            case PendingEvents(session_id=sid, after=after, reply=reply):
                self._release_events(sid)
                self._commit()
                self._flush_summaries(force=True)
                reply.set_result((not self.stats.breaker_open, self._backlog_events(sid, after)))
            case ReleaseEvents():
                self._release_overdue()
            case RetryBacklog():
                self._drain_backlog()
            case LeaseGranted(session_id=sid, epoch=epoch, granted_at=granted_at):
                self._grant(sid, epoch, granted_at)
            case RenewLeases():
                self._renew_leases()
            case LeasesRenewed():
                self._leases_renewed(message)
            case FlushSummaries():
                self._commit()
                if time.monotonic() - self._last_commit_at >= SUMMARY_IDLE_SECONDS:
                    # No batch went out lately to carry the due summaries: write them
                    # here. While batches go out they carry them, and a flush of its own
                    # would hold their acknowledgements back.
                    self._flush_summaries(force=False)
                self._arm_summary_timer()
            case GetPersistenceStats(reply=reply, with_samples=with_samples):
                reply.set_result(self.stats.as_dict(with_samples))
            case _:
                return super().on_receive(message)
        # Whatever message came last (a stats query, a timer tick), pending checkpoints
        # are committed as soon as the mailbox runs dry: their sessions wait for the ack.
        if self._pending and self.actor_inbox.empty():
            self._commit()
        publish(self.actor_urn, self.stats)
        return None

    # -- the batch ---------------------------------------------------------------

    def _commit(self) -> None:
        if not self._pending:
            return
        messages, self._pending = self._pending, []
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(messages))
        size_bucket = 1 << (len(messages) - 1).bit_length()
        self.stats.batch_size_counts[size_bucket] = (
            self.stats.batch_size_counts.get(size_bucket, 0) + 1
        )
        checkpoints = [m for m in messages if isinstance(m, CheckpointReached)]
        self._confirm_leases(checkpoints)
        # A fenced session's files are the new owner's now (a shared output folder).
        ours = [m for m in checkpoints if m.session_id not in self._fenced]

        summaries = self._queue_database(messages)
        # Session files: a new session's at once, the others with their summaries.
        session_files: dict[str, dict[str, Any]] = {
            m.session_id: m.session_file for m in ours if m.new_session is not None
        }
        session_files.update(
            (sm.session_id, sm.session_file) for sm in summaries if sm.session_file
        )
        if self.stats.breaker_open or self._loop is None:
            # While the breaker is open only its probe retries the database: the files
            # alone are the durable record and the acknowledgement waits for them only.
            error = self._write_files(ours, session_files)
        else:
            # Files and database are both made durable before the acknowledgement, so
            # they are written at the same time: the files' group fsync on a worker
            # thread while the database batch runs on this actor's loop.
            error = self._loop.run_until_complete(self._write_both(ours, session_files))
        now = self._last_commit_at = time.monotonic()
        for message in checkpoints:
            fenced = message.session_id in self._fenced
            outcome = (
                f"session {message.session_id} is run by another instance now (lease lost)"
                if fenced
                else error
            )
            if message.ack is not None:
                message.ack.set_result(outcome)
            if message.reply_to is None:
                continue
            seq = message.checkpoint.sequence_number if message.checkpoint else 0
            if outcome is None:
                self.stats.observe_ack((now - message.sent_at) * 1000)
                self.stats.checkpoints += 1 if message.checkpoint else 0
            try:
                message.reply_to.tell(
                    CheckpointPersisted(message.session_id, seq, outcome, fenced=fenced)
                )
            except pykka.ActorDeadError:
                logger.debug("session %s stopped before its ack", message.session_id)

    def _write_files(
        self, checkpoints: list[CheckpointReached], session_files: dict[str, Any]
    ) -> str | None:
        """Checkpoint files, then the session files summing them up (never ahead of them),
        and the folders of the images put in place for these checkpoints, in one commit."""
        placed = [path for message in checkpoints for path in message.placed_files]
        items: list[tuple[Any, dict[str, Any]]] = []
        if self.settings.write_checkpoint_files:
            items.extend(
                (self.files.checkpoint_path(cp.session_id, cp.sequence_number), cp.to_json())
                for message in checkpoints
                if (cp := message.checkpoint) is not None
            )
        items.extend(
            (self.files.session_path(sid), content) for sid, content in session_files.items()
        )
        if not items and not placed:
            return None
        try:
            self.files.write_many(items, placed)
        except (OSError, StorageError, ValidationError) as exc:  # OSError comes wrapped
            logger.error("writing %d files failed: %s", len(items), exc)
            return f"{type(exc).__name__}: {exc}"
        self.stats.files_written += len(items)
        return None

    def _queue_database(self, messages: list[CheckpointReached | EventsEmitted]) -> list[Summary]:
        """Queue the batch's database work; return the session summaries due with it."""
        work = DatabaseWork(batch=PersistBatch(summary_checkpoints=[]), prune={})
        for message in messages:
            sid = message.session_id if isinstance(message, CheckpointReached) else None
            if sid is None and isinstance(message, EventsEmitted) and message.entries:
                sid = message.entries[0].session_id
            if sid in self._fenced:
                continue  # another instance owns it now: nothing of ours may reach the database
            match message:
                case CheckpointReached():
                    if message.new_session is not None:
                        work.batch.new_sessions.append(message.new_session)
                    if message.checkpoint is not None:
                        work.batch.checkpoints.append(message.checkpoint)
                    self._summaries.hold(message)
                    work.batch.images.extend(message.images)
                    self._add_events(work, message.events, 0)
                case EventsEmitted():
                    self._add_events(work, message.entries, message.keep)
        summaries = self._summaries.due()
        self._add_summaries(work, summaries)
        if self._store is not None:
            self.stats.events += len(work.batch.logs)
            self._enqueue(work)
        self._arm_summary_timer()
        return summaries

    # -- session summaries (write-behind, .summaries) ------------------------------------

    def _add_summaries(self, work: DatabaseWork, summaries: list[Summary]) -> None:
        """Put released summaries into ``work``, with the lease epoch each relies on."""
        for summary in summaries:
            sid = summary.session_id
            assert work.batch.summary_checkpoints is not None
            work.batch.summary_checkpoints.extend(summary.checkpoints)
            work.batch.session_updates[sid] = summary.fields
            lease = self._leases.get(sid)
            if lease is not None:
                work.batch.session_epochs[sid] = lease.epoch
                if summary.status in LEAVING_STATUSES:  # nobody runs it now: release the lease
                    summary.fields.update(owner=None, lease_until=None)
                    del self._leases[sid]
                    self.stats.leases = len(self._leases)

    def _write_summaries(self, summaries: list[Summary]) -> None:
        """Write released summaries outside a batch (timer, flush, shutdown)."""
        if not summaries:
            return
        work = DatabaseWork(batch=PersistBatch(summary_checkpoints=[]), prune={})
        self._add_summaries(work, summaries)
        files = {sm.session_id: sm.session_file for sm in summaries if sm.session_file}
        self._write_files([], files)
        if self._store is not None:
            self._enqueue(work)

    def _arm_summary_timer(self) -> None:
        """Make sure held summaries are written when no batch goes out to carry them."""
        if not len(self._summaries):
            return
        if self._summary_timer is not None and self._summary_timer.is_alive():
            return
        delay = 1.0 if self._summaries.waiting() else self._summaries.interval()
        self._summary_timer = threading.Timer(
            max(delay, SUMMARY_IDLE_SECONDS), tell_quietly, args=(self.actor_ref, FlushSummaries())
        )
        self._summary_timer.daemon = True
        self._summary_timer.start()

    def _flush_summaries(self, *, force: bool) -> None:
        self._write_summaries(self._summaries.due(force=force))
        if self._backlog and not self.stats.breaker_open:
            # While the breaker is open only its probe retries: a flush (a replay, a
            # delete) never waits out a dead database's timeouts.
            self._drain_backlog()

    def _add_events(self, work: DatabaseWork, entries: tuple[Any, ...], keep: int) -> None:
        if not entries:
            return
        work.batch.logs.extend(entries)
        session_id = entries[0].session_id
        count = self._log_counts.get(session_id, 0) + len(entries)
        self._log_counts[session_id] = count
        if keep and count > keep + max(10, keep // 10):
            work.prune[session_id] = keep
            self._log_counts[session_id] = keep

    async def _write_both(
        self, checkpoints: list[CheckpointReached], session_files: dict[str, Any]
    ) -> str | None:
        error, _ = await asyncio.gather(
            asyncio.to_thread(self._write_files, checkpoints, session_files), self._drain_async()
        )
        return error
