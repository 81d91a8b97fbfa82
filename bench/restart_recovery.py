"""Benchmark: seconds from process start until N interrupted sessions run again.

Two phases, each in its own process, on one fresh output folder (embedded SecantusDB):

1. setup (child process): an Engine starts N sessions whose analyzer blocks on a
   ``threading.Event`` that is never set, so every session stops inside its ANALYZE step
   after three acknowledged checkpoints (session_start, manuscript_loaded, chapter_start;
   seen on the EventHub as ``progress`` events, which are published only after the ack).
   When all N are there the child says READY and the parent ``kill -9``\\ s it. The
   embedded database gets SIGTERM through PR_SET_PDEATHSIG; the next start waits for it
   (or SIGKILLs it after its grace period), and that wait is part of the measured time.
2. measure (fresh child process): the parent records ``time.time()`` just before
   ``Popen``; the child starts as the server does (web/app.py): ``open_database`` on a
   worker thread while ``Engine.start(database)`` scans the files, then reconciliation,
   then ``recover()`` with ``processing.auto_resume`` on and ``max_concurrent_sessions >= N``.
   A hub listener (subscribed after ``start``, before ``recover``) records the first event
   of each session from its new SessionActor (``log "Resuming from ..."`` + ``status
   running``, emitted in ``on_start``); the blocking analyzer records when each session is
   back inside its provider call (work actually resumed). "All running" is the later of
   the last first-event and ``recover()`` returning, checked against ``hub.snapshots()``.

Prints: sessions recovered, seconds to all running from process start, and the breakdown
(interpreter + imports, database start, engine start incl. reconciliation, recover(),
wait for the last actor's first event). Target: all running within 5 s of start.

Run: ``.venv/bin/python bench/restart_recovery.py [--sessions 1000] [--quick] [--keep]
[--output-dir PATH] [--json FILE]``. ``--quick`` = 100 sessions.
"""

from __future__ import annotations

import time

_T_MAIN = time.time()  # first statement after the interpreter started (before our imports)

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

from checkpoints import (  # noqa: E402
    InstantAnalyzer,
    InstantImageGenerator,
    InstantPromptWriter,
    save_manuscripts,
)

from actors.engine import Engine  # noqa: E402
from actors.engine.recovery import Recovery  # noqa: E402
from config import config_from_mapping  # noqa: E402
from pipeline.providers import Providers  # noqa: E402
from storage.database import open_database  # noqa: E402

_T_IMPORTS = time.time()
TARGET_SECONDS = 5.0


class GateAnalyzer(InstantAnalyzer):
    """Blocks every call until ``gate`` is set; records when each chapter call arrived."""

    def __init__(self, count: int) -> None:
        super().__init__(count)
        self.gate = threading.Event()
        self.entered: list[float] = []
        self._lock = threading.Lock()
        self.all_entered = threading.Event()
        self.expected = 0

    def analyze(self, chapter: Any, max_moments: int) -> Any:
        with self._lock:
            self.entered.append(time.time())
            if self.expected and len(self.entered) >= self.expected:
                self.all_entered.set()
        self.gate.wait()
        return super().analyze(chapter, max_moments)


def make_config(out: Path, sessions: int, auto_resume: bool) -> Any:
    return config_from_mapping(
        {
            "output": {"directory": str(out)},
            "processing": {
                "max_concurrent_sessions": max(sessions, 1),
                "auto_resume": auto_resume,
            },
        },
        env=os.environ,
    )


def gated_providers(analyzer: GateAnalyzer) -> Providers:
    return Providers(analyzer, InstantPromptWriter(), InstantImageGenerator(fsync=False))


# --------------------------------------------------------------------------- phase 1


async def setup_phase(out: Path, sessions: int, timeout: float) -> None:
    config = make_config(out, sessions, auto_resume=False)
    handle = open_database(config)  # main thread: PDEATHSIG follows this process
    analyzer = GateAnalyzer(2)
    engine = Engine(config, handle.store_factory(config), providers=gated_providers(analyzer))
    await engine.start()
    acked: dict[str, int] = {}
    ready = asyncio.Event()

    def on_event(entry: Any) -> None:
        if entry.type == "progress":
            seq = int(entry.payload.get("sequence_number") or 0)
            if seq > acked.get(entry.session_id, 0):
                acked[entry.session_id] = seq
                if sum(1 for v in acked.values() if v >= 3) >= sessions:
                    ready.set()

    engine.hub.subscribe(None, on_event)
    mids = await save_manuscripts(engine, sessions, 2)
    started = time.perf_counter()
    for mid in mids:
        await engine.start_session(mid, max_emotional_moments=2)
    try:
        await asyncio.wait_for(ready.wait(), timeout)
    except TimeoutError:
        print(f"SETUP TIMEOUT {sum(1 for v in acked.values() if v >= 3)}/{sessions}", flush=True)
        os._exit(3)
    # Everything acknowledged is durable (acks follow the fsync + journaled write).
    print(
        "READY "
        + json.dumps(
            {
                "sessions": sessions,
                "seconds": time.perf_counter() - started,
                "live": len(engine.hub.snapshots()),
                "threads": threading.active_count(),
                "min_acked": min(acked.values()),
            }
        ),
        flush=True,
    )
    await asyncio.sleep(3600)  # the parent kills us with SIGKILL


