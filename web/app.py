"""The aiohttp application: ``create_app(config)``.

Resources open through ``cleanup_ctx`` in dependency order (database, then the
engine's actors) and close in reverse: sessions pause at their next step boundary,
persistence flushes, then the database stops.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiohttp import web

from actors.engine import Engine
from config import Config
from storage.database import open_database
from web.keys import CONFIG_KEY, DATABASE_KEY, ENGINE_KEY

logger = logging.getLogger(__name__)

SERVICE_NAME = "illustrator-session-engine"


def create_app(config: Config) -> web.Application:
    """Build the application; resources start when it starts."""
    app = web.Application(client_max_size=config.server.max_body_bytes)
    app[CONFIG_KEY] = config
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    app.router.add_get("/health", health)
    return app


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    handle = await asyncio.to_thread(open_database, config)
    app[DATABASE_KEY] = handle
    yield
    await asyncio.to_thread(handle.stop)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    handle = app[DATABASE_KEY]
    engine = Engine(config, handle.store_factory(config))
    await engine.start()
    app[ENGINE_KEY] = engine
    recovered = await engine.recover()
    if recovered:
        logger.info("recovered %d interrupted sessions", len(recovered))
    yield
    await engine.stop()


async def health(request: web.Request) -> web.Response:
    """Liveness plus the state of the database and of the persistence backlog."""
    engine = request.app[ENGINE_KEY]
    handle = request.app[DATABASE_KEY]
    database_reachable = False
    if engine.store is not None:
        try:
            await engine.store.ping()
            database_reachable = True
        except Exception:  # noqa: BLE001 - health reports, it does not fail
            database_reachable = False
    stats = await engine.persistence_stats()
    healthy = database_reachable or stats["backlog_records"] == 0
    return web.json_response(
        {
            "status": "healthy" if database_reachable else "degraded",
            "service": SERVICE_NAME,
            "database": handle.kind,
            "database_reachable": database_reachable,
            "persistence_backlog": stats["backlog_records"],
            "live_sessions": len(engine.hub.snapshots()),
            "ok": healthy,
        }
    )
