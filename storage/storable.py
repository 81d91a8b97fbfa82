"""Whether a record read from a file can be written to the database at all.

JSON files can hold values BSON cannot: a lone surrogate (``"\\ud800"`` is valid JSON
but not UTF-8), an integer beyond 64 bits, a document over MongoDB's 16 MB limit. Such
a record fails every database write, however often it is retried, so reconciliation
and verification test each file record before trusting the database with it.
"""

from __future__ import annotations

from typing import Any

import bson

MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
"""MongoDB's limit on one document (BSON)."""


def database_problem(document: dict[str, Any]) -> str | None:
    """Why ``document`` can never be stored in the database, or None if it can."""
    try:
        size = len(bson.encode(document))
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start : exc.end]
        return f"text that is not valid UTF-8 ({bad!r} at position {exc.start} of a string)"
    except OverflowError as exc:
        return f"an integer the database cannot hold ({exc})"
    except (bson.errors.InvalidDocument, TypeError, ValueError, RecursionError) as exc:
        return f"a value the database cannot hold ({type(exc).__name__}: {str(exc)[:200]})"
    if size > MAX_DOCUMENT_BYTES:
        return f"{size} bytes, over the database's {MAX_DOCUMENT_BYTES}-byte document limit"
    return None
