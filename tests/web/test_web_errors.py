"""Every failure comes back as JSON {success: false, error, details} with the right status."""

from __future__ import annotations

import uuid

import pytest
from conftest import create_manuscript, manuscript_body

pytestmark = pytest.mark.timeout(60)

MALFORMED_IDS = ["../../etc/passwd", "x" * 10_000, "not-a-uuid", str(uuid.uuid4()).upper()]

SESSION_ROUTES = [
    ("POST", "/api/process/resume/{}"),
    ("POST", "/api/process/{}/pause"),
    ("POST", "/api/process/{}/resume"),
    ("POST", "/api/process/{}/cancel"),
    ("POST", "/api/process/{}/restart"),
    ("GET", "/api/sessions/{}"),
    ("GET", "/api/sessions/{}/status"),
    ("GET", "/api/sessions/{}/checkpoints"),
    ("GET", "/api/sessions/{}/logs"),
    ("GET", "/api/sessions/{}/images"),
    ("DELETE", "/api/sessions/{}"),
    ("GET", "/ws/processing/{}"),
]
MANUSCRIPT_ROUTES = [
    ("GET", "/api/process/status/{}"),
    ("GET", "/api/manuscripts/{}"),
    ("DELETE", "/api/manuscripts/{}"),
    ("POST", "/api/manuscripts/{}/export"),
    ("GET", "/ws/gallery/{}"),
]


async def expect_error(response, status: int) -> dict:
    assert response.status == status, await response.text()
    body = await response.json()
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], dict)
    return body


async def test_malformed_ids_are_rejected_with_422_on_every_route(client) -> None:
    for method, template in SESSION_ROUTES + MANUSCRIPT_ROUTES:
        for bad in MALFORMED_IDS:
            if "/" in bad:
                bad = bad.replace("/", "%2F")
            response = await client.request(method, template.format(bad))
            if response.status == 404:  # an encoded slash may not match the route at all
                await expect_error(response, 404)
                continue
            body = await expect_error(response, 422)
            assert body["details"]["field"] in ("session_id", "manuscript_id")


async def test_well_formed_unknown_ids_are_404_on_every_route(client) -> None:
    for method, template in SESSION_ROUTES + MANUSCRIPT_ROUTES:
        response = await client.request(method, template.format(uuid.uuid4()))
        await expect_error(response, 404)


async def test_unknown_route_and_wrong_method_are_json(client) -> None:
    await expect_error(await client.get("/api/nothing-here"), 404)
    body = await expect_error(await client.put("/api/process"), 405)
    assert "POST" in body["details"]["allowed_methods"]


async def test_malformed_json_is_400_and_non_object_is_422(client) -> None:
    response = await client.post(
        "/api/process", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    await expect_error(response, 400)
    response = await client.post(
        "/api/manuscripts", data=b"[1, 2]", headers={"Content-Type": "application/json"}
    )
    await expect_error(response, 422)


async def test_oversized_body_is_413(client) -> None:
    body = manuscript_body()
    body["chapters"][0]["content"] = "word " * 20_000  # 100 kB > the 64 kB limit
    await expect_error(await client.post("/api/manuscripts", json=body), 413)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_emotional_moments", 0),
        ("max_emotional_moments", 21),
        ("max_emotional_moments", "5"),
        ("max_emotional_moments", True),
        ("style_config", "watercolor"),
        ("force_new", "yes"),
        ("start_from_chapter", 0),
        ("start_from_chapter", 99),
        ("manuscript_id", 12),
    ],
)
async def test_process_body_with_wrong_types_or_ranges_is_422_naming_the_field(
    client, field, value
) -> None:
    mid = await create_manuscript(client)
    body = await expect_error(
        await client.post("/api/process", json={"manuscript_id": mid, field: value}), 422
    )
    assert body["details"]["field"] == field


async def test_process_without_manuscript_id_or_unknown_manuscript(client) -> None:
    body = await expect_error(await client.post("/api/process", json={}), 422)
    assert body["details"]["field"] == "manuscript_id"
    await expect_error(
        await client.post("/api/process", json={"manuscript_id": str(uuid.uuid4())}), 404
    )


async def test_manuscript_validation_names_the_field(client) -> None:
    body = manuscript_body()
    body["chapters"][1]["content"] = 42
    error = await expect_error(await client.post("/api/manuscripts", json=body), 422)
    assert error["details"]["field"] == "chapters[1].content"


async def test_logs_query_parameters_are_validated(client) -> None:
    sid = str(uuid.uuid4())
    body = await expect_error(await client.get(f"/api/sessions/{sid}/logs?after=abc"), 422)
    assert body["details"]["field"] == "after"
    await expect_error(await client.get(f"/api/sessions/{sid}/logs?limit=0"), 422)


async def test_bearer_token_is_required_when_configured_except_for_health(make_client) -> None:
    client = await make_client(api_tokens=["s3cret"])
    assert (await client.get("/health")).status == 200
    await expect_error(await client.get("/api/manuscripts"), 401)
    await expect_error(
        await client.get("/api/manuscripts", headers={"Authorization": "Bearer wrong"}), 401
    )
    ok = await client.get("/api/manuscripts", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
