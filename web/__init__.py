"""The aiohttp web layer: routes, WebSockets, middlewares and app keys."""

from web.app import create_app

__all__ = ["create_app"]
