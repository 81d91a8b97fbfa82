"""WebSocket fan-out: one frame per event, in order, for every subscriber.

Live events reach a socket either written straight from the hub callback (the socket is
keeping up) or through its queue and writer task (frames already waiting, or unsent data
piling up); either way the client sees each event once, as its own text frame, in order.
The EventHub hands each session's events to its batch listeners as one shared batch.
"""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from conftest import create_manuscript, start
from tests_support import EventRecorder

from actors.events import FANOUT_CHUNK, EventBatch, EventHub
from storage.records import LogEntry
from web.keys import CONFIG_KEY, ENGINE_KEY
from web.sessions import wait_until_stopped
from web.websocket import CONGESTED_BYTES, Subscriber, wire_frames

pytestmark = pytest.mark.timeout(90)


def entry(sid: str, seq: int, filler: int = 0) -> LogEntry:
    return LogEntry(
        session_id=sid,  # type: ignore[arg-type]
        event_seq=seq,
        type="log",  # type: ignore[arg-type]
        payload={"level": "info", "message": "x" * filler, "n": seq},
    )


def text_frames(data: bytes) -> list[str]:
    """The payloads of a run of unmasked server text frames (RFC 6455 section 5.2)."""
    texts, pos = [], 0
    while pos < len(data):
        assert data[pos] == 0x81, "FIN + text opcode, no compression bit"
        size, pos = data[pos + 1], pos + 2
        if size == 126:
            size, pos = int.from_bytes(data[pos : pos + 2], "big"), pos + 2
        elif size == 127:
            size, pos = int.from_bytes(data[pos : pos + 8], "big"), pos + 8
        texts.append(data[pos : pos + size].decode())
        pos += size
    return texts


# --------------------------------------------------------------------------- the hub


def test_batch_listeners_of_a_session_share_one_batch_with_its_events_in_order() -> None:
    hub = EventHub()  # no loop: delivered in the publishing thread
    first: list[EventBatch] = []
    second: list[EventBatch] = []
    each: list[LogEntry] = []
    other: list[EventBatch] = []
    hub.subscribe_batches("s1", first.append)
    hub.subscribe_batches("s1", second.append)
    hub.subscribe("s1", each.append)
    hub.subscribe_batches("s2", other.append)
    assert hub.subscriber_count("s1") == 3

    hub.publish([entry("s1", 1), entry("s2", 1), entry("s1", 2)])

    assert len(first) == 1 and first[0] is second[0]
    assert [e.event_seq for e in first[0].entries] == [1, 2]
    assert [e.event_seq for e in each] == [1, 2]
    assert [(e.session_id, e.event_seq) for e in other[0].entries] == [("s2", 1)]
    assert hub.published == 3


async def test_events_published_before_the_loop_gets_to_them_arrive_as_one_batch() -> None:
    hub = EventHub(asyncio.get_running_loop())
    delivered: asyncio.Future[EventBatch] = asyncio.get_running_loop().create_future()
    each: list[int] = []
    hub.subscribe_batches("s1", delivered.set_result)
    hub.subscribe("s1", lambda e: each.append(e.event_seq))

    hub.publish([entry("s1", 1)])  # three publishes, one loop callback
    hub.publish([entry("s1", 2), entry("s1", 3)])
    hub.publish([entry("s1", 4)])

    batch = await delivered
    assert [e.event_seq for e in batch.entries] == [1, 2, 3, 4] == each
    assert hub.published == 4


async def test_events_published_during_a_fan_out_join_it_in_order_exactly_once() -> None:
    loop = asyncio.get_running_loop()
    hub = EventHub(loop)
    count = 2 * FANOUT_CHUNK + 10  # three chunks, one loop callback each
    heard: list[list[list[int]]] = [[] for _ in range(count)]
    all_heard_both = asyncio.Event()
    complete = 0

    def listener(i: int) -> Any:
        def on_batch(batch: EventBatch) -> None:
            nonlocal complete
            heard[i].append([e.event_seq for e in batch.entries])
            if i == 5 and batch.entries[0].event_seq == 1:
                hub.publish([entry("s1", 2)])  # mid-way through the first chunk
            if sum(len(b) for b in heard[i]) == 2:
                complete += 1
                if complete == count:
                    all_heard_both.set()

        return on_batch

    for i in range(count):
        hub.subscribe_batches("s1", listener(i))
    hub.publish([entry("s1", 1)])
    await all_heard_both.wait()

    # Reached before event 2 was published: two batches; reached after: one with both.
    assert all(heard[i] == [[1], [2]] for i in range(FANOUT_CHUNK))
    assert all(heard[i] == [[1, 2]] for i in range(FANOUT_CHUNK, count))


