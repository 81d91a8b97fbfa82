"""The CLI through its real process: environments, runs, stored state, a running server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

STOPPED = ("completed", "failed", "paused", "cancelled")
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "illustrator"
BOOK = """# Chapter 1: The Storm

The storm broke over the dark castle and Mara screamed in terror. Later, in the quiet
garden, she laughed with joy and hope beside Tomas.

# Chapter 2: The Forest

A strange shadow moved in the forest; the mystery deepened and fear returned. At dawn
the sea was calm and peaceful, and they felt a gentle warmth.
"""

LONG_BOOK = "".join(
    f"# Chapter {n}: Part {n}\n\nThe storm broke over the dark castle and Mara screamed in"
    " terror. Later she laughed with joy and hope; a strange shadow moved and fear returned.\n\n"
    for n in range(1, 7)
)
"""Six chapters: long enough, with slow providers, to be paused in the middle."""


@dataclass
class Cli:
    """Runs ``illustrator`` on one output folder and one database of the test server."""

    out: Path
    uri: str
    database: str
    extra: dict[str, str] = field(default_factory=dict)
    client: Any = None
    used: set[str] = field(default_factory=set)
    """Every database the runs used (dropped at teardown)."""

    def env(self, **overrides: str) -> dict[str, str]:
        self.used.add(self.database)
        inherited = {k: v for k, v in os.environ.items() if k != "ILLUSTRATOR_TOKEN"}
        env = {
            **inherited,
            "ILLUSTRATOR_OUTPUT_DIRECTORY": str(self.out),
            "ILLUSTRATOR_MONGODB_URI": self.uri,
            "ILLUSTRATOR_MONGODB_DATABASE": self.database,
            "ILLUSTRATOR_PROVIDERS_IMAGE_SIZE": "32",
            **self.extra,
            **overrides,
        }
        return env

    def run(self, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
        assert SCRIPT.exists(), "the project is not installed (make test installs it)"
        return subprocess.run(
            [str(SCRIPT), *args],
            cwd=ROOT,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [str(SCRIPT), *args],
            cwd=ROOT,
            env=self.env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def db(self) -> Any:
        if self.client is None:
            self.client = MongoClient(self.uri, serverSelectionTimeoutMS=5000)
        return self.client[self.database]

    def book(self, name: str = "book.md", text: str = BOOK) -> Path:
        path = self.out.parent / name
        path.write_text(text, encoding="utf-8")
        return path


@pytest.fixture
def cli(tmp_path: Path, embedded_db_uri: str) -> Iterator[Cli]:
    """A CLI on a fresh output folder and a fresh database of the shared test server."""
    made = Cli(tmp_path / "out", embedded_db_uri, f"cli_{uuid.uuid4().hex[:12]}")
    yield made
    with MongoClient(embedded_db_uri, serverSelectionTimeoutMS=5000) as client:
        for name in made.used | {made.database}:
            client.drop_database(name)
    if made.client is not None:
        made.client.close()


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    """``done``, asserted to have exited 0 (its output shown otherwise)."""
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def session_ids(cli: Cli) -> list[str]:
    return sorted(d["_id"] for d in cli.db()["sessions"].find({}, {"_id": 1}))


def snapshot(cli: Cli) -> dict[str, Any]:
    """Every file's bytes and mtime under the output folder, every document and index."""
    files = {
        str(path.relative_to(cli.out)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in sorted(cli.out.rglob("*"))
        if path.is_file()
    }
    folders = sorted(str(p.relative_to(cli.out)) for p in cli.out.rglob("*") if p.is_dir())
    db = cli.db()
    collections = {
        name: (
            sorted(db[name].find(), key=lambda d: str(d["_id"])),
            db[name].index_information(),
        )
        for name in sorted(db.list_collection_names())
    }
    return {"files": files, "folders": folders, "database": collections}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """A running ``illustrator serve``."""

    process: subprocess.Popen[str]
    url: str
    token: str = ""

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        if token or self.token:
            request.add_header("Authorization", f"Bearer {token or self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def wait_for(self, predicate: Any, what: str, timeout: float = 60) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            assert self.process.poll() is None, f"server died: {self.process.returncode}"
            time.sleep(0.05)  # polling the server over HTTP; the bound is the deadline
        raise AssertionError(f"timed out waiting for {what}")

    def status(self, sid: str) -> dict[str, Any]:
        return self.call("GET", f"/api/sessions/{sid}")["status"]

    def start_session(self, text: str = BOOK, moments: int = 2) -> str:
        chapters = [
            {"number": n, "title": f"Part {n}", "content": part}
            for n, part in enumerate(text.split("# Chapter")[1:], 1)
        ]
        created = self.call(
            "POST", "/api/manuscripts", {"title": "Watched", "author": "T", "chapters": chapters}
        )
        started = self.call(
            "POST",
            "/api/process",
            {"manuscript_id": created["manuscript_id"], "max_emotional_moments": moments},
        )
        return str(started["session_id"])

    def wait_final(self, sid: str) -> dict[str, Any]:
        def final() -> dict[str, Any] | None:
            record = self.call("GET", f"/api/sessions/{sid}")
            status = record["status"]["status"]
            stopped = not record["live"] and status in STOPPED
            return record["status"] if stopped else None

        return self.wait_for(final, f"session {sid} to stop")


def start_server(cli: Cli, **env: str) -> Server:
    """``illustrator serve --port 0``; its address is read from the file it records."""
    address = cli.out / "server.json"
    process = cli.start("serve", "--port", "0", **env)
    deadline = time.monotonic() + 90
    while not address.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            output = process.communicate(timeout=30)
            raise AssertionError(f"server did not record its address: {output}")
        time.sleep(0.05)  # polling a file the server writes; the bound is the deadline
    url = json.loads(address.read_text())["url"]
    tokens = cli.env(**env).get("ILLUSTRATOR_SERVER_API_TOKENS", "")
    server = Server(process, url, tokens.split(",")[0])

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(url + "/health", timeout=5) as response:
                return json.loads(response.read())["status"] == "healthy"
        except OSError:
            return False

    server.wait_for(healthy, "/health")
    return server


def stop_server(server: Server) -> str:
    server.process.send_signal(signal.SIGTERM)
    output, errors = server.process.communicate(timeout=60)
    assert server.process.returncode == 0, errors[-3000:]
    return output + errors
