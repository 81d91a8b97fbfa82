"""WebSockets: ``/ws/processing/{session_id}`` (every event of one session, with replay)
and ``/ws/gallery/{manuscript_id}`` (new images and progress of a manuscript's sessions).

Live events of a session reach its sockets as one hub batch (``EventBatch``) at a time,
encoded once for all of them as ready WebSocket frames (one text frame per event). A
socket that keeps up, the common case, gets the batch in a single non-blocking
``transport.write`` straight from the hub callback: with a thousand subscribers that is a
thousand writes per batch, not a task switch, a timer and a write per event each.
Otherwise (frames already waiting, a send in progress, or unsent data piling up in the
transport) the frames go to the socket's bounded queue, drained by its writer task, so a
slow client never slows the engine. A client that falls further behind than the queue
holds gets a ``resync`` frame (with the last event it was sent) and is closed, so it
reconnects with ``?after=``; one that stops reading altogether (a send blocks for
``server.websocket_send_timeout_seconds``) is disconnected.

Sockets are not compressed (no permessage-deflate): the frames are small JSON, and
per-connection compression would make every subscriber encode every event again.

Hostile clients: at most ``server.max_websockets`` sockets are open (more get a 503
JSON reply at the handshake); client frames are capped at
``server.websocket_max_message_bytes`` (close 1009); binary frames close the socket
(1003); text frames other than ``ping`` are ignored, and a flood of pings gets at most
one queued ``pong`` at a time, so nothing a client sends is buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any, NamedTuple

from aiohttp import WSCloseCode, WSMsgType, web

from actors.engine import Engine
from actors.events import EventBatch
from actors.messages import PendingEvents
from actors.reply import Reply
from domain import SessionId, manuscript_id, session_id
from errors import DatabaseUnavailableError
from storage.records import LogEntry
from web.keys import CONFIG_KEY, ENGINE_KEY, WEBSOCKETS_KEY
from web.middlewares import WEBSOCKET_SUBPROTOCOL, error_body, origin_allowed
from web.responses import dumps, query_int
from web.sessions import find_session

logger = logging.getLogger(__name__)

routes = web.RouteTableDef()

REPLAY_PAGE = 500


class Subscriber:
    """One socket's outgoing side: a bounded queue drained by one writer task."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        server = request.app[CONFIG_KEY].server
        self.ws = ws
        self.request = request
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(server.websocket_queue_size)
        self.send_timeout = server.websocket_send_timeout_seconds
        self.overflowed = False
        self.pong_queued = False
        self.sending = False
        """The writer task holds a frame it has not finished sending."""
        self.last_sent = 0
        self.unsubscribe: Any = None

    def offer(self, frame: dict[str, Any]) -> None:
        """Enqueue a frame (loop thread); on overflow stop live delivery for good."""
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.overflowed = True
            if self.unsubscribe is not None:
                self.unsubscribe()

    def offer_pong(self) -> None:
        """Answer a client ping, with at most one pong waiting (a ping flood queues nothing)."""
        if self.pong_queued or self.overflowed:
            return
        try:
            self.queue.put_nowait(PONG)
        except asyncio.QueueFull:
            return  # events fill the queue; the client is busy enough
        self.pong_queued = True

    def offer_event(self, entry: LogEntry) -> None:
        """Enqueue an event: its JSON text is shared by every subscriber (encoded once)."""
        self.offer(_Encoded(entry.frame_json, entry.event_seq))  # type: ignore[arg-type]

    def offer_batch(self, batch: EventBatch) -> None:
        """Live events (loop thread): written at once if nothing waits before them, else queued."""
        if self.overflowed:
            return
        transport = self.request.transport
        if (
            self.queue.empty()
            and not self.sending
            and transport is not None
            and not self.ws.closed
            and not transport.is_closing()
            and transport.get_write_buffer_size() < CONGESTED_BYTES
        ):
            # Never blocks: what the kernel does not take waits in the transport's buffer,
            # and the check above keeps that bounded.
            transport.write(wire_frames(batch))
            self.last_sent = batch.entries[-1].event_seq
            return
        for entry in batch.entries:
            self.offer_event(entry)

    async def send(self, frame: dict[str, Any]) -> None:
        """Send one frame; a client that does not take it in time is disconnected.

        Raises:
            ClientNotReadingError: the send blocked for ``send_timeout`` (connection aborted).
        """
        if frame is PONG:
            self.pong_queued = False
        if isinstance(frame, _Encoded):
            text, seq = frame.text, frame.event_seq
        else:
            text, seq = dumps(frame), frame.get("event_seq")
        transport = self.request.transport
        if transport is not None and transport.get_write_buffer_size() < CONGESTED_BYTES:
            # The common case: the frame goes straight into the socket buffer. A timer per
            # send would cost more than the send itself with a thousand subscribers.
            await self.ws.send_str(text)
            if isinstance(seq, int):
                self.last_sent = seq
            return
        try:
            async with asyncio.timeout(self.send_timeout):
                await self.ws.send_str(text)
        except TimeoutError as exc:
            logger.info("websocket client %s stopped reading; disconnecting", self.request.remote)
            if self.unsubscribe is not None:
                self.unsubscribe()
            if self.request.transport is not None:
                self.request.transport.abort()
            raise ClientNotReadingError from exc
        if isinstance(seq, int):
            self.last_sent = seq

    async def write_loop(self) -> None:
        """Send queued frames; after an overflow, send ``resync`` and close."""
        try:
            while True:
                if self.overflowed and self.queue.empty():
                    await self.send(
                        {
                            "type": "resync",
                            "after": self.last_sent,
                            "message": "too far behind; reconnect with ?after=",
                        }
                    )
                    await self.ws.close(code=WSCloseCode.TRY_AGAIN_LATER, message=b"resync")
                    return
                frame = await self.queue.get()
                self.sending = True
                await self.send(frame)
                self.sending = False
        except (ConnectionResetError, ClientNotReadingError, asyncio.CancelledError):
            return


