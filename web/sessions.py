"""Reading sessions for the web layer: live snapshots first (memory), then the store,
then the session files (the durable record when the database is down)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from actors.engine import Engine
from domain import NOT_LIVE_STATUSES, EventType, SessionId, isoformat
from errors import DatabaseUnavailableError, NotFoundError
from storage.records import LogEntry

logger = logging.getLogger(__name__)

FINAL_STATUSES = frozenset(NOT_LIVE_STATUSES)

_STEP_ORDER = {
    None: 0,
    "session_start": 0,
    "manuscript_loaded": 0,
    "chapter_start": 0,
    "chapter_analyzed": 1,
    "prompts_generated": 2,
    "images_generating": 2,
    "chapter_completed": 0,
    "session_completed": 4,
}


async def stored_session(engine: Engine, sid: SessionId) -> dict[str, Any] | None:
    """The stored session document (database, else its session file), or None."""
    if engine.store is not None:
        try:
            document = await engine.store.get_session(sid)
        except DatabaseUnavailableError:
            document = None
        if document is not None:
            return document
    return await asyncio.to_thread(engine.files.load_session_state, sid)


async def find_session(engine: Engine, sid: SessionId) -> dict[str, Any]:
    """A normalised view of a session: live snapshot, else its stored record; 404 if none."""
    live = engine.live_snapshot(sid)
    if live is not None:
        return {**live, "live": True}
    document = await stored_session(engine, sid)
    if document is None:
        raise NotFoundError(f"session {sid} not found", details={"session_id": sid})
    return {**from_document(document), "live": False}


def from_document(doc: dict[str, Any]) -> dict[str, Any]:
    """A stored session document in the snapshot's shape."""
    status = str(doc.get("status", "pending"))
    order = 4 if status == "completed" else _STEP_ORDER.get(doc.get("last_completed_step"), 0)
    return {
        "session_id": doc.get("session_id") or doc.get("_id"),
        "manuscript_id": doc.get("manuscript_id"),
        "status": status,
        "progress": int(doc.get("progress_percent") or 0),
        "current_chapter": doc.get("current_chapter"),
        "total_chapters": int(doc.get("total_chapters") or 0),
        "chapters_processed": len(doc.get("processed_chapters") or []),
        "images_generated": int(doc.get("total_images_generated") or 0),
        "step_status": {str(i): "completed" if i < order else "pending" for i in range(4)},
        "last_sequence_number": int(doc.get("last_sequence_number") or 0),
        "last_event_seq": int(doc.get("last_event_seq") or 0),
        "last_completed_step": doc.get("last_completed_step"),
        "last_completed_chapter": int(doc.get("last_completed_chapter") or 0),
        "error_message": doc.get("error_message"),
        "started_at": _iso(doc.get("started_at")),
        "paused_at": _iso(doc.get("paused_at")),
        "external_session_id": doc.get("external_session_id", ""),
        "style_config": doc.get("style_config") or {},
        "max_emotional_moments": doc.get("max_emotional_moments"),
        "pause_requested": False,
        "cancel_requested": False,
    }


def session_summary(engine: Engine, document: dict[str, Any]) -> dict[str, Any]:
    """One line of the session list: a stored document, its live state if it runs."""
    view = from_document(document)
    live = engine.live_snapshot(SessionId(view["session_id"]))
    if live is not None:
        view = {**view, **{k: live[k] for k in ("status", "progress") if k in live}}
    return {
        "session_id": view["session_id"],
        "manuscript_id": view["manuscript_id"],
        "status": view["status"],
        "progress": view["progress"],
        "live": live is not None,
        "total_chapters": view["total_chapters"],
        "chapters_processed": view["chapters_processed"],
        "images_generated": view["images_generated"],
        "can_resume": bool(document.get("can_resume")),
        "error_message": view["error_message"],
        "created_at": _iso(document.get("created_at")),
        "started_at": view["started_at"],
    }


def _iso(value: Any) -> Any:
    return value if value is None or isinstance(value, str) else isoformat(value)


def status_message(view: dict[str, Any]) -> str:
    """A one-line human description of a session's state."""
    if view.get("error_message"):
        return f"Session {view['status']}: {view['error_message']}"
    return f"Session {view['status']} ({view.get('progress', 0)}%)"


async def recent_logs(
    engine: Engine, sid: SessionId, last_event_seq: int, count: int = 20
) -> list[dict[str, Any]]:
    """The last ``count`` log lines ``[{timestamp, level, message}]`` (empty without a database)."""
    if engine.store is None:
        return []
    try:
        entries = await engine.store.list_logs(
            sid, after_event_seq=max(0, last_event_seq - 5 * count), limit=10 * count
        )
    except DatabaseUnavailableError:
        return []
    logs = [e for e in entries if e.type == EventType.LOG][-count:]
    return [
        {"timestamp": isoformat(e.timestamp), "level": e.level, "message": e.message} for e in logs
    ]


async def session_images(engine: Engine, sid: SessionId) -> list[dict[str, Any]]:
    """``[{url, prompt, chapter_number, scene_number, timestamp}]`` in generation order."""
    if engine.store is None:
        return []
    try:
        images = await engine.store.list_images(sid)
    except DatabaseUnavailableError:
        return []
    return [
        {
            "url": image.web_url,
            "prompt": image.prompt_used,
            "chapter_number": image.chapter_number,
            "scene_number": image.scene_number,
            "timestamp": isoformat(image.created_at),
        }
        for image in images
    ]


async def detailed_status(engine: Engine, view: dict[str, Any]) -> dict[str, Any]:
    """The original's session status object (with logs and images)."""
    sid = SessionId(view["session_id"])
    return {
        "session_id": sid,
        "manuscript_id": view.get("manuscript_id"),
        "status": view["status"],
        "progress": view.get("progress", 0),
        "message": status_message(view),
        "current_chapter": view.get("current_chapter"),
        "total_chapters": view.get("total_chapters", 0),
        "step_status": view.get("step_status", {}),
        "logs": await recent_logs(engine, sid, int(view.get("last_event_seq") or 0)),
        "images": await session_images(engine, sid),
        "pause_requested": bool(view.get("pause_requested")),
        "cancel_requested": bool(view.get("cancel_requested")),
    }


async def wait_until_stopped(engine: Engine, sid: SessionId, timeout: float = 60.0) -> bool:
    """Wait (on events, re-checking the board) until a session is no longer live."""
    if engine.live_snapshot(sid) is None:
        return True
    changed = asyncio.Event()

    def on_event(entry: LogEntry) -> None:
        if entry.type in ("complete", "error") or (
            entry.type == EventType.STATUS and entry.payload.get("status") in FINAL_STATUSES
        ):
            changed.set()

    unsubscribe = engine.hub.subscribe(sid, on_event)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while engine.live_snapshot(sid) is not None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            # The board is updated from actor threads; a final event wakes us at once,
            # the short timeout covers a session that crashed without announcing it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.25))
    finally:
        unsubscribe()
    return True
