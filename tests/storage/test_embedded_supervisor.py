"""EmbeddedSupervisor against a real SecantusDB process: restarts, backoff, stop order."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pymongo
import pytest

from storage.embedded import EmbeddedDatabase
from storage.embedded_processes import lock_holder
from storage.embedded_supervisor import DatabaseState, EmbeddedSupervisor

pytestmark = pytest.mark.timeout(180)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Poll real state until ``condition`` holds (bounded; no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting until {what}")
        time.sleep(0.02)


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[Callable[..., EmbeddedSupervisor]]:
    """Make supervisors of fresh data folders; each is stopped at teardown."""
    made: list[EmbeddedSupervisor] = []

    def make(**options: float) -> EmbeddedSupervisor:
        supervisor = EmbeddedSupervisor(EmbeddedDatabase(tmp_path / f"db{len(made)}"), **options)
        made.append(supervisor)
        return supervisor

    yield make
    for supervisor in made:
        supervisor.stop()


def kill_database(supervisor: EmbeddedSupervisor) -> int:
    pid = supervisor.database.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    return pid


def delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The restart delays the supervisor announced, in order."""
    return [
        float(record.args[0])  # type: ignore[index]
        for record in caplog.records
        if record.name == "storage.embedded_supervisor"
        and record.msg.startswith("restarting the embedded SecantusDB in")
    ]


def test_a_killed_database_comes_back_on_the_same_socket_with_its_data(supervised):
    supervisor = supervised(first_delay=0.1)
    uri = supervisor.start()
    status = supervisor.status()
    assert (status.state, status.restarts, status.last_exit) == (DatabaseState.RUNNING, 0, None)
    with pymongo.MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        client.kept.items.insert_one({"_id": 1})
        killed = kill_database(supervisor)
        wait_until(lambda: supervisor.status().restarts == 1, "the database is restarted")
        status = supervisor.status()
        assert status.state == DatabaseState.RUNNING
        assert status.last_exit == "signal SIGKILL"
        assert status.pid is not None and status.pid != killed
        assert supervisor.database.uri == uri  # same socket: the open client reconnects
        assert client.kept.items.find_one({"_id": 1}) == {"_id": 1}
    assert supervisor.status().to_dict()["state"] == "running"


def test_restarts_back_off_exponentially_up_to_the_cap_and_retry_failures(supervised, caplog):
    caplog.set_level(logging.INFO, logger="storage.embedded_supervisor")
    supervisor = supervised(first_delay=0.1, max_delay=0.25, stable_after=600)
    supervisor.start()
    config = supervisor.database.data_dir / "secantusd.toml"

    kill_database(supervisor)
    wait_until(lambda: supervisor.status().restarts == 1, "the first restart")
    # The next start fails for real (SecantusDB cannot read a folder as its config file)
    # until the test puts the file back: failed restarts are retried, with backoff.
    config.unlink()
    config.mkdir()
    kill_database(supervisor)
    wait_until(lambda: len(delays(caplog)) >= 4, "two failed restarts")
    config.rmdir()
    wait_until(lambda: supervisor.status().restarts == 2, "the second restart")

    announced = delays(caplog)
    assert announced[:4] == [0.1, 0.2, 0.25, 0.25]  # 0.1 * 2**(n-1), capped at 0.25
    failures = [r for r in caplog.records if r.msg.startswith("restart of the embedded")]
    assert len(failures) >= 2
    assert supervisor.status().state == DatabaseState.RUNNING


def test_stop_ends_supervision_first_then_the_database(supervised):
    supervisor = supervised(first_delay=60.0)
    supervisor.start()
    database = supervisor.database
    kill_database(supervisor)
    wait_until(lambda: supervisor.status().state == DatabaseState.RESTARTING, "a restart waits")

    started = time.monotonic()
    supervisor.stop()  # does not wait out the 60 s delay, and starts nothing
    assert time.monotonic() - started < 30
    assert supervisor.status().state == DatabaseState.STOPPED
    assert lock_holder(database.lock_path) is None  # no database process on the folder
    assert supervisor.status().restarts == 0


def test_stop_stops_a_running_database(supervised):
    supervisor = supervised()
    supervisor.start()
    pid = supervisor.database.pid
    supervisor.stop()
    assert supervisor.status().state == DatabaseState.STOPPED
    assert lock_holder(supervisor.database.lock_path) is None
    assert pid is not None and not Path(f"/proc/{pid}").exists()