class _Encoded(NamedTuple):
    """An event frame already encoded as JSON text."""

    text: str
    event_seq: int


class ClientNotReadingError(Exception):
    """A WebSocket client stopped reading; its connection was aborted."""


PONG: dict[str, Any] = {"type": "pong"}
CONGESTED_BYTES = 64 * 1024
"""Above this much unsent data a send may block: then it runs under the send timeout."""


def wire_frames(batch: EventBatch) -> bytes:
    """The batch as unmasked, uncompressed text frames, one per event, built once per batch."""
    wire = batch.shared.get("websocket")
    if wire is None:
        wire = batch.shared["websocket"] = b"".join(
            _text_frame(entry.frame_json.encode()) for entry in batch.entries
        )
    return wire


def _text_frame(payload: bytes) -> bytes:
    """RFC 6455 section 5.2: FIN + text opcode, then the payload length, then the payload."""
    size = len(payload)
    if size < 126:
        return struct.pack("!BB", 0x81, size) + payload
    if size < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, size) + payload
    return struct.pack("!BBQ", 0x81, 127, size) + payload


def check_origin(request: web.Request) -> None:
    """A browser's handshake must come from an allowed origin (``origin_allowed``)."""
    if not origin_allowed(request):
        raise web.HTTPForbidden(reason="origin not allowed")


def _admit(request: web.Request) -> web.WebSocketResponse:
    """Reserve one of ``server.max_websockets`` slots for a new (not yet open) socket.

    The slot is taken at once, before any await, so concurrent handshakes cannot
    overshoot the cap; ``_release`` gives it back.

    Raises:
        TooManySocketsError: every slot is taken (503 before the upgrade).
    """
    server = request.app[CONFIG_KEY].server
    sockets = request.app[WEBSOCKETS_KEY]
    if len(sockets) >= server.max_websockets:
        raise TooManySocketsError(server.max_websockets)
    ws = web.WebSocketResponse(
        compress=False,  # see the module docstring
        heartbeat=server.heartbeat_seconds,
        max_msg_size=server.websocket_max_message_bytes,
        timeout=server.websocket_close_timeout_seconds,
        # Selected when offered (the web page does, beside its token): a browser fails a
        # handshake that offered subprotocols and got none back.
        protocols=(WEBSOCKET_SUBPROTOCOL,),
    )
    sockets.add(ws)
    return ws


