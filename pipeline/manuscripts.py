"""Manuscripts and chapters: the value objects, and parsing them from JSON or plain text.

Two ways in: ``parse_manuscript_json`` validates a client's JSON body and names the
offending field in every error; ``parse_manuscript_text`` splits an uploaded text or
Markdown file into chapters at its headings (``decode_upload`` turns the upload's bytes
into text first).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from errors import ValidationError
from pipeline.headings import Heading, find_headings, split_headings, take_book_title

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ManuscriptLimits:
    """Size limits applied to every manuscript we accept."""

    max_chapters: int = 2000
    max_title_chars: int = 500
    max_chapter_chars: int = 2_000_000
    max_total_chars: int = 20_000_000
    max_description_chars: int = 20_000
    max_chapter_number: int = 99_999
    """Chapter numbers name image files and records (zero-padded to five digits)."""


DEFAULT_LIMITS = ManuscriptLimits()


@dataclass(frozen=True)
class Chapter:
    """One chapter of a manuscript."""

    number: int
    """Chapter number, unique within its manuscript (1-based)."""
    title: str
    content: str
    """The chapter's text; moment positions are character offsets into it."""

    @property
    def word_count(self) -> int:
        """Number of whitespace-separated words in the content."""
        return len(self.content.split())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the original API's keys."""
        return {
            "number": self.number,
            "title": self.title,
            "content": self.content,
            "word_count": self.word_count,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Chapter:
        """Rebuild a chapter from ``to_dict`` output (``word_count`` is recomputed).

        Raises:
            ValidationError: a key is missing or has the wrong type.
        """
        return _chapter_from_mapping(data, "chapter", DEFAULT_LIMITS, default_number=None)


@dataclass(frozen=True)
class Manuscript:
    """A manuscript: metadata and its chapters in reading order."""

    title: str
    author: str
    chapters: tuple[Chapter, ...]
    description: str = ""
    genre: str = ""

    @property
    def total_chapters(self) -> int:
        """Number of chapters."""
        return len(self.chapters)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, with the original API's keys."""
        return {
            "title": self.title,
            "author": self.author,
            "description": self.description,
            "genre": self.genre,
            "total_chapters": self.total_chapters,
            "chapters": [chapter.to_dict() for chapter in self.chapters],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Manuscript:
        """Rebuild a manuscript from ``to_dict`` output (validated like client input).

        Raises:
            ValidationError: naming the first invalid field.
        """
        return parse_manuscript_json(data)


# --------------------------------------------------------------------------- JSON input


def parse_manuscript_json(data: object, *, limits: ManuscriptLimits = DEFAULT_LIMITS) -> Manuscript:
    """Validate a JSON manuscript ``{title, author, description?, genre?, chapters}``.

    Each chapter is ``{number?, title, content}``; a missing number defaults to the
    chapter's 1-based position. Unknown keys (such as ``word_count``) are ignored.
    Chapters are returned sorted by number.

    Raises:
        ValidationError: with ``details={"field": ...}`` naming the offending field,
            e.g. ``"chapters[2].content"``.
    """
    if not isinstance(data, Mapping):
        raise _invalid("manuscript", "the manuscript must be a JSON object")
    title = _string(data, "title", "title", limits.max_title_chars, required=True)
    author = _string(data, "author", "author", limits.max_title_chars, required=True)
    description = _string(data, "description", "description", limits.max_description_chars)
    genre = _string(data, "genre", "genre", limits.max_title_chars)
    raw_chapters = data.get("chapters")
    if "chapters" not in data:
        raise _invalid("chapters", "chapters is required")
    if not isinstance(raw_chapters, list):
        raise _invalid("chapters", "chapters must be a list")
    if not raw_chapters:
        raise _invalid("chapters", "a manuscript needs at least one chapter")
    if len(raw_chapters) > limits.max_chapters:
        raise _invalid("chapters", f"at most {limits.max_chapters} chapters are allowed")
    chapters: list[Chapter] = []
    seen: dict[int, int] = {}
    total = 0
    for index, raw in enumerate(raw_chapters):
        where = f"chapters[{index}]"
        chapter = _chapter_from_mapping(raw, where, limits, default_number=index + 1)
        if chapter.number in seen:
            raise _invalid(
                f"{where}.number",
                f"chapter number {chapter.number} is used twice "
                f"(chapters[{seen[chapter.number]}] and {where})",
            )
        seen[chapter.number] = index
        total += len(chapter.content)
        if total > limits.max_total_chars:
            raise _invalid(
                "chapters", f"the manuscript exceeds {limits.max_total_chars} characters"
            )
        chapters.append(chapter)
    chapters.sort(key=lambda c: c.number)
    return Manuscript(
        title=title, author=author, chapters=tuple(chapters), description=description, genre=genre
    )


def _chapter_from_mapping(
    raw: object, where: str, limits: ManuscriptLimits, *, default_number: int | None
) -> Chapter:
    if not isinstance(raw, Mapping):
        raise _invalid(where, f"{where} must be a JSON object")
    number: object = raw.get("number", default_number)
    if number is None and default_number is not None:
        number = default_number
    if number is None:
        raise _invalid(f"{where}.number", f"{where}.number is required")
    if isinstance(number, bool) or not isinstance(number, int):
        raise _invalid(f"{where}.number", f"{where}.number must be an integer")
    if not 1 <= number <= limits.max_chapter_number:
        raise _invalid(
            f"{where}.number", f"{where}.number must be between 1 and {limits.max_chapter_number}"
        )
    title = _string(raw, "title", f"{where}.title", limits.max_title_chars, required=True)
    content = raw.get("content")
    if "content" not in raw:
        raise _invalid(f"{where}.content", f"{where}.content is required")
    if not isinstance(content, str):
        raise _invalid(f"{where}.content", f"{where}.content must be a string")
    if not content.strip():
        raise _invalid(f"{where}.content", f"{where}.content must not be empty")
    if len(content) > limits.max_chapter_chars:
        raise _invalid(
            f"{where}.content", f"{where}.content exceeds {limits.max_chapter_chars} characters"
        )
    return Chapter(number=number, title=title, content=content)


def _string(
    data: Mapping[str, Any], key: str, field: str, max_chars: int, *, required: bool = False
) -> str:
    if key not in data or data[key] is None:
        if required:
            raise _invalid(field, f"{field} is required")
        return ""
    value = data[key]
    if not isinstance(value, str):
        raise _invalid(field, f"{field} must be a string")
    value = value.strip()
    if required and not value:
        raise _invalid(field, f"{field} must not be empty")
    if len(value) > max_chars:
        raise _invalid(field, f"{field} exceeds {max_chars} characters")
    return value


def _invalid(field: str, message: str) -> ValidationError:
    return ValidationError(message, details={"field": field})


# --------------------------------------------------------------------------- text input


_CONTROL_CHARS = dict.fromkeys(c for c in range(32) if chr(c) not in "\t\n\r\f")
"""Control characters (to delete with ``str.translate``) that plain text does not contain."""


def decode_upload(raw: bytes) -> str:
    """Decode an uploaded text file as UTF-8, tolerating a byte-order mark.

    Raises:
        ValidationError: the upload is binary (contains NUL bytes or mostly control
            characters) or is not valid UTF-8.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise _invalid("file", "the upload must be bytes")
    data = bytes(raw)
    if b"\x00" in data:
        raise _invalid("file", "the file looks binary (it contains NUL bytes); upload plain text")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid(
            "file", f"the file is not valid UTF-8 text (bad byte at offset {exc.start})"
        ) from exc
    controls = len(text) - len(text.translate(_CONTROL_CHARS))
    if text and controls > max(8, len(text) // 100):
        raise _invalid("file", "the file looks binary (too many control characters)")
    return text


def parse_manuscript_text(
    text: str,
    *,
    title: str | None = None,
    author: str = "Unknown",
    limits: ManuscriptLimits = DEFAULT_LIMITS,
) -> Manuscript:
    """Split plain text or Markdown into chapters at its headings.

    Headings are lines like ``Chapter 1``, ``Chapter 1: The Storm``, ``CHAPTER IV -
    Night``, ``Chapter Two``, ``Prologue``, or Markdown ``#``/``##`` headings. Markdown
    headings split at the shallowest level used; deeper ones stay inside the chapter,
    except headings whose text is itself a "Chapter N" line, which always split.

    Choices:
        * Chapters are numbered 1..n in reading order; numbers written in headings are
          not trusted (books restart them per part or skip some, and a duplicate number
          would collide in checkpoints and image file names). The heading's own title
          ("The Storm") becomes the chapter title, else the heading itself ("Chapter 1").
        * A single ``# Title`` on the first line, followed by deeper headings, is the
          book's title, not a chapter.
        * Text before the first heading (title page, dedication, epigraph) is front
          matter, never a chapter: it is not a scene to illustrate. It is kept as the
          manuscript's ``description``, and its first line becomes the title when no
          title was given and it is short.
        * A heading with no text under it (e.g. ``## Part One`` right before
          ``### Chapter 1``) makes no chapter.
        * Text without any heading is one chapter.

    Raises:
        ValidationError: the text is empty, too long, or has too many chapters.
    """
    text = _checked_text(text, title, limits)
    lines = text.split("\n")
    book_title, headings = take_book_title(lines, find_headings(lines))
    split_at = split_headings(headings)
    if split_at:
        chapters = _cut_chapters(lines, split_at, limits)
        skip = book_title[0] if book_title else -1
        front = "\n".join(line for i, line in enumerate(lines[: split_at[0].line]) if i != skip)
    else:
        if len(text) > limits.max_chapter_chars:
            raise _invalid("text", f"chapter 1 exceeds {limits.max_chapter_chars} characters")
        chapters, front = [Chapter(1, "Chapter 1", text.strip("\n"))], ""
    if not chapters:
        raise _invalid("text", "no chapter has any text under its heading")
    if len(chapters) > limits.max_chapters:
        raise _invalid("text", f"at most {limits.max_chapters} chapters are allowed")
    chosen, description = _title_and_description(
        (title or "").strip() or (book_title[1] if book_title else ""), front.strip()
    )
    manuscript = Manuscript(
        title=_clip(chosen or "Untitled", limits.max_title_chars),
        author=_clip(author.strip() if isinstance(author, str) else "", limits.max_title_chars)
        or "Unknown",
        chapters=tuple(chapters),
        description=_clip(description, limits.max_description_chars),
    )
    logger.debug("parsed text manuscript %r into %d chapters", manuscript.title, len(chapters))
    return manuscript


def _checked_text(text: str, title: str | None, limits: ManuscriptLimits) -> str:
    """The text with its line ends made ``\\n`` (and no byte-order mark), once it and the
    title are checked against ``limits``.

    Raises:
        ValidationError: the text is not a string, too long or empty; the title is not a
            string or too long.
    """
    if not isinstance(text, str):
        raise _invalid("text", "the manuscript text must be a string")
    if len(text) > limits.max_total_chars:
        raise _invalid("text", f"the manuscript exceeds {limits.max_total_chars} characters")
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise _invalid("text", "the manuscript text is empty")
    if title is not None:
        if not isinstance(title, str):
            raise _invalid("title", "title must be a string")
        if len(title.strip()) > limits.max_title_chars:
            raise _invalid("title", f"title exceeds {limits.max_title_chars} characters")
    return text


def _title_and_description(title: str, front: str) -> tuple[str, str]:
    """The book title and description given the front matter (text before chapter one).

    Without a title, a short first line of the front matter is taken as the title.
    """
    if title or not front:
        return title, front
    first, _, rest = front.partition("\n")
    if len(first.strip()) <= 120:
        return first.strip().strip("#").strip(), rest.strip()
    return "", front


def _cut_chapters(
    lines: list[str], split_at: list[Heading], limits: ManuscriptLimits
) -> list[Chapter]:
    chapters: list[Chapter] = []
    bounds = [h.line for h in split_at] + [len(lines)]
    for heading, end in zip(split_at, bounds[1:], strict=True):
        content = "\n".join(lines[heading.line + 1 : end]).strip("\n")
        if not content.strip():
            continue
        number = len(chapters) + 1
        if len(content) > limits.max_chapter_chars:
            raise _invalid(
                "text", f"chapter {number} exceeds {limits.max_chapter_chars} characters"
            )
        chapters.append(Chapter(number, _clip(heading.title, limits.max_title_chars), content))
    return chapters


def _clip(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit].rstrip()
