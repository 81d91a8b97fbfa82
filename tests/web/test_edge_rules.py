"""The HTTP edge's rules: Host names without tokens (DNS rebinding), JSON bodies must say
they are JSON, ``?token=`` only on WebSocket handshakes and never in the access log, a
body that stops arriving times out, static files never leave the output folder, uploads
and exports are parsed and rendered off the event loop, a manuscript is stored all or
nothing, and an unwritable output folder stops ``illustrator serve`` saying so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import BODY, create_manuscript, manuscript_body, start
from tests_support import EventRecorder

from errors import StorageError
from web import routes_manuscripts, uploads
from web.keys import ENGINE_KEY

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
STORY = ("# The Voyage\n\n## Chapter 1\n\n" + BODY * 3).encode()


async def expect_error(response: aiohttp.ClientResponse, status: int) -> dict[str, Any]:
    """The uniform JSON error with ``status``."""
    text = await response.text()
    assert response.status == status, text[:500]
    assert response.content_type == "application/json", text[:200]
    body = json.loads(text)
    assert body["success"] is False and body["error"] and isinstance(body["details"], dict)
    return dict(body)


def upload(raw: bytes, filename: str) -> aiohttp.FormData:
    data = aiohttp.FormData()
    data.add_field("file", raw, filename=filename, content_type="application/octet-stream")
    return data


# --------------------------------------------------------------------------- Host header


async def test_without_tokens_a_foreign_host_name_gets_421(client: TestClient) -> None:
    for host in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "localhost.evil"]:
        body = await expect_error(await client.get("/api/manuscripts", headers={"Host": host}), 421)
        assert body["details"]["field"] == "Host"
        await expect_error(
            await client.post("/api/manuscripts", json=manuscript_body(1), headers={"Host": host}),
            421,
        )
    # Probes may use any name for /health.
    assert (await client.get("/health", headers={"Host": "evil.example"})).status == 200


async def test_loopback_names_addresses_and_configured_names_are_served(
    make_client: Any,
) -> None:
    client = await make_client(allowed_hosts=["illustrator.internal"])
    for host in [
        "127.0.0.1",
        f"127.0.0.1:{client.port}",
        "localhost",
        "LOCALHOST:8080",
        "app.localhost",
        "[::1]:8080",
        "192.168.1.20:8080",  # a page cannot rebind an address: its origin is the address
        "illustrator.internal",
        "Illustrator.Internal.:9000",
    ]:
        response = await client.get("/api/manuscripts", headers={"Host": host})
        assert response.status == 200, (host, await response.text())
    await expect_error(
        await client.get("/api/manuscripts", headers={"Host": "other.internal"}), 421
    )


async def test_the_bind_name_and_a_wildcard_are_accepted(make_client: Any) -> None:
    named = await make_client(host="illustrator.lan")
    assert (
        await named.get("/api/manuscripts", headers={"Host": "illustrator.lan:8080"})
    ).status == 200
    anything = await make_client(allowed_hosts=["*"])
    assert (await anything.get("/api/manuscripts", headers={"Host": "evil.example"})).status == 200


async def test_with_tokens_the_host_is_not_checked(make_client: Any) -> None:
    client = await make_client(api_tokens=["s3cret"])
    response = await client.get(
        "/api/manuscripts", headers={"Host": "evil.example", "Authorization": "Bearer s3cret"}
    )
    assert response.status == 200


# --------------------------------------------------------------------------- Origin header


async def test_a_page_of_another_origin_cannot_change_anything(client: TestClient) -> None:
    """A multipart upload needs no CORS preflight, so without this check any web page its
    visitor opens could upload to, or pause and delete on, a server on their machine."""
    mid = await create_manuscript(client)
    before = await (await client.get("/api/manuscripts")).json()
    evil = {"Origin": "https://evil.example"}
    body = await expect_error(
        await client.post("/api/manuscripts", data=upload(STORY, "m.md"), headers=evil), 403
    )
    assert body["details"] == {"field": "Origin", "origin": "https://evil.example"}
    await expect_error(await client.delete(f"/api/manuscripts/{mid}", headers=evil), 403)
    await expect_error(
        await client.post("/api/process", json={"manuscript_id": mid}, headers=evil), 403
    )
    assert await (await client.get("/api/manuscripts")).json() == before
    # Reading is not refused (a cross-origin page cannot read the answer anyway).
    assert (await client.get("/api/manuscripts", headers=evil)).status == 200
    # The server's own page, and clients that are not browsers (no Origin), are served.
    own = {"Origin": f"http://{client.host}:{client.port}"}
    uploaded = await client.post("/api/manuscripts", data=upload(STORY, "m.md"), headers=own)
    assert uploaded.status == 201, await uploaded.text()
    assert (await client.post("/api/manuscripts", data=upload(STORY, "n.md"))).status == 201


async def test_allowed_origins_admit_other_sites_pages(make_client: Any) -> None:
    client = await make_client(allowed_origins=["https://app.example"])
    for origin in ["https://app.example", f"http://{client.host}:{client.port}"]:
        sent = await client.post(
            "/api/manuscripts", data=upload(STORY, "m.md"), headers={"Origin": origin}
        )
        assert sent.status == 201, (origin, await sent.text())
    await expect_error(
        await client.post(
            "/api/manuscripts", data=upload(STORY, "m.md"), headers={"Origin": "https://x.example"}
        ),
        403,
    )


# --------------------------------------------------------------------------- JSON bodies


async def test_a_json_body_without_a_json_content_type_is_415_and_starts_nothing(
    client: TestClient,
) -> None:
    mid = await create_manuscript(client, chapters=1)
    raw = json.dumps({"manuscript_id": mid}).encode()
    for content_type in ["text/plain", "application/x-www-form-urlencoded", None]:
        headers = {"Content-Type": content_type} if content_type else {}
        body = await expect_error(await client.post("/api/process", data=raw, headers=headers), 415)
        assert body["details"]["field"] == "Content-Type"
        assert body["details"]["expected"] == ["application/json"]
    assert client.app[ENGINE_KEY].hub.snapshots() == []
    text = json.dumps(manuscript_body(1)).encode()
    body = await expect_error(
        await client.post("/api/manuscripts", data=text, headers={"Content-Type": "text/plain"}),
        415,
    )
    assert body["details"]["expected"] == ["application/json", "multipart/form-data"]


async def test_json_with_a_charset_and_bodiless_commands_still_work(client: TestClient) -> None:
    # README's flow: curl -H 'Content-Type: application/json' -d '{...}', and bare POSTs.
    mid = await create_manuscript(client, chapters=1)
    response = await client.post(
        "/api/process",
        data=json.dumps({"manuscript_id": mid, "max_emotional_moments": 1}).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert response.status == 200, await response.text()
    sid = (await response.json())["session_id"]
    recorder = EventRecorder(client.app[ENGINE_KEY])
    assert await recorder.wait_final(sid, timeout=30) == "completed"
    # curl -X POST without a body (and so without a Content-Type)
    response = await client.post(f"/api/process/resume/{sid}")
    assert response.status == 409, await response.text()  # completed: nothing to resume
    response = await client.post(f"/api/manuscripts/{mid}/export?format=json")
    assert response.status == 201, await response.text()
    # README's upload: curl -F file=@examples/lighthouse.md
    lighthouse = (ROOT / "examples" / "lighthouse.md").read_bytes()
    response = await client.post("/api/manuscripts", data=upload(lighthouse, "lighthouse.md"))
    assert response.status == 201, await response.text()


# --------------------------------------------------------------------------- tokens


async def test_a_query_token_is_accepted_only_on_websocket_handshakes(make_client: Any) -> None:
    client = await make_client(api_tokens=["s3cret"])
    body = await expect_error(await client.get("/api/manuscripts?token=s3cret"), 401)
    assert "WebSocket" in body["details"]["reason"]
    await expect_error(await client.post("/api/manuscripts?token=s3cret", json={}), 401)
    ok = await client.get("/api/manuscripts", headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    mid = await create_manuscript_with(client, {"Authorization": "Bearer s3cret"})
    ws = await client.ws_connect(f"/ws/gallery/{mid}?token=s3cret")
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await client.ws_connect(f"/ws/gallery/{mid}?token=wrong")
    assert refused.value.status == 401
    # Header bytes that are not UTF-8 are a wrong token, not a crash.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"GET /api/manuscripts HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer caf\xe9\r\n"
        b"Connection: close\r\n\r\n"
    )
    reply = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 401 "), reply[:300]


async def create_manuscript_with(client: TestClient, headers: dict[str, str]) -> str:
    response = await client.post("/api/manuscripts", json=manuscript_body(1), headers=headers)
    assert response.status == 201, await response.text()
    return str((await response.json())["manuscript_id"])


async def test_the_access_log_never_shows_a_token(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    client = await make_client(api_tokens=["s3cret-token-value"])
    mid = await create_manuscript_with(client, {"Authorization": "Bearer s3cret-token-value"})
    ws = await client.ws_connect(
        f"/ws/gallery/{mid}?token=s3cret-token-value&x=1",
        headers={"Referer": "http://127.0.0.1/page?token=s3cret-token-value"},
    )
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    await ws.close()
    await client.get("/api/manuscripts?TOKEN=s3cret-token-value")  # refused, and logged
    async with asyncio.timeout(10):  # the WebSocket's line is written when its handler ends
        while not any(f"/ws/gallery/{mid}" in r.getMessage() for r in caplog.records):
            await asyncio.sleep(0.01)
    access = [r for r in caplog.records if r.name == "aiohttp.access"]
    lines = [r.getMessage() for r in access]
    assert any(f"/ws/gallery/{mid}?token=[redacted]&x=1" in line for line in lines), lines
    assert any("?TOKEN=[redacted]" in line for line in lines), lines
    for record in access:
        assert "s3cret-token-value" not in record.getMessage()
        assert "s3cret-token-value" not in json.dumps(vars(record), default=str)


# --------------------------------------------------------------------------- stalled bodies


@pytest.mark.parametrize(
    ("path", "content_type", "half"),
    [
        ("/api/process", "application/json", b'{"manuscript_id": "'),
        ("/api/manuscripts", "application/json", b'{"title": "Half a'),
        (
            "/api/manuscripts",
            "multipart/form-data; boundary=b0undary",
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="s.md"\r\n\r\n'
            + STORY[:100],
        ),
    ],
    ids=["process", "manuscript json", "manuscript upload"],
)
async def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(
    make_client: Any, path: str, content_type: str, half: bytes
) -> None:
    client = await make_client(as_served=True, body_timeout_seconds=0.5)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(half) * 4}\r\n\r\n".encode()
        + half
    )
    await writer.drain()
    loop = asyncio.get_running_loop()
    began = loop.time()
    try:
        # Everything until the server closes: well before aiohttp's 10 s lingering time.
        data = await asyncio.wait_for(reader.read(), 8)
    finally:
        writer.close()
    elapsed = loop.time() - began
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), data[:300]
    assert b"connection: close" in head.lower()
    reply = json.loads(body)
    assert reply["details"] == {"field": "body", "body_timeout_seconds": 0.5}
    assert 0.4 < elapsed < 8


# --------------------------------------------------------------------------- static files


async def test_static_routes_do_not_follow_symlinks_out_of_the_output_folder(
    client: TestClient, tmp_path: Path
) -> None:
    engine = client.app[ENGINE_KEY]
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"top secret")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "chapter_1_scene_1.png").write_bytes(b"also secret")
    sid, linked_sid = str(uuid.uuid4()), str(uuid.uuid4())
    (engine.files.images_dir / sid).mkdir(parents=True)
    (engine.files.images_dir / sid / "chapter_1_scene_1.png").symlink_to(secret)
    (engine.files.images_dir / linked_sid).symlink_to(outside, target_is_directory=True)
    engine.files.exports_dir.mkdir(parents=True, exist_ok=True)
    (engine.files.exports_dir / "leak.html").symlink_to(secret)
    for url in [
        f"/generated_images/{sid}/chapter_1_scene_1.png",
        f"/generated_images/{linked_sid}/chapter_1_scene_1.png",
        "/exports/leak.html",
    ]:
        response = await client.get(url)
        body = await expect_error(response, 404)
        assert "secret" not in json.dumps(body)
    # A link that stays inside the output folder is served.
    inside = engine.files.exports_dir / "real.html"
    inside.write_text("<p>ok</p>")
    (engine.files.exports_dir / "alias.html").symlink_to(inside)
    response = await client.get("/exports/alias.html")
    assert response.status == 200 and await response.text() == "<p>ok</p>"


# --------------------------------------------------------------------------- off the loop


class ThreadRecorder:
    """Wraps a function and records the thread of every call (and calls it)."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.threads: list[int] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.threads.append(threading.get_ident())
        return self.function(*args, **kwargs)


