"""The web page's routes (web/ui.py) and the WebSocket token the page sends as a
subprotocol: pages and assets are public, data calls still need the token, and a token
never reaches a log."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from typing import Any

import aiohttp
import pytest
from conftest import create_manuscript, manuscript_body

pytestmark = pytest.mark.timeout(60)

TOKEN = "s3cret-ui-token-é"


def bearer_protocol(token: str) -> str:
    return "illustrator.bearer." + base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def test_pages_and_assets_are_served_with_a_strict_content_security_policy(
    client: Any,
) -> None:
    for path in ("/", f"/ui/sessions/{uuid.uuid4()}", f"/ui/manuscripts/{uuid.uuid4()}"):
        page = await client.get(path)
        assert page.status == 200, path
        assert page.content_type == "text/html"
        text = await page.text()
        assert '<script type="module" src="/ui/static/app.js">' in text
        policy = page.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "<script>" not in text  # no inline script: the policy would refuse it
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = await client.get(f"/ui/static/{name}")
        assert asset.status == 200 and asset.content_type == kind
        assert asset.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_modules_never_put_server_data_into_html(client: Any) -> None:
    for name in ("app.js", "api.js", "dom.js", "dashboard.js", "session.js", "manuscript.js"):
        source = await (await client.get(f"/ui/static/{name}")).text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
            assert sink not in source, (name, sink)


async def test_unknown_assets_and_malformed_page_ids_get_json_errors(client: Any) -> None:
    missing = await client.get("/ui/static/secrets.py")
    assert missing.status == 404
    assert (await missing.json())["success"] is False
    traversal = await client.get("/ui/static/..%2Fui.py")
    assert traversal.status == 404
    bad = await client.get("/ui/sessions/not-a-uuid")
    assert bad.status == 422
    assert (await bad.json())["details"]["field"] == "session_id"


async def test_with_tokens_pages_are_public_and_data_needs_the_token(make_client: Any) -> None:
    client = await make_client(api_tokens=[TOKEN])
    assert (await client.get("/")).status == 200
    assert (await client.get("/ui/static/app.js")).status == 200
    assert (await client.get("/api/manuscripts")).status == 401
    assert (await client.get(f"/ui/sessions/{uuid.uuid4()}")).status == 200


async def test_a_websocket_accepts_the_token_as_a_subprotocol_and_selects_illustrator(
    make_client: Any,
) -> None:
    client = await make_client(api_tokens=[TOKEN])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.post("/api/manuscripts", json=manuscript_body(1), headers=auth)
    mid = (await response.json())["manuscript_id"]
    ws = await client.ws_connect(
        f"/ws/gallery/{mid}", protocols=("illustrator", bearer_protocol(TOKEN))
    )
    assert ws.protocol == "illustrator"
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    await ws.close()
    for protocols in (
        ("illustrator", bearer_protocol("wrong")),
        ("illustrator", "illustrator.bearer.%%%not-base64"),
        ("illustrator",),
    ):
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await client.ws_connect(f"/ws/gallery/{mid}", protocols=protocols)
        assert refused.value.status == 401, protocols
    # Only on a handshake: a plain request with the header is not authenticated by it.
    plain = await client.get(
        "/api/manuscripts",
        headers={"Sec-WebSocket-Protocol": f"illustrator, {bearer_protocol(TOKEN)}"},
    )
    assert plain.status == 401


async def test_a_token_offered_without_the_illustrator_subprotocol_is_refused_unlogged(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client()  # no tokens configured: the check still applies
    mid = await create_manuscript(client, 1)
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/ws/gallery/{mid}", protocols=(bearer_protocol(TOKEN),))
    assert refused.value.status == 400
    ws = await client.ws_connect(
        f"/ws/gallery/{mid}", protocols=("illustrator", bearer_protocol(TOKEN))
    )
    assert ws.protocol == "illustrator"
    await ws.close()
    encoded = bearer_protocol(TOKEN).rpartition(".")[2]
    for record in caplog.records:
        text = record.getMessage() + json.dumps(vars(record), default=str)
        assert encoded not in text and TOKEN not in text, record.getMessage()


async def test_the_access_log_never_shows_a_subprotocol_token(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = await make_client(api_tokens=[TOKEN])
    auth = {"Authorization": f"Bearer {TOKEN}"}
    response = await client.post("/api/manuscripts", json=manuscript_body(1), headers=auth)
    mid = (await response.json())["manuscript_id"]
    ws = await client.ws_connect(
        f"/ws/gallery/{mid}", protocols=("illustrator", bearer_protocol(TOKEN))
    )
    await ws.receive_json(timeout=10)
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError):
        await client.ws_connect(
            f"/ws/gallery/{mid}", protocols=("illustrator", bearer_protocol(TOKEN + "x"))
        )
    async with asyncio.timeout(10):  # the WebSocket's access line is written when it ends
        while not any(f"/ws/gallery/{mid}" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.01)
    encoded = bearer_protocol(TOKEN).rpartition(".")[2]
    for record in caplog.records:
        text = record.getMessage() + json.dumps(vars(record), default=str)
        assert encoded not in text and TOKEN not in text, record.getMessage()
