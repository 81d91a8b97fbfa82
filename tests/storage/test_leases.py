"""Session leases and epoch fencing in the store (guarantee 7,
docs/architecture.md), on every backend."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import replace
from datetime import timedelta

from domain import utcnow
from storage.leases import is_dead_local_owner, local_instance_id
from storage.mongo import MongoStore
from storage.records import PersistBatch
from tests.storage.test_store_contract import KEEP, checkpoint, session_doc

A, B = "instance-a", "instance-b"


async def test_a_free_lease_is_granted_with_a_new_epoch_and_refused_to_others(
    store: MongoStore,
) -> None:
    doc = session_doc(owner=None, lease_until=None, epoch=0)
    await store.create_session(doc)
    first = await store.acquire_leases([doc["_id"]], A, 30)
    assert first.granted == {doc["_id"]: 1}
    again = await store.acquire_leases([doc["_id"]], A, 30)  # ours: re-taken, epoch raised
    assert again.granted == {doc["_id"]: 2}
    other = await store.acquire_leases([doc["_id"]], B, 30)
    assert other.granted == {}
    assert other.refused[doc["_id"]].owner == A
    stored = await store.get_session(doc["_id"])
    assert stored is not None and (stored["owner"], stored["epoch"]) == (A, 2)


async def test_an_expired_lease_is_taken_over(store: MongoStore) -> None:
    doc = session_doc(owner=A, lease_until=utcnow() - timedelta(seconds=1), epoch=4)
    await store.create_session(doc)
    outcome = await store.acquire_leases([doc["_id"], "missing-session"], B, 30)
    assert outcome.granted == {doc["_id"]: 5}
    assert outcome.missing == ["missing-session"]
    assert await store.check_leases({doc["_id"]: 4}, A) == {doc["_id"]}
    assert await store.check_leases({doc["_id"]: 5}, B) == set()


async def test_a_lease_of_a_dead_process_on_this_host_is_taken_at_once(store: MongoStore) -> None:
    dead = f"{socket.gethostname()}:1:0"  # pid 1 never started at tick 0
    assert is_dead_local_owner(dead)
    assert not is_dead_local_owner(local_instance_id())
    doc = session_doc(owner=dead, lease_until=utcnow() + timedelta(hours=1), epoch=1)
    await store.create_session(doc)
    outcome = await store.acquire_leases([doc["_id"]], local_instance_id(), 30)
    assert outcome.granted == {doc["_id"]: 2}


async def test_racing_acquisitions_grant_each_epoch_once(store: MongoStore) -> None:
    docs = [session_doc(owner=None, lease_until=None, epoch=0) for _ in range(40)]
    for doc in docs:
        await store.create_session(doc)
    ids = [d["_id"] for d in docs]
    left, right = await asyncio.gather(
        store.acquire_leases(ids, A, 30), store.acquire_leases(ids, B, 30)
    )
    assert set(left.granted).isdisjoint(right.granted)
    assert set(left.granted) | set(right.granted) == set(ids)
    for sid in ids:
        stored = await store.get_session(sid)
        assert stored is not None
        winner = A if sid in left.granted else B
        assert stored["owner"] == winner


async def test_renewal_extends_our_leases_and_reports_lost_ones(store: MongoStore) -> None:
    ours = session_doc(owner=None, lease_until=None, epoch=0)
    taken = session_doc(owner=None, lease_until=None, epoch=0)
    for doc in (ours, taken):
        await store.create_session(doc)
    granted = (await store.acquire_leases([ours["_id"], taken["_id"]], A, 1)).granted
    before = (await store.get_session(ours["_id"]) or {})["lease_until"]
    # B takes one over after it expired.
    await store.update_session(taken["_id"], {"lease_until": utcnow() - timedelta(seconds=5)})
    assert (await store.acquire_leases([taken["_id"]], B, 30)).granted
    lost = await store.renew_leases(granted, A, 60)
    assert lost == {taken["_id"]}
    after = (await store.get_session(ours["_id"]) or {})["lease_until"]
    assert after > before + timedelta(seconds=30)
    assert (await store.get_session(taken["_id"]) or {})["owner"] == B


async def test_a_fenced_writer_cannot_change_the_session_document(store: MongoStore) -> None:
    doc = session_doc(owner=None, lease_until=None, epoch=0, last_sequence_number=0)
    sid = doc["_id"]
    await store.create_session(doc)
    old = (await store.acquire_leases([sid], A, 30)).granted[sid]
    await store.write_batch(
        PersistBatch(
            checkpoints=[replace(checkpoint(sid, 1), epoch=old)],
            session_updates={sid: {"status": "running", "progress_percent": 10}},
            session_epochs={sid: old},
        ),
        KEEP,
    )
    await store.update_session(sid, {"lease_until": utcnow() - timedelta(seconds=1)})
    new = (await store.acquire_leases([sid], B, 30)).granted[sid]
    # The stale writer A goes on: its summary must not land.
    await store.write_batch(
        PersistBatch(
            checkpoints=[replace(checkpoint(sid, 2), epoch=old)],
            session_updates={sid: {"status": "paused", "progress_percent": 99}},
            session_epochs={sid: old},
        ),
        KEEP,
    )
    stored = await store.get_session(sid)
    assert stored is not None
    assert (stored["status"], stored["progress_percent"], stored["epoch"]) == ("running", 10, new)
    assert stored["last_sequence_number"] == 1
    # The new owner reaches sequence 2: the fenced writer's leftover is replaced.
    fenced = await store.write_batch(
        PersistBatch(
            checkpoints=[replace(checkpoint(sid, 2, next_action="by B"), epoch=new)],
            session_updates={sid: {"progress_percent": 20}},
            session_epochs={sid: new},
        ),
        KEEP,
    )
    assert fenced == set()
    stored_cps = await store.list_checkpoints(sid)
    assert [(c.sequence_number, c.epoch, c.next_action) for c in stored_cps][1] == (2, new, "by B")
    # The stale writer retries sequence 2 once more: refused and reported.
    fenced = await store.write_batch(
        PersistBatch(checkpoints=[replace(checkpoint(sid, 2), epoch=old)]), KEEP
    )
    assert fenced == {sid}
    assert (await store.list_checkpoints(sid))[1].next_action == "by B"
    # A retry of the owner's own batch is still a quiet no-op.
    assert (
        await store.write_batch(
            PersistBatch(checkpoints=[replace(checkpoint(sid, 2, next_action="by B"), epoch=new)]),
            KEEP,
        )
        == set()
    )
