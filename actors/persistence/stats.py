"""The PersistenceActor's counters, as /metrics and the benchmarks read them."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

LATENCY_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
"""Upper bounds of the acknowledgement latency histogram."""


@dataclass
class PersistenceStats:
    """Counters the actor keeps (read through GetPersistenceStats)."""

    batches: int = 0
    checkpoints: int = 0
    events: int = 0
    files_written: int = 0
    db_batches: int = 0
    db_failures: int = 0
    backlog_batches: int = 0
    backlog_records: int = 0
    breaker_open: bool = False
    leases: int = 0
    fenced_sessions: int = 0
    quarantined: int = 0
    """Records the database refused, set aside in sessions/quarantine/ (.quarantine)."""
    largest_batch: int = 0
    ack_latency_counts: list[int] = field(
        default_factory=lambda: [0] * (len(LATENCY_BUCKETS_MS) + 1)
    )
    ack_latency_sum_ms: float = 0.0
    ack_latency_samples: deque[float] = field(default_factory=lambda: deque(maxlen=20000))
    batch_size_counts: dict[int, int] = field(default_factory=dict)

    def observe_ack(self, latency_ms: float) -> None:
        """Record one acknowledgement latency."""
        index = next(
            (i for i, b in enumerate(LATENCY_BUCKETS_MS) if latency_ms <= b),
            len(LATENCY_BUCKETS_MS),
        )
        self.ack_latency_counts[index] += 1
        self.ack_latency_sum_ms += latency_ms
        self.ack_latency_samples.append(latency_ms)

    def as_dict(self, with_samples: bool = False) -> dict[str, Any]:
        """A JSON-safe copy (the raw latency samples only on request: they are large)."""
        return {
            "batches": self.batches,
            "checkpoints": self.checkpoints,
            "events": self.events,
            "files_written": self.files_written,
            "db_batches": self.db_batches,
            "db_failures": self.db_failures,
            "backlog_batches": self.backlog_batches,
            "backlog_records": self.backlog_records,
            "breaker_open": self.breaker_open,
            "leases": self.leases,
            "fenced_sessions": self.fenced_sessions,
            "quarantined": self.quarantined,
            "largest_batch": self.largest_batch,
            "ack_latency_buckets_ms": list(LATENCY_BUCKETS_MS),
            "ack_latency_counts": list(self.ack_latency_counts),
            "ack_latency_sum_ms": self.ack_latency_sum_ms,
            "ack_latency_samples_ms": list(self.ack_latency_samples) if with_samples else [],
            "batch_size_counts": dict(self.batch_size_counts),
        }


_PUBLISHED: dict[str, dict[str, Any]] = {}
"""Actor urn -> the counters its writer last published (see :func:`published`)."""


def publish(actor_urn: str, stats: PersistenceStats | None) -> None:
    """Called by the writer after each message it handled (None when it stops)."""
    if stats is None:
        _PUBLISHED.pop(actor_urn, None)
    else:
        _PUBLISHED[actor_urn] = stats.as_dict()  # one assignment: atomic for readers


def published(actor_urn: str) -> dict[str, Any]:
    """The counters the writer ``actor_urn`` last published, without asking it: /health
    and /metrics answer at once however busy (or stuck on a dead database) it is."""
    return _PUBLISHED.get(actor_urn) or PersistenceStats().as_dict()


__all__ = ["LATENCY_BUCKETS_MS", "PersistenceStats", "publish", "published"]
