"""Manuscripts from JSON bodies, text and Markdown uploads."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from errors import ValidationError
from pipeline.manuscripts import (
    Chapter,
    Manuscript,
    ManuscriptLimits,
    decode_upload,
    parse_manuscript_json,
    parse_manuscript_text,
)


def titles(manuscript: Manuscript) -> list[str]:
    return [chapter.title for chapter in manuscript.chapters]


# --------------------------------------------------------------------------- text


def test_plain_chapter_headings_split_the_text_into_chapters() -> None:
    text = "Chapter 1\nIt rained all day.\n\nChapter 2: The Storm\nThunder rolled.\nIt was loud.\n"

    manuscript = parse_manuscript_text(text, title="Weather", author="Ann")

    assert titles(manuscript) == ["Chapter 1", "The Storm"]
    assert [c.number for c in manuscript.chapters] == [1, 2]
    assert manuscript.chapters[0].content == "It rained all day."
    assert manuscript.chapters[1].content == "Thunder rolled.\nIt was loud."
    assert (manuscript.title, manuscript.author) == ("Weather", "Ann")


def test_roman_numeral_headings_split_chapters_and_keep_their_titles() -> None:
    text = "CHAPTER I\nThe first.\n\nCHAPTER IV - Night\nThe fourth.\n\nchapter xii\nLast."

    manuscript = parse_manuscript_text(text)

    assert titles(manuscript) == ["Chapter I", "Night", "Chapter XII"]
    assert [c.content for c in manuscript.chapters] == ["The first.", "The fourth.", "Last."]


def test_spelled_out_and_named_headings_split_chapters() -> None:
    text = (
        "Prologue\nBefore.\n\nChapter One\nFirst.\n\n"
        "Chapter Two: Onward\nSecond.\n\nEpilogue\nAfter."
    )

    manuscript = parse_manuscript_text(text)

    assert titles(manuscript) == ["Prologue", "Chapter One", "Onward", "Epilogue"]


def test_markdown_title_heading_names_the_book_and_second_level_headings_split_it() -> None:
    text = (
        "# The Lighthouse\n\n"
        "## Chapter 1: Arrival\nThe boat docked.\n\n### A scene break\nGulls cried.\n\n"
        "## The Keeper\nHe lit the lamp.\n"
    )

    manuscript = parse_manuscript_text(text)

    assert manuscript.title == "The Lighthouse"
    assert titles(manuscript) == ["Arrival", "The Keeper"]
    assert "### A scene break" in manuscript.chapters[0].content
    assert manuscript.chapters[0].content.endswith("Gulls cried.")


def test_markdown_headings_of_a_single_level_are_all_chapters() -> None:
    text = "# Spring\nBuds opened.\n\n# Summer\nThe sun burned.\n"

    manuscript = parse_manuscript_text(text, title="Seasons")

    assert manuscript.title == "Seasons"
    assert titles(manuscript) == ["Spring", "Summer"]


def test_text_without_headings_is_a_single_chapter() -> None:
    manuscript = parse_manuscript_text("Just one long story.\nWith two lines.", title="Short")

    assert manuscript.total_chapters == 1
    assert manuscript.chapters[0] == Chapter(
        1, "Chapter 1", "Just one long story.\nWith two lines."
    )


def test_front_matter_becomes_title_and_description_never_a_chapter() -> None:
    text = "The Long Road\nby A. Walker\n\nChapter 1\nThey set off.\n"

    manuscript = parse_manuscript_text(text)

    assert manuscript.title == "The Long Road"
    assert manuscript.description == "by A. Walker"
    assert titles(manuscript) == ["Chapter 1"]


def test_sentences_that_begin_with_chapter_are_not_headings() -> None:
    text = "Chapter 1\nChapter 3 was the longest.\nChapter 2 of the law said no.\n"

    manuscript = parse_manuscript_text(text)

    assert manuscript.total_chapters == 1
    assert "Chapter 3 was the longest." in manuscript.chapters[0].content


def test_headings_inside_code_fences_do_not_split() -> None:
    text = "# Guide\nIntro.\n\n```\n# not a heading\n```\n\n# Usage\nRun it.\n"

    manuscript = parse_manuscript_text(text, title="Manual")

    assert titles(manuscript) == ["Guide", "Usage"]
    assert "# not a heading" in manuscript.chapters[0].content


def test_chapters_are_numbered_in_order_even_when_headings_skip_or_repeat_numbers() -> None:
    text = "Chapter 5\nA.\n\nChapter 9\nB.\n\nChapter 5\nC.\n"

    manuscript = parse_manuscript_text(text)

    assert [c.number for c in manuscript.chapters] == [1, 2, 3]


def test_headings_without_text_make_no_chapter() -> None:
    text = "## Part One\n### Chapter 1\nIt began.\n## Part Two\n### Chapter 2\nIt ended.\n"

    manuscript = parse_manuscript_text(text, title="Parts")

    assert [c.content for c in manuscript.chapters] == ["It began.", "It ended."]


def test_windows_line_endings_and_bom_are_normalised() -> None:
    manuscript = parse_manuscript_text("\ufeffChapter 1\r\nOne.\r\nChapter 2\r\nTwo.\r\n")

    assert [c.content for c in manuscript.chapters] == ["One.", "Two."]


@pytest.mark.parametrize("text", ["", "   ", "\n\t\n"])
def test_empty_text_is_rejected(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_manuscript_text(text)
    assert caught.value.details["field"] == "text"


def test_text_with_more_chapters_than_allowed_is_rejected() -> None:
    text = "".join(f"Chapter {n}\nBody {n}.\n" for n in range(1, 6))

    with pytest.raises(ValidationError, match="at most 4 chapters"):
        parse_manuscript_text(text, limits=ManuscriptLimits(max_chapters=4))


def test_text_longer_than_the_total_limit_is_rejected() -> None:
    with pytest.raises(ValidationError):
        parse_manuscript_text("word " * 100, limits=ManuscriptLimits(max_total_chars=200))


# --------------------------------------------------------------------------- JSON


def valid_body() -> dict[str, Any]:
    return {
        "title": "Sea Tales",
        "author": "M. Shore",
        "genre": "adventure",
        "chapters": [
            {"title": "Departure", "content": "The ship left the harbour."},
            {"title": "Storm", "content": "Waves crashed over the deck."},
            {"title": "Landfall", "content": "An island rose from the mist."},
        ],
    }


def test_valid_json_manuscript_defaults_numbers_and_optional_fields() -> None:
    manuscript = parse_manuscript_json(valid_body())

    assert [c.number for c in manuscript.chapters] == [1, 2, 3]
    assert manuscript.description == ""
    assert manuscript.genre == "adventure"
    assert manuscript.total_chapters == 3


def test_json_chapters_are_ordered_by_their_numbers() -> None:
    body = valid_body()
    body["chapters"][0]["number"] = 10

    manuscript = parse_manuscript_json(body)

    assert [c.number for c in manuscript.chapters] == [2, 3, 10]


def test_manuscript_round_trips_through_its_dict_form() -> None:
    manuscript = parse_manuscript_json(valid_body())

    data = manuscript.to_dict()

    assert set(data) == {"title", "author", "description", "genre", "total_chapters", "chapters"}
    assert data["chapters"][1] == {
        "number": 2,
        "title": "Storm",
        "content": "Waves crashed over the deck.",
        "word_count": 5,
    }
    assert Manuscript.from_dict(data) == manuscript
    assert Chapter.from_dict(data["chapters"][0]) == manuscript.chapters[0]


def _set(path: list[Any], value: Any) -> Any:
    def mutate(body: dict[str, Any]) -> Any:
        target: Any = body
        for step in path[:-1]:
            target = target[step]
        if value is _DELETE:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return body

    return mutate


_DELETE = object()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda body: ["not", "an", "object"], "manuscript"),
        (_set(["title"], _DELETE), "title"),
        (_set(["title"], 42), "title"),
        (_set(["title"], "   "), "title"),
        (_set(["author"], None), "author"),
        (_set(["genre"], ["fantasy"]), "genre"),
        (_set(["description"], 3.5), "description"),
        (_set(["chapters"], _DELETE), "chapters"),
        (_set(["chapters"], "chapter one"), "chapters"),
        (_set(["chapters"], []), "chapters"),
        (_set(["chapters", 1], "text"), "chapters[1]"),
        (_set(["chapters", 2, "content"], _DELETE), "chapters[2].content"),
        (_set(["chapters", 0, "content"], 7), "chapters[0].content"),
        (_set(["chapters", 2, "content"], " \n "), "chapters[2].content"),
        (_set(["chapters", 1, "title"], _DELETE), "chapters[1].title"),
        (_set(["chapters", 0, "number"], True), "chapters[0].number"),
        (_set(["chapters", 0, "number"], "1"), "chapters[0].number"),
        (_set(["chapters", 0, "number"], 0), "chapters[0].number"),
        (_set(["chapters", 0, "number"], 2), "chapters[1].number"),
    ],
)
def test_json_validation_errors_name_the_offending_field(mutate: Any, field: str) -> None:
    body = mutate(copy.deepcopy(valid_body()))

    with pytest.raises(ValidationError) as caught:
        parse_manuscript_json(body)

    assert caught.value.details == {"field": field}
    assert caught.value.status == 422


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        (ManuscriptLimits(max_title_chars=5), "title"),
        (ManuscriptLimits(max_chapter_chars=27), "chapters[1].content"),
        (ManuscriptLimits(max_total_chars=60), "chapters"),
        (ManuscriptLimits(max_chapters=2), "chapters"),
    ],
)
def test_json_strings_and_lists_beyond_the_limits_are_rejected(
    limits: ManuscriptLimits, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_manuscript_json(valid_body(), limits=limits)

    assert caught.value.details == {"field": field}


# --------------------------------------------------------------------------- uploads


def test_upload_is_decoded_as_utf8_without_its_byte_order_mark() -> None:
    assert decode_upload("\ufeffÉlise et Zoë".encode()) == "Élise et Zoë"
    assert decode_upload(b"plain") == "plain"


@pytest.mark.parametrize(
    "raw",
    [
        b"PK\x03\x04\x00\x00binary zip",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
        b"caf\xe9 latin-1 text",
        b"\xff\xfe\xfa\xfb",
        bytes(range(1, 32)) * 20,
    ],
)
def test_binary_or_undecodable_uploads_are_rejected(raw: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_upload(raw)
    assert caught.value.details == {"field": "file"}
