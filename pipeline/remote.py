"""Remote providers: emotion analysis, prompts and images from OpenAI-compatible APIs.

They plug in behind the same interfaces as the offline defaults. What comes back from a
model is never trusted: moments are validated, their tones filtered, their intensity
clamped and their positions recomputed by finding the excerpt in the chapter; images are
checked to be images and stored as PNG.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from errors import ProviderError
from pipeline.analysis import TONES, EmotionalMoment, LexiconAnalyzer, clamp_moments
from pipeline.images import write_file_atomically
from pipeline.manuscripts import Chapter
from pipeline.openai_client import OpenAIClient
from pipeline.passages import describe_setting, surrounding_context
from pipeline.prompts import (
    IllustrationPrompt,
    TemplatePromptWriter,
    clip_prompt,
    seed_for,
    style_value,
)

logger = logging.getLogger(__name__)

MAX_INPUT_CHARS = 60_000
"""Chapter text sent to the chat model is cut to this length (context windows are finite)."""

_ANALYSIS_SYSTEM = (
    "You are a literary analyst choosing the moments of a book chapter that most deserve an "
    'illustration. Reply with a JSON object {"moments": [...]} and nothing else. Each '
    "moment has: text_excerpt (one to three consecutive sentences copied verbatim from the "
    "chapter), emotional_tones (one to three of: " + ", ".join(TONES) + "), intensity_score "
    "(0 to 1), characters_present (names), setting_description (a short phrase) and "
    "narrative_context (one sentence on where the moment sits in the story)."
)
_PROMPT_SYSTEM = (
    "You write prompts for text-to-image models. Given a passage of a book and a visual "
    "style, reply with one vivid prompt of at most 120 words describing a single image: "
    "subject, setting, composition, lighting, mood and style. Reply with the prompt only: "
    "no preamble, no quotes, no lists, no text to render in the image."
)
_FENCE = re.compile(r"^\s*```[a-zA-Z]*\s*(.*?)\s*```\s*$", re.DOTALL)
_WORDS = re.compile(r"\w+")


class _ChatStage:
    """An OpenAI-compatible chat model behind one pipeline stage (analysis or prompts)."""

    def __init__(
        self,
        api_base: str,
        api_key: str,
        model: str,
        timeout: float = 60.0,
        retries: int = 2,
        *,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.model = model
        self.client = OpenAIClient(
            api_base, api_key, timeout=timeout, retries=retries, backoff_seconds=backoff_seconds
        )


class OpenAIChatAnalyzer(_ChatStage):
    """Emotion analysis by a chat model (``POST {api_base}/chat/completions``).

    Moments whose excerpt cannot be found in the chapter (even loosely, or by valid
    positions) are dropped; if none is left, the offline ``LexiconAnalyzer`` answers, so
    a chapter always yields at least one moment. A reply that is not JSON is a
    ``ProviderError`` (the session's step retry asks again).
    """

    def analyze(self, chapter: Chapter, max_moments: int) -> list[EmotionalMoment]:
        """Ask the model for up to ``max_moments`` moments of ``chapter``."""
        limit = clamp_moments(max_moments)
        payload = {
            "model": self.model,
            "temperature": 0,
            "response_format": {"type": "json_object"},
            "messages": [
                {"role": "system", "content": _ANALYSIS_SYSTEM},
                {
                    "role": "user",
                    "content": f"Choose at most {limit} moments.\n\nChapter {chapter.number}: "
                    f"{chapter.title}\n\n{chapter.content[:MAX_INPUT_CHARS]}",
                },
            ],
        }
        items = parse_moment_items(self.client.chat(payload))
        moments = [m for m in (moment_from_item(item, chapter) for item in items) if m]
        chosen: list[EmotionalMoment] = []
        for moment in sorted(moments, key=lambda m: (-m.intensity_score, m.start_position)):
            overlaps = any(
                moment.start_position < c.end_position and c.start_position < moment.end_position
                for c in chosen
            )
            if not overlaps and len(chosen) < limit:
                chosen.append(moment)
        if not chosen:
            logger.warning(
                "chapter %d: the model's %d moments matched no text; using the lexicon",
                chapter.number, len(items),
            )  # fmt: skip
            return LexiconAnalyzer().analyze(chapter, limit)
        return sorted(chosen, key=lambda m: m.start_position)


def parse_moment_items(reply: str) -> list[dict[str, Any]]:
    """The moment objects in a model's reply: ``{"moments": [...]}``, a bare list, fenced.

    Raises:
        ProviderError: the reply holds no JSON.
    """
    text = reply.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError:
        first = min((i for i in (text.find("{"), text.find("[")) if i != -1), default=-1)
        last = max(text.rfind("}"), text.rfind("]"))
        try:
            data = json.loads(text[first : last + 1]) if 0 <= first < last else None
        except json.JSONDecodeError:
            data = None
        if data is None:
            raise ProviderError("the analysis reply is not JSON") from None
    if isinstance(data, dict):
        data = data.get("moments", next((v for v in data.values() if isinstance(v, list)), []))
    if not isinstance(data, list):
        raise ProviderError("the analysis reply has no list of moments")
    return [item for item in data if isinstance(item, dict)]


def moment_from_item(item: Mapping[str, Any], chapter: Chapter) -> EmotionalMoment | None:
    """A validated moment from one model item, or None when its text is not in the chapter."""
    content = chapter.content
    excerpt = item.get("text_excerpt")
    span = locate_excerpt(content, excerpt) if isinstance(excerpt, str) else None
    if span is None:
        start, end = item.get("start_position"), item.get("end_position")
        if (
            isinstance(start, int)
            and isinstance(end, int)
            and not isinstance(start, bool)
            and not isinstance(end, bool)
            and 0 <= start < end <= len(content)
            and content[start:end].strip()
        ):
            span = (start, end)
    if span is None:
        return None
    start, end = span
    raw_tones = item.get("emotional_tones", [])
    if isinstance(raw_tones, str):
        raw_tones = raw_tones.split(",")
    tones = (
        [t.strip().lower() for t in raw_tones if isinstance(t, str)]
        if isinstance(raw_tones, list)
        else []
    )
    known = tuple(dict.fromkeys(t for t in tones if t in TONES))[:3]
    context = surrounding_context(content, start, end)
    setting = _text(item.get("setting_description"), 300) or describe_setting(
        content[start:end], context
    )
    characters = item.get("characters_present", [])
    return EmotionalMoment(
        text_excerpt=content[start:end],
        start_position=start,
        end_position=end,
        emotional_tones=known or ("neutral",),
        intensity_score=_intensity(item.get("intensity_score")),
        context=context,
        characters_present=tuple(
            dict.fromkeys(
                _text(c, 100)
                for c in (characters if isinstance(characters, list) else [])
                if _text(c, 100)
            )
        )[:10],
        setting_description=setting,
        narrative_context=_text(item.get("narrative_context"), 500)
        or f"Chapter {chapter.number} ({chapter.title})",
    )


def locate_excerpt(content: str, excerpt: str) -> tuple[int, int] | None:
    """Where ``excerpt`` is in ``content``: exactly, ignoring case, spacing and punctuation,
    or by its first words (models quote loosely). None when it is not there.
    """
    excerpt = excerpt.strip()
    if not excerpt:
        return None
    index = content.find(excerpt)
    if index != -1:
        return index, index + len(excerpt)
    words = _WORDS.findall(excerpt)
    if not words:
        return None
    match = re.search(r"\W+".join(map(re.escape, words[:80])), content, re.IGNORECASE)
    if match and len(words) <= 80:
        return match.span()
    prefix = re.search(r"\W+".join(map(re.escape, words[:8])), content, re.IGNORECASE)
    if prefix is None:
        return None
    start = prefix.start()
    end = min(len(content), start + len(excerpt))
    space = content.rfind(" ", prefix.end(), end)
    end = space if end < len(content) and space != -1 else end
    return start, end


def _intensity(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return 0.5
    try:
        number = float(value)
    except ValueError:
        return 0.5
    if number != number:  # NaN
        return 0.5
    return round(min(1.0, max(0.0, number)), 3)


def _text(value: object, limit: int) -> str:
    return " ".join(value.split())[:limit] if isinstance(value, str) else ""


class OpenAIPromptWriter(_ChatStage):
    """Prompts written by a chat model from the moment and the style config.

    The template writer's modifiers, negative prompt and technical parameters are kept;
    the model writes the prompt text itself.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._template = TemplatePromptWriter()

    def write(
        self, moment: EmotionalMoment, chapter: Chapter, style_config: Mapping[str, Any]
    ) -> IllustrationPrompt:
        """Ask the model for the prompt of ``moment``.

        Raises:
            ProviderError: the call failed or the reply was empty.
        """
        draft = self._template.write(moment, chapter, style_config)
        brief = "\n".join(
            [
                f"Chapter: {chapter.title}",
                f"Passage: {' '.join(moment.text_excerpt.split())[:1500]}",
                f"Tones: {', '.join(moment.emotional_tones)} "
                f"(intensity {moment.intensity_score:.2f})",
                f"Setting: {moment.setting_description or 'unspecified'}",
                f"Characters: {', '.join(moment.characters_present) or 'none named'}",
                f"Art style: {style_value(style_config, 'art_style')}",
                f"Colour palette: {style_value(style_config, 'color_palette')}",
                f"Artistic influences: {style_value(style_config, 'artistic_influences') or '-'}",
            ]
        )
        payload = {
            "model": self.model,
            "temperature": 0.7,
            "messages": [
                {"role": "system", "content": _PROMPT_SYSTEM},
                {"role": "user", "content": brief},
            ],
        }
        reply = self.client.chat(payload).strip()
        fenced = _FENCE.match(reply)
        text = clip_prompt(" ".join((fenced.group(1) if fenced else reply).split()).strip("\"'"))
        if not text:
            raise ProviderError("the prompt model replied with an empty prompt")
        return IllustrationPrompt(
            provider="openai",
            prompt=text,
            style_modifiers=draft.style_modifiers,
            negative_prompt=draft.negative_prompt,
            technical_params={**draft.technical_params, "seed": seed_for(text)},
        )


class OpenAIImageGenerator:
    """Images from ``POST {api_base}/images/generations`` (``response_format: b64_json``).

    Args:
        size: Square size in pixels, or an explicit ``"WIDTHxHEIGHT"``.
    """

    def __init__(
        self,
        api_base: str,
        api_key: str,
        model: str,
        size: int | str = 1024,
        timeout: float = 60.0,
        retries: int = 2,
        *,
        backoff_seconds: float = 0.5,
    ) -> None:
        self.model = model
        self.size = size if isinstance(size, str) else f"{int(size)}x{int(size)}"
        self.client = OpenAIClient(
            api_base, api_key, timeout=timeout, retries=retries, backoff_seconds=backoff_seconds
        )

    def generate(
        self, prompt: IllustrationPrompt, moment: EmotionalMoment, destination: Path
    ) -> None:
        """Generate the image and write it atomically to ``destination`` as PNG.

        Raises:
            ProviderError: the call failed or the reply held no valid image.
        """
        payload = {
            "model": self.model,
            "prompt": prompt.prompt,
            "n": 1,
            "size": self.size,
            "response_format": "b64_json",
        }
        data = self.client.post_json("/images/generations", payload)
        try:
            encoded = data["data"][0]["b64_json"]
            raw = base64.b64decode(encoded, validate=True)
        except (KeyError, IndexError, TypeError, binascii.Error, ValueError) as exc:
            raise ProviderError("the image reply has no valid data[0].b64_json") from exc
        write_file_atomically(Path(destination), as_png(raw))


def as_png(raw: bytes) -> bytes:
    """``raw`` if it is a PNG, else the image re-encoded as PNG.

    Raises:
        ProviderError: ``raw`` is not an image Pillow can read.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as probe:
                kind = probe.format
                probe.verify()
            if kind == "PNG":
                return raw
            with Image.open(io.BytesIO(raw)) as image:
                converted = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    except (
        UnidentifiedImageError,
        Image.DecompressionBombError,
        OSError,
        SyntaxError,
        ValueError,
        Warning,
    ) as exc:
        raise ProviderError(f"the provider returned something that is not an image: {exc}") from exc
    buffer = io.BytesIO()
    converted.save(buffer, format="PNG")
    return buffer.getvalue()
