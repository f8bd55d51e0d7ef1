"""_msearch bodies: NDJSON pairs of header and search body."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.search.ndjson import dump_msearch, item_indices, parse_msearch

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10)
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_OBJECTS = st.dictionaries(st.text(max_size=8), _JSON, max_size=4)
_PAIRS = st.lists(st.tuples(_OBJECTS, _OBJECTS), min_size=1, max_size=5)


@settings(max_examples=50)
@given(_PAIRS)
def test_property_dump_then_parse_is_the_identity(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
    raw = dump_msearch(pairs)
    assert raw.endswith(b"\n") and raw.count(b"\n") == 2 * len(pairs)  # one line each: no newline inside JSON
    assert parse_msearch(raw) == pairs


@settings(max_examples=30)
@given(_PAIRS, st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_property_line_endings_and_a_missing_last_newline_do_not_matter(
    pairs: list[tuple[dict[str, Any], dict[str, Any]]], eol: bytes, last: bool
) -> None:
    lines = [json.dumps(obj, ensure_ascii=False).encode() for pair in pairs for obj in pair]
    raw = eol.join(lines) + (eol if last else b"")
    assert parse_msearch(raw) == pairs


def test_parse_reads_what_clients_send() -> None:
    raw = b'{"index":"docs"}\n{"query":{"match":{"text":"caf\xc3\xa9"}},"size":3}\n{}\n{"query":{"match_all":{}}}\n'
    assert parse_msearch(raw) == [
        ({"index": "docs"}, {"query": {"match": {"text": "café"}}, "size": 3}),
        ({}, {"query": {"match_all": {}}}),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\n\n",
        b'{"index":"a"}\n',  # a header without a body
        b'{"index":"a"}\n{}\n{"index":"b"}\n',
        b'{"index":"a"}\n{not json}\n',
        b'{"index":"a"}\n{"query":\n{}}\n',  # pretty-printed JSON is not NDJSON
        b'["a"]\n{}\n',
        b'{}\n"text"\n',
        b"{}\n1\n",
        b"{}\nnull\n",
        b'{"index":"a"}\n{"q":"\xff\xfe"}\n',  # not UTF-8
    ],
)
def test_malformed_bodies_give_none(raw: bytes) -> None:
    assert parse_msearch(raw) is None


@given(st.binary(max_size=64))
def test_property_any_bytes_give_pairs_of_objects_or_none(raw: bytes) -> None:
    parsed = parse_msearch(raw)
    assert parsed is None or all(isinstance(h, dict) and isinstance(b, dict) for h, b in parsed)


def test_an_empty_header_line_is_an_empty_header() -> None:
    # Elasticsearch's readMultiLineFormat reads an empty line as a header with no keys, here twice:
    # three searches, the last two with empty headers. Dropping the empty lines pairs body 2 as a header.
    raw = b'{"index":"a"}\n{"size":1}\n\n{"size":2}\n\n{"size":3}\n'
    parsed = parse_msearch(raw)
    assert parsed == [({"index": "a"}, {"size": 1}), ({}, {"size": 2}), ({}, {"size": 3})]


@pytest.mark.parametrize(
    ("header", "path_indices", "expected"),
    [
        ({"index": "a"}, ("p",), ("a",)),
        ({"index": "a,b,"}, ("p",), ("a", "b")),
        ({"index": ["a", "b", 3]}, ("p",), ("a", "b")),
        ({}, ("p", "q"), ("p", "q")),
        ({"index": None}, ("p",), ("p",)),
        ({"index": 7}, ("p",), ("p",)),
        ({}, (), ()),
    ],
)
def test_item_indices(header: dict[str, Any], path_indices: tuple[str, ...], expected: tuple[str, ...]) -> None:
    assert item_indices(header, path_indices) == expected
