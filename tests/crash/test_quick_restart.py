"""`illustrator process` killed while its embedded database starts, and run again at once.

Each cycle starts a run (the victim), waits until it has spawned its database process and
`kill -9`s it: at a random moment of the next second in even cycles, and the moment its
database says it listens (before `server.json` names it: the narrowest window) in odd
ones. The next run (the checker) starts at once, while the victim's database may still
be starting or exiting (PDEATHSIG sends it SIGTERM); it must get its database and start
its session ("Started session" / "Resuming session"), and is then killed too. A run that
ends on its own must have succeeded. The last run, left to finish, completes the session.

``ILLUSTRATOR_TEST_RESTART_CYCLES=200`` runs more cycles (default 4);
``ILLUSTRATOR_TEST_RESTART_SEED`` replays one sequence of kill moments.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage.embedded_processes import lock_holder

CYCLES = int(os.environ.get("ILLUSTRATOR_TEST_RESTART_CYCLES") or 4)
SEED = int(os.environ.get("ILLUSTRATOR_TEST_RESTART_SEED") or random.randrange(1 << 30))
SECONDS_PER_CYCLE = 15.0
"""Timeout budget per cycle (a cycle takes one or two seconds on 2 shared cores)."""

pytestmark = pytest.mark.timeout(180 + SECONDS_PER_CYCLE * CYCLES)


def book(folder: Path) -> Path:
    text = (
        "Thunder split the sky above the old castle and Elena screamed in terror. "
        "In the morning garden she laughed with joy, full of hope and warmth beside Marco. "
    )
    path = folder / "book.json"
    chapters = [{"number": n, "title": f"Chapter {n}", "content": text * 3} for n in (1, 2)]
    path.write_text(json.dumps({"title": "Quick", "author": "Test", "chapters": chapters}))
    return path


def children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (the run's database launcher or server)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # gone meanwhile
            continue
        if int(stat[1]) == pid:
            found.append(int(entry))
    return found


class Runs:
    """``illustrator process`` runs on one output folder, each with its own output file."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.command = [
            str(Path(sys.executable).parent / "illustrator"),
            "process", str(book(folder)), "--quiet", "--max-moments", "1",
        ]  # fmt: skip
        self.env = {
            **os.environ,
            "ILLUSTRATOR_OUTPUT_DIRECTORY": str(folder / "out"),
            "ILLUSTRATOR_PROVIDERS_IMAGE_SIZE": "32",
        }
        self.database_log = folder / "out" / "database" / "secantus.log"
        self.count = 0

    def start(self) -> tuple[subprocess.Popen[bytes], Path]:
        self.count += 1
        output = self.folder / f"run-{self.count}.log"
        with output.open("wb") as fh:
            run = subprocess.Popen(self.command, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        return run, output

    def log_size(self) -> int:
        return self.database_log.stat().st_size if self.database_log.exists() else 0

    def listening_since(self, offset: int) -> bool:
        with contextlib.suppress(OSError), self.database_log.open("rb") as fh:
            fh.seek(offset)
            return b"secantus listening on" in fh.read()
        return False


def poll_until(condition: Any, run: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll until ``condition()`` (True) or the run exits (False); bounded by ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if run.poll() is not None:
            return False
        assert time.monotonic() < deadline, "timed out waiting for the run"
        time.sleep(0.002)  # polling another process; the bound is the deadline
    return True


def ended_well(run: subprocess.Popen[bytes], output: Path, what: str) -> None:
    code = run.wait()
    assert code == 0, (
        f"{what} (seed {SEED}) exited with {code}:\n" + output.read_text(errors="replace")[-3000:]
    )


def kill(run: subprocess.Popen[bytes]) -> None:
    run.send_signal(signal.SIGKILL)
    run.wait()


STARTED = (b"Started session", b"Resuming session", b"already illustrated")
"""What a run prints once its database and engine are up."""


def run_victim(runs: Runs, rng: random.Random, at_listening: bool, what: str) -> bool:
    """Start a run and kill it while its database starts; False if it ended first."""
    offset = runs.log_size()
    victim, output = runs.start()
    if not poll_until(lambda: children(victim.pid), victim, 60):
        ended_well(victim, output, what)
        return False
    if at_listening:
        if not poll_until(lambda: runs.listening_since(offset), victim, 60):
            ended_well(victim, output, what)
            return False
    else:
        try:
            victim.wait(timeout=rng.uniform(0.0, 1.0))
        except subprocess.TimeoutExpired:
            pass
        else:
            ended_well(victim, output, what)
            return False
    kill(victim)
    return True


def run_checker(runs: Runs, what: str) -> None:
    """Start a run at once: it must get its database and start its session (then dies)."""
    checker, output = runs.start()
    if poll_until(lambda: any(s in output.read_bytes() for s in STARTED), checker, 120):
        kill(checker)
    else:
        ended_well(checker, output, what)


def test_process_killed_while_its_database_starts_runs_again_at_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    runs = Runs(tmp_path)
    kills = 0
    for cycle in range(CYCLES):
        kills += run_victim(runs, rng, at_listening=cycle % 2 == 1, what=f"victim {cycle}")
        run_checker(runs, f"checker {cycle}")

    last = subprocess.run(runs.command, env=runs.env, capture_output=True, text=True, timeout=300)
    assert last.returncode == 0, f"seed {SEED}:\n{last.stdout[-3000:]}{last.stderr[-3000:]}"
    assert "completed." in last.stdout or "already illustrated" in last.stdout, last.stdout
    print(f"{CYCLES} cycles (seed {SEED}): {kills} runs killed while their database started")
    # The last run stopped its database: nothing is left on the data folder.
    assert lock_holder(tmp_path / "out" / "database" / "database.lock") is None
