"""The EventHub: hands session events from actor threads to the asyncio loop.

This is the one place where events cross from actor threads into asyncio
(``loop.call_soon_threadsafe``), as Mopidy's WebSocket broadcast does. Listeners run on
the loop thread; without a loop (CLI, tests) they run in the publishing thread.
It also keeps the latest status snapshot of every live session (the "board"), so
status queries read memory instead of asking actors.

Publishing is cheap for the actors and for the loop: events published while the loop
is busy wait in one list and are delivered together by a single loop callback, and a
listener that follows one session may take them as one :class:`EventBatch` (the
WebSockets do: a thousand subscribers then cost one write each per batch, not one per
event).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.records import LogEntry

logger = logging.getLogger(__name__)

Listener = Callable[[LogEntry], None]


@dataclass(eq=False, slots=True)
class EventBatch:
    """Events of one session delivered together, in order, by one loop callback.

    Every batch listener of the session receives the same object, so what they derive
    from the events alone (the WebSocket frames) is computed once, kept in ``shared``.
    """

    session_id: str
    """The session all ``entries`` belong to."""
    entries: list[LogEntry]
    """The events, in publishing order (never empty)."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Scratch space for listeners to share work on this batch, keyed by a name of theirs."""


BatchListener = Callable[[EventBatch], None]


class EventHub:
    """Fan-out of session events plus the board of live snapshots."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._by_session: dict[str, list[Listener]] = defaultdict(list)
        self._batches_by_session: dict[str, list[BatchListener]] = defaultdict(list)
        self._global: list[Listener] = []
        self._pending: list[LogEntry] = []
        self._dispatch_scheduled = False
        self._snapshots: dict[str, dict[str, Any]] = {}
        self.published = 0

    # -- subscriptions (call on the loop thread, or anywhere without a loop) ----

    def subscribe(self, session_id: str | None, listener: Listener) -> Callable[[], None]:
        """Call ``listener(entry)`` for each event of ``session_id`` (None: every session).

        Returns the function that unsubscribes.
        """
        if session_id is None:
            return self._add(self._global, None, listener)
        return self._add(self._by_session, session_id, listener)

    def subscribe_batches(self, session_id: str, listener: BatchListener) -> Callable[[], None]:
        """Call ``listener(batch)`` with the events of ``session_id`` delivered together.

        Returns the function that unsubscribes.
        """
        return self._add(self._batches_by_session, session_id, listener)

    def _add(self, where: Any, session_id: str | None, listener: Any) -> Callable[[], None]:
        with self._lock:
            bucket = where if session_id is None else where[session_id]
            bucket.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in bucket:
                    bucket.remove(listener)
                if session_id is not None and not bucket and where.get(session_id) is bucket:
                    del where[session_id]

        return unsubscribe

    def subscriber_count(self, session_id: str) -> int:
        """How many listeners follow one session."""
        with self._lock:
            return len(self._by_session.get(session_id, ())) + len(
                self._batches_by_session.get(session_id, ())
            )

    # -- publishing (any thread) -------------------------------------------------

    def publish(self, entries: Sequence[LogEntry]) -> None:
        """Deliver events in order to their listeners."""
        if not entries:
            return
        if self._loop is None:
            self._dispatch(list(entries))
            return
        with self._lock:
            self._pending.extend(entries)
            if self._dispatch_scheduled and not self._loop.is_closed():
                return  # the callback already on its way takes these too
            self._dispatch_scheduled = True
        try:
            self._loop.call_soon_threadsafe(self._dispatch_pending)
        except RuntimeError:  # loop closed at shutdown: nobody is listening any more
            with self._lock:
                dropped, self._pending = self._pending, []
                self._dispatch_scheduled = False
            logger.debug("event loop closed; dropped %d events", len(dropped))

    def _dispatch_pending(self) -> None:
        with self._lock:
            entries, self._pending = self._pending, []
            self._dispatch_scheduled = False
        self._dispatch(entries)

    def _dispatch(self, entries: list[LogEntry]) -> None:
        batches: dict[str, list[LogEntry]] = {}
        for entry in entries:
            with self._lock:
                listeners = [*self._by_session.get(entry.session_id, ()), *self._global]
            self.published += 1
            for listener in listeners:
                try:
                    listener(entry)
                except Exception:  # one bad listener must not starve the others
                    logger.exception("event listener failed")
            batches.setdefault(entry.session_id, []).append(entry)
        for sid, session_entries in batches.items():
            with self._lock:
                batch_listeners = [*self._batches_by_session.get(sid, ())]
            batch = EventBatch(sid, session_entries)
            for batch_listener in batch_listeners:
                try:
                    batch_listener(batch)
                except Exception:  # one bad listener must not starve the others
                    logger.exception("event listener failed")

    # -- the board of live snapshots ----------------------------------------------

    def put_snapshot(self, snapshot: dict[str, Any]) -> None:
        """Record a live session's latest snapshot (any thread)."""
        self._snapshots[snapshot["session_id"]] = snapshot

    def drop_snapshot(self, session_id: str) -> None:
        """Forget a session that is no longer live."""
        self._snapshots.pop(session_id, None)

    def snapshot(self, session_id: str) -> dict[str, Any] | None:
        """The latest snapshot of a live session, or None."""
        return self._snapshots.get(session_id)

    def snapshots(self) -> list[dict[str, Any]]:
        """Snapshots of every live session."""
        return list(self._snapshots.values())
