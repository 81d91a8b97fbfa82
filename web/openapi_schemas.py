"""The shapes of the API's requests, replies and WebSocket frames, for ``web.openapi``.

Each schema names the fields a client can rely on (``required``) and their types; replies
may carry more fields than listed (``additionalProperties`` is left open), never fewer.
"""

from __future__ import annotations

from typing import Any


def ref(kind: str, name: str) -> dict[str, str]:
    """A ``$ref`` to ``#/components/{kind}/{name}``."""
    return {"$ref": f"#/components/{kind}/{name}"}


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    """An object schema whose ``required`` fields must be present."""
    return {
        "type": "object",
        "required": sorted(required),
        "properties": {**required, **(optional or {})},
    }


def nullable(kind: str, **schema: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **schema}


STRING = {"type": "string"}
INTEGER = {"type": "integer"}
BOOLEAN = {"type": "boolean"}
OBJECT = {"type": "object"}
TRUE = {"const": True}
UUID = {"type": "string", "format": "uuid"}
TIME = nullable("string")
"""An ISO-8601 time, or null when it has not happened."""
STATUS = {
    "type": "string",
    "enum": [
        "pending",
        "queued",
        "running",
        "paused",
        "completed",
        "failed",
        "cancelled",
        "interrupted",
    ],
}


def page(key: str, item: dict[str, Any]) -> dict[str, Any]:
    return obj(
        {
            "success": TRUE,
            key: {"type": "array", "items": item},
            "count": INTEGER,
            "total": INTEGER,
            "limit": INTEGER,
            "offset": INTEGER,
            "next_offset": nullable("integer"),
            "next": nullable("string"),
        }
    )


IMAGE = obj(
    {
        "url": STRING,
        "prompt": STRING,
        "chapter_number": INTEGER,
        "scene_number": INTEGER,
        "timestamp": TIME,
    }
)
EVENT = obj(
    {"type": STRING, "session_id": UUID, "event_seq": INTEGER, "timestamp": STRING},
)
SESSION_STATUS = obj(
    {
        "session_id": UUID,
        "manuscript_id": nullable("string"),
        "status": STATUS,
        "progress": INTEGER,
        "message": STRING,
        "current_chapter": nullable("integer"),
        "total_chapters": INTEGER,
        "step_status": OBJECT,
        "logs": {"type": "array", "items": OBJECT},
        "images": {"type": "array", "items": IMAGE},
        "pause_requested": BOOLEAN,
        "cancel_requested": BOOLEAN,
    }
)
CHECKPOINT = obj(
    {
        "session_id": UUID,
        "sequence_number": INTEGER,
        "checkpoint_type": STRING,
        "step": STRING,
        "chapter_number": nullable("integer"),
        "progress_percent": INTEGER,
        "checkpoint_data": OBJECT,
        "created_at": STRING,
    }
)
MANUSCRIPT_SUMMARY = obj(
    {
        "manuscript_id": UUID,
        "title": STRING,
        "author": STRING,
        "total_chapters": INTEGER,
    },
    {"genre": STRING, "description": STRING, "created_at": TIME},
)
CHAPTER_INPUT = obj({"title": STRING, "content": STRING}, {"number": INTEGER})

