"""End to end over HTTP and WebSockets: upload, process, follow, pause/cancel, export, delete."""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

import aiohttp
import pytest
from conftest import create_manuscript, start
from tests_support import EventRecorder

from web.keys import ENGINE_KEY

pytestmark = pytest.mark.timeout(90)


async def read_until_final(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    """Frames until the session's complete/error/final status frame (inclusive)."""
    frames = []
    while True:
        frame = await ws.receive_json(timeout=30)
        frames.append(frame)
        if frame["type"] in ("complete", "error") or (
            frame["type"] == "status" and frame.get("status") in ("paused", "cancelled")
        ):
            return frames


def seqs(frames: list[dict[str, Any]]) -> list[int]:
    return [f["event_seq"] for f in frames if "event_seq" in f]


async def wait_reached(gate) -> None:
    assert await asyncio.to_thread(gate.reached.wait, 30)


async def test_upload_process_follow_serve_and_export(make_client, gate) -> None:
    client = await make_client(gate)
    text = "# The Voyage\n\n## Chapter 1\n\n" + "Mara felt joy and fear in the storm. " * 20
    text += "\n\n## Chapter 2\n\n" + "The castle was dark and full of mystery. " * 20
    form = aiohttp.FormData()
    form.add_field("file", text.encode(), filename="voyage.md", content_type="text/markdown")
    form.add_field("author", "Ann")
    created = await client.post("/api/manuscripts", data=form)
    assert created.status == 201, await created.text()
    mid = (await created.json())["manuscript_id"]
    assert (await (await client.get(f"/api/manuscripts/{mid}")).json())["manuscript"][
        "total_chapters"
    ] == 2

    gallery = await client.ws_connect(f"/ws/gallery/{mid}")
    assert (await gallery.receive_json(timeout=10))["type"] == "snapshot"
    started = await start(client, mid, style_config={"art_style": "watercolor"})
    assert started["success"] is True and started["is_existing"] is False
    sid = started["session_id"]
    again = await start(client, mid)
    assert again["is_existing"] is True and again["session_id"] == sid
    await wait_reached(gate)

    ws = await client.ws_connect(f"/ws/processing/{sid}?after=0")
    snapshot = await ws.receive_json(timeout=10)
    assert snapshot["type"] == "snapshot" and snapshot["status"] == "running"
    active = await (await client.get("/api/sessions/active")).json()
    assert [s["session_id"] for s in active] == [sid]
    status = await (await client.get(f"/api/process/status/{mid}")).json()
    assert status["active_session"]["session_id"] == sid
    gate.open.set()
    frames = await read_until_final(ws)
    assert frames[-1]["type"] == "complete"
    assert seqs(frames) == list(range(1, len(seqs(frames)) + 1))
    assert {"progress", "log", "step", "image", "complete"} <= {f["type"] for f in frames}
    gallery_types = set()
    while "processing_complete" not in gallery_types:
        gallery_types.add((await gallery.receive_json(timeout=30))["type"])
    assert {"new_image", "processing_progress"} <= gallery_types

    images = (await (await client.get(f"/api/sessions/{sid}/images")).json())["images"]
    assert len(images) == 4
    served = await client.get(images[0]["url"])
    assert served.status == 200 and (await served.read())[:4] == b"\x89PNG"
    detail = await (await client.get(f"/api/sessions/{sid}/status")).json()
    assert (
        detail["status"] == "completed" and detail["progress"] == 100 and len(detail["images"]) == 4
    )
    assert 0 < len(detail["logs"]) <= 20
    checkpoints = await (await client.get(f"/api/sessions/{sid}/checkpoints")).json()
    assert checkpoints["checkpoints"][-1]["checkpoint_type"] == "session_completed"

    page = await (await client.get(f"/api/sessions/{sid}/logs?after=0&limit=5")).json()
    assert [e["event_seq"] for e in page["logs"]] == [1, 2, 3, 4, 5] and page["has_more"] is True
    rest = await (
        await client.get(f"/api/sessions/{sid}/logs?after={page['next_after']}&limit=1000")
    ).json()
    assert [e["event_seq"] for e in rest["logs"]] == list(range(6, 6 + rest["count"]))

    exported = await client.post(f"/api/manuscripts/{mid}/export?format=html")
    assert exported.status == 201
    url = (await exported.json())["url"]
    html = await (await client.get(url)).text()
    assert html.count("<img ") == 4 and "Emotional moments" in html
    # Self-contained: the images are in the page (it shows them opened from disk).
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" width="64"', html)
    assert len(embedded) == 4 and "/generated_images/" not in html
    first_image = await (await client.get(images[0]["url"])).read()
    assert base64.b64decode(embedded[0]) == first_image
    as_json = await (await client.post(f"/api/manuscripts/{mid}/export?format=json")).json()
    document = await (await client.get(as_json["url"])).json()
    chapter = document["chapters"][0]
    assert len(chapter["prompts"]) == 2
    # The real size of the images (config: 64 px), not the size the prompt template asks.
    assert [(i["width"], i["height"]) for i in chapter["images"]] == [(64, 64)] * 2
    assert [(p["technical_params"]["width"], p["technical_params"]["height"])
            for p in chapter["prompts"]] == [(64, 64)] * 2  # fmt: skip
    await ws.close()
    await gallery.close()


async def test_reconnect_with_after_delivers_every_event_exactly_once(make_client, gate) -> None:
    client = await make_client(gate)
    mid = await create_manuscript(client)
    sid = (await start(client, mid))["session_id"]
    await wait_reached(gate)
    first = await client.ws_connect(f"/ws/processing/{sid}?after=0")
    assert (await first.receive_json(timeout=10))["type"] == "snapshot"
    received = [await first.receive_json(timeout=10) for _ in range(3)]
    await first.close()
    last = received[-1]["event_seq"]

    second = await client.ws_connect(f"/ws/processing/{sid}?after={last}")
    assert (await second.receive_json(timeout=10))["type"] == "snapshot"
    gate.open.set()  # live events now race with the replay
    received += await read_until_final(second)
    assert received[-1]["type"] == "complete"
    assert seqs(received) == list(range(1, len(received) + 1))
    await second.close()


async def test_two_subscribers_each_receive_every_event(make_client, gate) -> None:
    client = await make_client(gate)
    mid = await create_manuscript(client)
    sid = (await start(client, mid))["session_id"]
    await wait_reached(gate)
    sockets = [await client.ws_connect(f"/ws/processing/{sid}?after=0") for _ in range(2)]
    for ws in sockets:
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    gate.open.set()
    results = await asyncio.gather(*(read_until_final(ws) for ws in sockets))
    assert seqs(results[0]) == seqs(results[1]) == list(range(1, len(results[0]) + 1))
    for ws in sockets:
        await ws.close()


async def test_pause_resume_cancel_restart_and_delete(make_client, gate) -> None:
    client = await make_client(gate)
    recorder = EventRecorder(client.app[ENGINE_KEY])
    mid = await create_manuscript(client)
    sid = (await start(client, mid))["session_id"]
    await wait_reached(gate)
    paused = await client.post(f"/api/process/{sid}/pause")
    assert paused.status == 200 and (await paused.json())["success"] is True
    gate.open.set()
    assert await recorder.wait_final(sid) == "paused"
    assert (await client.post(f"/api/process/{sid}/pause")).status == 409
    resumable = await (await client.get("/api/process/resumable")).json()
    assert [s["session_id"] for s in resumable["resumable_sessions"]] == [sid]
    assert resumable["resumable_sessions"][0]["status"] == "paused"

    resumed = await client.post(f"/api/process/resume/{sid}")
    body = await resumed.json()
    assert resumed.status == 200 and body["is_existing"] is False
    assert set(body["resume_info"]) == {
        "checkpoint_type",
        "progress_percent",
        "total_chapters",
        "last_completed_chapter",
    }
    last = recorder.events[sid][-1].event_seq
    assert await recorder.wait_final(sid, after_seq=last) == "completed"
    assert (await client.post(f"/api/process/{sid}/pause")).status == 409
    assert (await client.post(f"/api/process/{sid}/cancel")).status == 409
    assert (await client.post(f"/api/process/resume/{sid}")).status == 409

    restarted = await (await client.post(f"/api/process/{sid}/restart")).json()
    new_sid = restarted["session_id"]
    assert new_sid != sid
    assert (await client.delete(f"/api/manuscripts/{mid}")).status in (200, 409)
    cancelled = await client.delete(f"/api/sessions/{new_sid}")
    assert cancelled.status == 200
    assert (await client.get(f"/api/sessions/{new_sid}")).status == 404
    record = await (await client.get(f"/api/sessions/{sid}")).json()
    assert record["session"]["status"] == "completed"
    assert (await client.delete(f"/api/sessions/{sid}")).status == 200
    assert (await client.get(f"/api/sessions/{sid}/images")).status == 404


async def test_cancel_of_a_paused_session_makes_it_unresumable(make_client, gate) -> None:
    client = await make_client(gate)
    recorder = EventRecorder(client.app[ENGINE_KEY])
    mid = await create_manuscript(client)
    sid = (await start(client, mid))["session_id"]
    await wait_reached(gate)
    await client.post(f"/api/process/{sid}/pause")
    gate.open.set()
    assert await recorder.wait_final(sid) == "paused"
    assert (await client.post(f"/api/process/{sid}/cancel")).status == 200
    status = await (await client.get(f"/api/sessions/{sid}/status")).json()
    assert status["status"] == "cancelled"
    assert (await client.post(f"/api/process/{sid}/resume")).status == 409


async def test_manuscript_delete_is_409_while_live_and_404_when_gone(make_client, gate) -> None:
    client = await make_client(gate)
    mid = await create_manuscript(client)
    listing = await (await client.get("/api/manuscripts")).json()
    assert [m["manuscript_id"] for m in listing["manuscripts"]] == [mid]
    sid = (await start(client, mid))["session_id"]
    await wait_reached(gate)
    assert (await client.delete(f"/api/manuscripts/{mid}")).status == 409
    deleting = asyncio.create_task(client.delete(f"/api/sessions/{sid}"))  # cancels, waits, deletes
    gate.open.set()
    assert (await deleting).status == 200
    assert (await client.delete(f"/api/manuscripts/{mid}")).status == 200
    assert (await client.get(f"/api/manuscripts/{mid}")).status == 404
    assert (await client.delete(f"/api/manuscripts/{mid}")).status == 404


async def test_served_file_names_cannot_escape_their_folders(client) -> None:
    mid = await create_manuscript(client)
    for path in (
        "/exports/..%2F..%2Fconfig.toml",
        "/exports/.hidden.html",
        "/exports/a.toml",
        f"/generated_images/{mid}/..%2F..%2Fx.png",
        f"/generated_images/{mid}/evil.png",
    ):
        response = await client.get(path)
        assert response.status in (404, 422), path
        assert (await response.json())["success"] is False
    assert (await client.get(f"/generated_images/{mid}/chapter_1_scene_1.png")).status == 404


async def test_websocket_origin_is_checked(make_client) -> None:
    client = await make_client(allowed_origins=["https://app.example"])
    mid = await create_manuscript(client)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/ws/gallery/{mid}", headers={"Origin": "https://evil.example"})
    assert refused.value.status == 403
    ws = await client.ws_connect(f"/ws/gallery/{mid}", headers={"Origin": "https://app.example"})
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    await ws.close()
