"""Fixtures for the web tests: an app over in-memory mongomock, and helpers to drive it."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from openapi_conformance import ConformanceRecorder
from tests_support import EventRecorder

from config import Config, config_from_mapping
from pipeline.providers import RecordingProviders
from web.app import create_app
from web.keys import ENGINE_KEY

BODY = (
    "The storm broke over the dark castle and Mara screamed in terror. "
    "Later, in the quiet garden, she laughed with joy and hope beside Tomas. "
    "A strange shadow moved in the forest; the mystery deepened and fear returned. "
)


def manuscript_body(chapters: int = 2) -> dict[str, Any]:
    """A JSON manuscript with emotional text in every chapter."""
    return {
        "title": "The Test of Time",
        "author": "Tester",
        "genre": "fantasy",
        "description": "A test",
        "chapters": [
            {"title": f"Part {n}", "content": BODY * 3, "number": n} for n in range(1, chapters + 1)
        ],
    }


def make_config(tmp_path: Path, **server: Any) -> Config:
    """A config over mongomock, output in tmp_path, small images, no auto-resume."""
    return config_from_mapping(
        {
            "server": {"max_body_bytes": 64 * 1024, **server},
            "mongodb": {"driver": "mongomock", "database": f"web_{tmp_path.name[-20:]}"},
            "output": {"directory": str(tmp_path / "out")},
            "persistence": {"fsync": False},
            "processing": {"retry_backoff_ms": 5, "auto_resume": False},
            "providers": {"image_size": 64},
        },
        env={},
    )


class Gate:
    """Blocks image generation until released, so a test can act on a running session."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.reached = threading.Event()

    def before_call(self, stage: str, key: Any) -> None:
        if stage == "image":
            self.reached.set()
            self.open.wait(30)


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A closed gate, opened at teardown so no actor stays blocked."""
    made = Gate()
    yield made
    made.open.set()


ClientMaker = Callable[..., Awaitable[TestClient]]


class ServedTestServer(TestServer):
    """A test server whose connections behave as under ``illustrator serve`` (``web.run_app``).

    aiohttp's TestServer cancels a request's handler when its client disconnects; a
    served app's handler is not cancelled, it sees the disconnect as an error instead.
    """

    async def _make_runner(self, **kwargs: Any) -> web.BaseRunner:
        kwargs["handler_cancellation"] = False
        return await super()._make_runner(**kwargs)


@pytest.fixture
def conformance() -> Iterator[ConformanceRecorder]:
    """Checks every response of the apps it is installed on against the OpenAPI document;
    the test fails with the mismatches."""
    recorder = ConformanceRecorder()
    yield recorder
    assert not recorder.problems, "responses the OpenAPI document does not describe:\n" + (
        "\n".join(recorder.problems)
    )


def checked_app(app: web.Application, conformance: ConformanceRecorder) -> web.Application:
    """``app`` with ``conformance`` outermost, so it sees what the client gets."""
    app.middlewares.insert(0, conformance.middleware)
    return app


@pytest.fixture
async def make_client(
    tmp_path: Path, aiohttp_client: Any, conformance: ConformanceRecorder
) -> AsyncIterator[ClientMaker]:
    """``await make_client(gate=None, as_served=False, **server_options)``: a test client
    of a fresh app (``as_served``: on a ``ServedTestServer``), its responses checked
    against the OpenAPI document."""

    async def make(
        gate: Gate | None = None, *, as_served: bool = False, **server: Any
    ) -> TestClient:
        providers = RecordingProviders(before_call=gate.before_call if gate is not None else None)
        app = create_app(make_config(tmp_path, **server), providers=providers.providers)
        app = checked_app(app, conformance)
        return await aiohttp_client(ServedTestServer(app) if as_served else app)

    yield make


@pytest.fixture
async def client(make_client: ClientMaker) -> TestClient:
    """A test client of a fresh app (mongomock, ungated providers)."""
    return await make_client()


@pytest.fixture
def recorder(client: TestClient) -> EventRecorder:
    """Records the events of the client's engine."""
    return EventRecorder(client.app[ENGINE_KEY])


async def create_manuscript(client: TestClient, chapters: int = 2) -> str:
    """Store a manuscript through the API; returns its id."""
    response = await client.post("/api/manuscripts", json=manuscript_body(chapters))
    assert response.status == 201, await response.text()
    return str((await response.json())["manuscript_id"])


async def start(client: TestClient, mid: str, **options: Any) -> dict[str, Any]:
    """POST /api/process with two moments per chapter; returns the reply."""
    response = await client.post(
        "/api/process", json={"manuscript_id": mid, "max_emotional_moments": 2, **options}
    )
    assert response.status == 200, await response.text()
    return dict(await response.json())
