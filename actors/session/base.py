"""What every part of the SessionActor shares: its settings, its arguments, its bookkeeping.

The actor is put together in layers with one concern each (see :mod:`actors.session`),
each built on the ones below it; all read and update the attributes set here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pykka

from actors.events import EventHub
from actors.state import SessionState
from domain import PauseReason, SessionStatus
from pipeline.manuscripts import Manuscript
from pipeline.providers import Providers
from storage.records import LogEntry


@dataclass(frozen=True)
class SessionSettings:
    """What a SessionActor needs besides its state."""

    output_dir: Path
    step_attempts: int = 3
    retry_backoff_ms: int = 200
    max_logs: int = 1000


class SessionBase:
    """The SessionActor's arguments and bookkeeping; ``__init__`` only stores them.

    It runs in the caller's thread (pykka): resources are opened in ``on_start``.
    """

    actor_ref: pykka.ActorRef[Any]
    """Set by pykka."""

    def __init__(
        self,
        state: SessionState,
        manuscript: Manuscript,
        providers: Providers,
        persistence: pykka.ActorRef[Any],
        hub: EventHub,
        settings: SessionSettings,
        supervisor: pykka.ActorRef[Any] | None = None,
        resumed: bool = False,
    ) -> None:
        super().__init__()
        self.state = state
        self.manuscript = manuscript
        self.providers = providers
        self.persistence = persistence
        self.hub = hub
        self.settings = settings
        self.supervisor = supervisor
        self.resumed = resumed
        self._chapters = {c.number: c for c in manuscript.chapters}
        self._awaiting: int | None = None
        self._after_ack: SessionStatus | None = None
        self._unsent: list[LogEntry] = []
        self._pause_requested = False
        self._pause_reason = PauseReason.USER
        self._cancel_requested = False
        self._attempt = 0
        self._retry_timer: threading.Timer | None = None
        self._finished = False
        self._pending_publish: tuple[LogEntry, ...] = ()
        self._durable_snapshot: dict[str, Any] | None = None
        self._image_folder_ready = False
        """This session's image folder exists and its entry is durable."""

    if TYPE_CHECKING:  # the two calls up to a later layer (defined in control and steps)

        def _run_step(self) -> None: ...
        def _finish(self, status: SessionStatus, events: tuple[LogEntry, ...] = ()) -> None: ...
