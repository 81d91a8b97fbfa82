"""The JSON file store: atomic writes, group commit, defensive loading, safe ids."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from domain import FORMAT_VERSION, CheckpointType, ProcessingStep, SessionId, new_id
from errors import InvalidIdError, StorageError, ValidationError
from storage import atomic
from storage.files import FileProblemError, FileStore, load_bundle
from storage.records import Checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    files = FileStore(tmp_path / "out")
    files.ensure_layout()
    return files


def sid() -> SessionId:
    return SessionId(new_id())


def checkpoint(session: str, seq: int, **changes: Any) -> Checkpoint:
    fields: dict[str, Any] = {
        "session_id": SessionId(session),
        "sequence_number": seq,
        "checkpoint_type": CheckpointType.CHAPTER_ANALYZED,
        "step": ProcessingStep.ANALYZING_CHAPTERS,
        "chapter_number": 1,
        "next_action": "generate prompts",
        "progress_percent": 10 * seq % 100,
        "checkpoint_data": {"emotional_moments": [{"text": "she wept", "score": 0.9}]},
        "processing_state": {"processed_chapters": [1], "total_images_generated": seq},
    }
    fields.update(changes)
    return Checkpoint(**fields)


def session_doc(session: str, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "session_id": session,
        "manuscript_id": new_id(),
        "external_session_id": "web-1",
        "status": "running",
        "progress_percent": 45,
        "current_chapter": 2,
        "total_chapters": 5,
        "style_config": {"art_style": "watercolour"},
        "max_emotional_moments": 10,
        "last_completed_step": "chapter_analyzed",
        "last_completed_chapter": 1,
        "last_sequence_number": 2,
        "processed_chapters": [1],
        "current_prompts": [],
        "generated_images": [],
        "emotional_moments": [],
        "total_images_generated": 8,
        "started_at": "2023-01-01T00:00:00+00:00",
        "last_heartbeat": "2023-01-01T00:30:00+00:00",
    }
    doc.update(changes)
    return doc


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if atomic.is_temp_name(p.name)]


# -- round trips ------------------------------------------------------------------


def test_session_file_round_trips_with_format_version(store: FileStore) -> None:
    session = sid()
    data = session_doc(session)

    path = store.write_session_file(session, data)

    assert path == store.root / "sessions" / "active_sessions" / f"{session}.json"
    assert json.loads(path.read_text())["format_version"] == FORMAT_VERSION
    assert store.load_session_file(session) == {**data, "format_version": FORMAT_VERSION}


def test_checkpoints_round_trip_in_sequence_order_with_padded_names(store: FileStore) -> None:
    session = sid()
    written = {seq: checkpoint(session, seq) for seq in (3, 1, 10, 2)}
    for cp in written.values():
        store.write_checkpoint(cp)

    loaded = store.load_checkpoints(session)

    assert loaded == [written[seq] for seq in (1, 2, 3, 10)]
    assert store.latest_checkpoint(session) == written[10]
    names = sorted(p.name for p in store.checkpoints_dir.iterdir())
    assert names == [f"{session}_{seq:08d}.json" for seq in (1, 2, 3, 10)]


def test_unpadded_checkpoint_names_from_other_writers_load(store: FileStore) -> None:
    session = sid()
    store.write_checkpoint(checkpoint(session, 1))
    store.write_json(store.checkpoints_dir / f"{session}_2.json", checkpoint(session, 2).to_json())
    store.write_json(
        store.checkpoints_dir / f"{session}_12.json", checkpoint(session, 12).to_json()
    )

    assert [cp.sequence_number for cp in store.load_checkpoints(session)] == [1, 2, 12]
    assert store.scan().problems == []


def test_our_padded_checkpoint_wins_over_an_unpadded_one_of_the_same_sequence(
    store: FileStore,
) -> None:
    session = sid()
    theirs = checkpoint(session, 3, next_action="theirs").to_json()
    store.write_json(store.checkpoints_dir / f"{session}_3.json", theirs)
    store.write_checkpoint(checkpoint(session, 3, next_action="ours"))

    assert [cp.next_action for cp in store.load_checkpoints(session)] == ["ours"]


def test_rewriting_a_checkpoint_replaces_it_and_leaves_no_temp_files(store: FileStore) -> None:
    session = sid()
    store.write_checkpoint(checkpoint(session, 1, next_action="first"))
    store.write_checkpoint(checkpoint(session, 1, next_action="retry"))

    assert [cp.next_action for cp in store.load_checkpoints(session)] == ["retry"]
    assert temp_files(store.root) == []


def test_recovery_bundle_round_trips(store: FileStore) -> None:
    session = sid()
    bundle = {
        "session": session_doc(session),
        "checkpoints": [checkpoint(session, 1).to_json(), checkpoint(session, 2).to_json()],
        "images": [],
    }

    path = store.write_recovery_bundle(session, bundle)

    loaded = load_bundle(path)
    assert path == store.recovery_path(session)
    assert loaded["session_id"] == session
    assert loaded["format_version"] == FORMAT_VERSION
    assert [c["sequence_number"] for c in loaded["checkpoints"]] == [1, 2]
    assert store.load_bundle(path) == loaded


def test_ensure_layout_creates_the_spec_folders(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "fresh")
    files.ensure_layout()
    expected = {
        "sessions/active_sessions",
        "sessions/checkpoints",
        "sessions/recovery",
        "generated_images",
        "exports",
    }
    assert all((tmp_path / "fresh" / rel).is_dir() for rel in expected)


# -- bad files are reported and skipped --------------------------------------------


def write_bytes(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def truncated(store: FileStore, session: str) -> Path:
    path = store.write_checkpoint(checkpoint(session, 7))
    content = path.read_bytes()
    return write_bytes(path, content[: len(content) // 2])


BAD_CHECKPOINTS = {
    "truncated": ("torn", truncated),
    "zero-length": ("empty", lambda s, x: write_bytes(s.checkpoint_path(x, 7), b"")),
    "invalid JSON": ("torn", lambda s, x: write_bytes(s.checkpoint_path(x, 7), b'{"sess\x00ion')),
    "not UTF-8": ("torn", lambda s, x: write_bytes(s.checkpoint_path(x, 7), b"\xff\xfe{}")),
    "JSON array": ("corrupt", lambda s, x: write_bytes(s.checkpoint_path(x, 7), b"[1, 2]")),
    "wrong field type": (
        "corrupt",
        lambda s, x: s.write_json(
            s.checkpoint_path(x, 7), {**checkpoint(x, 7).to_json(), "checkpoint_data": [1]}
        ),
    ),
    "unknown checkpoint type": (
        "corrupt",
        lambda s, x: s.write_json(
            s.checkpoint_path(x, 7), {**checkpoint(x, 7).to_json(), "checkpoint_type": "nap"}
        ),
    ),
    "sequence disagrees with name": (
        "corrupt",
        lambda s, x: s.write_json(s.checkpoint_path(x, 7), checkpoint(x, 6).to_json()),
    ),
    "session disagrees with name": (
        "corrupt",
        lambda s, x: s.write_json(s.checkpoint_path(x, 7), checkpoint(new_id(), 7).to_json()),
    ),
    "future format_version": (
        "version",
        lambda s, x: write_bytes(
            s.checkpoint_path(x, 7),
            json.dumps(
                {**checkpoint(x, 7).to_json(), "format_version": FORMAT_VERSION + 1}
            ).encode(),
        ),
    ),
    "foreign name": ("foreign", lambda s, x: write_bytes(s.checkpoints_dir / "notes.txt", b"hi")),
    "not a UUID": ("foreign", lambda s, x: write_bytes(s.checkpoints_dir / "abc_1.json", b"{}")),
    "upper-case UUID": (
        "foreign",
        lambda s, x: write_bytes(
            s.checkpoints_dir / f"{x.upper()}_7.json",
            json.dumps(checkpoint(x, 7).to_json()).encode(),
        ),
    ),
    "sequence zero": (
        "foreign",
        lambda s, x: write_bytes(s.checkpoints_dir / f"{x}_0.json", b"{}"),
    ),
    "a folder": ("foreign", lambda s, x: s.checkpoint_path(x, 7).mkdir()),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_bad_checkpoint_file_is_reported_by_kind_and_skipped(
    store: FileStore, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    session = sid()
    store.write_session_file(session, session_doc(session))
    good = [checkpoint(session, seq) for seq in (1, 2)]
    for cp in good:
        store.write_checkpoint(cp)
    kind, make_bad = BAD_CHECKPOINTS[case]
    make_bad(store, session)

    with caplog.at_level(logging.WARNING, logger="storage.files"):
        report = store.scan()

    assert [(p.kind, p.path.parent) for p in report.problems] == [(kind, store.checkpoints_dir)]
    assert str(report.problems[0].path) in caplog.text
    assert report.checkpoints == {session: good}
    assert list(report.sessions) == [session]
    assert store.load_checkpoints(session) == good


BAD_SESSION_FILES = {
    "torn": ("torn", lambda s, x: write_bytes(s.session_path(x), b'{"session_id": "')),
    "empty": ("empty", lambda s, x: write_bytes(s.session_path(x), b"  \n")),
    "unknown status": (
        "corrupt",
        lambda s, x: s.write_json(s.session_path(x), session_doc(x, status="sleeping")),
    ),
    "name disagrees": (
        "corrupt",
        lambda s, x: s.write_json(s.session_path(x), session_doc(new_id())),
    ),
    "future format_version": (
        "version",
        lambda s, x: write_bytes(
            s.session_path(x), json.dumps({**session_doc(x), "format_version": 99}).encode()
        ),
    ),
    "foreign name": ("foreign", lambda s, x: write_bytes(s.sessions_dir / "session.json", b"{}")),
    "symlink": ("foreign", lambda s, x: s.session_path(x).symlink_to("/etc/hostname")),
}


@pytest.mark.parametrize("case", BAD_SESSION_FILES)
def test_bad_session_file_is_reported_by_kind_and_skipped(store: FileStore, case: str) -> None:
    good = sid()
    store.write_session_file(good, session_doc(good))
    bad = sid()
    kind, make_bad = BAD_SESSION_FILES[case]
    make_bad(store, bad)

    report = store.scan()

    assert [p.kind for p in report.problems] == [kind]
    assert list(report.sessions) == [good]
    assert store.load_session_file(bad) is None


def test_load_json_raises_file_problem_error_naming_the_kind(store: FileStore) -> None:
    path = write_bytes(store.root / "exports" / "x.json", b'{"a": ')

    with pytest.raises(FileProblemError) as caught:
        store.load_json(path)

    assert caught.value.problem.kind == "torn"
    assert caught.value.problem.path == path
    assert isinstance(caught.value, StorageError)


def test_scan_of_an_empty_root_finds_nothing(tmp_path: Path) -> None:
    report = FileStore(tmp_path / "missing").scan()
    assert (report.sessions, report.checkpoints, report.problems) == ({}, {}, [])


def test_scan_survives_a_checkpoint_folder_that_is_a_file(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "out")
    write_bytes(files.checkpoints_dir, b"not a folder")
    session = sid()
    files.write_session_file(session, session_doc(session))

    report = files.scan()

    assert list(report.sessions) == [session]
    assert report.checkpoints == {}


# -- newest valid record -----------------------------------------------------------


def test_load_session_state_falls_back_to_newest_checkpoint_when_session_file_is_torn(
    store: FileStore,
) -> None:
    session = sid()
    manuscript = new_id()
    store.write_checkpoint(
        checkpoint(
            session,
            1,
            checkpoint_type=CheckpointType.SESSION_START,
            step=ProcessingStep.INITIALIZING,
            checkpoint_data={"manuscript_id": manuscript},
        )
    )
    store.write_checkpoint(checkpoint(session, 2, progress_percent=40, chapter_number=3))
    store.write_checkpoint(checkpoint(session, 3))
    truncated_newest = store.checkpoint_path(session, 3)
    write_bytes(truncated_newest, truncated_newest.read_bytes()[:40])
    write_bytes(store.session_path(session), b'{"session_id": "' + session.encode())

    state = store.load_session_state(session)

    assert state is not None
    assert state["recovered_from"] == "checkpoint"
    assert state["last_sequence_number"] == 2
    assert state["progress_percent"] == 40
    assert state["current_chapter"] == 3
    assert state["last_completed_step"] == "chapter_analyzed"
    assert state["manuscript_id"] == manuscript
    assert state["status"] == "interrupted"
    assert state["can_resume"] is True


def test_load_session_state_prefers_a_newer_checkpoint_over_a_stale_session_file(
    store: FileStore,
) -> None:
    session = sid()
    store.write_session_file(session, session_doc(session, last_sequence_number=1))
    store.write_checkpoint(checkpoint(session, 1))
    store.write_checkpoint(
        checkpoint(session, 2, checkpoint_type=CheckpointType.SESSION_PAUSED, progress_percent=55)
    )

    state = store.load_session_state(session)

    assert state is not None
    assert state["recovered_from"] == "checkpoint"
    assert (state["last_sequence_number"], state["progress_percent"]) == (2, 55)
    assert state["status"] == "paused"
    assert state["style_config"] == {"art_style": "watercolour"}  # kept from the file


def test_load_session_state_returns_a_current_session_file_as_is(store: FileStore) -> None:
    session = sid()
    data = session_doc(session, last_sequence_number=2)
    store.write_session_file(session, data)
    store.write_checkpoint(checkpoint(session, 2))

    state = store.load_session_state(session)

    assert state == {**data, "format_version": FORMAT_VERSION, "recovered_from": "session_file"}
    assert store.load_session_state(sid()) is None


# -- ids and paths -----------------------------------------------------------------

UUID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BAD_IDS = [
    "../../etc/passwd",
    "../../../../../../../../../../etc/passwd"[:36],
    "x" * 10_000,
    UUID.upper(),
    "{" + UUID + "}",
    "urn:uuid:" + UUID,
    UUID + "/",
    UUID.replace("-", ""),
    "",
    None,
    12345,
]


@pytest.mark.parametrize("bad_id", BAD_IDS, ids=lambda v: repr(v)[:20])
def test_bad_session_ids_raise_and_create_nothing(tmp_path: Path, bad_id: Any) -> None:
    files = FileStore(tmp_path / "out")
    files.ensure_layout()
    before = tree(tmp_path)
    cp = checkpoint(UUID, 1, session_id=bad_id)
    attempts = [
        lambda: files.session_path(bad_id),
        lambda: files.checkpoint_path(bad_id, 1),
        lambda: files.recovery_path(bad_id),
        lambda: files.write_session_file(bad_id, session_doc(UUID)),
        lambda: files.write_checkpoint(cp),
        lambda: files.write_recovery_bundle(bad_id, {"session": {}, "checkpoints": []}),
        lambda: files.load_session_file(bad_id),
        lambda: files.load_checkpoints(bad_id),
        lambda: files.load_session_state(bad_id),
        lambda: files.delete_session_files(bad_id),
    ]
    for attempt in attempts:
        with pytest.raises(InvalidIdError):
            attempt()
    assert tree(tmp_path) == before


@pytest.mark.parametrize("seq", [0, -1, True, 1.5, "1", None])
def test_checkpoint_sequence_must_be_a_positive_int(store: FileStore, seq: Any) -> None:
    with pytest.raises(ValidationError):
        store.checkpoint_path(UUID, seq)


def test_write_json_refuses_paths_outside_the_root(store: FileStore, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (store.root / "exports" / "link").symlink_to(outside)

    for path in (
        tmp_path / "x.json",
        store.root / ".." / "x.json",
        store.root / "exports" / "link" / "x.json",
    ):
        with pytest.raises(StorageError):
            store.write_json(path, {"a": 1})
    assert not (tmp_path / "x.json").exists()
    assert list(outside.iterdir()) == []


def test_write_session_file_rejects_a_document_of_another_session(store: FileStore) -> None:
    session = sid()
    with pytest.raises(ValidationError):
        store.write_session_file(session, session_doc(sid()))
    with pytest.raises(ValidationError):
        store.write_session_file(session, session_doc(session, progress_percent="half"))
    assert not store.session_path(session).exists()


# -- group commit ------------------------------------------------------------------


GROUP_COMMITS = ["syncfs", "fsync-per-file"] if atomic.syncfs_available() else ["fsync-per-file"]
"""The group commits this kernel has (without syncfs(2) the store only ever fsyncs per file)."""


@pytest.fixture(params=GROUP_COMMITS)
def group_store(store: FileStore, request: pytest.FixtureRequest) -> FileStore:
    store.use_syncfs = request.param == "syncfs"
    return store


def test_write_many_writes_every_file_with_its_content(group_store: FileStore) -> None:
    sessions = [sid() for _ in range(10)]
    items = [
        group_store.checkpoint_entry(checkpoint(s, seq)) for s in sessions for seq in (1, 2, 3)
    ]
    items += [group_store.session_file_entry(s, session_doc(s)) for s in sessions]
    duplicate = group_store.session_file_entry(
        sessions[0], session_doc(sessions[0], status="paused")
    )

    group_store.write_many([*items, duplicate])

    report = group_store.scan()
    assert report.problems == []
    assert set(report.sessions) == set(sessions)
    assert report.sessions[sessions[0]]["status"] == "paused"
    for path, doc in items[:-10]:
        assert json.loads(path.read_text()) == {**doc, "format_version": FORMAT_VERSION}
    assert all(len(report.checkpoints[s]) == 3 for s in sessions)
    assert temp_files(group_store.root) == []


def record_sync_protocol(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Log the order of data syncs, renames and folder syncs the writer performs."""
    events: list[str] = []
    real_fsync, real_replace, real_syncfs = os.fsync, os.replace, atomic.syncfs

    def fsync(fd: int) -> None:
        events.append("fsync-file")
        real_fsync(fd)

    def fsync_dir(folder: Path) -> None:
        events.append("fsync-dir")
        fd = os.open(folder, os.O_RDONLY)
        try:
            real_fsync(fd)
        finally:
            os.close(fd)

    def syncfs(fd: int) -> None:
        events.append("syncfs")
        real_syncfs(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    monkeypatch.setattr(atomic.os, "replace", replace)
    monkeypatch.setattr(atomic, "fsync_dir", fsync_dir)
    monkeypatch.setattr(atomic, "syncfs", syncfs)
    return events


def test_write_many_makes_data_durable_before_any_rename_and_folders_after(
    group_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = sid()
    items = [group_store.checkpoint_entry(checkpoint(session, seq)) for seq in (1, 2, 3)]
    items.append(group_store.session_file_entry(session, session_doc(session)))
    events = record_sync_protocol(monkeypatch)

    group_store.write_many(items)

    data_sync = ["syncfs"] if group_store.use_syncfs else ["fsync-file"] * 4
    assert events == [*data_sync, *["replace"] * 4, "fsync-dir", "fsync-dir"]


def test_small_batches_fsync_each_file_instead_of_the_whole_filesystem(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.use_syncfs = True
    events = record_sync_protocol(monkeypatch)

    store.write_many([store.checkpoint_entry(checkpoint(sid(), 1))])

    assert events == ["fsync-file", "replace", "fsync-dir"]


def placed_image(store: FileStore, session: str) -> Path:
    """An image another writer put in place (data synced, folder not)."""
    final = store.images_dir / session / "chapter_1_scene_1.png"
    final.parent.mkdir(parents=True, exist_ok=True)
    final.write_bytes(b"\x89PNG image bytes")
    return final


def test_placed_images_have_their_folder_synced_with_the_batch_and_are_not_rewritten(
    group_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = sid()
    image = placed_image(group_store, session)
    items = [group_store.checkpoint_entry(checkpoint(session, seq)) for seq in (1, 2, 3)]
    items.append(group_store.session_file_entry(session, session_doc(session)))
    events = record_sync_protocol(monkeypatch)

    group_store.write_many(items, [image])

    data_sync = ["syncfs"] if group_store.use_syncfs else ["fsync-file"] * 4
    assert events == [*data_sync, *["replace"] * 4, *["fsync-dir"] * 3]
    assert image.read_bytes() == b"\x89PNG image bytes"


def test_a_batch_of_placed_images_only_syncs_their_folders(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [placed_image(store, sid()) for _ in range(2)]
    events = record_sync_protocol(monkeypatch)

    store.write_many([], images)

    assert events == ["fsync-dir", "fsync-dir"]


def test_a_placed_file_outside_the_output_folder_is_refused_before_anything_is_written(
    store: FileStore, tmp_path: Path
) -> None:
    item = store.checkpoint_entry(checkpoint(sid(), 1))

    with pytest.raises(ValidationError, match="outside the output folder"):
        store.write_many([item], [tmp_path / "elsewhere.png"])

    assert not item[0].exists()


def test_a_batch_resolves_only_folders_it_has_not_met_before(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    image = placed_image(store, sid())
    store.write_many([store.checkpoint_entry(checkpoint(sid(), 1))], [image])
    resolved: list[Path] = []
    resolve = Path.resolve

    def counting_resolve(self: Path, strict: bool = False) -> Path:
        resolved.append(self)
        return resolve(self, strict)

    monkeypatch.setattr(Path, "resolve", counting_resolve)
    store.write_many([store.checkpoint_entry(checkpoint(sid(), 1))], [image])
    assert resolved == []  # the same folders: no lstat per path component again

    other = placed_image(store, sid())
    store.write_many([], [other])
    assert other.parent in resolved


def test_placed_files_escaping_by_dots_or_a_sibling_prefix_are_refused(store: FileStore) -> None:
    sibling = store.root.with_name(store.root.name + "-other") / "image.png"
    for escaping in (store.root / "generated_images" / ".." / ".." / "x.png", sibling):
        with pytest.raises(ValidationError, match="outside the output folder"):
            store.write_many([], [escaping])


def test_a_failed_data_sync_renames_nothing(
    group_store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    new, old = old_and_new_batch(group_store, 6)

    def failing_sync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(atomic, "syncfs", failing_sync)
    monkeypatch.setattr(atomic.os, "fsync", failing_sync)
    with pytest.raises(StorageError, match="Input/output error"):
        group_store.write_many(new)
    monkeypatch.undo()

    assert assert_old_or_new(group_store, new, old) == ["old"] * 6
    assert temp_files(group_store.root) == []


def test_write_json_syncs_file_then_renames_then_syncs_folder(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = record_sync_protocol(monkeypatch)

    store.write_checkpoint(checkpoint(sid(), 1))

    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_unsynced_store_still_writes_atomically(tmp_path: Path) -> None:
    fast = FileStore(tmp_path / "out", fsync=False)
    session = sid()
    fast.write_many([fast.checkpoint_entry(checkpoint(session, seq)) for seq in (1, 2)])
    assert [cp.sequence_number for cp in fast.load_checkpoints(session)] == [1, 2]
    assert temp_files(fast.root) == []


def test_write_many_with_an_unencodable_document_writes_nothing(store: FileStore) -> None:
    session = sid()
    before = tree(store.root)
    items = [
        store.checkpoint_entry(checkpoint(session, 1)),
        (store.session_path(session), {"session_id": session, "bad": object()}),
    ]

    with pytest.raises(ValidationError):
        store.write_many(items)

    assert tree(store.root) == before


def old_and_new_batch(store: FileStore, count: int) -> tuple[list[tuple[Path, dict]], list[dict]]:
    session = sid()
    old = [checkpoint(session, seq, next_action="old").to_json() for seq in range(1, count + 1)]
    store.write_many([(store.checkpoint_path(session, d["sequence_number"]), d) for d in old])
    new = [
        store.checkpoint_entry(checkpoint(session, seq, next_action="new" * 500))
        for seq in range(1, count + 1)
    ]
    return new, old


def assert_old_or_new(store: FileStore, new: list[tuple[Path, dict]], old: list[dict]) -> list[str]:
    versions = []
    for (path, new_doc), old_doc in zip(new, old, strict=True):
        on_disk = json.loads(path.read_text())
        assert on_disk in ({**old_doc, "format_version": 1}, {**new_doc, "format_version": 1})
        versions.append("new" if on_disk["next_action"] != "old" else "old")
    return versions


@pytest.mark.parametrize("fail_after", [0, 1, 5, 9])
def test_failed_write_many_leaves_each_file_old_or_new_and_no_temp_files(
    group_store: FileStore, monkeypatch: pytest.MonkeyPatch, fail_after: int
) -> None:
    new, old = old_and_new_batch(group_store, 10)
    real_replace = os.replace
    calls = []

    def replace_then_fail(src: Any, dst: Any) -> None:
        if len(calls) == fail_after:
            raise OSError(28, "No space left on device")
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace_then_fail)
    with pytest.raises(StorageError):
        group_store.write_many(new)
    monkeypatch.undo()

    versions = assert_old_or_new(group_store, new, old)
    assert versions == ["new"] * fail_after + ["old"] * (10 - fail_after)
    assert temp_files(group_store.root) == []
    group_store.write_many(new)  # the retry completes the batch
    assert assert_old_or_new(group_store, new, old) == ["new"] * 10


CRASHING_WRITER = textwrap.dedent("""
    import json, os, signal, sys
    from pathlib import Path
    from storage import atomic
    from storage.files import FileStore

    root, kill_after, use_syncfs = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    store = FileStore(Path(root))
    store.use_syncfs = use_syncfs
    items = [(Path(p), doc) for p, doc in json.load(sys.stdin)]
    real_replace, done = os.replace, []

    def replace_then_die(src, dst):
        if len(done) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)
        done.append(dst)
        real_replace(src, dst)

    atomic.os.replace = replace_then_die
    store.write_many(items)
""")


@pytest.mark.parametrize("kill_after", [0, 3, 7])
def test_kill_9_during_write_many_leaves_each_file_old_or_new(
    group_store: FileStore, kill_after: int
) -> None:
    new, old = old_and_new_batch(group_store, 8)
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            CRASHING_WRITER,
            str(group_store.root),
            str(kill_after),
            "1" if group_store.use_syncfs else "0",
        ],
        input=json.dumps([(str(p), d) for p, d in new]),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
        check=False,
    )

    assert child.returncode == -signal.SIGKILL, child.stderr
    assert assert_old_or_new(group_store, new, old) == ["new"] * kill_after + ["old"] * (
        8 - kill_after
    )
    assert len(temp_files(group_store.root)) == 8 - kill_after
    assert group_store.scan().problems == []
    assert group_store.remove_stale_temp_files() == 8 - kill_after
    assert temp_files(group_store.root) == []


# -- deleting and cleaning up --------------------------------------------------------


def populate(store: FileStore, session: str) -> None:
    store.write_session_file(session, session_doc(session))
    store.write_checkpoint(checkpoint(session, 1))
    store.write_json(store.checkpoints_dir / f"{session}_2.json", checkpoint(session, 2).to_json())
    store.write_recovery_bundle(session, {"session": session_doc(session), "checkpoints": []})
    images = store.images_dir / session / "chapter_01"
    images.mkdir(parents=True)
    (images / "scene_001.png").write_bytes(b"\x89PNG")


def test_delete_session_files_removes_everything_of_that_session_only(
    store: FileStore, tmp_path: Path
) -> None:
    doomed, kept = sid(), sid()
    populate(store, doomed)
    populate(store, kept)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (store.images_dir / doomed / "chapter_01" / "link.png").symlink_to(precious)
    kept_tree = {name for name in tree(store.root) if kept in name}

    removed = store.delete_session_files(doomed)

    assert removed == 7
    assert not [name for name in tree(store.root) if doomed in name]
    assert {name for name in tree(store.root) if kept in name} == kept_tree
    assert precious.read_text() == "keep me"
    assert store.delete_session_files(doomed) == 0


def test_delete_session_files_unlinks_a_symlinked_image_folder_without_following_it(
    store: FileStore, tmp_path: Path
) -> None:
    session = sid()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.png").write_bytes(b"x")
    (store.images_dir / session).symlink_to(outside, target_is_directory=True)

    assert store.delete_session_files(session) == 1

    assert not (store.images_dir / session).exists()
    assert (outside / "keep.png").exists()


def test_remove_stale_temp_files_removes_only_our_temp_files(store: FileStore) -> None:
    ours = [
        atomic.temp_path_for(folder / "a.json")
        for folder in (store.sessions_dir, store.checkpoints_dir, store.images_dir)
    ]
    others = [
        store.checkpoints_dir / ".keep",
        store.exports_dir / "draft.tmp",
        store.sessions_dir / ".a.json.tmp",
    ]
    for path in ours + others:
        path.write_text("x")

    assert store.remove_stale_temp_files() == 3

    assert not any(path.exists() for path in ours)
    assert all(path.exists() for path in others)


def test_a_temp_file_a_crash_left_among_the_manuscripts_is_removed(store: FileStore) -> None:
    temp = atomic.temp_path_for(store.manuscript_path(sid()))
    temp.write_text("x")

    assert store.remove_stale_temp_files() == 1
    assert not temp.exists()


def test_remove_stale_temp_files_can_spare_recent_writes(store: FileStore) -> None:
    old, fresh = (atomic.temp_path_for(store.checkpoints_dir / "a.json") for _ in range(2))
    old.write_text("x")
    fresh.write_text("x")
    an_hour_ago = time.time() - 3600
    os.utime(old, (an_hour_ago, an_hour_ago))

    assert store.remove_stale_temp_files(min_age_seconds=60) == 1

    assert (old.exists(), fresh.exists()) == (False, True)


def test_remove_stale_temp_files_spares_writes_in_flight_of_other_live_instances(
    store: FileStore,
) -> None:
    """On a shared output folder, a starting instance must not delete another's temp files."""
    here = atomic.temp_path_for(store.checkpoints_dir / "a.json")
    token = here.name[-36:-4]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:

        def named(pid: int, host: str = token[:8]) -> Path:
            return store.checkpoints_dir / f".a.json.{host}{pid:08x}{token[16:]}.tmp"

        of_live, of_dead = named(live.pid), named(dead.pid)
        other_host = f"{int(token[:8], 16) ^ 1:08x}"
        other_host_fresh = named(live.pid, host=other_host)
        other_host_old = named(dead.pid, host=other_host)
        for path in (of_live, of_dead, other_host_fresh, other_host_old):
            path.write_text("x")
        two_hours_ago = time.time() - 7200
        os.utime(other_host_old, (two_hours_ago, two_hours_ago))

        assert store.remove_stale_temp_files() == 2

        assert of_live.exists() and other_host_fresh.exists()
        assert not of_dead.exists() and not other_host_old.exists()
    finally:
        live.kill()
        live.wait()


# -- recovery bundles ------------------------------------------------------------------


BAD_BUNDLES = {
    "no format_version": (
        {"session_id": UUID, "session": session_doc(UUID), "checkpoints": []},
        "missing format_version",
    ),
    "newer format": (
        {"format_version": 99, "session_id": UUID, "session": session_doc(UUID), "checkpoints": []},
        "format_version 99",
    ),
    "checkpoints not a list": (
        {"format_version": 1, "session_id": UUID, "session": session_doc(UUID), "checkpoints": {}},
        "'checkpoints' must be list",
    ),
    "another session's checkpoint": (
        {
            "format_version": 1,
            "session_id": UUID,
            "session": session_doc(UUID),
            "checkpoints": [checkpoint(new_id(), 1).to_json()],
        },
        "disagree",
    ),
    "bad session id": (
        {"format_version": 1, "session_id": "../x", "session": {}, "checkpoints": []},
        "not a UUID",
    ),
}


@pytest.mark.parametrize("case", BAD_BUNDLES)
def test_load_bundle_rejects_a_bad_bundle_with_a_clear_message(tmp_path: Path, case: str) -> None:
    bundle, reason = BAD_BUNDLES[case]
    path = write_bytes(tmp_path / "bundle.json", json.dumps(bundle).encode())

    with pytest.raises(ValidationError) as caught:
        load_bundle(path)

    assert str(path) in caught.value.message
    assert reason in caught.value.message


def test_load_bundle_rejects_a_torn_bundle(tmp_path: Path) -> None:
    path = write_bytes(tmp_path / "bundle.json", b'{"format_version": 1, "sess')
    with pytest.raises(ValidationError, match="is torn"):
        load_bundle(path)


def test_write_recovery_bundle_refuses_a_bundle_that_would_not_load(store: FileStore) -> None:
    with pytest.raises(ValidationError):
        store.write_recovery_bundle(UUID, {"session": session_doc(UUID), "checkpoints": [1]})
    assert not store.recovery_path(UUID).exists()
