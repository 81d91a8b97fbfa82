"""Exports of an illustrated manuscript: HTML (chapters, moments, prompts, images) or JSON.

The HTML page is self-contained: its images are embedded as ``data:`` URIs, so it shows
them opened from disk (``file://``), mailed or archived. Both exports state each image's
real size, read from the image file (the prompt's ``technical_params`` ask for a size; the
generator may have made another).
"""

from __future__ import annotations

import base64
import html
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from pipeline.manuscripts import Manuscript
from storage.records import Checkpoint, ImageRecord

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,150}\.(html|json)$")
"""What an export file may be called: no separators, no dots but the extension."""


@dataclass(frozen=True)
class ImageFile:
    """An image file of the export: its size, read from its header."""

    path: Path
    width: int
    height: int
    mime: str

    @classmethod
    def read(cls, path: Path) -> ImageFile | None:
        """The file's size and type (None if it is missing or not an image)."""
        try:
            with Image.open(path) as image:
                width, height = image.size
                mime = Image.MIME.get(image.format or "", "application/octet-stream")
        except (OSError, UnidentifiedImageError):
            return None
        return cls(path, width, height, mime)

    def data_uri(self) -> str:
        """The image as a ``data:`` URI (read now: only the HTML export embeds images)."""
        return f"data:{self.mime};base64,{base64.b64encode(self.path.read_bytes()).decode('ascii')}"


def chapter_results(checkpoints: list[Checkpoint]) -> dict[int, dict[str, list[dict[str, Any]]]]:
    """Moments and prompts of each chapter, from the checkpoints' stored results."""
    results: dict[int, dict[str, list[dict[str, Any]]]] = defaultdict(
        lambda: {"moments": [], "prompts": []}
    )
    for cp in checkpoints:
        if cp.chapter_number is None:
            continue
        data = cp.checkpoint_data
        if "emotional_moments" in data:
            results[cp.chapter_number]["moments"] = list(data["emotional_moments"])
        if "generated_prompts" in data:
            results[cp.chapter_number]["prompts"] = list(data["generated_prompts"])
    return results


def export_document(
    manuscript_id: str,
    manuscript: Manuscript,
    session_id: str | None,
    checkpoints: list[Checkpoint],
    images: list[ImageRecord],
    files: Mapping[str, ImageFile] | None = None,
) -> dict[str, Any]:
    """The JSON export: manuscript metadata, and per chapter its moments, prompts and images.

    ``files`` maps an image's URL to its file: its real width and height go into the
    image entry and into the ``technical_params`` of the prompt it was made from.
    """
    files = files or {}
    results = chapter_results(checkpoints)
    by_chapter: dict[int, list[ImageRecord]] = defaultdict(list)
    for image in images:
        by_chapter[image.chapter_number].append(image)
    chapters = []
    for chapter in manuscript.chapters:
        found = results.get(chapter.number, {"moments": [], "prompts": []})
        prompts = [dict(prompt) for prompt in found["prompts"]]
        entries = []
        for image in by_chapter.get(chapter.number, []):
            entry: dict[str, Any] = {
                "url": image.web_url,
                "prompt": image.prompt_used,
                "chapter_number": image.chapter_number,
                "scene_number": image.scene_number,
            }
            file = files.get(image.web_url)
            if file is not None:
                entry.update(width=file.width, height=file.height)
                if 1 <= image.scene_number <= len(prompts):
                    prompt = prompts[image.scene_number - 1]
                    params = dict(prompt.get("technical_params") or {})
                    prompt["technical_params"] = {
                        **params,
                        "width": file.width,
                        "height": file.height,
                    }
            entries.append(entry)
        chapters.append(
            {
                "number": chapter.number,
                "title": chapter.title,
                "content": chapter.content,
                "word_count": chapter.word_count,
                "emotional_moments": found["moments"],
                "prompts": prompts,
                "images": entries,
            }
        )
    meta = manuscript.to_dict()
    meta.pop("chapters")
    return {
        "manuscript_id": manuscript_id,
        "session_id": session_id,
        "manuscript": meta,
        "chapters": chapters,
    }


def render_html(document: dict[str, Any], files: Mapping[str, ImageFile] | None = None) -> str:
    """A standalone HTML page of the export (every value escaped; the images in ``files``
    embedded, so the page needs nothing but itself)."""
    e = html.escape
    files = files or {}
    meta = document["manuscript"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(meta['title'])}</title>",
        "<style>body{font-family:serif;max-width:48em;margin:auto}img{max-width:100%;height:auto}"
        ".prompt{color:#555;font-size:.9em}</style></head><body>",
        f"<h1>{e(meta['title'])}</h1>",
        f'<p class="author">by {e(meta["author"])}</p>',
    ]
    if meta.get("description"):
        parts.append(f'<p class="description">{e(meta["description"])}</p>')
    for chapter in document["chapters"]:
        parts.append(f'<section class="chapter" id="chapter-{chapter["number"]}">')
        parts.append(f"<h2>Chapter {chapter['number']}: {e(chapter['title'])}</h2>")
        for paragraph in chapter["content"].split("\n\n"):
            if paragraph.strip():
                parts.append(f"<p>{e(paragraph.strip())}</p>")
        if chapter["emotional_moments"]:
            parts.append('<h3>Emotional moments</h3><ul class="moments">')
            for moment in chapter["emotional_moments"]:
                tones = ", ".join(str(t) for t in moment.get("emotional_tones", []))
                parts.append(
                    f"<li><blockquote>{e(str(moment.get('text_excerpt', '')))}</blockquote>"
                    f'<span class="tones">{e(tones)}</span> '
                    f"(intensity {e(str(moment.get('intensity_score', '')))})</li>"
                )
            parts.append("</ul>")
        prompts = {i + 1: p for i, p in enumerate(chapter["prompts"])}
        for image in chapter["images"]:
            prompt = image["prompt"] or prompts.get(image["scene_number"], {}).get("prompt", "")
            file = files.get(image["url"])
            source = file.data_uri() if file is not None else image["url"]
            size = f' width="{file.width}" height="{file.height}"' if file is not None else ""
            parts.append(
                f'<figure><img src="{e(source)}"{size} alt="{e(prompt[:200])}">'
                f'<figcaption class="prompt">Scene {image["scene_number"]}: {e(prompt)}'
                "</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
