"""JSON replies and request-body parsing shared by every handler."""

from __future__ import annotations

import asyncio
import json
import math
import re
from datetime import datetime
from itertools import accumulate
from typing import Any

from aiohttp import web

from domain import isoformat
from errors import IllustratorError, ValidationError
from web.keys import CONFIG_KEY


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


class MalformedMultipartError(Exception):
    """The body claims to be multipart but cannot be parsed as such (400)."""


class UnsupportedMediaTypeError(IllustratorError):
    """A body whose Content-Type the route does not take (415)."""

    status = 415


class BodyTimeoutError(IllustratorError):
    """The request body did not arrive within ``server.body_timeout_seconds`` (408)."""

    status = 408


JSON_TYPES = ("application/json",)


def is_json_type(content_type: str) -> bool:
    """``application/json`` or a ``+json`` type (parameters such as charset already cut)."""
    return content_type in JSON_TYPES or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


def has_body(request: web.Request) -> bool:
    """Whether the request announces a body (a length above zero, or chunked)."""
    return bool(request.content_length) or request.headers.get("Transfer-Encoding", "") != ""


def require_json(request: web.Request, *, also: tuple[str, ...] = ()) -> None:
    """A request with a body must say it is JSON (415 otherwise), before it is read.

    A browser can send a cross-site ``text/plain`` or form POST without asking first (no
    CORS preflight), but never an ``application/json`` one: requiring it keeps a web page
    from driving the API of a server on the visitor's machine.
    """
    if not has_body(request) or is_json_type(request.content_type):
        return
    expected = [*JSON_TYPES, *also]
    raise UnsupportedMediaTypeError(
        f"the body must be {' or '.join(expected)}, not {request.content_type[:100]}",
        details={"field": "Content-Type", "expected": expected},
    )


async def read_body(request: web.Request) -> bytes:
    """The whole body, within ``server.body_timeout_seconds`` (408 when it stalls)."""
    seconds = request.app[CONFIG_KEY].server.body_timeout_seconds
    try:
        async with asyncio.timeout(seconds):
            return await request.read()
    except TimeoutError as exc:
        raise body_timeout(seconds) from exc


def body_timeout(seconds: float) -> BodyTimeoutError:
    """The 408 for a body that stopped arriving."""
    return BodyTimeoutError(
        f"the request body did not arrive within {seconds:g} seconds",
        details={"field": "body", "body_timeout_seconds": seconds},
    )


_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_BRACKET_STEP = [0] * 256
_BRACKET_STEP[ord("[")] = _BRACKET_STEP[ord("{")] = 1
_BRACKET_STEP[ord("]")] = _BRACKET_STEP[ord("}")] = -1
OFF_LOOP_BYTES = 256 * 1024
"""Bodies larger than this are scanned and parsed in a thread, off the event loop."""


def json_depth(raw: bytes) -> int:
    """How deeply the arrays/objects of a JSON text nest, without parsing it.

    Only brackets outside strings count. Escaped backslashes go first, then escaped
    quotes; every quote left opens or closes a string, so after keeping only brackets
    and quotes, every other piece between quotes is outside the strings. Each step is
    one pass at C speed over the text (~10 ms per 10 MB here), so a thread doing it
    lets the event loop in between. On malformed text the answer is approximate.
    """
    structure = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURE)
    brackets = b"".join(structure.split(b'"')[::2])
    if not brackets:
        return 0
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"{text[:40]} is out of range")
    return value


def parse_json(raw: bytes, max_depth: int) -> Any:
    """Parse a JSON body, refusing nesting deeper than ``max_depth``.

    ``json.loads`` raises RecursionError near 1,000 levels (and a deep document would
    also break storage later), so depth is measured before parsing.

    Raises:
        ValidationError: nested deeper than ``max_depth`` (422, field ``body``).
        MalformedJsonError: not JSON, not UTF-8/16/32, NaN/Infinity, a float that
            overflows, or an integer too long to convert (400).
    """
    depth = json_depth(raw)
    if depth > max_depth:
        raise ValidationError(
            f"the JSON body nests {depth} levels deep; at most {max_depth} are allowed",
            details={"field": "body", "max_depth": max_depth},
        )
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    # JSONDecodeError is a ValueError; RecursionError only if the depth scan was fooled.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJsonError(str(exc)[:200]) from exc
    reject_surrogates(data, "")
    return data


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def reject_surrogates(value: Any, field: str) -> None:
    """Refuse a lone surrogate (``"\\ud800"``) in any string or key, at any depth.

    ``json.loads`` accepts them (as escapes, or as encoded code units it decodes with
    ``surrogatepass``), but they are not Unicode text: UTF-8 cannot encode them, so BSON
    (the database) and every UTF-8 file would fail on them later. ASCII strings, nearly
    all of them, are passed over at no cost.

    Raises:
        ValidationError: 422 naming the field (``style_config.art_style``,
            ``chapters[0].title``; a bad key names the object holding it).
    """
    if isinstance(value, str):
        if not value.isascii() and _SURROGATE.search(value):
            raise _surrogate_error(field or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not key.isascii() and _SURROGATE.search(key):
                raise _surrogate_error(field or "body", in_key=True)
            reject_surrogates(item, f"{field}.{key}" if field else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            reject_surrogates(item, f"{field}[{index}]")


def _surrogate_error(field: str, *, in_key: bool = False) -> ValidationError:
    what = "a key of " + field if in_key else field
    return ValidationError(
        f"{what} holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not Unicode text",
        details={"field": field, "reason": "unencodable"},
    )


async def json_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}`` unless required).

    A body must be ``application/json`` (415) and arrive within
    ``server.body_timeout_seconds`` (408). It is capped by ``server.max_body_bytes``
    (413), its nesting by ``server.max_json_depth`` (422) and no string in it may hold
    a lone surrogate (422); large bodies are parsed off the event loop.
    """
    require_json(request)
    raw = await read_body(request)
    if not raw.strip():
        if required:
            raise ValidationError("a JSON object body is required", details={"field": "body"})
        return {}
    max_depth = request.app[CONFIG_KEY].server.max_json_depth
    if len(raw) > OFF_LOOP_BYTES:
        data = await asyncio.to_thread(parse_json, raw, max_depth)
    else:
        data = parse_json(raw, max_depth)
    if not isinstance(data, dict):
        raise ValidationError(
            f"the body must be a JSON object, not {_json_kind(data)}", details={"field": "body"}
        )
    return data


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return "a number"


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
