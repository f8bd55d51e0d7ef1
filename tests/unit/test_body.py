"""Search bodies read as the engine reads them; the numbers, formats and texts the sidecar reads out of them."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import Rule, Settings
from sidecar.headers import reply_is_json
from sidecar.search.body import read_object, write_json
from sidecar.search.plan import decide
from sidecar.search.query_text import usable_text

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


@given(value=st.dictionaries(st.text(max_size=5), _JSON, max_size=5))
def test_any_json_object_reads_back_as_written(value: dict[str, Any]) -> None:
    raw = json.dumps(value).encode()
    assert read_object(raw) == value
    assert write_json(read_object(raw)) == raw


@pytest.mark.parametrize(
    "raw",
    [
        b'{"size": NaN}',
        b'{"size": Infinity}',
        b'{"size": -Infinity}',
        b'{"size": 1e999}',
        b'{"boost": -1e400}',
        b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"a": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}",
        b'{"n": 1' + b"0" * 5000 + b"}",  # more digits than Python reads
        b"[1, 2]",
        b'"text"',
        b"{not json}",
        b"\xff\xfe{",
    ],
)
def test_bodies_the_engine_may_read_otherwise_are_not_ours(raw: bytes) -> None:
    assert read_object(raw) is None


def test_an_empty_body_is_an_empty_search() -> None:
    assert read_object(b"") == {} and read_object(b"  \n") == {}


def test_a_value_too_deep_to_write_is_none_not_an_error() -> None:
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    assert write_json({"a": value}) is None


_SETTINGS = Settings(rules=(Rule(index="docs"),))


def _page(body: dict[str, Any], params: dict[str, str] | None = None) -> tuple[int, int] | str:
    d = decide(
        {"query": {"match": {"text": "apple"}}, **body},
        ("docs",),
        params or {},
        _SETTINGS,
        opt_out=False,
        has_model=lambda m: True,
    )
    return (d.plan.start, d.plan.size) if d.plan else str(d.reason)


@pytest.mark.parametrize(
    ("value", "size"),
    [(5, 5), (1.5, 1), ("5", 5), ("5.5", 5), (1e3, 1000), (10.0, 10), (" 7 ", 7), (-0.0, 0)],
)
def test_size_reads_as_the_engine_coerces_it(value: Any, size: int) -> None:
    page = _page({"size": value})
    assert page == ("size_0" if size == 0 else (0, size))


@pytest.mark.parametrize(
    "value", [True, False, None, [5], {}, "abc", "", -1, 2**31, 10**20, math.inf, -math.inf, math.nan, "1e999", "NaN"]
)
def test_a_size_the_engine_refuses_is_left_for_the_engine_to_refuse(value: Any) -> None:
    assert _page({"size": value}) == "engine_judges_page"
    assert _page({"from": value}) == "engine_judges_page"


def test_a_page_past_the_engines_result_window_is_left_to_the_engine() -> None:
    assert _page({"size": 10_000}) == (0, 10_000)
    assert _page({"size": 10_001}) == _page({"from": 9_995, "size": 6}) == "engine_judges_page"


@pytest.mark.parametrize(
    ("param", "ok"), [("5", True), ("+5", True), ("1.5", False), ("1e3", False), ("", False), ("\u0665", False)]
)
def test_url_page_parameters_are_whole_numbers(param: str, ok: bool) -> None:
    assert (_page({}, {"size": param}) != "engine_judges_page") is ok


@pytest.mark.parametrize(
    "source", [["text", ["x"]], {"includes": [1]}, {"includes": "a", "other": 1}, 5, {"excludes": [None]}]
)
def test_a_source_filter_of_a_shape_the_engine_refuses_is_left_to_it(source: Any) -> None:
    assert _page({"_source": source}) == "engine_judges_source"


@pytest.mark.parametrize(
    ("fmt", "accept", "json_reply"),
    [
        (None, None, True),
        ("json", "application/json", True),
        ("JSON", "application/vnd.elasticsearch+json; compatible-with=8", True),
        (None, "*/*", True),
        ("yaml", None, False),
        ("cbor", None, False),
        ("smile", None, False),
        ("", None, False),
        (None, "application/yaml", False),
        (None, "application/json, application/cbor;q=0.5", False),
        (None, "application/vnd.elasticsearch+smile;compatible-with=8", False),
    ],
)
def test_reply_is_json(fmt: str | None, accept: str | None, json_reply: bool) -> None:
    assert reply_is_json(fmt, accept) is json_reply


@given(st.text())
def test_usable_text_is_always_encodable_and_keeps_valid_text(text: str) -> None:
    usable_text(text).encode("utf-8")  # never raises
    assert usable_text("ok " + text) == "ok " + text  # text that is valid (all hypothesis makes) stays as it is


@pytest.mark.parametrize(
    ("text", "clean"),
    [("a\ud800b", "a\ufffdb"), ("\udfff", "\ufffd"), ("\ud83d\ude00", "\U0001f600"), ("\ude00\ud83d", "\ufffd\ufffd")],
)
def test_lone_surrogates_become_the_replacement_character(text: str, clean: str) -> None:
    assert usable_text(text) == clean
