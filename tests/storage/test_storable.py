"""storage.storable: which file records the database can never store."""

from __future__ import annotations

import json

from storage.storable import MAX_DOCUMENT_BYTES, database_problem


def test_records_the_database_cannot_store_are_named_with_the_reason() -> None:
    lone_surrogate = json.loads('{"text": ["fine", "bad \\ud800 here"]}')
    assert "not valid UTF-8" in str(database_problem(lone_surrogate))
    assert "integer the database cannot hold" in str(database_problem({"n": 2**64}))
    huge = {"text": "x" * (MAX_DOCUMENT_BYTES + 1)}
    assert "over the database's 16777216-byte document limit" in str(database_problem(huge))
    assert "a value the database cannot hold" in str(database_problem({"f": {1, 2}}))


def test_ordinary_records_are_storable() -> None:
    ordinary = {"text": "ünïcödé ✓", "n": 2**63 - 1, "nested": {"a": [1, None]}}
    assert database_problem(ordinary) is None
