"""The user's query text inside an engine query, and dotted paths into documents."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.search.query_text import find_query_text, is_missing, resolve_path

# --- find_query_text ----------------------------------------------------------------------------------------------

_LEAVES: list[Callable[[str], dict[str, Any]]] = [
    lambda t: {"match": {"title": t}},
    lambda t: {"match": {"title": {"query": t, "operator": "and"}}},
    lambda t: {"match_phrase": {"title": t}},
    lambda t: {"match_phrase_prefix": {"title": {"query": t}}},
    lambda t: {"match_bool_prefix": {"title": t}},
    lambda t: {"multi_match": {"query": t, "fields": ["title", "body"]}},
    lambda t: {"query_string": {"query": t, "default_field": "body"}},
    lambda t: {"simple_query_string": {"query": t}},
    lambda t: {"combined_fields": {"query": t, "fields": ["title", "body"]}},
]
# Compound queries, each with its child where the engine scores it.
_WRAPPERS: list[Callable[[dict[str, Any]], dict[str, Any]]] = [
    lambda q: {"bool": {"must": [q]}},
    lambda q: {"bool": {"must": q}},  # a single clause without a list
    lambda q: {"bool": {"should": [{"term": {"tag": "x"}}, q]}},
    lambda q: {"bool": {"filter": [q], "must_not": [{"match": {"x": "not this"}}]}},
    lambda q: {"dis_max": {"queries": [{"range": {"n": {"gt": 1}}}, q]}},
    lambda q: {"function_score": {"query": q, "functions": [{"weight": 2}]}},
    lambda q: {"script_score": {"query": q, "script": {"source": "_score"}}},
    lambda q: {"constant_score": {"filter": q}},
    lambda q: {"boosting": {"positive": q, "negative": {"match": {"x": "not this"}}, "negative_boost": 0.5}},
    lambda q: {"nested": {"path": "comments", "query": q}},
]


@pytest.mark.parametrize("leaf", range(len(_LEAVES)))
def test_every_full_text_leaf(leaf: int) -> None:
    assert find_query_text(_LEAVES[leaf]("  pizza near me ")) == "pizza near me"


@pytest.mark.parametrize("wrapper", range(len(_WRAPPERS)))
def test_every_compound(wrapper: int) -> None:
    assert find_query_text(_WRAPPERS[wrapper]({"match": {"body": "pizza"}})) == "pizza"


@given(
    st.sampled_from(range(len(_LEAVES))),
    st.lists(st.sampled_from(range(len(_WRAPPERS))), max_size=5),
    st.text(min_size=1, max_size=20).filter(str.strip),
)
def test_property_the_text_is_found_through_any_nesting(leaf: int, wrappers: list[int], text: str) -> None:
    query = _LEAVES[leaf](text)
    for w in wrappers:
        query = _WRAPPERS[w](query)
    assert find_query_text(query) == text.strip()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        # must is read before should, and should before filter, whatever the JSON order.
        ({"bool": {"should": [{"match": {"a": "second"}}], "must": [{"match": {"a": "first"}}]}}, "first"),
        ({"bool": {"filter": [{"match": {"a": "third"}}], "should": [{"match": {"a": "second"}}]}}, "second"),
        ({"dis_max": {"queries": [{"match": {"a": "one"}}, {"match": {"a": "two"}}]}}, "one"),
        # empty and non-text leaves are skipped, the next one counts
        ({"bool": {"must": [{"match": {"a": "  "}}, {"term": {"t": "x"}}, {"match": {"b": "real"}}]}}, "real"),
        ({"bool": {"must": [{"multi_match": {"query": ""}}, {"query_string": {"query": "qs"}}]}}, "qs"),
    ],
)
def test_order_the_engine_reads_them_in(query: dict[str, Any], expected: str) -> None:
    assert find_query_text(query) == expected


@pytest.mark.parametrize(
    "query",
    [
        None,
        "text",
        [{"match": {"a": "in a list"}}],
        {},
        {"match_all": {}},
        {"term": {"title": "exact"}},
        {"terms": {"tag": ["a", "b"]}},
        {"match": {"year": 2024}},
        {"match": {"title": {"query": 42}}},
        {"match": {}},
        {"match": "not an object"},
        {"multi_match": {"fields": ["a"]}},
        {"bool": {"must_not": [{"match": {"a": "excluded"}}]}},
        {"boosting": {"negative": {"match": {"a": "demoted"}}}},
        {"bool": "not an object"},
        {"bool": {"must": "not a query"}},
        {"function_score": {"functions": [{"weight": 1}]}},
    ],
)
def test_no_query_text(query: Any) -> None:
    assert find_query_text(query) is None


# --- resolve_path -------------------------------------------------------------------------------------------------

_DOC = {
    "title": "t",
    "meta": {"author": {"name": "ann"}, "tags": ["x", "y"]},
    "resource.id": "dotted",
    "a": {"b.c": "inner dotted"},
    "comments": [{"text": "c0"}, {"text": "c1", "likes": [5, 6]}],
    "empty": None,
    "zero": 0,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("title", "t"),
        ("meta.author.name", "ann"),
        ("meta.author", {"name": "ann"}),
        ("meta.tags", ["x", "y"]),
        ("meta.tags.1", "y"),
        ("resource.id", "dotted"),
        ("a.b.c", "inner dotted"),
        ("comments.0.text", "c0"),
        ("comments.1.likes.0", 5),
        ("empty", None),
        ("zero", 0),
    ],
)
def test_resolve_path(path: str, expected: Any) -> None:
    assert resolve_path(_DOC, path) == expected


@pytest.mark.parametrize(
    "path",
    ["nope", "title.x", "meta.tags.2", "meta.tags.-1", "meta.tags.x", "comments.text", "meta..author", "", "title."],
)
def test_resolve_path_missing(path: str) -> None:
    assert is_missing(resolve_path(_DOC, path))


def test_a_dotted_key_is_tried_whole_first_then_split() -> None:
    doc = {"a.b": {"c": "long key"}, "a": {"b": {"c": "split"}}}
    assert resolve_path(doc, "a.b.c") == "long key"
    doc = {"a.b": {}, "a": {"b": {"c": "split"}}}  # the long key leads nowhere: the split one is tried
    assert resolve_path(doc, "a.b.c") == "split"
    assert resolve_path({"a.b.c": 1, "a": {"b": {"c": 2}}}, "a.b.c") == 1


def test_missing_is_not_none() -> None:
    assert not is_missing(None) and is_missing(resolve_path({}, "x"))


def test_a_non_ascii_digit_is_not_a_list_index() -> None:
    assert is_missing(resolve_path({"tags": ["x"]}, "tags.²"))


_KEYS = st.text(st.characters(categories=["Ll", "Nd"], max_codepoint=0x7F), min_size=1, max_size=3)


@st.composite
def _doc_and_path(draw: st.DrawFn) -> tuple[Any, str, Any]:
    """A nested document, a path to one of its values, and that value."""
    leaf: Any = draw(st.integers() | st.text(max_size=5) | st.none())
    value: Any = leaf
    parts: list[str] = []
    for _ in range(draw(st.integers(0, 4))):
        if draw(st.booleans()):
            key = draw(_KEYS)
            siblings: dict[str, int] = draw(st.dictionaries(_KEYS, st.integers(), max_size=2))
            value, parts = {**siblings, key: value}, [key, *parts]  # the path's key last: it wins over a sibling
        else:
            index = draw(st.integers(0, 3))
            value, parts = [0] * index + [value], [str(index), *parts]
    return value, ".".join(parts), leaf


@settings(max_examples=60)
@given(_doc_and_path())
def test_property_a_path_built_into_a_document_resolves_to_its_value(case: tuple[Any, str, Any]) -> None:
    doc, path, leaf = case
    if path:
        assert resolve_path(doc, path) == leaf


# The bodies Kibana and OpenSearch Dashboards build from their query bars (their search source: KQL/DQL free text
# compiles to multi_match best_fields lenient; Lucene syntax to query_string), next to the time range filter.
_RANGE = {
    "range": {"@timestamp": {"gte": "2026-11-30T00:00:00.000Z", "lte": "now", "format": "strict_date_optional_time"}}
}


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (  # Kibana 8/9 Discover, KQL free text
            {
                "bool": {
                    "must": [],
                    "filter": [{"multi_match": {"type": "best_fields", "query": "disk full", "lenient": True}}, _RANGE],
                    "should": [],
                    "must_not": [],
                }
            },
            "disk full",
        ),
        (  # Kibana, KQL with a field and free text: the field clause is a match in a nested bool
            {
                "bool": {
                    "filter": [
                        {
                            "bool": {
                                "filter": [
                                    {
                                        "bool": {
                                            "should": [{"match": {"host.name": "web-1"}}],
                                            "minimum_should_match": 1,
                                        }
                                    },
                                    {"multi_match": {"type": "best_fields", "query": "timeout", "lenient": True}},
                                ]
                            }
                        },
                        _RANGE,
                    ]
                }
            },
            "web-1",
        ),
        (  # Kibana, Lucene syntax
            {
                "bool": {
                    "must": [],
                    "filter": [
                        {"query_string": {"query": "error AND payment", "analyze_wildcard": True, "time_zone": "UTC"}},
                        _RANGE,
                    ],
                }
            },
            "error AND payment",
        ),
        (  # OpenSearch Dashboards, DQL
            {
                "bool": {
                    "must": [],
                    "filter": [
                        {"match_all": {}},
                        {"multi_match": {"type": "best_fields", "query": "checkout", "lenient": True}},
                        _RANGE,
                    ],
                    "should": [],
                    "must_not": [],
                }
            },
            "checkout",
        ),
        (  # OpenSearch Dashboards, Lucene syntax in must
            {
                "bool": {
                    "must": [{"query_string": {"query": "slow query", "analyze_wildcard": True, "time_zone": "UTC"}}],
                    "filter": [{"match_all": {}}, _RANGE],
                    "should": [],
                    "must_not": [],
                }
            },
            "slow query",
        ),
    ],
)
def test_the_query_bars_of_kibana_and_dashboards(query: dict[str, Any], expected: str) -> None:
    assert find_query_text(query) == expected
