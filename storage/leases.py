"""Session ownership when several instances share one database (guarantee 7,
docs/architecture.md).

A session is run by one instance at a time. Its ``sessions`` document names the
``owner`` (an instance id), ``lease_until`` (UTC; the owner renews it while the session
is live) and ``epoch``, a counter raised by every acquisition: the fencing token. Every
database write of a running session carries the epoch it was granted, and the store
refuses writes of an older epoch (see storage.mongo), so an instance that lost a lease
(it stalled, or was cut off while another took over) can no longer change the record.

A lease can be taken when it is free (no owner), ours, expired, or held by a process of
this host that no longer exists (a ``kill -9``'d server restarting on the same host need
not wait out its own lease).

Instance ids default to ``{host}:{pid}:{process start ticks}``: unique among live
processes, and checkable for liveness on the same host. ``processing.instance_id`` sets
one by hand (then only lease expiry tells that it died).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from domain import utcnow

CHUNK = 32
"""Ids per ``$in`` query: SecantusDB's ``$in`` grows super-linearly (1,000 ids: 0.7 s)."""


def local_instance_id() -> str:
    """``{host}:{pid}:{start ticks}`` of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def is_dead_local_owner(owner: str) -> bool:
    """True if ``owner`` is an automatic id of this host whose process is gone."""
    parts = owner.split(":")
    if len(parts) < 3:
        return False
    host, pid_text, ticks = ":".join(parts[:-2]), parts[-2], parts[-1]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    current = _start_ticks(pid)
    return current is None or str(current) != ticks


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return int(fields[19])  # field 22 of stat, counted after the ")" of the name
    except (OSError, ValueError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0
        return 0


@dataclass(frozen=True)
class LeaseHolder:
    """Who holds a lease we could not take."""

    session_id: str
    owner: str
    lease_until: datetime | None

    def describe(self) -> str:
        """For error messages."""
        until = self.lease_until.isoformat() if self.lease_until else "unknown"
        return f"run by instance {self.owner} (lease until {until})"


@dataclass
class LeaseOutcome:
    """What an acquisition of several sessions gave."""

    granted: dict[str, int]
    """Session id -> the epoch we now hold."""
    refused: dict[str, LeaseHolder]
    """Sessions another live instance holds."""
    missing: list[str]
    """Sessions without a database document (known from files only)."""


def takeable(doc: dict[str, Any], owner: str, now: datetime) -> bool:
    """May ``owner`` take the lease described by ``doc`` at ``now``?"""
    holder = doc.get("owner")
    if not holder or holder == owner:
        return True
    until = doc.get("lease_until")
    if not isinstance(until, datetime) or until <= now:
        return True
    return is_dead_local_owner(str(holder))


def lease_deadline(ttl_seconds: float, now: datetime | None = None) -> datetime:
    """``lease_until`` for a lease taken or renewed at ``now``."""
    return (now or utcnow()) + timedelta(seconds=ttl_seconds)


def chunks(items: list[str], size: int = CHUNK) -> list[list[str]]:
    """``items`` in slices of ``size``."""
    return [items[i : i + size] for i in range(0, len(items), size)]
