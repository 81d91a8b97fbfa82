"""Talking to a running server: the address, the token, JSON requests and their errors.

The token comes from ``--token`` or the ``ILLUSTRATOR_TOKEN`` environment variable and
travels as ``Authorization: Bearer`` (never in a URL). JSON requests say so in their
``Content-Type``. A 4xx/5xx reply is shown as the server's own reason.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import aiohttp

from cli.address import server_url
from config import Config
from errors import IllustratorError

TOKEN_ENV = "ILLUSTRATOR_TOKEN"


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--url`` and ``--token``, for every command that talks to a running server."""
    parser.add_argument(
        "--url",
        default=None,
        help="server URL (default: the address the running `illustrator serve` recorded in "
        "{output}/server.json, else http://{server.host}:{server.port} from the config)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help=f"bearer token when server.api_tokens is set (default: ${TOKEN_ENV}, else none)",
    )


class ServerError(IllustratorError):
    """The server answered with an error, or could not be reached."""


def segment(value: str) -> str:
    """``value`` as one URL path segment (the server validates it; we only keep it whole)."""
    return quote(value, safe="")


def error_text(status: int, body: bytes) -> str:
    """The server's JSON reason ``{error, details}`` of a failed reply, for people."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "error" in data:
        text = f"server answered {status}: {data['error']}"
        details = data.get("details")
        if details:
            text += f" ({json.dumps(details, default=str)[:300]})"
    else:
        text = f"server answered {status}: {body[:200].decode('utf-8', 'replace') or '(empty)'}"
    if status == 401:
        text += f"; pass --token or set {TOKEN_ENV}"
    return text


class ApiClient:
    """JSON over HTTP to one server."""

    def __init__(self, http: aiohttp.ClientSession, base: str, source: str) -> None:
        self.http = http
        self.base = base
        self.source = source
        """Where the address came from (for error messages)."""

    def unreachable(self, exc: BaseException) -> ServerError:
        return ServerError(
            f"cannot reach the server at {self.base} (address from {self.source}): {exc}."
            " Is `illustrator serve` running? Otherwise pass --url"
        )

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One request; the JSON reply, or ServerError with the server's reason."""
        kwargs: dict[str, Any] = {}
        if method != "GET":
            kwargs["json"] = body if body is not None else {}  # Content-Type: application/json
        try:
            async with self.http.request(method, self.base + path, **kwargs) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise ServerError(error_text(response.status, raw))
        except aiohttp.ClientError as exc:
            raise self.unreachable(exc) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise ServerError(f"{method} {path}: the server's reply is not JSON") from exc


@asynccontextmanager
async def api_client(config: Config, args: argparse.Namespace) -> AsyncIterator[ApiClient]:
    """A client for the server ``args`` and the config point at."""
    base, source = server_url(config, args.url)
    token = args.token or os.environ.get(TOKEN_ENV, "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
        yield ApiClient(http, base, source)
