"""Crash loop: `kill -9` the real `illustrator serve` again and again while sessions run.

Guarantees 1-3 of docs/architecture.md through the server, the REST API and the WebSocket, over many
crashes. Each cycle starts the real server (embedded database, provider latency 20-80 ms,
provider call log, 32 px images, ``processing.auto_resume = true``) on a free port:

* the first cycle uploads a 4-chapter manuscript and starts 3 sessions through the REST
  API; later cycles start nothing: the server resumes the interrupted sessions by itself,
  which the test checks (each is live as soon as /health answers, the server logs
  "Resuming session <id>", and its progress frames move past the durable sequence);
* it follows ``/ws/processing/{id}`` of every unfinished session (progress frames are only
  sent once their checkpoint is durable, so the highest sequence number seen is
  acknowledged, and with it every lower one), waits for a random (seeded) number of new
  acknowledged checkpoints, then sends SIGKILL;
* with the server dead it checks the files (FileStore): no acknowledged checkpoint lost,
  sequence numbers gap-free and unique per session, no checkpoint rewritten with other
  content, no torn file (``scan()`` problems), no session the test did not start, each
  (chapter, scene) in at most one IMAGES_GENERATING checkpoint per session, every image
  record's file on disk and no image file rewritten (same inode and mtime as when first
  seen: an atomic rewrite would create a new inode). Temp files a kill leaves may stay,
  but the next start must remove them: checked after every restart. A session killed
  before its first checkpoint was durable (POST /api/process answers before that) has
  nothing on disk and nothing acknowledged: it is dropped from the ledger and counted.

When a batch of sessions is finished, the next cycle starts a new batch (so hundreds of
cycles keep killing live work). At the end the server runs until every session completes,
stops on SIGTERM (exit 0), and each session's output must equal that of an uninterrupted
reference run of the same manuscript and settings (a separate server in another folder):
checkpoint types and data except pause/error (moments, prompts, image records), the
database's checkpoints equal the files', and the image files' hashes. The provider call
log must show no image generated more often than there are sessions.

Cycles: 3 by default (inside ``make test``, well under 90 s). Run hundreds with
``pytest tests/crash/test_crash_loop.py --crash-cycles 300 -s`` (the option is registered
in ``tests/crash/conftest.py``, so give a path at or below ``tests/crash``) or with
``ILLUSTRATOR_TEST_CRASH_CYCLES=300`` from anywhere (the timeout grows with the cycles).
``ILLUSTRATOR_TEST_CRASH_SEED`` replays a run's kill targets (the seed is printed with the
counts; ``-s`` shows them; where a kill lands still depends on timing). Every wait has a
deadline; a server stuck past it is reported with its log, /health and ``py-spy dump``s of
the server and its database. Server logs are kept as ``server-N.log`` beside ``out/``
(``--basetemp`` keeps them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from test_kill_process import work_outputs

from domain import CheckpointType
from pipeline.providers import read_call_log
from storage.files import FileStore
from storage.records import Checkpoint

ROOT = Path(__file__).resolve().parents[2]
CHAPTERS = 4
MOMENTS = 2
SESSIONS_PER_BATCH = 3
MAX_ACKS_PER_CYCLE = 40
"""Upper bound of the random number of new acknowledged checkpoints before a kill."""
POLL = 0.01
"""Polling interval of in-process state (the watcher's counters); the bound is a deadline."""
TEMP_FOLDERS = ("sessions", "generated_images", "manuscripts", "exports")
"""Where the engine writes through temp files (the database folder is SecantusDB's own)."""


# -- the manuscript and the server ----------------------------------------------------------


def manuscript() -> dict[str, Any]:
    text = (
        "Thunder split the sky above the old castle and Elena screamed in terror. "
        "In the morning garden she laughed with joy, full of hope and warmth beside Marco. "
        "A dark shadow crept through the forest; mystery and dread gathered at the gate. "
        "By evening the sea was calm and peaceful, and a quiet serenity settled. "
    )
    return {
        "title": "Crash Loop",
        "author": "Test",
        "chapters": [
            {"number": n, "title": f"Chapter {n}", "content": text * (2 + n % 3)}
            for n in range(1, CHAPTERS + 1)
        ],
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """The real `illustrator serve` on one output folder; each start gets a new port and log."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.out = folder / "out"
        self.calls = folder / "calls.jsonl"
        self.starts = 0
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = folder / "server-0.log"

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "ILLUSTRATOR_SERVER_PORT": str(self.port),
            "ILLUSTRATOR_OUTPUT_DIRECTORY": str(self.out),
            "ILLUSTRATOR_MONGODB_URI": "",
            "ILLUSTRATOR_PROCESSING_AUTO_RESUME": "true",
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": "20",
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MAX_MS": "80",
            "ILLUSTRATOR_PROVIDERS_CALL_LOG": str(self.calls),
            "ILLUSTRATOR_PROVIDERS_IMAGE_SIZE": "32",
        }

    def start(self, timeout: float = 60) -> None:
        script = Path(sys.executable).parent / "illustrator"
        assert script.exists(), "the project is not installed (make test installs it)"
        self.starts += 1
        self.port = free_port()
        self.log_path = self.folder / f"server-{self.starts}.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(script), "serve"],
                cwd=ROOT,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                health = self.get("/health", timeout=2)
            except (OSError, ValueError):  # not listening yet
                health = None
            if health is not None:
                assert health["database_reachable"] is True, health
                return
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"server did not answer /health within {timeout}s:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        self.process = None

    def terminate(self, timeout: float = 90) -> int:
        """SIGTERM (sessions pause, the database stops); SIGKILL if it does not exit in time."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"server ignored SIGTERM for {timeout}s:\n{self.log_tail()}"
            ) from None
        self.process = None
        return code

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout: float = 10) -> Any:
        with urllib.request.urlopen(self.url(path), timeout=timeout) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict[str, Any], timeout: float = 30) -> Any:
        request = urllib.request.Request(
            self.url(path),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"POST {path} -> {exc.code}: {exc.read()[:2000]!r}") from None