# --------------------------------------------------------------------------- phase 2


async def measure_phase(out: Path, sessions: int, timeout: float) -> dict[str, Any]:
    config = make_config(out, sessions, auto_resume=True)
    # As the server starts (web/app.py): the database opens on a worker thread while
    # Engine.start reads the files, and Engine.start awaits it before reconciling.
    t_db0 = time.time()
    opening = asyncio.ensure_future(asyncio.to_thread(open_database, config))
    opened: dict[str, Any] = {}

    async def database() -> Any:
        opened["handle"] = handle = await opening
        opened["t_db"] = time.time()
        return handle.store_factory(config)

    analyzer = GateAnalyzer(2)
    analyzer.expected = sessions
    engine = Engine(config, None, providers=gated_providers(analyzer))
    await engine.start(database())
    t_engine = time.time()
    handle, t_db = opened["handle"], opened["t_db"]
    first_event: dict[str, float] = {}
    all_first = asyncio.Event()

    def on_event(entry: Any) -> None:
        if entry.session_id not in first_event:
            first_event[entry.session_id] = time.time()
            if len(first_event) >= sessions:
                all_first.set()

    engine.hub.subscribe(None, on_event)
    spent = instrument(engine)
    db_pid = handle.embedded.pid if handle.embedded else None
    cpu0, db_cpu0 = os.times(), cpu_seconds(db_pid)
    recovered = await engine.recover()
    t_recover = time.time()
    cpu1, db_cpu1 = os.times(), cpu_seconds(db_pid)
    timed_out = False
    try:
        await asyncio.wait_for(all_first.wait(), timeout)
        await asyncio.wait_for(asyncio.to_thread(analyzer.all_entered.wait), timeout)
    except TimeoutError:
        timed_out = True
    t_end = time.time()
    running = sum(1 for s in engine.hub.snapshots() if s.get("status") == "running")
    result = {
        "t_main": _T_MAIN,
        "t_imports": _T_IMPORTS,
        "t_db_begin": t_db0,
        "t_db": t_db,
        "t_engine": t_engine,
        "t_recover": t_recover,
        "t_all_first_event": max(first_event.values()) if first_event else float("nan"),
        "t_all_in_provider": max(analyzer.entered) if analyzer.entered else float("nan"),
        "t_end": t_end,
        "recovered": len(recovered),
        "first_events": len(first_event),
        "in_provider": len(analyzer.entered),
        "snapshots_running": running,
        "timed_out": timed_out,
        "reconcile_sessions": engine.last_reconcile.sessions_checked
        if engine.last_reconcile
        else None,
        "reconcile_to_db": engine.last_reconcile.checkpoints_to_database
        if engine.last_reconcile
        else None,
        "reconcile_decisions": len(engine.last_reconcile.decisions)
        if engine.last_reconcile
        else None,
        "db_adopted_or_waited": handle.embedded.adopted if handle.embedded else None,
        "threads": threading.active_count(),
        "recover_spent": spent,
        "recover_cpu_engine": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
        "recover_cpu_db": db_cpu1 - db_cpu0,
    }
    print("RESULT " + json.dumps(result), flush=True)
    # No clean engine stop (1,000 blocked sessions); stop the database, then leave.
    handle.stop()
    os._exit(0)


def instrument(engine: Engine) -> dict[str, list[float]]:
    """Wrap (on this instance only) what recover() awaits per session: [calls, seconds]."""
    spent: dict[str, list[float]] = {}

    def wrap(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # an older engine (before/after comparisons)
            return

        async def timed(*a: Any, **k: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*a, **k)
            finally:
                entry = spent.setdefault(label, [0, 0.0])
                entry[0] += 1
                entry[1] += time.perf_counter() - started

        setattr(owner, name, timed)

    wrap(engine, "load_state", "load_state (all)")
    wrap(engine, "load_state_and_lag", "load_state_and_lag (recovery)")
    wrap(engine, "load_records", "  load_records (db + files)")
    wrap(engine, "_max_stored_event_seq", "  _max_stored_event_seq (list_logs)")
    wrap(Recovery, "stored_event_seqs", "stored_event_seqs (per chunk)")
    wrap(Recovery, "database_records", "database_records (per chunk)")
    wrap(engine, "_acquire", "_acquire (leases, per chunk)")
    wrap(engine, "load_manuscript", "load_manuscript")
    wrap(engine, "_submit", "_submit (supervisor starts the actor)")
    if engine.store is not None:
        wrap(engine.store, "list_sessions", "store.list_sessions")
        wrap(engine.store, "get_session_for_resume", "  store.get_session_for_resume")
        wrap(engine.store, "list_logs", "  store.list_logs")
        wrap(engine.store, "get_manuscript", "  store.get_manuscript")
    return spent


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


# --------------------------------------------------------------------------- parent


def run_child(phase: str, out: Path, sessions: int, timeout: float) -> subprocess.Popen[str]:
    argv = [
        sys.executable,
        __file__,
        "--phase",
        phase,
        "--output-dir",
        str(out),
        "--sessions",
        str(sessions),
        "--timeout",
        str(timeout),
    ]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)


