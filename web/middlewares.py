"""The middlewares: the one error middleware (every failure to JSON), the edge checks of
the Host and Origin headers, and optional bearer-token auth.

Order (outermost first): ``error_middleware``, ``edge_middleware``, ``auth_middleware``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from config import ServerConfig
from errors import IllustratorError
from web.keys import CONFIG_KEY
from web.responses import (
    BodyTimeoutError,
    MalformedJsonError,
    MalformedMultipartError,
    reply,
)

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset({"/health"})
PAGE_PATHS = frozenset({"/"})
PAGE_PREFIX = "/ui/"
"""The web page's HTML shell and its scripts and styles (``web/ui.py``): public, as they
hold no data; everything the page shows comes from the API routes, which need the token."""

WEBSOCKET_SUBPROTOCOL = "illustrator"
"""The WebSocket subprotocol the server selects, so a browser accepts the handshake."""
BEARER_SUBPROTOCOL = "illustrator.bearer."
"""A browser cannot set headers on a WebSocket handshake: the page offers its token as
the subprotocol ``illustrator.bearer.<base64url(token)>``, next to ``illustrator``."""

# Requests that change something: a page on another site may send them (a form post or
# a multipart upload needs no CORS preflight), so their Origin header is checked.
CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def error_body(error: str, status: int, details: dict | None = None) -> web.Response:
    """The uniform error reply ``{success: false, error, details}``."""
    return reply({"success": False, "error": error, "details": details or {}}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON reply with the right status, never a bare 500."""
    try:
        return await handler(request)
    except BodyTimeoutError as exc:
        logger.info("%s %s: %s", request.method, request.path, exc.message)
        return _closing(request, error_body(exc.message, exc.status, exc.details))
    except IllustratorError as exc:
        if exc.status >= 500:
            logger.warning("%s %s failed: %s", request.method, request.path, exc)
        return error_body(exc.message, exc.status, exc.details)
    except MalformedJsonError as exc:
        return error_body("the body is not valid JSON", 400, {"field": "body", "reason": str(exc)})
    except MalformedMultipartError as exc:
        return error_body(
            "the body is not valid multipart/form-data", 400, {"field": "body", "reason": str(exc)}
        )
    except web.RequestPayloadError as exc:
        # A broken chunked framing or a Content-Encoding that does not decode.
        reason = str(exc.__cause__ or exc)[:200]
        body = error_body(
            "the request body could not be read", 400, {"field": "body", "reason": reason}
        )
        return _closing(request, body)
    except HttpProcessingError as exc:  # aiohttp's parsers, reached from a handler
        reason = (exc.message or type(exc).__name__)[:200]
        body = error_body(
            "the request could not be parsed", 400, {"field": "body", "reason": reason}
        )
        return _closing(request, body)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like pass through
            raise
        details: dict[str, object] = {}
        if isinstance(exc, web.HTTPMethodNotAllowed):
            details = {"allowed_methods": sorted(exc.allowed_methods)}
        elif isinstance(exc, web.HTTPRequestEntityTooLarge):
            limit = request.app[CONFIG_KEY].server.max_body_bytes
            details = {"field": "body", "max_body_bytes": limit}
        return error_body(exc.reason, exc.status, details)
    except ConnectionError:
        if not _client_left(request):
            logger.exception("connection error in %s %s", request.method, request.path)
            return error_body("internal server error", 500)
        # Nobody is left to read a reply: one quiet line, not a traceback.
        logger.info("client %s left during %s %s", request.remote, request.method, request.path)
        return error_body("the client closed the connection", 400)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_body("internal server error", 500)


