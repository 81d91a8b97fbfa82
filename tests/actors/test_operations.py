"""Recovery bundles (automatic and on demand), restore into an empty database, verify."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from pathlib import Path

import pytest
from test_reconcile import PauseAtFive, start_engine
from tests_support import EventRecorder, make_manuscript, store_maker

from errors import ConflictError, ValidationError
from pipeline.providers import RecordingProviders

pytestmark = pytest.mark.timeout(180)


async def test_pause_writes_a_bundle_that_restores_into_an_empty_database_and_resumes(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    first = await start_engine(
        tmp_path / "one", databases(f"f{uuid.uuid4().hex[:8]}"), persistence_class=PauseAtFive
    )
    recorder = EventRecorder(first)
    mid = await first.save_manuscript(make_manuscript(2))
    sid = (await first.start_session(mid, max_emotional_moments=2))["session_id"]
    assert await recorder.wait_final(sid) == "paused"
    await first.stop()  # waits for the bundle written on pause
    bundle_path = tmp_path / "one" / "sessions" / "recovery" / f"{sid}.json"
    bundle = json.loads(bundle_path.read_text())
    assert bundle["reason"] == "pause"
    assert [c["sequence_number"] for c in bundle["checkpoints"]] == list(range(1, 7))
    assert bundle["session"]["status"] == "paused"
    assert bundle["manuscript"]["title"] == "The Test of Time"
    assert [e["event_seq"] for e in bundle["logs"]] == list(range(1, len(bundle["logs"]) + 1))

    # Another machine: empty database, empty output folder, only the bundle (and images).
    moved = tmp_path / "moved.json"
    shutil.copyfile(bundle_path, moved)
    shutil.copytree(tmp_path / "one" / "generated_images", tmp_path / "two" / "generated_images")
    recording = RecordingProviders()
    second = await start_engine(
        tmp_path / "two", databases(f"g{uuid.uuid4().hex[:8]}"), providers=recording
    )
    try:
        restored = await second.restore_bundle(moved)
        assert restored == sid
        assert await second.restore_bundle(moved) == sid  # idempotent
        assert [cp.sequence_number for cp in await second.store.list_checkpoints(sid)] == list(
            range(1, 7)
        )
        recorder = EventRecorder(second)
        await second.resume_session(sid)
        assert await recorder.wait_final(sid) == "completed"
        await second.flush()
        assert recording.count("analyze", 1) == 0, "chapter 1 was analysed before the pause"
        assert recording.repeated() == {}
        report = await second.verify()
        assert report.ok, report.render()
    finally:
        await second.stop()


async def test_verify_reports_gaps_disagreements_and_missing_images(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    engine = await start_engine(tmp_path / "out", databases(f"h{uuid.uuid4().hex[:8]}"))
    try:
        recorder = EventRecorder(engine)
        mid = await engine.save_manuscript(make_manuscript(2))
        sid = (await engine.start_session(mid, max_emotional_moments=2))["session_id"]
        await recorder.wait_final(sid)
        await engine.flush()
        healthy = await engine.verify()
        assert healthy.ok, healthy.render()
        assert healthy.sessions == 1 and healthy.images == 4

        engine.files.checkpoint_path(sid, 4).unlink()
        (tmp_path / "out" / "generated_images" / sid / "chapter_2_scene_1.png").unlink()
        (tmp_path / "out" / "generated_images" / sid / "stray.png").write_bytes(
            b"\x89PNG\r\n\x1a\n"
        )
        # The image record rides in the checkpoint document that brought it.
        await engine.store._checkpoints.update_many(
            {"session_id": sid, "has_images": True},
            {"$pull": {"images": {"chapter_number": 1, "scene_number": 2}}},
        )
        broken = await engine.verify()
        assert not broken.ok
        text = broken.render()
        assert "not gap-free" in text
        assert "files hold checkpoints" in text
        assert "chapter_2_scene_1.png is missing on disk" in text
        assert "stray.png on disk has no image record" in text
        assert "image records are 3 (missing [(1, 2)]" in text
    finally:
        await engine.stop()


async def test_a_bad_bundle_is_refused_with_a_clear_error(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    engine = await start_engine(tmp_path / "out", databases(f"i{uuid.uuid4().hex[:8]}"))
    try:
        bad = tmp_path / "bad.json"
        bad.write_text(
            json.dumps(
                {
                    "format_version": 1,
                    "session_id": "../../etc/passwd",
                    "session": {},
                    "checkpoints": [],
                }
            )
        )
        with pytest.raises(ValidationError, match="session_id"):
            await engine.restore_bundle(bad)
        torn = tmp_path / "torn.json"
        torn.write_text('{"format_version": 1, "session_id": "')
        with pytest.raises(ValidationError, match="torn"):
            await engine.restore_bundle(torn)
        assert await engine.store.list_sessions() == []
    finally:
        await engine.stop()


async def test_restoring_an_older_bundle_is_refused_and_force_replaces_the_newer_record(
    tmp_path: Path, backend: str, request
) -> None:
    databases = store_maker(backend, request)
    engine = await start_engine(
        tmp_path / "out", databases(f"j{uuid.uuid4().hex[:8]}"), persistence_class=PauseAtFive
    )
    try:
        recorder = EventRecorder(engine)
        mid = await engine.save_manuscript(make_manuscript(2))
        sid = (await engine.start_session(mid, max_emotional_moments=2))["session_id"]
        assert await recorder.wait_final(sid) == "paused"
        await engine.flush()
        await asyncio.gather(*engine._bundle_tasks)  # the bundle written on pause
        bundle = tmp_path / "paused.json"
        shutil.copyfile(engine.files.recovery_path(sid), bundle)
        paused_events = len(recorder.events[sid])
        await engine.resume_session(sid)
        assert await recorder.wait_final(sid, after_seq=paused_events) == "completed"
        await engine.flush()
        newest = await engine.store.get_session(sid)
        checkpoints = [cp.to_json() for cp in await engine.store.list_checkpoints(sid)]

        with pytest.raises(ConflictError, match="would roll it back") as refused:
            await engine.restore_bundle(bundle)
        assert f"the database holds checkpoint {len(checkpoints)} (completed)" in str(refused.value)
        assert await engine.store.get_session(sid) == newest
        assert [cp.to_json() for cp in await engine.store.list_checkpoints(sid)] == checkpoints

        assert await engine.restore_bundle(bundle, force=True) == sid
        replaced = await engine.store.get_session(sid)
        assert (replaced["status"], replaced["last_sequence_number"]) == ("paused", 6)
        assert len(await engine.store.list_checkpoints(sid)) == 6
        assert engine.files.load_session_file(sid)["status"] == "paused"
        report = await engine.verify()
        assert report.ok, report.render()
    finally:
        await engine.stop()
