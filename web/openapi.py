"""``GET /api/openapi.json``: a hand-written OpenAPI 3.1 description of every route.

Every operation lists the statuses it can answer with: its success (200, 201, or 101 for a
WebSocket upgrade) with the shape of the reply, its own errors, and the ones the edge adds
(401 with ``server.api_tokens``, 421 for a foreign Host, 403 for a changing request from a
foreign Origin, 400/408/413/415 for bodies, 503 while the database is needed and down).
``tests/web`` checks every response the suite sees against this document.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from web.openapi_schemas import SCHEMAS, ref
from web.ui import ASSETS

routes = web.RouteTableDef()

_UUID = {"type": "string", "format": "uuid"}
_SID = {"name": "session_id", "in": "path", "required": True, "schema": _UUID}
_MID = {"name": "manuscript_id", "in": "path", "required": True, "schema": _UUID}

ERROR_DESCRIPTIONS = {
    "400": "Malformed request (body not JSON or not multipart, undecodable body)",
    "401": "Authentication required (server.api_tokens is set)",
    "403": "A changing request from an origin not in server.allowed_origins",
    "404": "No such session, manuscript or file",
    "408": "The body did not arrive within server.body_timeout_seconds",
    "409": "Not possible in the record's current state",
    "413": "The body is larger than server.max_body_bytes",
    "415": "The body's Content-Type is not one the route takes",
    "421": "The Host header does not name this server",
    "422": "A field, parameter or id is invalid (details.field names it)",
    "503": "The database is needed and unavailable, or too many WebSockets",
}
EDGE = ("401", "421")
"""What any route but /health may answer."""
CHANGING = ("403",)
"""What a POST or DELETE may answer besides."""
BODY = ("400", "408", "413", "415")
"""What a route that reads a body may answer besides."""


def _query(name: str, kind: str = "integer", **schema: Any) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind, **schema}}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _op(
    summary: str,
    success: dict[str, Any],
    *,
    params: list[dict[str, Any]] | None = None,
    errors: tuple[str, ...] = (),
    status: str = "200",
    body: dict[str, Any] | None = None,
    public: bool = False,
) -> dict[str, Any]:
    """One operation: ``success`` is the reply's schema (or a whole response object for
    non-JSON replies: images, exports, upgrades)."""
    response = (
        success if "description" in success else {"description": "OK", "content": _json(success)}
    )
    codes = set(errors) | (set() if public else set(EDGE))
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            status: response,
            **{code: ref("responses", code) for code in sorted(codes)},
        },
    }
    if params:
        operation["parameters"] = params
    if body is not None:
        operation["requestBody"] = {"required": True, "content": body}
    return operation


def _post(summary: str, success: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    errors = tuple(kwargs.pop("errors", ())) + CHANGING
    if "body" in kwargs:
        errors += BODY
    return _op(summary, success, errors=errors, **kwargs)


def _control(summary: str, success: str = "Message") -> dict[str, Any]:
    return {
        "post": _post(
            summary, ref("schemas", success), params=[_SID], errors=_ID_ERRORS + ("409", "503")
        )
    }


_ID_ERRORS = ("404", "422")


def _record(param: dict[str, Any], get: tuple[str, str], delete: str) -> dict[str, Any]:
    """A record's path: GET it (summary, reply schema), DELETE it."""
    return {
        "get": _op(get[0], ref("schemas", get[1]), params=[param], errors=_ID_ERRORS),
        "delete": _op(
            delete,
            ref("schemas", "Message"),
            params=[param],
            errors=_ID_ERRORS + ("409", "503") + CHANGING,
        ),
    }


_PAGE = {"description": "The page's HTML shell", "content": {"text/html": {}}}
_FILENAME = {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}
_UPGRADE = {
    "description": "Switching Protocols: a WebSocket of JSON frames (see WebSocketFrame)",
    "content": {"application/json": {"schema": ref("schemas", "WebSocketFrame")}},
}