async def test_a_listener_that_unsubscribes_during_a_fan_out_hears_nothing_more() -> None:
    hub = EventHub(asyncio.get_running_loop())
    count = FANOUT_CHUNK + 10
    heard: list[list[int]] = [[] for _ in range(count)]
    last_heard = asyncio.Event()
    unsubscribers = []

    def listener(i: int) -> Any:
        def on_batch(batch: EventBatch) -> None:
            heard[i].extend(e.event_seq for e in batch.entries)
            if i == 0 and batch.entries[0].event_seq == 1:
                unsubscribers[-1]()  # the last one, due in the second chunk
            if i == count - 2 and heard[i][-1] == 2:
                last_heard.set()

        return on_batch

    for i in range(count):
        unsubscribers.append(hub.subscribe_batches("s1", listener(i)))
    hub.publish([entry("s1", 1)])
    hub.publish([entry("s1", 2)])
    await last_heard.wait()
    assert heard[-1] == [] and all(h == [1, 2] for h in heard[:-1])
    assert hub.subscriber_count("s1") == count - 1


def test_an_unsubscribed_batch_listener_hears_nothing_more() -> None:
    hub = EventHub()
    heard: list[EventBatch] = []
    unsubscribe = hub.subscribe_batches("s1", heard.append)
    hub.publish([entry("s1", 1)])
    unsubscribe()
    unsubscribe()  # twice is harmless
    hub.publish([entry("s1", 2)])
    assert [b.entries[0].event_seq for b in heard] == [1]
    assert hub.subscriber_count("s1") == 0


def test_a_batch_is_encoded_once_as_one_text_frame_per_event() -> None:
    # Payload lengths on each side of the 7-bit and 16-bit length encodings.
    events = [entry("s1", 1), entry("s1", 2, filler=200), entry("s1", 3, filler=70_000)]
    batch = EventBatch("s1", events)
    wire = wire_frames(batch)
    assert wire_frames(batch) is wire
    assert [json.loads(t) for t in text_frames(wire)] == [e.to_frame() for e in events]


# --------------------------------------------------------------------------- one socket


