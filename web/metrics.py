"""``GET /metrics``: Prometheus text exposition of sessions and persistence."""

from __future__ import annotations

from collections import Counter
from typing import Any

from aiohttp import web

from actors.engine import Engine
from actors.persistence.stats import published
from domain import LIVE_STATUSES, RESUMABLE_STATUSES
from errors import DatabaseUnavailableError
from web.keys import ENGINE_KEY

routes = web.RouteTableDef()

STORED_STATUSES = tuple(str(s) for s in RESUMABLE_STATUSES)
"""Statuses counted by the store (one count each, no document read); live ones come
from memory."""


_PERSISTENCE_COUNTS = (
    ("batches", "counter", "Group commits written."),
    ("checkpoints", "counter", "Checkpoints persisted."),
    ("events", "counter", "Events persisted."),
    ("files_written", "counter", "JSON files written."),
    ("db_batches", "counter", "Database bulk writes."),
    ("db_failures", "counter", "Failed database writes."),
    ("backlog_batches", "gauge", "Batches waiting for the database."),
    ("backlog_records", "gauge", "Records waiting for the database."),
    ("leases", "gauge", "Session leases this instance holds and renews."),
    ("fenced_sessions", "counter", "Sessions whose lease another instance took over."),
    ("quarantined", "counter", "Records the database refused, in sessions/quarantine/."),
    ("largest_batch", "gauge", "Largest batch so far."),
)
"""The writer's counters: key in its published stats, metric type, help text."""


def _line(lines: list[str], name: str, value: float, labels: str = "") -> None:
    lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")


def _header(lines: list[str], name: str, help_text: str, kind: str) -> None:
    lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Sessions by status, persistence batches, backlog and acknowledgement latency."""
    engine = request.app[ENGINE_KEY]
    lines: list[str] = []
    await _session_lines(lines, engine)
    # What the writer last published: a scrape never waits behind a busy writer.
    stats = published(engine.persistence.actor_urn) if engine.persistence else published("")
    _persistence_lines(lines, stats)
    _latency_lines(lines, stats)
    _batch_size_lines(lines, stats)
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )


async def _session_lines(lines: list[str], engine: Engine) -> None:
    """Live sessions (memory), stopped resumable ones (database), events published."""
    live = Counter(str(s.get("status")) for s in engine.hub.snapshots())
    _header(lines, "illustrator_live_sessions", "Live sessions by status (memory).", "gauge")
    for status in map(str, LIVE_STATUSES):
        _line(lines, "illustrator_live_sessions", live.get(status, 0), f'status="{status}"')
    if engine.store is not None:
        try:
            counts = {
                status: await engine.store.count_sessions(statuses=[status])
                for status in STORED_STATUSES
            }
        except DatabaseUnavailableError:
            counts = None
        if counts is not None:
            name = "illustrator_stored_sessions"
            _header(lines, name, "Stopped, resumable sessions by status (database).", "gauge")
            for status in STORED_STATUSES:
                _line(lines, name, counts.get(status, 0), f'status="{status}"')
    name = "illustrator_events_published_total"
    _header(lines, name, "Events delivered to listeners.", "counter")
    _line(lines, name, engine.hub.published)


def _persistence_lines(lines: list[str], stats: dict[str, Any]) -> None:
    """The writer's counters and whether its database circuit breaker is open."""
    for key, kind, help_text in _PERSISTENCE_COUNTS:
        name = f"illustrator_persistence_{key}" + ("_total" if kind == "counter" else "")
        _header(lines, name, help_text, kind)
        _line(lines, name, stats.get(key, 0))
    name = "illustrator_persistence_breaker_open"
    _header(lines, name, "1 while the database circuit breaker is open.", "gauge")
    _line(lines, name, int(bool(stats.get("breaker_open"))))


def _latency_lines(lines: list[str], stats: dict[str, Any]) -> None:
    """Checkpoint acknowledgement latency as a histogram, in seconds."""
    name = "illustrator_persistence_ack_latency_seconds"
    _header(lines, name, "Checkpoint acknowledgement latency.", "histogram")
    cumulative = 0
    counts = stats["ack_latency_counts"]
    for bound, count in zip(stats["ack_latency_buckets_ms"], counts, strict=False):
        cumulative += count
        _line(lines, f"{name}_bucket", cumulative, f'le="{bound / 1000:g}"')
    total = sum(counts)
    _line(lines, f"{name}_bucket", total, 'le="+Inf"')
    _line(lines, f"{name}_sum", stats["ack_latency_sum_ms"] / 1000)
    _line(lines, f"{name}_count", total)


def _batch_size_lines(lines: list[str], stats: dict[str, Any]) -> None:
    """How many batches had each number of records."""
    name = "illustrator_persistence_batch_size"
    _header(lines, name, "Batches by number of records.", "gauge")
    for size, count in sorted(
        stats.get("batch_size_counts", {}).items(), key=lambda kv: int(kv[0])
    ):
        _line(lines, name, count, f'size="{size}"')
