"""The embedded database: a SecantusDB server run as our child process.

Layout under ``data_dir``: ``wiredtiger/`` (the data, kept across restarts), ``secantus.log``
(the server's output, appended to), ``server.lock`` (serialises starts), ``secantusd.toml``
(empty; passed with ``--config`` so no stray ``./secantusd.toml`` or
``~/.secantus/secantusd.toml`` changes the server) and ``server.json``
``{pid, host, port, started_at, owner_pid, stops_with_owner}``.

Orphans. On Linux the server is started with ``PR_SET_PDEATHSIG=SIGTERM``, so a ``kill -9``
of the engine stops its database too. The signal is set by a tiny launcher that then
``exec``\\ s the server (``storage/secantus_server.py``, same pid), not by ``preexec_fn``,
which Python documents as unsafe in a process with threads (ours has actor threads). The
kernel sends the signal when the *thread* that started the server exits: call
:meth:`EmbeddedDatabase.start` from a thread that lives as long as the database should
(normally the main thread).

Start-up reads ``server.json`` first. If it names a live secantus process on our storage
path, that server is either answering (adopted: its URI is returned) or starting/exiting
(waited for: WiredTiger allows one process per storage path). A server whose recorded owner
is dead but which stops with its owner is exiting (SIGTERM is on its way) and is waited for,
never adopted. Ownership decides who stops an adopted server: if its recorded owner is
dead we inherit it (rewrite ``server.json`` and stop it at our clean shutdown); if its
owner is alive we share it and leave it running at our shutdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from errors import EmbeddedDatabaseError

logger = logging.getLogger(__name__)

_LISTENING = re.compile(rb"secantus listening on (\S+):(\d+)")
_PR_SET_PDEATHSIG = 1
# Runs in the child: ask for SIGTERM when the parent thread dies, make sure the parent did
# not die already (the race before prctl), then become the server (exec keeps the pid).
_LAUNCHER = (
    "import ctypes, os, signal, sys\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    f"if libc.prctl({_PR_SET_PDEATHSIG}, int(signal.SIGTERM), 0, 0, 0) != 0:\n"
    "    raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('secantus launcher: parent exited before the server started')\n"
    "os.execv(sys.executable, [sys.executable, *sys.argv[2:]])\n"
)
_SERVER_SCRIPT = Path(__file__).resolve().with_name("secantus_server.py")
"""Runs SecantusDB with our fix to its write path (see that module)."""


class EmbeddedDatabase:
    """Start, adopt and stop the SecantusDB server of one data directory.

    Args:
        data_dir: holds the data (``wiredtiger/``), log and ``server.json``.
        host: interface to listen on.
        port: 0 picks a free port on the first start; later starts of the same object
            reuse the port they had, so connected clients reconnect by themselves.
        stop_with_owner: on Linux, stop the server when the thread that started it dies.
        start_timeout: seconds to wait for the server to listen (or an old one to exit).
        stop_timeout: seconds between SIGTERM and SIGKILL.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        stop_with_owner: bool = True,
        start_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.storage_path = self.data_dir / "wiredtiger"
        self.log_path = self.data_dir / "secantus.log"
        self.state_path = self.data_dir / "server.json"
        self.host = host
        self._port = port
        self._configured_port = port
        self._stop_with_owner = stop_with_owner and sys.platform.startswith("linux")
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._pid: int | None = None
        self._owned = False
        self.adopted = False
        """True when :meth:`start` adopted a server some other process had started."""

    # -- public ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the server we run or adopted, if any."""
        return self._pid

    @property
    def port(self) -> int:
        """The listening port (0 before the first start)."""
        return self._port

    @property
    def uri(self) -> str:
        """MongoDB URI of the server: direct, journaled, without driver-retried writes."""
        return (
            f"mongodb://{self.host}:{self._port}/?directConnection=true"
            "&retryWrites=false&w=1&journal=true"
        )

    def is_running(self) -> bool:
        """Whether the server we run or adopted still exists (a dying one still counts)."""
        if self._process is not None:
            return self._process.poll() is None  # our child: waitpid is the authority
        return self._pid is not None and _is_alive(self._pid)

    def start(self) -> str:
        """Start (or adopt) the server and return its URI; a no-op while running.

        Raises:
            EmbeddedDatabaseError: the server did not come up (the message carries the
                tail of its log) or an old server on the same storage path never went away.
        """
        if self.is_running():
            return self.uri
        self._forget()
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            lock = (self.data_dir / "server.lock").open("a")
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"cannot use data directory {self.data_dir}: {exc}",
                details={"data_dir": str(self.data_dir)},
            ) from exc
        with lock:
            # One start at a time per data directory (two engines racing for one server).
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._adopt_recorded_server():
                return self.uri
            try:
                self._launch(self._port)
            except EmbeddedDatabaseError as exc:
                # The port of our previous run was only a preference: take any free one.
                reused = self._configured_port == 0 and self._port != 0
                if not (reused and "Address already in use" in exc.message):
                    raise
                logger.warning("port %d is taken; SecantusDB picks another one", self._port)
                self._launch(0)
        return self.uri

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

    def _adopt_recorded_server(self) -> bool:
        """Adopt the live server ``server.json`` names, or wait until it is gone."""
        state = _read_json(self.state_path)
        if state is None:
            return False
        try:
            pid, port = int(state["pid"]), int(state["port"])
            host = str(state.get("host", self.host))
            owner = int(state.get("owner_pid", 0))
            stops_with_owner = bool(state.get("stops_with_owner", False))
        except (KeyError, TypeError, ValueError):
            logger.warning("ignoring malformed %s", self.state_path)
            return False
        deadline = time.monotonic() + self._start_timeout
        # An orphan (its owner died) gains nothing from a graceful shutdown: every write
        # acknowledged to a session was journaled (j: true), so it is killed at once and
        # the new server starts without waiting ~2 s for the old one to wind down.
        exit_grace_ends = time.monotonic()
        killed = False
        while self._is_our_server(pid):
            owner_alive = owner not in (0, os.getpid()) and _is_alive(owner)
            exiting = stops_with_owner and not owner_alive
            if exiting and not killed and time.monotonic() > exit_grace_ends:
                # SecantusDB 0.7 can deadlock in its SIGTERM handler when two signals
                # arrive close together (Event.set re-entered under its own lock). Every
                # acknowledged write is journaled (j: true), so SIGKILL loses nothing.
                logger.warning(
                    "orphaned SecantusDB pid %d did not exit after SIGTERM; killing it", pid
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed = True
            if not exiting and _answers_ping(host, port):
                self._pid, self._port, self.host, self.adopted = pid, port, host, True
                self._owned = not owner_alive
                if self._owned:
                    self._write_state(started_at=state.get("started_at"))
                logger.info(
                    "adopted SecantusDB server pid %d on %s:%d (%s)",
                    pid,
                    host,
                    port,
                    "inherited" if self._owned else f"shared with pid {owner}",
                )
                return True
            if time.monotonic() > deadline:
                raise EmbeddedDatabaseError(
                    f"SecantusDB server pid {pid} holds {self.storage_path} but neither "
                    f"answers nor exits",
                    details={"pid": pid, "log_tail": self._log_tail()},
                )
            time.sleep(0.05)
        logger.info("SecantusDB pid %d from %s is gone; starting a new one", pid, self.state_path)
        return False

    def _is_our_server(self, pid: int) -> bool:
        """Whether ``pid`` is a live secantus process on our storage path."""
        if not _is_alive(pid):
            return False
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return sys.platform != "linux"  # no /proc: trust server.json and the ping
        storage = os.fsencode(self.storage_path)
        # A server of ours runs secantus_server.py (of whichever install started it); one
        # started by an older engine, -m secantus.
        program = b"secantus" in argv or any(
            os.path.basename(arg) == os.fsencode(_SERVER_SCRIPT.name) for arg in argv
        )
        return program and any(
            flag == b"--storage-path" and value == storage
            for flag, value in zip(argv, argv[1:], strict=False)
        )

    # -- launching ---------------------------------------------------------------------

    def _launch(self, port: int) -> None:
        config = self.data_dir / "secantusd.toml"
        if not config.exists():
            config.write_text("# SecantusDB settings come from the engine's command line.\n")
        server_args = [
            "--config", str(config), "--host", self.host, "--port", str(port),
            "--storage-path", str(self.storage_path),
            # Standalone: no replica-set advertisement, hence no oplog. We use neither
            # change streams nor transactions, and the oplog entry SecantusDB writes per
            # modified document doubled the cost of every write (0.21 vs 0.29-0.45 ms per
            # bulk-inserted document, 1.07 vs 1.5-1.8 ms per update; bench/README.md).
            "--standalone",
        ]  # fmt: skip
        server = [str(_SERVER_SCRIPT)]
        if self._stop_with_owner:
            argv = [sys.executable, "-c", _LAUNCHER, str(os.getpid()), *server, *server_args]
        else:
            argv = [sys.executable, *server, *server_args]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        logger.info("starting SecantusDB on %s (log %s)", self.storage_path, self.log_path)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,  # Ctrl-C on the engine reaches us, not the server
            )
        self._pid, self._owned, self.adopted = self._process.pid, True, False
        self._port = self._wait_listening(offset)
        self._write_state(started_at=None)
        logger.info("SecantusDB pid %d listening on %s:%d", self._pid, self.host, self._port)

    def _wait_listening(self, offset: int) -> int:
        assert self._process is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            match = _LISTENING.search(self._read_log(offset))
            if match and _answers_ping(self.host, int(match.group(2))):
                return int(match.group(2))
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                if code is None:
                    self._process.kill()
                    self._process.wait()
                self._forget()
                what = f"exited with code {code}" if code is not None else "did not come up"
                raise EmbeddedDatabaseError(
                    f"SecantusDB on {self.storage_path} {what}; log tail:\n{self._log_tail()}",
                    details={"log": str(self.log_path), "exit_code": code},
                )
            time.sleep(0.05)

    # -- state -------------------------------------------------------------------------

    def _write_state(self, started_at: Any) -> None:
        state = {
            "pid": self._pid,
            "host": self.host,
            "port": self._port,
            "started_at": started_at or datetime.now(UTC).isoformat(),
            "owner_pid": os.getpid(),
            "stops_with_owner": self._stop_with_owner and self._process is not None,
        }
        tmp = self.state_path.with_name(f".server.json.{os.getpid()}.tmp")
        with tmp.open("w", encoding="utf-8") as fh:
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
        while _is_alive(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def _forget(self) -> None:
        if self._process is not None:
            self._process.poll()  # reap a dead child
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


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_alive(pid: int) -> bool:
    """Whether process ``pid`` still exists, threads included.

    A zombie whose threads are all gone counts as dead (it only waits to be reaped). A
    zombie *leader* whose other threads are still exiting does not: the process still
    holds its files (the WiredTiger lock) until the last thread is gone.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state not in ("Z", "X"):
            return True
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except (OSError, IndexError):
        return sys.platform != "linux"


def _answers_ping(host: str, port: int, timeout_ms: int = 1000) -> bool:
    from pymongo import MongoClient
    from pymongo.errors import PyMongoError

    client: MongoClient[dict[str, Any]] = MongoClient(
        host,
        port,
        directConnection=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()
