"""Choosing the database: the embedded SecantusDB server, or an external MongoDB URI."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config import Config
from storage.base import SessionStore
from storage.embedded import EmbeddedDatabase
from storage.embedded_supervisor import EmbeddedSupervisor
from storage.mongo import open_store

logger = logging.getLogger(__name__)


@dataclass
class DatabaseHandle:
    """Where the database is, and who stops it."""

    uri: str
    kind: str
    """``embedded`` or ``external``."""
    embedded: EmbeddedDatabase | None = None
    supervisor: EmbeddedSupervisor | None = None
    """Restarts the embedded server when it dies (see storage/embedded_supervisor.py)."""

    def store_factory(self, config: Config) -> Callable[[], Any]:
        """A factory of stores; each call gives a new client (one per event loop)."""
        mongo = config.mongodb
        shared: list[Any] = []

        def factory() -> Any:
            if self.kind == "mongomock":
                # One in-memory database: every caller must see the same data.
                if not shared:
                    shared.append(open_store(self.uri, mongo.database, driver="mongomock"))
                return shared[0]
            return open_store(
                self.uri,
                mongo.database,
                driver=mongo.driver,
                server_selection_timeout_ms=mongo.server_selection_timeout_ms,
            )

        return factory

    def embedded_status(self) -> dict[str, Any] | None:
        """State, pid, restart count and last death of the embedded server (else None)."""
        return self.supervisor.status().to_dict() if self.supervisor is not None else None

    def stop(self) -> None:
        """Stop supervising, then stop the embedded server (no-op for an external one)."""
        if self.supervisor is not None:
            self.supervisor.stop()
        elif self.embedded is not None:
            self.embedded.stop()


def open_database(config: Config) -> DatabaseHandle:
    """Start (or adopt) the embedded server when ``mongodb.uri`` is empty (blocking).

    The embedded server is supervised: restarted when it dies, until the handle stops.
    """
    if config.mongodb.driver == "mongomock":
        return DatabaseHandle(uri=config.mongodb.uri or "mongodb://mongomock", kind="mongomock")
    if config.mongodb.uri:
        return DatabaseHandle(uri=config.mongodb.uri, kind="external")
    embedded = EmbeddedDatabase(config.output_dir / "database")
    supervisor = EmbeddedSupervisor(embedded)
    uri = supervisor.start()
    logger.info("embedded database at %s", uri)
    return DatabaseHandle(uri=uri, kind="embedded", embedded=embedded, supervisor=supervisor)


async def resolve_store(made: Any) -> SessionStore:
    """Await a store factory's result when it is a coroutine."""
    if inspect.isawaitable(made):
        made = await made
    return made
