"""Crash test: `kill -9` a real `illustrator process` run at several points, then resume.

Guarantees 1-3 of docs/architecture.md, end to end: every acknowledged checkpoint survives,
sequence numbers stay gap-free and unique, no image is generated twice, and the final
output equals that of an uninterrupted run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from domain import CheckpointType
from pipeline.providers import read_call_log
from storage.embedded import EmbeddedDatabase
from storage.files import FileStore
from storage.mongo import open_store

pytestmark = pytest.mark.timeout(600)

CHAPTERS = 6
MOMENTS = 2
# 2 + per chapter (start, analyzed, prompts, 2 images, completed) + completed
TOTAL_CHECKPOINTS = 2 + CHAPTERS * (4 + MOMENTS) + 1
KILL_AFTER_ACKS = (3, 11, 19, 30)


def manuscript_file(folder: Path) -> Path:
    text = (
        "Thunder split the sky above the old castle and Elena screamed in terror. "
        "In the morning garden she laughed with joy, full of hope and warmth beside Marco. "
        "A dark shadow crept through the forest; mystery and dread gathered at the gate. "
        "By evening the sea was calm and peaceful, and a quiet serenity settled. "
    )
    book = {
        "title": "Crash Course",
        "author": "Test",
        "chapters": [
            {"number": n, "title": f"Chapter {n}", "content": text * (2 + n % 3)}
            for n in range(1, CHAPTERS + 1)
        ],
    }
    path = folder / "book.json"
    path.write_text(json.dumps(book))
    return path


def environment(out: Path, calls: Path) -> dict[str, str]:
    return {
        **os.environ,
        "ILLUSTRATOR_OUTPUT_DIRECTORY": str(out),
        "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": "50",
        "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MAX_MS": "200",
        "ILLUSTRATOR_PROVIDERS_CALL_LOG": str(calls),
        "ILLUSTRATOR_PROVIDERS_IMAGE_SIZE": "64",
    }


def command(book: Path, events: Path) -> list[str]:
    script = Path(sys.executable).parent / "illustrator"
    return [
        str(script),
        "process",
        str(book),
        "--quiet",
        "--max-moments",
        str(MOMENTS),
        "--events-jsonl",
        str(events),
    ]


def acknowledged(events: Path) -> list[tuple[str, int]]:
    """(session, sequence) of every checkpoint whose progress frame was delivered."""
    if not events.exists():
        return []
    found = []
    for line in events.read_text().splitlines():
        try:
            frame = json.loads(line)
        except json.JSONDecodeError:  # the line the kill cut short
            continue
        if frame.get("type") == "progress":
            found.append((frame["session_id"], int(frame["sequence_number"])))
    return found


def wait_for_acks(
    process: subprocess.Popen[bytes], events: Path, count: int, timeout: float = 120
) -> None:
    deadline = time.monotonic() + timeout
    while len(acknowledged(events)) < count:
        if process.poll() is not None:
            raise AssertionError(
                f"process ended early ({process.returncode}):"
                f" {process.stdout.read().decode()[-2000:]}"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(acknowledged(events))} acks after {timeout}s")
        time.sleep(0.02)  # polling a file another process writes; the bound is the deadline


def run_to_end(book: Path, events: Path, env: dict[str, str]) -> str:
    done = subprocess.run(
        command(book, events), env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def read_database(out: Path) -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
    database = EmbeddedDatabase(out / "database")
    uri = database.start()

    async def read() -> tuple[list[dict[str, Any]], dict[str, list[Any]]]:
        store = open_store(uri, "illustrator")
        try:
            sessions = await store.list_sessions()
            checkpoints = {
                d["session_id"]: await store.list_checkpoints(d["session_id"]) for d in sessions
            }
            return sessions, checkpoints
        finally:
            await store.close()

    try:
        return asyncio.run(read())
    finally:
        database.stop()


def image_hashes(out: Path, session_id: str) -> dict[str, str]:
    folder = out / "generated_images" / session_id
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))
    }


def work_outputs(checkpoints: list[Any]) -> list[tuple[str, int | None, Any]]:
    """What the session produced, stripped of run-specific fields (times, ids)."""
    produced = []
    for cp in checkpoints:
        if cp.checkpoint_type in (CheckpointType.SESSION_PAUSED, CheckpointType.ERROR_OCCURRED):
            continue
        data = {k: v for k, v in cp.checkpoint_data.items() if k not in ("image", "started_at")}
        if "image" in cp.checkpoint_data:
            image = cp.checkpoint_data["image"]
            data["image"] = (
                image["file_path"].split("/")[-1],
                image["prompt_used"],
                image["generation_order"],
            )
        produced.append((str(cp.checkpoint_type), cp.chapter_number, data))
    return produced


def test_kill_9_at_several_points_loses_nothing_and_repeats_no_image(tmp_path: Path) -> None:
    book = manuscript_file(tmp_path)

    # The reference: one uninterrupted run.
    reference_out = tmp_path / "reference"
    run_to_end(
        book,
        tmp_path / "reference-events.jsonl",
        environment(reference_out, tmp_path / "reference-calls.jsonl"),
    )
    (reference_session,), reference_checkpoints = read_database(reference_out)
    reference_id = reference_session["session_id"]

    out, calls, events = tmp_path / "crashed", tmp_path / "calls.jsonl", tmp_path / "events.jsonl"
    env = environment(out, calls)
    files = FileStore(out)
    kills = 0
    for threshold in KILL_AFTER_ACKS:
        process = subprocess.Popen(
            command(book, events), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        try:
            wait_for_acks(process, events, threshold)
        finally:
            process.send_signal(signal.SIGKILL)
            output = process.communicate(timeout=60)[0].decode()
        kills += 1
        if kills > 1:
            assert "Resuming session" in output, output[-2000:]
        # Guarantee 1: every acknowledged checkpoint is on disk after the kill.
        for session_id, seq in acknowledged(events):
            stored = {cp.sequence_number for cp in files.load_checkpoints(session_id)}
            assert seq in stored, f"acknowledged checkpoint {seq} lost by kill {kills}"

    final_output = run_to_end(book, events, env)
    assert "Resuming session" in final_output

    sessions, checkpoints = read_database(out)
    assert len(sessions) == 1, "a resumed run must not start a second session"
    session = sessions[0]
    sid = session["session_id"]
    assert session["status"] == "completed"
    stored = checkpoints[sid]
    # Guarantee 3: gap-free, unique, strictly increasing; files and database agree.
    assert [cp.sequence_number for cp in stored] == list(range(1, len(stored) + 1))
    assert [cp.sequence_number for cp in files.load_checkpoints(sid)] == [
        cp.sequence_number for cp in stored
    ]
    assert {seq for _, seq in acknowledged(events)} <= {cp.sequence_number for cp in stored}
    # Kills land mid-step, so no pause checkpoints: exactly the uninterrupted sequence.
    assert len(stored) == TOTAL_CHECKPOINTS

    # Guarantee 2: no image generated twice (provider call log across all processes).
    image_calls = [entry["key"] for entry in read_call_log(calls) if entry["stage"] == "image"]
    assert len(image_calls) == len(set(image_calls)) == CHAPTERS * MOMENTS
    analyses = [entry["key"] for entry in read_call_log(calls) if entry["stage"] == "analyze"]
    assert len(analyses) - len(set(analyses)) <= kills, "only work cut off by a kill may be redone"

    # The final output equals the uninterrupted run's.
    assert work_outputs(stored) == work_outputs(reference_checkpoints[reference_id])
    assert list(image_hashes(out, sid).values()) == list(
        image_hashes(reference_out, reference_id).values()
    )
    assert len(image_hashes(out, sid)) == CHAPTERS * MOMENTS
    assert not list(out.rglob("*.tmp")), "no torn temp files are left behind"
