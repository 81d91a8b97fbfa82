"""The template prompt writer and the IllustrationPrompt record."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest

from errors import ValidationError
from pipeline.analysis import EmotionalMoment
from pipeline.manuscripts import Chapter
from pipeline.prompts import (
    DEFAULT_STYLE,
    MAX_PROMPT_CHARS,
    IllustrationPrompt,
    TemplatePromptWriter,
    seed_for,
)

CHAPTER = Chapter(2, "The Tower", "Anna climbed the tower at midnight, trembling with fear.")
MOMENT = EmotionalMoment(
    text_excerpt="Anna climbed the tower at midnight, trembling with fear.",
    start_position=0,
    end_position=56,
    emotional_tones=("fear", "suspense"),
    intensity_score=0.82,
    context="Anna climbed the tower at midnight, trembling with fear.",
    characters_present=("Anna",),
    setting_description="tower at midnight",
    narrative_context="Chapter 2 (The Tower), opening of the chapter, 0% through",
)


def write(style: Any, moment: EmotionalMoment = MOMENT) -> IllustrationPrompt:
    return TemplatePromptWriter().write(moment, CHAPTER, style)


def test_prompt_reflects_the_style_config() -> None:
    style = {
        "art_style": "watercolor",
        "color_palette": "muted earth tones",
        "artistic_influences": "J. M. W. Turner",
        "image_provider": "dalle",
    }

    prompt = write(style)

    assert prompt.prompt.startswith("watercolor illustration")
    assert "muted earth tones" in prompt.prompt
    assert "In the style of J. M. W. Turner" in prompt.prompt
    assert prompt.provider == "dalle"
    assert prompt.style_modifiers[:2] == ("watercolor", "muted earth tones")
    assert "J. M. W. Turner" in prompt.style_modifiers


def test_prompt_carries_the_moment_mood_setting_and_characters() -> None:
    prompt = write({})

    assert "Anna climbed the tower" in prompt.prompt
    assert "ominous, fearful" in prompt.prompt
    assert "suspenseful" in prompt.prompt
    assert "Setting: tower at midnight" in prompt.prompt
    assert "Featuring Anna" in prompt.prompt
    assert "dramatic" in prompt.prompt  # high intensity


def test_different_tones_give_different_moods() -> None:
    joyful = replace(MOMENT, emotional_tones=("joy",), intensity_score=0.2)

    prompt = write({}, joyful)

    assert "joyful" in prompt.prompt
    assert "ominous" not in prompt.prompt
    assert "soft natural lighting" in prompt.prompt


def test_missing_style_keys_fall_back_to_defaults_and_unknown_keys_are_ignored() -> None:
    prompt = write({"unknown_key": "whatever", "model": 3})

    assert DEFAULT_STYLE["art_style"] in prompt.prompt
    assert DEFAULT_STYLE["color_palette"] in prompt.prompt
    assert prompt.provider == "local"
    assert "whatever" not in prompt.prompt
    assert "In the style of" not in prompt.prompt


@pytest.mark.parametrize("bad", [42, None, 3.5, {"nested": "dict"}, ["ok", 7], True, ""])
def test_wrong_style_value_types_fall_back_to_defaults(bad: Any) -> None:
    style = {
        "art_style": bad,
        "color_palette": bad,
        "artistic_influences": bad,
        "image_provider": bad,
    }

    prompt = write(style)

    assert prompt.prompt.startswith(f"{DEFAULT_STYLE['art_style']} illustration")
    assert prompt.provider == "local"


@pytest.mark.parametrize("style", [None, ["art_style"], "watercolor", 12])
def test_a_style_config_that_is_not_a_mapping_is_treated_as_empty(style: Any) -> None:
    assert write(style) == write({})


def test_huge_and_unprintable_style_values_are_cleaned_and_cut() -> None:
    style = {
        "art_style": "oil\x00 painting\n\t" + "x" * 100_000,
        "color_palette": "blue " * 10_000,
        "artistic_influences": ["Monet", "Turner", "Hokusai"],
        "image_provider": "My Provider!!/../" + "p" * 500,
    }

    prompt = write(style)

    assert len(prompt.prompt) <= MAX_PROMPT_CHARS
    assert "\x00" not in prompt.prompt and "\n" not in prompt.prompt
    assert prompt.style_modifiers[0] == "oil painting"
    assert all(len(modifier) <= 200 for modifier in prompt.style_modifiers)
    assert "Monet, Turner, Hokusai" in prompt.style_modifiers
    assert prompt.provider.isascii() and "/" not in prompt.provider
    assert len(prompt.provider) <= 40


def test_a_very_long_excerpt_is_summarised_within_the_prompt_limit() -> None:
    long_text = "Anna ran through the burning forest. " * 200
    moment = replace(MOMENT, text_excerpt=long_text, end_position=len(long_text))

    prompt = write({}, moment)

    assert len(prompt.prompt) <= MAX_PROMPT_CHARS
    assert "..." in prompt.prompt


def test_prompts_are_deterministic_with_a_seed_derived_from_the_text() -> None:
    first, second = write({"art_style": "ink"}), write({"art_style": "ink"})
    other = write({"art_style": "pastel"})

    assert first == second
    assert first.technical_params["seed"] == seed_for(first.prompt)
    assert other.technical_params["seed"] != first.technical_params["seed"]
    assert {"width", "height", "steps", "seed"} <= set(first.technical_params)
    assert first.negative_prompt


def test_prompt_round_trips_through_json() -> None:
    prompt = write({"art_style": "ink"})

    restored = IllustrationPrompt.from_dict(json.loads(json.dumps(prompt.to_dict())))

    assert restored == prompt


@pytest.mark.parametrize("data", [[], {"prompt": 5}, {"prompt": "p", "style_modifiers": "x"}])
def test_malformed_prompt_records_are_rejected(data: Any) -> None:
    with pytest.raises(ValidationError):
        IllustrationPrompt.from_dict(data)
