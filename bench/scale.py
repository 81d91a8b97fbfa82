"""Benchmark: memory (RSS) and threads of the engine process with N live sessions.

For each level (default 100, 1,000, 2,000) a fresh child process starts a fresh embedded
SecantusDB and Engine (``max_concurrent_sessions`` = N), measures a baseline (engine
started, one manuscript saved, no session), then starts N sessions whose analyzer blocks
on a ``threading.Event``: every session stays live inside its ANALYZE step after three
acknowledged checkpoints. When all N are inside the provider call it runs
``gc.collect()``, waits ``--settle`` seconds and reads ``/proc/self/status`` (VmRSS,
VmHWM, Threads) and the database server's VmRSS (a separate process, reported apart).

Prints per level: engine RSS total, RSS per session ((RSS - baseline) / N and RSS / N),
peak RSS, threads, live snapshots, database RSS, seconds to get all N live.
Target: 2,000 live sessions in at most 500 MB RSS (engine process).

Run: ``.venv/bin/python bench/scale.py [--sessions 100,1000,2000] [--quick] [--json FILE]``.
``--quick`` = 10,100,200.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from checkpoints import save_manuscripts  # noqa: E402
from restart_recovery import GateAnalyzer, gated_providers, make_config  # noqa: E402

from actors.engine import Engine  # noqa: E402
from storage.database import open_database  # noqa: E402

TARGET_SESSIONS = 2000
TARGET_MB = 500.0


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS, VmHWM (kB) and Threads of a process."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM", "Threads"):
                    found[key] = int(value.split()[0])
    except OSError:
        pass
    return found


def tree_rss_kb(pid: int) -> int:
    """RSS of a process and its children (the DB launcher execs, so usually just one)."""
    total = proc_status(pid).get("VmRSS", 0)
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return total + sum(tree_rss_kb(int(c)) for c in children)


async def level(out: Path, sessions: int, settle: float, timeout: float) -> dict[str, Any]:
    config = make_config(out, sessions, auto_resume=False)
    handle = open_database(config)
    analyzer = GateAnalyzer(2)
    analyzer.expected = sessions
    engine = Engine(config, handle.store_factory(config), providers=gated_providers(analyzer))
    await engine.start()
    mids = await save_manuscripts(engine, sessions, 2)
    gc.collect()
    await asyncio.sleep(settle)
    base = proc_status()
    started = time.perf_counter()
    for mid in mids:
        await engine.start_session(mid, max_emotional_moments=2)
    ok = await asyncio.to_thread(analyzer.all_entered.wait, timeout)
    live_seconds = time.perf_counter() - started
    gc.collect()
    await asyncio.sleep(settle)
    now = proc_status()
    db_pid = handle.embedded.pid if handle.embedded else None
    result = {
        "sessions": sessions,
        "all_live": ok,
        "in_provider": len(analyzer.entered),
        "live_snapshots": len(engine.hub.snapshots()),
        "seconds_to_live": live_seconds,
        "base_rss_kb": base.get("VmRSS", 0),
        "base_threads": base.get("Threads", 0),
        "rss_kb": now.get("VmRSS", 0),
        "hwm_kb": now.get("VmHWM", 0),
        "threads": now.get("Threads", 0),
        "python_threads": threading.active_count(),
        "db_rss_kb": tree_rss_kb(db_pid) if db_pid else 0,
    }
    print("RESULT " + json.dumps(result), flush=True)
    handle.stop()
    os._exit(0)


def run_level(sessions: int, args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="illustrator-scale-"))
    try:
        argv = [
            sys.executable,
            __file__,
            "--child",
            str(sessions),
            "--output-dir",
            str(base / "out"),
            "--settle",
            str(args.settle),
            "--timeout",
            str(args.timeout),
        ]
        proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
        for line in proc.stdout.splitlines():
            if line.startswith("RESULT "):
                return dict(json.loads(line[7:]))
            print("  child: " + line)
        raise SystemExit(f"level {sessions}: child exited {proc.returncode} without a result")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="100,1000,2000")
    parser.add_argument("--quick", action="store_true", help="levels 10,100,200")
    parser.add_argument("--settle", type=float, default=1.0, help="seconds before reading RSS")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        asyncio.run(level(args.output_dir, args.child, args.settle, args.timeout))
        return 0
    levels = [10, 100, 200] if args.quick else [int(s) for s in args.sessions.split(",") if s]
    print(f"{os.cpu_count()} CPUs; load {os.getloadavg()}; levels {levels}", flush=True)
    rows = []
    for n in levels:
        r = run_level(n, args)
        rows.append(r)
        print(
            f"  {n} sessions: RSS {r['rss_kb'] / 1024:.0f} MB"
            f" (baseline {r['base_rss_kb'] / 1024:.0f} MB),"
            f" threads {r['threads']}, live {r['live_snapshots']}, in {r['seconds_to_live']:.1f}s",
            flush=True,
        )
    header = (
        f"{'sessions':>8} {'RSS MB':>8} {'base MB':>8} {'KB/sess':>8} {'KB/sess':>8}"
        f" {'peak MB':>8} {'threads':>8} {'live':>6} {'DB MB':>7} {'to live s':>9}"
    )
    print("\n" + header + "\n" + " " * 36 + "(delta)  (total)")
    print("-" * len(header))
    for r in rows:
        n = r["sessions"]
        print(
            f"{n:>8} {r['rss_kb'] / 1024:>8.1f} {r['base_rss_kb'] / 1024:>8.1f}"
            f" {(r['rss_kb'] - r['base_rss_kb']) / n:>8.1f} {r['rss_kb'] / n:>8.1f}"
            f" {r['hwm_kb'] / 1024:>8.1f} {r['threads']:>8} {r['live_snapshots']:>6}"
            f" {r['db_rss_kb'] / 1024:>7.1f} {r['seconds_to_live']:>9.1f}"
        )
    at_target = [r for r in rows if r["sessions"] == TARGET_SESSIONS]
    for r in at_target:
        mb = r["rss_kb"] / 1024
        print(
            f"\ntarget: {TARGET_SESSIONS} live sessions in <= {TARGET_MB:.0f} MB RSS:"
            f" {mb:.0f} MB -> {'MET' if mb <= TARGET_MB else 'MISSED'}"
            f" (database process not counted: {r['db_rss_kb'] / 1024:.0f} MB more)"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["all_live"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
