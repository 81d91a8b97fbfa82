"""Fixtures of the pipeline tests: sample chapters and a fake OpenAI-compatible server."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from PIL import Image

from pipeline.manuscripts import Chapter

STORY = """The morning was quiet in the village. Anna walked to the river with her brother Tom, \
and the breeze was soft and gentle.

"Wait," Anna said. Mr. Darcy appeared at the edge of the forest. She was not afraid.

Suddenly a scream tore through the night! The monster lunged from the darkness, and Anna \
screamed in terror as the castle bells rang!

Later, by the warm hearth of the cottage, Elizabeth Bennet hugged her mother. They laughed \
with joy and relief. It was a triumph.

He bought some bread at the market and paid for it."""


@pytest.fixture
def story_chapter() -> Chapter:
    """A short chapter with calm, tense, frightening and joyful passages."""
    return Chapter(number=3, title="The Storm", content=STORY)


@dataclass
class ScriptedReply:
    """One scripted HTTP reply of the fake server."""

    status: int = 200
    body: bytes = b"{}"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    """Seconds to hold the reply (released early when the server stops)."""


@dataclass
class RecordedRequest:
    """A request the fake server received."""

    path: str
    headers: dict[str, str]
    json: Any


@dataclass
class FakeOpenAI:
    """State of the fake OpenAI-compatible server: scripted replies, recorded requests."""

    base_url: str = ""
    replies: deque[ScriptedReply] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reply_json(self, payload: Any, status: int = 200, **headers: str) -> None:
        """Queue a JSON reply."""
        self.replies.append(ScriptedReply(status, json.dumps(payload).encode(), dict(headers)))

    def reply_chat(self, content: str) -> None:
        """Queue a chat completion whose assistant message is ``content``."""
        self.reply_json(
            {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]}
        )

    def reply_image(self, image_bytes: bytes) -> None:
        """Queue an image generation reply carrying ``image_bytes`` as b64_json."""
        self.reply_json({"data": [{"b64_json": base64.b64encode(image_bytes).decode()}]})

    def reply_error(self, status: int, message: str = "boom", **headers: str) -> None:
        """Queue an OpenAI-style error reply."""
        self.reply_json({"error": {"message": message}}, status=status, **headers)

    def reply_slowly(self, seconds: float) -> None:
        """Queue a reply that arrives only after ``seconds``."""
        self.replies.append(ScriptedReply(delay=seconds))

    def next_reply(self) -> ScriptedReply:
        with self.lock:
            if self.replies:
                return self.replies.popleft()
        return ScriptedReply(500, b'{"error": {"message": "nothing scripted"}}')


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        state = self.server.state
        length = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        with state.lock:
            state.requests.append(RecordedRequest(self.path, dict(self.headers), body))
        reply = state.next_reply()
        if reply.delay and state.stopping.wait(reply.delay):
            return
        # The client may have given up already (the timeout tests).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """No request log on stderr: the tests assert on the requests themselves."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: FakeOpenAI


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    """A fake OpenAI-compatible API on 127.0.0.1 (``base_url`` ends in ``/v1``)."""
    server = _Server(("127.0.0.1", 0), _Handler)
    state = FakeOpenAI(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")
    server.state = state
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def image_bytes(fmt: str = "PNG", colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A small encoded image."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def make_image() -> Any:
    """``make_image(fmt="PNG")``: bytes of a small image in that format."""
    return image_bytes
