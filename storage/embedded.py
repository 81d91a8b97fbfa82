"""The embedded database: a SecantusDB server run as our child process.

Layout under ``data_dir`` (mode 0700: only the engine's user may enter it): ``wiredtiger/``
(the data, kept across restarts), ``secantus.log`` (the server's output, appended to),
``server.lock`` (serialises starts), ``database.lock`` (held by the database process for
its whole life, see ``storage/embedded_processes.py``), ``secantusd.toml`` (empty; passed
with ``--config`` so no stray ``./secantusd.toml`` or ``~/.secantus/secantusd.toml``
changes the server), ``secantus.sock`` and ``server.json`` (mode 0600)
``{pid, socket, started_at, owner_pid, stops_with_owner}``.

Access. The server listens on the unix socket ``secantus.sock`` only, never on TCP
(``storage/secantus_server.py`` adds that to SecantusDB): connecting needs the right to
enter the 0700 folder, so no other local user can reach the data. A data folder whose
socket path would not fit a unix socket address (about 100 bytes) gets its socket in a
private 0700 folder ``illustrator-{uid}`` under ``$XDG_RUNTIME_DIR`` or the temp folder.

Orphans. On Linux the server is started with ``PR_SET_PDEATHSIG=SIGTERM``, so a ``kill -9``
of the engine stops its database too. The signal is set by a tiny launcher that then
``exec``\\ s the server (same pid), not by ``preexec_fn``, which Python documents as unsafe
in a process with threads (ours has actor threads). The kernel sends the signal when the
*thread* that started the server exits: call :meth:`EmbeddedDatabase.start` from a thread
that lives as long as the database should (``storage/embedded_supervisor.py`` does).

Start-up reads ``server.json`` first. If it names a live secantus process on our storage
path, that server is either answering (adopted: its URI is returned) or exiting (a
server whose recorded owner is dead but which stops with its owner; killed, never
adopted). Then any other process still on the data folder (an engine killed while its
database was starting leaves one that ``server.json`` does not name yet) is killed if its
engine is gone, or waited for, before a new server starts. Ownership decides who stops
an adopted server: if its recorded owner is dead we inherit it (rewrite ``server.json``
and stop it at our clean shutdown); if its owner is alive we share it and leave it
running at our shutdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

from errors import EmbeddedDatabaseError
from storage.embedded_processes import (
    FOLDER_BUSY_EXIT,
    clear_leftovers,
    is_alive,
    launcher_argv,
    runs_on_storage,
)

logger = logging.getLogger(__name__)

_LISTENING = re.compile(rb"secantus listening on unix socket (\S+)")
_FOLDER_BUSY = b"already being managed by another process"
"""What WiredTiger says when another process has the storage path open."""
_MAX_SOCKET_PATH = 100
"""Bytes of a unix socket path that fit every platform's ``sun_path`` (104 or 108)."""


class _FolderBusy(Exception):
    """The new server found the data folder taken (an old process is still on it)."""


