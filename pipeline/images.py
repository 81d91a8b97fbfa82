"""Image generation: turn an illustration prompt into a PNG file, written atomically.

``LocalImageGenerator`` is the offline default: a small landscape rendered with Pillow
(gradient sky, a sun or moon, hills and shapes) whose colours come from the moment's
tones and whose composition comes from a seed hashed from the prompt, so the same prompt
always gives the same bytes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import random
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from PIL import Image, ImageDraw

from pipeline.analysis import EmotionalMoment
from pipeline.prompts import IllustrationPrompt, seed_for
from storage.atomic import atomic_write, make_dirs

logger = logging.getLogger(__name__)

RGB = tuple[int, int, int]

PALETTES: Mapping[str, tuple[RGB, RGB, RGB, RGB]] = {
    # tone: (sky top, sky at the horizon, ground, accent)
    "joy": ((120, 190, 255), (255, 230, 150), (110, 180, 80), (255, 220, 60)),
    "sadness": ((60, 70, 100), (130, 140, 160), (60, 70, 80), (170, 180, 200)),
    "anger": ((120, 20, 20), (240, 90, 40), (60, 20, 15), (255, 60, 30)),
    "fear": ((10, 10, 30), (60, 40, 80), (15, 15, 20), (200, 200, 220)),
    "surprise": ((80, 40, 160), (255, 170, 60), (70, 60, 110), (255, 255, 120)),
    "disgust": ((70, 80, 30), (150, 160, 70), (60, 55, 30), (120, 140, 40)),
    "anticipation": ((250, 150, 80), (255, 220, 160), (120, 100, 70), (255, 180, 90)),
    "trust": ((70, 140, 200), (180, 220, 240), (70, 130, 90), (255, 255, 230)),
    "melancholy": ((80, 90, 120), (170, 160, 170), (80, 80, 90), (210, 200, 190)),
    "excitement": ((255, 60, 120), (255, 200, 50), (120, 40, 90), (255, 255, 255)),
    "tension": ((40, 30, 40), (150, 60, 40), (30, 25, 25), (230, 120, 40)),
    "peace": ((150, 200, 230), (230, 240, 220), (130, 180, 120), (255, 250, 220)),
    "mystery": ((20, 20, 60), (80, 50, 120), (20, 25, 45), (180, 160, 255)),
    "curiosity": ((40, 120, 160), (200, 220, 150), (80, 120, 80), (255, 210, 100)),
    "romance": ((200, 80, 120), (255, 190, 170), (130, 60, 80), (255, 230, 230)),
    "adventure": ((40, 110, 190), (250, 200, 120), (110, 90, 50), (255, 240, 180)),
    "suspense": ((15, 20, 35), (70, 70, 90), (10, 12, 20), (230, 230, 180)),
    "courage": ((160, 60, 30), (255, 190, 90), (90, 60, 40), (255, 230, 120)),
    "triumph": ((250, 170, 40), (255, 240, 170), (150, 110, 50), (255, 255, 200)),
    "neutral": ((140, 160, 180), (210, 215, 220), (120, 125, 120), (240, 240, 235)),
    "serenity": ((120, 180, 220), (220, 235, 245), (150, 190, 170), (255, 255, 255)),
    "nostalgia": ((180, 130, 90), (240, 210, 160), (130, 100, 70), (255, 235, 190)),
    "warmth": ((230, 120, 60), (255, 210, 150), (140, 80, 50), (255, 200, 120)),
    "unease": ((50, 60, 50), (140, 150, 110), (40, 45, 35), (200, 210, 150)),
}
"""Colours of each tone."""

_NIGHT_TONES = frozenset({"fear", "mystery", "suspense", "sadness", "tension", "unease"})


class ImageGenerator(Protocol):
    """Makes the image for a prompt."""

    def generate(
        self, prompt: IllustrationPrompt, moment: EmotionalMoment, destination: Path
    ) -> None:
        """Write a PNG image for ``prompt`` at ``destination`` (atomically).

        Raises:
            ProviderError: the provider failed (after its own retries).
        """
        ...


def image_filename(chapter_number: int, scene_number: int) -> str:
    """The file name of a scene's image: ``chapter_{n}_scene_{k}.png``.

    Raises:
        ValueError: a number is not a non-negative integer (so no name can escape its folder).
    """
    for value in (chapter_number, scene_number):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"image numbers must be non-negative integers, got {value!r}")
    return f"chapter_{chapter_number}_scene_{scene_number}.png"


_deferred = threading.local()


@contextlib.contextmanager
def folder_sync_deferred() -> Iterator[None]:
    """Leave the folder fsync of this thread's :func:`write_file_atomically` calls to the
    caller, who syncs the folder with its next group commit.

    A SessionActor generates its image inside this block and passes the image in its
    checkpoint (``CheckpointReached.placed_files``): the PersistenceActor syncs the folder
    with the checkpoint's batch, before the acknowledgement. The image's data is still
    synced before its rename, so a complete image is all a crash can leave at its name,
    and a resumed session that finds it does not pay for it again.
    """
    outer = getattr(_deferred, "active", False)
    _deferred.active = True
    try:
        yield
    finally:
        _deferred.active = outer


def write_file_atomically(destination: Path, data: bytes) -> None:
    """Write ``data`` to ``destination`` so that only the complete file can ever appear there.

    The storage layer's atomic write (:func:`storage.atomic.atomic_write`): a unique
    temporary file in the same folder, written, fsynced and renamed over ``destination``;
    its temp name is one the start-up clean-up recognises after a kill -9. The folder is
    then fsynced so the rename survives a crash (inside :func:`folder_sync_deferred`, by
    the caller's group commit). On any error the temporary file is removed. Missing
    folders are created, each synced into its parent; an existing folder costs no system
    call of its own.
    """
    destination = Path(destination)
    sync_folder = not getattr(_deferred, "active", False)
    try:
        atomic_write(destination, data, sync_folder=sync_folder)
    except FileNotFoundError:
        if destination.parent.is_dir():
            raise
        # Created with each new entry synced into its parent, so the folder cannot
        # vanish in a crash with the image in it.
        make_dirs(destination.parent, fsync=True)
        atomic_write(destination, data, sync_folder=sync_folder)


class LocalImageGenerator:
    """Renders a small tone-coloured landscape with Pillow; the offline default.

    Args:
        size: Width and height in pixels (16..2048).
    """

    def __init__(self, size: int = 256) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 16 <= size <= 2048:
            raise ValueError(f"image size must be an integer in 16..2048, got {size!r}")
        self.size = size

    def generate(
        self, prompt: IllustrationPrompt, moment: EmotionalMoment, destination: Path
    ) -> None:
        """Render the image for ``prompt`` and write it atomically to ``destination``."""
        write_file_atomically(Path(destination), self.render(prompt, moment))
        logger.debug("rendered %s", destination)

    def render(self, prompt: IllustrationPrompt, moment: EmotionalMoment) -> bytes:
        """The PNG bytes for ``prompt``: same prompt and moment, same bytes."""
        tones = [t for t in moment.emotional_tones if t in PALETTES] or ["neutral"]
        intensity = min(1.0, max(0.0, float(moment.intensity_score)))
        rng = random.Random(seed_for(f"{prompt.prompt}|{','.join(tones)}|{intensity:.3f}"))
        top, horizon_colour, ground, accent = PALETTES[tones[0]]
        if len(tones) > 1:
            accent = PALETTES[tones[1]][3]
        size = self.size
        # Intense moments get a low horizon (a big, dramatic sky); calm ones a high one.
        horizon = int(size * (0.72 - 0.25 * intensity + rng.uniform(-0.05, 0.05)))
        image = _sky(size, top, horizon_colour, horizon)
        draw = ImageDraw.Draw(image)
        if tones[0] in _NIGHT_TONES:
            for _ in range(8 + int(24 * intensity)):
                x, y = rng.randrange(size), rng.randrange(max(1, horizon))
                draw.point((x, y), fill=accent)
        radius = int(size * (0.06 + 0.08 * intensity))
        cx = rng.randrange(radius, size - radius)
        cy = rng.randrange(radius, max(radius + 1, horizon - radius))
        if intensity >= 0.6:  # rays behind the hills
            for _ in range(int(8 * intensity)):
                end = (rng.randrange(size), rng.randrange(horizon, size))
                draw.line(((cx, cy), end), fill=_shade(accent, 0.9), width=1)
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=accent)
        _hills(draw, rng, size, horizon - size // 10, _shade(ground, 1.25), roughness=0.08)
        _hills(draw, rng, size, horizon, ground, roughness=0.04 + 0.08 * intensity)
        _shapes(draw, rng, size, horizon, _shade(ground, 0.6), 3 + int(8 * intensity))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", compress_level=6)
        return buffer.getvalue()


def _sky(size: int, top: RGB, bottom: RGB, horizon: int) -> Image.Image:
    """A vertical gradient from ``top`` to ``bottom`` that reaches ``bottom`` at the horizon."""
    height = max(1, min(size, horizon))
    mask = Image.linear_gradient("L").resize((size, height))
    sky = Image.composite(
        Image.new("RGB", (size, height), bottom), Image.new("RGB", (size, height), top), mask
    )
    image = Image.new("RGB", (size, size), bottom)
    image.paste(sky, (0, 0))
    return image


def _hills(
    draw: ImageDraw.ImageDraw,
    rng: random.Random,
    size: int,
    base: int,
    colour: RGB,
    roughness: float,
) -> None:
    step = max(4, size // 8)
    points = [(0, size)]
    for x in range(0, size + step, step):
        points.append((min(x, size), base + int(rng.uniform(-roughness, roughness) * size)))
    points.append((size, size))
    draw.polygon(points, fill=colour)


def _shapes(
    draw: ImageDraw.ImageDraw, rng: random.Random, size: int, horizon: int, colour: RGB, count: int
) -> None:
    for _ in range(count):
        x = rng.randrange(size)
        y = rng.randrange(horizon, size)
        h = int(size * rng.uniform(0.05, 0.18))
        w = max(2, h // 3)
        if rng.random() < 0.6:  # a tree
            draw.polygon(((x, y - h), (x - w, y), (x + w, y)), fill=colour)
        else:  # a house
            draw.rectangle((x - w, y - h // 2, x + w, y), fill=colour)
            draw.polygon(
                ((x - w - 2, y - h // 2), (x, y - h), (x + w + 2, y - h // 2)), fill=colour
            )


def _shade(colour: RGB, factor: float) -> RGB:
    r, g, b = (max(0, min(255, int(c * factor))) for c in colour)
    return (r, g, b)
