"""JSON replies and request-body parsing shared by every handler."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from aiohttp import web

from domain import isoformat
from errors import ValidationError


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)  # ObjectId and friends


def dumps(data: Any) -> str:
    """JSON text; datetimes become ISO-8601 (drivers return them in documents)."""
    return json.dumps(data, default=_default)


def reply(data: Any, status: int = 200) -> web.Response:
    """A JSON response."""
    return web.json_response(data, status=status, dumps=dumps)


class MalformedJsonError(Exception):
    """The body is not JSON at all (400, unlike well-formed but invalid values: 422)."""


async def json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}`` unless required)."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise ValidationError("a JSON object body is required", details={"field": "body"})
        return {}
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedJsonError(str(exc)) from exc
    if not isinstance(data, dict):
        raise ValidationError("the body must be a JSON object", details={"field": "body"})
    return data


def int_field(
    data: dict[str, Any], name: str, default: int, low: int, high: int | None = None
) -> int:
    """An optional integer field within ``low..high`` (booleans are not integers)."""
    value = data.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(f"{name} must be an integer", details={"field": name})
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ValidationError(f"{name} must be {bounds}", details={"field": name})
    return value


def bool_field(data: dict[str, Any], name: str, default: bool = False) -> bool:
    """An optional boolean field."""
    value = data.get(name, default)
    if not isinstance(value, bool):
        raise ValidationError(f"{name} must be true or false", details={"field": name})
    return value


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter within ``low..high``."""
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationError(f"{name} must be an integer", details={"field": name}) from exc
    if not low <= value <= high:
        raise ValidationError(f"{name} must be between {low} and {high}", details={"field": name})
    return value
