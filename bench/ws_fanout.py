"""Benchmark: WebSocket event delivery latency with many subscribers of one session.

The server process (this script) runs the real aiohttp app (``create_app``, AppRunner +
TCPSite on 127.0.0.1, port 0) on a fresh output folder with the embedded SecantusDB (or
``--mongomock``), saves a manuscript and starts ONE session whose analyzer waits on a
gate. A second process connects ``--clients`` WebSockets to ``/ws/processing/{sid}`` (at
most 50 handshakes at a time); when every socket is subscribed (``hub.subscriber_count``)
the gate opens and the session runs ``--chapters`` x ``--moments`` images, each image
provider call sleeping ``--interval-ms`` (that paces the events: per image checkpoint an
``image`` and a ``progress`` event, plus step/log events around them).

Latency of one delivery = client receive time - hub publish time of that event, both
``time.monotonic()`` (CLOCK_MONOTONIC is system-wide on Linux, so the two processes share
it). The publish time is taken by wrapping ``engine.hub.publish`` on the instance (the
moment a SessionActor hands the acknowledged events to the loop), so the figure covers
loop scheduling, the hub's fan-out to 1,000 listeners, the per-socket queues and writer
tasks, JSON encoding, the kernel and the client's own loop. The frames' ``timestamp``
field is set when the event is created, *before* its checkpoint is acknowledged, so it
would add the persistence ack time; it is not used. Replayed/snapshot frames are not
counted (the clients connect without ``?after=``).

The clients run in their own process on the same 2 cores, so their work competes with
the server's and delays their own stamps. Two clients:

- ``--client raw`` (default): plain sockets on one epoll loop, parsing only frame
  headers and ``event_seq`` (``RawSocket``); each read from the kernel is stamped once,
  right after the ``recv``.
- ``--client aiohttp``: ``ClientSession(connector=TCPConnector(limit=0)).ws_connect`` and
  one task per socket, stamped when ``ws.receive()`` returns (the earlier figures). It
  spends ~3x the CPU of the raw client for the same frames.

To tell server time from client time, a batch listener subscribed after every socket
records when the hub hands it each event, i.e. when the server has written that event to
every socket ("fan-out done"); "client receive - fan-out done" is what the kernel and the
client add after that (negative for sockets written early in the fan-out).

Prints deliveries (and expected), p50/p99/max ms, publish -> fan-out done, the CPU
seconds of server, clients and database during the run, deliveries/s, events/s.
Target: p99 <= 50 ms with 1,000 subscribers.

Run: ``.venv/bin/python bench/ws_fanout.py [--clients 1000] [--chapters 5] [--moments 20]
[--interval-ms 100] [--mongomock] [--quick] [--client raw|aiohttp] [--json FILE]``.
``--quick`` = 100 clients, 2 chapters x 5 moments.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import select
import shutil
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

TARGET_P99_MS = 50.0
TARGET_CLIENTS = 1000


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


# --------------------------------------------------------------------------- client process


def _seq_of(text: str) -> int | None:
    """``event_seq`` of a frame without a full JSON parse (frames are json.dumps output)."""
    at = text.find('"event_seq": ')
    if at < 0:
        return None
    at += 13
    end = at
    while end < len(text) and text[end].isdigit():
        end += 1
    return int(text[at:end]) if end > at else None


class RawSocket:
    """One socket of the light client: RFC 6455 reduced to what is measured.

    It walks frame headers, pulls ``event_seq`` out of text frames with a regex, answers
    pings and close frames, and closes a grace second after the ``complete`` event. Every
    frame in one read from the kernel is stamped with the time of that read.
    """

    SEQ = re.compile(rb'"event_seq": (\d+)')
    COMPLETE = b'"type": "complete"'

    def __init__(
        self, sock: socket.socket, poller: select.epoll, received: list[tuple[int, float]]
    ) -> None:
        self.sock = sock
        self.poller = poller
        self.received = received
        self.buffer = bytearray()
        self.upgraded = False
        self.close_at: float | None = None
        self.closed = False

    def on_readable(self) -> None:
        """Read what the kernel has, handle every complete frame in it."""
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:
            return
        now = time.monotonic()  # after the read: every byte in ``data`` had arrived
        if not data:
            self.close(reply=False)
            return
        buf = self.buffer
        buf += data
        pos = 0
        if not self.upgraded:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                raise ConnectionError(bytes(buf[:80]).decode("latin-1"))
            self.upgraded = True
            pos = head_end + 4
        n = len(buf)
        while n - pos >= 2:
            b0, size = buf[pos], buf[pos + 1] & 0x7F  # server frames are never masked
            head = 2
            if size == 126:
                if n - pos < 4:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif size == 127:
                if n - pos < 10:
                    break
                size, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            start, end = pos + head, pos + head + size
            if end > n:
                break
            opcode = b0 & 0x0F
            if opcode == 0x1:
                match = self.SEQ.search(buf, start, end)
                if match is not None:
                    self.received.append((int(match.group(1)), now))
                if self.close_at is None and buf.find(self.COMPLETE, start, end) >= 0:
                    self.close_at = now + 1.0  # read what follows ``complete``, then stop
            elif opcode == 0x9:
                self.send(0xA, bytes(buf[start:end]))
            elif opcode == 0x8:
                self.close()
                return
            pos = end
        del buf[:pos]

    def send(self, opcode: int, payload: bytes) -> None:
        """A small client frame, masked as RFC 6455 requires (an all-zero key)."""
        frame = bytes((0x80 | opcode, 0x80 | len(payload))) + b"\0\0\0\0" + payload
        with contextlib.suppress(OSError):
            self.sock.send(frame)

    def close(self, reply: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if reply:
            self.send(0x8, (1000).to_bytes(2, "big"))
        self.poller.unregister(self.sock)
        self.sock.close()


def raw_clients_main(url: str, count: int, out: Path, timeout: float) -> None:
    """The light client: ``count`` RawSockets on one epoll loop, no asyncio.

    The aiohttp client (``--client aiohttp``) spends, per frame and per socket, a parse
    into a message object, a queue, a future and a task switch; with a thousand sockets
    in one process sharing two cores with the server, that work delays its own stamps.
    Here a ready socket costs one ``recv`` and a regex per frame. At most 50 handshakes
    are outstanding at a time, as with the aiohttp client.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    received: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    errors: list[str] = []
    poller = select.epoll()
    by_fd: dict[int, RawSocket] = {}
    deadline = time.monotonic() + timeout

    def open_socket(i: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        request = (
            f"GET {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
            sock.sendall(request)
        except OSError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            return
        sock.setblocking(False)
        poller.register(sock, select.EPOLLIN)
        by_fd[sock.fileno()] = RawSocket(sock, poller, received[i])

    def poll(wait: float) -> None:
        for fd, _ in poller.poll(wait):
            client = by_fd[fd]
            try:
                client.on_readable()
            except OSError as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
                client.close(reply=False)
            if client.closed:
                del by_fd[fd]

    opened = 0
    while sum(not c.upgraded for c in by_fd.values()) or opened < count:
        while opened < count and sum(not c.upgraded for c in by_fd.values()) < 50:
            open_socket(opened)
            opened += 1
        poll(0.05)
        if time.monotonic() > deadline:
            break
    print(f"CONNECTED {len(by_fd)} errors {len(errors)}", flush=True)
    while by_fd and time.monotonic() < deadline:
        poll(0.1)
        now = time.monotonic()
        for fd, client in list(by_fd.items()):
            if client.close_at is not None and now >= client.close_at:
                client.close()
                del by_fd[fd]
    timed_out = bool(by_fd)
    for client in by_fd.values():
        client.close(reply=False)
    out.write_text(
        json.dumps(
            {
                "received": received,
                "errors": errors[:20],
                "error_count": len(errors),
                "timed_out": timed_out,
            }
        )
    )


async def aiohttp_clients_main(url: str, count: int, out: Path, timeout: float) -> None:
    """The aiohttp client: one ``ws_connect`` and one reading task per socket."""
    received: list[list[tuple[int, float]]] = [[] for _ in range(count)]
    connected = 0
    all_connected = asyncio.Event()
    gate = asyncio.Semaphore(50)
    errors: list[str] = []

    async def one(i: int, session: aiohttp.ClientSession) -> None:
        nonlocal connected
        mine = received[i]
        try:
            async with gate:
                ws = await session.ws_connect(url, autoping=True, max_msg_size=0, heartbeat=None)
            connected += 1
            if connected >= count:
                all_connected.set()
            grace: float | None = None  # after ``complete``: read what follows it, then stop
            while True:
                try:
                    msg = await ws.receive(timeout=grace)
                except TimeoutError:
                    break
                now = time.monotonic()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                seq = _seq_of(msg.data)
                if seq is not None:
                    mine.append((seq, now))
                if '"type": "complete"' in msg.data:
                    grace = 1.0
            await ws.close()
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors.append(f"{type(exc).__name__}: {exc}")
            if connected + len(errors) >= count:
                all_connected.set()

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        tasks = [asyncio.create_task(one(i, session)) for i in range(count)]
        await all_connected.wait()
        print(f"CONNECTED {connected} errors {len(errors)}", flush=True)
        done, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
    out.write_text(
        json.dumps(
            {
                "received": received,
                "errors": errors[:20],
                "error_count": len(errors),
                "timed_out": bool(pending),
            }
        )
    )


# --------------------------------------------------------------------------- server process


def cpu_seconds() -> dict[str, float]:
    """CPU time (user + system) so far of this process and its descendants, by role (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    command: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        used[pid] = (int(fields[11]) + int(fields[12])) / tick
        command[pid] = args.decode(errors="replace")
    me = os.getpid()
    found: dict[str, float] = {}
    for pid, seconds in used.items():
        ancestor = pid
        while ancestor not in (me, 0, 1) and ancestor in parent:
            ancestor = parent[ancestor]
        if ancestor != me:
            continue
        role = "clients" if "--client-url" in command[pid] else "database"
        role = "server" if pid == me else role
        found[role] = found.get(role, 0.0) + seconds
    return found


class PacedImageGenerator:
    """Sleeps ``interval`` per image, then writes a small PNG (no fsync)."""

    def __init__(self, interval: float) -> None:
        from checkpoints import InstantImageGenerator

        self.inner = InstantImageGenerator(fsync=False)
        self.interval = interval

    def generate(self, prompt: Any, moment: Any, destination: Path) -> None:
        time.sleep(self.interval)
        self.inner.generate(prompt, moment, destination)


async def server_main(args: argparse.Namespace, base: Path) -> dict[str, Any]:
    from checkpoints import InstantPromptWriter, make_manuscript
    from restart_recovery import GateAnalyzer

    from config import config_from_mapping
    from pipeline.providers import Providers
    from web.app import create_app
    from web.keys import ENGINE_KEY

    config = config_from_mapping(
        {
            "output": {"directory": str(base / "out")},
            "server": {"max_websockets": max(2000, args.clients + 100)},
            "mongodb": {"driver": "mongomock"} if args.mongomock else {},
            "processing": {"auto_resume": False},
        },
        env=os.environ,
    )
    analyzer = GateAnalyzer(args.moments)
    providers = Providers(
        analyzer, InstantPromptWriter(), PacedImageGenerator(args.interval_ms / 1000)
    )
    app = create_app(config, providers=providers)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    engine = app[ENGINE_KEY]

    stamps: dict[int, float] = {}
    hub = engine.hub
    original_publish = hub.publish

    def stamped_publish(entries: Any) -> None:
        now = time.monotonic()
        for entry in entries:
            stamps.setdefault(entry.event_seq, now)
        original_publish(entries)

    hub.publish = stamped_publish  # type: ignore[method-assign]  # this instance only

    done = asyncio.Event()
    hub.subscribe(None, lambda e: done.set() if e.type in ("complete", "error") else None)
    lags: list[float] = []

    mid = await engine.save_manuscript(make_manuscript(args.chapters))
    snap = await engine.start_session(mid, max_emotional_moments=args.moments)
    sid = snap["session_id"]
    url = f"ws://127.0.0.1:{port}/ws/processing/{sid}"
    results_path = base / "clients.json"
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--client-url",
        url,
        "--clients",
        str(args.clients),
        "--client-out",
        str(results_path),
        "--timeout",
        str(args.timeout),
        "--client",
        args.client,
        stdout=asyncio.subprocess.PIPE,
    )
    assert client.stdout is not None
    t_connect = time.monotonic()
    line = (await asyncio.wait_for(client.stdout.readline(), args.timeout)).decode().strip()
    connect_seconds = time.monotonic() - t_connect
    print(f"clients: {line} in {connect_seconds:.1f}s", flush=True)
    for _ in range(200):
        if hub.subscriber_count(sid) >= args.clients:
            break
        await asyncio.sleep(0.05)
    subscribers = hub.subscriber_count(sid)
    # A batch listener subscribed after every socket is handed each event after all of
    # them: when the server has written an event to every socket ("fan-out done").
    fanned_out: dict[int, float] = {}

    def on_fanned_out(batch: Any) -> None:
        now = time.monotonic()
        for entry in batch.entries:
            fanned_out.setdefault(entry.event_seq, now)

    hub.subscribe_batches(sid, on_fanned_out)
    first_live_seq = max(stamps, default=0) + 1  # events from here on reach every subscriber

    async def probe() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append((time.perf_counter() - before - 0.01) * 1000)

    probe_task = asyncio.create_task(probe())
    t_run = time.monotonic()
    cpu_before = cpu_seconds()
    analyzer.gate.set()
    await asyncio.wait_for(done.wait(), args.timeout)
    run_seconds = time.monotonic() - t_run
    cpu_after = cpu_seconds()
    cpu = {role: cpu_after[role] - cpu_before.get(role, 0.0) for role in cpu_after}
    await asyncio.wait_for(client.wait(), args.timeout)
    await probe_task
    data = json.loads(results_path.read_text())
    threads = threading.active_count()
    await runner.cleanup()

    latencies: list[float] = []
    per_seq_count: dict[int, int] = {}
    for frames in data["received"]:
        for seq, t in frames:
            if seq < first_live_seq or seq not in stamps:
                continue
            latencies.append((t - stamps[seq]) * 1000)
            per_seq_count[seq] = per_seq_count.get(seq, 0) + 1
    live_events = [s for s in stamps if s >= first_live_seq]
    server_ms = [(fanned_out[s] - stamps[s]) * 1000 for s in live_events if s in fanned_out]
    after_server_ms = [
        (t - fanned_out[seq]) * 1000
        for frames in data["received"]
        for seq, t in frames
        if seq >= first_live_seq and seq in fanned_out
    ]
    expected = len(live_events) * args.clients
    return {
        "clients": args.clients,
        "subscribers": subscribers,
        "client_errors": data["error_count"],
        "client_error_examples": data["errors"][:3],
        "client_timed_out": data["timed_out"],
        "connect_seconds": connect_seconds,
        "events": len(live_events),
        "deliveries": len(latencies),
        "expected": expected,
        "run_seconds": run_seconds,
        "events_per_s": len(live_events) / run_seconds,
        "deliveries_per_s": len(latencies) / run_seconds,
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": max(latencies) if latencies else float("nan"),
        "fanned_out_p50_ms": percentile(server_ms, 0.50),
        "fanned_out_p99_ms": percentile(server_ms, 0.99),
        "fanned_out_max_ms": max(server_ms) if server_ms else float("nan"),
        "receive_after_fan_out_p50_ms": percentile(after_server_ms, 0.50),
        "receive_after_fan_out_p99_ms": percentile(after_server_ms, 0.99),
        "loop_lag_p99_ms": percentile(lags, 0.99),
        "loop_lag_max_ms": max(lags) if lags else float("nan"),
        "threads": threads,
        "database": "mongomock" if args.mongomock else "embedded",
        "interval_ms": args.interval_ms,
        "client": args.client,
        "cpu_seconds": cpu,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--chapters", type=int, default=5)
    parser.add_argument("--moments", type=int, default=20, help="images per chapter, 1..20")
    parser.add_argument("--interval-ms", type=float, default=100.0, help="sleep per image call")
    parser.add_argument("--mongomock", action="store_true", help="in-process mongomock database")
    parser.add_argument("--quick", action="store_true", help="100 clients, 2 chapters x 5 moments")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="client process: raw = light protocol-level sockets, aiohttp = ws_connect + tasks",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--client-url", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--client-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_url:
        client_args = (args.client_url, args.clients, args.client_out, args.timeout)
        if args.client == "raw":
            raw_clients_main(*client_args)
        else:
            asyncio.run(aiohttp_clients_main(*client_args))
        return 0
    if args.quick:
        args.clients, args.chapters, args.moments = 100, 2, 5
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    base = Path(tempfile.mkdtemp(prefix="illustrator-wsfanout-"))
    print(
        f"{os.cpu_count()} CPUs; load {os.getloadavg()}; {args.clients} clients,"
        f" {args.chapters} chapters x {args.moments} images, {args.interval_ms:.0f} ms per image",
        flush=True,
    )
    try:
        r = asyncio.run(server_main(args, base))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(
        f"\nsubscribers {r['subscribers']}/{r['clients']}"
        f" (connected in {r['connect_seconds']:.1f}s),"
        f" client errors {r['client_errors']} {r['client_error_examples']}"
        f"{', CLIENT TIMEOUT' if r['client_timed_out'] else ''}"
    )
    print(
        f"events {r['events']} in {r['run_seconds']:.1f}s ({r['events_per_s']:.0f}/s);"
        f" deliveries {r['deliveries']} of {r['expected']} expected ({r['deliveries_per_s']:.0f}/s)"
    )
    print(
        f"delivery latency p50 {r['p50_ms']:.1f} ms, p90 {r['p90_ms']:.1f} ms,"
        f" p99 {r['p99_ms']:.1f} ms, max {r['max_ms']:.1f} ms;"
        f" server loop lag p99 {r['loop_lag_p99_ms']:.1f} ms, max {r['loop_lag_max_ms']:.1f} ms"
    )
    print(
        f"server: publish -> written to every socket p50 {r['fanned_out_p50_ms']:.1f} ms,"
        f" p99 {r['fanned_out_p99_ms']:.1f} ms, max {r['fanned_out_max_ms']:.1f} ms;"
        f" client receive - that p50 {r['receive_after_fan_out_p50_ms']:.1f} ms,"
        f" p99 {r['receive_after_fan_out_p99_ms']:.1f} ms"
    )
    cpu = r["cpu_seconds"]
    print(
        f"CPU during the run ({r['run_seconds']:.1f} s, {r['client']} client): "
        + ", ".join(f"{role} {cpu[role]:.1f} s" for role in sorted(cpu))
        + f"; load average now {os.getloadavg()[0]:.2f}"
    )
    verdict = "MET" if r["p99_ms"] <= TARGET_P99_MS else "MISSED"
    note = "" if r["clients"] >= TARGET_CLIENTS else f" (only {r['clients']} clients)"
    print(
        f"target: p99 <= {TARGET_P99_MS:.0f} ms with {TARGET_CLIENTS} subscribers: {verdict}{note}"
    )
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    ok = r["deliveries"] == r["expected"] and not r["client_errors"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
