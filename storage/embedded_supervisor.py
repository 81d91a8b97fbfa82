"""Keeps the embedded database running: restarts it, with backoff, when it dies.

One thread per database does everything to it: the first start, the watch, every restart
and the final stop. Its life is the database's, which PR_SET_PDEATHSIG needs (the kernel
stops the server when the *thread* that started it exits; ``storage/embedded.py``), and
nothing else has to be a long-lived thread for it (``asyncio.to_thread`` only waits for
the first start).

A restart reuses the data folder and its socket path, so the clients already open (the
engine's store, with its persistence backlog) reconnect by themselves. After the
``n``-th death in a row the restart waits ``min(max_delay, first_delay * 2**(n-1))``
seconds; a server that stayed up ``stable_after`` seconds resets the count. A restart that
fails is retried the same way, for as long as the engine runs. :meth:`stop` ends the
supervision first, then stops the database.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from errors import EmbeddedDatabaseError
from storage.embedded import EmbeddedDatabase

logger = logging.getLogger(__name__)

FIRST_RESTART_DELAY = 0.5
"""Seconds before the first restart after a death."""
MAX_RESTART_DELAY = 30.0
"""The cap of the doubling delay between restarts."""
STABLE_AFTER = 60.0
"""Seconds up after which a death counts as the first one again."""
WATCH_INTERVAL = 0.1
"""Seconds between two looks at the server process."""


class DatabaseState(StrEnum):
    """Where the supervised database is in its life."""

    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class DatabaseStatus:
    """The supervised database as ``/health`` shows it."""

    state: DatabaseState
    pid: int | None
    restarts: int
    """Restarts after the server died, since the engine started."""
    last_exit: str | None
    """How the server last died (``"signal SIGKILL"``, ``"exit code 1"``), if it did."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return {**asdict(self), "state": str(self.state)}


class EmbeddedSupervisor:
    """Run one :class:`EmbeddedDatabase` from a thread of its own; restart it when it dies.

    Args:
        database: the database to run (not started).
        first_delay, max_delay, stable_after, watch_interval: see the module docstring.
    """

    def __init__(
        self,
        database: EmbeddedDatabase,
        *,
        first_delay: float = FIRST_RESTART_DELAY,
        max_delay: float = MAX_RESTART_DELAY,
        stable_after: float = STABLE_AFTER,
        watch_interval: float = WATCH_INTERVAL,
    ) -> None:
        self.database = database
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._stable_after = stable_after
        self._watch_interval = watch_interval
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._state = DatabaseState.STOPPED
        self._restarts = 0
        self._last_exit: str | None = None

    def start(self) -> str:
        """Start the database on the supervisor's thread and return its URI (blocking).

        Raises:
            EmbeddedDatabaseError: the first start failed (nothing is supervised then).
        """
        first: Future[str] = Future()
        self._set(DatabaseState.STARTING)
        self._thread = threading.Thread(
            target=self._run, args=(first,), name="embedded-database", daemon=True
        )
        self._thread.start()
        return first.result()

    def stop(self) -> None:
        """Stop supervising, then stop the database; returns when both are done."""
        self._stopping.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def status(self) -> DatabaseStatus:
        """The current state, pid, restart count and last death."""
        with self._lock:
            return DatabaseStatus(self._state, self.database.pid, self._restarts, self._last_exit)

    # -- the thread ----------------------------------------------------------------------

    def _run(self, first: Future[str]) -> None:
        try:
            uri = self.database.start()
        except BaseException as exc:  # the caller of start() gets it
            self._set(DatabaseState.STOPPED)
            first.set_exception(exc)
            return
        self._set(DatabaseState.RUNNING)
        first.set_result(uri)
        try:
            self._watch()
        except Exception:  # noqa: BLE001 - never let the thread (and PDEATHSIG) go silently
            logger.exception("supervision of the embedded database failed; it is no longer watched")
            self._stopping.wait()
        finally:
            self._set(DatabaseState.STOPPING)
            self.database.stop()
            self._set(DatabaseState.STOPPED)

    def _watch(self) -> None:
        deaths = 0
        up_since = time.monotonic()
        while not self._stopping.wait(self._watch_interval):
            if self.database.is_running():
                continue
            pid, code = self.database.pid, self.database.exit_code
            up_for = time.monotonic() - up_since
            deaths = 1 if up_for >= self._stable_after else deaths + 1
            with self._lock:
                self._last_exit = _describe_exit(code)
            logger.error(
                "embedded SecantusDB pid %s died (%s) after %.1f s up",
                pid,
                self._last_exit,
                up_for,
            )
            if not self._restart(deaths):
                return
            up_since = time.monotonic()

    def _restart(self, deaths: int) -> bool:
        """Start the database again, retrying with backoff; False when stopped meanwhile."""
        attempt = deaths
        while True:
            delay = min(self._max_delay, self._first_delay * 2 ** (attempt - 1))
            self._set(DatabaseState.RESTARTING)
            logger.warning("restarting the embedded SecantusDB in %.1f s", delay)
            if self._stopping.wait(delay):
                return False
            try:
                self.database.start()
            except Exception as exc:  # noqa: BLE001 - retried with backoff until stopped
                message = exc.message if isinstance(exc, EmbeddedDatabaseError) else repr(exc)
                logger.error("restart of the embedded SecantusDB failed: %s", message)
                attempt += 1
                continue
            with self._lock:
                self._restarts += 1
                self._state = DatabaseState.RUNNING
                restarts = self._restarts
            logger.warning(
                "embedded SecantusDB restarted (pid %s, restart %d) on %s",
                self.database.pid,
                restarts,
                self.database.socket_path,
            )
            return True

    def _set(self, state: DatabaseState) -> None:
        with self._lock:
            self._state = state


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "not our child: exit status unknown"
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"