def start_batch(server: Server, count: int) -> dict[str, str]:
    """Start ``count`` sessions, each of its own copy of the manuscript (one live session per
    manuscript); returns each session's manuscript id."""
    started = {}
    for _ in range(count):
        mid = server.post("/api/manuscripts", manuscript())["manuscript_id"]
        answer = server.post(
            "/api/process", {"manuscript_id": mid, "max_emotional_moments": MOMENTS}
        )
        assert answer["success"] and not answer["is_existing"], answer
        started[answer["session_id"]] = mid
    assert len(started) == count
    return started


# -- acknowledged checkpoints, as a WebSocket client sees them --------------------------------


class AckWatcher:
    """Follows ``/ws/processing/{id}`` of some sessions of one server, on its own thread.

    Progress frames are published only after the PersistenceActor acknowledged their
    checkpoint, and a session never starts a step before the ack of the previous one, so
    the highest sequence number seen means every sequence up to it is acknowledged. The
    value at subscription comes from ``GET /api/sessions/{id}`` (live snapshot, which is
    also only updated after an ack, or the stored record).
    """

    def __init__(self, port: int, session_ids: list[str]) -> None:
        self.port = port
        self.session_ids = list(session_ids)
        self.acked: dict[str, int] = dict.fromkeys(session_ids, 0)
        self.completed: set[str] = set()
        self.errors: list[str] = []
        self._subscribed: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="ack-watcher", daemon=True)

    def start(self, timeout: float = 30) -> AckWatcher:
        if not self.session_ids:
            return self
        self._thread.start()
        if not self._ready.wait(timeout):
            raise AssertionError(f"websockets not subscribed within {timeout}s: {self.errors}")
        with self._lock:
            if len(self._subscribed) < len(self.session_ids):
                raise AssertionError(f"websocket subscription failed: {self.errors}")
        return self

    def state(self) -> tuple[dict[str, int], set[str]]:
        with self._lock:
            return dict(self.acked), set(self.completed)

    def close(self, timeout: float = 30) -> None:
        if self._thread.is_alive() and self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop just finished
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.ident is not None:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), "the watcher thread did not stop"

    def _note(self, sid: str, seq: int, completed: bool) -> None:
        with self._lock:
            self.acked[sid] = max(self.acked[sid], seq)
            if completed:
                self.completed.add(sid)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with aiohttp.ClientSession() as http:
            tasks = [asyncio.create_task(self._follow(http, sid)) for sid in self.session_ids]
            stopper = asyncio.create_task(self._stop.wait())
            pending = set(tasks)
            while pending and not stopper.done():
                done, _ = await asyncio.wait(
                    [stopper, *pending], return_when=asyncio.FIRST_COMPLETED
                )
                pending -= done
            for task in [stopper, *tasks]:
                task.cancel()
            await asyncio.gather(stopper, *tasks, return_exceptions=True)

    async def _follow(self, http: aiohttp.ClientSession, sid: str) -> None:
        base = f"http://127.0.0.1:{self.port}"
        try:
            async with http.ws_connect(f"{base}/ws/processing/{sid}", heartbeat=None) as ws:
                snapshot = await ws.receive_json(timeout=30)  # sent after the server subscribed us
                assert snapshot["type"] == "snapshot", snapshot
                async with http.get(f"{base}/api/sessions/{sid}") as response:
                    status = (await response.json())["status"]
                self._note(
                    sid, int(status["last_sequence_number"]), status["status"] == "completed"
                )
                with self._lock:
                    self._subscribed.add(sid)
                    if len(self._subscribed) == len(self.session_ids):
                        self._ready.set()
                async for message in ws:
                    if message.type != aiohttp.WSMsgType.TEXT:
                        continue
                    frame = json.loads(message.data)
                    if frame.get("type") == "progress":
                        done = frame.get("checkpoint_type") == CheckpointType.SESSION_COMPLETED
                        self._note(sid, int(frame["sequence_number"]), done)
        except (
            aiohttp.ClientError,
            ConnectionError,
            TimeoutError,
            AssertionError,
            KeyError,
            ValueError,
        ) as exc:
            with self._lock:  # a kill resets the sockets: expected then, fatal before subscribing
                self.errors.append(f"{sid}: {type(exc).__name__}: {exc}")
                if sid not in self._subscribed:
                    self._ready.set()


