"""Hostile input (guarantee 5): every bad request gets a clear 4xx JSON error (or a 503
when shed), the server stays up, nothing is created and no file is written anywhere.

Covers uploads, ids in every route (path traversal included), JSON bodies (wrong types,
deep nesting, oversized style configs), WebSocket frames (binary, garbage, oversized,
floods, a client that never reads) and a thousand simultaneous WebSocket connections.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType
from aiohttp.test_utils import TestClient
from conftest import BODY, create_manuscript, manuscript_body, start
from tests_support import EventRecorder

from storage.records import LogEntry
from web.keys import ENGINE_KEY, WEBSOCKETS_KEY
from web.sessions import wait_until_stopped

pytestmark = pytest.mark.timeout(90)

STORY = ("# The Voyage\n\n## Chapter 1\n\n" + BODY * 3).encode()


# --------------------------------------------------------------------------- helpers


def files_under(root: Path) -> set[Path]:
    """Every file below ``root`` (the test's tmp_path holds the output directory)."""
    return {p for p in root.rglob("*") if p.is_file()}


class Witness:
    """What a rejected request must not change: files, manuscripts, sessions, health."""

    def __init__(self, client: TestClient, root: Path) -> None:
        self.client = client
        self.root = root
        self.output = Path(client.app[ENGINE_KEY].output_dir)
        self.files: set[Path] = set()
        self.records: tuple[list[str], list[str]] = ([], [])

    async def _records(self) -> tuple[list[str], list[str]]:
        store = self.client.app[ENGINE_KEY].store
        assert store is not None
        manuscripts = sorted(
            str(d.get("manuscript_id") or d["_id"]) for d in await store.list_manuscripts()
        )
        sessions = sorted(str(d["session_id"]) for d in await store.list_sessions(limit=10_000))
        return manuscripts, sessions

    async def __aenter__(self) -> Witness:
        await self.client.app[ENGINE_KEY].flush()
        self.files = files_under(self.root)
        self.records = await self._records()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        health = await self.client.get("/health")
        assert health.status == 200, await health.text()
        await self.client.app[ENGINE_KEY].flush()
        after = files_under(self.root)
        new = after - self.files
        outside = {p for p in new if not p.resolve().is_relative_to(self.output)}
        assert not outside, f"files written outside the output directory: {outside}"
        assert not new, f"a rejected request wrote files: {new}"
        assert await self._records() == self.records, "a rejected request created records"


async def expect_error(response: aiohttp.ClientResponse, *statuses: int) -> dict[str, Any]:
    """The uniform error body with one of ``statuses``."""
    text = await response.text()
    assert response.status in statuses, (response.status, text[:500])
    assert response.content_type == "application/json", text[:200]
    body = json.loads(text)
    assert body["success"] is False
    assert isinstance(body["error"], str) and body["error"]
    assert isinstance(body["details"], dict)
    return dict(body)


async def raw_request(client: TestClient, method: str, target: str) -> tuple[int, dict[str, Any]]:
    """Send ``target`` byte for byte (no client-side normalisation of ``..`` or ``%2F``)."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n".encode("latin-1")
    )
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    headers = head.decode("latin-1").lower()
    assert "content-type: application/json" in headers, data[:300]
    parsed = json.loads(body)
    assert parsed["success"] is False and parsed["error"] and isinstance(parsed["details"], dict)
    return status, parsed


def form(*parts: tuple[str, bytes | str, str | None]) -> aiohttp.FormData:
    """multipart/form-data with (name, value, filename) parts."""
    data = aiohttp.FormData()
    for name, value, filename in parts:
        if filename is None:
            data.add_field(name, value)
        else:
            data.add_field(name, value, filename=filename, content_type="application/octet-stream")
    return data


async def completed_session(client: TestClient) -> str:
    """A finished, stored, no longer live session of a one-chapter manuscript."""
    recorder = EventRecorder(client.app[ENGINE_KEY])
    mid = await create_manuscript(client, chapters=1)
    sid = (await start(client, mid, max_emotional_moments=1))["session_id"]
    assert await recorder.wait_final(sid, timeout=30) == "completed"
    assert await wait_until_stopped(client.app[ENGINE_KEY], sid)
    await client.app[ENGINE_KEY].flush()
    return str(sid)


def publish(client: TestClient, sid: str, first_seq: int, count: int, filler: int = 0) -> None:
    """Publish synthetic log events of ``sid`` to the WebSocket subscribers (memory only)."""
    entries = [
        LogEntry(
            session_id=sid,
            event_seq=first_seq + i,
            type="log",  # type: ignore[arg-type]
            payload={"level": "info", "message": "x" * filler, "n": first_seq + i},
        )
        for i in range(count)
    ]
    client.app[ENGINE_KEY].hub.publish(entries)


async def receive_until(ws: aiohttp.ClientWebSocketResponse, seq: int) -> list[dict[str, Any]]:
    """Frames up to and including the event ``seq``."""
    frames = []
    while True:
        frame = await ws.receive_json(timeout=10)
        frames.append(frame)
        if frame.get("event_seq") == seq:
            return frames


# --------------------------------------------------------------------------- uploads


BOUNDARY = "hostileboundary"


def multipart_bytes(*parts: tuple[str, bytes, str | None]) -> bytes:
    """A hand-built multipart body (for bodies aiohttp's FormData would not produce)."""
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += (
            f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
        )
    return out + f"--{BOUNDARY}--\r\n".encode()


PNG = (
    bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")
    + b"\x00" * 64
)
UPLOADS: list[tuple[str, dict[str, Any], int, str | None]] = [
    (
        "huge file over max_body_bytes",
        {"data": form(("file", b"word " * 40_000, "big.txt"))},
        413,
        "body",
    ),
    ("huge chunked upload without length", {"chunked": True}, 413, "body"),
    (
        "empty body, JSON",
        {"data": b"", "headers": {"Content-Type": "application/json"}},
        422,
        "body",
    ),
    ("empty body, no content type", {"data": b""}, 422, "body"),
    (
        "empty body, multipart",
        {"data": b"", "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}},
        400,
        "body",
    ),
    (
        "multipart without boundary",
        {"data": b"--x\r\n", "headers": {"Content-Type": "multipart/form-data"}},
        400,
        "body",
    ),
    (
        "garbled multipart",
        {
            "data": b"\x00\xff garbage \r\n\r\n",
            "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        },
        400,
        "body",
    ),
    ("empty file", {"data": form(("file", b"", "empty.txt"))}, 422, "file"),
    ("whitespace-only file", {"data": form(("file", b" \n\n\t \n", "blank.md"))}, 422, "file"),
    ("PNG bytes named .txt", {"data": form(("file", PNG, "story.txt"))}, 422, "file"),
    (
        "NUL bytes",
        {"data": form(("file", b"Chapter 1\n\x00\x00\x00 text", "story.txt"))},
        422,
        "file",
    ),
    (
        "invalid UTF-8",
        {"data": form(("file", b"Chapter 1\n\xff\xfe\xc3\x28 caf\xe9", "story.txt"))},
        422,
        "file",
    ),
    (
        "UTF-16 without BOM",
        {"data": form(("file", ("Chapter 1\n\n" + BODY).encode("utf-16-le"), "story.txt"))},
        422,
        "file",
    ),
    (
        "UTF-16 with BOM",
        {"data": form(("file", ("Chapter 1\n\n" + BODY).encode("utf-16"), "story.txt"))},
        422,
        "file",
    ),
    ("a .exe file name", {"data": form(("file", STORY, "story.exe"))}, 422, "file"),
    (
        "a file without a file name",
        {
            "data": multipart_bytes(("file", STORY, None)),
            "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        },
        422,
        "file",
    ),
    (
        "a multipart without a file field",
        {
            "data": multipart_bytes(("title", b"No file", None), ("author", b"Ann", None)),
            "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        },
        422,
        "file",
    ),
    (  # neither JSON nor multipart (was 400 "not JSON"; a browser can send it cross-site)
        "a url-encoded form",
        {"data": form(("title", "No file", None), ("author", "Ann", None))},
        415,
        "Content-Type",
    ),
    (
        "a file with 0 chapters after parsing",
        {"data": form(("file", b"# Book\n\n## Chapter 1\n\n## Chapter 2\n\n", "story.md"))},
        422,
        "text",
    ),
    (
        "a title that is not UTF-8",
        {
            "data": multipart_bytes(("file", STORY, "story.md"), ("title", b"\xff\xfe", None)),
            "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        },
        422,
        "title",
    ),
    ("a nested multipart", {"nested": True}, 422, "body"),
]


async def _huge_chunks() -> Any:
    disposition = 'form-data; name="file"; filename="big.txt"'
    yield f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
    for _ in range(64):  # 1 MB against a 64 kB limit, no Content-Length
        yield b"word " * 3277
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    ("case", "request_args", "status", "field"), UPLOADS, ids=[u[0] for u in UPLOADS]
)
async def test_hostile_upload_is_rejected_and_changes_nothing(
    client: TestClient,
    tmp_path: Path,
    case: str,
    request_args: dict[str, Any],
    status: int,
    field: str | None,
) -> None:
    kwargs = dict(request_args)
    if kwargs.pop("chunked", False):
        kwargs = {
            "data": _huge_chunks(),
            "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        }
    if kwargs.pop("nested", False):
        outer = aiohttp.MultipartWriter("form-data")
        inner = aiohttp.MultipartWriter("mixed")
        inner.append(STORY)
        outer.append(inner)
        kwargs = {"data": outer}
    async with Witness(client, tmp_path):
        body = await expect_error(await client.post("/api/manuscripts", **kwargs), status)
        if field is not None:
            assert body["details"].get("field") == field, body


async def test_good_upload_still_works_after_the_hostile_ones(client: TestClient) -> None:
    response = await client.post("/api/manuscripts", data=form(("file", STORY, "story.md")))
    assert response.status == 201, await response.text()


# --------------------------------------------------------------------------- ids


BAD_IDS = [
    "../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2E%2E%2F%2E%2E%2Fetc%2Fpasswd",
    "x" * 10_000,
    "%C3%BCn%C3%AFc%C3%B6d%C3%A9-%E2%98%83",
    "UPPER",  # replaced by an upper-case UUID
    "NUL",  # replaced by a UUID with %00 in it
    "%00",
    "",  # an empty segment
]
ID_ROUTES = [
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
    ("GET", "/api/process/status/{}"),
    ("GET", "/api/manuscripts/{}"),
    ("DELETE", "/api/manuscripts/{}"),
    ("POST", "/api/manuscripts/{}/export"),
    ("GET", "/ws/gallery/{}"),
    ("GET", "/generated_images/{}/chapter_1_scene_1.png"),
    ("GET", "/generated_images/" + str(uuid.UUID(int=1)) + "/{}"),
    ("GET", "/exports/{}"),
]


def spell(bad: str) -> str:
    if bad == "UPPER":
        return str(uuid.uuid4()).upper()
    if bad == "NUL":
        good = str(uuid.uuid4())
        return good[:8] + "%00" + good[9:]
    return bad


@pytest.mark.parametrize(("method", "template"), ID_ROUTES, ids=[f"{m} {t}" for m, t in ID_ROUTES])
async def test_hostile_ids_get_a_json_4xx_on_every_route(
    client: TestClient, tmp_path: Path, method: str, template: str
) -> None:
    async with Witness(client, tmp_path):
        for bad in BAD_IDS:
            status, body = await raw_request(client, method, template.format(spell(bad)))
            assert status in (404, 405, 422), (bad[:40], status, body)
            if status == 422:
                assert body["details"]["field"] in ("session_id", "manuscript_id", "filename"), body


TRAVERSAL_FILES = [
    ("/generated_images/{sid}/{f}", "..%2F..%2F..%2Fetc%2Fpasswd"),
    ("/generated_images/{sid}/{f}", "../../../etc/passwd"),
    ("/generated_images/{sid}/{f}", "chapter_1_scene_1.png%00.txt"),
    ("/generated_images/{sid}/{f}", "%2Fetc%2Fpasswd"),
    ("/generated_images/{sid}/{f}", "..%5C..%5Cwin.ini"),
    ("/exports/{f}", "..%2F..%2Fetc%2Fpasswd"),
    ("/exports/{f}", "..%2Fsessions%2Factive_sessions%2Fx.json"),
    ("/exports/{f}", "../config.toml"),
    ("/exports/{f}", ".hidden.html"),
    ("/exports/{f}", "a.html%00"),
    ("/exports/{f}", "x" * 10_000 + ".html"),
]


async def test_traversal_in_file_names_never_leaves_the_output_directory(
    client: TestClient, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": true}')
    sid = str(uuid.uuid4())
    async with Witness(client, tmp_path):
        for template, name in TRAVERSAL_FILES:
            status, body = await raw_request(client, "GET", template.format(sid=sid, f=name))
            assert status in (404, 422), (name[:40], status, body)
            assert "secret" not in json.dumps(body)
        status, _ = await raw_request(client, "GET", f"/exports/..%2F..%2F{secret.name}")
        assert status == 422


async def test_export_query_parameters_are_validated_before_anything_is_written(
    client: TestClient, tmp_path: Path
) -> None:
    mid = await create_manuscript(client, chapters=1)
    async with Witness(client, tmp_path):
        for query, field in [
            ("session_id=..%2F..%2Fetc%2Fpasswd", "session_id"),
            ("session_id=" + "x" * 5000, "session_id"),
            ("format=..%2F..%2Fetc", "format"),
            ("format=exe", "format"),
        ]:
            body = await expect_error(
                await client.post(f"/api/manuscripts/{mid}/export?{query}"), 422
            )
            assert body["details"]["field"] == field


# --------------------------------------------------------------------------- JSON bodies


PROCESS_WRONG_TYPES: dict[str, list[Any]] = {
    "manuscript_id": [12, None, [], {}, True, "x", "ü" * 36, 1.5],
    "style_config": ["watercolor", 1, [], True, [{"art_style": "x"}]],
    "max_emotional_moments": ["5", 1.5, [], {}, True, 0, 21, -1, 10**30],
    "force_new": ["yes", 1, 0, [], {}, None],
    "start_from_chapter": ["1", 1.5, [], {}, True, 0, 10**30],
    "external_session_id": [1, [], {}, True, "x" * 201],
}


@pytest.mark.parametrize("field", list(PROCESS_WRONG_TYPES))
async def test_process_fields_of_the_wrong_type_are_422_naming_the_field(
    client: TestClient, tmp_path: Path, field: str
) -> None:
    mid = await create_manuscript(client, chapters=1)
    async with Witness(client, tmp_path):
        for value in PROCESS_WRONG_TYPES[field]:
            response = await client.post("/api/process", json={"manuscript_id": mid, field: value})
            body = await expect_error(response, 422)
            assert body["details"]["field"] == field, (value, body)


def _with(path: str, value: Any) -> dict[str, Any]:
    body = manuscript_body(1)
    if path.startswith("chapters[0]."):
        body["chapters"][0][path.split(".", 1)[1]] = value
    elif path == "chapters[0]":
        body["chapters"][0] = value
    else:
        body[path] = value
    return body


MANUSCRIPT_WRONG_TYPES: dict[str, list[Any]] = {
    "title": [None, 1, [], {}, True, "", "x" * 501],
    "author": [None, 1, [], {}, False],
    "description": [1, [], {}, True],
    "genre": [1, [], {}, True, "x" * 501],
    "chapters": [None, "text", 1, {}, [], True],
    "chapters[0]": ["text", 1, [], None],
    "chapters[0].title": [None, 1, [], {}],
    "chapters[0].content": [None, 1, [], {}, "", "   "],
    "chapters[0].number": ["1", 1.5, [], True, 0, -3, 10**30],
}


@pytest.mark.parametrize("field", list(MANUSCRIPT_WRONG_TYPES))
async def test_manuscript_fields_of_the_wrong_type_are_422_naming_the_field(
    client: TestClient, tmp_path: Path, field: str
) -> None:
    async with Witness(client, tmp_path):
        for value in MANUSCRIPT_WRONG_TYPES[field]:
            body = await expect_error(
                await client.post("/api/manuscripts", json=_with(field, value)), 422
            )
            assert body["details"]["field"] == field, (value, body)


NESTED = {
    "lists": b"[" * 100_000 + b"]" * 100_000,
    "objects": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "in style_config": b'{"manuscript_id": "M", "style_config": {"art_style": '
    + b"[" * 50_000
    + b"]" * 50_000
    + b"}}",
    "unbalanced": b"[" * 100_000,
}


@pytest.mark.parametrize("route", ["/api/process", "/api/manuscripts"])
@pytest.mark.parametrize("shape", list(NESTED))
async def test_deeply_nested_json_is_a_4xx_not_a_recursion_error(
    make_client: Any, tmp_path: Path, route: str, shape: str
) -> None:
    client = await make_client(max_body_bytes=1_000_000)
    mid = await create_manuscript(client, chapters=1)
    async with Witness(client, tmp_path):
        raw = NESTED[shape].replace(b'"M"', json.dumps(mid).encode())
        response = await client.post(route, data=raw, headers={"Content-Type": "application/json"})
        body = await expect_error(response, 400, 422)
        if response.status == 422:
            assert body["details"]["field"] == "body" and body["details"]["max_depth"] == 32


@pytest.mark.parametrize("route", ["/api/process", "/api/manuscripts"])
async def test_a_json_body_that_is_not_an_object_is_422(
    client: TestClient, tmp_path: Path, route: str
) -> None:
    async with Witness(client, tmp_path):
        for raw in [b"[]", b'["manuscript_id"]', b'"a string"', b"42", b"-1.5e3", b"null", b"true"]:
            response = await client.post(
                route, data=raw, headers={"Content-Type": "application/json"}
            )
            body = await expect_error(response, 422)
            assert body["details"]["field"] == "body"


@pytest.mark.parametrize("route", ["/api/process", "/api/manuscripts"])
async def test_json_that_python_would_bend_is_400(
    client: TestClient, tmp_path: Path, route: str
) -> None:
    async with Witness(client, tmp_path):
        for raw in [
            b'{"max_emotional_moments": NaN}',
            b'{"max_emotional_moments": Infinity}',
            b'{"max_emotional_moments": 1e999}',
            b'{"max_emotional_moments": ' + b"9" * 5000 + b"}",
            b'{"title": "\xff\xfe"}',
            b'{"title": "unterminated',
            b"\x00\x00\x00\x00",
        ]:
            response = await client.post(
                route, data=raw, headers={"Content-Type": "application/json"}
            )
            body = await expect_error(response, 400)
            assert body["details"]["field"] == "body"


STYLE_CASES: list[tuple[str, Any, str]] = [
    ("5 MB art_style", {"art_style": "x" * 5_000_000}, "style_config.art_style"),
    ("1001-char color_palette", {"color_palette": "y" * 1001}, "style_config.color_palette"),
    ("20,000 keys", {f"k{i}": "v" for i in range(20_000)}, "style_config"),
    ("33 keys", {f"k{i}": "v" for i in range(33)}, "style_config"),
    ("a $ key", {"$where": "1"}, "style_config"),
    ("a dotted key", {"a.b": "1"}, "style_config"),
    ("a NUL key", {"a\u0000b": "1"}, "style_config"),
    ("a 10,000-char key", {"k" * 10_000: "1"}, "style_config"),
    ("a nested object", {"art_style": {"deeper": "x"}}, "style_config.art_style"),
    ("a huge list", {"artistic_influences": ["a"] * 10_000}, "style_config.artistic_influences"),
    (
        "a list of long strings",
        {"artistic_influences": ["z" * 2000]},
        "style_config.artistic_influences",
    ),
    ("an int beyond 2**53", {"seed": 2**80}, "style_config.seed"),
]


@pytest.mark.parametrize(("case", "style", "field"), STYLE_CASES, ids=[c[0] for c in STYLE_CASES])
async def test_oversized_or_odd_style_config_is_422_naming_the_field(
    make_client: Any, tmp_path: Path, case: str, style: Any, field: str
) -> None:
    client = await make_client(max_body_bytes=8 * 1024 * 1024)
    mid = await create_manuscript(client, chapters=1)
    async with Witness(client, tmp_path):
        raw = json.dumps({"manuscript_id": mid, "style_config": style}).encode()
        response = await client.post(
            "/api/process", data=io.BytesIO(raw), headers={"Content-Type": "application/json"}
        )
        body = await expect_error(response, 422)
        assert body["details"]["field"] == field, body


async def test_style_config_at_its_bounds_is_accepted_and_prompts_stay_short(
    client: TestClient,
) -> None:
    mid = await create_manuscript(client, chapters=1)
    recorder = EventRecorder(client.app[ENGINE_KEY])
    style = {
        "art_style": "watercolour " * 83,
        "color_palette": "b" * 1000,
        "artistic_influences": ["c" * 1000] * 3,
        "seed": 2**53,
        "dreamy": True,
        "weight": 0.5,
        "unused": None,
    }
    assert len(style["art_style"]) <= 1000
    started = await start(client, mid, max_emotional_moments=1, style_config=style)
    assert await recorder.wait_final(started["session_id"], timeout=30) == "completed"
    images = (await (await client.get(f"/api/sessions/{started['session_id']}/images")).json())[
        "images"
    ]
    assert images and all(len(image["prompt"]) <= 1000 for image in images)
    assert all("b" * 200 not in image["prompt"] for image in images)


# --------------------------------------------------------------------------- WebSocket frames


async def test_binary_frame_closes_the_socket_with_1003_and_the_server_stays_up(
    client: TestClient, tmp_path: Path
) -> None:
    sid = await completed_session(client)
    async with Witness(client, tmp_path):
        ws = await client.ws_connect(f"/ws/processing/{sid}")
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        await ws.send_bytes(b"\x00\x01\x02" * 100)
        message = await ws.receive(timeout=10)
        assert message.type == WSMsgType.CLOSE and message.data == 1003
        await ws.close()


async def test_oversized_text_frame_closes_the_socket_with_1009(
    client: TestClient, tmp_path: Path
) -> None:
    sid = await completed_session(client)
    async with Witness(client, tmp_path):
        ws = await client.ws_connect(f"/ws/processing/{sid}")
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        await ws.send_str("x" * (1024 * 1024))
        message = await ws.receive(timeout=10)
        assert message.type == WSMsgType.CLOSE and message.data == 1009
        await ws.close()
        other = await client.ws_connect(f"/ws/processing/{sid}")
        assert (await other.receive_json(timeout=10))["type"] == "snapshot"
        await other.close()


async def test_garbage_text_frames_are_ignored_and_events_still_flow(
    client: TestClient, tmp_path: Path
) -> None:
    sid = await completed_session(client)
    async with Witness(client, tmp_path):
        ws = await client.ws_connect(f"/ws/processing/{sid}")
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        for text in [
            "not json",
            "{",
            "[1, 2]",
            '{"type": "subscribe", "session_id": "../../etc"}',
            "",
            "\u0000\u0001",
            '{"type": "' + "a" * 30_000 + '"}',
            "null",
        ]:
            await ws.send_str(text)
        publish(client, sid, 10_001, 1)
        frames = await receive_until(ws, 10_001)
        assert [f["type"] for f in frames] == ["log"]
        await ws.close()


async def test_a_flood_of_client_messages_neither_buffers_nor_stalls_the_server(
    client: TestClient, tmp_path: Path
) -> None:
    sid = await completed_session(client)
    async with Witness(client, tmp_path):
        ws = await client.ws_connect(f"/ws/processing/{sid}")
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        pings = 0
        for i in range(5000):  # without reading a single reply
            text = ("ping", '{"type": "ping"}', "garbage", '{"type": "hello"}')[i % 4]
            pings += text != "garbage" and text != '{"type": "hello"}'
            await ws.send_str(text)
        health = await client.get("/health")  # answered while the socket's replies pile up
        assert health.status == 200
        publish(client, sid, 20_001, 1)
        frames = await receive_until(ws, 20_001)
        pongs = [f for f in frames if f["type"] == "pong"]
        assert 1 <= len(pongs) <= pings
        assert {f["type"] for f in frames} == {"pong", "log"}
        # At most one pong is ever queued: the socket's queue never holds more than that.
        assert frames[-1]["type"] == "log"
        await ws.close()


async def test_a_subscriber_that_never_reads_is_dropped_while_others_are_served(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(
        websocket_queue_size=20,
        websocket_send_timeout_seconds=0.5,
        websocket_close_timeout_seconds=0.5,
    )
    sid = await completed_session(client)
    engine = client.app[ENGINE_KEY]
    async with Witness(client, tmp_path):
        # No compression, so the filler really fills the socket buffers on the way.
        stalled = await client.ws_connect(f"/ws/processing/{sid}", compress=0)  # never reads below
        reader = await client.ws_connect(f"/ws/processing/{sid}", compress=0)
        assert (await reader.receive_json(timeout=10))["type"] == "snapshot"
        assert engine.hub.subscriber_count(sid) == 2
        seq, batches = 30_000, 0
        # 16 kB frames in batches the reader keeps up with, until the stalled one is dropped
        # (at most ~64 MB in all: far beyond every socket buffer on the way).
        while engine.hub.subscriber_count(sid) == 2:
            batches += 1
            assert batches < 400, "the server kept buffering for a client that never reads"
            publish(client, sid, seq + 1, 10, filler=16 * 1024)
            seq += 10
            frames = await receive_until(reader, seq)
            assert [f["event_seq"] for f in frames] == list(range(seq - 9, seq + 1))
        # The reader is still served after the drop.
        publish(client, sid, seq + 1, 5)
        assert [f["event_seq"] for f in await receive_until(reader, seq + 5)] == list(
            range(seq + 1, seq + 6)
        )
        # Without the stalled client reading a byte, the server gives up its socket: it is
        # stuck in a send (send timeout: aborted) or waiting for a close reply (close timeout).
        async with asyncio.timeout(20):
            while len(client.app[WEBSOCKETS_KEY]) > 1:
                await asyncio.sleep(0)  # a drain of the loop; the server runs on it too
        # The stalled client finds what it was sent, then a resync and/or the connection's end.
        received, resync = 0, False
        while True:
            message = await stalled.receive(timeout=20)
            if message.type != WSMsgType.TEXT:
                break
            frame = json.loads(message.data)
            received += frame["type"] == "log"
            resync = resync or frame["type"] == "resync"
        assert received < seq - 30_000
        assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR)
        await stalled.close()
        await reader.close()


# --------------------------------------------------------------------------- connections


async def test_a_thousand_websockets_beyond_the_cap_get_503_and_the_accepted_get_snapshots(
    make_client: Any, tmp_path: Path
) -> None:
    client = await make_client(max_websockets=200)
    sid = await completed_session(client)
    url = str(client.make_url(f"/ws/processing/{sid}"))
    accepted: list[aiohttp.ClientWebSocketResponse] = []
    refused = 0

    async def connect(session: aiohttp.ClientSession) -> None:
        nonlocal refused
        try:
            ws = await session.ws_connect(url, heartbeat=None, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            assert exc.status == 503
            refused += 1
            return
        accepted.append(ws)
        frame = await ws.receive_json(timeout=20)
        assert frame["type"] == "snapshot" and frame["session_id"] == sid

    async with Witness(client, tmp_path):
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            for _ in range(4):  # 4 chunks of 250 (the first overshoots the cap), all held open
                await asyncio.gather(*(connect(session) for _ in range(250)))
            assert len(accepted) == 200 and refused == 800
            assert len(client.app[WEBSOCKETS_KEY]) == 200
            # The refusal is the uniform JSON error.
            handshake = {
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            }
            body = await expect_error(
                await client.get(f"/ws/processing/{sid}", headers=handshake), 503
            )
            assert body["details"]["max_websockets"] == 200
            await asyncio.gather(*(ws.close() for ws in accepted))
        # Slots come back once the handlers have finished (a drain of the loop, no timer).
        while len(client.app[WEBSOCKETS_KEY]) >= 200:
            await asyncio.sleep(0)
        ws = await client.ws_connect(f"/ws/processing/{sid}")
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        await ws.close()


# --------------------------------------------------------------------------- unencodable text


LONE = "\ud800"
"""A lone UTF-16 surrogate: ``json.loads`` accepts ``"\\ud800"``, UTF-8 (BSON) cannot encode it."""


def _process_body(mid: str, case: str) -> dict[str, Any]:
    body: dict[str, Any] = {"manuscript_id": mid, "max_emotional_moments": 1}
    if case == "style value":
        body["style_config"] = {"art_style": "water" + LONE}
    elif case == "style key":
        body["style_config"] = {"art" + LONE: "x"}
    elif case == "style list item":
        body["style_config"] = {"artistic_influences": ["Turner", "\udfff"]}
    elif case == "external_session_id":
        body["external_session_id"] = LONE
    elif case == "unknown deep field":
        body["extra"] = {"deeper": [{"x": 1}, {"y": ["ok", "a\udc80b"]}]}
    return body


SURROGATE_PROCESS = [
    ("style value", "style_config.art_style"),
    ("style key", "style_config"),
    ("style list item", "style_config.artistic_influences[1]"),
    ("external_session_id", "external_session_id"),
    ("unknown deep field", "extra.deeper[1].y[1]"),
]


@pytest.mark.parametrize(
    ("case", "field"), SURROGATE_PROCESS, ids=[c for c, _ in SURROGATE_PROCESS]
)
async def test_a_lone_surrogate_in_a_process_body_is_422_naming_the_field(
    client: TestClient, tmp_path: Path, case: str, field: str
) -> None:
    mid = await create_manuscript(client, chapters=1)
    async with Witness(client, tmp_path):
        raw = json.dumps(_process_body(mid, case)).encode()  # "\ud800" as an escape
        response = await client.post(
            "/api/process", data=raw, headers={"Content-Type": "application/json"}
        )
        body = await expect_error(response, 422)
        assert body["details"]["field"] == field, body
    # The database writer was never handed the string, so it is still healthy.
    health = await (await client.get("/health")).json()
    assert health["database_reachable"] is True and health["persistence_backlog"] == 0


SURROGATE_MANUSCRIPT = ["title", "author", "chapters[0].title", "chapters[0].content"]


@pytest.mark.parametrize("field", SURROGATE_MANUSCRIPT)
async def test_a_lone_surrogate_in_a_manuscript_is_422_and_writes_no_file(
    client: TestClient, tmp_path: Path, field: str
) -> None:
    async with Witness(client, tmp_path):
        body = _with(field, "Once " + LONE + " upon")
        response = await client.post(
            "/api/manuscripts",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert (await expect_error(response, 422))["details"]["field"] == field


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16-le", "utf-32"])
async def test_raw_surrogates_in_any_json_encoding_are_422(
    client: TestClient, tmp_path: Path, encoding: str
) -> None:
    # Encoded surrogate code units (not escapes): json.loads decodes them with surrogatepass.
    text = json.dumps(manuscript_body(1), ensure_ascii=False).replace("The Test", "The " + LONE)
    raw = text.encode(encoding, "surrogatepass")
    async with Witness(client, tmp_path):
        response = await client.post(
            "/api/manuscripts", data=raw, headers={"Content-Type": "application/json"}
        )
        assert (await expect_error(response, 422))["details"]["field"] == "title"


async def test_a_surrogate_in_an_uploaded_json_file_is_422(
    client: TestClient, tmp_path: Path
) -> None:
    document = manuscript_body(1)
    document["chapters"][0]["title"] = "Dark " + LONE
    async with Witness(client, tmp_path):
        response = await client.post(
            "/api/manuscripts", data=form(("file", json.dumps(document).encode(), "m.json"))
        )
        assert (await expect_error(response, 422))["details"]["field"] == "chapters[0].title"


async def test_escaped_surrogates_in_ids_and_queries_never_reach_storage(
    client: TestClient, tmp_path: Path
) -> None:
    # aiohttp refuses raw non-ASCII bytes in a request line, and a percent-escape that is
    # not UTF-8 never decodes to a surrogate: these stay 422s naming the parameter.
    mid = await create_manuscript(client, chapters=1)
    async with Witness(client, tmp_path):
        for method, target, field in [
            ("GET", "/api/manuscripts/%ED%A0%80", "manuscript_id"),
            ("POST", f"/api/manuscripts/{mid}/export?session_id=%ED%A0%80", "session_id"),
            ("POST", f"/api/manuscripts/{mid}/export?format=%ED%A0%80", "format"),
            ("GET", f"/api/sessions/{uuid.uuid4()}/logs?after=%ED%A0%80", "after"),
        ]:
            status, body = await raw_request(client, method, target)
            assert status == 422 and body["details"]["field"] == field, (target, body)


async def test_text_beyond_the_basic_plane_is_still_accepted(client: TestClient) -> None:
    body = manuscript_body(1)
    body["title"] = "Emoji \U0001f600 and Ünïcödé"  # a surrogate *pair* once escaped
    response = await client.post(
        "/api/manuscripts",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status == 201, await response.text()
    mid = (await response.json())["manuscript_id"]
    got = await (await client.get(f"/api/manuscripts/{mid}")).json()
    assert got["manuscript"]["title"] == body["title"]


# --------------------------------------------------------------------------- .json uploads


async def test_a_json_manuscript_uploaded_as_a_file_is_accepted_like_a_json_body(
    client: TestClient,
) -> None:
    document = manuscript_body(2)
    response = await client.post(
        "/api/manuscripts", data=form(("file", json.dumps(document).encode(), "m.JSON"))
    )
    assert response.status == 201, await response.text()
    mid = (await response.json())["manuscript_id"]
    stored = (await (await client.get(f"/api/manuscripts/{mid}")).json())["manuscript"]
    assert stored["title"] == document["title"] and stored["author"] == document["author"]
    assert [c["content"] for c in stored["chapters"]] == [
        c["content"] for c in document["chapters"]
    ]
    # Form fields name it, as they do for a text file.
    renamed = await client.post(
        "/api/manuscripts",
        data=form(("file", json.dumps(document).encode(), "m.json"), ("title", "Renamed", None)),
    )
    assert (await renamed.json())["manuscript"]["title"] == "Renamed"


JSON_FILES = [
    ("not JSON", b"{not json", "file"),
    ("a JSON array", b"[1, 2]", "file"),
    ("NUL bytes", b'{"title": "a\x00"}', "file"),
    ("too deep", b"[" * 100 + b"]" * 100, "body"),
    ("no chapters", json.dumps({"title": "T", "author": "A"}).encode(), "chapters"),
    ("empty", b"  \n", "file"),
]


@pytest.mark.parametrize(("case", "raw", "field"), JSON_FILES, ids=[c[0] for c in JSON_FILES])
async def test_a_bad_json_file_upload_is_422_naming_the_problem(
    client: TestClient, tmp_path: Path, case: str, raw: bytes, field: str
) -> None:
    async with Witness(client, tmp_path):
        response = await client.post("/api/manuscripts", data=form(("file", raw, "m.json")))
        assert (await expect_error(response, 422))["details"]["field"] == field


# --------------------------------------------------------------------------- broken transfers


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records a client's mistake must not cause: errors, and tracebacks at any level."""
    return [
        f"{r.name} {r.levelname} {r.getMessage()[:200]}"
        for r in caplog.records
        if r.levelno >= logging.ERROR or r.exc_info
    ]


async def raw_exchange(client: TestClient, data: bytes, timeout: float = 20) -> bytes:
    """Send ``data`` on a fresh connection; everything the server sends until it closes."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
        await writer.wait_closed()


def parse_reply(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Status, headers (lower-case names) and body of one raw HTTP reply."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ", 2)[1]), headers, body


async def test_a_body_that_does_not_inflate_is_400_json_and_quiet(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(as_served=True)
    garbage = b"this is not a deflate stream" * 10
    async with Witness(client, tmp_path):
        data = await raw_exchange(
            client,
            b"POST /api/process HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Encoding: deflate\r\n"
            + f"Content-Length: {len(garbage)}\r\n\r\n".encode()
            + garbage,
        )
        status, headers, body = parse_reply(data)  # the server closed the connection after it
        assert status == 400 and headers["content-type"].startswith("application/json"), data
        assert headers.get("connection") == "close"
        parsed = json.loads(body)
        assert parsed["success"] is False and parsed["details"]["field"] == "body"
    assert problems(caplog) == []


DISPOSITION = 'Content-Disposition: form-data; name="file"; '
BAD_PART_HEADERS = [
    ("a NUL in the file name", DISPOSITION + 'filename="a\x00b.txt"'),
    ("a control byte in the file name", DISPOSITION + 'filename="a\x01.md"'),
    ("a 64 kB part header", DISPOSITION + 'filename="a.txt"\r\nX-Pad: ' + "a" * 65536),
    ("a 64 kB file name", DISPOSITION + 'filename="' + "n" * 65536 + '.txt"'),
]


@pytest.mark.parametrize(("case", "header"), BAD_PART_HEADERS, ids=[c for c, _ in BAD_PART_HEADERS])
async def test_a_malformed_part_header_is_400_json(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture, case: str, header: str
) -> None:
    client = await make_client(max_body_bytes=1_000_000)  # the part header is under the limit
    raw = (
        f"--{BOUNDARY}\r\n{header}\r\n\r\n".encode("latin-1")
        + STORY
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )
    async with Witness(client, tmp_path):
        response = await client.post(
            "/api/manuscripts",
            data=raw,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )
        assert (await expect_error(response, 400))["details"]["field"] == "body"
    assert problems(caplog) == []


async def test_request_line_and_header_errors_are_logged_without_a_traceback(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    for data in [
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header Line\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"h" * 10_000 + b"\r\n\r\n",
        b"POST /api/process HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nNOT HTTP\r\n\r\n",
    ]:
        replies = await raw_exchange(client, data)
        # aiohttp answers these itself, before the application runs (see README).
        assert b"HTTP/1.1 400 " in replies or b"HTTP/1.0 400 " in replies, replies[:200]
    assert problems(caplog) == []
    assert (await client.get("/health")).status == 200


async def _await_access_log(caplog: pytest.LogCaptureFixture, seen: int, line: str) -> None:
    """Until aiohttp has logged the request (it has given up on it)."""
    async with asyncio.timeout(20):
        while not any(
            r.name == "aiohttp.access" and line in r.getMessage() for r in caplog.records[seen:]
        ):
            await asyncio.sleep(0.01)


async def test_a_client_leaving_in_the_middle_of_a_body_is_logged_quietly(
    make_client: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(as_served=True)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    mid = await create_manuscript(client, chapters=1)
    server = client.server.runner.server
    assert server is not None
    async with Witness(client, tmp_path):
        for path, content_type, start_of_body in [
            ("/api/process", "application/json", b'{"manuscript_id": "' + mid.encode()),
            ("/api/manuscripts", "application/json", b'{"title": "Half'),
            (
                "/api/manuscripts",
                f"multipart/form-data; boundary={BOUNDARY}",
                multipart_bytes(("file", STORY, "s.md"))[:200],
            ),
        ]:
            seen, before = len(caplog.records), server.requests_count
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
                "Content-Length: 60000\r\n\r\n".encode()
                + start_of_body
            )
            await writer.drain()
            # Leave once the handler is reading the body: the server runs on this loop, and
            # the task it starts for the request runs before our next turns.
            async with asyncio.timeout(10):
                while server.requests_count == before:
                    await asyncio.sleep(0.005)
            for _ in range(10):
                await asyncio.sleep(0)
            writer.close()  # gone, mid-body (a FIN after the data: the server reads it)
            await writer.wait_closed()
            await _await_access_log(caplog, seen, f"POST {path}")
    assert problems(caplog) == []


async def test_a_websocket_client_leaving_during_replay_is_logged_quietly(
    make_client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = await make_client(as_served=True)
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    sid = await completed_session(client)
    engine = client.app[ENGINE_KEY]
    assert engine.store is not None
    # 4 MB of history, far more than the socket buffers hold while nobody reads.
    await engine.store.log_events(
        [
            LogEntry(
                session_id=sid,
                event_seq=100_000 + i,
                type="log",  # type: ignore[arg-type]
                payload={"level": "info", "message": "r" * 2000},
            )
            for i in range(2000)
        ]
    )
    seen = len(caplog.records)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        f"GET /ws/processing/{sid}?after=0 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
    )
    await writer.drain()
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    await reader.readexactly(64 * 1024)  # the replay is under way
    writer.transport.abort()
    await _await_access_log(caplog, seen, f"GET /ws/processing/{sid}")
    assert problems(caplog) == []
    ws = await client.ws_connect(f"/ws/processing/{sid}")
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    await ws.close()


async def test_two_concurrent_deletes_of_one_session_are_200_and_409_never_500(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    engine = client.app[ENGINE_KEY]
    for _ in range(3):
        sid = await completed_session(client)
        images = engine.files.images_dir / sid
        for n in range(2000):  # so that two deletions overlap for sure
            (images / f"chapter_{n + 100}_scene_1.png").write_bytes(b"png")
        first, second = await asyncio.gather(
            client.delete(f"/api/sessions/{sid}"), client.delete(f"/api/sessions/{sid}")
        )
        statuses = sorted([first.status, second.status])
        assert statuses in ([200, 404], [200, 409]), [await first.text(), await second.text()]
        assert not images.exists()
        await expect_error(await client.get(f"/api/sessions/{sid}"), 404)
    assert problems(caplog) == []
