"""``json_depth`` measures nesting from the raw text exactly as the parsed value nests,
whatever the strings hold (brackets, quotes, backslashes, escapes)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from web.responses import json_depth

TRICKY = st.text(alphabet=st.sampled_from('ab[]{}"\\/:,\n\u00e9\u2603'), max_size=12)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | TRICKY,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TRICKY, inner, max_size=4),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, derandomize=True, deadline=None)
@given(VALUES, st.booleans(), st.booleans())
def test_json_depth_is_the_parsed_nesting(value: Any, ascii_only: bool, indent: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only, indent=2 if indent else None)
    assert json_depth(text.encode()) == depth(value)


def test_json_depth_of_escapes_next_to_quotes() -> None:
    for raw in [
        rb'["\\", "\"]", "\\\"[", "\\\\"]',
        rb'{"a": "[[[\\\"}]]]", "b": [[{}]]}',
        rb'[{"\\": "\\\\"}, ["\u005b"]]',
    ]:
        assert json_depth(raw) == depth(json.loads(raw)), raw
    assert json_depth(b"[" * 50 + b"]" * 50) == 50
    assert json_depth(b'"just a string [["') == 0
