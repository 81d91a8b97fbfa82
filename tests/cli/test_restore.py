"""`illustrator sessions restore` never rolls a record back, unless --force replaces it."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import LONG_BOOK, Cli, ok, session_ids, snapshot
from test_process import pause_after

pytestmark = pytest.mark.timeout(240)


def test_an_older_bundle_is_refused_and_force_replaces_the_session_with_it(cli: Cli) -> None:
    book = str(cli.book(text=LONG_BOOK))
    assert pause_after(cli, book, "--max-moments", "1", acks=8).returncode == 0
    (sid,) = session_ids(cli)
    bundle = cli.out.parent / "bundle.json"
    shutil.copyfile(cli.out / "sessions" / "recovery" / f"{sid}.json", bundle)
    paused_at = len(json.loads(bundle.read_text())["checkpoints"])
    ok(cli.run("process", book, "--max-moments", "1", "--quiet"))  # resumed to completion
    completed = cli.db()["sessions"].find_one({"_id": sid})
    assert completed["status"] == "completed"
    last = completed["last_sequence_number"]
    assert last > paused_at
    before = snapshot(cli)

    refused = cli.run("sessions", "restore", str(bundle))

    assert refused.returncode == 1, refused.stdout
    assert f"session {sid} is not restored: the database holds checkpoint {last} (completed)" in (
        refused.stderr
    )
    assert f"the files hold checkpoint {last} (completed)" in refused.stderr
    assert f"Restoring this bundle (checkpoint {paused_at}, paused) would roll it back" in (
        refused.stderr
    )
    assert "Pass --force to replace the session with the bundle." in refused.stderr
    assert snapshot(cli) == before, "a refused restore changed something"
    ok(cli.run("sessions", "verify"))

    forced = ok(cli.run("sessions", "restore", str(bundle), "--force"))

    assert f"Replaced: checkpoint file {sid}_{last:08d}.json" in forced.stdout
    assert f"Restored session {sid}: paused, checkpoint {paused_at}," in forced.stdout
    document = cli.db()["sessions"].find_one({"_id": sid})
    assert (document["status"], document["last_sequence_number"]) == ("paused", paused_at)
    active = cli.out / "sessions" / "active_sessions"
    session_file = json.loads((active / f"{sid}.json").read_text())
    assert (session_file["status"], session_file["last_sequence_number"]) == ("paused", paused_at)
    checked = ok(cli.run("sessions", "verify"))  # files and database equal again
    assert "OK: files readable" in checked.stdout
    again = ok(cli.run("sessions", "restore", str(bundle)))  # the same state: nothing newer
    assert f"Restored session {sid}: paused, checkpoint {paused_at}," in again.stdout

    resumed = ok(cli.run("process", book, "--max-moments", "1", "--quiet"))
    assert f"Resuming session {sid}" in resumed.stdout
    assert cli.db()["sessions"].find_one({"_id": sid})["status"] == "completed"
    ok(cli.run("sessions", "verify"))
