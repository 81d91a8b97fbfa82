"""Chapter headings in plain text and Markdown: finding them and choosing where to split.

A heading is a line like ``Chapter 1``, ``Chapter 1: The Storm``, ``CHAPTER IV - Night``,
``Chapter Two``, ``Prologue``, or a Markdown ``#`` .. ``######`` heading.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

logger = logging.getLogger(__name__)

_ROMAN = re.compile(r"^M{0,4}(CM|CD|D?C{0,3})(XC|XL|L?X{0,3})(IX|IV|V?I{0,3})$", re.IGNORECASE)
_NUMBER_TEXT = (
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)
_NUMBER_WORDS = _NUMBER_TEXT.split()
_CHAPTER_LINE = re.compile(
    r"^(?:chapter|chap\.)\s+(?P<num>\d{1,5}|[ivxlcdm]{1,12}|" + "|".join(_NUMBER_WORDS) + r")"
    r"(?![\w])(?P<rest>.*)$",
    re.IGNORECASE,
)
_NAMED_LINE = re.compile(r"^(?P<word>prologue|epilogue|interlude)(?![\w])(?P<rest>.*)$", re.I)
_MARKDOWN = re.compile(r"^(?P<hashes>#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
_SEPARATOR = ":.-\u2013\u2014|"
_MAX_HEADING_CHARS = 150


@dataclass(frozen=True)
class Heading:
    """A heading line of a manuscript."""

    line: int
    """Index of the heading's line."""
    title: str
    """Chapter title: "The Storm" for "Chapter 1: The Storm", else the heading's text."""
    level: int | None
    """Markdown level, or None for a plain "Chapter N" line."""
    chapter_like: bool
    """True for "Chapter N" / "Prologue" headings, which always start a chapter."""


def find_headings(lines: list[str]) -> list[Heading]:
    """Every heading line of ``lines``, skipping fenced code blocks and long lines."""
    headings: list[Heading] = []
    in_fence = False
    for index, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence or not line or len(line) > _MAX_HEADING_CHARS:
            continue
        markdown = _MARKDOWN.match(line)
        if markdown:
            inner = markdown.group("text")
            named = chapter_title(inner)
            headings.append(
                Heading(index, named or inner, len(markdown.group("hashes")), named is not None)
            )
            continue
        named = chapter_title(line)
        if named is not None:
            headings.append(Heading(index, named, None, True))
    return headings


def chapter_title(line: str) -> str | None:
    """The title of a "Chapter N[: title]" line, or None when it is not one."""
    match = _CHAPTER_LINE.match(line)
    if match:
        number = match.group("num")
        if number.isalpha() and number.lower() not in _NUMBER_WORDS and not _ROMAN.match(number):
            return None
        label = f"Chapter {number.upper() if _ROMAN.match(number) else number}"
    else:
        match = _NAMED_LINE.match(line)
        if not match:
            return None
        label = match.group("word").capitalize()
    rest = match.group("rest").strip()
    if not rest:
        return label
    if rest[0] in _SEPARATOR:
        named = rest.lstrip(_SEPARATOR).strip()
        return named or label
    # "Chapter 3 The Storm" is a heading; "Chapter 3 was the longest." is prose.
    if len(rest) <= 80 and rest[-1] not in ".,;!?" and rest[0].isupper():
        return rest
    return None


def take_book_title(
    lines: list[str], headings: list[Heading]
) -> tuple[tuple[int, str] | None, list[Heading]]:
    """Split off the book title: a lone ``# Title`` on the first line above deeper headings.

    Returns:
        ``((line, title) or None, the remaining headings)``.
    """
    if len(headings) < 2:
        return None, headings
    first = headings[0]
    first_text_line = next(i for i, line in enumerate(lines) if line.strip())
    is_title = (
        first.level == 1
        and not first.chapter_like
        and first.line == first_text_line
        and all(h.level != 1 for h in headings[1:])
    )
    if not is_title:
        return None, headings
    return (first.line, first.title), headings[1:]


def split_headings(headings: list[Heading]) -> list[Heading]:
    """The headings that start chapters: "Chapter N" lines and the shallowest Markdown level."""
    levels = [h.level for h in headings if h.level is not None]
    top = min(levels) if levels else None
    return [h for h in headings if h.chapter_like or h.level == top]
