"""A shutdown's pause resumes at the next start; a user's pause stays paused (README:
"Ctrl-C ... The next start resumes them"). The pause checkpoint says which is which."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from tests_support import EventRecorder, make_manuscript

from actors.messages import StopAllSessions
from actors.reply import Reply
from domain import CheckpointType
from pipeline.providers import STAGE_IMAGE, RecordingProviders
from storage.files import FileStore

pytestmark = pytest.mark.timeout(180)


async def shut_down(engine: Any, release: threading.Event) -> None:
    """What Ctrl-C does (``Engine.stop``), with the gate opened only once the supervisor
    has asked every session to pause (its mailbox is in order): no session can finish
    before the request reaches it."""
    paused = Reply.for_loop()
    engine.supervisor.tell(StopAllSessions(reply=paused, timeout=30))
    release.set()
    await paused.wait(40)
    await engine.stop(pause_timeout=30)


def gated() -> tuple[RecordingProviders, threading.Semaphore, threading.Event]:
    """Providers whose image calls wait for ``release``; ``entered`` counts arrivals."""
    entered, release = threading.Semaphore(0), threading.Event()

    def before_call(stage: str, key: Any) -> None:
        if stage == STAGE_IMAGE and not release.is_set():
            entered.release()
            release.wait(30)

    return RecordingProviders(before_call=before_call), entered, release


async def test_a_shutdown_pause_resumes_at_the_next_start_and_a_user_pause_stays(
    make_engine, tmp_path
) -> None:
    providers, entered, release = gated()
    first = await make_engine(providers)
    recorder = EventRecorder(first)
    by_shutdown, by_user = [
        (
            await first.start_session(
                await first.save_manuscript(make_manuscript(2)), max_emotional_moments=1
            )
        )["session_id"]
        for _ in range(2)
    ]
    for _ in range(2):
        assert await asyncio.to_thread(entered.acquire, True, 30)
    # Its answer comes once the blocked step returns; the request is told at the task's
    # first step, before the shutdown's.
    pausing = asyncio.ensure_future(first.pause_session(by_user))
    await asyncio.sleep(0)
    await shut_down(first, release)
    await pausing
    for sid, reason in ((by_shutdown, "shutdown"), (by_user, "user")):
        (paused,) = [e for e in recorder.events[sid] if e.payload.get("status") == "paused"]
        assert paused.payload["pause_reason"] == reason

    files = FileStore(tmp_path / "out")
    for sid, reason in ((by_shutdown, "shutdown"), (by_user, "user")):
        last = files.load_checkpoints(sid)[-1]
        assert last.checkpoint_type == CheckpointType.SESSION_PAUSED
        assert last.checkpoint_data["pause_reason"] == reason
        assert files.load_session_file(sid)["pause_reason"] == reason

    second = await make_engine(RecordingProviders(), processing={"auto_resume": True})
    for sid, reason in ((by_shutdown, "shutdown"), (by_user, "user")):
        document = await second.store.get_session(sid)
        assert (document["status"], document["pause_reason"]) == ("paused", reason)
    recorder = EventRecorder(second)
    assert await second.recover() == [by_shutdown]
    assert await recorder.wait_final(by_shutdown) == "completed"
    assert second.live_snapshot(by_user) is None
    document = await second.store.get_session(by_user)
    assert (document["status"], document["pause_reason"]) == ("paused", "user")
    done = await second.store.get_session(by_shutdown)
    assert (done["status"], done["pause_reason"]) == ("completed", None)


async def test_without_auto_resume_a_shutdown_pause_stays_paused(make_engine) -> None:
    providers, entered, release = gated()
    first = await make_engine(providers)
    mid = await first.save_manuscript(make_manuscript(2))
    sid = (await first.start_session(mid, max_emotional_moments=1))["session_id"]
    assert await asyncio.to_thread(entered.acquire, True, 30)
    await shut_down(first, release)

    second = await make_engine(RecordingProviders(), processing={"auto_resume": False})
    assert await second.recover() == []
    document = await second.store.get_session(sid)
    assert (document["status"], document["pause_reason"]) == ("paused", "shutdown")
    resumed = await second.resume_session(sid)  # a client may resume it by hand
    assert resumed["is_existing"] is False
