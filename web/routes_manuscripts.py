"""Manuscript routes (create from JSON or an uploaded file, list, get, delete, export) and
the stable URLs of generated images and exports."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, web

from domain import ManuscriptId, SessionId, isoformat, manuscript_id, session_id, utcnow
from errors import ConflictError, DatabaseUnavailableError, NotFoundError, ValidationError
from pipeline.manuscripts import decode_upload, parse_manuscript_json, parse_manuscript_text
from storage import atomic
from web.exports import EXPORT_NAME, export_document, render_html
from web.keys import CONFIG_KEY, ENGINE_KEY
from web.responses import MalformedMultipartError, json_object, reply
from web.routes_processing import live_session_of

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

IMAGE_NAME = re.compile(r"^chapter_\d{1,5}_scene_\d{1,3}\.png$")
UPLOAD_SUFFIXES = (".txt", ".md", ".markdown")


def _summary(mid: str, document: dict[str, Any]) -> dict[str, Any]:
    chapters = document.get("chapters") or []
    return {
        "manuscript_id": mid,
        "title": document.get("title", ""),
        "author": document.get("author", ""),
        "genre": document.get("genre", ""),
        "description": document.get("description", ""),
        "total_chapters": document.get("total_chapters", len(chapters)),
        "created_at": isoformat(document["created_at"])
        if "created_at" in document and not isinstance(document["created_at"], str)
        else document.get("created_at"),
    }


class _UploadBudget:
    """Counts the bytes of every part of one upload against ``server.max_body_bytes``.

    ``request.multipart()`` streams, so aiohttp's own body limit does not apply to it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    async def read(self, part: BodyPartReader) -> bytes:
        data = bytearray()
        while chunk := await part.read_chunk():
            self.used += len(chunk)
            if self.used > self.limit:
                raise web.HTTPRequestEntityTooLarge(max_size=self.limit, actual_size=self.used)
            data.extend(chunk)
        return bytes(data)


def _decode_field(name: str, raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(f"{name} must be UTF-8 text", details={"field": name}) from exc


def _looks_like_utf16(raw: bytes) -> bool:
    """Latin text in UTF-16 without a byte-order mark: NUL in (nearly) every other byte only."""
    if len(raw) < 4:
        return False
    even, odd = raw[0::2], raw[1::2]
    for text_half, zero_half in ((even, odd), (odd, even)):
        if zero_half.count(0) >= 0.9 * len(zero_half) and text_half.count(0) == 0:
            return True
    return False


def _decode_file(raw: bytes) -> str:
    if not raw.strip():
        raise ValidationError("the uploaded file is empty", details={"field": "file"})
    if _looks_like_utf16(raw):
        raise ValidationError(
            "the file looks like UTF-16 text; upload it as UTF-8", details={"field": "file"}
        )
    return decode_upload(raw)


async def _read_upload(request: web.Request) -> tuple[str, dict[str, str]]:
    """The text of the multipart field ``file`` plus the other (text) fields.

    Every part counts against ``server.max_body_bytes`` (413); a malformed multipart
    body is a 400 and a missing, empty, binary, non-UTF-8 or non-.txt/.md file a 422.
    """
    limit = request.app[CONFIG_KEY].server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    budget = _UploadBudget(limit)
    text: str | None = None
    fields: dict[str, str] = {}
    try:
        reader = await request.multipart()
        while (part := await reader.next()) is not None:
            if not isinstance(part, BodyPartReader):
                raise ValidationError(
                    "nested multipart bodies are not supported", details={"field": "body"}
                )
            raw = await budget.read(part)  # unknown parts are read too: they count to the limit
            if part.name == "file":
                filename = part.filename or ""
                if not filename.lower().endswith(UPLOAD_SUFFIXES):
                    raise ValidationError(
                        "file must be a .txt or .md file", details={"field": "file"}
                    )
                text = _decode_file(raw)
            elif part.name in ("title", "author", "genre", "description"):
                fields[part.name] = _decode_field(part.name, raw)[:500]
    except (ValueError, KeyError, AssertionError, RuntimeError) as exc:
        # aiohttp's multipart parser reports a missing boundary, a garbled body or an
        # unknown encoding with these; our own errors (ValidationError) pass through.
        raise MalformedMultipartError(str(exc)[:200]) from exc
    if text is None:
        raise ValidationError("the multipart field 'file' is required", details={"field": "file"})
    return text, fields


@routes.post("/api/manuscripts")
async def create_manuscript(request: web.Request) -> web.Response:
    """Store a manuscript from a JSON body or an uploaded .txt/.md file."""
    engine = request.app[ENGINE_KEY]
    if request.content_type.startswith("multipart/"):
        text, fields = await _read_upload(request)
        manuscript = parse_manuscript_text(
            text, title=fields.get("title") or None, author=fields.get("author") or "Unknown"
        )
        if fields.get("genre") or fields.get("description"):
            manuscript = parse_manuscript_json(
                {
                    **manuscript.to_dict(),
                    "genre": fields.get("genre", manuscript.genre),
                    "description": fields.get("description", manuscript.description),
                }
            )
    else:
        manuscript = parse_manuscript_json(await json_object(request))
    mid = await engine.save_manuscript(manuscript)
    logger.info("stored manuscript %s (%d chapters)", mid, manuscript.total_chapters)
    body = manuscript.to_dict()
    body["chapters"] = [{k: v for k, v in c.items() if k != "content"} for c in body["chapters"]]
    return reply(
        {
            "success": True,
            "manuscript_id": mid,
            "message": "Manuscript stored",
            "manuscript": {"manuscript_id": mid, **body},
        },
        status=201,
    )


@routes.get("/api/manuscripts")
async def list_manuscripts(request: web.Request) -> web.Response:
    """Every manuscript, newest first (without chapter contents)."""
    engine = request.app[ENGINE_KEY]
    documents: list[dict[str, Any]] | None = None
    if engine.store is not None:
        try:
            documents = await engine.store.list_manuscripts()
        except DatabaseUnavailableError:
            documents = None
    if documents is None:
        documents = await asyncio.to_thread(_manuscript_files, engine.files.manuscripts_dir)
    items = [_summary(d.get("manuscript_id") or d["_id"], d) for d in documents]
    return reply({"success": True, "manuscripts": items, "count": len(items)})


def _manuscript_files(folder: Path) -> list[dict[str, Any]]:
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError):
            logger.warning("skipping unreadable manuscript file %s", path)
    return found


