"""The real `illustrator serve` process: starts, answers /health, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_health(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited with {process.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                return json.loads(response.read())
        except OSError as exc:  # not listening yet
            last = exc
            time.sleep(0.1)
    raise AssertionError(f"server did not answer /health within {timeout}s: {last}")


def illustrator_command() -> list[str]:
    """The installed console script (what `make serve` runs)."""
    script = Path(sys.executable).parent / "illustrator"
    assert script.exists(), "the project is not installed (make test installs it)"
    return [str(script)]


@pytest.mark.timeout(180)
def test_serve_process_answers_health_with_embedded_database_and_stops(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "ILLUSTRATOR_OUTPUT_DIRECTORY": str(tmp_path / "out"),
        "ILLUSTRATOR_SERVER_PORT": str(port),
    }
    process = subprocess.Popen(
        [*illustrator_command(), "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        health = wait_for_health(port, process)
        assert health["status"] == "healthy"
        assert health["database"] == "embedded"
        assert health["database_reachable"] is True
        assert health["service"]
    finally:
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output.decode(errors="replace")[-2000:]
    # The embedded database stopped with the server: no secantus process holds its data.
    database_dir = tmp_path / "out" / "database"
    assert database_dir.exists()
    holders = subprocess.run(["pgrep", "-f", str(database_dir)], capture_output=True, text=True)
    assert holders.stdout.strip() == ""
