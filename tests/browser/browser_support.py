"""A real ``illustrator serve`` process for the browser tests, and Debian's chromium.

The server runs from this source tree (``python -c "import cli; cli.main()"`` with the
tree as working directory), with simulated providers slow enough that a person (and a
test) can watch a session move, pause it and kill the server under it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_INSTALL = "apt-get install -y chromium"
MANUSCRIPT_TITLE = "<img src=x onerror=alert(1)>"


def chromium_path() -> str:
    """The system chromium (``ILLUSTRATOR_TEST_CHROMIUM`` overrides); Playwright never
    downloads a browser here.

    Raises:
        RuntimeError: chromium is missing, with the one line that installs it.
    """
    found = os.environ.get("ILLUSTRATOR_TEST_CHROMIUM") or shutil.which("chromium")
    if not found:
        raise RuntimeError(
            f"tests/browser need Debian's chromium; run: sudo {CHROMIUM_INSTALL} "
            "(make test installs it when run as root)"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """``illustrator serve`` on a fixed port and output folder, restartable after a kill."""

    def __init__(self, out: Path, *, latency_ms: int = 600, tokens: str = "") -> None:
        self.out = out
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = out.parent / f"{out.name}-server.log"
        self.env = {
            **os.environ,
            "ILLUSTRATOR_OUTPUT_DIRECTORY": str(out),
            "ILLUSTRATOR_SERVER_PORT": str(self.port),
            "ILLUSTRATOR_SERVER_API_TOKENS": tokens,
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MS": str(latency_ms),
            "ILLUSTRATOR_PROVIDERS_SIMULATED_LATENCY_MAX_MS": str(latency_ms * 2),
            "ILLUSTRATOR_PROVIDERS_IMAGE_SIZE": "64",
            "ILLUSTRATOR_PERSISTENCE_FSYNC": "false",
            # The session summary with every batch, so a restart after kill -9 reads the
            # session as running (the default writes it at most every 10 s: a kill soon
            # after a user's resume finds it paused by the user, and it stays paused).
            "ILLUSTRATOR_PERSISTENCE_SESSION_SUMMARY_INTERVAL_MS": "0",
        }
        self.token = tokens.split(",")[0] if tokens else ""
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "import cli; cli.main()", "serve"],
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.wait_until_healthy()

    def wait_until_healthy(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"server exited ({self.process.returncode}):\n{self.log()}")
            try:
                if self.get("/health").get("database_reachable"):
                    return
            except OSError:
                pass  # not listening yet
            time.sleep(0.1)  # waiting for a process to bind its port; bounded by the deadline
        raise AssertionError(f"server not healthy within {timeout}s:\n{self.log()}")

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def kill(self) -> None:
        """``kill -9``: no shutdown, no flush, no pause checkpoint."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stored_events(self, session_id: str) -> list[dict[str, Any]]:
        """Every stored event of a session, paged with ``after``."""
        events: list[dict[str, Any]] = []
        after = 0
        while True:
            page = self.get(f"/api/sessions/{session_id}/logs?after={after}&limit=1000")
            events.extend(page["logs"])
            after = page["next_after"]
            if not page["has_more"]:
                return events


def manuscript_file(folder: Path, chapters: int = 4) -> Path:
    """A Markdown manuscript with emotional text in every chapter."""
    body = (
        "The storm broke over the dark castle and Mara screamed in terror. "
        "Later, in the quiet garden, she laughed with joy and hope beside Tomas. "
        "A strange shadow moved in the forest; the mystery deepened and fear returned. "
        "At dawn the sea was calm and peaceful, and they felt a gentle warmth.\n\n"
    )
    text = "".join(f"# Chapter {n}\n\n{body * 2}" for n in range(1, chapters + 1))
    path = folder / "storm.md"
    path.write_text(text, encoding="utf-8")
    return path