def read_tagged(proc: subprocess.Popen[str], tag: str) -> dict[str, Any]:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(tag + " "):
            return json.loads(line[len(tag) + 1 :])
        print("  child: " + line.rstrip(), flush=True)
    raise SystemExit(f"child exited (code {proc.wait()}) without {tag}")


def parent(args: argparse.Namespace) -> int:
    temporary = args.output_dir is None
    base = Path(tempfile.mkdtemp(prefix="illustrator-recovery-")) if temporary else args.output_dir
    out = base / "out"
    sessions = args.sessions
    print(
        f"output {out}; {os.cpu_count()} CPUs; {sessions} sessions; load {os.getloadavg()}",
        flush=True,
    )
    try:
        setup = run_child("setup", out, sessions, args.timeout)
        ready = read_tagged(setup, "READY")
        print(
            f"setup: {ready['sessions']} sessions blocked in ANALYZE after >= {ready['min_acked']}"
            f" acked checkpoints in {ready['seconds']:.1f}s ({ready['threads']} threads); kill -9",
            flush=True,
        )
        os.kill(setup.pid, signal.SIGKILL)
        setup.wait()
        t0 = time.time()
        measure = run_child("measure", out, sessions, args.timeout)
        r = read_tagged(measure, "RESULT")
        measure.wait()
    finally:
        if temporary and not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    def rel(key: str) -> float:
        return float(r[key]) - t0

    all_running = max(rel("t_all_first_event"), rel("t_recover"))
    rows = [
        ("interpreter start + imports", rel("t_imports")),
        ("  of which interpreter start", rel("t_main")),
        ("database start (open_database; files read meanwhile)", r["t_db"] - r["t_db_begin"]),
        ("engine start after it, incl. reconciliation", r["t_engine"] - r["t_db"]),
        ("recover() (load state + resubmit each)", r["t_recover"] - r["t_engine"]),
        ("after recover(): last first event", max(0.0, r["t_all_first_event"] - r["t_recover"])),
    ]
    print(
        f"\nsessions recovered {r['recovered']} of {sessions};"
        f" first event from {r['first_events']}, back in provider {r['in_provider']},"
        f" hub snapshots running {r['snapshots_running']}"
        f"{'; TIMED OUT' if r['timed_out'] else ''}"
    )
    print(
        f"reconciliation: {r['reconcile_sessions']} sessions checked,"
        f" {r['reconcile_to_db']} checkpoints to the db, {r['reconcile_decisions']} decisions;"
        f" database adopted {r['db_adopted_or_waited']}; threads {r['threads']}"
    )
    for name, seconds in rows:
        print(f"  {name:<52} {seconds:7.2f} s")
    verdict = "MET" if all_running <= TARGET_SECONDS else "MISSED"
    print(
        f"  {'ALL RUNNING (from process start)':<52} {all_running:7.2f} s"
        f"   target <= {TARGET_SECONDS:.0f} s: {verdict}"
    )
    print(f"  {'all back inside their provider call':<52} {rel('t_all_in_provider'):7.2f} s")
    print(
        f"\nrecover() breakdown (awaited time, sequential per session; CPU during recover():"
        f" engine {r['recover_cpu_engine']:.2f} s, database process {r['recover_cpu_db']:.2f} s):"
    )
    for label, (calls, seconds) in r["recover_spent"].items():
        print(
            f"  {label:<42} {seconds:7.2f} s  {int(calls):6d} calls"
            f"  {1000 * seconds / max(1, calls):7.2f} ms/call"
        )
    print("  (files scan and the CheckpointReached tells are the rest of recover())")
    if args.json:
        args.json.write_text(json.dumps({"t0": t0, **r, "all_running_s": all_running}, indent=2))
    ok = r["recovered"] == sessions and not r["timed_out"]
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="100 sessions")
    parser.add_argument("--output-dir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--phase", choices=("setup", "measure"), default=None, help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.quick:
        args.sessions = 100
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.phase == "setup":
        asyncio.run(setup_phase(args.output_dir, args.sessions, args.timeout))
        return 0
    if args.phase == "measure":
        asyncio.run(measure_phase(args.output_dir, args.sessions, args.timeout))
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
