"""The EventHub: hands session events from actor threads to the asyncio loop.

This is the one place where events cross from actor threads into asyncio
(``loop.call_soon_threadsafe``), as Mopidy's WebSocket broadcast does. Listeners run on
the loop thread; without a loop (CLI, tests) they run in the publishing thread.
It also keeps the latest status snapshot of every live session (the "board"), so
status queries read memory instead of asking actors.

Publishing is cheap for the actors and for the loop: events published while the loop
is busy wait in one list and are delivered together by a single loop callback. A
listener that follows one session may take them as :class:`EventBatch` es instead of one
by one (the WebSockets do: a thousand subscribers then cost one write each per batch, not
one per event). Batch listeners are called ``FANOUT_CHUNK`` at a time per loop callback,
so a fan-out to thousands never holds the loop for long, and events published while a
fan-out is under way join it: listeners it has not reached yet get old and new events in
one batch, the others get the new ones in a follow-up pass.
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
    """Consecutive events of one session handed to a batch listener in one call.

    Every listener due the same events in a fan-out pass receives the same object, so
    what they derive from the events alone (the WebSocket frames) is computed once and
    kept in ``shared``.
    """

    session_id: str
    """The session all ``entries`` belong to."""
    entries: list[LogEntry]
    """The events, in publishing order (never empty)."""
    shared: dict[str, Any] = field(default_factory=dict)
    """Scratch space for listeners to share work on this batch, keyed by a name of theirs."""


BatchListener = Callable[[EventBatch], None]

FANOUT_CHUNK = 128
"""Batch listeners called per loop callback (between chunks the loop serves other work)."""


class _Cursor:
    """One batch listener and the position of the next event it is due."""

    __slots__ = ("active", "listener", "next")

    def __init__(self, listener: BatchListener, next_event: int) -> None:
        self.listener = listener
        self.next = next_event
        self.active = True


class _SessionFeed:
    """A session's events on their way to its batch listeners.

    ``log`` holds the events some listener has not been handed yet; positions are
    absolute (``base`` is the position of ``log[0]``), so cursors survive trimming.
    """

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.cursors: list[_Cursor] = []
        self.log: list[LogEntry] = []
        self.base = 0
        self.passing = False
        self.batches: dict[tuple[int, int], EventBatch] = {}

    @property
    def end(self) -> int:
        return self.base + len(self.log)

    def batch(self, start: int, end: int) -> EventBatch:
        """Events [start, end) as one batch object shared by every listener due them."""
        found = self.batches.get((start, end))
        if found is None:
            events = self.log[start - self.base : end - self.base]
            found = self.batches[start, end] = EventBatch(self.session_id, events)
        return found

    def trim(self) -> None:
        """Forget events every listener has been handed (between passes)."""
        low = min((c.next for c in self.cursors), default=self.end)
        del self.log[: low - self.base]
        self.base = low
        self.batches.clear()


class EventHub:
    """Fan-out of session events plus the board of live snapshots."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._by_session: dict[str, list[Listener]] = defaultdict(list)
        self._feeds: dict[str, _SessionFeed] = {}
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
        """Call ``listener(batch)`` with the events of ``session_id``, in order, in batches.

        Returns the function that unsubscribes.
        """
        with self._lock:
            feed = self._feeds.get(session_id)
            if feed is None:
                feed = self._feeds[session_id] = _SessionFeed(session_id)
            cursor = _Cursor(listener, feed.end)  # due what is published from now on
            feed.cursors.append(cursor)

        def unsubscribe() -> None:
            with self._lock:
                if not cursor.active:
                    return
                cursor.active = False
                feed.cursors.remove(cursor)
                if not feed.cursors and not feed.passing and self._feeds.get(session_id) is feed:
                    del self._feeds[session_id]

        return unsubscribe

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
            feed = self._feeds.get(session_id)
            return len(self._by_session.get(session_id, ())) + len(feed.cursors if feed else ())

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
                feed = self._feeds.get(sid)
                if feed is None:
                    continue
                feed.log.extend(session_entries)
                if feed.passing:
                    continue  # the pass under way takes them along
                feed.passing = True
                cursors = list(feed.cursors)
            self._fan_out(feed, cursors, 0)

    def _fan_out(self, feed: _SessionFeed, cursors: list[_Cursor], start: int) -> None:
        """Hand ``cursors[start:]`` what they are due, a chunk per loop callback; then
        start another pass for the listeners that events published meanwhile left behind."""
        while True:
            stop = len(cursors)
            if self._loop is not None:
                stop = min(stop, start + FANOUT_CHUNK)
            end = feed.end  # later chunks of this pass see later events too
            for cursor in cursors[start:stop]:
                if cursor.active and cursor.next < end:
                    batch = feed.batch(cursor.next, end)
                    cursor.next = end
                    try:
                        cursor.listener(batch)
                    except Exception:  # one bad listener must not starve the others
                        logger.exception("event listener failed")
            if stop < len(cursors):
                assert self._loop is not None
                self._loop.call_soon(self._fan_out, feed, cursors, stop)
                return
            with self._lock:
                feed.trim()
                cursors = [c for c in feed.cursors if c.next < feed.end]
                if not cursors:
                    feed.passing = False
                    if not feed.cursors and self._feeds.get(feed.session_id) is feed:
                        del self._feeds[feed.session_id]
                    return
            if self._loop is not None:
                self._loop.call_soon(self._fan_out, feed, cursors, 0)
                return
            start = 0

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
