"""EmbeddedDatabase against real SecantusDB processes (each stop costs about 2 s, so few)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest

from domain import SessionId, new_id
from errors import DatabaseUnavailableError, EmbeddedDatabaseError
from storage.embedded import EmbeddedDatabase
from storage.mongo import open_store
from storage.records import LogEntry

REPO = Path(__file__).resolve().parents[2]

OWNER_SCRIPT = """
import sys
from pathlib import Path
from storage.embedded import EmbeddedDatabase

database = EmbeddedDatabase(Path(sys.argv[1]), stop_with_owner=sys.argv[2] == "1")
print(database.start(), database.pid, flush=True)
sys.stdin.read()  # run until the test closes our stdin (or kills us)
database.stop()
"""
"""Another engine process: starts the database of a data directory and holds it."""


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll real state until ``condition`` holds (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Whether a process exists; a zombie counts only while its other threads still exit."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rpartition(")")[2].split()[0]
        return state not in ("Z", "X") or len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def entry(seq: int, sid: str) -> LogEntry:
    return LogEntry(session_id=SessionId(sid), event_seq=seq, type="log", payload={"seq": seq})


@pytest.fixture
def database(tmp_path: Path) -> Iterator[EmbeddedDatabase]:
    """An EmbeddedDatabase of its own (not started); stopped at teardown."""
    db = EmbeddedDatabase(tmp_path / "db")
    yield db
    db.stop()


OwnerSpawner = Callable[[Path, bool], tuple[subprocess.Popen, str, int]]


@pytest.fixture
def spawn_owner() -> Iterator[OwnerSpawner]:
    """Start OWNER_SCRIPT processes; returns (process, uri, database pid). Cleans up both."""
    owners: list[subprocess.Popen[str]] = []
    pids: list[int] = []

    def spawn(data_dir: Path, stop_with_owner: bool) -> tuple[subprocess.Popen, str, int]:
        process = subprocess.Popen(
            [sys.executable, "-c", OWNER_SCRIPT, str(data_dir), "1" if stop_with_owner else "0"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        owners.append(process)
        assert process.stdout is not None
        line = process.stdout.readline().split()
        assert len(line) == 2, f"owner process failed to start its database: {line}"
        pids.append(int(line[1]))
        return process, line[0], int(line[1])

    yield spawn
    for process in owners:
        if process.poll() is None:
            process.communicate(timeout=30)  # closes stdin: the owner stops its database
        else:
            process.communicate()
    for pid in pids:  # a database orphaned on purpose by a test that then failed
        if alive(pid):
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda pid=pid: not alive(pid), f"orphan {pid} exits")


async def test_data_survives_a_clean_restart_and_clients_reconnect(database):
    uri = database.start()
    assert "retryWrites=false" in uri and "directConnection=true" in uri
    assert "journal=true" in uri
    state = json.loads(database.state_path.read_text())
    # It listens on the unix socket server.json names (there is no TCP port any more).
    assert state["pid"] == database.pid and state["socket"] == str(database.socket_path)
    assert "index catalog read once per statement chunk, profiling level cached" in (
        database.log_path.read_text()
    )
    store = open_store(uri, "restart", server_selection_timeout_ms=1000)
    assert store._client.write_concern.document == {"w": 1, "j": True}
    try:
        sid = new_id()
        await store.log_events([entry(1, sid)])
        first_pid = database.pid

        database.stop()
        assert not alive(first_pid)
        assert not database.state_path.exists()
        with pytest.raises(DatabaseUnavailableError):
            await store.ping()

        assert database.start() == uri  # same socket, so the open client reconnects
        assert database.pid != first_pid
        assert [e.event_seq for e in await store.list_logs(SessionId(sid))] == [1]
    finally:
        await store.close()


async def test_journaled_writes_survive_kill_9_of_the_database(tmp_path):
    with EmbeddedDatabase(tmp_path / "db") as database:
        store = open_store(database.uri, "crash")
        try:
            sid = new_id()
            for seq in range(1, 201):  # each acknowledged on its own, with j: true
                await store.log_events([entry(seq, sid)])
            killed = database.pid
            assert killed is not None
            os.kill(killed, signal.SIGKILL)
            wait_until(lambda: not database.is_running(), "the killed database is gone")

            database.start()
            assert database.pid != killed
            logs = await store.list_logs(SessionId(sid), limit=1000)
            assert [e.event_seq for e in logs] == list(range(1, 201))
        finally:
            await store.close()


def test_adopts_a_live_server_and_stops_it_only_once_inherited(tmp_path, spawn_owner):
    data_dir = tmp_path / "db"
    owner, uri, pid = spawn_owner(data_dir, False)

    shared = EmbeddedDatabase(data_dir)
    assert shared.start() == uri
    assert shared.adopted and shared.pid == pid
    shared.stop()  # its owner is alive: the server is theirs, so it keeps running
    assert alive(pid)

    owner.kill()
    owner.wait()
    assert alive(pid)  # started without stop_with_owner: an orphan now
    heir = EmbeddedDatabase(data_dir)
    assert heir.start() == uri
    assert heir.adopted and heir.pid == pid
    assert json.loads(heir.state_path.read_text())["owner_pid"] == os.getpid()
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.admin.command("ping")
    heir.stop()  # inherited: stopped at our clean shutdown
    assert not alive(pid)
    assert not heir.state_path.exists()


def test_killing_the_owner_stops_its_database_and_a_restart_waits_for_it(tmp_path, spawn_owner):
    data_dir = tmp_path / "db"
    owner, uri, pid = spawn_owner(data_dir, True)
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=5000) as client:
        client.survivors.items.insert_one({"_id": "kept"})

    owner.kill()  # like kill -9 of the engine: PR_SET_PDEATHSIG sends the server SIGTERM
    owner.wait()
    restarted = EmbeddedDatabase(data_dir)
    try:
        restarted.start()  # must wait for the exiting server (WiredTiger lock), not adopt it
        assert not restarted.adopted
        assert restarted.pid != pid
        assert not alive(pid)
        with pymongo.MongoClient(restarted.uri, serverSelectionTimeoutMS=5000) as client:
            assert client.survivors.items.find_one({"_id": "kept"}) == {"_id": "kept"}
    finally:
        restarted.stop()


def test_start_fails_clearly_when_the_storage_path_is_unusable(tmp_path):
    data_dir = tmp_path / "db"
    data_dir.mkdir()
    (data_dir / "wiredtiger").write_text("not a directory")
    database = EmbeddedDatabase(data_dir)
    with pytest.raises(EmbeddedDatabaseError) as caught:
        database.start()
    assert "exited with code" in caught.value.message
    assert "File exists" in caught.value.message  # the tail of the server's log
    assert database.pid is None
    assert not database.state_path.exists()

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    with pytest.raises(EmbeddedDatabaseError, match="cannot use data directory"):
        EmbeddedDatabase(blocked / "db").start()


STALLED_OWNER_SCRIPT = """
import sys
from pathlib import Path
from storage.embedded import EmbeddedDatabase

