"""Paged list answers: the ``limit``/``offset`` query parameters and the page's envelope."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from web.responses import query_int

DEFAULT_LIMIT = 50
"""Items per page when a request does not say."""
MAX_LIMIT = 500
"""The largest page a request may ask for."""
MAX_OFFSET = 10**9


@dataclass(frozen=True)
class Page:
    """Which slice of a newest-first list a request asks for."""

    limit: int
    """At most this many items."""
    offset: int
    """After skipping this many."""


def page_of(request: web.Request) -> Page:
    """The request's ``limit`` (1..MAX_LIMIT, default DEFAULT_LIMIT) and ``offset``
    (default 0); a bad value is a 422 naming the parameter."""
    return Page(
        limit=query_int(request, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT),
        offset=query_int(request, "offset", 0, 0, MAX_OFFSET),
    )


def paged(
    request: web.Request, key: str, items: list[dict[str, Any]], page: Page, total: int
) -> dict[str, Any]:
    """The answer for one page: the items under ``key``, ``count``, ``total``, ``limit``,
    ``offset``, and ``next_offset`` / ``next`` (the next page's offset and URL; null on
    the last page)."""
    end = page.offset + len(items)
    has_more = end < total and len(items) == page.limit
    return {
        "success": True,
        key: items,
        "count": len(items),
        "total": total,
        "limit": page.limit,
        "offset": page.offset,
        "next_offset": end if has_more else None,
        "next": str(request.rel_url.update_query(limit=page.limit, offset=end))
        if has_more
        else None,
    }
