"""The one error middleware (domain errors to JSON) and optional bearer-token auth."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from errors import IllustratorError
from web.keys import CONFIG_KEY
from web.responses import MalformedJsonError, MalformedMultipartError, reply

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PUBLIC_PATHS = frozenset({"/health"})


def error_body(error: str, status: int, details: dict | None = None) -> web.Response:
    """The uniform error reply ``{success: false, error, details}``."""
    return reply({"success": False, "error": error, "details": details or {}}, status=status)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure into a JSON reply with the right status, never a bare 500."""
    try:
        return await handler(request)
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
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_body("internal server error", 500)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Require ``Authorization: Bearer <token>`` (or ``?token=`` for WebSockets) when
    ``server.api_tokens`` is set; ``/health`` stays open for probes."""
    tokens = request.app[CONFIG_KEY].server.api_tokens
    if not tokens or request.path in PUBLIC_PATHS:
        return await handler(request)
    header = request.headers.get("Authorization", "")
    given = (
        header[7:].strip() if header[:7].lower() == "bearer " else request.query.get("token", "")
    )
    if given and any(hmac.compare_digest(given.encode(), t.encode()) for t in tokens):
        return await handler(request)
    response = error_body("authentication required", 401)
    response.headers["WWW-Authenticate"] = "Bearer"
    return response