def acks_since(watcher: AckWatcher, at_start: dict[str, int], sessions: list[str]) -> int:
    acked, _ = watcher.state()
    return sum(acked[sid] - at_start[sid] for sid in sessions)


def wait_until(predicate: Any, timeout: float, what: str, server: Server) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if server.process is not None and server.process.poll() is not None:
            raise AssertionError(f"server died while waiting for {what}:\n{server.log_tail()}")
        if time.monotonic() > deadline:
            tail = server.log_tail()
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what}:\n{tail}\n{diagnose(server)}"
            )
        time.sleep(POLL)


def diagnose(server: Server) -> str:
    """What a stuck server is doing: /health (asks the PersistenceActor) and stack dumps."""
    lines = []
    try:
        lines.append(f"/health: {server.get('/health', timeout=15)}")
    except (OSError, ValueError) as exc:
        lines.append(f"/health failed: {exc!r}")
    spy = Path(sys.executable).parent / "py-spy"
    database = server.out / "database" / "server.json"
    pids = [("server", server.process.pid if server.process is not None else None)]
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids.append(("database", int(json.loads(database.read_text())["pid"])))
    for name, pid in pids:
        if pid is None or not spy.exists():
            continue
        command = [str(spy), "dump", "--pid", str(pid)]
        dump = subprocess.run(command, capture_output=True, text=True, timeout=60)
        lines.append(f"py-spy dump of the {name} (pid {pid}):\n{dump.stdout}{dump.stderr}")
    return "\n".join(lines)


# -- what must hold on disk ------------------------------------------------------------------


@dataclass
class Ledger:
    """What the test saw: sessions, acknowledged sequences, files, and the counts to print."""

    sessions: list[str] = field(default_factory=list)
    acked: dict[str, int] = field(default_factory=dict)
    checkpoints_seen: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    images_seen: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)


def temp_files(out: Path) -> set[Path]:
    return {p for folder in TEMP_FOLDERS for p in (out / folder).rglob("*.tmp")}