def stall(self, started_at):
    # The server listens, but the engine dies before server.json names it.
    print(self.uri, self.pid, flush=True)
    sys.stdin.read()

EmbeddedDatabase._write_state = stall
EmbeddedDatabase(Path(sys.argv[1]), stop_with_owner=sys.argv[2] == "1").start()
"""
"""An engine that is killed while its database starts: after the server listens, before
``server.json`` names it (the moment the next run used to fail at)."""


@pytest.mark.parametrize("stop_with_owner", [True, False], ids=["pdeathsig", "lives-on"])
def test_a_restart_clears_the_database_a_killed_engine_left_starting(tmp_path, stop_with_owner):
    data_dir = tmp_path / "db"
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            STALLED_OWNER_SCRIPT,
            str(data_dir),
            "1" if stop_with_owner else "0",
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None
    line = owner.stdout.readline().split()
    assert len(line) == 2, f"the owner did not start its database: {line}"
    orphan_uri, orphan = line[0], int(line[1])
    try:
        with pymongo.MongoClient(orphan_uri, serverSelectionTimeoutMS=5000) as client:
            client.survivors.items.insert_one({"_id": "kept"})
        assert not (data_dir / "server.json").exists()
        owner.kill()  # kill -9 of the engine mid-start
        owner.wait()

        restarted = EmbeddedDatabase(data_dir)
        try:
            restarted.start()  # must not fail on the WiredTiger lock the orphan holds
            assert restarted.pid != orphan and not restarted.adopted
            assert not alive(orphan)
            with pymongo.MongoClient(restarted.uri, serverSelectionTimeoutMS=5000) as client:
                assert client.survivors.items.find_one({"_id": "kept"}) == {"_id": "kept"}
        finally:
            restarted.stop()
    finally:
        if owner.poll() is None:
            owner.kill()
        owner.communicate()  # reaps it and closes its pipes
        if alive(orphan):
            os.kill(orphan, signal.SIGKILL)
            wait_until(lambda: not alive(orphan), f"orphan {orphan} exits")


def test_a_live_process_on_the_folder_is_neither_killed_nor_doubled(tmp_path, spawn_owner):
    """A database whose engine lives on is never killed by another engine's start."""
    data_dir = tmp_path / "db"
    _owner, _uri, pid = spawn_owner(data_dir, False)
    (data_dir / "server.json").unlink()  # nothing names it: only its lock shows it
    other = EmbeddedDatabase(data_dir, start_timeout=1.0)
    with pytest.raises(EmbeddedDatabaseError, match="started by the live pid"):
        other.start()
    assert alive(pid)
    assert other.pid is None


