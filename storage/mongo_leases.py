"""Leases in the MongoDB store: taking, renewing and checking session ownership.

The rules (who may take a lease, the epoch that fences a stale writer) are in
``storage.leases``; this module runs them against the ``sessions`` collection.
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from pymongo import ASCENDING

from domain import utcnow
from storage.leases import (
    LeaseHolder,
    LeaseOutcome,
    chunks,
    is_dead_local_owner,
    lease_deadline,
    takeable,
)
from storage.mongo_client import MongoDatabase, as_utc


class LeaseQueries(MongoDatabase):
    """Session leases (``owner``, ``lease_until``, ``epoch`` of each session document)."""

    async def acquire_leases(
        self,
        session_ids: list[str],
        owner: str,
        ttl_seconds: float,
        known: dict[str, dict[str, Any]] | None = None,
    ) -> LeaseOutcome:
        """Take the leases of ``session_ids`` that are free, ours, expired or dead-owned.

        Per 32 sessions: at most two ``update_many`` that raise the epoch, each filtered on
        the holder it saw (an owner we may replace, or an expired ``lease_until``), so of
        two instances racing for a session exactly one matches; then one read tells which
        we got. ``known`` passes session documents already read (e.g. by recovery).
        """
        outcome = LeaseOutcome(granted={}, refused={}, missing=[])
        for chunk in chunks(list(dict.fromkeys(session_ids))):
            now = utcnow()
            if known is not None and all(sid in known for sid in chunk):
                docs = {sid: known[sid] for sid in chunk}
            else:
                docs = await self._lease_documents(chunk)
            replaceable: set[Any] = {None, "", owner}
            by_owner: list[str] = []
            expired: list[str] = []
            before: dict[str, int] = {}
            for sid in chunk:
                doc = docs.get(sid)
                if doc is None:
                    outcome.missing.append(sid)
                elif not takeable(doc, owner, now):
                    outcome.refused[sid] = _holder(doc)
                else:
                    before[sid] = int(doc.get("epoch") or 0)
                    holder = doc.get("owner")
                    if holder in replaceable or is_dead_local_owner(str(holder)):
                        replaceable.add(holder)
                        by_owner.append(sid)
                    else:
                        expired.append(sid)
            take = {
                "$set": {"owner": owner, "lease_until": lease_deadline(ttl_seconds, now)},
                "$inc": {"epoch": 1},
            }
            for ids, guard in (
                (by_owner, {"owner": {"$in": sorted(replaceable, key=str)}}),
                (expired, {"lease_until": {"$lt": now}}),
            ):
                if ids:
                    await self._call(
                        "acquire leases",
                        partial(self._sessions.update_many, {"_id": {"$in": ids}, **guard}, take),
                    )
            if not before:
                continue
            after = await self._lease_documents(list(before))
            for sid, epoch in before.items():
                doc = after.get(sid) or {}
                if doc.get("owner") == owner and int(doc.get("epoch") or 0) > epoch:
                    outcome.granted[sid] = int(doc["epoch"])
                else:  # another instance won the race
                    outcome.refused[sid] = _holder(doc, sid)
        return outcome

    async def renew_leases(
        self, epochs: dict[str, int], owner: str, ttl_seconds: float
    ) -> set[str]:
        """Extend our leases; returns the sessions whose lease we no longer hold."""
        lost: set[str] = set()
        for chunk in chunks(list(epochs)):
            until = lease_deadline(ttl_seconds)
            await self._call(
                "renew leases",
                partial(
                    self._sessions.update_many,
                    {"_id": {"$in": chunk}, "owner": owner},
                    {"$set": {"lease_until": until}},
                ),
            )
            lost |= await self._lost_leases({sid: epochs[sid] for sid in chunk}, owner)
        return lost

    async def check_leases(self, epochs: dict[str, int], owner: str) -> set[str]:
        """The sessions of ``epochs`` whose lease (owner and epoch) is no longer ours."""
        lost: set[str] = set()
        for chunk in chunks(list(epochs)):
            lost |= await self._lost_leases({sid: epochs[sid] for sid in chunk}, owner)
        return lost

    async def _lost_leases(self, epochs: dict[str, int], owner: str) -> set[str]:
        docs = await self._lease_documents(list(epochs))
        return {
            sid
            for sid, epoch in epochs.items()
            if sid in docs and (docs[sid].get("owner") != owner or docs[sid].get("epoch") != epoch)
        }

    async def _lease_documents(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        docs = await self._find(
            self._sessions,
            "read leases",
            {"_id": {"$in": ids}},
            [("_id", ASCENDING)],
            projection={"owner": 1, "lease_until": 1, "epoch": 1},
        )
        return {doc["_id"]: doc for doc in docs}


def _holder(doc: dict[str, Any], session_id: str = "") -> LeaseHolder:
    until = as_utc(doc.get("lease_until"))
    return LeaseHolder(
        session_id=str(doc.get("_id", session_id)),
        owner=str(doc.get("owner") or "unknown"),
        lease_until=until if isinstance(until, datetime) else None,
    )