def check_files(out: Path, ledger: Ledger) -> dict[str, list[Checkpoint]]:
    """Guarantees 1-3 on the files of a stopped (or killed) server; returns the checkpoints."""
    files = FileStore(out)
    report = files.scan()
    ledger.counts["torn_files"] += len(report.problems)
    assert not report.problems, f"torn or corrupt files: {report.problems}"
    unknown = report.session_ids() - set(ledger.sessions)
    assert not unknown, f"sessions nobody started: {unknown}"
    by_session: dict[str, list[Checkpoint]] = {str(k): v for k, v in report.checkpoints.items()}
    for sid in ledger.sessions:
        checkpoints = by_session.get(sid, [])
        sequences = [cp.sequence_number for cp in checkpoints]
        # Guarantee 3: gap-free, strictly increasing and unique (also by file name).
        assert sequences == list(range(1, len(sequences) + 1)), f"{sid}: sequences {sequences}"
        names = list(files.checkpoints_dir.glob(f"{sid}_*.json"))
        assert len(names) == len(sequences), (
            f"{sid}: {len(names)} files for {len(sequences)} sequences"
        )
        ledger.counts["gapfree_sessions_checked"] += 1
        # Guarantee 1: every acknowledged checkpoint is on disk.
        acked = ledger.acked.get(sid, 0)
        assert acked <= len(sequences), (
            f"{sid}: acknowledged {acked} but only {len(sequences)} on disk"
        )
        ledger.counts["acknowledged_checked"] += acked
        # A sequence number is never reused: a checkpoint, once durable, never changes.
        for cp in checkpoints:
            document = cp.to_json()
            before = ledger.checkpoints_seen.setdefault((sid, cp.sequence_number), document)
            assert before == document, (
                f"{sid}: checkpoint {cp.sequence_number} rewritten:\n{before}\n{document}"
            )
        # Guarantee 2: each image is recorded once, on disk, and never regenerated.
        scenes = [
            (cp.chapter_number, cp.checkpoint_data["scene_number"])
            for cp in checkpoints
            if cp.checkpoint_type == CheckpointType.IMAGES_GENERATING
        ]
        duplicates = len(scenes) - len(set(scenes))
        ledger.counts["duplicate_images"] += duplicates
        assert duplicates == 0, f"{sid}: an image was recorded twice: {scenes}"
        folder = files.images_dir / sid
        for cp in checkpoints:
            if cp.checkpoint_type == CheckpointType.IMAGES_GENERATING:
                path = out / cp.checkpoint_data["image"]["file_path"]
                assert path.is_file(), f"{sid}: recorded image {path} missing"
        for path in sorted(folder.glob("*.png")) if folder.is_dir() else []:
            stat = path.stat()
            identity = (stat.st_ino, stat.st_mtime_ns)
            first = ledger.images_seen.setdefault((sid, path.name), identity)
            if first != identity:
                ledger.counts["rewritten_images"] += 1
            assert first == identity, f"{sid}: image {path.name} was written again"
        ledger.counts["images_checked"] += len(scenes)
    return by_session


def unfinished(checkpoints: dict[str, list[Checkpoint]], sessions: list[str]) -> list[str]:
    return [
        sid
        for sid in sessions
        if not checkpoints.get(sid)
        or checkpoints[sid][-1].checkpoint_type != CheckpointType.SESSION_COMPLETED
    ]


def check_restart(
    server: Server, interrupted: list[str], leftovers: set[Path], ledger: Ledger
) -> None:
    """After a restart: the kill's temp files are gone and the interrupted sessions resumed."""
    remaining = sorted(p for p in leftovers if p.exists())
    assert not remaining, f"temp files left by the kill survived the restart: {remaining}"
    ledger.counts["temp_files_cleaned"] += len(leftovers)
    log = server.log_path.read_text(errors="replace")
    for sid in interrupted:
        record = server.get(f"/api/sessions/{sid}")
        if record["status"]["status"] == "completed" and not record["live"]:
            # The database may be ahead of the files (both are written before the ack):
            # start-up reconciliation copied the final checkpoint, or it finished at once.
            ledger.counts["completed_at_restart"] += 1
            continue
        # Live already when /health answers: recovery runs before the server listens.
        assert record["live"], f"interrupted session {sid} was not resumed: {record['status']}"
        assert f"Resuming session {sid}" in log, f"no resume of {sid} in the server log"
        ledger.counts["auto_resumed"] += 1


# -- the reference ---------------------------------------------------------------------------


def comparable(checkpoints: list[Checkpoint], manuscript_id: str) -> list[Any]:
    """``work_outputs`` without the manuscript id (each server stored its own copy)."""
    produced = []
    for kind, chapter, data in work_outputs(checkpoints):
        if "manuscript_id" in data:
            assert data["manuscript_id"] == manuscript_id
            data = {k: v for k, v in data.items() if k != "manuscript_id"}
        produced.append((kind, chapter, data))
    return produced


def image_hashes(out: Path, sid: str) -> dict[str, str]:
    folder = out / "generated_images" / sid
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))
    }


def database_checkpoints(server: Server, sid: str) -> list[Checkpoint]:
    answer = server.get(f"/api/sessions/{sid}/checkpoints")
    return [Checkpoint.from_document(item) for item in answer["checkpoints"]]