async def test_uploads_are_parsed_and_exports_rendered_off_the_event_loop(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop_thread = threading.get_ident()
    recorders = {}
    for module, name in [
        (uploads, "parse_manuscript_text"),
        (uploads, "parse_manuscript_json"),
        (routes_manuscripts, "parse_manuscript_json"),
        (routes_manuscripts, "render_html"),
    ]:
        recorder = recorders[f"{module.__name__}.{name}"] = ThreadRecorder(getattr(module, name))
        monkeypatch.setattr(module, name, recorder)
    response = await client.post("/api/manuscripts", data=upload(STORY, "story.md"))
    assert response.status == 201, await response.text()
    response = await client.post(
        "/api/manuscripts", data=upload(json.dumps(manuscript_body(1)).encode(), "m.json")
    )
    assert response.status == 201, await response.text()
    mid = await create_manuscript(client, chapters=1)  # a JSON body
    sid = (await start(client, mid, max_emotional_moments=1))["session_id"]
    assert await EventRecorder(client.app[ENGINE_KEY]).wait_final(sid, timeout=30) == "completed"
    response = await client.post(f"/api/manuscripts/{mid}/export?format=html")
    assert response.status == 201, await response.text()
    for name, recorder in recorders.items():
        assert recorder.threads, f"{name} was not called"
        assert loop_thread not in recorder.threads, f"{name} ran on the event loop"


# --------------------------------------------------------------------------- all or nothing


async def test_a_manuscript_the_database_refuses_leaves_no_file_and_no_record(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = client.app[ENGINE_KEY]
    store = engine.store
    assert store is not None

    async def refuse(document: dict[str, Any]) -> None:
        raise StorageError("create manuscript failed: document refused")

    monkeypatch.setattr(store, "create_manuscript", refuse)
    for request in [
        {"json": manuscript_body(1)},
        {"data": upload(STORY, "story.md")},
    ]:
        await expect_error(await client.post("/api/manuscripts", **request), 503)
    assert list(engine.files.manuscripts_dir.glob("*")) == []
    assert await store.list_manuscripts() == []
    monkeypatch.undo()
    # The next start finds nothing half-written; a good save still works.
    await create_manuscript(client, chapters=1)
    assert len(list(engine.files.manuscripts_dir.glob("*.json"))) == 1


# --------------------------------------------------------------------------- output folder


@contextlib.contextmanager
def unwritable_folder(tmp_path: Path, kind: str) -> Iterator[Path]:
    """An empty folder nobody can write to (or a file standing where the folder goes)."""
    if kind == "a file in its place":
        path = tmp_path / "out"
        path.write_text("not a folder")
        yield path
        return
    path = tmp_path / "readonly"
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        try:
            yield path
        finally:
            path.chmod(0o755)
        return
    # root ignores permission bits: a read-only file system it is.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("kind", ["read-only", "a file in its place"])
def test_serve_reports_an_unwritable_output_folder_as_such(tmp_path: Path, kind: str) -> None:
    script = Path(sys.executable).parent / "illustrator"
    with unwritable_folder(tmp_path, kind) as folder:
        env = {
            **os.environ,
            "ILLUSTRATOR_OUTPUT_DIRECTORY": str(folder),
            "ILLUSTRATOR_SERVER_PORT": "0",
            "ILLUSTRATOR_MONGODB_URI": "mongodb://unused",
            "ILLUSTRATOR_MONGODB_DRIVER": "mongomock",
        }
        done = subprocess.run(
            [str(script), "serve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        if folder.is_dir():
            assert list(folder.iterdir()) == []
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"the output folder {folder} is not writable" in done.stderr, done.stderr[-2000:]
    assert "cannot listen" not in done.stderr and "another port" not in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
