"""The web page for people who watch sessions: ``GET /`` (manuscripts and sessions),
``/ui/sessions/{session_id}``, ``/ui/manuscripts/{manuscript_id}`` and the page's
scripts and styles under ``/ui/static/``.

Every page is the same HTML shell (``web/static/index.html``); the ES modules beside it
read the API and the WebSockets and build the page with ``textContent``. The shell and
assets hold no data, so they are public (``web.middlewares.is_public``); the API calls
the page makes carry the token. A strict Content-Security-Policy allows scripts, styles
and connections to this server only: no inline script, nothing from a CDN.
"""

from __future__ import annotations

import logging
from pathlib import Path

from aiohttp import web

from domain import manuscript_id, session_id
from errors import NotFoundError

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

STATIC_DIR = Path(__file__).resolve().parent / "static"
SHELL = STATIC_DIR / "index.html"
ASSETS = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "dom.js": "text/javascript",
    "dashboard.js": "text/javascript",
    "session.js": "text/javascript",
    "manuscript.js": "text/javascript",
    "icon.svg": "image/svg+xml",
}
"""The files ``/ui/static/`` serves, with their types: a fixed list, never a path joined
from the request."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The shell is tiny and changes with the server; revalidate rather than go stale.
    "Cache-Control": "no-cache",
}


def _shell() -> web.FileResponse:
    return web.FileResponse(
        SHELL, headers={**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"}
    )


@routes.get("/")
async def dashboard_page(request: web.Request) -> web.StreamResponse:
    """The dashboard: manuscripts (upload, delete, start) and sessions, live."""
    return _shell()


@routes.get("/ui/sessions/{session_id}")
async def session_page(request: web.Request) -> web.StreamResponse:
    """One session: steps, checkpoint timeline, log, gallery and controls."""
    session_id(request.match_info["session_id"])  # a malformed id: 422, as in the API
    return _shell()


@routes.get("/ui/manuscripts/{manuscript_id}")
async def manuscript_page(request: web.Request) -> web.StreamResponse:
    """One manuscript: chapters with their moments and images, exports."""
    manuscript_id(request.match_info["manuscript_id"])
    return _shell()


@routes.get("/ui/static/{filename}")
async def static_asset(request: web.Request) -> web.StreamResponse:
    """A script or style sheet of the page (FileResponse reads it off the event loop)."""
    filename = request.match_info["filename"]
    content_type = ASSETS.get(filename)
    if content_type is None:
        raise NotFoundError("no such page asset", details={"filename": filename[:100]})
    return web.FileResponse(
        STATIC_DIR / filename,
        headers={**SECURITY_HEADERS, "Content-Type": f"{content_type}; charset=utf-8"},
    )