def run_reference(folder: Path) -> tuple[list[Any], dict[str, str], int]:
    """One uninterrupted session on its own server: (outputs, image hashes, checkpoint count)."""
    server = Server(folder)
    server.start()
    try:
        ((sid, manuscript_id),) = start_batch(server, 1).items()
        watcher = AckWatcher(server.port, [sid])
        try:
            watcher.start()
            wait_until(lambda: sid in watcher.state()[1], 120, "the reference session", server)
        finally:
            watcher.close()
        checkpoints = database_checkpoints(server, sid)
    finally:
        code = server.terminate()
    assert code == 0, server.log_tail()
    files = FileStore(server.out).load_checkpoints(sid)
    assert [cp.to_json() for cp in files] == [cp.to_json() for cp in checkpoints]
    return comparable(checkpoints, manuscript_id), image_hashes(server.out, sid), len(checkpoints)


# -- the loop --------------------------------------------------------------------------------


@dataclass
class CrashLoop:
    """The crashed server and what the loop carries from one kill to the next."""

    server: Server
    rng: random.Random
    per_session: int
    ledger: Ledger = field(default_factory=Ledger)
    manuscripts: dict[str, str] = field(default_factory=dict)
    """Each session's manuscript."""
    batches: int = 0
    interrupted: list[str] = field(default_factory=list)
    """Sessions unfinished on disk after the last kill: the next start must resume them."""
    durable: dict[str, int] = field(default_factory=dict)
    leftovers: set[Path] = field(default_factory=set)

    def cycle(self, number: int) -> None:
        """Start, (start a batch or) watch the resumed sessions, kill -9, check the files."""
        server, ledger = self.server, self.ledger
        server.start()
        if number > 1:
            check_restart(server, self.interrupted, self.leftovers, ledger)
        active = list(self.interrupted)
        if not active:  # first cycle, or the last batch finished: start a new one
            started = start_batch(server, SESSIONS_PER_BATCH)
            self.manuscripts.update(started)
            active = list(started)
            ledger.sessions += active
            self.batches += 1
        watcher = AckWatcher(server.port, active)
        try:
            watcher.start()
            at_start, _ = watcher.state()
            remaining = self.per_session * len(active) - sum(at_start.values())
            target = self.rng.randint(1, max(1, min(MAX_ACKS_PER_CYCLE, remaining - 1)))

            def reached() -> bool:
                acked, completed = watcher.state()
                new = sum(acked[sid] - at_start[sid] for sid in active)
                return new >= target or completed >= set(active)

            wait_until(reached, 120, f"{target} acknowledged checkpoints (cycle {number})", server)
        finally:
            server.kill()
            watcher.close()
        acked, _ = watcher.state()
        for sid in active:
            ledger.acked[sid] = max(ledger.acked.get(sid, 0), acked[sid])
            if sid in self.interrupted and acked[sid] > self.durable.get(sid, 0):
                ledger.counts["resumed_progress_observed"] += 1
        ledger.counts["kills"] += 1
        ledger.counts["acks_before_kills"] += sum(acked[sid] - at_start[sid] for sid in active)
        print(
            f"cycle {number}: kill after {target}+ acks; acknowledged {[acked[s] for s in active]}"
        )
        checkpoints = check_files(server.out, ledger)
        # POST /api/process answers before the first checkpoint is durable: a session killed
        # before it has nothing on disk and no acknowledged step, and is unknown from then on.
        for sid in [sid for sid in ledger.sessions if not checkpoints.get(sid)]:
            assert ledger.acked.get(sid, 0) == 0, sid
            ledger.sessions.remove(sid)
            ledger.counts["sessions_killed_before_first_checkpoint"] += 1
        self.interrupted = unfinished(checkpoints, ledger.sessions)
        self.durable = {sid: len(checkpoints.get(sid, [])) for sid in ledger.sessions}
        self.leftovers = temp_files(server.out)
        ledger.counts["temp_files_after_kills"] += len(self.leftovers)

    def finish(self) -> dict[str, list[Checkpoint]]:
        """Start once more, let every session complete, read the database, stop cleanly."""
        server = self.server
        server.start()
        check_restart(server, self.interrupted, self.leftovers, self.ledger)
        watcher = AckWatcher(server.port, self.interrupted)
        try:
            watcher.start()
            everything = set(self.interrupted)
            wait_until(
                lambda: watcher.state()[1] >= everything, 180, "every session to complete", server
            )
        finally:
            watcher.close()
        stored = {sid: database_checkpoints(server, sid) for sid in self.ledger.sessions}
        for sid in self.ledger.sessions:
            record = server.get(f"/api/sessions/{sid}")
            assert record["status"]["status"] == "completed", (sid, record, server.log_tail())
            images = server.get(f"/api/sessions/{sid}/images")["images"]
            scenes = [(i["chapter_number"], i["scene_number"]) for i in images]
            assert len(scenes) == len(set(scenes)) == CHAPTERS * MOMENTS, scenes
        code = server.terminate()
        assert code == 0, server.log_tail()
        return stored


