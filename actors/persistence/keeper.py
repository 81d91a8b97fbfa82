"""Leases as the PersistenceActor keeps them: settings, the held ones, and their renewal.

Renewing 1,000 leases takes the database about a second: the :class:`LeaseKeeper` does it
on its own thread, event loop and database client, so acknowledgements never wait for it
(storage.leases has the lease rules themselves).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pykka

from actors.messages import LeasesRenewed
from actors.reply import tell_quietly
from storage.base import LeaseStore
from storage.database import resolve_store

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSettings:
    """Who we are and how long a lease lasts (processing.instance_id, lease_seconds)."""

    owner: str
    ttl_seconds: float

    @property
    def trusted_seconds(self) -> float:
        """How long after a grant or renewal we write without asking the database."""
        return self.ttl_seconds * 2 / 3

    @property
    def renew_seconds(self) -> float:
        """Renewal period."""
        return self.ttl_seconds / 3


@dataclass
class HeldLease:
    """A lease this instance holds for one session, as the PersistenceActor sees it."""

    epoch: int
    trusted_until: float
    reply_to: Any = None


class LeaseKeeper:
    """Renews leases on its own thread, loop and database client; answers the actor."""

    def __init__(
        self,
        actor: pykka.ActorRef[Any],
        store_factory: Callable[[], LeaseStore],
        settings: LeaseSettings,
    ) -> None:
        self._actor = actor
        self._store_factory = store_factory
        self._settings = settings
        self._requests: queue.SimpleQueue[dict[str, int] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
        self.busy = False
        """True from a request until its answer is sent (read on the actor's thread)."""

    def start(self) -> None:
        self._thread.start()

    def renew(self, epochs: dict[str, int]) -> None:
        self.busy = True
        self._requests.put(epochs)

    def stop(self) -> None:
        self._requests.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        store: LeaseStore | None = None
        try:
            store = loop.run_until_complete(resolve_store(self._store_factory()))
            while (epochs := self._requests.get()) is not None:
                asked = time.monotonic()
                try:
                    lost = loop.run_until_complete(
                        store.renew_leases(epochs, self._settings.owner, self._settings.ttl_seconds)
                    )
                except Exception as exc:  # noqa: BLE001 - a lease not renewed is checked before writing
                    logger.warning("could not renew %d leases: %s", len(epochs), exc)
                    answer = LeasesRenewed(asked, {}, {})
                else:
                    answer = LeasesRenewed(
                        asked,
                        {sid: e for sid, e in epochs.items() if sid not in lost},
                        {sid: e for sid, e in epochs.items() if sid in lost},
                    )
                self.busy = False
                tell_quietly(self._actor, answer)
        finally:
            if store is not None:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(store.close())
            close_loop(loop)


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Close a private loop as ``asyncio.run`` does: cancel and drain what the driver left."""
    try:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        if pending:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


__all__ = ["HeldLease", "LeaseKeeper", "LeaseSettings", "close_loop"]