SCHEMAS: dict[str, Any] = {
    "Error": obj({"success": {"const": False}, "error": STRING, "details": OBJECT}),
    "Message": obj({"success": TRUE, "message": STRING}),
    "SessionMessage": obj({"success": TRUE, "message": STRING, "session_id": UUID}),
    "Health": obj(
        {
            "status": {"enum": ["healthy", "degraded"]},
            "service": STRING,
            "database": STRING,
            "database_reachable": BOOLEAN,
            "persistence_backlog": INTEGER,
            "breaker_open": BOOLEAN,
            "quarantined_records": INTEGER,
            "live_sessions": INTEGER,
            "instance_id": STRING,
            "leases_held": INTEGER,
            "ok": BOOLEAN,
        },
        {"embedded_database": nullable("object")},
    ),
    "StartRequest": obj(
        {"manuscript_id": UUID},
        {
            "style_config": OBJECT,
            "max_emotional_moments": {"type": "integer", "minimum": 1, "maximum": 20},
            "force_new": {
                "type": "boolean",
                "description": "true: a live session of the manuscript is a 409, not returned",
            },
            "start_from_chapter": {"type": "integer", "minimum": 1},
            "external_session_id": STRING,
        },
    ),
    "SessionStarted": obj(
        {
            "success": TRUE,
            "session_id": UUID,
            "message": STRING,
            "started_at": TIME,
            "is_existing": BOOLEAN,
        }
    ),
    "SessionResumed": obj(
        {
            "success": TRUE,
            "session_id": UUID,
            "message": STRING,
            "resumed_at": STRING,
            "is_existing": BOOLEAN,
            "resume_info": obj(
                {
                    "checkpoint_type": nullable("string"),
                    "progress_percent": INTEGER,
                    "total_chapters": INTEGER,
                    "last_completed_chapter": nullable("integer"),
                }
            ),
        }
    ),
    "ResumableSessions": obj(
        {
            "success": TRUE,
            "resumable_sessions": {
                "type": "array",
                "items": obj(
                    {
                        "session_id": UUID,
                        "manuscript_id": STRING,
                        "status": STATUS,
                        "progress_percent": INTEGER,
                        "total_chapters": INTEGER,
                    }
                ),
            },
            "count": INTEGER,
        }
    ),
    "ManuscriptStatus": obj(
        {
            "success": TRUE,
            "active_session": {"oneOf": [SESSION_STATUS, {"type": "null"}]},
            "last_session": {"oneOf": [SESSION_STATUS, {"type": "null"}]},
            "message": STRING,
        }
    ),
    "SessionPage": page("sessions", obj({"session_id": UUID, "status": STATUS})),
    "ActiveSessions": {
        "type": "array",
        "description": "A bare array, as the original API answered",
        "items": obj(
            {
                "session_id": UUID,
                "manuscript_id": nullable("string"),
                "status": STATUS,
                "progress": INTEGER,
                "message": STRING,
                "started_at": TIME,
            }
        ),
    },
    "SessionRecord": obj(
        {
            "success": TRUE,
            "session_id": UUID,
            "live": BOOLEAN,
            "status": obj({"session_id": UUID, "status": STATUS}),
            "session": nullable("object"),
        }
    ),
    "SessionStatus": SESSION_STATUS,
    "Checkpoints": obj(
        {
            "success": TRUE,
            "session_id": UUID,
            "checkpoints": {"type": "array", "items": CHECKPOINT},
            "count": INTEGER,
        }
    ),
    "Logs": obj(
        {
            "success": TRUE,
            "session_id": UUID,
            "logs": {"type": "array", "items": EVENT},
            "count": INTEGER,
            "next_after": INTEGER,
            "has_more": BOOLEAN,
        }
    ),
    "Images": obj(
        {
            "success": TRUE,
            "session_id": UUID,
            "images": {"type": "array", "items": IMAGE},
            "count": INTEGER,
        }
    ),
    "ManuscriptInput": obj(
        {"title": STRING, "chapters": {"type": "array", "items": CHAPTER_INPUT, "minItems": 1}},
        {"author": STRING, "genre": STRING, "description": STRING},
    ),
    "ManuscriptUpload": obj(
        {
            "file": {
                "type": "string",
                "contentMediaType": "application/octet-stream",
                "description": "A .txt or .md text (chapters found by their headings) or a"
                " .json manuscript, UTF-8",
            }
        },
        {"title": STRING, "author": STRING, "genre": STRING, "description": STRING},
    ),
    "ManuscriptStored": obj(
        {"success": TRUE, "manuscript_id": UUID, "message": STRING, "manuscript": OBJECT}
    ),
    "ManuscriptPage": page("manuscripts", MANUSCRIPT_SUMMARY),
    "ManuscriptRecord": obj(
        {
            "success": TRUE,
            "manuscript": obj(
                {"manuscript_id": UUID, "title": STRING, "chapters": {"type": "array"}}
            ),
        }
    ),
    "ExportCreated": obj(
        {
            "success": TRUE,
            "format": {"enum": ["html", "json"]},
            "filename": STRING,
            "url": STRING,
            "session_id": nullable("string"),
            "images_count": INTEGER,
        }
    ),
    "WebSocketFrame": {
        "description": "Frames a WebSocket sends: `snapshot` first; then events (`step`,"
        " `progress`, `checkpoint`, `image`, `status`, `complete`, `error`, ...) each with"
        " its `event_seq`; `resync` when events were lost (reload from the REST API);"
        ' the client may send `ping` (text or `{"type": "ping"}`) and gets `pong`',
        **obj({"type": STRING}, {"event_seq": INTEGER, "session_id": UUID}),
    },
}
