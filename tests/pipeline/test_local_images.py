"""The Pillow image generator, atomic file writes and image file names."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tests_support import record_folder_syncs

from pipeline.analysis import EmotionalMoment
from pipeline.images import (
    LocalImageGenerator,
    folder_sync_deferred,
    image_filename,
    write_file_atomically,
)
from pipeline.prompts import IllustrationPrompt

MOMENT = EmotionalMoment(
    text_excerpt="The storm broke over the castle.",
    start_position=0,
    end_position=32,
    emotional_tones=("fear",),
    intensity_score=0.8,
    context="The storm broke over the castle.",
    characters_present=(),
    setting_description="castle in the storm",
    narrative_context="",
)
PROMPT = IllustrationPrompt(
    provider="local",
    prompt="digital painting of a storm breaking over a castle",
    style_modifiers=("digital painting",),
    negative_prompt="blurry",
    technical_params={"seed": 1},
)


def test_generator_writes_a_valid_png_of_the_configured_size(tmp_path: Path) -> None:
    destination = tmp_path / "chapter_1_scene_1.png"

    LocalImageGenerator(size=128).generate(PROMPT, MOMENT, destination)

    with Image.open(destination) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)
        image.load()
        colours = image.getcolors(maxcolors=128 * 128)
        assert colours is not None and len(colours) > 10  # a picture, not a blank square


def test_the_same_prompt_gives_byte_identical_images(tmp_path: Path) -> None:
    LocalImageGenerator().generate(PROMPT, MOMENT, tmp_path / "a.png")
    LocalImageGenerator().generate(PROMPT, MOMENT, tmp_path / "b.png")

    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_different_tones_give_different_images() -> None:
    generator = LocalImageGenerator(size=64)
    joyful = replace(MOMENT, emotional_tones=("joy",))

    assert generator.render(PROMPT, MOMENT) != generator.render(PROMPT, joyful)


def test_different_prompts_give_different_images() -> None:
    generator = LocalImageGenerator(size=64)
    other = replace(PROMPT, prompt="a quiet meadow at dawn")

    assert generator.render(PROMPT, MOMENT) != generator.render(other, MOMENT)


def test_generation_leaves_only_the_final_file(tmp_path: Path) -> None:
    generator = LocalImageGenerator(size=32)
    for scene in range(1, 4):
        generator.generate(PROMPT, MOMENT, tmp_path / image_filename(1, scene))

    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "chapter_1_scene_1.png",
        "chapter_1_scene_2.png",
        "chapter_1_scene_3.png",
    ]


def test_a_crash_before_the_rename_leaves_neither_a_partial_file_nor_a_temp_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "chapter_2_scene_1.png"

    def crash(src: object, dst: object) -> None:
        raise OSError("disk unplugged")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk unplugged"):
        LocalImageGenerator(size=32).generate(PROMPT, MOMENT, destination)

    assert list(tmp_path.iterdir()) == []


def test_an_existing_image_is_replaced_whole(tmp_path: Path) -> None:
    destination = tmp_path / "img.png"
    destination.write_bytes(b"old contents")

    write_file_atomically(destination, b"new contents")

    assert destination.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["img.png"]


def test_with_the_folder_sync_deferred_the_image_is_in_place_with_its_data_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    destination = tmp_path / "images" / image_filename(1, 1)
    destination.parent.mkdir()  # a new folder's own sync is another test's
    synced: list[str] = []
    fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "file")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)

    with folder_sync_deferred():
        LocalImageGenerator(32).generate(PROMPT, MOMENT, destination)
    assert synced == ["file"]  # its folder goes with the checkpoint's batch
    with Image.open(destination) as image:
        assert image.size == (32, 32)

    write_file_atomically(tmp_path / "after.png", b"x")  # outside the block: both again
    assert synced == ["file", "file", "folder"]


def test_missing_folders_are_created_each_synced_into_its_parent_and_then_cost_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = record_folder_syncs(monkeypatch)
    made: list[str] = []
    mkdir = os.mkdir

    def recording_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
        made.append(os.fspath(path))
        mkdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", recording_mkdir)
    folder = tmp_path / "session" / "images"

    with folder_sync_deferred():
        write_file_atomically(folder / "a.png", b"a")
    assert made == [str(tmp_path / "session"), str(folder)]
    assert synced == [tmp_path, tmp_path / "session"]  # each new entry, in its parent

    made.clear()
    synced.clear()
    with folder_sync_deferred():
        write_file_atomically(folder / "b.png", b"b")
    assert (made, synced) == ([], [])  # the folder exists: no mkdir, no extra sync
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]


def test_missing_folders_are_created(tmp_path: Path) -> None:
    destination = tmp_path / "session" / "images" / "chapter_1_scene_1.png"

    LocalImageGenerator(size=16).generate(PROMPT, MOMENT, destination)

    assert destination.is_file()


def test_rendering_is_cheap() -> None:
    generator = LocalImageGenerator(size=256)
    generator.render(PROMPT, MOMENT)

    start = time.perf_counter()
    for _ in range(10):
        generator.render(PROMPT, MOMENT)
    average = (time.perf_counter() - start) / 10

    # The target is under 20 ms; the bound leaves room for slow CI machines.
    assert average < 0.1


def test_image_filenames_name_chapter_and_scene() -> None:
    assert image_filename(3, 12) == "chapter_3_scene_12.png"


@pytest.mark.parametrize(("chapter", "scene"), [(-1, 1), (1, -2), (True, 1), ("1", 1), (1.0, 1)])
def test_image_filenames_reject_anything_but_non_negative_integers(
    chapter: object, scene: object
) -> None:
    with pytest.raises(ValueError):
        image_filename(chapter, scene)  # type: ignore[arg-type]


@pytest.mark.parametrize("size", [0, 15, 4096, True, "256"])
def test_image_size_out_of_range_is_rejected(size: object) -> None:
    with pytest.raises(ValueError):
        LocalImageGenerator(size=size)  # type: ignore[arg-type]
