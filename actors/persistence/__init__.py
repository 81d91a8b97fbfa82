"""PersistenceActor: the single writer, with group commit.

It takes checkpoints and events from every session, and whenever its mailbox runs dry
or the batch is full it commits them as one batch: all JSON files first (one group
fsync), then one database batch, then it acknowledges every sender. Under load the
batch grows by itself while the previous one is being written ("smart batching"), so
a lone checkpoint is never held back waiting for company.

If the database is unreachable the files remain the durable record: the batch is
acknowledged after its files are durable, its database part queues in an ordered
backlog, and a circuit breaker retries the backlog with backoff until the database
returns; then every record reaches it exactly once and in order.

With several instances on one database (storage.leases), it also keeps the leases of
the sessions it writes for: it renews them every third of their length, stamps each
session update with the lease epoch (the store refuses an older one), and before it
writes for a session whose lease it could not renew in time (a stall, an outage) it
checks the lease in the database. A session whose lease another instance took is
fenced: its records are dropped from the database batch, its acknowledgement says so,
and its actor stops without writing anything more.

The package's rooms: :mod:`.actor` (the actor: batches, files, database work, summaries),
:mod:`.backlog` (the ordered database backlog and its circuit breaker), :mod:`.quarantine`
(records the database can never take, set aside), :mod:`.summaries` (session summaries written
behind their checkpoints), :mod:`.leases` and :mod:`.keeper` (the leases it holds and renews),
:mod:`.stats` (its counters, published for /health and /metrics).
"""

from actors.persistence.actor import PersistenceActor
from actors.persistence.keeper import LeaseSettings
from actors.persistence.stats import LATENCY_BUCKETS_MS, PersistenceStats

__all__ = ["LATENCY_BUCKETS_MS", "LeaseSettings", "PersistenceActor", "PersistenceStats"]