@routes.get("/api/manuscripts/{manuscript_id}")
async def get_manuscript(request: web.Request) -> web.Response:
    """One manuscript with its chapters."""
    engine = request.app[ENGINE_KEY]
    mid = manuscript_id(request.match_info["manuscript_id"])
    manuscript = await engine.load_manuscript(mid)
    return reply({"success": True, "manuscript": {"manuscript_id": mid, **manuscript.to_dict()}})


@routes.delete("/api/manuscripts/{manuscript_id}")
async def delete_manuscript(request: web.Request) -> web.Response:
    """Delete a manuscript (409 while a session of it is live); its sessions stay."""
    engine = request.app[ENGINE_KEY]
    mid = manuscript_id(request.match_info["manuscript_id"])
    live = live_session_of(engine, mid)
    if live is not None:
        raise ConflictError(
            "a session of this manuscript is running; cancel it first",
            details={"manuscript_id": mid, "session_id": live["session_id"]},
        )
    existed = False
    if engine.store is not None:
        existed = await engine.store.delete_manuscript(mid)
    path = engine.files.manuscript_path(mid)
    existed = await asyncio.to_thread(_unlink, path) or existed
    if not existed:
        raise NotFoundError(f"manuscript {mid} not found", details={"manuscript_id": mid})
    return reply({"success": True, "message": f"Manuscript {mid} deleted"})


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


async def _export_session(request: web.Request, mid: ManuscriptId) -> SessionId | None:
    engine = request.app[ENGINE_KEY]
    raw = request.query.get("session_id")
    if raw:
        sid = session_id(raw)
        document = await engine.store.get_session(sid) if engine.store is not None else None
        if document is None or document.get("manuscript_id") != mid:
            raise NotFoundError(
                f"session {sid} of manuscript {mid} not found", details={"session_id": sid}
            )
        return sid
    if engine.store is None:
        return None
    sessions = await engine.store.list_sessions(manuscript_id=mid, limit=50)
    completed = [d for d in sessions if d.get("status") == "completed"]
    candidates = completed or sessions
    return SessionId(candidates[0]["session_id"]) if candidates else None


@routes.post("/api/manuscripts/{manuscript_id}/export")
async def export_manuscript(request: web.Request) -> web.Response:
    """Write an HTML or JSON export to ``exports/`` and return its URL."""
    engine = request.app[ENGINE_KEY]
    mid = manuscript_id(request.match_info["manuscript_id"])
    fmt = request.query.get("format", "html")
    if fmt not in ("html", "json"):
        raise ValidationError("format must be html or json", details={"field": "format"})
    manuscript = await engine.load_manuscript(mid)
    sid = await _export_session(request, mid)
    checkpoints, images = [], []
    if sid is not None and engine.store is not None:
        checkpoints = await engine.store.list_checkpoints(sid)
        images = await engine.store.list_images(sid)
    document = export_document(mid, manuscript, sid, checkpoints, images)
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    name = f"{mid}_{stamp}.{fmt}"
    payload = (render_html(document) if fmt == "html" else json.dumps(document, indent=2)).encode(
        "utf-8"
    )
    await asyncio.to_thread(
        atomic.atomic_write, engine.files.exports_dir / name, payload, fsync=engine.files.fsync
    )
    logger.info("exported manuscript %s as %s", mid, name)
    return reply(
        {
            "success": True,
            "format": fmt,
            "filename": name,
            "url": f"/exports/{name}",
            "session_id": sid,
            "images_count": len(images),
        },
        status=201,
    )


@routes.get("/generated_images/{session_id}/{filename}")
async def serve_image(request: web.Request) -> web.StreamResponse:
    """A generated image, by its stable URL (names validated, never joined raw)."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    filename = request.match_info["filename"]
    if not IMAGE_NAME.fullmatch(filename):
        raise ValidationError("not an image file name", details={"field": "filename"})
    path = engine.files.images_dir / sid / filename
    if not path.is_file():
        raise NotFoundError("image not found", details={"session_id": sid, "filename": filename})
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


@routes.get("/exports/{filename}")
async def serve_export(request: web.Request) -> web.StreamResponse:
    """An export file by its URL."""
    engine = request.app[ENGINE_KEY]
    filename = request.match_info["filename"]
    if not EXPORT_NAME.fullmatch(filename):
        raise ValidationError("not an export file name", details={"field": "filename"})
    path = engine.files.exports_dir / filename
    if not path.is_file():
        raise NotFoundError("export not found", details={"filename": filename})
    return web.FileResponse(path)
