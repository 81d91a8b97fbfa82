"""The PersistenceActor's database side: the ordered backlog and its circuit breaker.

Committed batches queue their database part here and are written in order. A batch
that fails because the database is unreachable stays at the head of the backlog and
opens the breaker: a probe thread waits for the database and then asks the actor to
retry. A batch the database refuses for what it holds (see actors.persistence.quarantine) is
written record by record around the refused ones, which are set aside, so one record
that can never be written never stops the others.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from actors.messages import RetryBacklog
from actors.persistence.quarantine import Quarantine
from actors.persistence.stats import PersistenceStats
from actors.reply import tell_quietly
from config import PersistenceConfig
from errors import DatabaseUnavailableError
from storage.base import SessionStore
from storage.records import LogEntry, PersistBatch

logger = logging.getLogger(__name__)


@dataclass
class DatabaseWork:
    """The database part of one committed batch."""

    batch: PersistBatch
    prune: dict[str, int]

    def __len__(self) -> int:
        return len(self.batch)


class BacklogWriter:
    """Mixin of the PersistenceActor: writes its backlog, opens and probes the breaker."""

    _store: SessionStore | None
    _loop: Any
    _backlog: deque[DatabaseWork]
    _probe: threading.Thread | None
    _stopping: threading.Event
    _quarantine: Quarantine
    stats: PersistenceStats
    settings: PersistenceConfig
    actor_ref: Any
    _fence: Callable[[DatabaseWork], Awaitable[None]]
    """The actor's lease check before a write (storage.leases)."""
    _lose_lease: Callable[[str], None]

    def _enqueue(self, work: DatabaseWork) -> None:
        """Queue database work; the stats show it at once (also while the breaker is open)."""
        self._backlog.append(work)
        self.stats.backlog_batches = len(self._backlog)
        self.stats.backlog_records += len(work)

    def _backlog_events(self, session_id: str, after: int) -> list[LogEntry]:
        """The events of ``session_id`` after ``after`` that wait in the backlog."""
        found = {
            entry.event_seq: entry
            for work in self._backlog
            for entry in work.batch.logs
            if entry.session_id == session_id and entry.event_seq > after
        }
        return [found[seq] for seq in sorted(found)]

    def _drain_backlog(self) -> None:
        """Write queued database work in order; stop at the first failure."""
        if self._store is not None and self._loop is not None:
            self._loop.run_until_complete(self._drain_async())

    async def _drain_async(self) -> None:
        if self._store is None:
            return
        while self._backlog:
            work = self._backlog[0]
            try:
                await self._fence(work)
                await self._write_refusing(work)
            except DatabaseUnavailableError as exc:
                self._open_breaker(exc)
                break
            except Exception:  # noqa: BLE001 - an unexpected failure must not kill the writer
                logger.exception("database batch failed; keeping it in the backlog")
                self._open_breaker(None)
                break
            self._backlog.popleft()
            self.stats.db_batches += 1
            if self.stats.breaker_open:
                logger.info(
                    "database reachable again; backlog draining (%d batches left)",
                    len(self._backlog),
                )
            self.stats.breaker_open = False
        self.stats.backlog_batches = len(self._backlog)
        self.stats.backlog_records = sum(len(w) for w in self._backlog)

    async def _write_refusing(self, work: DatabaseWork) -> None:
        """Write ``work``; if the database refuses some of its records, the others."""
        try:
            await self._write_database(work.batch)
        except DatabaseUnavailableError:
            raise
        except Exception as exc:  # noqa: BLE001 - encode errors, too large, write errors
            logger.warning(
                "the database refused a batch (%s: %s); isolating", type(exc).__name__, exc
            )
            await self._quarantine.write_around(work.batch, self._write_database, exc)
            self.stats.quarantined = self._quarantine.count
        assert self._store is not None
        for session_id, keep in work.prune.items():
            await self._store.prune_logs(session_id, keep)  # type: ignore[arg-type]

    async def _write_database(self, batch: PersistBatch) -> None:
        assert self._store is not None
        fenced = await self._store.write_batch(batch, self.settings.embedded_checkpoints)
        for session_id in fenced:
            self._lose_lease(session_id)

    def _open_breaker(self, exc: Exception | None) -> None:
        self.stats.db_failures += 1
        if not self.stats.breaker_open:
            logger.warning("database unavailable (%s); files stay the durable record", exc)
        self.stats.breaker_open = True
        if self._probe is None or not self._probe.is_alive():
            # Half-open probing runs on its own thread with its own client, so a dead
            # database (each attempt waits out serverSelectionTimeoutMS) never stalls the
            # acknowledgements; only a successful ping brings the backlog back here.
            self._probe = threading.Thread(
                target=self._probe_database, name="database-probe", daemon=True
            )
            self._probe.start()

    def _probe_database(self) -> None:
        """Wait until a database server accepts connections again, then retry the backlog.

        A TCP connect to the URI's servers, not a driver client: a throwaway async client
        whose monitor is cancelled mid-connect leaks its socket. A false positive costs
        one write attempt, after which the breaker opens again.
        """
        seeds = tuple(getattr(self._store, "seeds", ()))
        delay = 0.05
        while not self._stopping.wait(delay):
            if not seeds or any(_accepts_connections(host, port) for host, port in seeds):
                tell_quietly(self.actor_ref, RetryBacklog())
                return
            delay = min(2.0, delay * 2)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        if host.startswith("/"):  # a unix socket (the embedded database listens on one)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as unix:
                unix.settimeout(0.5)
                unix.connect(host)
            return True
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


__all__ = ["BacklogWriter", "DatabaseWork"]
