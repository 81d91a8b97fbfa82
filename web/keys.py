"""Every piece of shared state of the web app, under typed AppKeys (no module singletons)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from actors.engine import Engine
from config import Config
from pipeline.providers import Providers
from storage.database import DatabaseHandle

CONFIG_KEY = web.AppKey("config", Config)
DATABASE_KEY = web.AppKey("database", DatabaseHandle)
"""The open database (set once it is up, before the engine reconciles)."""
DATABASE_OPENING_KEY = web.AppKey[asyncio.Future[DatabaseHandle]]("database_opening")
"""The database being opened on a worker thread, while the engine reads its files."""
ENGINE_KEY = web.AppKey("engine", Engine)
WEBSOCKETS_KEY = web.AppKey("websockets", set[web.WebSocketResponse])
"""Every WebSocket being opened or open (its handler removes it): counted against
``server.max_websockets``, closed with GOING_AWAY at shutdown."""
DELETING_KEY = web.AppKey("deleting", set[str])
"""Sessions whose DELETE is under way: a second DELETE of one of them gets 409 at once
instead of racing the first through the same files."""
# A union is not a class, so the type goes in the subscript (aiohttp reads it back for repr).
PROVIDERS_KEY = web.AppKey[Providers | None]("providers")
"""Providers injected by ``create_app`` (None: built from the config)."""