def _release(request: web.Request, ws: web.WebSocketResponse) -> None:
    request.app[WEBSOCKETS_KEY].discard(ws)


class TooManySocketsError(Exception):
    """Every WebSocket slot is taken."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"too many open WebSockets (at most {limit}); retry later")
        self.limit = limit

    def response(self) -> web.Response:
        """The 503 JSON reply to the handshake."""
        reply = error_body(str(self), 503, {"max_websockets": self.limit})
        reply.headers["Retry-After"] = "1"
        return reply


async def _read_until_closed(ws: web.WebSocketResponse, sub: Subscriber) -> None:
    """Only the handler task reads. Clients have nothing to say but may ping; binary
    frames close the socket (1003), other text is ignored, nothing is kept."""
    async for message in ws:
        if message.type == WSMsgType.TEXT:
            if message.data in PING_TEXTS:
                sub.offer_pong()
        elif message.type == WSMsgType.BINARY:
            await ws.close(code=WSCloseCode.UNSUPPORTED_DATA, message=b"text frames only")
            return


PING_TEXTS = frozenset({"ping", '{"type": "ping"}', '{"type":"ping"}'})


async def _replay(
    engine: Engine, sid: SessionId, after: int, sub: Subscriber, known_last: int
) -> int:
    """Send stored events after ``after`` directly (before the writer starts).

    The writer first commits what is pending and names the events its database backlog
    still holds. While the database is down (breaker open) nothing here waits on it:
    the backlog's events are sent, and if events up to ``known_last`` (the snapshot's
    last_event_seq) are only in the database, a ``resync`` frame (with ``after``) comes
    first rather than silence.

    Returns the last event_seq sent.
    """
    last = after
    if engine.store is None or engine.persistence is None:
        return last
    asked = Reply.for_loop()
    engine.persistence.tell(PendingEvents(sid, after, asked))
    database_up, pending = await asked.wait(30)
    if database_up:
        last = await _replay_stored(engine, sid, last, sub)
    elif known_last > after and (not pending or pending[0].event_seq > after + 1):
        await sub.send(
            {
                "type": "resync",
                "after": after,
                "message": "database unavailable: events before the ones sent now are"
                " not available; reconnect with ?after= later",
            }
        )
    for entry in pending:
        if entry.event_seq > last:
            await sub.send(entry.to_frame())
            last = entry.event_seq
    return last


async def _replay_stored(engine: Engine, sid: SessionId, last: int, sub: Subscriber) -> int:
    assert engine.store is not None
    while True:
        try:
            entries = await engine.store.list_logs(sid, after_event_seq=last, limit=REPLAY_PAGE)
        except DatabaseUnavailableError:
            await sub.send({"type": "error", "error": "event history unavailable (database down)"})
            return last
        for entry in entries:
            await sub.send(entry.to_frame())
            last = entry.event_seq
        if len(entries) < REPLAY_PAGE:
            return last


@routes.get("/ws/processing/{session_id}")
async def processing_socket(request: web.Request) -> web.StreamResponse:
    """Snapshot, then (``?after=``) missed events, then live events: no gap, no duplicate."""
    engine = request.app[ENGINE_KEY]
    sid = session_id(request.match_info["session_id"])
    after = query_int(request, "after", -1, 0, 2**62) if request.query.get("after") else None
    check_origin(request)
    try:
        ws = _admit(request)
    except TooManySocketsError as exc:
        return exc.response()
    try:
        view = await find_session(engine, sid)  # 404 before the upgrade
        await ws.prepare(request)
        # A client that stopped reading was already closed by its writer.
        with contextlib.suppress(ClientNotReadingError):
            await _follow_session(request, engine, ws, sid, view, after)
    finally:
        _release(request, ws)
    return ws


async def _follow_session(
    request: web.Request,
    engine: Engine,
    ws: web.WebSocketResponse,
    sid: SessionId,
    view: dict[str, Any],
    after: int | None,
) -> None:
    sub = Subscriber(ws, request)
    buffered: list[LogEntry] = []
    replaying = True
    replayed = -1

    def on_batch(batch: EventBatch) -> None:
        if replaying:
            buffered.extend(batch.entries)
        elif batch.entries[0].event_seq > replayed:
            sub.offer_batch(batch)
        else:
            # A session stores its events before it publishes them, so the replay may
            # have read events whose publication comes after it: sent once, not twice.
            for entry in batch.entries:
                if entry.event_seq > replayed:
                    sub.offer_event(entry)

    # Subscribe BEFORE reading storage: whatever is published meanwhile is buffered.
    sub.unsubscribe = engine.hub.subscribe_batches(sid, on_batch)
    writer: asyncio.Task[None] | None = None
    try:
        live = engine.live_snapshot(sid)
        snapshot = live if live is not None else view
        await sub.send(
            {
                "type": "snapshot",
                "session_id": sid,
                "status": snapshot.get("status"),
                "progress": snapshot.get("progress", 0),
                "step_status": snapshot.get("step_status", {}),
                "current_chapter": snapshot.get("current_chapter"),
                "total_chapters": snapshot.get("total_chapters", 0),
                "images_generated": snapshot.get("images_generated", 0),
                "last_event_seq": snapshot.get("last_event_seq", 0),
            }
        )
        known_last = int(snapshot.get("last_event_seq") or 0)
        last = await _replay(engine, sid, after, sub, known_last) if after is not None else -1
        for entry in buffered:
            if entry.event_seq > last:
                sub.offer_event(entry)
        buffered.clear()
        replayed, replaying = last, False
        writer = asyncio.create_task(sub.write_loop())
        await _read_until_closed(ws, sub)
    finally:
        sub.unsubscribe()
        if writer is not None:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
        await ws.close()


GALLERY_TYPES = {
    "image": "new_image",
    "progress": "processing_progress",
    "complete": "processing_complete",
}


@routes.get("/ws/gallery/{manuscript_id}")
async def gallery_socket(request: web.Request) -> web.StreamResponse:
    """New images, progress and completion of every session of one manuscript."""
    engine = request.app[ENGINE_KEY]
    mid = manuscript_id(request.match_info["manuscript_id"])
    check_origin(request)
    try:
        ws = _admit(request)
    except TooManySocketsError as exc:
        return exc.response()
    try:
        await engine.load_manuscript(mid)  # 404 before the upgrade
        await ws.prepare(request)
        await _follow_gallery(request, engine, ws, mid)
    finally:
        _release(request, ws)
    return ws


async def _follow_gallery(
    request: web.Request, engine: Engine, ws: web.WebSocketResponse, mid: str
) -> None:
    sub = Subscriber(ws, request)
    ours: set[str] = {
        s["session_id"] for s in engine.hub.snapshots() if s.get("manuscript_id") == mid
    }

    def on_event(entry: LogEntry) -> None:
        kind = GALLERY_TYPES.get(entry.type)
        if entry.session_id not in ours:
            snapshot = engine.live_snapshot(entry.session_id)
            if snapshot is None or snapshot.get("manuscript_id") != mid:
                return
            ours.add(entry.session_id)
        if kind is not None:
            sub.offer({**entry.to_frame(), "type": kind, "manuscript_id": mid})

    sub.unsubscribe = engine.hub.subscribe(None, on_event)
    sub.offer({"type": "snapshot", "manuscript_id": mid, "live_sessions": sorted(ours)})
    writer = asyncio.create_task(sub.write_loop())
    try:
        await _read_until_closed(ws, sub)
    finally:
        sub.unsubscribe()
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await ws.close()


async def close_websockets(app: web.Application) -> None:
    """``on_shutdown``: close every open socket with GOING_AWAY."""
    sockets = [ws for ws in app[WEBSOCKETS_KEY] if ws.prepared]
    if sockets:
        logger.info("closing %d websockets", len(sockets))
    await asyncio.gather(
        *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
        return_exceptions=True,
    )