def listening_tcp_inodes() -> set[str]:
    """Inodes of every listening TCP socket on this host (state 0A in /proc/net/tcp*)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table) as fh:
            for row in list(fh)[1:]:
                fields = row.split()
                if fields[3] == "0A":
                    inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    return inodes


CONNECT_SCRIPT = """
import sys
import pymongo
try:
    with pymongo.MongoClient(sys.argv[1], serverSelectionTimeoutMS=2000) as client:
        client.admin.command("ping")
except pymongo.errors.PyMongoError as exc:
    print("refused:", exc)
    sys.exit(3)
print("connected")
"""


def connect_as_nobody(path: Path) -> int:
    """errno of a unix-socket connect to ``path`` by uid/gid 65534 (0: it connected).

    A forked child (another user's client need not run our venv's Python, which that user
    may not be allowed to execute) that does nothing but switch user and connect.
    """
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, just an exit code
        code = 0
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
        except OSError as exc:
            code = exc.errno or 255
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_only_the_engines_user_can_reach_the_database(database):
    uri = database.start()
    assert database.pid is not None
    assert uri.startswith("mongodb://%2F") and database.socket_path.parent == database.data_dir

    def mode(path: Path) -> int:
        return stat.S_IMODE(os.stat(path).st_mode)

    assert mode(database.data_dir) == 0o700
    for private in (database.state_path, database.socket_path, database.lock_path):
        assert mode(private) == 0o600, private
    assert mode(database.log_path) & 0o077 == 0
    # No TCP port at all: the server's only listening socket is the unix one.
    assert not socket_inodes(database.pid) & listening_tcp_inodes()
    assert "secantus listening on unix socket" in database.log_path.read_text()

    if os.geteuid() == 0:  # only root can become another user to try
        assert connect_as_nobody(database.socket_path) == errno.EACCES
    same_user = subprocess.run(
        [sys.executable, "-c", CONNECT_SCRIPT, uri], capture_output=True, text=True, timeout=60
    )
    assert same_user.stdout.strip() == "connected", same_user.stdout + same_user.stderr


def test_an_existing_folder_is_made_private_on_start(tmp_path):
    data_dir = tmp_path / "db"
    data_dir.mkdir(mode=0o755)
    os.chmod(data_dir, 0o755)  # a folder an older engine made
    (data_dir / ".server.json.1.tmp").write_text("{}")
    with EmbeddedDatabase(data_dir) as database:
        assert stat.S_IMODE(os.stat(data_dir).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(database.state_path).st_mode) == 0o600


def test_a_long_data_folder_gets_its_socket_in_a_private_runtime_folder(tmp_path, monkeypatch):
    runtime = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
        data_dir = tmp_path / ("a-long-folder-name-" * 6) / "db"
        with EmbeddedDatabase(data_dir) as database:
            assert database.socket_path.parent == runtime / f"illustrator-{os.getuid()}"
            assert stat.S_IMODE(os.stat(database.socket_path.parent).st_mode) == 0o700
            with pymongo.MongoClient(database.uri, serverSelectionTimeoutMS=5000) as client:
                client.admin.command("ping")
    finally:
        shutil.rmtree(runtime, ignore_errors=True)
