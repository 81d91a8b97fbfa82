"""Options of the crash tests: ``--crash-cycles N`` (see ``test_crash_loop.py``).

pytest only reads options from conftests it loads before parsing the command line, so
pass a path at or below ``tests/crash`` with the option, e.g.
``pytest tests/crash --crash-cycles 300``; the environment variable
``ILLUSTRATOR_TEST_CRASH_CYCLES`` works from anywhere (``make test`` included).
"""

from __future__ import annotations

import os

import pytest

DEFAULT_CRASH_CYCLES = 3
SECONDS_PER_CYCLE = 20.0
"""Generous timeout budget per kill cycle (a cycle takes a few seconds on 2 shared cores)."""
BASE_TIMEOUT = 240.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--crash-cycles",
        type=int,
        default=None,
        help=f"kill -9 cycles of test_crash_loop (default {DEFAULT_CRASH_CYCLES}, "
        "or ILLUSTRATOR_TEST_CRASH_CYCLES)",
    )


def crash_cycles(config: pytest.Config) -> int:
    """The number of kill cycles: the option, else the environment variable, else 3."""
    value = config.getoption("crash_cycles", default=None)
    if value is None:
        value = int(os.environ.get("ILLUSTRATOR_TEST_CRASH_CYCLES") or DEFAULT_CRASH_CYCLES)
    if value < 1:
        raise pytest.UsageError("--crash-cycles must be at least 1")
    return int(value)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Give the crash loop a timeout that grows with the number of cycles."""
    for item in items:
        if item.get_closest_marker("crash_loop") is not None:
            item.add_marker(
                pytest.mark.timeout(BASE_TIMEOUT + SECONDS_PER_CYCLE * crash_cycles(config))
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "crash_loop: the kill -9 crash loop (timeout scales with --crash-cycles)"
    )


@pytest.fixture
def crash_cycle_count(request: pytest.FixtureRequest) -> int:
    """How many kill cycles the crash loop runs."""
    return crash_cycles(request.config)
