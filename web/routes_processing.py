"""The original API's processing routes: start, resume, pause, cancel, restart, status."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from aiohttp import web

from actors.engine import Engine
from domain import SessionId, isoformat, manuscript_id, session_id, utcnow
from errors import (
    ConflictError,
    DatabaseUnavailableError,
    ManuscriptBusyError,
    NotFoundError,
    ValidationError,
)
from web.keys import CONFIG_KEY, ENGINE_KEY
from web.responses import bool_field, int_field, json_object, reply
from web.sessions import (
    detailed_status,
    find_session,
    from_document,
    stored_session,
    wait_until_stopped,
)

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

CONTROL_REPLY_WAIT = 2.0
"""Seconds a pause/cancel request waits for the session's acknowledgement. A session in
the middle of a long step answers only at its boundary; the request is delivered anyway."""


async def send_control(engine: Engine, sid: SessionId, action: str) -> bool:
    """Deliver pause/cancel to a live session; True if it acknowledged within the wait.

    Raises:
        ConflictError: the session is no longer running.
    """
    method = engine.pause_session if action == "pause" else engine.cancel_session
    task = asyncio.ensure_future(method(sid))
    try:
        await asyncio.wait_for(asyncio.shield(task), CONTROL_REPLY_WAIT)
    except TimeoutError:
        task.add_done_callback(_ignore_result)
        return False
    except NotFoundError as exc:  # it finished between the check and the message
        raise ConflictError(
            f"session {sid} is no longer running", details={"session_id": sid}
        ) from exc
    return True


def _ignore_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def live_session_of(engine: Engine, mid: str) -> dict[str, Any] | None:
    """The live snapshot of a session of this manuscript, if any (memory only)."""
    for snapshot in engine.hub.snapshots():
        if snapshot.get("manuscript_id") == mid:
            return snapshot
    return None


STYLE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
"""What a style_config key may look like (no ``$``, dots or NUL: it is stored as a field name)."""
SAFE_INTEGER = 2**53
"""Integers beyond this do not survive JSON clients or BSON's int64 intact."""


