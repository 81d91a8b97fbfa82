"""Manuscript uploads: reading a multipart body within its limits, and parsing the file
it carries (.json like a JSON body, .txt/.md split at headings) off the event loop."""

from __future__ import annotations

import asyncio
import codecs
from typing import Any, NamedTuple

from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from errors import ValidationError
from pipeline.manuscripts import (
    Manuscript,
    decode_upload,
    parse_manuscript_json,
    parse_manuscript_text,
)
from web.keys import CONFIG_KEY
from web.responses import MalformedJsonError, MalformedMultipartError, body_timeout, parse_json

UPLOAD_SUFFIXES = (".json", ".txt", ".md", ".markdown")
UPLOAD_CHUNK_BYTES = 256 * 1024
"""Read uploads in large pieces: with aiohttp's 8 kB default, a buffered 10 MB upload
is 1,280 boundary searches in a row on the event loop (~40 ms without a pause)."""


class _UploadBudget:
    """Counts the bytes of every part of one upload against ``server.max_body_bytes``.

    ``request.multipart()`` streams, so aiohttp's own body limit does not apply to it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    async def read(self, part: BodyPartReader) -> bytes:
        data = bytearray()
        while chunk := await part.read_chunk(UPLOAD_CHUNK_BYTES):
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


class Upload(NamedTuple):
    """The parts of a multipart upload we use."""

    raw: bytes
    """The bytes of the ``file`` part."""
    suffix: str
    """Its file name's suffix, lower-case (``.json``, ``.txt``, ``.md``, ``.markdown``)."""
    fields: dict[str, str]
    """The text fields (title, author, genre, description)."""


async def read_upload(request: web.Request) -> Upload:
    """The multipart field ``file`` plus the other (text) fields.

    Every part counts against ``server.max_body_bytes`` (413) and the whole body must
    arrive within ``server.body_timeout_seconds`` (408); a malformed multipart body (a
    NUL in a file name, a part header beyond aiohttp's 8 kB line limit) is a 400, and a
    missing file or one not named .json/.txt/.md a 422.
    """
    server = request.app[CONFIG_KEY].server
    limit = server.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        async with asyncio.timeout(server.body_timeout_seconds):
            upload = await _read_parts(request, _UploadBudget(limit))
    except TimeoutError as exc:
        raise body_timeout(server.body_timeout_seconds) from exc
    if upload is None:
        raise ValidationError("the multipart field 'file' is required", details={"field": "file"})
    return upload


async def _read_parts(request: web.Request, budget: _UploadBudget) -> Upload | None:
    found: tuple[bytes, str] | None = None
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
                suffix = _upload_suffix(part.filename or "")
                found = (raw, suffix)
            elif part.name in ("title", "author", "genre", "description"):
                fields[part.name] = _decode_field(part.name, raw)[:500]
    except (ValueError, KeyError, AssertionError, RuntimeError, HttpProcessingError) as exc:
        # aiohttp's multipart parser reports a missing boundary, a garbled body, an
        # unknown encoding or a bad part header with these; our own errors
        # (ValidationError) pass through.
        raise MalformedMultipartError(str(exc)[:200]) from exc
    return None if found is None else Upload(found[0], found[1], fields)


def _upload_suffix(filename: str) -> str:
    lowered = filename.lower()
    for suffix in UPLOAD_SUFFIXES:
        if lowered.endswith(suffix):
            return suffix
    raise ValidationError("file must be a .json, .txt or .md file", details={"field": "file"})


def manuscript_from_upload(upload: Upload, max_depth: int) -> Manuscript:
    """Parse an uploaded file like ``illustrator process`` does: .json as a JSON
    manuscript, anything else as text split at its headings. Runs off the event loop.
    """
    fields = upload.fields
    if upload.suffix == ".json":
        data = _json_file(upload.raw, max_depth)
        overrides = {k: v for k, v in fields.items() if v}
        return parse_manuscript_json({**data, **overrides})
    text = _decode_file(upload.raw)
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
    return manuscript


def _json_file(raw: bytes, max_depth: int) -> dict[str, Any]:
    if not raw.strip():
        raise ValidationError("the uploaded file is empty", details={"field": "file"})
    decode_upload(raw)  # the same NUL, binary and UTF-8 checks as a text file
    try:
        data = parse_json(raw.removeprefix(codecs.BOM_UTF8), max_depth)
    except MalformedJsonError as exc:
        raise ValidationError(
            f"the file is not valid JSON: {exc}", details={"field": "file"}
        ) from exc
    if not isinstance(data, dict):
        raise ValidationError("the file must hold a JSON object", details={"field": "file"})
    return data
