"""``GET /api/sessions`` and ``GET /api/manuscripts``: filters, pages and their ``next`` link."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import create_manuscript

from web.keys import ENGINE_KEY

pytestmark = pytest.mark.timeout(60)


async def store_sessions(client: TestClient, count: int, manuscript: str) -> list[str]:
    """``count`` stored session documents, alternately paused and completed, the even
    ones of ``manuscript``; their ids oldest first."""
    store = client.app[ENGINE_KEY].store
    base = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for n in range(count):
        sid = str(uuid.uuid4())
        await store.create_session(
            {
                "_id": sid,
                "session_id": sid,
                "manuscript_id": manuscript if n % 2 == 0 else str(uuid.uuid4()),
                "status": "paused" if n % 2 == 0 else "completed",
                "progress_percent": 10 * n,
                "can_resume": n % 2 == 0,
                "created_at": base + timedelta(minutes=n),
            }
        )
        ids.append(sid)
    return ids


async def follow_pages(client: TestClient, url: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """Every page from ``url`` on, following ``next``: (all items, each page's total)."""
    items: list[dict[str, Any]] = []
    totals = []
    next_url: str | None = url
    while next_url is not None:
        response = await client.get(next_url)
        assert response.status == 200, await response.text()
        page = await response.json()
        key = "sessions" if "sessions" in page else "manuscripts"
        assert page["count"] == len(page[key]) <= page["limit"]
        items += page[key]
        totals.append(page["total"])
        next_url = page["next"]
        assert (next_url is None) == (page["next_offset"] is None)
    return items, totals


async def test_sessions_list_pages_newest_first_until_next_is_null(client) -> None:
    manuscript = str(uuid.uuid4())
    ids = await store_sessions(client, 7, manuscript)

    items, totals = await follow_pages(client, "/api/sessions?limit=3")
    assert [s["session_id"] for s in items] == ids[::-1]
    assert totals == [7, 7, 7]
    assert items[0]["status"] == "paused" and items[0]["progress"] == 60
    assert items[0]["live"] is False and items[0]["can_resume"] is True

    first = await (await client.get("/api/sessions?limit=3")).json()
    assert first["next_offset"] == 3 and first["offset"] == 0
    default = await (await client.get("/api/sessions")).json()
    assert default["limit"] == 50 and default["next"] is None and default["count"] == 7


async def test_sessions_list_filters_by_status_and_manuscript(client) -> None:
    manuscript = str(uuid.uuid4())
    ids = await store_sessions(client, 7, manuscript)
    mine = ids[0::2][::-1]

    items, totals = await follow_pages(
        client, f"/api/sessions?status=paused&manuscript_id={manuscript}&limit=2"
    )
    assert [s["session_id"] for s in items] == mine
    assert set(totals) == {4}
    completed, _ = await follow_pages(client, "/api/sessions?status=completed")
    assert [s["session_id"] for s in completed] == ids[1::2][::-1]
    both = await (await client.get("/api/sessions?status=completed,paused&status=running")).json()
    assert both["total"] == 7
    none = await (await client.get("/api/sessions?status=running")).json()
    assert none["sessions"] == [] and none["total"] == 0 and none["next"] is None


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        ("offset=1.5", "offset"),
        ("status=sleeping", "status"),
        ("status=PAUSED", "status"),
        ("manuscript_id=../etc", "manuscript_id"),
    ],
)
async def test_bad_list_parameters_are_422_naming_the_parameter(client, query, field) -> None:
    for path in ("/api/sessions", "/api/manuscripts"):
        if path == "/api/manuscripts" and field in ("status", "manuscript_id"):
            continue
        response = await client.get(f"{path}?{query}")
        assert response.status == 422, await response.text()
        body = await response.json()
        assert body["success"] is False and body["details"]["field"] == field


async def test_manuscripts_list_pages_newest_first(client) -> None:
    created = [await create_manuscript(client, chapters=1) for _ in range(5)]

    items, totals = await follow_pages(client, "/api/manuscripts?limit=2")
    assert [m["manuscript_id"] for m in items] == created[::-1]
    assert totals == [5, 5, 5]
    last = await (await client.get("/api/manuscripts?limit=2&offset=4")).json()
    assert last["count"] == 1 and last["next"] is None and last["next_offset"] is None
    past = await (await client.get("/api/manuscripts?offset=9")).json()
    assert past["manuscripts"] == [] and past["total"] == 5
