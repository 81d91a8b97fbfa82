"""Fixtures shared by every test package: the embedded database and parametrised stores.

``embedded_db_uri`` starts ONE SecantusDB server for the whole run (stopping one takes about
2 s) and is only started when a test asks for it. ``store`` gives each test a MongoStore on a
fresh, uniquely named database, once over mongomock-motor and once over the real server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from storage.embedded import EmbeddedDatabase
from storage.mongo import MongoStore, open_store

STORE_BACKENDS = ["mongomock", "secantus"]
"""``store`` parameters: mongomock-motor in memory, and PyMongo async on SecantusDB."""

StoreFactory = Callable[..., Awaitable[MongoStore]]


@pytest.fixture(scope="session")
def embedded_db_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URI of a SecantusDB server shared by the whole test run (started lazily, once)."""
    database = EmbeddedDatabase(tmp_path_factory.mktemp("embedded-db"))
    uri = database.start()
    try:
        yield uri
    finally:
        database.stop()


@pytest.fixture
async def store_factory(request: pytest.FixtureRequest) -> AsyncIterator[StoreFactory]:
    """Make MongoStores on fresh databases; each is dropped and closed at teardown.

    ``await store_factory(backend, driver=None, **open_store_options)``: backend
    ``"mongomock"`` or ``"secantus"``; ``driver`` picks ``"pymongo"`` or ``"motor"`` for the
    real server (default PyMongo async).
    """
    made: list[MongoStore] = []

    async def make(backend: str = "mongomock", driver: str | None = None, **options) -> MongoStore:
        name = f"test_{uuid.uuid4().hex[:16]}"
        if backend == "mongomock":
            store = open_store("mongodb://unused", name, driver="mongomock", **options)
        elif backend == "secantus":
            uri = request.getfixturevalue("embedded_db_uri")
            store = open_store(uri, name, driver=driver or "pymongo", **options)
        else:
            raise ValueError(f"unknown store backend {backend!r}")
        made.append(store)
        await store.ensure_indexes()
        return store

    yield make
    for store in made:
        try:
            await store.drop_database()
        finally:
            await store.close()


@pytest.fixture(params=STORE_BACKENDS)
async def store(request: pytest.FixtureRequest, store_factory: StoreFactory) -> MongoStore:
    """A MongoStore with indexes on a fresh database, over each of :data:`STORE_BACKENDS`."""
    return await store_factory(request.param)
