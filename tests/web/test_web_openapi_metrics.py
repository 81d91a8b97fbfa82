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
            assert "200" in operation["responses"]
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "path":
                    assert "{" + parameter["name"] + "}" in path


async def test_metrics_expose_sessions_and_persistence_histogram(client) -> None:
    response = await client.get("/metrics")
    assert response.status == 200 and response.content_type == "text/plain"
    text = await response.text()
    assert 'illustrator_live_sessions{status="running"} 0' in text
    assert 'illustrator_persistence_ack_latency_seconds_bucket{le="+Inf"}' in text
    assert "illustrator_persistence_backlog_records 0" in text
    assert "# TYPE illustrator_persistence_ack_latency_seconds histogram" in text
