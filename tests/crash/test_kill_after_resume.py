"""A resume survives a `kill -9` that comes before the resumed session's next checkpoint.

A resume writes no checkpoint: the session's status is all that records it. Written
behind, with the session's next summary, a kill -9 right after the resume's answer left the
session paused by its user on disk and in the database, so start-up did not resume it and
the user's resume was lost. The answer now comes once the resume is durable.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from test_crash_loop import Server, start_batch, wait_until

pytestmark = pytest.mark.timeout(300)


class SlowServer(Server):
    """Steps long enough to pause between them; summaries only when a session stops."""

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": "300",
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MAX_MS": "300",
            "ILLUSTRATOR_PERSISTENCE_SESSION_SUMMARY_INTERVAL_MS": "600000",
        }


def session_file(out: Path, sid: str) -> dict[str, Any]:
    path = out / "sessions" / "active_sessions" / f"{sid}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def status(server: Server, sid: str) -> str:
    return str(server.get(f"/api/sessions/{sid}")["status"]["status"])


def test_a_resume_survives_kill_9_before_the_next_checkpoint(tmp_path: Path) -> None:
    server = SlowServer(tmp_path)
    server.start()
    try:
        [sid] = start_batch(server, 1)
        server.post(f"/api/process/{sid}/pause", {})
        wait_until(lambda: status(server, sid) == "paused", 60, "the pause", server)
        assert session_file(server.out, sid)["pause_reason"] == "user"

        server.post(f"/api/process/{sid}/resume", {})
        server.kill()  # at once: the resume's answer came after it was durable
        assert session_file(server.out, sid).get("pause_reason") is None

        server.start()  # auto_resume is on: a running session is taken up again
        wait_until(lambda: status(server, sid) == "completed", 240, "completion", server)
    finally:
        if server.process is not None:
            server.kill()