def _client_left(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _closing(request: web.Request, response: web.Response) -> web.Response:
    """Reply, then close the connection without waiting for the rest of the body.

    After a handler returns, aiohttp reads and discards an unread body for up to its
    ``lingering_time`` (10 s). A body that failed to decode or stopped arriving has
    nothing more worth waiting for. aiohttp's lingering read stops quietly on a
    TimeoutError from the body (the payload error itself would be logged as an unhandled
    exception), then the connection closes, as ``Connection: close`` announces.
    """
    response.force_close()
    if not request.content.is_eof():
        request.content.set_exception(TimeoutError("request body abandoned"))
    return response


@web.middleware
async def edge_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The checks every request gets before its route: without tokens, its Host header
    must name this server (421); a request that changes something and comes from a
    browser page must come from an allowed origin (403, see ``origin_allowed``).

    (Paths and queries cannot carry a lone surrogate: aiohttp's parser refuses raw
    non-ASCII bytes in the request line, and percent-escapes that are not UTF-8 decode
    to U+FFFD; JSON bodies are checked in ``web.responses.parse_json``.)
    """
    server = request.app[CONFIG_KEY].server
    if _bearer_subprotocol(request) is not None and WEBSOCKET_SUBPROTOCOL not in _subprotocols(
        request
    ):
        # Without one the server knows, aiohttp would log the offered list: the token.
        return error_body(
            f"a WebSocket handshake offering a token must offer the {WEBSOCKET_SUBPROTOCOL!r} "
            "subprotocol too",
            400,
            {"field": "Sec-WebSocket-Protocol"},
        )
    if not server.api_tokens and request.path not in PUBLIC_PATHS:
        host = request.headers.get("Host", "")
        if host and not host_allowed(host, server):
            return error_body(
                "this server does not answer to that host name; add it to "
                "server.allowed_hosts if it is yours",
                421,
                {"field": "Host", "host": host[:200]},
            )
    if request.method in CHANGING_METHODS and not origin_allowed(request):
        return error_body(
            "requests from that origin are not accepted; add it to server.allowed_origins "
            "if it is yours",
            403,
            {"field": "Origin", "origin": request.headers.get("Origin", "")[:200]},
        )
    return await handler(request)


def origin_allowed(request: web.Request) -> bool:
    """Whether a request's ``Origin`` header is acceptable (cross-site request forgery and
    WebSocket hijacking).

    Browsers send ``Origin`` on every cross-origin POST and every WebSocket handshake, and
    a page cannot forge it. No header means a client that is not a browser page (curl, the
    CLI): allowed. Otherwise the origin must be the server's own (its host and port equal
    the Host header), or be listed in ``server.allowed_origins`` (``*``: any).
    """
    origin = request.headers.get("Origin")
    if origin is None or urlsplit(origin).netloc == request.host:
        return True
    allowed = request.app[CONFIG_KEY].server.allowed_origins
    return origin in allowed or "*" in allowed


def host_allowed(host: str, server: ServerConfig) -> bool:
    """Whether a Host header names this server.

    Without tokens, anything that can reach the port may use the API, and a web page can
    reach a server on its visitor's machine under a DNS name it controls, which it then
    points at 127.0.0.1 (DNS rebinding): the browser sends that name as Host. So only
    names this server is known by pass: IP addresses (a page cannot rebind a literal
    address; the browser treats it as its own origin), ``localhost`` and ``*.localhost``
    (browsers resolve them to loopback themselves), the bind address
    ``server.host`` and the names in ``server.allowed_hosts`` (``*``: any).
    """
    if "*" in server.allowed_hosts:
        return True
    name = _host_name(host)
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        return True
    if name == "localhost" or name.endswith(".localhost"):
        return True
    names = {server.host.lower(), *(h.lower().rstrip(".") for h in server.allowed_hosts)}
    return name in names


def _host_name(host: str) -> str:
    """The host part of a Host header, without port, brackets or a trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):  # [::1]:8080
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: Bearer <token>`` when ``server.api_tokens`` is set;
    ``/health`` and the web page's shell and assets stay open (they hold no data).

    On a WebSocket handshake (browsers cannot set headers there) the token may come as
    the ``illustrator.bearer.<base64url>`` subprotocol, which the web page uses, or as
    ``?token=``, kept for older clients; anywhere else a token in the URL would end up in
    logs and histories.
    """
    tokens = request.app[CONFIG_KEY].server.api_tokens
    if not tokens or is_public(request.path):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    offered = b""
    if header[:7].lower() == "bearer ":
        # surrogateescape: header bytes that are not UTF-8 arrive as lone surrogates.
        offered = header[7:].strip().encode("utf-8", "surrogateescape")
    elif _is_websocket_handshake(request):
        from_protocol = _bearer_subprotocol(request)
        if from_protocol is not None:
            offered = _decode_base64url(from_protocol)
        else:
            offered = request.query.get("token", "").encode("utf-8", "surrogateescape")
    if offered and any(hmac.compare_digest(offered, t.encode()) for t in tokens):
        return await handler(request)
    details = {}
    if "token" in request.query and not _is_websocket_handshake(request):
        details = {"reason": "?token= is only accepted on WebSocket handshakes"}
    response = error_body("authentication required", 401, details)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def is_public(path: str) -> bool:
    """Whether a path is answered without a token: ``/health`` and the page's shell."""
    return path in PUBLIC_PATHS or path in PAGE_PATHS or path.startswith(PAGE_PREFIX)


def _subprotocols(request: web.Request) -> list[str]:
    header = request.headers.get("Sec-WebSocket-Protocol", "")
    return [p.strip() for p in header.split(",") if p.strip()]


def _bearer_subprotocol(request: web.Request) -> str | None:
    """The base64url text of an offered ``illustrator.bearer.`` subprotocol, if any."""
    for protocol in _subprotocols(request):
        if protocol.startswith(BEARER_SUBPROTOCOL):
            return protocol[len(BEARER_SUBPROTOCOL) :]
    return None


def _decode_base64url(text: str) -> bytes:
    """The bytes of unpadded base64url ``text``; empty (no token) when it is not that."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return b""


def _is_websocket_handshake(request: web.Request) -> bool:
    return (
        request.method == "GET"
        and request.path.startswith("/ws/")
        and request.headers.get("Upgrade", "").lower() == "websocket"
    )
