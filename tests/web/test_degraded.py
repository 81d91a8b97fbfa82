"""The server starts and works while its database is unreachable (degraded mode)."""

from __future__ import annotations

import socket
from pathlib import Path

import pykka
import pytest
from aiohttp.test_utils import TestServer
from conftest import checked_app
from tests_support import EventRecorder

from config import config_from_mapping
from errors import EmbeddedDatabaseError
from pipeline.providers import RecordingProviders
from web.app import create_app
from web.keys import ENGINE_KEY

pytestmark = pytest.mark.timeout(120)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_server_starts_degraded_and_processes_on_files(
    aiohttp_client, tmp_path: Path, conformance
) -> None:
    port = closed_port()  # nothing listens there: the database is down from the start
    config = config_from_mapping(
        {
            "mongodb": {
                "uri": f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false",
                "server_selection_timeout_ms": 100,
            },
            "output": {"directory": str(tmp_path / "out")},
            "processing": {"auto_resume": False},
            "providers": {"image_size": 32},
        },
        env={},
    )
    client = await aiohttp_client(
        checked_app(create_app(config, providers=RecordingProviders()), conformance)
    )
    engine = client.app[ENGINE_KEY]

    health = await (await client.get("/health")).json()
    assert health["status"] == "degraded"
    assert health["database_reachable"] is False

    created = await client.post(
        "/api/manuscripts",
        json={
            "title": "Offline",
            "author": "T",
            "chapters": [{"title": "One", "content": "Joy and fear at the sea. " * 20}],
        },
    )
    assert created.status in (200, 201), await created.text()
    manuscript_id = (await created.json())["manuscript_id"]
    recorder = EventRecorder(engine)
    started = await client.post(
        "/api/process", json={"manuscript_id": manuscript_id, "max_emotional_moments": 2}
    )
    assert started.status == 200, await started.text()
    session_id = (await started.json())["session_id"]
    assert await recorder.wait_final(session_id) == "completed"

    # The files are the durable record: every checkpoint is there, gap-free.
    checkpoints = engine.files.load_checkpoints(session_id)
    assert [cp.sequence_number for cp in checkpoints] == list(range(1, len(checkpoints) + 1))
    assert str(checkpoints[-1].checkpoint_type) == "session_completed"
    # The database's share waits in the backlog, visible to operators.
    health = await (await client.get("/health")).json()
    assert health["persistence_backlog"] > 0
    metrics = await (await client.get("/metrics")).text()
    backlog_lines = [
        line
        for line in metrics.splitlines()
        if "backlog_records" in line and not line.startswith("#")
    ]
    assert backlog_lines and float(backlog_lines[0].split()[-1]) > 0


async def test_an_embedded_database_that_cannot_start_fails_start_up_cleanly(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "database").write_text("a file where the database's folder should be")
    config = config_from_mapping(
        {"output": {"directory": str(out)}, "processing": {"auto_resume": False}}, env={}
    )
    server = TestServer(create_app(config, providers=RecordingProviders()))

    with pytest.raises(EmbeddedDatabaseError, match="cannot use data directory"):
        await server.start_server()
    await server.close()  # the database context's clean-up has nothing to stop

    assert not [ref for ref in pykka.ActorRegistry.get_all() if ref.is_alive()]
    assert (out / "database").read_text().startswith("a file")


async def test_replays_during_an_outage_come_from_memory_and_never_wait_on_the_database(
    aiohttp_client, tmp_path: Path, conformance
) -> None:
    config = config_from_mapping(
        {
            "mongodb": {
                "uri": f"mongodb://127.0.0.1:{closed_port()}/?directConnection=true",
                "server_selection_timeout_ms": 100,
            },
            "output": {"directory": str(tmp_path / "out")},
            "processing": {"auto_resume": False},
            "providers": {"image_size": 32},
        },
        env={},
    )
    client = await aiohttp_client(
        checked_app(create_app(config, providers=RecordingProviders()), conformance)
    )
    engine = client.app[ENGINE_KEY]
    recorder = EventRecorder(engine)
    chapters = [{"title": "One", "content": "Joy and fear at the sea. " * 20}]

    async def run_session() -> str:
        created = await client.post(
            "/api/manuscripts", json={"title": "Offline", "author": "T", "chapters": chapters}
        )
        assert created.status in (200, 201), await created.text()
        started = await client.post(
            "/api/process",
            json={"manuscript_id": (await created.json())["manuscript_id"]},
        )
        assert started.status == 200, await started.text()
        sid = str((await started.json())["session_id"])
        assert await recorder.wait_final(sid) == "completed"
        return sid

    sid = await run_session()
    last = recorder.events[sid][-1].event_seq
    failures = (await engine.persistence_stats())["db_failures"]
    assert failures > 0  # the breaker is open: the database was tried and found dead

    for _ in range(3):  # clients reconnecting with ?after= while the database is down
        ws = await client.ws_connect(f"/ws/processing/{sid}?after=2")
        frames = [await ws.receive_json(timeout=30)]
        while frames[-1].get("event_seq") != last:
            frames.append(await ws.receive_json(timeout=30))
        await ws.close()
        assert frames[0]["type"] == "snapshot"
        assert [f["event_seq"] for f in frames[1:]] == list(range(3, last + 1))

    # Sessions are still acknowledged on the files, and no replay retried the database
    # synchronously (only its probe does, and nothing listens on that port).
    second = await run_session()
    assert engine.files.load_checkpoints(second)
    assert (await engine.persistence_stats())["db_failures"] == failures
