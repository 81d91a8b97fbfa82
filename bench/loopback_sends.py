"""Benchmark: the kernel's floor under the WebSocket fan-out, plain sends to N loopback sockets.

The server's part of ``bench/ws_fanout.py`` is one ``send`` per socket per event batch, and
py-spy shows 95 % of the hub's fan-out inside that system call. This script measures the
same thing with nothing of ours around it: one process holds ``--sockets`` accepted TCP
sockets on 127.0.0.1 (non-blocking, ``TCP_NODELAY`` as asyncio sets it) and sends one
frame-sized payload to each, a *pass*, ``--passes`` times, ``--gap-ms`` apart; a forked
child reads every socket on one epoll loop, as the benchmark's raw client does. A pass is
timed from its first send to its last (``--threads`` > 1: the sockets split among that many
threads, timed until all are done; the system call releases the GIL).

Prints per thread count the pass time p50/p90/p99 in ms and the cost per socket in us.

Run: ``.venv/bin/python bench/loopback_sends.py [--sockets 1000] [--passes 150]
[--threads 1,2,4] [--frame-bytes 608] [--gap-ms 30]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import socket
import threading
import time
from typing import Any


def reader(port: int, sockets: int, expected_bytes: int) -> None:
    """The child: connect every socket, then read until every byte of every pass arrived."""
    poller = select.epoll()
    by_fd: dict[int, socket.socket] = {}
    for _ in range(sockets):
        conn = socket.create_connection(("127.0.0.1", port))
        conn.setblocking(False)
        poller.register(conn.fileno(), select.EPOLLIN)
        by_fd[conn.fileno()] = conn
    received = 0
    while received < expected_bytes:
        for fd, _ in poller.poll(1):
            with contextlib.suppress(BlockingIOError):
                received += len(by_fd[fd].recv(65536))


def timed_passes(socks: list[socket.socket], frame: bytes, threads: int, args: Any) -> list[float]:
    """Seconds per pass, sending ``frame`` once to every socket per pass."""
    times: list[float] = []
    if threads == 1:
        for _ in range(args.passes):
            started = time.perf_counter()
            for sock in socks:
                sock.send(frame)
            times.append(time.perf_counter() - started)
            time.sleep(args.gap_ms / 1000)
        return times
    parts = [socks[i::threads] for i in range(threads)]
    go = [threading.Event() for _ in range(threads)]
    done = threading.Barrier(threads + 1)

    def sender(index: int) -> None:
        for _ in range(args.passes):
            go[index].wait()
            go[index].clear()
            for sock in parts[index]:
                sock.send(frame)
            done.wait()

    workers = [threading.Thread(target=sender, args=(i,), daemon=True) for i in range(threads)]
    for worker in workers:
        worker.start()
    for _ in range(args.passes):
        started = time.perf_counter()
        for event in go:
            event.set()
        done.wait()
        times.append(time.perf_counter() - started)
        time.sleep(args.gap_ms / 1000)
    return times


def run(threads: int, args: Any) -> list[float]:
    frame = b"x" * args.frame_bytes
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(args.sockets)
    port = listener.getsockname()[1]
    child = os.fork()
    if child == 0:  # pragma: no cover - the reading process
        try:
            reader(port, args.sockets, args.sockets * args.passes * len(frame))
        finally:
            os._exit(0)
    socks: list[socket.socket] = []
    for _ in range(args.sockets):
        sock, _ = listener.accept()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
    try:
        return timed_passes(socks, frame, threads, args)
    finally:
        os.waitpid(child, 0)
        for sock in socks:
            sock.close()
        listener.close()


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sockets", type=int, default=1000)
    parser.add_argument("--passes", type=int, default=150)
    parser.add_argument("--threads", default="1,2,4", help="sender threads, comma-separated")
    parser.add_argument("--frame-bytes", type=int, default=608, help="two ~300-byte events")
    parser.add_argument("--gap-ms", type=float, default=30.0)
    args = parser.parse_args()
    counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if args.sockets < 1 or args.passes < 1 or not counts or min(counts) < 1:
        parser.error("need --sockets >= 1, --passes >= 1 and thread counts >= 1")
    print(
        f"{args.sockets} loopback sockets, {args.frame_bytes} bytes each per pass,"
        f" {args.passes} passes {args.gap_ms:g} ms apart; {os.cpu_count()} CPUs,"
        f" load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for threads in counts:
        times = run(threads, args)
        p50, p90, p99 = (1000 * percentile(times, q) for q in (0.5, 0.9, 0.99))
        print(
            f"  {threads} sender thread{'s' if threads > 1 else ''}: pass p50 {p50:.1f} ms,"
            f" p90 {p90:.1f} ms, p99 {p99:.1f} ms"
            f" ({1000 * p50 / args.sockets:.1f} us per socket at p50)"
        )


if __name__ == "__main__":
    main()
