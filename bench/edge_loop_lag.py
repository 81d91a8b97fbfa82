"""How long one large upload or export stalls the server's event loop.

Serves the app (embedded database, output in a temp folder) on a loopback port from a
thread with its own event loop and, from the main thread, sends a 10 MB Markdown upload,
a 10 MB JSON manuscript body and an HTML export of that manuscript. Meanwhile a ticker on
the server's loop measures how late it runs a 1 ms timer: the worst lateness is the stall
every other request and WebSocket of the server sees.

    .venv/bin/python bench/edge_loop_lag.py [--mb 10] [--runs 3] [--driver mongomock]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
from collections.abc import Awaitable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from config import config_from_mapping  # noqa: E402
from web.app import create_app  # noqa: E402

T = TypeVar("T")
PARAGRAPH = "The storm broke over the dark castle and Mara screamed in terror. " * 15 + "\n\n"


async def worst_lag(stop: asyncio.Event) -> float:
    """The largest delay (ms) of a 1 ms sleep until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    while not stop.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        worst = max(worst, (loop.time() - before - 0.001) * 1000)
    return worst


class ServerThread:
    """The app on a loopback port, served by a thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self.runner = web.AppRunner(app)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(120)

    def stop(self) -> None:
        self.call(self.runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)


async def measured(
    server: ServerThread, request: Awaitable[aiohttp.ClientResponse]
) -> tuple[int, bytes, float]:
    """Status, body and the server loop's worst lag (ms) while the request was answered."""
    loop = asyncio.get_running_loop()
    server_stop = await asyncio.wrap_future(
        asyncio.run_coroutine_threadsafe(_make_event(), server.loop)
    )
    ticker = asyncio.run_coroutine_threadsafe(worst_lag(server_stop), server.loop)
    response = await request
    body = await response.read()
    server.loop.call_soon_threadsafe(server_stop.set)
    lag = await loop.run_in_executor(None, ticker.result, 60)
    return response.status, body, lag


async def _make_event() -> asyncio.Event:
    return asyncio.Event()


async def run(megabytes: int, runs: int, driver: str) -> None:
    chapters = 20
    per_chapter = max(1, megabytes * 1024 * 1024 // chapters // len(PARAGRAPH))
    text = "".join(f"## Chapter {n}\n\n" + PARAGRAPH * per_chapter for n in range(1, chapters + 1))
    document = {
        "title": "Big",
        "author": "Bench",
        "chapters": [
            {"number": n, "title": f"Part {n}", "content": PARAGRAPH * per_chapter}
            for n in range(1, chapters + 1)
        ],
    }
    body = json.dumps(document).encode()
    mongodb = {"driver": "mongomock", "uri": "mongodb://unused"} if driver == "mongomock" else {}
    results: dict[str, list[float]] = {"upload .md": [], "JSON body": [], "export html": []}
    with tempfile.TemporaryDirectory() as tmp:
        config = config_from_mapping(
            {
                "server": {"max_body_bytes": 64 * 1024 * 1024},
                "mongodb": mongodb,
                "output": {"directory": str(Path(tmp) / "out")},
                "persistence": {"fsync": False},
                "processing": {"auto_resume": False},
            },
            env={},
        )
        server = ServerThread(create_app(config))
        server.start()
        try:
            async with aiohttp.ClientSession(f"http://127.0.0.1:{server.port}") as http:
                for _ in range(runs):
                    form = aiohttp.FormData()
                    form.add_field("file", text.encode(), filename="big.md")
                    status, _, lag = await measured(
                        server, http.post("/api/manuscripts", data=form)
                    )
                    assert status == 201, status
                    results["upload .md"].append(lag)
                    status, reply, lag = await measured(
                        server,
                        http.post(
                            "/api/manuscripts",
                            data=body,
                            headers={"Content-Type": "application/json"},
                        ),
                    )
                    assert status == 201, status
                    results["JSON body"].append(lag)
                    mid = json.loads(reply)["manuscript_id"]
                    status, _, lag = await measured(
                        server, http.post(f"/api/manuscripts/{mid}/export?format=html")
                    )
                    assert status == 201, status
                    results["export html"].append(lag)
        finally:
            server.stop()
    print(f"{len(text) / 1e6:.1f} MB of text, {chapters} chapters, {runs} runs, {driver}")
    for name, lags in results.items():
        print(
            f"  {name:12s} worst loop lag: median {statistics.median(lags):6.1f} ms, "
            f"max {max(lags):6.1f} ms"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--driver", choices=["embedded", "mongomock"], default="embedded")
    args = parser.parse_args()
    asyncio.run(run(args.mb, args.runs, args.driver))


if __name__ == "__main__":
    main()
