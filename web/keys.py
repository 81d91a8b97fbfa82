"""Every piece of shared state of the web app, under typed AppKeys (no module singletons)."""

from __future__ import annotations

from aiohttp import web

from actors.engine import Engine
from config import Config
from storage.database import DatabaseHandle

CONFIG_KEY = web.AppKey("config", Config)
DATABASE_KEY = web.AppKey("database", DatabaseHandle)
ENGINE_KEY = web.AppKey("engine", Engine)
