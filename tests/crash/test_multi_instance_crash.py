"""Two real servers share one database and one output folder; one is `kill -9`ed mid-work.

Guarantee 7 of docs/architecture.md with real processes: sessions started on server A are
taken over by server B once A dies (B notices on its periodic lease check: A's process is gone from
this host, so B need not wait out the lease), and B finishes them. What must hold:

* B does not touch A's sessions while A lives (its first lease checks run during A's work);
* after the kill every session completes on B, each lease epoch 1 (A) then 2 (B);
* no acknowledged checkpoint is lost, sequence numbers are gap-free, files (shared folder)
  and database agree checkpoint for checkpoint;
* nothing finished is redone: the output equals an uninterrupted run's (checkpoint data,
  image files' hashes), each image is recorded once and generated at most once more than
  once in total (only a call A had in flight at the kill can be made again);
* B's start-up on the folder A writes to removes none of A's writes in flight.

The database is the test run's shared SecantusDB (a fresh database name), so that both
servers use it as an external MongoDB, as a multi-instance deployment does.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path

import pytest
from test_crash_loop import (
    CHAPTERS,
    MOMENTS,
    AckWatcher,
    Server,
    check_files,
    comparable,
    database_checkpoints,
    image_hashes,
    run_reference,
    start_batch,
    wait_until,
)
from test_crash_loop import Ledger as _Ledger

from pipeline.providers import read_call_log

pytestmark = pytest.mark.timeout(300)

SESSIONS = 3
LEASE_SECONDS = 3


class SharedServer(Server):
    """`illustrator serve` on a shared output folder and an external database."""

    def __init__(self, folder: Path, out: Path, uri: str, database: str, name: str) -> None:
        super().__init__(folder)
        self.out = out
        self.uri = uri
        self.database = database
        self.name = name

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "ILLUSTRATOR_MONGODB_URI": self.uri,
            "ILLUSTRATOR_MONGODB_DATABASE": self.database,
            "ILLUSTRATOR_PROCESSING_LEASE_SECONDS": str(LEASE_SECONDS),
        }


def test_a_killed_instance_sessions_are_finished_by_another(
    tmp_path: Path, embedded_db_uri: str
) -> None:
    reference, reference_images, per_session = run_reference(tmp_path / "reference")

    database = f"multi_{uuid.uuid4().hex[:12]}"
    shared = tmp_path / "shared-out"
    a = SharedServer(tmp_path / "a", shared, embedded_db_uri, database, "a")
    b = SharedServer(tmp_path / "b", shared, embedded_db_uri, database, "b")
    ledger = _Ledger()
    try:
        a.start()
        manuscripts = start_batch(a, SESSIONS)  # each session its own manuscript
        sessions = list(manuscripts)
        ledger.sessions += sessions
        b.start()  # while A works: B's start-up and lease checks must leave A's work alone
        watcher = AckWatcher(a.port, sessions)
        try:
            watcher.start()

            def midway() -> bool:
                acked, _ = watcher.state()
                # Every session well into its chapters, none finished.
                return all(acked[sid] >= per_session // 3 for sid in sessions)

            wait_until(midway, 120, "every session a third done on A", a)
            health = b.get("/health")
            assert health["leases_held"] == 0, health  # B took nothing while A lived
        finally:
            a.kill()
            watcher.close()
        acked, completed = watcher.state()
        assert not completed, "a session finished before the kill; the test proves nothing"
        ledger.acked.update(acked)
        check_files(shared, ledger)  # nothing acknowledged lost at the kill

        def all_completed() -> bool:
            return all(
                b.get(f"/api/sessions/{sid}")["status"]["status"] == "completed" for sid in sessions
            )

        wait_until(all_completed, 180, "B to finish A's sessions", b)
        log = b.log_tail(200_000)
        for sid in sessions:
            assert f"session {sid} was interrupted" in log and "taken over" in log, log[-4000:]
        stored = {sid: database_checkpoints(b, sid) for sid in sessions}
        assert b.terminate() == 0, b.log_tail()
    finally:
        for server in (a, b):
            if server.process is not None:
                server.kill()

    checkpoints = check_files(shared, ledger)
    for sid in sessions:
        files = checkpoints[sid]
        assert [cp.to_json() for cp in files] == [cp.to_json() for cp in stored[sid]], sid
        assert len(files) == per_session
        epochs = [cp.epoch for cp in files]
        assert epochs == sorted(epochs) and set(epochs) == {1, 2}, epochs
        assert epochs.count(1) >= acked[sid], (sid, epochs, acked[sid])
        assert comparable(files, manuscripts[sid]) == reference, sid
        assert image_hashes(shared, sid) == reference_images, sid

    # Each image generated once per session, but for the call A had in flight at the kill
    # (one per session at most): made again by B if A died inside it, or missing from the
    # log if A died after writing the image but before logging the call (a line is written
    # once a call returns), and then B rightly found the image and did not make it again.
    # The three sessions illustrate the same manuscript, so they share the call keys.
    calls: Counter[str] = Counter()
    for server in (a, b):
        if server.calls.exists():
            for entry in read_call_log(server.calls):
                if entry.get("stage") == "image":
                    calls[json.dumps(entry.get("key"))] += 1
    assert len(calls) == CHAPTERS * MOMENTS, calls
    assert all(abs(n - SESSIONS) <= 1 for n in calls.values()), calls
    assert sum(abs(n - SESSIONS) for n in calls.values()) <= SESSIONS, calls
