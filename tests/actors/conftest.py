"""Fixtures for the actor tests: engines over each store backend."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from tests_support import store_maker

from actors.engine import Engine
from config import config_from_mapping
from pipeline.providers import RecordingProviders


@pytest.fixture(params=["mongomock", "secantus"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the engine runs on."""
    return str(request.param)


EngineMaker = Callable[..., Awaitable[Engine]]


@pytest.fixture
async def make_engine(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> AsyncIterator[EngineMaker]:
    """Start engines sharing one output folder and one database (a "restart" is a new engine)."""
    factory = store_maker(backend, request)(f"t_{uuid.uuid4().hex[:12]}")
    engines: list[Engine] = []

    async def make(
        providers: Any = None, *, processing: dict[str, Any] | None = None, **kwargs: Any
    ) -> Engine:
        config = config_from_mapping(
            {
                "output": {"directory": str(tmp_path / "out")},
                "processing": {"retry_backoff_ms": 5, "auto_resume": False, **(processing or {})},
                "providers": {"image_size": 64},
            },
            env={},
        )
        engine = Engine(config, factory, providers=providers or RecordingProviders(), **kwargs)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        if engine.supervisor is not None:
            await engine.stop(pause_timeout=10)