def style_config_field(data: dict[str, Any], max_keys: int, max_chars: int) -> dict[str, Any]:
    """The request's ``style_config``: a flat object, validated, never truncated.

    A style config is stored in the session record and travels into every prompt, so it
    is bounded at the door: at most ``max_keys`` keys shaped like identifiers, each
    value a string of at most ``max_chars`` characters, a list of at most ``max_keys``
    such strings, a boolean, a safe integer, a finite number or null. Anything else is
    a 422 naming the field (``style_config.art_style``) and nothing is started. (The
    prompt writer cuts the values it uses much shorter still, to 80-200 characters.)
    """
    value = data.get("style_config", {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("style_config must be an object", details={"field": "style_config"})
    if len(value) > max_keys:
        raise ValidationError(
            f"style_config has {len(value)} keys; at most {max_keys} are allowed",
            details={"field": "style_config", "max_keys": max_keys},
        )
    for key, item in value.items():
        if not STYLE_KEY.fullmatch(key):
            raise ValidationError(
                "style_config keys must be identifiers of at most 64 characters",
                details={"field": "style_config", "key": key[:64]},
            )
        _check_style_value(f"style_config.{key}", item, max_keys, max_chars)
    return value


def _check_style_value(field: str, item: Any, max_keys: int, max_chars: int) -> None:
    if item is None or isinstance(item, bool | float):  # floats are finite (parse_json)
        return
    if isinstance(item, int):
        if abs(item) > SAFE_INTEGER:
            raise ValidationError(f"{field} is out of range", details={"field": field})
        return
    if isinstance(item, str):
        if len(item) > max_chars:
            raise ValidationError(
                f"{field} is {len(item)} characters long; at most {max_chars} are allowed",
                details={"field": field, "max_chars": max_chars},
            )
        return
    if isinstance(item, list) and len(item) <= max_keys and all(isinstance(v, str) for v in item):
        for v in item:
            _check_style_value(field, v, max_keys, max_chars)
        return
    raise ValidationError(
        f"{field} must be a string, a list of at most {max_keys} strings, a number, "
        "a boolean or null",
        details={"field": field},
    )


def _text_field(data: dict[str, Any], name: str) -> str:
    value = data.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 200:
        raise ValidationError(
            f"{name} must be a string of at most 200 characters", details={"field": name}
        )
    return value


@routes.post("/api/process")
async def start_processing(request: web.Request) -> web.Response:
    """Start illustrating a manuscript, or return the live session already doing it.

    Every field is validated before anything starts (422 naming the field); an oversized
    ``style_config`` is rejected, not truncated (see ``style_config_field``).
    """
    engine = request.app[ENGINE_KEY]
    data = await json_object(request)
    if "manuscript_id" not in data:
        raise ValidationError("manuscript_id is required", details={"field": "manuscript_id"})
    mid = manuscript_id(data["manuscript_id"])
    server = request.app[CONFIG_KEY].server
    style = style_config_field(data, server.max_style_keys, server.max_style_value_chars)
    default_moments = request.app[CONFIG_KEY].processing.default_max_moments
    moments = int_field(data, "max_emotional_moments", default_moments, 1, 20)
    force_new = bool_field(data, "force_new")
    start_from = int_field(data, "start_from_chapter", 1, 1)
    external = _text_field(data, "external_session_id")
    # One live session per manuscript: the engine refuses a second one, racing or not.
    existing = None if force_new else live_session_of(engine, mid)
    if existing is None:
        try:
            started = await engine.start_session(
                mid,
                style_config=style,
                max_emotional_moments=moments,
                external_session_id=external,
                start_from_chapter=start_from,
            )
        except ManuscriptBusyError as busy:
            if force_new:
                raise
            existing = engine.live_snapshot(SessionId(busy.live_session_id)) or {
                "session_id": busy.live_session_id
            }
    if existing is not None:
        return reply(
            {
                "success": True,
                "session_id": existing["session_id"],
                "message": "A session of this manuscript is already running",
                "started_at": existing.get("started_at"),
                "is_existing": True,
            }
        )
    logger.info("started session %s of manuscript %s", started["session_id"], mid)
    return reply(
        {
            "success": True,
            "session_id": started["session_id"],
            "message": "Processing started" if not started.get("queued") else "Processing queued",
            "started_at": started.get("started_at") or isoformat(utcnow()),
            "is_existing": bool(started.get("is_existing")),
        }
    )


async def _resume(engine: Engine, sid: SessionId) -> tuple[dict[str, Any], dict[str, Any]]:
    """Resume a session; returns (engine answer, the view it resumed from)."""
    view = await find_session(engine, sid)
    result = await engine.resume_session(sid)
    return result, view


@routes.post("/api/process/resume/{session_id}")
async def resume_processing(request: web.Request) -> web.Response:
    """Resume a paused, failed or interrupted session from its last checkpoint."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    result, view = await _resume(engine, sid)
    existing = bool(result.get("is_existing"))
    return reply(
        {
            "success": True,
            "session_id": sid,
            "message": "Session is already running" if existing else "Session resumed",
            "resumed_at": isoformat(utcnow()),
            "is_existing": existing,
            "resume_info": {
                "checkpoint_type": view.get("last_completed_step"),
                "progress_percent": view.get("progress", 0),
                "total_chapters": view.get("total_chapters", 0),
                "last_completed_chapter": view.get(
                    "last_completed_chapter", view.get("chapters_processed", 0)
                ),
            },
        }
    )


@routes.get("/api/process/resumable")
async def resumable_sessions(request: web.Request) -> web.Response:
    """Sessions that can be resumed (paused, failed, interrupted), newest first."""
    engine = request.app[ENGINE_KEY]
    documents: list[dict[str, Any]] = []
    if engine.store is not None:
        try:
            documents = await engine.store.get_resumable_sessions()
        except DatabaseUnavailableError:
            documents = []
    sessions = []
    for doc in documents:
        view = from_document(doc)
        sessions.append(
            {
                "session_id": view["session_id"],
                "manuscript_id": view["manuscript_id"],
                "external_session_id": view["external_session_id"],
                "status": view["status"],
                "progress_percent": view["progress"],
                "total_chapters": view["total_chapters"],
                "last_completed_chapter": view["last_completed_chapter"],
                "total_images_generated": view["images_generated"],
                "started_at": view["started_at"],
                "paused_at": view["paused_at"],
                "error_message": view["error_message"],
            }
        )
    return reply({"success": True, "resumable_sessions": sessions, "count": len(sessions)})


async def _require_live(engine: Engine, sid: SessionId, action: str) -> None:
    view = await find_session(engine, sid)  # 404 when unknown
    if not view["live"]:
        raise ConflictError(
            f"session {sid} is {view['status']}; only a live session can {action}",
            details={"session_id": sid, "status": view["status"]},
        )


@routes.post("/api/process/{session_id}/pause")
async def pause_processing(request: web.Request) -> web.Response:
    """Pause a live session at its next step boundary."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    await _require_live(engine, sid, "pause")
    await send_control(engine, sid, "pause")
    return reply(
        {"success": True, "message": "Pause requested; the session pauses after its current step"}
    )


@routes.post("/api/process/{session_id}/resume")
async def resume_session(request: web.Request) -> web.Response:
    """Resume a paused session (same as ``/api/process/resume/{id}``, shorter reply)."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    result, _ = await _resume(engine, sid)
    message = "Session is already running" if result.get("is_existing") else "Session resumed"
    return reply({"success": True, "message": message, "session_id": sid})


@routes.post("/api/process/{session_id}/cancel")
async def cancel_processing(request: web.Request) -> web.Response:
    """Cancel a session: a live one at its next boundary, a stopped one at once."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    view = await find_session(engine, sid)
    if view["live"]:
        try:
            await send_control(engine, sid, "cancel")
        except ConflictError:
            await engine.cancel_stopped_session(sid)
        return reply(
            {
                "success": True,
                "message": "Cancel requested; the session stops after its current step",
            }
        )
    await engine.cancel_stopped_session(sid)
    return reply({"success": True, "message": "Session cancelled"})


@routes.post("/api/process/{session_id}/restart")
async def restart_processing(request: web.Request) -> web.Response:
    """Start the manuscript over in a new session with the same style (the old one is cancelled)."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    await find_session(engine, sid)  # 404 when unknown
    document = await stored_session(engine, sid)
    if document is None:
        raise ConflictError(
            f"session {sid} has not been stored yet; retry in a moment", details={"session_id": sid}
        )
    if engine.live_snapshot(sid) is not None:
        with contextlib.suppress(ConflictError):
            await send_control(engine, sid, "cancel")
        if not await wait_until_stopped(engine, sid):
            raise ConflictError(f"session {sid} did not stop in time", details={"session_id": sid})
    started = await engine.start_session(  # ManuscriptBusyError (409) if one is live
        document["manuscript_id"],
        style_config=document.get("style_config") or {},
        max_emotional_moments=document.get("max_emotional_moments"),
        external_session_id=document.get("external_session_id", ""),
    )
    return reply(
        {"success": True, "message": "Session restarted", "session_id": started["session_id"]}
    )


@routes.get("/api/process/status/{manuscript_id}")
async def manuscript_status(request: web.Request) -> web.Response:
    """The live and the most recent session of a manuscript."""
    engine = request.app[ENGINE_KEY]
    mid = manuscript_id(request.match_info["manuscript_id"])
    await engine.load_manuscript(mid)  # 404 when unknown
    live = live_session_of(engine, mid)
    active = await detailed_status(engine, live) if live is not None else None
    last = None
    if engine.store is not None:
        try:
            recent = await engine.store.list_sessions(manuscript_id=mid, limit=2)
        except DatabaseUnavailableError:
            recent = []
        previous = [d for d in recent if live is None or d.get("session_id") != live["session_id"]]
        if previous:
            last = await detailed_status(engine, from_document(previous[0]))
    if active is not None:
        message = "Processing in progress"
    elif last is not None:
        message = f"Last session {last['status']}"
    else:
        message = "No sessions for this manuscript"
    return reply(
        {"success": True, "active_session": active, "last_session": last, "message": message}
    )
