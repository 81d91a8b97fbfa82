"""Session routes: paged list, live list, status, full record, checkpoints, logs, images,
delete."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import web

from domain import SessionId, SessionStatus, manuscript_id, session_id
from errors import ConflictError, DatabaseUnavailableError, ValidationError
from web.keys import DELETING_KEY, ENGINE_KEY
from web.paging import page_of, paged
from web.responses import query_int, reply
from web.routes_processing import send_control
from web.sessions import (
    detailed_status,
    find_session,
    session_images,
    session_summary,
    status_message,
    stored_session,
    wait_until_stopped,
)

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()


@routes.get("/api/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    """Stored sessions, newest first, one page (``limit``, ``offset``) at a time, filtered
    by ``status`` (one or more, comma-separated or repeated) and ``manuscript_id``."""
    engine = request.app[ENGINE_KEY]
    statuses = _status_filter(request)
    raw_mid = request.query.get("manuscript_id")
    mid = manuscript_id(raw_mid) if raw_mid else None
    page = page_of(request)
    if engine.store is None:
        raise DatabaseUnavailableError("sessions are listed from the database, not configured")
    documents = await engine.store.list_sessions(
        statuses=statuses, manuscript_id=mid, limit=page.limit, offset=page.offset
    )
    total = await engine.store.count_sessions(statuses=statuses, manuscript_id=mid)
    items = [session_summary(engine, d) for d in documents]
    return reply(paged(request, "sessions", items, page, total))


def _status_filter(request: web.Request) -> list[str] | None:
    values = [v for raw in request.query.getall("status", []) for v in raw.split(",") if v]
    if not values:
        return None
    known = [s.value for s in SessionStatus]
    unknown = [v for v in values if v not in known]
    if unknown:
        raise ValidationError(
            f"status must be one of {', '.join(known)}, not {unknown[0][:40]!r}",
            details={"field": "status", "allowed": known},
        )
    return sorted(set(values))


@routes.get("/api/sessions/active")
async def active_sessions(request: web.Request) -> web.Response:
    """Every live (running or queued) session, from memory."""
    engine = request.app[ENGINE_KEY]
    return reply(
        [
            {
                "session_id": s["session_id"],
                "manuscript_id": s.get("manuscript_id"),
                "status": s.get("status"),
                "progress": s.get("progress", 0),
                "message": status_message(s),
                "started_at": s.get("started_at"),
            }
            for s in engine.hub.snapshots()
        ]
    )


@routes.get("/api/sessions/{session_id}/status")
async def session_status(request: web.Request) -> web.Response:
    """The original's status object: progress, steps, the last 20 log lines, images."""
    engine = request.app[ENGINE_KEY]
    view = await find_session(engine, session_id(request.match_info["session_id"]))
    return reply(await detailed_status(engine, view))


@routes.get("/api/sessions/{session_id}")
async def session_record(request: web.Request) -> web.Response:
    """The full stored record, with the live snapshot when the session runs."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    view = await find_session(engine, sid)
    document = await stored_session(engine, sid)
    record: dict[str, Any] = dict(document or {})
    record.pop("_id", None)
    return reply(
        {
            "success": True,
            "session_id": sid,
            "live": view["live"],
            "status": view,
            "session": record,
        }
    )


@routes.get("/api/sessions/{session_id}/checkpoints")
async def session_checkpoints(request: web.Request) -> web.Response:
    """Every checkpoint in sequence order (database, else the checkpoint files)."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    await find_session(engine, sid)
    checkpoints = None
    if engine.store is not None:
        try:
            checkpoints = await engine.store.list_checkpoints(sid)
        except DatabaseUnavailableError:
            checkpoints = None
    if not checkpoints:
        checkpoints = await asyncio.to_thread(engine.files.load_checkpoints, sid)
    items = [cp.to_json() for cp in checkpoints]
    for item in items:
        item.pop("_id", None)
    return reply({"success": True, "session_id": sid, "checkpoints": items, "count": len(items)})


@routes.get("/api/sessions/{session_id}/logs")
async def session_logs(request: web.Request) -> web.Response:
    """Events after ``after`` (event_seq), at most ``limit``; page with ``next_after``."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    after = query_int(request, "after", 0, 0, 2**62)
    limit = query_int(request, "limit", 100, 1, 1000)
    await find_session(engine, sid)
    if engine.store is None:
        raise DatabaseUnavailableError("logs are kept in the database, which is not configured")
    entries = await engine.store.list_logs(sid, after_event_seq=after, limit=limit + 1)
    has_more = len(entries) > limit
    entries = entries[:limit]
    next_after = entries[-1].event_seq if entries else after
    return reply(
        {
            "success": True,
            "session_id": sid,
            "logs": [e.to_frame() for e in entries],
            "count": len(entries),
            "next_after": next_after,
            "has_more": has_more,
        }
    )


@routes.get("/api/sessions/{session_id}/images")
async def session_image_list(request: web.Request) -> web.Response:
    """The session's images in generation order, with their URLs."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    await find_session(engine, sid)
    images = await session_images(engine, sid)
    return reply({"success": True, "session_id": sid, "images": images, "count": len(images)})


@routes.delete("/api/sessions/{session_id}")
async def delete_session(request: web.Request) -> web.Response:
    """Cancel the session if live, wait for it to stop, then delete its records and files."""
    sid = session_id(request.match_info["session_id"])
    deleting = request.app[DELETING_KEY]
    if sid in deleting:  # two deletes would race each other through the same files
        raise ConflictError(f"session {sid} is being deleted", details={"session_id": sid})
    deleting.add(sid)
    try:
        return await _delete_session(request, sid)
    finally:
        deleting.discard(sid)


async def _delete_session(request: web.Request, sid: SessionId) -> web.Response:
    engine = request.app[ENGINE_KEY]
    view = await find_session(engine, sid)
    if view["live"]:
        with contextlib.suppress(ConflictError):  # it finished meanwhile
            await send_control(engine, sid, "cancel")
        if not await wait_until_stopped(engine, sid):
            raise ConflictError(
                f"session {sid} did not stop in time; try again", details={"session_id": sid}
            )
    else:
        # Run by another instance? Then it is not ours to delete (409); otherwise the
        # lease we take fences any late writer.
        await engine.claim_session(sid)
    await engine.flush()  # nothing of it may still be on its way to the database
    if engine.store is not None:
        await engine.store.delete_session(sid)
    removed = await asyncio.to_thread(engine.files.delete_session_files, sid)
    logger.info("deleted session %s (%d files)", sid, removed)
    return reply({"success": True, "message": f"Session {sid} deleted"})
