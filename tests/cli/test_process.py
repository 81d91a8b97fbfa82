"""`illustrator process FILE`: what it says after a pause, what it does with an illustrated
manuscript (as POST /api/process), and its progress bar beside log lines."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import LONG_BOOK, Cli, ok, session_ids

pytestmark = pytest.mark.timeout(240)

SLOW = {"ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": "40"}


def progress_events(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text().splitlines() if '"type": "progress"' in line)


def pause_after(cli: Cli, *args: str, acks: int = 4) -> subprocess.CompletedProcess[str]:
    """Run ``process`` and press Ctrl-C once ``acks`` checkpoints were acknowledged."""
    events = cli.out.parent / f"events-{time.monotonic_ns()}.jsonl"
    running = cli.start("process", *args, "--quiet", "--events-jsonl", str(events), **SLOW)
    deadline = time.monotonic() + 120
    while progress_events(events) < acks:
        assert running.poll() is None, running.communicate()
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.02)  # polling a file the process writes; the bound is the deadline
    running.send_signal(signal.SIGINT)
    stdout, stderr = running.communicate(timeout=120)
    return subprocess.CompletedProcess(running.args, running.returncode, stdout, stderr)


def test_an_illustrated_manuscript_gets_a_new_session_as_post_api_process_gives_it(
    cli: Cli,
) -> None:
    book = cli.book()
    ok(cli.run("process", str(book), "--max-moments", "1", "--quiet"))
    (first,) = session_ids(cli)

    again = ok(cli.run("process", str(book), "--max-moments", "1", "--quiet"))

    assert f"Manuscript already illustrated by session {first}" in again.stdout
    assert "starting a new session, as POST /api/process does" in again.stdout
    second = re.search(r"Started session (\S+):", again.stdout).group(1)  # type: ignore[union-attr]
    assert sorted(session_ids(cli)) == sorted([first, second])
    statuses = {d["_id"]: d["status"] for d in cli.db()["sessions"].find()}
    assert statuses == {first: "completed", second: "completed"}


def test_after_a_pause_it_says_how_to_resume_and_that_is_how_it_resumes(cli: Cli) -> None:
    book = str(cli.book(text=LONG_BOOK))
    paused = pause_after(cli, book, "--max-moments", "1")
    assert paused.returncode == 0, paused.stderr
    assert "paused." in paused.stdout
    assert "Run the same command again to resume." in paused.stdout
    (plain,) = session_ids(cli)
    resumed = ok(cli.run("process", book, "--max-moments", "1", "--quiet"))
    assert f"Resuming session {plain}" in resumed.stdout

    restarted = pause_after(cli, book, "--max-moments", "1", "--new")
    assert restarted.returncode == 0, restarted.stderr
    assert "Run the same command again" not in restarted.stdout
    assert f"Run `illustrator process {book}` (without --new) to resume it." in restarted.stdout
    (fresh,) = set(session_ids(cli)) - {plain}
    resumed = ok(cli.run("process", book, "--max-moments", "1", "--quiet"))
    assert f"Resuming session {fresh}" in resumed.stdout


def visible_lines(stderr: str) -> list[str]:
    """What a terminal shows of each line: the text after its last carriage return."""
    return [line.rsplit("\r", 1)[-1] for line in stderr.split("\n")]


def test_log_lines_never_share_a_line_with_the_progress_bar(cli: Cli) -> None:
    book = str(cli.book())
    quiet = ok(cli.run("process", book, "--max-moments", "2"))
    assert "[" in quiet.stderr and "%  chapters" in quiet.stderr  # the bar was drawn
    assert not [line for line in visible_lines(quiet.stderr) if " INFO " in line], (
        "INFO lines on the terminal without -v"
    )

    verbose = ok(cli.run("-vv", "process", book, "--max-moments", "2", "--new"))
    lines = visible_lines(verbose.stderr)
    logged = [n for n, line in enumerate(lines) if re.search(r" (DEBUG|INFO) ", line)]
    bars = [n for n, line in enumerate(lines) if "%  chapters" in line]
    assert logged and bars and any(n > bars[0] for n in logged), "no log line after the bar"
    for n in logged:
        assert re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (DEBUG|INFO) ", lines[n]), lines[n]
        assert "%  chapters" not in lines[n]
