"""Which requests may be replayed after a connection failure: idempotent reads only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.upstream import is_retryable


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/docs/_search"),
        ("GET", "/docs/_doc/1"),
        ("GET", "/_cluster/health"),
        ("HEAD", "/docs"),
        ("OPTIONS", "/"),
        ("POST", "/_search"),
        ("POST", "/docs/_search"),
        ("POST", "/a,b/_search"),
        ("POST", "/_all/_search"),
        ("POST", "/_msearch"),
        ("POST", "/docs/_msearch"),
        ("POST", "/_search/template"),
        ("POST", "/docs/_count"),
        ("POST", "/_mget"),
        ("POST", "/docs/_mget"),
        ("POST", "/docs/_field_caps"),
        ("POST", "/docs/_validate/query"),
        ("POST", "/docs/_explain/1"),
        ("POST", "/docs/_explain/_search"),
        ("POST", "//docs//_search"),
    ],
)
def test_reads_are_retried(method: str, path: str) -> None:
    assert is_retryable(method, path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/_search/scroll"),
        ("GET", "/_search/scroll/c2Nyb2xs"),
        ("POST", "/_search/scroll"),
        ("POST", "/_search/scroll/c2Nyb2xs"),
        ("POST", "/docs/_doc"),
        ("POST", "/docs/_doc/1"),
        ("POST", "/docs/_create/1"),
        ("POST", "/docs/_update/1"),
        ("POST", "/_bulk"),
        ("POST", "/docs/_bulk"),
        ("POST", "/docs/_update_by_query"),
        ("POST", "/docs/_delete_by_query"),
        ("POST", "/_reindex"),
        ("POST", "/docs/_refresh"),
        ("POST", "/docs/_pit"),
        ("POST", "/docs/_async_search"),
        ("POST", "/docs"),
        ("POST", "/"),
        # A document id may be the name of a read endpoint: these are writes.
        ("POST", "/docs/_doc/_search"),
        ("POST", "/docs/_update/_count"),
        ("POST", "/docs/_create/_mget"),
        ("POST", "/_bulk/_search"),
        ("PUT", "/docs"),
        ("PUT", "/docs/_doc/1"),
        ("PUT", "/docs/_search"),
        ("DELETE", "/docs"),
        ("DELETE", "/docs/_doc/1"),
        ("PATCH", "/docs/_search"),
    ],
)
def test_writes_and_scroll_pages_are_never_retried(method: str, path: str) -> None:
    assert not is_retryable(method, path)


_READS = ["docs", "_all", "_search", "_msearch", "_count", "_mget", "_explain", "_validate", "query", "1", "template"]
_WRITES = ["_doc", "_create", "_update", "_bulk", "_update_by_query", "_delete_by_query", "scroll", "_pit", ""]
_SEGMENTS = st.sampled_from([*_READS, *_WRITES]) | st.text(
    st.characters(codec="ascii", exclude_characters="/"), max_size=8
)


@given(st.sampled_from(["PUT", "DELETE", "PATCH", "put", "delete", "patch", "TRACE", "CONNECT"]), st.lists(_SEGMENTS))
def test_property_never_for_put_delete_or_patch(method: str, parts: list[str]) -> None:
    assert not is_retryable(method, "/" + "/".join(parts))


@given(
    st.lists(_SEGMENTS, max_size=4),
    st.sampled_from(["_bulk", "_doc", "_create", "_update", "_update_by_query", "_delete_by_query", "scroll"]),
    st.lists(_SEGMENTS, max_size=4),
)
def test_property_never_a_post_that_names_a_write_or_scroll(before: list[str], write: str, after: list[str]) -> None:
    assert not is_retryable("POST", "/" + "/".join([*before, write, *after]))


@given(st.lists(_SEGMENTS, max_size=5))
def test_property_a_retried_post_names_a_read_endpoint(parts: list[str]) -> None:
    if is_retryable("POST", "/" + "/".join(parts)):
        first = next(p for p in parts if p.startswith("_") and p != "_all")
        assert first in {"_search", "_msearch", "_count", "_mget", "_field_caps", "_validate", "_explain"}
