"""The aiohttp application: ``create_app(config)``.

Resources open through ``cleanup_ctx`` in dependency order (database, then the
engine's actors; the engine reads its files while the database starts) and close in
reverse: sessions pause at their next step boundary, persistence flushes, then the
database stops.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from actors.engine import Engine
from actors.persistence.stats import published
from config import Config
from errors import StorageError
from pipeline.providers import Providers
from storage.base import SessionStore
from storage.database import open_database
from web import (
    metrics,
    openapi,
    routes_manuscripts,
    routes_processing,
    routes_sessions,
    ui,
    websocket,
)
from web.http_logs import RedactingAccessLogger, protocol_logger
from web.keys import (
    CONFIG_KEY,
    DATABASE_KEY,
    DATABASE_OPENING_KEY,
    DELETING_KEY,
    ENGINE_KEY,
    PROVIDERS_KEY,
    WEBSOCKETS_KEY,
)
from web.middlewares import auth_middleware, edge_middleware, error_middleware

logger = logging.getLogger(__name__)

SERVICE_NAME = "illustrator-session-engine"
MAX_REQUEST_LINE = 32 * 1024


def create_app(config: Config, *, providers: Providers | None = None) -> web.Application:
    """Build the application; resources start when it starts.

    Args:
        config: the server's configuration.
        providers: analysis/prompt/image providers (default: built from ``config``; tests
            pass recording or gated ones).
    """
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[error_middleware, edge_middleware, auth_middleware],
        handler_args={
            # Long request lines reach the app, so an absurd id gets a JSON 422, not a
            # parser 400.
            "max_line_size": MAX_REQUEST_LINE,
            # Whatever runs the app (run_app, a test server): tokens never reach the log.
            "access_log_class": RedactingAccessLogger,
            "logger": protocol_logger(),
        },
    )
    app[CONFIG_KEY] = config
    app[PROVIDERS_KEY] = providers
    app[WEBSOCKETS_KEY] = set()
    app[DELETING_KEY] = set()
    app.cleanup_ctx.append(_output_folder_ctx)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_engine_ctx)
    # Shutdown closes the sockets first (GOING_AWAY); cleanup_ctx then stops sessions and
    # the database.
    app.on_shutdown.append(websocket.close_websockets)
    app.router.add_get("/health", health)
    # Order matters: the literal /api/process/status/... and /resume/... paths come before
    # /api/process/{session_id}/..., and /api/sessions/active before /api/sessions/{id}.
    for module in (
        routes_processing,
        routes_sessions,
        routes_manuscripts,
        websocket,
        metrics,
        openapi,
        ui,
    ):
        app.router.add_routes(module.routes)
    return app


async def _output_folder_ctx(app: web.Application) -> AsyncIterator[None]:
    """Refuse to start on an output folder that cannot be written, saying so (before the
    database, whose data lives there, and the engine start and fail on it)."""
    await asyncio.to_thread(check_output_folder, app[CONFIG_KEY].output_dir)
    yield


def check_output_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written in it.

    Raises:
        StorageError: it cannot be created or written (read-only, not a folder, no
            permission), naming the folder and the system's reason.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as exc:
        raise StorageError(
            f"the output folder {folder} is not writable: {exc.strerror or exc}; "
            "set output.directory (ILLUSTRATOR_OUTPUT_DIRECTORY) to a writable folder",
            details={"folder": str(folder)},
        ) from exc


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]
    # Not awaited here: the engine reads its files while the database comes up (about a
    # second for the embedded server); it awaits the database in Engine.start.
    opening = asyncio.ensure_future(asyncio.to_thread(open_database, config))
    app[DATABASE_OPENING_KEY] = opening
    yield
    try:
        handle = await opening
    except Exception:  # noqa: BLE001 - it never opened: start-up already reported why
        return
    await asyncio.to_thread(handle.stop)


async def _engine_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG_KEY]

    async def database() -> Callable[[], SessionStore]:
        handle = await app[DATABASE_OPENING_KEY]
        app[DATABASE_KEY] = handle
        return handle.store_factory(config)

    engine = Engine(config, None, providers=app[PROVIDERS_KEY])
    await engine.start(database())
    app[ENGINE_KEY] = engine
    recovered = await engine.recover()
    if recovered:
        logger.info("recovered %d interrupted sessions", len(recovered))
    engine.watch_leases()  # sessions of other instances that die are taken over
    yield
    await engine.stop()


async def health(request: web.Request) -> web.Response:
    """Liveness plus the state of the database and of the persistence writer.

    ``degraded`` (still 200) while the database does not answer, the writer's circuit
    breaker is open or it has quarantined records. The writer's side comes from the
    counters it publishes, never from asking it: a busy writer cannot make this fail.
    """
    engine = request.app[ENGINE_KEY]
    handle = request.app[DATABASE_KEY]
    database_reachable = False
    if engine.store is not None:
        try:
            await engine.store.ping()
            database_reachable = True
        except Exception:  # noqa: BLE001 - health reports, it does not fail
            database_reachable = False
    stats = published(engine.persistence.actor_urn) if engine.persistence else published("")
    writer_ok = not stats["breaker_open"] and not stats["quarantined"]
    healthy = database_reachable or stats["backlog_records"] == 0
    return web.json_response(
        {
            "status": "healthy" if database_reachable and writer_ok else "degraded",
            "service": SERVICE_NAME,
            "database": handle.kind,
            "database_reachable": database_reachable,
            "persistence_backlog": stats["backlog_records"],
            "breaker_open": stats["breaker_open"],
            "quarantined_records": stats["quarantined"],
            "live_sessions": len(engine.hub.snapshots()),
            "instance_id": engine.instance_id,
            "leases_held": stats["leases"],
            "embedded_database": handle.embedded_status(),
            "ok": healthy,
        }
    )
