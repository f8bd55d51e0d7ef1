"""Which requests are searches the sidecar may rerank."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.search.routes import SearchRoute, search_route


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/_search", SearchRoute("search", ())),
        ("POST", "/_search", SearchRoute("search", ())),
        ("POST", "/_msearch", SearchRoute("msearch", ())),
        ("GET", "/docs/_search", SearchRoute("search", ("docs",))),
        ("POST", "/docs/_msearch", SearchRoute("msearch", ("docs",))),
        ("POST", "/a,b/_search", SearchRoute("search", ("a", "b"))),
        ("POST", "/a,,b,/_search", SearchRoute("search", ("a", "b"))),
        ("POST", "/_search/template", SearchRoute("template", ())),
        ("POST", "/_async_search", SearchRoute("async_submit", ())),
        ("POST", "/logs-*/_async_search", SearchRoute("async_submit", ("logs-*",))),
        ("GET", "/_async_search/FmRl", SearchRoute("async_get", (), "FmRl")),
        ("GET", "/_async_search/status/FmRl", SearchRoute("async_status", (), "FmRl")),
        ("DELETE", "/_async_search/rsc1.a.b", SearchRoute("async_delete", (), "rsc1.a.b")),
        ("GET", "/docs,logs/_search/template", SearchRoute("template", ("docs", "logs"))),
        ("POST", "/_msearch/template", SearchRoute("msearch_template", ())),
        ("POST", "/docs/_msearch/template", SearchRoute("msearch_template", ("docs",))),
        ("POST", "/a%2Cb/_search", SearchRoute("search", ("a", "b"))),  # the comma percent-encoded
        ("POST", "/logs-*,-logs-old/_search", SearchRoute("search", ("logs-*", "-logs-old"))),
        ("POST", "/remote:idx/_search", SearchRoute("search", ("remote:idx",))),
        ("POST", "/docs/_search/", SearchRoute("search", ("docs",))),
        ("POST", "_search", SearchRoute("search", ())),
    ],
)
def test_searches(method: str, path: str, expected: SearchRoute) -> None:
    assert search_route(method, path) == expected


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/docs/_search"),
        ("DELETE", "/docs/_search"),
        ("HEAD", "/docs/_search"),
        ("OPTIONS", "/_search"),
        ("PATCH", "/_msearch"),
        ("POST", "/_search/scroll"),
        ("PUT", "/docs/_search/template"),
        ("POST", "/docs/_doc/template"),
        ("POST", "/_cat/_search/template"),
        ("POST", "/docs/_search_shards"),
        ("GET", "/docs/_async_search"),
        ("POST", "/_async_search/abc"),
        ("PUT", "/_async_search/abc"),
        ("GET", "/_async_search/"),
        ("DELETE", "/_async_search/status/abc"),
        ("POST", "/docs/_count"),
        ("POST", "/docs/_doc/_search"),  # a document whose id is _search
        ("POST", "/a/b/_search"),  # typed search: gone from the engines
        ("POST", "/_cat/_search"),
        ("POST", "//docs/_search/x"),
        ("POST", "/"),
        ("POST", ""),
        ("GET", "/docs"),
    ],
)
def test_not_searches(method: str, path: str) -> None:
    assert search_route(method, path) is None


def test_all_indices_by_name_is_a_search() -> None:
    assert search_route("POST", "/_all/_search") is not None


_SEGMENT = st.text(st.characters(codec="ascii", exclude_characters="/"), min_size=1, max_size=12)


@given(st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD"]), st.lists(_SEGMENT, max_size=4))
def test_property_a_route_is_only_ever_a_search_by_get_or_post_ending_in_search_or_msearch(
    method: str, parts: list[str]
) -> None:
    route = search_route(method, "/" + "/".join(parts))
    if route is not None:
        assert method in ("GET", "POST")
        assert parts[-1] in ("_search", "_msearch") and route.kind == parts[-1][1:]
        assert all(i and not i.startswith("_") for i in route.indices) or route.indices == ()
