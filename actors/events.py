"""The EventHub: hands session events from actor threads to the asyncio loop.

This is the one place where events cross from actor threads into asyncio
(``loop.call_soon_threadsafe``), as Mopidy's WebSocket broadcast does. Listeners run on
the loop thread; without a loop (CLI, tests) they run in the publishing thread.
It also keeps the latest status snapshot of every live session (the "board"), so
status queries read memory instead of asking actors.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from storage.records import LogEntry

logger = logging.getLogger(__name__)

Listener = Callable[[LogEntry], None]


class EventHub:
    """Fan-out of session events plus the board of live snapshots."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._by_session: dict[str, list[Listener]] = defaultdict(list)
        self._global: list[Listener] = []
        self._snapshots: dict[str, dict[str, Any]] = {}
        self.published = 0

    # -- subscriptions (call on the loop thread, or anywhere without a loop) ----

    def subscribe(self, session_id: str | None, listener: Listener) -> Callable[[], None]:
        """Call ``listener(entry)`` for each event of ``session_id`` (None: every session).

        Returns the function that unsubscribes.
        """
        with self._lock:
            bucket = self._global if session_id is None else self._by_session[session_id]
            bucket.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in bucket:
                    bucket.remove(listener)
                if session_id is not None and not bucket:
                    self._by_session.pop(session_id, None)

        return unsubscribe

    def subscriber_count(self, session_id: str) -> int:
        """How many listeners follow one session."""
        with self._lock:
            return len(self._by_session.get(session_id, ()))

    # -- publishing (any thread) -------------------------------------------------

    def publish(self, entries: Sequence[LogEntry]) -> None:
        """Deliver events in order to their listeners."""
        if not entries:
            return
        if self._loop is None:
            self._dispatch(entries)
            return
        try:
            self._loop.call_soon_threadsafe(self._dispatch, entries)
        except RuntimeError:  # loop closed at shutdown: nobody is listening any more
            logger.debug("event loop closed; dropped %d events", len(entries))

    def _dispatch(self, entries: Sequence[LogEntry]) -> None:
        for entry in entries:
            with self._lock:
                listeners = [*self._by_session.get(entry.session_id, ()), *self._global]
            self.published += 1
            for listener in listeners:
                try:
                    listener(entry)
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
