"""Illustration prompts: one per emotional moment, shaped by the session's style config.

``TemplatePromptWriter`` is the offline default: a deterministic template filled with the
moment's excerpt, mood, setting and characters and the style config's art style, colour
palette and artistic influences.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from errors import ValidationError
from pipeline.analysis import EmotionalMoment
from pipeline.manuscripts import Chapter

logger = logging.getLogger(__name__)

MAX_PROMPT_CHARS = 1000
"""Prompts are cut to this length (image APIs limit them; 1000 is safe for all we use)."""

DEFAULT_STYLE: Mapping[str, str] = {
    "art_style": "digital painting",
    "color_palette": "rich, harmonious colours",
    "artistic_influences": "",
    "image_provider": "local",
}
_STYLE_LIMITS = {"art_style": 80, "color_palette": 120, "artistic_influences": 200}
_PROVIDER = re.compile(r"[^a-z0-9_.-]+")

MOOD_WORDS: Mapping[str, str] = {
    "joy": "joyful, luminous",
    "sadness": "sorrowful, subdued",
    "anger": "fiery, turbulent",
    "fear": "ominous, fearful",
    "surprise": "startling, dynamic",
    "disgust": "grim, unsettling",
    "anticipation": "expectant, poised",
    "trust": "steadfast, reassuring",
    "melancholy": "melancholic, muted",
    "excitement": "energetic, vivid",
    "tension": "tense, taut",
    "peace": "peaceful, calm",
    "mystery": "mysterious, veiled",
    "curiosity": "inquisitive, intriguing",
    "romance": "romantic, tender",
    "adventure": "adventurous, sweeping",
    "suspense": "suspenseful, hushed",
    "courage": "heroic, resolute",
    "triumph": "triumphant, radiant",
    "neutral": "balanced, natural",
    "serenity": "serene, tranquil",
    "nostalgia": "nostalgic, wistful",
    "warmth": "warm, intimate",
    "unease": "uneasy, eerie",
}
"""Mood words for each tone."""

NEGATIVE_PROMPT = (
    "blurry, low quality, distorted anatomy, extra limbs, deformed hands, text, letters, "
    "watermark, signature, logo, frame, cropped"
)


@dataclass(frozen=True)
class IllustrationPrompt:
    """What to ask an image generator for, for one moment."""

    provider: str
    """The image provider the prompt is written for."""
    prompt: str
    style_modifiers: tuple[str, ...]
    negative_prompt: str
    technical_params: dict[str, Any] = field(default_factory=dict)
    """Provider settings: width, height, steps, seed, ..."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the original API's keys."""
        return {
            "provider": self.provider,
            "prompt": self.prompt,
            "style_modifiers": list(self.style_modifiers),
            "negative_prompt": self.negative_prompt,
            "technical_params": dict(self.technical_params),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IllustrationPrompt:
        """Rebuild a prompt from ``to_dict`` output.

        Raises:
            ValidationError: a field is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValidationError("a prompt must be an object", details={"field": "prompt"})
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise ValidationError("prompt.prompt must be a string", details={"field": "prompt"})
        modifiers = data.get("style_modifiers", [])
        params = data.get("technical_params", {})
        if not isinstance(modifiers, list | tuple) or not isinstance(params, Mapping):
            raise ValidationError(
                "prompt.style_modifiers must be a list and technical_params an object",
                details={"field": "style_modifiers"},
            )
        return cls(
            provider=str(data.get("provider", "local")),
            prompt=prompt,
            style_modifiers=tuple(str(m) for m in modifiers),
            negative_prompt=str(data.get("negative_prompt", "")),
            technical_params=dict(params),
        )


class PromptWriter(Protocol):
    """Writes an illustration prompt for a moment."""

    def write(
        self, moment: EmotionalMoment, chapter: Chapter, style_config: Mapping[str, Any]
    ) -> IllustrationPrompt:
        """Return the prompt for ``moment`` of ``chapter`` in the session's style.

        Raises:
            ProviderError: the provider failed (after its own retries).
        """
        ...


def style_value(style_config: object, key: str) -> str:
    """``style_config[key]`` cleaned for use in a prompt, or the default.

    Wrong types fall back to the default (a list of strings is joined), control
    characters and runs of whitespace collapse to one space, and long values are cut.
    """
    default = DEFAULT_STYLE.get(key, "")
    value = style_config.get(key) if isinstance(style_config, Mapping) else None
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        value = ", ".join(v for v in value if v.strip())
    if not isinstance(value, str):
        return default
    cleaned = " ".join("".join(ch if ch.isprintable() else " " for ch in value).split())
    limit = _STYLE_LIMITS.get(key, 80)
    if len(cleaned) > limit:
        cleaned = cleaned[:limit].rsplit(" ", 1)[0] if " " in cleaned[:limit] else cleaned[:limit]
    return cleaned or default


def image_provider(style_config: object) -> str:
    """The style config's ``image_provider`` as a short identifier (default ``local``)."""
    name = _PROVIDER.sub("", style_value(style_config, "image_provider").lower())[:40]
    return name or DEFAULT_STYLE["image_provider"]


def seed_for(text: str) -> int:
    """A stable 31-bit seed derived from ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big") >> 1


def scene_summary(excerpt: str, limit: int = 300) -> str:
    """The excerpt on one line, without quote marks, cut at a word boundary."""
    text = " ".join(excerpt.replace('"', "").replace("\u201c", "").replace("\u201d", "").split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "..."


def clip_prompt(text: str) -> str:
    """``text`` cut to ``MAX_PROMPT_CHARS`` at a word boundary."""
    if len(text) <= MAX_PROMPT_CHARS:
        return text
    return text[:MAX_PROMPT_CHARS].rsplit(" ", 1)[0]


class TemplatePromptWriter:
    """Deterministic prompts from a template; the offline default.

    Args:
        width: Image width put in ``technical_params``.
        height: Image height put in ``technical_params``.
        steps: Diffusion steps put in ``technical_params``.
    """

    def __init__(self, width: int = 1024, height: int = 1024, steps: int = 30) -> None:
        self.width = width
        self.height = height
        self.steps = steps

    def write(
        self, moment: EmotionalMoment, chapter: Chapter, style_config: Mapping[str, Any]
    ) -> IllustrationPrompt:
        """Fill the template for ``moment``; same inputs, same prompt."""
        art_style = style_value(style_config, "art_style")
        palette = style_value(style_config, "color_palette")
        influences = style_value(style_config, "artistic_influences")
        moods = [MOOD_WORDS.get(tone, "") for tone in moment.emotional_tones[:3]]
        mood = ", ".join(m for m in moods if m) or MOOD_WORDS["neutral"]
        lighting = lighting_for(moment.intensity_score)
        parts = [f'{art_style} illustration of a scene from "{chapter.title}": ']
        parts.append(scene_summary(moment.text_excerpt))
        if moment.setting_description:
            parts.append(f" Setting: {moment.setting_description}.")
        if moment.characters_present:
            parts.append(f" Featuring {', '.join(moment.characters_present[:4])}.")
        parts.append(f" Mood: {mood}; {lighting}. Colour palette: {palette}.")
        if influences:
            parts.append(f" In the style of {influences}.")
        prompt = clip_prompt("".join(parts))
        modifiers = tuple(dict.fromkeys(m for m in (art_style, palette, lighting, influences) if m))
        return IllustrationPrompt(
            provider=image_provider(style_config),
            prompt=prompt,
            style_modifiers=modifiers,
            negative_prompt=NEGATIVE_PROMPT,
            technical_params={
                "width": self.width,
                "height": self.height,
                "steps": self.steps,
                "guidance_scale": 7.5,
                "seed": seed_for(prompt),
            },
        )


def lighting_for(intensity: float) -> str:
    """Lighting words for a moment's intensity."""
    if intensity >= 0.75:
        return "dramatic high-contrast lighting"
    if intensity >= 0.4:
        return "expressive lighting"
    return "soft natural lighting"
