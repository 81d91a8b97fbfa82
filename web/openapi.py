"""``GET /api/openapi.json``: a hand-written OpenAPI 3.1 description of every route."""

from __future__ import annotations

from typing import Any

from aiohttp import web

routes = web.RouteTableDef()

_ERROR = {"$ref": "#/components/responses/Error"}
_SID = {
    "name": "session_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}
_MID = {
    "name": "manuscript_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "format": "uuid"},
}


def _op(
    summary: str,
    params: list[dict[str, Any]] | None = None,
    body: bool = False,
    errors: tuple[str, ...] = ("404", "422"),
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {
            "200": {
                "description": "OK",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            **{code: _ERROR for code in errors},
        },
    }
    if params:
        operation["parameters"] = params
    if body:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}}},
        }
    return operation


def _query(name: str, kind: str = "integer") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


PATHS: dict[str, dict[str, Any]] = {
    "/health": {"get": _op("Liveness and database state", errors=())},
    "/metrics": {"get": _op("Prometheus metrics", errors=())},
    "/api/openapi.json": {"get": _op("This document", errors=())},
    "/api/process": {"post": _op("Start a session (or return the live one)", body=True)},
    "/api/process/resume/{session_id}": {
        "post": _op("Resume from the last checkpoint", [_SID], errors=("404", "409", "422"))
    },
    "/api/process/resumable": {"get": _op("Resumable sessions", errors=())},
    "/api/process/{session_id}/pause": {
        "post": _op("Pause a live session", [_SID], errors=("404", "409", "422"))
    },
    "/api/process/{session_id}/resume": {
        "post": _op("Resume a session", [_SID], errors=("404", "409", "422"))
    },
    "/api/process/{session_id}/cancel": {
        "post": _op("Cancel a session", [_SID], errors=("404", "409", "422"))
    },
    "/api/process/{session_id}/restart": {
        "post": _op("Start over, same style", [_SID], errors=("404", "409", "422"))
    },
    "/api/process/status/{manuscript_id}": {
        "get": _op("Active and last session of a manuscript", [_MID])
    },
    "/api/sessions": {
        "get": _op(
            "Stored sessions, newest first, paged",
            [
                _query("status", "string"),
                _query("manuscript_id", "string"),
                _query("limit"),
                _query("offset"),
            ],
            errors=("422", "503"),
        )
    },
    "/api/sessions/active": {"get": _op("Live sessions", errors=())},
    "/api/sessions/{session_id}": {
        "get": _op("Full session record", [_SID]),
        "delete": _op("Cancel and delete a session", [_SID], errors=("404", "409", "422")),
    },
    "/api/sessions/{session_id}/status": {"get": _op("Session status", [_SID])},
    "/api/sessions/{session_id}/checkpoints": {"get": _op("Checkpoints in order", [_SID])},
    "/api/sessions/{session_id}/logs": {
        "get": _op("Events, paged", [_SID, _query("after"), _query("limit")])
    },
    "/api/sessions/{session_id}/images": {"get": _op("Generated images", [_SID])},
    "/api/manuscripts": {
        "get": _op(
            "Manuscripts, newest first, paged", [_query("limit"), _query("offset")], errors=("422",)
        ),
        "post": _op(
            "Store a manuscript (JSON or multipart file)", body=True, errors=("400", "413", "422")
        ),
    },
    "/api/manuscripts/{manuscript_id}": {
        "get": _op("One manuscript", [_MID]),
        "delete": _op("Delete a manuscript", [_MID], errors=("404", "409", "422")),
    },
    "/api/manuscripts/{manuscript_id}/export": {
        "post": _op(
            "Export as html or json",
            [_MID, _query("format", "string"), _query("session_id", "string")],
        )
    },
    "/generated_images/{session_id}/{filename}": {
        "get": _op(
            "A generated image",
            [
                _SID,
                {"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
        )
    },
    "/exports/{filename}": {
        "get": _op(
            "An export file",
            [{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}],
        )
    },
    "/ws/processing/{session_id}": {
        "get": _op("WebSocket: session events (?after= replays)", [_SID, _query("after")])
    },
    "/ws/gallery/{manuscript_id}": {"get": _op("WebSocket: a manuscript's new images", [_MID])},
}

SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Illustrator session engine", "version": "0.1.0"},
    "paths": PATHS,
    "components": {
        "responses": {
            "Error": {
                "description": "Error: {success: false, error, details}",
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["success", "error", "details"],
                            "properties": {
                                "success": {"type": "boolean"},
                                "error": {"type": "string"},
                                "details": {"type": "object"},
                            },
                        }
                    }
                },
            }
        }
    },
}


@routes.get("/api/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document."""
    return web.json_response(SPEC)