@pytest.mark.crash_loop
def test_crash_loop_kill_9_loses_nothing_repeats_nothing(
    tmp_path: Path, crash_cycle_count: int
) -> None:
    began = time.monotonic()
    seed = int(
        os.environ.get("ILLUSTRATOR_TEST_CRASH_SEED") or random.SystemRandom().randrange(2**32)
    )
    print(f"\ncrash loop: seed={seed} cycles={crash_cycle_count} (ILLUSTRATOR_TEST_CRASH_SEED)")

    reference, reference_images, per_session = run_reference(tmp_path / "reference")
    assert len(reference_images) == CHAPTERS * MOMENTS
    assert per_session == 2 + CHAPTERS * (4 + MOMENTS) + 1

    loop = CrashLoop(Server(tmp_path / "crashed"), random.Random(seed), per_session)
    try:
        for number in range(1, crash_cycle_count + 1):
            loop.cycle(number)
        stored = loop.finish()
    finally:
        if loop.server.process is not None:  # a failure left it running
            loop.server.kill()
    out, ledger = loop.server.out, loop.ledger

    # Guarantees 1-3 once more on the cleanly stopped server, then the output itself.
    ledger.acked.update({sid: len(cps) for sid, cps in stored.items()})
    checkpoints = check_files(out, ledger)
    assert not temp_files(out), "a clean stop leaves no temp files"
    for sid in ledger.sessions:
        files = checkpoints[sid]
        assert [cp.to_json() for cp in files] == [cp.to_json() for cp in stored[sid]], sid
        assert len(files) == per_session, f"{sid}: {len(files)} checkpoints, not {per_session}"
        assert comparable(files, loop.manuscripts[sid]) == reference, (
            f"{sid}: not the uninterrupted output"
        )
        assert image_hashes(out, sid) == reference_images, f"{sid}: not the uninterrupted images"

    # The provider bill: no image made more often than there are sessions (keys are file
    # names, shared by all sessions); a kill may only cut off calls that were in flight.
    image_calls = Counter(
        e["key"] for e in read_call_log(loop.server.calls) if e["stage"] == "image"
    )
    sessions = len(ledger.sessions)
    overpaid = {key: n for key, n in image_calls.items() if n > sessions}
    ledger.counts["duplicate_images"] += sum(n - sessions for n in overpaid.values())
    assert not overpaid, f"images generated more than once per session: {overpaid}"
    total_images = sessions * CHAPTERS * MOMENTS
    assert sum(image_calls.values()) <= total_images

    counts = ledger.counts
    print(
        f"cycles={crash_cycle_count} seed={seed} batches={loop.batches} sessions={sessions} "
        f"kills={counts['kills']} acks_before_kills={counts['acks_before_kills']} "
        f"acknowledged_checked={counts['acknowledged_checked']} "
        f"gapfree_sessions_checked={counts['gapfree_sessions_checked']} "
        f"auto_resumed={counts['auto_resumed']} "
        f"completed_at_restart={counts['completed_at_restart']} "
        f"resumed_progress_observed={counts['resumed_progress_observed']} "
        f"images_checked={counts['images_checked']} duplicate_images={counts['duplicate_images']} "
        f"rewritten_images={counts['rewritten_images']} torn_files={counts['torn_files']} "
        f"temp_files_after_kills={counts['temp_files_after_kills']} "
        f"temp_files_cleaned={counts['temp_files_cleaned']} "
        f"killed_before_first_checkpoint={counts['sessions_killed_before_first_checkpoint']} "
        f"image_calls={sum(image_calls.values())}/{total_images} "
        f"runtime={time.monotonic() - began:.1f}s"
    )
