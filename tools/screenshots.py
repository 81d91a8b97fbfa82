"""Screenshots of the web page for the README (docs/screenshots/*.png).

Starts a throw-away ``illustrator serve`` (temporary output folder, slow simulated
providers), uploads a manuscript and illustrates it through the page in Debian's
chromium, and photographs the dashboard, a session (mid-run and finished), the
manuscript page and a phone-width dashboard. Re-run with ``make screenshots``.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from browser_support import ServerProcess, chromium_path  # noqa: E402
from playwright.sync_api import expect, sync_playwright  # noqa: E402

OUT = ROOT / "docs" / "screenshots"
BOOK = ROOT / "examples" / "lighthouse.md"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        server = ServerProcess(Path(folder) / "out", latency_ms=300)
        server.start()
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(
                    executable_path=chromium_path(), args=["--no-sandbox"]
                )
                shoot(browser, server)
                browser.close()
        finally:
            server.stop()
    print(f"screenshots written to {OUT}")


def shoot(browser, server: ServerProcess) -> None:  # type: ignore[no-untyped-def]
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(120_000)
    page.goto(server.url + "/")
    page.set_input_files("#upload-file", str(BOOK))
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#upload-message")).to_contain_text("Stored")
    page.get_by_role("button", name="Start session").click()
    row = page.locator("#session-table tbody tr").first
    page.wait_for_function(
        "() => (document.querySelector('#session-table progress')?.value ?? 0) >= 30"
    )
    page.screenshot(path=OUT / "dashboard.png", full_page=True)
    row.locator("a.session-link").click()
    expect(page.locator("#gallery figure").first).to_be_visible()
    page.screenshot(path=OUT / "session-running.png", full_page=True)
    expect(page.locator("#session-status .badge")).to_have_text("completed")
    page.locator("#timeline li button").nth(3).click()
    page.screenshot(path=OUT / "session.png", full_page=True)
    page.locator("main .sub a").click()
    expect(page.locator("#chapters article").first).to_be_visible()
    page.get_by_role("button", name="Export HTML").click()
    expect(page.locator("#exports a")).to_have_count(1)
    page.screenshot(path=OUT / "manuscript.png", full_page=True)
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(server.url + "/")
    expect(phone.locator("#session-table tbody tr")).to_have_count(1)
    phone.screenshot(path=OUT / "dashboard-phone.png", full_page=True)


if __name__ == "__main__":
    main()
