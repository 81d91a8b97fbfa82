"""Emotional analysis: find the moments of a chapter worth illustrating.

``LexiconAnalyzer`` is the offline default: it splits a chapter into sentence windows,
scores each with the word lists of ``pipeline.lexicon`` (intensifiers, negation and
exclamation marks included) and keeps the most intense non-overlapping windows.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from errors import ValidationError
from pipeline import lexicon
from pipeline.manuscripts import Chapter
from pipeline.passages import (
    CONTEXT_CHARS,
    WORD,
    Token,
    name_candidates,
    names_in,
    sentence_spans,
    setting_from_words,
    surrounding_context,
)

TONES: tuple[str, ...] = (
    "joy", "sadness", "anger", "fear", "surprise", "disgust", "anticipation", "trust",
    "melancholy", "excitement", "tension", "peace", "mystery", "curiosity", "romance",
    "adventure", "suspense", "courage", "triumph", "neutral", "serenity", "nostalgia",
    "warmth", "unease",
)  # fmt: skip
"""Every emotional tone a moment may carry (the original application's list)."""

MAX_MOMENTS = 20
"""Most moments one chapter may yield (the API's ``max_emotional_moments`` bound)."""

logger = logging.getLogger(__name__)

_TONE_ORDER = {tone: index for index, tone in enumerate(TONES)}
_WINDOW_CHARS = 160
_WINDOW_SENTENCES = 3


@dataclass(frozen=True)
class EmotionalMoment:
    """A passage of a chapter worth illustrating, with its emotional reading."""

    text_excerpt: str
    """The passage, verbatim: ``chapter.content[start_position:end_position]``."""
    start_position: int
    end_position: int
    emotional_tones: tuple[str, ...]
    """Tones from ``TONES``, strongest first."""
    intensity_score: float
    """0 (flat) .. 1 (overwhelming)."""
    context: str
    """The passage with some surrounding text."""
    characters_present: tuple[str, ...]
    setting_description: str
    narrative_context: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the original API's keys."""
        return {
            "text_excerpt": self.text_excerpt,
            "start_position": self.start_position,
            "end_position": self.end_position,
            "emotional_tones": list(self.emotional_tones),
            "intensity_score": self.intensity_score,
            "context": self.context,
            "characters_present": list(self.characters_present),
            "setting_description": self.setting_description,
            "narrative_context": self.narrative_context,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EmotionalMoment:
        """Rebuild a moment from ``to_dict`` output.

        Raises:
            ValidationError: a field is missing or has the wrong type.
        """
        if not isinstance(data, Mapping):
            raise ValidationError("a moment must be an object", details={"field": "moment"})
        start = _field(data, "start_position", int)
        end = _field(data, "end_position", int)
        if start < 0 or end < start:
            raise ValidationError(
                "moment positions must satisfy 0 <= start <= end",
                details={"field": "end_position"},
            )
        raw_tones = _field(data, "emotional_tones", list)
        tones = tuple(t for t in raw_tones if isinstance(t, str) and t in _TONE_ORDER)
        intensity = _field(data, "intensity_score", float)
        return cls(
            text_excerpt=_field(data, "text_excerpt", str),
            start_position=start,
            end_position=end,
            emotional_tones=tones or ("neutral",),
            intensity_score=min(1.0, max(0.0, float(intensity))),
            context=_field(data, "context", str, ""),
            characters_present=tuple(str(c) for c in _field(data, "characters_present", list, [])),
            setting_description=_field(data, "setting_description", str, ""),
            narrative_context=_field(data, "narrative_context", str, ""),
        )


def _field(data: Mapping[str, Any], key: str, kind: type, default: Any = None) -> Any:
    value = data.get(key, default)
    if value is None and default is None:
        raise ValidationError(f"moment.{key} is required", details={"field": key})
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise ValidationError(f"moment.{key} must be {kind.__name__}", details={"field": key})
    return value


class EmotionAnalyzer(Protocol):
    """Finds a chapter's emotional moments."""

    def analyze(self, chapter: Chapter, max_moments: int) -> list[EmotionalMoment]:
        """Return 1..max_moments moments of ``chapter``, ordered by position.

        Raises:
            ProviderError: the provider failed (after its own retries).
        """
        ...


def clamp_moments(max_moments: int) -> int:
    """``max_moments`` limited to the supported 1..20."""
    return max(1, min(MAX_MOMENTS, int(max_moments)))


@dataclass
class _Sentence:
    start: int
    end: int
    tones: dict[str, float]
    raw: float
    words: int


class LexiconAnalyzer:
    """Offline, deterministic emotion analysis with a hand-picked word list.

    Passages are windows of up to three sentences (about 160 characters); each is
    scored by the weights of its emotion words, multiplied by intensifiers ("very"),
    turned to the opposite tone or dropped under negation ("not afraid"), and raised by
    exclamation marks. Intensity is the score's density mapped onto 0..1. The most
    intense passages that do not overlap are returned in reading order; a chapter without
    a single emotion word still yields one neutral moment.
    """

    def analyze(self, chapter: Chapter, max_moments: int) -> list[EmotionalMoment]:
        """Return the chapter's most intense moments, ordered by position."""
        limit = clamp_moments(max_moments)
        content = chapter.content
        tokens = [(m.start(), m.end(), m.group()) for m in WORD.finditer(content)]
        starts = [t[0] for t in tokens]
        sentences = [
            self._score(
                content, tokens[bisect.bisect_left(starts, s) : bisect.bisect_left(starts, e)], s, e
            )
            for s, e in sentence_spans(content)
        ]
        windows = self._windows(content, sentences) or [(0.0, 0, len(content), {})]
        chosen = self._choose(windows, limit)
        names = name_candidates(content, tokens)
        return [
            self._moment(chapter, tokens, starts, names, start, end, tones, intensity)
            for start, end, tones, intensity in sorted(chosen)
        ]

    @staticmethod
    def _score(content: str, tokens: list[Token], start: int, end: int) -> _Sentence:
        tones: dict[str, float] = {}
        multiplier, negated_until = 1.0, -1
        multiplier_until = -1
        for index, (_, _, word) in enumerate(tokens):
            lower = word.lower()
            if lower in lexicon.NEGATIONS or lower.endswith(("n't", "n\u2019t")):
                negated_until = index + 3
                continue
            factor = lexicon.INTENSIFIERS.get(lower)
            if factor is not None:
                multiplier, multiplier_until = factor, index + 2
                continue
            weights = lexicon.lookup(lower)
            if weights is None:
                continue
            scale = multiplier if index <= multiplier_until else 1.0
            if len(word) > 2 and word.isupper():
                scale *= 1.5  # shouted
            for tone, weight in weights.items():
                target: str | None = tone
                if index <= negated_until:
                    target = lexicon.NEGATED_TONE.get(tone)
                    weight *= 0.5
                if target is not None:
                    tones[target] = tones.get(target, 0.0) + weight * scale
        raw = sum(tones.values())
        if tokens:
            tail = content[tokens[-1][1] : tokens[-1][1] + 6]
            bangs = min(3, tail.count("!"))
            if bangs and raw:
                raw *= 1 + 0.25 * bangs
                tones["excitement"] = tones.get("excitement", 0.0) + 0.3 * bangs
            if "?" in tail and raw:
                tones["curiosity"] = tones.get("curiosity", 0.0) + 0.3
        raw = max(raw, sum(tones.values()))
        return _Sentence(start, end, tones, raw, len(tokens))

    @staticmethod
    def _windows(
        content: str, sentences: list[_Sentence]
    ) -> list[tuple[float, int, int, dict[str, float]]]:
        windows: list[tuple[float, int, int, dict[str, float]]] = []
        for first in range(len(sentences)):
            last = first
            while (
                last + 1 < len(sentences)
                and last + 1 - first < _WINDOW_SENTENCES
                and sentences[last].end - sentences[first].start < _WINDOW_CHARS
                # a window never crosses a paragraph break (a blank line)
                and content.count("\n", sentences[last].end, sentences[last + 1].start) < 2
            ):
                last += 1
            part = sentences[first : last + 1]
            raw = sum(s.raw for s in part)
            if raw <= 0 and windows:
                continue
            words = sum(s.words for s in part)
            density = raw / max(words, 12)
            intensity = 1.0 - math.exp(-(6.0 * density + 0.05 * raw))
            tones: dict[str, float] = {}
            for sentence in part:
                for tone, weight in sentence.tones.items():
                    tones[tone] = tones.get(tone, 0.0) + weight
            windows.append((intensity, part[0].start, part[-1].end, tones))
        return windows

    @staticmethod
    def _choose(
        windows: list[tuple[float, int, int, dict[str, float]]], limit: int
    ) -> list[tuple[int, int, tuple[str, ...], float]]:
        ranked = sorted(windows, key=lambda w: (-w[0], w[1]))
        chosen: list[tuple[int, int, tuple[str, ...], float]] = []
        for intensity, start, end, tones in ranked:
            if len(chosen) >= limit:
                break
            if intensity <= 0 and chosen:
                break
            if any(start < c_end and c_start < end for c_start, c_end, _, _ in chosen):
                continue
            chosen.append((start, end, _top_tones(tones), round(intensity, 3)))
        return chosen

    @staticmethod
    def _moment(
        chapter: Chapter,
        tokens: list[Token],
        starts: list[int],
        names: set[str],
        start: int,
        end: int,
        tones: tuple[str, ...],
        intensity: float,
    ) -> EmotionalMoment:
        content = chapter.content
        context = surrounding_context(content, start, end)
        lo, hi = bisect.bisect_left(starts, start), bisect.bisect_left(starts, end)
        c_lo = bisect.bisect_left(starts, max(0, start - CONTEXT_CHARS))
        c_hi = bisect.bisect_left(starts, end + CONTEXT_CHARS)
        present = names_in(content, tokens[lo:hi], names) or names_in(
            content, tokens[c_lo:c_hi], names
        )
        nearby = tokens[lo:hi] + tokens[c_lo:lo] + tokens[hi:c_hi]
        setting = setting_from_words(t[2].lower() for t in nearby)
        share = start / max(1, len(content))
        part = "opening" if share < 0.2 else "closing" if share >= 0.8 else "middle"
        return EmotionalMoment(
            text_excerpt=content[start:end],
            start_position=start,
            end_position=end,
            emotional_tones=tones,
            intensity_score=intensity,
            context=context,
            characters_present=present,
            setting_description=setting,
            narrative_context=(
                f"Chapter {chapter.number} ({chapter.title}), {part} of the chapter, "
                f"{round(share * 100)}% through"
            ),
        )


def _top_tones(tones: Mapping[str, float]) -> tuple[str, ...]:
    if not tones:
        return ("neutral",)
    ranked = sorted(tones.items(), key=lambda item: (-item[1], _TONE_ORDER[item[0]]))
    best = ranked[0][1]
    return tuple(tone for tone, weight in ranked[:3] if weight >= 0.5 * best)
