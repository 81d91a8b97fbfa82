"""The web page against a server with ``server.api_tokens``: the page asks for the token,
keeps it in sessionStorage, sends it in headers and as the WebSocket subprotocol, and the
token is never in a URL the browser requests nor in the server's log."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ServerProcess, manuscript_file
from playwright.sync_api import Page, expect

pytestmark = pytest.mark.timeout(240)

TOKEN = "page-token-Zq9/+x"


@pytest.fixture
def token_server(tmp_path: Path) -> Iterator[ServerProcess]:
    made = ServerProcess(tmp_path / "out", tokens=TOKEN)
    made.start()
    yield made
    made.stop()


def test_the_page_asks_for_the_token_and_never_puts_it_in_a_url_or_a_log(
    page: Page, token_server: ServerProcess, tmp_path: Path
) -> None:
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    page.on("websocket", lambda socket: requested.append(socket.url))
    page.goto(token_server.url + "/")
    expect(page.locator("#auth-message")).to_contain_text("needs an API token")
    page.fill("#token-input", TOKEN)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("#manuscripts")).to_contain_text("No manuscripts yet")
    assert page.evaluate("sessionStorage.getItem('illustrator.api_token')") == TOKEN

    page.set_input_files("#upload-file", str(manuscript_file(tmp_path, chapters=2)))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-message")).to_contain_text("Stored")
    page.get_by_role("button", name="Start session").click()
    row = page.locator("#session-table tbody tr").first
    # The row follows the session over a WebSocket authenticated by the subprotocol.
    expect(row).to_have_attribute("data-connection", "live")
    row.locator("a.session-link").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    expect(page.locator("#session-status .badge")).to_have_text("completed", timeout=120_000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('#gallery img')].length === 4"
        " && [...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth > 0)",
        timeout=60_000,
    )
    encoded = base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip("=")
    assert requested
    for url in requested:
        assert TOKEN not in url and encoded not in url, url
    log = token_server.log_path.read_text(errors="replace")
    assert "/ws/processing/" in log  # the access log has the socket's line...
    assert TOKEN not in log and encoded not in log  # ...and no token
