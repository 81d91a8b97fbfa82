"""Fixtures of the browser tests: Debian's chromium driven by Playwright, and a real
server process (``browser_support.ServerProcess``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ServerProcess, chromium_path
from playwright.sync_api import Browser, Dialog, Page, sync_playwright


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A chromium per test; a missing chromium fails (with the apt-get line), never skips.

    Per test, not per run: Playwright's sync API keeps an event loop running while it is
    open, and every asyncio test after it would fail.
    """
    try:
        executable = chromium_path()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with sync_playwright() as playwright:
        # --no-sandbox: CI runs as root, where chromium's sandbox refuses to start.
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    """A fresh page (own sessionStorage) whose script errors and dialogs fail the test."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    context.set_default_timeout(30_000)
    opened = context.new_page()
    problems: list[str] = []
    opened.on("pageerror", lambda error: problems.append(f"page error: {error}"))

    def on_dialog(dialog: Dialog) -> None:
        problems.append(f"dialog: {dialog.message}")
        dialog.dismiss()

    opened.on("dialog", on_dialog)
    opened.problems = problems  # type: ignore[attr-defined]
    yield opened
    context.close()
    assert not problems, problems


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A started server with slow simulated providers; stopped at teardown."""
    made = ServerProcess(tmp_path / "out")
    made.start()
    yield made
    made.stop()
