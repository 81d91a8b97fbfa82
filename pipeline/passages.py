"""Text utilities for analysis: sentences, surrounding context, character names, settings.

Offsets are character positions in the analysed text, so any span found here can be cut
back out of it verbatim.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from pipeline import lexicon

logger = logging.getLogger(__name__)

CONTEXT_CHARS = 200
"""Characters of surrounding text kept on each side of an excerpt as its context."""

Token = tuple[int, int, str]
"""A word: (start, end, text)."""

WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")
_BOUNDARY = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(?=\s|$)|\n[ \t]*\n")
_OPENERS = "\"'\u201c\u2018([ \t\r\n*_-"
_MAX_SENTENCE_CHARS = 400


def surrounding_context(content: str, start: int, end: int, chars: int = CONTEXT_CHARS) -> str:
    """The passage ``content[start:end]`` with up to ``chars`` characters either side.

    The cut snaps to whitespace so no word is split.
    """
    left = max(0, start - chars)
    if left > 0:
        space = content.find(" ", left, start)
        left = space + 1 if space != -1 else left
    right = min(len(content), end + chars)
    if right < len(content):
        space = content.rfind(" ", end, right)
        right = space if space != -1 else right
    return " ".join(content[left:right].split())


def sentence_spans(content: str) -> list[tuple[int, int]]:
    """Sentences as (start, end) offsets, trimmed, long ones cut at whitespace."""
    spans: list[tuple[int, int]] = []
    begin = 0
    for match in _BOUNDARY.finditer(content):
        if match.group().startswith(".") and _is_abbreviation(content, match.start()):
            continue
        _add_span(content, begin, match.end(), spans)
        begin = match.end()
    _add_span(content, begin, len(content), spans)
    if not spans and content.strip():
        spans.append((0, len(content)))
    return spans


def _is_abbreviation(content: str, dot: int) -> bool:
    begin = dot
    while begin > 0 and dot - begin < 12 and content[begin - 1].isalpha():
        begin -= 1
    text = content[begin:dot]
    return text.lower() in lexicon.ABBREVIATIONS or (len(text) == 1 and text.isupper())


def _add_span(content: str, start: int, end: int, spans: list[tuple[int, int]]) -> None:
    while start < end and content[start].isspace():
        start += 1
    while end > start and content[end - 1].isspace():
        end -= 1
    while end - start > _MAX_SENTENCE_CHARS:
        cut = content.rfind(" ", start + _MAX_SENTENCE_CHARS // 2, start + _MAX_SENTENCE_CHARS)
        cut = cut if cut != -1 else start + _MAX_SENTENCE_CHARS
        spans.append((start, cut))
        start = cut
        while start < end and content[start].isspace():
            start += 1
    if end > start and any(ch.isalnum() for ch in content[start:end]):
        spans.append((start, end))


def _sentence_initial(content: str, start: int) -> bool:
    index = start - 1
    while index >= 0 and content[index] in _OPENERS:
        if content[index] == "\n" and content[max(0, index - 1)] == "\n":
            return True
        index -= 1
    if index < 0:
        return True
    if content[index] in ".!?\u2026:":
        return not (content[index] == "." and _is_abbreviation(content, index))
    return False


def name_candidates(content: str, tokens: list[Token]) -> set[str]:
    """Capitalised words used mid-sentence somewhere in the chapter, minus common words."""
    names: set[str] = set()
    for start, _, token in tokens:
        if not token[0].isupper():
            continue
        word = _bare(token)
        if (
            len(word) > 1
            and not word.isupper()
            and word not in lexicon.NOT_NAMES
            and word not in lexicon.HONORIFICS
            and word not in names
            and not _sentence_initial(content, start)
        ):
            names.add(word)
    return names


def _bare(word: str) -> str:
    """The word without a possessive ending: Anna's -> Anna."""
    return word[:-2] if word.endswith(("'s", "\u2019s")) else word


def names_in(content: str, tokens: list[Token], names: set[str]) -> tuple[str, ...]:
    """Character names in ``tokens``: "Anna", "Elizabeth Bennet", "Mr. Darcy"."""
    found: list[str] = []
    current: list[str] = []
    previous_end = 0
    for start, end, token in tokens:
        word = _bare(token)
        is_name = word in names
        is_title = word in lexicon.HONORIFICS and token == word
        gap = content[previous_end:start]
        joins = bool(current) and (
            gap == " " or (current[-1] in lexicon.HONORIFICS and gap == ". ")
        )
        if current and not (joins and (is_name or is_title)):
            _flush(current, found)
        if is_name or is_title:
            if joins and gap == ". ":
                current[-1] += "."
            current.append(word)
        previous_end = end
        if token != word:  # a possessive ends the name
            _flush(current, found)
    _flush(current, found)
    return tuple(found[:6])


def _flush(current: list[str], found: list[str]) -> None:
    if current and current[-1] not in lexicon.HONORIFICS:
        name = " ".join(current)
        if name not in found:
            found.append(name)
    current.clear()


def describe_setting(*texts: str) -> str:
    """A short setting description from place, time and weather words in ``texts``.

    For example ``"castle, courtyard at night in the storm"``; empty when none is found.
    """
    return setting_from_words(m.group() for text in texts for m in WORD.finditer(text.lower()))


def setting_from_words(words: Iterable[str]) -> str:
    """``describe_setting`` over lower-case words already split out of the text."""
    places: list[str] = []
    time_of_day = weather = ""
    for word in words:
        singular = word[:-1] if word.endswith("s") and word[:-1] in lexicon.PLACES else word
        if singular in lexicon.PLACES:
            if singular not in places and len(places) < 3:
                places.append(singular)
        elif word in lexicon.TIMES:
            time_of_day = time_of_day or word
        elif word in lexicon.WEATHER:
            weather = weather or word
    parts = [", ".join(places)] if places else []
    if time_of_day:
        parts.append(f"at {time_of_day}")
    if weather:
        parts.append(f"in the {weather}")
    return " ".join(parts)
