"""The leases the PersistenceActor holds for the sessions it writes for (storage.leases).

It renews them every third of their length (on the :class:`LeaseKeeper`'s thread), stamps
each session update with the lease epoch (the store refuses an older one), and before it
writes for a session whose lease it could not renew in time (a stall, an outage) it checks
the lease in the database. A session whose lease another instance took is fenced: its
records are dropped from the database batch, its acknowledgement says so, and its actor
stops without writing anything more.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from actors.messages import CheckpointReached, LeaseLost, LeasesRenewed, RenewLeases
from actors.persistence.backlog import DatabaseWork
from actors.persistence.keeper import HeldLease, LeaseKeeper, LeaseSettings
from actors.persistence.stats import PersistenceStats
from actors.persistence.summaries import SummarySchedule
from actors.reply import tell_quietly
from errors import DatabaseUnavailableError
from storage.base import SessionStore
from storage.records import PersistBatch

logger = logging.getLogger(__name__)


class LeaseHolder:
    """Mixin of the PersistenceActor: grants, renewals and fencing of its leases."""

    lease_settings: LeaseSettings | None
    store_factory: Callable[[], SessionStore] | None
    stats: PersistenceStats
    actor_ref: Any
    _leases: dict[str, HeldLease]
    _fenced: set[str]
    _lease_timer: threading.Timer | None
    _keeper: LeaseKeeper | None
    _loop: asyncio.AbstractEventLoop | None
    _store: SessionStore | None
    _summaries: SummarySchedule
    _open_breaker: Callable[[Exception | None], None]

    def _grant(self, session_id: str, epoch: int, granted_at: float) -> None:
        if self.lease_settings is None:
            return
        self._fenced.discard(session_id)
        self._leases[session_id] = HeldLease(
            epoch=epoch, trusted_until=granted_at + self.lease_settings.trusted_seconds
        )
        self.stats.leases = len(self._leases)
        self._arm_lease_timer()

    def _arm_lease_timer(self) -> None:
        if self.lease_settings is None or not self._leases:
            return
        if self._lease_timer is not None and self._lease_timer.is_alive():
            return
        self._lease_timer = threading.Timer(
            self.lease_settings.renew_seconds, tell_quietly, args=(self.actor_ref, RenewLeases())
        )
        self._lease_timer.daemon = True
        self._lease_timer.start()

    def _renew_leases(self) -> None:
        """Timer tick: hand every lease we hold to the keeper thread to extend.

        Renewing 1,000 leases takes the database about a second: done here it would hold
        every acknowledgement back that long, so the keeper does it with its own client.
        """
        if self.lease_settings is None or self.store_factory is None:
            return
        if self._keeper is None:
            self._keeper = LeaseKeeper(self.actor_ref, self.store_factory, self.lease_settings)
            self._keeper.start()
        if not self._keeper.busy and not self.stats.breaker_open and self._leases:
            self._keeper.renew({sid: lease.epoch for sid, lease in self._leases.items()})
        self._arm_lease_timer()

    def _leases_renewed(self, answer: LeasesRenewed) -> None:
        assert self.lease_settings is not None
        for sid, epoch in answer.renewed.items():
            lease = self._leases.get(sid)
            if lease is not None and lease.epoch == epoch:
                lease.trusted_until = answer.asked + self.lease_settings.trusted_seconds
        for sid, epoch in answer.lost.items():
            lease = self._leases.get(sid)
            if lease is not None and lease.epoch == epoch:
                self._lose_lease(sid)

    async def _renew(self, leases: dict[str, HeldLease]) -> None:
        assert self._store is not None and self.lease_settings is not None
        if not leases:
            return
        asked = time.monotonic()
        lost = await self._store.renew_leases(
            {sid: lease.epoch for sid, lease in leases.items()},
            self.lease_settings.owner,
            self.lease_settings.ttl_seconds,
        )
        for sid, lease in leases.items():
            if sid in lost:
                self._lose_lease(sid)
            else:
                lease.trusted_until = asked + self.lease_settings.trusted_seconds

    def _confirm_leases(self, checkpoints: list[CheckpointReached]) -> None:
        """Before anything of a batch is written: renew the leases it relies on that we
        could not renew in time, so a session taken over meanwhile writes no file either."""
        if not self._leases or self._loop is None or self.stats.breaker_open:
            return
        now = time.monotonic()
        doubtful: dict[str, HeldLease] = {
            m.session_id: lease
            for m in checkpoints
            if (lease := self._leases.get(m.session_id)) is not None and lease.trusted_until < now
        }
        if not doubtful:
            return
        try:
            self._loop.run_until_complete(self._renew(doubtful))
        except DatabaseUnavailableError as exc:
            self._open_breaker(exc)

    async def _fence(self, work: DatabaseWork) -> None:
        """Before writing, make sure we still hold the leases we could not renew in time."""
        if self.lease_settings is None or not self._leases:
            return
        now = time.monotonic()
        batch = work.batch
        sessions: set[str] = {cp.session_id for cp in batch.checkpoints}
        sessions.update(batch.session_updates)
        sessions.update(entry.session_id for entry in batch.logs)
        doubtful = {
            sid: lease
            for sid in sessions
            if (lease := self._leases.get(sid)) is not None and lease.trusted_until < now
        }
        if doubtful:
            await self._renew(doubtful)
        if sessions & self._fenced:
            _drop_sessions(batch, self._fenced)

    def _lose_lease(self, session_id: str) -> None:
        """Another instance took ``session_id`` over: write nothing more for it, stop it."""
        lease = self._leases.pop(session_id, None)
        if session_id in self._fenced:
            return
        self._fenced.add(session_id)
        self._summaries.drop(session_id)
        self.stats.leases = len(self._leases)
        self.stats.fenced_sessions += 1
        logger.warning(
            "session %s: lease lost to another instance; its writes here are fenced", session_id
        )
        if lease is not None and lease.reply_to is not None:
            tell_quietly(lease.reply_to, LeaseLost(session_id))  # type: ignore[arg-type]


def _drop_sessions(batch: PersistBatch, sessions: set[str]) -> None:
    """Remove the records of ``sessions`` from ``batch`` (fenced writers)."""
    batch.checkpoints = [cp for cp in batch.checkpoints if cp.session_id not in sessions]
    batch.logs = [entry for entry in batch.logs if entry.session_id not in sessions]
    batch.images = [image for image in batch.images if image.session_id not in sessions]
    if batch.summary_checkpoints is not None:
        batch.summary_checkpoints = [
            cp for cp in batch.summary_checkpoints if cp.session_id not in sessions
        ]
    for sid in sessions:
        batch.session_updates.pop(sid, None)
