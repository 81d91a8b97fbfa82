"""Manuscript routes (create from JSON or an uploaded file, list, get, delete, export) and
the stable URLs of generated images and exports."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from domain import ManuscriptId, SessionId, isoformat, manuscript_id, session_id, utcnow
from errors import ConflictError, DatabaseUnavailableError, NotFoundError, ValidationError
from pipeline.manuscripts import Manuscript, parse_manuscript_json
from storage import atomic
from storage.files import FileStore
from storage.records import ImageRecord
from web.exports import EXPORT_NAME, ImageFile, export_document, render_html
from web.keys import CONFIG_KEY, ENGINE_KEY
from web.paging import page_of, paged
from web.responses import json_object, reply, require_json
from web.routes_processing import live_session_of
from web.uploads import manuscript_from_upload, read_upload

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

IMAGE_NAME = re.compile(r"^chapter_\d{1,5}_scene_\d{1,3}\.png$")


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


@routes.post("/api/manuscripts")
async def create_manuscript(request: web.Request) -> web.Response:
    """Store a manuscript from a JSON body or an uploaded .json/.txt/.md file."""
    engine = request.app[ENGINE_KEY]
    max_depth = request.app[CONFIG_KEY].server.max_json_depth
    if request.content_type.startswith("multipart/"):
        upload = await read_upload(request)
        # Decoding and splitting 10 MB of text takes ~100 ms: not on the event loop.
        manuscript = await asyncio.to_thread(manuscript_from_upload, upload, max_depth)
    else:
        require_json(request, also=("multipart/form-data",))
        data = await json_object(request)
        manuscript = await asyncio.to_thread(parse_manuscript_json, data)
    mid = await engine.save_manuscript(manuscript)
    logger.info("stored manuscript %s (%d chapters)", mid, manuscript.total_chapters)
    body = await asyncio.to_thread(_without_contents, manuscript)
    return reply(
        {
            "success": True,
            "manuscript_id": mid,
            "message": "Manuscript stored",
            "manuscript": {"manuscript_id": mid, **body},
        },
        status=201,
    )


def _without_contents(manuscript: Manuscript) -> dict[str, Any]:
    body = manuscript.to_dict()  # counts the words of every chapter
    body["chapters"] = [{k: v for k, v in c.items() if k != "content"} for c in body["chapters"]]
    return body


@routes.get("/api/manuscripts")
async def list_manuscripts(request: web.Request) -> web.Response:
    """Manuscripts newest first (without chapter contents), one page at a time
    (``limit``, ``offset``); from the files when the database is down."""
    engine = request.app[ENGINE_KEY]
    page = page_of(request)
    listed: tuple[list[dict[str, Any]], int] | None = None
    if engine.store is not None:
        try:
            listed = (
                await engine.store.list_manuscripts(limit=page.limit, offset=page.offset),
                await engine.store.count_manuscripts(),
            )
        except DatabaseUnavailableError:
            listed = None
    if listed is None:
        everything = await asyncio.to_thread(_manuscript_files, engine.files.manuscripts_dir)
        listed = (everything[page.offset : page.offset + page.limit], len(everything))
    documents, total = listed
    items = [_summary(d.get("manuscript_id") or d["_id"], d) for d in documents]
    return reply(paged(request, "manuscripts", items, page, total))


def _manuscript_files(folder: Path) -> list[dict[str, Any]]:
    """Every readable manuscript file, newest first (as the database lists them)."""
    found = []
    for path in sorted(folder.glob("*.json")):
        try:
            found.append(json.loads(path.read_text("utf-8")))
        except (OSError, ValueError):
            logger.warning("skipping unreadable manuscript file %s", path)
    found.sort(key=lambda d: (str(d.get("created_at", "")), str(d.get("_id", ""))), reverse=True)
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
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
    name = f"{mid}_{stamp}.{fmt}"
    # Rendering a large manuscript takes a while: off the event loop, with the write.
    await asyncio.to_thread(
        _write_export, engine.files, name, fmt, (mid, manuscript, sid, checkpoints, images)
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


def _write_export(files: FileStore, name: str, fmt: str, parts: tuple[Any, ...]) -> None:
    mid, manuscript, sid, checkpoints, images = parts
    found = {image.web_url: _image_file(files, image) for image in images}
    image_files = {url: file for url, file in found.items() if file is not None}
    document = export_document(mid, manuscript, sid, checkpoints, images, image_files)
    text = render_html(document, image_files) if fmt == "html" else json.dumps(document, indent=2)
    atomic.atomic_write(files.exports_dir / name, text.encode("utf-8"), fsync=files.fsync)


def _image_file(files: FileStore, image: ImageRecord) -> ImageFile | None:
    """The file behind an image record's URL, if it is one of ours and still there."""
    session, _, filename = image.web_url.removeprefix("/generated_images/").partition("/")
    if not IMAGE_NAME.fullmatch(filename) or session != image.session_id:
        return None
    path = _inside_output(files, files.images_dir / image.session_id / filename)
    return None if path is None else ImageFile.read(path)


def _inside_output(files: FileStore, path: Path) -> Path | None:
    """``path`` with its symlinks resolved, if that is a file inside the output folder."""
    resolved = path.resolve()
    if resolved.is_relative_to(files.root.resolve()) and resolved.is_file():
        return resolved
    return None


@routes.get("/generated_images/{session_id}/{filename}")
async def serve_image(request: web.Request) -> web.StreamResponse:
    """A generated image, by its stable URL (names validated, never joined raw)."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    filename = request.match_info["filename"]
    if not IMAGE_NAME.fullmatch(filename):
        raise ValidationError("not an image file name", details={"field": "filename"})
    # A symlink may point anywhere: only a file inside the output folder is served.
    path = await asyncio.to_thread(
        _inside_output, engine.files, engine.files.images_dir / sid / filename
    )
    if path is None:
        raise NotFoundError("image not found", details={"session_id": sid, "filename": filename})
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=86400"})


@routes.get("/exports/{filename}")
async def serve_export(request: web.Request) -> web.StreamResponse:
    """An export file by its URL."""
    engine = request.app[ENGINE_KEY]
    filename = request.match_info["filename"]
    if not EXPORT_NAME.fullmatch(filename):
        raise ValidationError("not an export file name", details={"field": "filename"})
    path = await asyncio.to_thread(
        _inside_output, engine.files, engine.files.exports_dir / filename
    )
    if path is None:
        raise NotFoundError("export not found", details={"filename": filename})
    return web.FileResponse(path)
