"""Every response the web tests see, checked against ``GET /api/openapi.json``'s document.

``ConformanceRecorder.middleware`` wraps an app (outermost, so it sees what the client
gets): for each request that matched a route it checks that the status is one the
operation documents and that a JSON body matches the documented schema. A request that
matched no route (404, 405) must still get the documented error shape. Mismatches are
collected; the fixture that installed the recorder fails the test with them.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

import jsonschema_rs
from aiohttp import web

from web.openapi import SPEC

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@cache
def _validator(ref: str) -> Any:
    return jsonschema_rs.validator_for({"$ref": ref, "components": SPEC["components"]})


def _resolved(response: dict[str, Any]) -> dict[str, Any]:
    """A documented response object, its ``$ref`` to a shared one followed."""
    if "$ref" in response:
        return dict(SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]])
    return response


class ConformanceRecorder:
    """Checks responses against the OpenAPI document; ``problems`` lists the mismatches."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.seen: set[tuple[str, str, int]] = set()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        self.check(request, response)
        return response

    def check(self, request: web.Request, response: web.StreamResponse) -> None:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else None
        method = request.method.lower()
        operation = SPEC["paths"].get(path, {}).get(method) if path else None
        label = f"{request.method} {path or request.path} -> {response.status}"
        if operation is None:
            if method != "head":
                self._check_body(label, response, "#/components/schemas/Error")
            return
        self.seen.add((request.method, str(path), response.status))
        documented = operation["responses"].get(str(response.status))
        if documented is None:
            self.problems.append(f"{label}: status not documented")
            return
        if response.status == 101:
            return  # an upgrade: its frames are described, not checked here
        if isinstance(response, web.FileResponse):
            return  # its content type is chosen when it is sent, after this check
        content = _resolved(documented).get("content", {})
        if content and response.content_type not in content:
            self.problems.append(f"{label}: content type {response.content_type} not documented")
            return
        schema = content.get(response.content_type, {}).get("schema", {})
        if "$ref" in schema:
            self._check_body(label, response, schema["$ref"])

    def _check_body(self, label: str, response: web.StreamResponse, ref: str) -> None:
        if not isinstance(response, web.Response) or response.content_type != "application/json":
            if response.status >= 400 and not isinstance(response, web.FileResponse):
                self.problems.append(f"{label}: error body is not JSON ({response.content_type})")
            return
        body = response.body
        if not isinstance(body, bytes | bytearray):
            return
        try:
            value = json.loads(body)
        except ValueError:
            self.problems.append(f"{label}: body is not JSON")
            return
        errors = [error.message for error in _validator(ref).iter_errors(value)][:3]
        if errors:
            self.problems.append(f"{label}: {ref.rsplit('/', 1)[1]}: {'; '.join(errors)}")
