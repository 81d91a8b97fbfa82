"""One live session per manuscript, whatever the route and however the requests race."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from conftest import create_manuscript, start
from tests_support import EventRecorder

from web.keys import ENGINE_KEY

pytestmark = pytest.mark.timeout(90)


def live_of(client: Any, mid: str) -> list[str]:
    """The live sessions of ``mid`` this server runs (memory)."""
    snapshots = client.app[ENGINE_KEY].hub.snapshots()
    return sorted(s["session_id"] for s in snapshots if s.get("manuscript_id") == mid)


async def stopped_session(client: Any, gate: Any, action: str) -> tuple[str, str]:
    """A manuscript and a session of it stopped by ``action`` (pause or cancel); the gate
    is closed again afterwards, so the next session of it stays live at its first image."""
    recorder = EventRecorder(client.app[ENGINE_KEY])
    mid = await create_manuscript(client)
    sid = (await start(client, mid))["session_id"]
    assert await asyncio.to_thread(gate.reached.wait, 30)
    assert (await client.post(f"/api/process/{sid}/{action}")).status == 200
    gate.open.set()
    assert await recorder.wait_final(sid) == ("paused" if action == "pause" else "cancelled")
    gate.reached.clear()
    gate.open.clear()
    return mid, sid


async def test_concurrent_restarts_start_one_session_and_refuse_the_rest(make_client, gate):
    client = await make_client(gate)
    mid, cancelled = await stopped_session(client, gate, "cancel")

    answers = await asyncio.gather(
        *(client.post(f"/api/process/{cancelled}/restart") for _ in range(27))
    )
    bodies = [await answer.json() for answer in answers]
    statuses = sorted(answer.status for answer in answers)
    assert statuses == [200] + [409] * 26, bodies
    (winner,) = [body["session_id"] for body in bodies if body["success"]]
    assert live_of(client, mid) == [winner]
    for body in bodies:
        if not body["success"]:
            assert body["details"] == {"manuscript_id": mid, "live_session_id": winner}
            assert winner in body["error"]

    again = await client.post(f"/api/process/{cancelled}/restart")
    assert again.status == 409
    assert live_of(client, mid) == [winner]


async def test_concurrent_starts_all_get_the_one_live_session(make_client, gate):
    client = await make_client(gate)
    mid = await create_manuscript(client)
    answers = await asyncio.gather(*(start(client, mid) for _ in range(10)))
    (sid,) = {answer["session_id"] for answer in answers}
    assert sorted(answer["is_existing"] for answer in answers) == [False] + [True] * 9
    assert live_of(client, mid) == [sid]

    forced = await client.post("/api/process", json={"manuscript_id": mid, "force_new": True})
    assert forced.status == 409
    assert (await forced.json())["details"]["live_session_id"] == sid
    assert live_of(client, mid) == [sid]


async def test_a_paused_session_resumes_only_when_its_manuscript_is_free(make_client, gate):
    client = await make_client(gate)
    recorder = EventRecorder(client.app[ENGINE_KEY])
    mid, paused = await stopped_session(client, gate, "pause")
    other = (await start(client, mid))["session_id"]
    assert other != paused and live_of(client, mid) == [other]

    for route in (f"/api/process/resume/{paused}", f"/api/process/{paused}/resume"):
        refused = await client.post(route)
        assert refused.status == 409, route
        assert (await refused.json())["details"]["live_session_id"] == other
    assert live_of(client, mid) == [other]
    status = await (await client.get(f"/api/sessions/{paused}/status")).json()
    assert status["status"] == "paused"  # refused, so unchanged

    assert (await client.post(f"/api/process/{other}/cancel")).status == 200
    gate.open.set()
    assert await recorder.wait_final(other) == "cancelled"
    resumed = await client.post(f"/api/process/resume/{paused}")
    assert resumed.status == 200, await resumed.text()
    assert await recorder.wait_final(paused, after_seq=recorder.events[paused][-1].event_seq) == (
        "completed"
    )
