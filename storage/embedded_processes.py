"""The processes on an embedded database's data folder: who holds it, and clearing them away.

WiredTiger lets one process at a time open a storage path; a second server exits with
"WiredTiger database is already being managed by another process". ``server.json`` names
a server only once it listens, so it cannot name one whose engine was killed while it was
starting. The data folder's ``database.lock`` can: the launcher (:data:`LAUNCHER`, the
first code the database process runs) takes a POSIX record lock on it and writes its pid
and its engine's pid into it, then ``exec``\\ s the server, which keeps the pid, the open
file and so the lock. A database process therefore holds the lock from before it opens
WiredTiger until its last thread is gone, whether or not ``server.json`` names it, and
the kernel drops the lock when it dies, ``kill -9`` included. Record locks, unlike
``flock``, are not inherited through ``fork``: no other child of the engine can hold it
by accident.

:func:`clear_leftovers` waits until nobody holds the lock. A holder whose engine is dead
(or is this process, which does not run it) is killed at once: every write acknowledged
to a session was journaled (``j: true``), so SIGKILL loses nothing, and a graceful stop
takes seconds. A holder is killed only if ``/proc`` shows it is a SecantusDB process on
this storage path, so a reused pid never costs an unrelated process its life.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from errors import EmbeddedDatabaseError

logger = logging.getLogger(__name__)

SERVER_SCRIPT = Path(__file__).resolve().with_name("secantus_server.py")
"""Runs SecantusDB with our fixes (see that module)."""

FOLDER_BUSY_EXIT = 75
"""The launcher's exit code when another process already holds the data folder's lock."""

_PR_SET_PDEATHSIG = 1
LAUNCHER = (
    "import ctypes, fcntl, json, os, signal, sys\n"
    "owner, lock_path, stop_with_owner = int(sys.argv[1]), sys.argv[2], sys.argv[3] == '1'\n"
    # Ask for SIGTERM when the thread that started us dies (Python's preexec_fn is unsafe
    # in a process with threads; ours has actor threads).
    "if stop_with_owner:\n"
    "    libc = ctypes.CDLL(None, use_errno=True)\n"
    f"    if libc.prctl({_PR_SET_PDEATHSIG}, int(signal.SIGTERM), 0, 0, 0) != 0:\n"
    "        raise OSError(ctypes.get_errno(), 'prctl(PR_SET_PDEATHSIG) failed')\n"
    "fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)\n"
    "try:\n"
    "    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
    "except OSError:\n"
    "    print('secantus launcher: another database process holds', lock_path, flush=True)\n"
    f"    sys.exit({FOLDER_BUSY_EXIT})\n"
    "os.ftruncate(fd, 0)\n"
    "os.write(fd, json.dumps({'pid': os.getpid(), 'owner_pid': owner}).encode())\n"
    # After prctl and the lock: an engine that died before now never learns of us.
    "if os.getppid() != owner:\n"
    "    sys.exit('secantus launcher: parent exited before the server started')\n"
    "os.set_inheritable(fd, True)\n"  # exec keeps the descriptor, hence the lock
    "os.execv(sys.executable, [sys.executable, *sys.argv[4:]])\n"
)
"""Runs in the database process before it becomes the server: ``python -c LAUNCHER
OWNER_PID LOCK_PATH STOP_WITH_OWNER SERVER_SCRIPT ARGS...``."""


def launcher_argv(lock_path: Path, stop_with_owner: bool, server_args: list[str]) -> list[str]:
    """The command line of a database process (``exec`` keeps the launcher's pid)."""
    return [
        sys.executable, "-c", LAUNCHER, str(os.getpid()), str(lock_path),
        "1" if stop_with_owner else "0", str(SERVER_SCRIPT), *server_args,
    ]  # fmt: skip


@dataclass(frozen=True)
class LockHolder:
    """The process that holds a data folder's lock, as its lock file says."""

    pid: int | None
    """None while the holder has not written its pid yet."""
    owner_pid: int | None
    """The engine that started it."""


def lock_holder(lock_path: Path) -> LockHolder | None:
    """Who holds ``lock_path`` (None: nobody; a database could start now)."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except FileNotFoundError:
        return None  # no data folder, hence no database on it
    try:
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EAGAIN or EACCES: held
            return _parse_holder(os.pread(fd, 4096, 0))
        fcntl.lockf(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)  # also drops our probe (record locks are per process)


def _parse_holder(content: bytes) -> LockHolder:
    try:
        data = json.loads(content)
        return LockHolder(int(data["pid"]), int(data["owner_pid"]))
    except (ValueError, TypeError, KeyError):
        return LockHolder(None, None)  # being written right now


def clear_leftovers(lock_path: Path, storage_path: Path, deadline: float) -> None:
    """Return once no process holds the data folder: kill orphans, wait for the rest.

    Raises:
        EmbeddedDatabaseError: the lock is still held at ``deadline`` (monotonic time).
    """
    killed: set[int] = set()
    while (holder := lock_holder(lock_path)) is not None:
        pid, owner = holder.pid, holder.owner_pid
        orphan = owner is None or owner == os.getpid() or not is_alive(owner)
        if orphan and pid is not None and pid not in killed and runs_on_storage(pid, storage_path):
            logger.warning(
                "SecantusDB pid %d (started by pid %s, gone) still holds %s; killing it",
                pid,
                owner,
                storage_path,
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            killed.add(pid)
        if time.monotonic() > deadline:
            raise EmbeddedDatabaseError(
                f"SecantusDB pid {pid} (started by the live pid {owner}) still holds "
                f"{storage_path}; stop it, or the engine that runs it",
                details={"pid": pid, "owner_pid": owner, "lock": str(lock_path)},
            )
        time.sleep(0.02)


def runs_on_storage(pid: int, storage_path: Path) -> bool:
    """Whether ``pid`` is a live SecantusDB process (or its launcher) on ``storage_path``."""
    if not is_alive(pid):
        return False
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return sys.platform != "linux"  # no /proc: trust server.json and the ping
    storage = os.fsencode(storage_path)
    # A server of ours runs secantus_server.py (of whichever install started it); one
    # started by an older engine, -m secantus.
    program = b"secantus" in argv or any(
        os.path.basename(arg) == os.fsencode(SERVER_SCRIPT.name) for arg in argv
    )
    return program and any(
        flag == b"--storage-path" and value == storage
        for flag, value in zip(argv, argv[1:], strict=False)
    )


def is_alive(pid: int) -> bool:
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
