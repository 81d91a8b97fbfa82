"""``GET /metrics``: Prometheus text exposition of sessions and persistence."""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from actors.persistence.stats import published
from domain import LIVE_STATUSES, RESUMABLE_STATUSES
from errors import DatabaseUnavailableError
from web.keys import ENGINE_KEY

routes = web.RouteTableDef()

STORED_STATUSES = tuple(str(s) for s in RESUMABLE_STATUSES)
"""Statuses counted by the store (one count each, no document read); live ones come
from memory."""


def _line(lines: list[str], name: str, value: float, labels: str = "") -> None:
    lines.append(f"{name}{{{labels}}} {value}" if labels else f"{name} {value}")


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    """Sessions by status, persistence batches, backlog and acknowledgement latency."""
    engine = request.app[ENGINE_KEY]
    lines: list[str] = []
    live = Counter(str(s.get("status")) for s in engine.hub.snapshots())
    lines += [
        "# HELP illustrator_live_sessions Live sessions by status (memory).",
        "# TYPE illustrator_live_sessions gauge",
    ]
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
            lines += [
                "# HELP illustrator_stored_sessions"
                " Stopped, resumable sessions by status (database).",
                "# TYPE illustrator_stored_sessions gauge",
            ]
            for status in STORED_STATUSES:
                _line(
                    lines,
                    "illustrator_stored_sessions",
                    counts.get(status, 0),
                    f'status="{status}"',
                )
    lines += [
        "# HELP illustrator_events_published_total Events delivered to listeners.",
        "# TYPE illustrator_events_published_total counter",
    ]
    _line(lines, "illustrator_events_published_total", engine.hub.published)

    # What the writer last published: a scrape never waits behind a busy writer.
    stats = published(engine.persistence.actor_urn) if engine.persistence else published("")
    for key, kind, help_text in (
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
    ):
        name = f"illustrator_persistence_{key}" + ("_total" if kind == "counter" else "")
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        _line(lines, name, stats.get(key, 0))
    name = "illustrator_persistence_breaker_open"
    lines += [
        f"# HELP {name} 1 while the database circuit breaker is open.",
        f"# TYPE {name} gauge",
    ]
    _line(lines, name, int(bool(stats.get("breaker_open"))))

    name = "illustrator_persistence_ack_latency_seconds"
    lines += [f"# HELP {name} Checkpoint acknowledgement latency.", f"# TYPE {name} histogram"]
    cumulative = 0
    counts = stats["ack_latency_counts"]
    for bound, count in zip(stats["ack_latency_buckets_ms"], counts, strict=False):
        cumulative += count
        _line(lines, f"{name}_bucket", cumulative, f'le="{bound / 1000:g}"')
    total = sum(counts)
    _line(lines, f"{name}_bucket", total, 'le="+Inf"')
    _line(lines, f"{name}_sum", stats["ack_latency_sum_ms"] / 1000)
    _line(lines, f"{name}_count", total)

    name = "illustrator_persistence_batch_size"
    lines += [f"# HELP {name} Batches by number of records.", f"# TYPE {name} gauge"]
    for size, count in sorted(
        stats.get("batch_size_counts", {}).items(), key=lambda kv: int(kv[0])
    ):
        _line(lines, name, count, f'size="{size}"')
    return web.Response(
        text="\n".join(lines) + "\n",
        content_type="text/plain",
        charset="utf-8",
        headers={"X-Content-Type-Options": "nosniff"},
    )
