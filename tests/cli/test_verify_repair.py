"""`illustrator sessions verify` only reads and tells; `sessions repair` heals and says what."""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    ROOT,
    SCRIPT,
    Cli,
    free_port,
    ok,
    session_ids,
    snapshot,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.timeout(180)


def illustrate(cli: Cli) -> str:
    """One completed 2-chapter session; returns its id."""
    ok(cli.run("process", str(cli.book()), "--max-moments", "2", "--quiet"))
    (sid,) = session_ids(cli)
    return sid


def checkpoint_files(cli: Cli, sid: str) -> list[Path]:
    return sorted((cli.out / "sessions" / "checkpoints").glob(f"{sid}_*.json"))


def test_verify_changes_nothing_and_names_a_torn_checkpoint_file(cli: Cli) -> None:
    sid = illustrate(cli)
    torn = checkpoint_files(cli, sid)[2]
    torn.write_bytes(torn.read_bytes()[:20])  # head -c 20 f > t && mv t f
    for name in cli.db().list_collection_names():  # so that creating an index would show
        cli.db()[name].drop_indexes()
    before = snapshot(cli)

    done = cli.run("sessions", "verify")

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"{torn}: torn file (not valid JSON" in done.stdout
    assert "NOT OK" in done.stdout
    assert snapshot(cli) == before, "verify changed files or the database"


def test_repair_heals_the_torn_file_from_the_database_and_names_the_direction(cli: Cli) -> None:
    sid = illustrate(cli)
    torn = checkpoint_files(cli, sid)[2]
    intact = torn.read_bytes()
    torn.write_bytes(intact[:20])

    repaired = ok(cli.run("sessions", "repair"))

    assert f"session {sid}: checkpoint files 3, database -> file" in repaired.stdout
    assert json.loads(torn.read_bytes()) == json.loads(intact)
    checked = ok(cli.run("sessions", "verify"))
    assert "OK: files readable" in checked.stdout
    again = ok(cli.run("sessions", "repair"))
    assert "Nothing to heal" in again.stdout


def drop_events_after(db: Any, sid: str, seq: int) -> int:
    """Delete a session's events after ``seq`` wherever the database holds them (one per
    document, in log buckets, inside checkpoint documents); returns its last event."""
    last = max(
        [int(d["event_seq"]) for d in db["logs"].find({"session_id": sid})]
        + [int(d.get("last_event_seq") or 0) for d in db["checkpoints"].find({"session_id": sid})]
    )
    newer = {"event_seq": {"$gt": seq}}
    db["logs"].delete_many({"session_id": sid, "entries": {"$exists": False}, **newer})
    db["logs"].update_many({"session_id": sid}, {"$pull": {"entries": newer}})
    db["checkpoints"].update_many({"session_id": sid}, {"$pull": {"logs": newer}})
    return last


def test_verify_reports_the_events_missing_from_the_database(cli: Cli) -> None:
    sid = illustrate(cli)
    last = drop_events_after(cli.db(), sid, 12)  # as lost in an outage

    done = cli.run("sessions", "verify")

    assert done.returncode == 1, done.stdout
    assert f"{sid}: events 13-{last} are missing from the database" in done.stdout
    assert f"the session's last event is {last}; 12 stored, 1-12" in done.stdout


def test_verify_lists_quarantined_records(cli: Cli) -> None:
    sid = illustrate(cli)
    ok(cli.run("sessions", "verify"))
    folder = cli.out / "sessions" / "quarantine"
    folder.mkdir()
    record = {
        "format_version": 1,
        "session_id": sid,
        "kind": "log",
        "reason": "the database refused it: text that is not valid UTF-8",
        "quarantined_at": "2026-12-01T10:00:00.000+00:00",
        "record": {"event_seq": 7},
    }
    (folder / f"{sid}_log_1a2b.json").write_text(json.dumps(record))

    done = cli.run("sessions", "verify")

    assert done.returncode == 1, done.stdout
    assert "1 quarantined records (sessions/quarantine/)" in done.stdout
    assert (
        f"{sid}_log_1a2b.json: log record of session {sid}, quarantined at"
        " 2026-12-01T10:00:00.000+00:00: the database refused it" in done.stdout
    )


def test_verify_catches_a_session_document_that_disagrees_with_its_file_and_checkpoint(
    cli: Cli,
) -> None:
    sid = illustrate(cli)
    # What restoring an old bundle did to the record (issue 14.2): paused, 73 %, 1 chapter.
    cli.db()["sessions"].update_one(
        {"_id": sid},
        {"$set": {"status": "paused", "progress_percent": 73, "processed_chapters": [1]}},
    )

    done = cli.run("sessions", "verify")

    assert done.returncode == 1, done.stdout
    assert f"{sid}: the session document says progress_percent 73, its last checkpoint" in (
        done.stdout
    )
    assert f"{sid}: the session document says processed_chapters [1]" in done.stdout
    assert f"{sid}: the session document says paused, but its last checkpoint is" in done.stdout
    assert f"{sid}: the session file says completed, the session document paused" in done.stdout


def poison(path: Path) -> None:
    """Put a lone surrogate (valid JSON, never valid UTF-8) into a checkpoint file."""
    document = json.loads(path.read_text())
    document["checkpoint_data"]["note"] = "\ud800"
    path.write_text(json.dumps(document))  # ensure_ascii: written as the escape \ud800
    assert "\\ud800" in path.read_text()


def test_a_file_value_the_database_cannot_store_is_reported_and_start_up_survives_it(
    cli: Cli,
) -> None:
    sid = illustrate(cli)
    poisoned = checkpoint_files(cli, sid)[4]
    poison(poisoned)
    cli.database += "_empty"  # a database that never saw the session: files -> database

    checked = cli.run("sessions", "verify")
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"{poisoned}: holds text that is not valid UTF-8" in checked.stdout
    assert "Traceback" not in checked.stderr

    repaired = cli.run("sessions", "repair")
    assert repaired.returncode == 1, repaired.stdout + repaired.stderr
    assert "1 not healed:" in repaired.stdout
    assert f"checkpoint file 5 of session {sid} holds text that is not valid UTF-8" in (
        repaired.stdout
    )
    assert "Traceback" not in repaired.stderr

    server = start_server(cli)  # start-up reconciliation meets the same record
    try:
        record = server.call("GET", f"/api/sessions/{sid}")
        assert record["status"]["status"] == "completed"  # from its files
    finally:
        output = stop_server(server)
    assert "not valid UTF-8" in output
    assert "Traceback" not in output


def test_serve_refuses_a_bad_or_taken_port_before_touching_the_database(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "ILLUSTRATOR_OUTPUT_DIRECTORY": str(out)}  # embedded database

    def serve(port: str) -> subprocess.CompletedProcess[str]:
        command = [str(SCRIPT), "serve", "--port", port]
        return subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    done = serve("99999")
    assert done.returncode == 2
    assert "argument --port: port must be 0..65535" in done.stderr
    assert "Traceback" not in done.stderr
    port = free_port()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        done = serve(str(port))
    assert done.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (out / "database").exists(), "the database was started for nothing"
