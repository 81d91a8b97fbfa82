"""Events that claim nothing durable wait for their session's next checkpoint.

A step's start event (``EventsEmitted``) comes one provider call before the checkpoint
that ends the step. Written on its own it costs the database a document of its own (a log
bucket, storage.mongo_records); held here up to ``persistence.events_linger_ms`` it goes
into the checkpoint's batch and rides inside the checkpoint's document. Subscribers have
it at once (the EventHub publishes it when emitted); a replay, a flush and shutdown
release every held event first, so only a kill -9 within the linger loses one from the
database, as it could lose the batch it would otherwise have been in.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from actors.messages import CheckpointReached, EventsEmitted, ReleaseEvents
from actors.reply import tell_quietly
from config import PersistenceConfig


class EventLinger:
    """The held events of the PersistenceActor (a mixin; ``_pending`` is its batch)."""

    settings: PersistenceConfig
    actor_ref: Any
    _pending: list[CheckpointReached | EventsEmitted]
    _lingering: dict[str, list[tuple[float, EventsEmitted]]]
    _linger_timer: threading.Timer | None

    def _hold_events(self, message: EventsEmitted) -> bool:
        """Hold ``message`` for its session's next checkpoint; False if it goes at once."""
        if self.settings.events_linger_ms <= 0 or not message.entries:
            return False
        held = self._lingering.setdefault(message.entries[0].session_id, [])
        held.append((time.monotonic(), message))
        self._arm_linger_timer()
        return True

    def _release_events(self, session_id: str | None = None) -> None:
        """Put the held events of ``session_id`` (None: of every session) into the batch."""
        sessions = list(self._lingering) if session_id is None else [session_id]
        for sid in sessions:
            self._pending.extend(message for _, message in self._lingering.pop(sid, ()))

    def _release_overdue(self) -> None:
        """Timer tick: events held longer than the linger go into the batch."""
        self._linger_timer = None
        oldest = time.monotonic() - self.settings.events_linger_ms / 1000
        for sid in [sid for sid, held in self._lingering.items() if held[0][0] <= oldest]:
            self._release_events(sid)
        self._arm_linger_timer()

    def _arm_linger_timer(self) -> None:
        if not self._lingering or self._linger_timer is not None:
            return
        first = min(held[0][0] for held in self._lingering.values())
        delay = max(0.0, first + self.settings.events_linger_ms / 1000 - time.monotonic())
        self._linger_timer = threading.Timer(
            delay, tell_quietly, args=(self.actor_ref, ReleaseEvents())
        )
        self._linger_timer.daemon = True
        self._linger_timer.start()

    def _stop_lingering(self) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self._release_events()
