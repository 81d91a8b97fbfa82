"""Benchmark: how long the embedded SecantusDB takes to start, in the four ways it starts.

Each round, on one fresh temporary data folder, times ``EmbeddedDatabase.start()`` (until
the server answers a ping) when:

1. ``fresh``: the folder is empty (WiredTiger creates its files);
2. ``after stop``: the server of the same object was stopped cleanly (the stop is timed too);
3. ``after db kill -9``: the server was killed with SIGKILL (its lock file is left behind);
4. ``after owner kill -9``: an owner process that started the server was killed with
   SIGKILL, so the server got SIGTERM through PR_SET_PDEATHSIG and is still exiting: the
   start must wait for it (or stop it) before WiredTiger lets a new one in;
5. ``owner killed mid-start``: the same, but the owner is killed at a random moment in the
   first second after it spawned its server (before ``server.json`` names it).

Prints the median and the maximum of each over the rounds.

Run: ``.venv/bin/python bench/embedded_start.py [--rounds 5] [--repo PATH] [--json FILE]``.
``--repo`` measures another checkout's ``storage/embedded.py`` with this venv (the "before"
of a change).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

OWNER = """
import sys
from pathlib import Path
from storage.embedded import EmbeddedDatabase
database = EmbeddedDatabase(Path(sys.argv[1]))
database.start()
print("up", flush=True)
sys.stdin.read()
"""


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == pid:
                found.append(int(entry))
    return found


def owner(repo: Path, data_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir)],
        cwd=repo,
        env={**os.environ, "PYTHONPATH": str(repo)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def timed_start(database: Any) -> float:
    started = time.perf_counter()
    database.start()
    return time.perf_counter() - started


def one_round(repo: Path, folder: Path, embedded: Any) -> dict[str, float]:
    times: dict[str, float] = {}
    database = embedded.EmbeddedDatabase(folder / "db")
    times["fresh"] = timed_start(database)
    started = time.perf_counter()
    database.stop()
    times["stop"] = time.perf_counter() - started
    times["after stop"] = timed_start(database)
    assert database.pid is not None
    os.kill(database.pid, signal.SIGKILL)
    while database.is_running():
        time.sleep(0.01)
    times["after db kill -9"] = timed_start(database)
    database.stop()

    process = owner(repo, folder / "db")
    assert process.stdout is not None and process.stdout.readline().strip() == "up"
    process.kill()
    process.wait()
    heir = embedded.EmbeddedDatabase(folder / "db")
    times["after owner kill -9"] = timed_start(heir)
    heir.stop()

    process = owner(repo, folder / "db")
    deadline = time.monotonic() + 30
    while not children(process.pid):
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError("the owner process never spawned its database")
        time.sleep(0.005)
    time.sleep(random.uniform(0.0, 1.0))
    process.kill()
    process.wait()
    heir = embedded.EmbeddedDatabase(folder / "db")
    try:
        times["owner killed mid-start"] = timed_start(heir)
    except Exception as exc:  # noqa: BLE001 - the "before" of the fix fails here; count it
        print(f"  owner killed mid-start: start FAILED: {str(exc).splitlines()[0]}")
        times["owner killed mid-start"] = float("nan")
        time.sleep(3)  # let the orphan exit before the next round
    heir.stop()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    repo = args.repo.resolve()
    sys.path.insert(0, str(repo))
    import storage.embedded as embedded

    print(f"repo {repo}; {os.cpu_count()} CPUs; load {os.getloadavg()}")
    rounds: list[dict[str, float]] = []
    for number in range(1, args.rounds + 1):
        with tempfile.TemporaryDirectory(prefix="embedded-start-") as tmp:
            times = one_round(repo, Path(tmp), embedded)
        rounds.append(times)
        print(f"round {number}: " + ", ".join(f"{k} {v:.2f} s" for k, v in times.items()))
    summary: dict[str, dict[str, float]] = {}
    for key in rounds[0]:
        values = [r[key] for r in rounds if r[key] == r[key]]  # NaN = a failed start
        failed = len(rounds) - len(values)
        summary[key] = {
            "median_s": statistics.median(values) if values else float("nan"),
            "max_s": max(values) if values else float("nan"),
            "failed": failed,
        }
        print(
            f"{key:24} median {summary[key]['median_s']:.2f} s  max {summary[key]['max_s']:.2f} s"
            + (f"  FAILED {failed} of {len(rounds)}" if failed else "")
        )
    if args.json is not None:
        args.json.write_text(json.dumps({"rounds": rounds, "summary": summary}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
