"""Sessions checkpoint, pause, resume, fail and cancel without losing or repeating work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from tests_support import EventRecorder, make_manuscript, record_folder_syncs

from actors.messages import CheckpointReached, PauseSession
from actors.persistence import PersistenceActor
from domain import CheckpointType as T
from errors import ConflictError
from pipeline.providers import RecordingProviders
from storage.files import FileStore

pytestmark = pytest.mark.timeout(180)

CHAPTERS = 2
MOMENTS = 2


def expected_types(chapters: int = CHAPTERS, moments: int = MOMENTS) -> list[T]:
    """The checkpoint types of an uninterrupted session."""
    types = [T.SESSION_START, T.MANUSCRIPT_LOADED]
    for _ in range(chapters):
        types += [T.CHAPTER_START, T.CHAPTER_ANALYZED, T.PROMPTS_GENERATED]
        types += [T.IMAGES_GENERATING] * moments
        types += [T.CHAPTER_COMPLETED]
    return [*types, T.SESSION_COMPLETED]


async def run_session(engine: Any, recorder: EventRecorder, **options: Any) -> tuple[str, str]:
    mid = await engine.save_manuscript(make_manuscript(CHAPTERS))
    started = await engine.start_session(mid, max_emotional_moments=MOMENTS, **options)
    sid = started["session_id"]
    return sid, await recorder.wait_final(sid)


async def test_session_completes_with_every_milestone_checkpointed_in_order(make_engine) -> None:
    recording = RecordingProviders()
    engine = await make_engine(recording)
    recorder = EventRecorder(engine)
    sid, status = await run_session(engine, recorder, style_config={"art_style": "watercolor"})
    assert status == "completed"
    await engine.flush()

    checkpoints = await engine.store.list_checkpoints(sid)
    assert [cp.checkpoint_type for cp in checkpoints] == expected_types()
    assert [cp.sequence_number for cp in checkpoints] == list(range(1, len(checkpoints) + 1))
    on_disk = engine.files.load_checkpoints(sid)
    assert [cp.sequence_number for cp in on_disk] == [cp.sequence_number for cp in checkpoints]

    document = await engine.store.get_session(sid)
    assert document["status"] == "completed"
    assert document["progress_percent"] == 100
    assert document["can_resume"] is False
    assert document["total_images_generated"] == CHAPTERS * MOMENTS
    assert document["processed_chapters"] == [1, 2]
    session_file = engine.files.load_session_file(sid)
    assert session_file["status"] == "completed"
    assert session_file["last_sequence_number"] == len(checkpoints)

    images = await engine.store.list_images(sid)
    assert [(i.chapter_number, i.scene_number) for i in images] == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for image in images:
        assert (engine.output_dir / image.file_path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert recording.count("analyze") == CHAPTERS
    assert recording.count("prompt") == CHAPTERS * MOMENTS
    assert recording.count("image") == CHAPTERS * MOMENTS
    assert recording.repeated() == {}
    assert "watercolor" in images[0].prompt_used.lower()

    events = recorder.events[sid]
    assert [e.event_seq for e in events] == list(range(1, len(events) + 1))
    assert {e.type for e in events} >= {"progress", "log", "step", "image", "complete", "status"}
    stored = await engine.store.list_logs(sid, limit=10_000)
    assert [e.event_seq for e in stored] == [e.event_seq for e in events]


class PauseAtSequence(PersistenceActor):
    """Test seam: asks the session to pause just before acknowledging checkpoint ``N``.

    The pause then lands exactly at the boundary after that checkpoint.
    """

    pause_at: int = 0

    def on_receive(self, message: Any) -> Any:
        if (
            isinstance(message, CheckpointReached)
            and message.checkpoint is not None
            and message.checkpoint.sequence_number == type(self).pause_at
            and message.reply_to is not None
        ):
            message.reply_to.tell(PauseSession())
        return super().on_receive(message)


class WatchPlacedImages(PersistenceActor):
    """Test seam: notes the images each batch syncs the folders of, and whether they
    were in place then."""

    seen: list[tuple[str, bool]] = []

    def _write_files(self, checkpoints: Any, session_files: Any) -> str | None:
        for message in checkpoints:
            type(self).seen.extend((p.name, p.exists()) for p in message.placed_files)
        return super()._write_files(checkpoints, session_files)


async def test_each_image_folder_is_synced_by_the_batch_of_its_checkpoint(make_engine) -> None:
    WatchPlacedImages.seen = []
    engine = await make_engine(persistence_class=WatchPlacedImages)
    sid, status = await run_session(engine, EventRecorder(engine))
    assert status == "completed"
    await engine.flush()

    names = sorted(f"chapter_{c}_scene_{m}.png" for c in (1, 2) for m in (1, 2))
    assert sorted(WatchPlacedImages.seen) == [(name, True) for name in names]
    folder = engine.output_dir / "generated_images" / sid
    assert sorted(p.name for p in folder.iterdir()) == names  # no temp file left


async def test_a_new_sessions_image_folder_is_synced_into_its_parent_once(
    make_engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The batches sync generated_images/{sid} for its images, not the entry naming it in
    # generated_images/: only its creation can, or a crash could lose the whole folder.
    synced = record_folder_syncs(monkeypatch)
    engine = await make_engine()
    sid, status = await run_session(engine, EventRecorder(engine))
    assert status == "completed"

    images = engine.output_dir / "generated_images"
    assert synced.count(images) == 1
    assert (images / sid).is_dir()


async def test_a_missing_manuscripts_folder_is_synced_into_its_parent_at_start(
    make_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    FileStore(out).ensure_layout()
    (out / "manuscripts").rmdir()  # every folder of the layout but this one
    synced = record_folder_syncs(monkeypatch)
    engine = await make_engine()
    assert engine.output_dir == out
    assert (out / "manuscripts").is_dir()
    assert synced.count(out) == 1


async def test_pause_then_resume_at_every_step_boundary_repeats_no_work(make_engine) -> None:
    expected = expected_types()
    for boundary in range(1, len(expected)):
        recording = RecordingProviders()
        PauseAtSequence.pause_at = boundary
        engine = await make_engine(recording, persistence_class=PauseAtSequence)
        recorder = EventRecorder(engine)
        sid, status = await run_session(engine, recorder)
        assert status == "paused", f"boundary {boundary}"
        await engine.flush()
        paused = await engine.store.get_session(sid)
        assert paused["status"] == "paused"
        assert paused["can_resume"] is True
        last_event = recorder.events[sid][-1].event_seq

        PauseAtSequence.pause_at = 0
        resumed = await engine.resume_session(sid)
        assert resumed["session_id"] == sid
        assert await recorder.wait_final(sid, after_seq=last_event) == "completed"
        await engine.flush()

        checkpoints = await engine.store.list_checkpoints(sid)
        types = [cp.checkpoint_type for cp in checkpoints]
        assert types[boundary] == T.SESSION_PAUSED, f"boundary {boundary}: {types}"
        assert [t for t in types if t != T.SESSION_PAUSED] == expected
        assert [cp.sequence_number for cp in checkpoints] == list(range(1, len(expected) + 2))
        assert recording.repeated() == {}, f"work repeated after pause at {boundary}"
        assert recording.count("image") == CHAPTERS * MOMENTS
        events = recorder.events[sid]
        assert [e.event_seq for e in events] == list(range(1, len(events) + 1))
        await engine.stop()


async def test_resume_after_restart_continues_sequence_numbers(make_engine) -> None:
    PauseAtSequence.pause_at = 5
    first = await make_engine(RecordingProviders(), persistence_class=PauseAtSequence)
    recorder = EventRecorder(first)
    sid, status = await run_session(first, recorder)
    assert status == "paused"
    await first.stop()

    PauseAtSequence.pause_at = 0
    recording = RecordingProviders()
    second = await make_engine(recording)
    recorder = EventRecorder(second)
    state = await second.load_state(sid)
    assert state.last_sequence_number == 6
    await second.resume_session(sid)
    assert await recorder.wait_final(sid) == "completed"
    await second.flush()
    checkpoints = await second.store.list_checkpoints(sid)
    assert [cp.sequence_number for cp in checkpoints] == list(range(1, len(checkpoints) + 1))
    # Checkpoint 5 was PROMPTS_GENERATED of chapter 1: chapter 1 is never analysed again.
    assert recording.count("analyze", 1) == 0
    assert recording.count("prompt") == MOMENTS  # only chapter 2's


async def test_transient_step_failure_is_retried_without_an_error_checkpoint(make_engine) -> None:
    failures = {"left": 1}

    def fail_once(stage: str, key: Any) -> bool:
        if stage == "image" and failures["left"]:
            failures["left"] -= 1
            return True
        return False

    recording = RecordingProviders(fail_on=fail_once)
    engine = await make_engine(recording)
    recorder = EventRecorder(engine)
    sid, status = await run_session(engine, recorder)
    assert status == "completed"
    await engine.flush()
    types = [cp.checkpoint_type for cp in await engine.store.list_checkpoints(sid)]
    assert T.ERROR_OCCURRED not in types
    assert recording.attempts("image") == CHAPTERS * MOMENTS + 1
    assert recording.repeated() == {}


async def test_error_mid_chapter_then_resume_retries_only_that_step(make_engine) -> None:
    broken = {"on": True}
    recording = RecordingProviders(
        fail_on=lambda stage, key: broken["on"] and stage == "prompt" and str(key).startswith("2:")
    )
    engine = await make_engine(recording, processing={"step_attempts": 2})
    recorder = EventRecorder(engine)
    sid, status = await run_session(engine, recorder)
    assert status == "failed"
    await engine.flush()
    failed = await engine.store.get_session(sid)
    assert failed["status"] == "failed"
    assert failed["can_resume"] is True
    assert "injected failure" in failed["error_message"]
    checkpoints = await engine.store.list_checkpoints(sid)
    assert checkpoints[-1].checkpoint_type == T.ERROR_OCCURRED
    assert checkpoints[-2].checkpoint_type == T.CHAPTER_ANALYZED
    assert checkpoints[-2].chapter_number == 2
    assert recording.attempts("prompt") == MOMENTS + 2  # chapter 1's, then 2 failed attempts
    last_event = recorder.events[sid][-1].event_seq
    resumable = await engine.store.get_resumable_sessions()
    assert sid in {d["session_id"] for d in resumable}

    broken["on"] = False
    await engine.resume_session(sid)
    assert await recorder.wait_final(sid, after_seq=last_event) == "completed"
    assert recording.count("analyze") == CHAPTERS  # chapter 2 was not analysed again
    assert recording.repeated() == {}
    await engine.flush()
    all_types = [cp.checkpoint_type for cp in await engine.store.list_checkpoints(sid)]
    assert [t for t in all_types if t != T.ERROR_OCCURRED] == expected_types()


async def test_cancel_is_terminal_and_persisted(make_engine) -> None:
    PauseAtSequence.pause_at = 0
    engine = await make_engine(RecordingProviders())
    recorder = EventRecorder(engine)
    mid = await engine.save_manuscript(make_manuscript(CHAPTERS))
    sid = (await engine.start_session(mid, max_emotional_moments=MOMENTS))["session_id"]
    await engine.cancel_session(sid)
    assert await recorder.wait_final(sid) in {"cancelled", "completed"}
    await engine.flush()
    document = await engine.store.get_session(sid)
    if document["status"] == "cancelled":
        assert document["can_resume"] is False
        with pytest.raises(ConflictError):
            await engine.resume_session(sid)


async def test_sessions_beyond_the_cap_queue_and_all_complete(make_engine) -> None:
    engine = await make_engine(RecordingProviders(), processing={"max_concurrent_sessions": 1})
    recorder = EventRecorder(engine)
    manuscripts = [await engine.save_manuscript(make_manuscript(1)) for _ in range(3)]
    started = [await engine.start_session(mid, max_emotional_moments=1) for mid in manuscripts]
    assert started[0]["status"] == "running"
    assert [s["status"] for s in started[1:]] == ["queued", "queued"]
    for result in started:
        assert await recorder.wait_final(result["session_id"]) == "completed"


async def test_second_start_of_a_live_session_returns_it(make_engine) -> None:
    engine = await make_engine(RecordingProviders(), processing={"max_concurrent_sessions": 1})
    recorder = EventRecorder(engine)
    first = await engine.start_session(
        await engine.save_manuscript(make_manuscript(1)), max_emotional_moments=1
    )
    queued = await engine.start_session(
        await engine.save_manuscript(make_manuscript(1)), max_emotional_moments=1
    )
    again = await engine.resume_session(queued["session_id"])
    assert again["is_existing"] is True
    for result in (first, queued):
        assert await recorder.wait_final(result["session_id"]) == "completed"


async def test_a_bug_in_a_session_marks_it_failed_and_resumable(make_engine) -> None:
    engine = await make_engine(RecordingProviders())
    recorder = EventRecorder(engine)
    board = engine.hub.put_snapshot
    calls = {"n": 0}

    def broken_board(snapshot: dict) -> None:
        # A bug outside any step (steps retry their own failures): the board raises when
        # the 4th acknowledgement updates it. The caller's frame tells where we are.
        if sys._getframe(2).f_code.co_name == "_on_persisted":
            calls["n"] += 1
            if calls["n"] == 4:
                raise RuntimeError("board exploded")
        board(snapshot)

    engine.hub.put_snapshot = broken_board  # type: ignore[method-assign]
    sid, status = await run_session(engine, recorder)
    assert status == "failed"
    await engine.flush()
    document = await engine.store.get_session(sid)
    assert document["status"] == "failed"
    assert document["can_resume"] is True
    assert "internal error: RuntimeError: board exploded" in document["error_message"]
    engine.hub.put_snapshot = board  # type: ignore[method-assign]
    last_event = recorder.events[sid][-1].event_seq
    await engine.resume_session(sid)
    assert await recorder.wait_final(sid, after_seq=last_event) == "completed"