class EmbeddedDatabase:
    """Start, adopt and stop the SecantusDB server of one data directory.

    Args:
        data_dir: holds the data (``wiredtiger/``), log, socket and ``server.json``.
        stop_with_owner: on Linux, stop the server when the thread that started it dies.
        start_timeout: seconds to wait for the server to listen (or an old one to exit).
        stop_timeout: seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        stop_with_owner: bool = True,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.storage_path = self.data_dir / "wiredtiger"
        self.log_path = self.data_dir / "secantus.log"
        self.state_path = self.data_dir / "server.json"
        self.lock_path = self.data_dir / "database.lock"
        self.socket_path = socket_path_for(self.data_dir)
        self._stop_with_owner = stop_with_owner and sys.platform.startswith("linux")
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._owned = False
        self.adopted = False
        """True when :meth:`start` adopted a server some other process had started."""
        self.exit_code: int | None = None
        """How the last server we ran as our child ended (negative: killed by that
        signal); None while it runs, or when we never ran one."""

    # -- public ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the server we run or adopted, if any."""
        return self._pid

    @property
    def uri(self) -> str:
        """MongoDB URI of the server: its socket, direct, journaled, no driver-retried writes."""
        return (
            f"mongodb://{quote(str(self.socket_path), safe='')}/?directConnection=true"
            "&retryWrites=false&w=1&journal=true"
        )

    def is_running(self) -> bool:
        """Whether the server we run or adopted still exists (a dying one still counts)."""
        if self._process is not None:
            code = self._process.poll()  # our child: waitpid is the authority
            if code is not None:
                self.exit_code = code
            return code is None
        return self._pid is not None and is_alive(self._pid)

    def start(self) -> str:
        """Start (or adopt) the server and return its URI; a no-op while running.

        Raises:
            EmbeddedDatabaseError: the server did not come up (the message carries the
                tail of its log) or an old server on the same data folder never went away.
        """
        if self.is_running():
            return self.uri
        self._forget()
        try:
            _private_folder(self.data_dir, follow_symlinks=True)
            if self.socket_path.parent != self.data_dir:
                _private_folder(self.socket_path.parent, follow_symlinks=False)
            lock = (self.data_dir / "server.lock").open("a")
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"cannot use data directory {self.data_dir}: {exc}",
                details={"data_dir": str(self.data_dir)},
            ) from exc
        with lock:
            # One start at a time per data directory (two engines racing for one server).
            fcntl.flock(lock, fcntl.LOCK_EX)
            deadline = time.monotonic() + self._start_timeout
            while True:
                if self._adopt_recorded_server(deadline):
                    return self.uri
                clear_leftovers(self.lock_path, self.storage_path, deadline)
                try:
                    self._launch(deadline)
                    return self.uri
                except _FolderBusy:
                    # A process we could not see yet (a launcher between fork and its
                    # lock, an older engine's server) took the folder: clear it again.
                    logger.warning("%s is still taken; waiting for its process", self.data_dir)

    def stop(self) -> None:
        """Stop the server if we own it: SIGTERM, wait, SIGKILL after ``stop_timeout``.

        A server adopted from a live owner is left running (it is theirs). Idempotent.
        """
        pid, owned, process = self._pid, self._owned, self._process
        self._forget()
        if pid is None:
            return
        if not owned:
            logger.info("leaving shared SecantusDB server (pid %d) to its owner", pid)
            return
        logger.info("stopping SecantusDB server (pid %d)", pid)
        started = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, process, self._stop_timeout):
            logger.warning("SecantusDB (pid %d) ignored SIGTERM; sending SIGKILL", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, process, self._stop_timeout)
        if process is not None:
            self.exit_code = process.returncode
        state = _read_json(self.state_path)
        if state is not None and state.get("pid") == pid:
            self.state_path.unlink(missing_ok=True)
        logger.info("SecantusDB stopped in %.1f s", time.monotonic() - started)

    def __enter__(self) -> EmbeddedDatabase:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- adoption ----------------------------------------------------------------------

    def _adopt_recorded_server(self, deadline: float) -> bool:
        """Adopt the live server ``server.json`` names, or wait until it is gone."""
        state = _read_json(self.state_path)
        if state is None:
            return False
        try:
            pid, socket_path = int(state["pid"]), Path(str(state["socket"]))
            owner = int(state.get("owner_pid", 0))
            stops_with_owner = bool(state.get("stops_with_owner", False))
        except (KeyError, TypeError, ValueError):
            logger.warning("ignoring malformed %s", self.state_path)
            return False
        killed = False
        while runs_on_storage(pid, self.storage_path):
            owner_alive = owner not in (0, os.getpid()) and is_alive(owner)
            if stops_with_owner and not owner_alive:
                # Its owner died, so SIGTERM is on its way and it is exiting: a graceful
                # shutdown gains nothing, as every write acknowledged to a session was
                # journaled (j: true), and SecantusDB 0.7 can deadlock in its SIGTERM
                # handler when two signals arrive close together (Event.set re-entered
                # under its own lock). SIGKILL it and start a new one at once.
                if not killed:
                    logger.warning("orphaned SecantusDB pid %d is exiting; killing it", pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                    killed = True
            elif _answers_ping(_socket_uri(socket_path)):
                self._pid, self.socket_path, self.adopted = pid, socket_path, True
                self._owned = not owner_alive
                if self._owned:
                    self._write_state(started_at=state.get("started_at"))
                logger.info(
                    "adopted SecantusDB server pid %d on %s (%s)",
                    pid,
                    socket_path,
                    "inherited" if self._owned else f"shared with pid {owner}",
                )
                return True
            if time.monotonic() > deadline:
                raise EmbeddedDatabaseError(
                    f"SecantusDB server pid {pid} holds {self.storage_path} but neither "
                    f"answers nor exits",
                    details={"pid": pid, "log_tail": self._log_tail()},
                )
            time.sleep(0.02)
        logger.info("SecantusDB pid %d from %s is gone; starting a new one", pid, self.state_path)
        return False

    # -- launching ---------------------------------------------------------------------

    def _launch(self, deadline: float) -> None:
        config = self.data_dir / "secantusd.toml"
        if not config.exists():
            config.write_text("# SecantusDB settings come from the engine's command line.\n")
        server_args = [
            "--config", str(config), "--host", str(self.socket_path), "--port", "0",
            "--storage-path", str(self.storage_path),
            # Standalone: no replica-set advertisement, hence no oplog. We use neither
            # change streams nor transactions, and the oplog entry SecantusDB writes per
            # modified document doubled the cost of every write (0.21 vs 0.29-0.45 ms per
            # bulk-inserted document, 1.07 vs 1.5-1.8 ms per update; bench/README.md).
            "--standalone",
        ]  # fmt: skip
        argv = launcher_argv(self.lock_path, self._stop_with_owner, server_args)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        logger.info("starting SecantusDB on %s (log %s)", self.storage_path, self.log_path)
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(log_fd, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C on the engine reaches us, not the server
            )
        self._pid, self._owned, self.adopted, self.exit_code = self._process.pid, True, False, None
        self._wait_listening(offset, deadline)
        self._write_state(started_at=None)
        logger.info("SecantusDB pid %d listening on %s", self._pid, self.socket_path)

    def _wait_listening(self, offset: int, deadline: float) -> None:
        assert self._process is not None
        while True:
            output = self._read_log(offset)
            match = _LISTENING.search(output)
            if match and _answers_ping(self.uri):
                return
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                if code is None:
                    self._process.kill()
                    self._process.wait()
                self._forget()
                busy = code == FOLDER_BUSY_EXIT or _FOLDER_BUSY in output
                if busy and time.monotonic() <= deadline:
                    raise _FolderBusy
                what = f"exited with code {code}" if code is not None else "did not come up"
                raise EmbeddedDatabaseError(
                    f"SecantusDB on {self.storage_path} {what}; log tail:\n{self._log_tail()}",
                    details={"log": str(self.log_path), "exit_code": code},
                )
            time.sleep(0.02)

    # -- state -------------------------------------------------------------------------

    def _write_state(self, started_at: Any) -> None:
        state = {
            "pid": self._pid,
            "socket": str(self.socket_path),
            "started_at": started_at or datetime.now(UTC).isoformat(),
            "owner_pid": os.getpid(),
            "stops_with_owner": self._stop_with_owner and self._process is not None,
        }
        tmp = self.state_path.with_name(f".server.json.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a temp file left by a killed run may have another mode
        with open(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.state_path)

    def _wait_gone(self, pid: int, process: subprocess.Popen[bytes] | None, timeout: float) -> bool:
        if process is not None:  # our child: wait() also reaps it
            try:
                process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while is_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _forget(self) -> None:
        if self._process is not None and self._process.poll() is not None:  # reaps it
            self.exit_code = self._process.returncode
        self._process, self._pid, self._owned, self.adopted = None, None, False, False

    def _read_log(self, offset: int) -> bytes:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read()
        except OSError:
            return b""

    def _log_tail(self, lines: int = 20) -> str:
        text = self._read_log(0).decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])


def socket_path_for(data_dir: Path) -> Path:
    """Where the server of ``data_dir`` listens (see the module docstring)."""
    preferred = data_dir / "secantus.sock"
    if len(os.fsencode(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir())
    digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:24]
    return runtime / f"illustrator-{os.getuid()}" / f"secantus-{digest}.sock"


def _private_folder(path: Path, *, follow_symlinks: bool) -> None:
    """Make ``path`` a folder only we can enter (0700); refuse one that is not ours."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.stat(path, follow_symlinks=follow_symlinks)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise EmbeddedDatabaseError(
            f"{path} must be a folder owned by uid {os.getuid()} (it holds the database's socket)",
            details={"path": str(path)},
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _socket_uri(socket_path: Path) -> str:
    return f"mongodb://{quote(str(socket_path), safe='')}/?directConnection=true"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _answers_ping(uri: str, timeout_ms: int = 1000) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, Any]] = MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()