PATHS: dict[str, dict[str, Any]] = {
    "/health": {
        "get": _op("Liveness, database and writer state", ref("schemas", "Health"), public=True)
    },
    "/metrics": {
        "get": _op(
            "Prometheus metrics",
            {
                "description": "Prometheus text format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            },
        )
    },
    "/api/openapi.json": {"get": _op("This document", {"type": "object"})},
    "/api/process": {
        "post": _post(
            "Start a session, or return the live one of the manuscript",
            ref("schemas", "SessionStarted"),
            body=_json(ref("schemas", "StartRequest")),
            errors=("404", "409", "422", "503"),
        )
    },
    "/api/process/resume/{session_id}": {
        "post": _post(
            "Resume from the last checkpoint",
            ref("schemas", "SessionResumed"),
            params=[_SID],
            errors=_ID_ERRORS + ("409", "503"),
        )
    },
    "/api/process/resumable": {
        "get": _op("Resumable sessions, newest first", ref("schemas", "ResumableSessions"))
    },
    "/api/process/{session_id}/pause": _control("Pause a live session at its next step"),
    "/api/process/{session_id}/resume": _control("Resume a session", "SessionMessage"),
    "/api/process/{session_id}/cancel": _control("Cancel a session"),
    "/api/process/{session_id}/restart": _control(
        "Start the manuscript over in a new session, same style", "SessionMessage"
    ),
    "/api/process/status/{manuscript_id}": {
        "get": _op(
            "Active and last session of a manuscript",
            ref("schemas", "ManuscriptStatus"),
            params=[_MID],
            errors=_ID_ERRORS,
        )
    },
    "/api/sessions": {
        "get": _op(
            "Stored sessions, newest first, paged",
            ref("schemas", "SessionPage"),
            params=[
                _query("status", "string"),
                _query("manuscript_id", "string"),
                _query("limit", minimum=1),
                _query("offset", minimum=0),
            ],
            errors=("422", "503"),
        )
    },
    "/api/sessions/active": {"get": _op("Live sessions", ref("schemas", "ActiveSessions"))},
    "/api/sessions/{session_id}": _record(
        _SID, ("Full session record", "SessionRecord"), "Cancel and delete a session"
    ),
    "/api/sessions/{session_id}/status": {
        "get": _op(
            "Session status", ref("schemas", "SessionStatus"), params=[_SID], errors=_ID_ERRORS
        )
    },
    "/api/sessions/{session_id}/checkpoints": {
        "get": _op(
            "Checkpoints in order",
            ref("schemas", "Checkpoints"),
            params=[_SID],
            errors=_ID_ERRORS + ("503",),
        )
    },
    "/api/sessions/{session_id}/logs": {
        "get": _op(
            "Events after an event number, paged",
            ref("schemas", "Logs"),
            params=[_SID, _query("after", minimum=0), _query("limit", minimum=1)],
            errors=_ID_ERRORS + ("503",),
        )
    },
    "/api/sessions/{session_id}/images": {
        "get": _op(
            "Generated images",
            ref("schemas", "Images"),
            params=[_SID],
            errors=_ID_ERRORS + ("503",),
        )
    },
    "/api/manuscripts": {
        "get": _op(
            "Manuscripts, newest first, paged",
            ref("schemas", "ManuscriptPage"),
            params=[_query("limit", minimum=1), _query("offset", minimum=0)],
            errors=("422", "503"),
        ),
        "post": _post(
            "Store a manuscript (a JSON body, or a multipart upload of a .txt, .md or .json file)",
            ref("schemas", "ManuscriptStored"),
            status="201",
            body={
                **_json(ref("schemas", "ManuscriptInput")),
                "multipart/form-data": {"schema": ref("schemas", "ManuscriptUpload")},
            },
            errors=("422", "503"),
        ),
    },
    "/api/manuscripts/{manuscript_id}": _record(
        _MID,
        ("One manuscript", "ManuscriptRecord"),
        "Delete a manuscript (409 while a session of it is live)",
    ),
    "/api/manuscripts/{manuscript_id}/export": {
        "post": _post(
            "Export as a self-contained HTML page or as JSON",
            ref("schemas", "ExportCreated"),
            status="201",
            params=[
                _MID,
                _query("format", "string", enum=["html", "json"]),
                _query("session_id", "string"),
            ],
            errors=_ID_ERRORS + ("503",),
        )
    },
    "/generated_images/{session_id}/{filename}": {
        "get": _op(
            "A generated image",
            {
                "description": "The image",
                "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            },
            params=[_SID, _FILENAME],
            errors=_ID_ERRORS,
        )
    },
    "/exports/{filename}": {
        "get": _op(
            "An export file",
            {"description": "The export", "content": {"text/html": {}, "application/json": {}}},
            params=[_FILENAME],
            errors=_ID_ERRORS,
        )
    },
    "/ws/processing/{session_id}": {
        "get": _op(
            "WebSocket: a snapshot, then (with ?after=) the missed events, then live ones",
            _UPGRADE,
            status="101",
            params=[_SID, _query("after", minimum=0), _query("token", "string")],
            errors=("400", "403", "503") + _ID_ERRORS,
        )
    },
    "/ws/gallery/{manuscript_id}": {
        "get": _op(
            "WebSocket: a manuscript's new images",
            _UPGRADE,
            status="101",
            params=[_MID, _query("token", "string")],
            errors=("400", "403", "503") + _ID_ERRORS,
        )
    },
    # The web page (web/ui.py): HTML shells and their assets, public (they hold no data).
    "/": {
        "get": _op("The web page: manuscripts and sessions", _PAGE, errors=("421",), public=True)
    },
    "/ui/sessions/{session_id}": {
        "get": _op(
            "The web page of one session",
            _PAGE,
            params=[_SID],
            errors=("421", "422"),
            public=True,
        )
    },
    "/ui/manuscripts/{manuscript_id}": {
        "get": _op(
            "The web page of one manuscript",
            _PAGE,
            params=[_MID],
            errors=("421", "422"),
            public=True,
        )
    },
    "/ui/static/{filename}": {
        "get": _op(
            "A script or style sheet of the web page",
            {
                "description": "The asset",
                "content": {"text/javascript": {}, "text/css": {}, "image/svg+xml": {}},
            },
            params=[
                {
                    "name": "filename",
                    "in": "path",
                    "required": True,
                    "schema": {"type": "string", "enum": sorted(ASSETS)},
                }
            ],
            errors=("404", "421"),
            public=True,
        )
    },
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Illustrator session engine", "version": "0.1.0"},
    "paths": PATHS,
    "components": {
        "schemas": SCHEMAS,
        "responses": {
            code: {"description": text, "content": _json(ref("schemas", "Error"))}
            for code, text in ERROR_DESCRIPTIONS.items()
        },
    },
}


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document."""
    return web.json_response(SPEC)
