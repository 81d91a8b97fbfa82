"""The offline lexicon analyzer and the EmotionalMoment record."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

import pytest

from errors import ValidationError
from pipeline.analysis import TONES, EmotionalMoment, LexiconAnalyzer
from pipeline.manuscripts import Chapter

ORIGINAL_TONES = (
    "joy, sadness, anger, fear, surprise, disgust, anticipation, trust, melancholy, excitement, "
    "tension, peace, mystery, curiosity, romance, adventure, suspense, courage, triumph, neutral, "
    "serenity, nostalgia, warmth, unease"
)


def long_chapter(paragraphs: int = 40, seed: int = 7) -> Chapter:
    """Many paragraphs, each with a few emotional and a few flat sentences."""
    rng = random.Random(seed)
    emotional = [
        "Mara screamed in terror as the shadow crept closer!",
        "Joy flooded the hall and everyone laughed and cheered.",
        "He wept with grief beside the grave.",
        "A furious rage burned in Osric's eyes.",
        "The ancient secret lay hidden in the mist.",
        "Their first kiss was tender and full of love.",
        "Victory! The valiant knights had won.",
    ]
    flat = [
        "The cart rolled along the lane.",
        "Someone counted the sacks of grain twice.",
        "The table was made of oak.",
    ]
    parts = []
    for _ in range(paragraphs):
        sentences = [rng.choice(flat), rng.choice(emotional), rng.choice(flat), rng.choice(flat)]
        parts.append(" ".join(sentences))
    return Chapter(number=1, title="Long", content="\n\n".join(parts))


def test_tones_are_exactly_the_original_list() -> None:
    expected = tuple(ORIGINAL_TONES.split(", "))

    assert expected == TONES


def test_analysis_is_deterministic(story_chapter: Chapter) -> None:
    first = LexiconAnalyzer().analyze(story_chapter, 10)
    second = LexiconAnalyzer().analyze(story_chapter, 10)

    assert first == second
    assert [m.to_dict() for m in first] == [m.to_dict() for m in second]


@pytest.mark.parametrize("limit", [1, 5, 20])
def test_max_moments_is_honoured_on_a_long_chapter(limit: int) -> None:
    moments = LexiconAnalyzer().analyze(long_chapter(), limit)

    assert len(moments) == limit


def test_a_single_moment_is_the_most_intense_one() -> None:
    chapter = long_chapter()
    best = max(m.intensity_score for m in LexiconAnalyzer().analyze(chapter, 20))

    (only,) = LexiconAnalyzer().analyze(chapter, 1)

    assert only.intensity_score == best


@pytest.mark.parametrize(("asked", "at_most"), [(0, 1), (-3, 1), (500, 20)])
def test_out_of_range_max_moments_is_clamped_to_one_through_twenty(
    asked: int, at_most: int
) -> None:
    moments = LexiconAnalyzer().analyze(long_chapter(), asked)

    assert 1 <= len(moments) <= at_most


def test_positions_match_the_excerpts_and_moments_are_ordered_without_overlap() -> None:
    chapter = long_chapter()

    moments = LexiconAnalyzer().analyze(chapter, 20)

    for moment in moments:
        assert chapter.content[moment.start_position : moment.end_position] == moment.text_excerpt
        assert moment.text_excerpt.strip() == moment.text_excerpt
        assert moment.text_excerpt in moment.context
    for before, after in zip(moments, moments[1:], strict=False):
        assert before.end_position <= after.start_position


def test_tones_come_from_the_tone_list_and_intensity_is_between_zero_and_one() -> None:
    for moment in LexiconAnalyzer().analyze(long_chapter(), 20):
        assert moment.emotional_tones
        assert set(moment.emotional_tones) <= set(TONES)
        assert 0.0 <= moment.intensity_score <= 1.0


def test_the_frightening_passage_is_the_most_intense(story_chapter: Chapter) -> None:
    moments = LexiconAnalyzer().analyze(story_chapter, 10)

    strongest = max(moments, key=lambda m: m.intensity_score)

    assert "terror" in strongest.text_excerpt
    assert strongest.emotional_tones[0] == "fear"
    assert strongest.intensity_score > 0.7
    assert all("bought some bread" not in m.text_excerpt for m in moments)


def test_negation_turns_fear_into_courage() -> None:
    chapter = Chapter(1, "Brave", "She was not afraid of the dark road.")

    (moment,) = LexiconAnalyzer().analyze(chapter, 3)

    assert "courage" in moment.emotional_tones
    assert "fear" not in moment.emotional_tones


def test_intensifiers_and_exclamations_raise_intensity() -> None:
    plain = Chapter(1, "a", "She was happy.")
    strong = Chapter(1, "b", "She was very happy!")

    (calm,) = LexiconAnalyzer().analyze(plain, 1)
    (loud,) = LexiconAnalyzer().analyze(strong, 1)

    assert loud.intensity_score > calm.intensity_score


@pytest.mark.parametrize("content", ["He bought some bread.", "Hi.", "...", "x"])
def test_chapter_without_emotion_words_yields_one_neutral_moment(content: str) -> None:
    moments = LexiconAnalyzer().analyze(Chapter(1, "Flat", content), 10)

    assert len(moments) == 1
    assert moments[0].emotional_tones == ("neutral",)
    assert moments[0].intensity_score == 0.0
    assert content[moments[0].start_position : moments[0].end_position] == moments[0].text_excerpt


def test_characters_and_setting_are_found_heuristically(story_chapter: Chapter) -> None:
    moments = LexiconAnalyzer().analyze(story_chapter, 10)

    darcy = next(m for m in moments if "Darcy" in m.text_excerpt)
    assert darcy.characters_present == ("Anna", "Mr. Darcy")
    assert "forest" in darcy.setting_description
    everyone = {name for m in moments for name in m.characters_present}
    assert {"Anna", "Elizabeth Bennet"} <= everyone
    assert not everyone & {"The", "Suddenly", "Later", "She", "They", "Wait"}


def test_narrative_context_places_the_moment_in_its_chapter(story_chapter: Chapter) -> None:
    moments = LexiconAnalyzer().analyze(story_chapter, 10)

    assert moments[0].narrative_context.startswith("Chapter 3 (The Storm), opening")


def test_moments_round_trip_through_json() -> None:
    for moment in LexiconAnalyzer().analyze(long_chapter(), 5):
        restored = EmotionalMoment.from_dict(json.loads(json.dumps(moment.to_dict())))
        assert restored == moment


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"start_position": "3"}, "start_position"),
        ({"end_position": None}, "end_position"),
        ({"intensity_score": "high"}, "intensity_score"),
        ({"emotional_tones": "fear"}, "emotional_tones"),
        ({"start_position": 50, "end_position": 10}, "end_position"),
    ],
)
def test_malformed_moment_records_are_rejected(change: dict[str, object], field: str) -> None:
    (moment,) = LexiconAnalyzer().analyze(Chapter(1, "t", "She was happy."), 1)
    data = {**moment.to_dict(), **change}

    with pytest.raises(ValidationError) as caught:
        EmotionalMoment.from_dict(data)

    assert caught.value.details["field"] == field


def test_a_five_thousand_word_chapter_is_analysed_quickly() -> None:
    chapter = long_chapter(paragraphs=200)
    assert chapter.word_count > 5000
    analyzer = LexiconAnalyzer()

    best = min(_timed(lambda: analyzer.analyze(chapter, 20)) for _ in range(3))

    # The target is well under 50 ms; the bound leaves room for slow CI machines.
    assert best < 0.25


def _timed(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
