"""The OpenAPI document covers every route; /metrics is Prometheus text."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(60)


async def test_openapi_describes_every_registered_route(client) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    for route in client.app.router.routes():
        if route.method == "HEAD":
            continue
        path = route.resource.canonical
        assert path in spec["paths"], path
        assert route.method.lower() in spec["paths"][path], (route.method, path)
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            successes = [code for code in operation["responses"] if code < "400"]
            assert len(successes) == 1, (path, successes)
            expected = ("101",) if path.startswith("/ws/") else ("200", "201")
            assert successes[0] in expected, (path, successes)
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path


async def test_uploads_and_exports_are_documented_as_they_answer(client) -> None:
    spec = await (await client.get("/api/openapi.json")).json()
    upload = spec["paths"]["/api/manuscripts"]["post"]
    assert "201" in upload["responses"] and "200" not in upload["responses"]
    assert set(upload["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    export = spec["paths"]["/api/manuscripts/{manuscript_id}/export"]["post"]
    assert "201" in export["responses"]
    for path in ("/api/process", "/api/manuscripts/{manuscript_id}"):
        for operation in spec["paths"][path].values():
            if operation is not spec["paths"][path].get("get"):
                assert {"401", "403", "421"} <= set(operation["responses"]), path


async def test_metrics_expose_sessions_and_persistence_histogram(client) -> None:
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'illustrator_live_sessions{status="running"} 0' in text
    assert 'illustrator_persistence_ack_latency_seconds_bucket{le="+Inf"}' in text
    assert "illustrator_persistence_backlog_records 0" in text
    assert "# TYPE illustrator_persistence_ack_latency_seconds histogram" in text
