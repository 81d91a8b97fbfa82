"""Exports of an illustrated manuscript: HTML (chapters, moments, prompts, images) or JSON."""

from __future__ import annotations

import html
import re
from collections import defaultdict
from typing import Any

from pipeline.manuscripts import Manuscript
from storage.records import Checkpoint, ImageRecord

EXPORT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,150}\.(html|json)$")
"""What an export file may be called: no separators, no dots but the extension."""


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
) -> dict[str, Any]:
    """The JSON export: manuscript metadata, and per chapter its moments, prompts and images."""
    results = chapter_results(checkpoints)
    by_chapter: dict[int, list[ImageRecord]] = defaultdict(list)
    for image in images:
        by_chapter[image.chapter_number].append(image)
    chapters = []
    for chapter in manuscript.chapters:
        chapters.append(
            {
                "number": chapter.number,
                "title": chapter.title,
                "content": chapter.content,
                "word_count": chapter.word_count,
                "emotional_moments": results[chapter.number]["moments"]
                if chapter.number in results
                else [],
                "prompts": results[chapter.number]["prompts"] if chapter.number in results else [],
                "images": [
                    {
                        "url": image.web_url,
                        "prompt": image.prompt_used,
                        "chapter_number": image.chapter_number,
                        "scene_number": image.scene_number,
                    }
                    for image in by_chapter.get(chapter.number, [])
                ],
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


def render_html(document: dict[str, Any]) -> str:
    """A standalone HTML page of the export (every value escaped)."""
    e = html.escape
    meta = document["manuscript"]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(meta['title'])}</title>",
        "<style>body{font-family:serif;max-width:48em;margin:auto}img{max-width:100%}"
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
            parts.append(
                f'<figure><img src="{e(image["url"])}" alt="{e(prompt[:200])}">'
                f'<figcaption class="prompt">Scene {image["scene_number"]}: {e(prompt)}'
                "</figcaption></figure>"
            )
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)
