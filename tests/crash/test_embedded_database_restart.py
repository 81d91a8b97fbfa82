"""The real `illustrator serve` brings its embedded database back after a `kill -9` of it.

Sessions keep running on their files while the database is gone; the server restarts the
database on the same data folder and socket, the writer's clients reconnect and catch the
database up, and `/health` shows the restart. Then a SIGTERM stops supervision and the
database with the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import pytest
from test_crash_loop import Server, start_batch, wait_until

from domain import SessionId
from storage.embedded_processes import is_alive, lock_holder
from storage.files import FileStore
from storage.mongo import open_store

pytestmark = pytest.mark.timeout(300)

SESSIONS = 2


class SlowServer(Server):
    """Provider calls slow enough that sessions are mid-way when the database dies."""

    def environment(self) -> dict[str, str]:
        return {
            **super().environment(),
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": "100",
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MAX_MS": "200",
        }


def checkpoint_files(out: Path, sid: str) -> list[int]:
    return sorted(cp.sequence_number for cp in FileStore(out).load_checkpoints(SessionId(sid)))


async def database_view(uri: str, sessions: list[str]) -> dict[str, Any]:
    """Status and checkpoint sequences of ``sessions`` as the database holds them."""
    store = open_store(uri, "illustrator", server_selection_timeout_ms=10_000)
    try:
        view = {}
        for sid in sessions:
            document = await store.get_session(SessionId(sid))
            checkpoints = await store.list_checkpoints(SessionId(sid))
            view[sid] = (
                (document or {}).get("status"),
                sorted(cp.sequence_number for cp in checkpoints),
            )
        return view
    finally:
        await store.close()


def test_the_server_restarts_its_killed_database_and_sessions_reach_it(tmp_path: Path) -> None:
    server = SlowServer(tmp_path / "server")
    server.start()
    state_path = server.out / "database" / "server.json"
    try:
        embedded = server.get("/health")["embedded_database"]
        assert embedded["state"] == "running" and embedded["restarts"] == 0, embedded
        sessions = list(start_batch(server, SESSIONS))
        wait_until(
            lambda: all(len(checkpoint_files(server.out, sid)) >= 4 for sid in sessions),
            120,
            "the sessions acknowledged a few checkpoints",
            server,
        )
        at_kill = {sid: len(checkpoint_files(server.out, sid)) for sid in sessions}
        state = json.loads(state_path.read_text())
        killed = int(state["pid"])
        assert embedded["pid"] == killed
        os.kill(killed, signal.SIGKILL)  # the database dies under running sessions

        def restarted() -> bool:
            health = server.get("/health")
            return health["embedded_database"]["restarts"] == 1 and health["database_reachable"]

        wait_until(restarted, 120, "the server restarted its database", server)
        health = server.get("/health")
        embedded = health["embedded_database"]
        assert embedded["state"] == "running" and embedded["last_exit"] == "signal SIGKILL"
        assert embedded["pid"] not in (None, killed) and not is_alive(killed)
        assert health["database"] == "embedded" and "persistence_backlog" in health
        again = json.loads(state_path.read_text())
        assert again["pid"] == embedded["pid"] and again["socket"] == state["socket"]
        assert "embedded SecantusDB restarted (pid" in server.log_tail(200_000)

        def finished() -> bool:
            statuses = [
                server.get(f"/api/sessions/{sid}")["session"].get("status") for sid in sessions
            ]
            return all(status == "completed" for status in statuses)

        wait_until(finished, 180, "the sessions completed", server)
        wait_until(
            lambda: server.get("/health")["persistence_backlog"] == 0,
            120,
            "the database caught up",
            server,
        )
        uri = f"mongodb://{state['socket'].replace('/', '%2F')}/?directConnection=true"
        view = asyncio.run(database_view(uri, sessions))
        for sid in sessions:
            files = checkpoint_files(server.out, sid)
            assert len(files) > at_kill[sid]  # it went on after its database died
            assert view[sid] == ("completed", files), (sid, view[sid], files)
    finally:
        code = server.terminate()
    assert code == 0, server.log_tail()
    # Supervision ended before the database stopped: nothing holds the folder now.
    assert lock_holder(server.out / "database" / "database.lock") is None
    assert not state_path.exists()