class FakeTransport:
    """Records writes; ``backlog`` plays the unsent data an asyncio transport would hold."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.backlog = 0

    def write(self, data: bytes) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return self.backlog

    def is_closing(self) -> bool:
        return False


class FakeSocket:
    """The WebSocketResponse side a Subscriber uses: ``closed`` and ``send_str``."""

    closed = False

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport

    async def send_str(self, text: str) -> None:
        payload = text.encode()
        assert len(payload) < 1 << 16
        head = bytes((0x81, len(payload))) if len(payload) < 126 else bytes((0x81, 126))
        extended = b"" if len(payload) < 126 else len(payload).to_bytes(2, "big")
        self.transport.write(head + extended + payload)


async def test_a_live_batch_waits_behind_queued_frames_then_goes_straight_out_again(
    client: TestClient,
) -> None:
    transport = FakeTransport()
    request = SimpleNamespace(
        app={CONFIG_KEY: client.app[CONFIG_KEY]}, transport=transport, remote="test"
    )
    sub = Subscriber(FakeSocket(transport), request)  # type: ignore[arg-type]

    def seqs() -> list[int]:
        return [json.loads(t)["event_seq"] for t in text_frames(bytes(transport.written))]

    sub.offer_batch(EventBatch("s1", [entry("s1", 1), entry("s1", 2)]))
    assert seqs() == [1, 2] and sub.queue.empty()  # written at once

    transport.backlog = CONGESTED_BYTES  # the client is not taking data
    sub.offer_batch(EventBatch("s1", [entry("s1", 3)]))
    transport.backlog = 0
    sub.offer_batch(EventBatch("s1", [entry("s1", 4), entry("s1", 5)]))
    assert seqs() == [1, 2] and sub.queue.qsize() == 3  # 4 and 5 must not overtake 3

    writer = asyncio.create_task(sub.write_loop())
    while not sub.queue.empty() or sub.sending:
        await asyncio.sleep(0)  # a drain of the loop while the writer empties the queue
    assert seqs() == [1, 2, 3, 4, 5]

    sub.offer_batch(EventBatch("s1", [entry("s1", 6)]))
    assert seqs() == [1, 2, 3, 4, 5, 6] and sub.last_sent == 6
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)


# --------------------------------------------------------------------------- over the wire


async def finished_session(client: TestClient) -> str:
    """A finished, no longer live session of a one-chapter manuscript."""
    recorder = EventRecorder(client.app[ENGINE_KEY])
    mid = await create_manuscript(client, chapters=1)
    sid = (await start(client, mid, max_emotional_moments=1))["session_id"]
    assert await recorder.wait_final(sid, timeout=30) == "completed"
    assert await wait_until_stopped(client.app[ENGINE_KEY], sid)
    return str(sid)


async def read_events(ws: aiohttp.ClientWebSocketResponse, last: int) -> list[dict[str, Any]]:
    """Event frames up to and including event ``last`` (one text frame each)."""
    frames = []
    while True:
        message = await ws.receive(timeout=20)
        assert message.type == aiohttp.WSMsgType.TEXT, message
        frame = json.loads(message.data)
        frames.append(frame)
        if frame.get("event_seq") == last:
            return frames


async def test_a_burst_reaches_every_subscriber_once_per_event_in_order_uncompressed(
    client: TestClient,
) -> None:
    sid = await finished_session(client)
    sockets = [
        await client.ws_connect(f"/ws/processing/{sid}", compress=15)  # asks for deflate
        for _ in range(20)
    ]
    for ws in sockets:
        assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
        assert ws.compress == 0  # not granted: one encoding serves every subscriber
    burst = [entry(sid, 50_001 + i, filler=(0, 300, 70_000)[i % 3]) for i in range(7)]
    last = entry(sid, 50_008)
    client.app[ENGINE_KEY].hub.publish(burst)
    client.app[ENGINE_KEY].hub.publish([last])
    for ws in sockets:
        frames = await read_events(ws, 50_008)
        assert frames == [e.to_frame() for e in [*burst, last]]
    for ws in sockets:
        await ws.close()


async def test_a_client_that_reads_late_still_gets_every_event_in_order(
    client: TestClient,
) -> None:
    sid = await finished_session(client)
    ws = await client.ws_connect(f"/ws/processing/{sid}")
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    hub = client.app[ENGINE_KEY].hub
    # ~13 MB published before the client reads a byte: far beyond the socket buffers, so
    # later batches find the transport congested and go through the socket's queue
    # (1,000 frames by default: 800 fit) while earlier ones went straight out.
    seq = 60_000
    for _ in range(80):
        hub.publish([entry(sid, seq + i, filler=16 * 1024) for i in range(1, 11)])
        seq += 10
        await asyncio.sleep(0)  # let the hub callback run between publishes
    frames = await read_events(ws, seq)
    assert [f["event_seq"] for f in frames] == list(range(60_001, seq + 1))
    await ws.close()


async def test_events_the_replay_read_before_their_publication_are_sent_once(
    client: TestClient,
) -> None:
    sid = await finished_session(client)
    engine = client.app[ENGINE_KEY]
    stored = await engine.store.list_logs(sid, limit=10_000)
    last = stored[-1].event_seq
    # A session stores its events, then publishes them once acknowledged: a socket that
    # replays in between reads them from the store before the hub hands them out.
    late = [entry(sid, last + 1), entry(sid, last + 2)]
    await engine.store.log_events(late)
    ws = await client.ws_connect(f"/ws/processing/{sid}?after={last}")
    assert (await ws.receive_json(timeout=10))["type"] == "snapshot"
    replayed = await read_events(ws, last + 2)
    assert [f["event_seq"] for f in replayed] == [last + 1, last + 2]

    engine.hub.publish([late[1]])  # all replayed already
    engine.hub.publish([*late, entry(sid, last + 3)])  # partly replayed
    engine.hub.publish([entry(sid, last + 4)])

    live = await read_events(ws, last + 4)
    assert [f["event_seq"] for f in live] == [last + 3, last + 4]
    await ws.close()
