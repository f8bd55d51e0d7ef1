"""Header rules of the proxy: hop-by-hop removal, forwarding, vendor media types."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from sidecar.headers import (
    HOP_BY_HOP,
    client_response_headers,
    compat_version,
    is_json_media_type,
    is_ndjson_media_type,
    plain_media_type,
    upstream_request_headers,
    vendor_media_type,
)

UPSTREAM_HOST = "engine.internal:9200"
NEVER_UPSTREAM = {"host", "x-forwarded-host", "x-rerank", "expect"}


def _proxy(*items: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(items))


def _up(*items: tuple[str, str], client_ip: str | None = "10.0.0.7", compat: bool = False) -> CIMultiDict[str]:
    return upstream_request_headers(
        _proxy(*items), host=UPSTREAM_HOST, client_ip=client_ip, scheme="http", compat=compat
    )


def _names(headers: CIMultiDict[str]) -> set[str]:
    return {k.lower() for k in headers}


# --- upstream request headers -------------------------------------------------------------------------------------


def test_end_to_end_headers_pass_and_hop_by_hop_ones_do_not() -> None:
    out = _up(
        ("Authorization", "ApiKey abc"),
        ("X-Opaque-Id", "r1"),
        ("Content-Type", "application/json"),
        ("Connection", "keep-alive, X-Drop-Me"),
        ("Keep-Alive", "timeout=5"),
        ("X-Drop-Me", "1"),
        ("TE", "trailers"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "h2c"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Proxy-Connection", "keep-alive"),
        ("Trailer", "X-Sum"),
    )
    assert out["Authorization"] == "ApiKey abc"
    assert out["X-Opaque-Id"] == "r1"
    assert out["Content-Type"] == "application/json"
    assert _names(out) == {
        "authorization",
        "x-opaque-id",
        "content-type",
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
    }


@pytest.mark.parametrize(
    "connection",
    ["X-Custom", "x-custom", " X-CUSTOM ", "close, X-Custom", "X-Other,X-Custom", "keep-alive ,  x-custom  ,"],
)
def test_a_header_named_in_connection_is_dropped_however_it_is_spelled(connection: str) -> None:
    out = _up(("Connection", connection), ("X-Custom", "1"), ("X-Kept", "2"))
    assert "X-Custom" not in out and out["X-Kept"] == "2"


def test_headers_named_in_a_second_connection_header_are_dropped_too() -> None:
    out = _up(("Connection", "keep-alive"), ("Connection", "X-Custom"), ("X-Custom", "1"))
    assert "X-Custom" not in out and "Connection" not in out


@pytest.mark.parametrize("name", ["Host", "host", "X-Forwarded-Host", "x-forwarded-host", "X-Rerank", "Expect"])
def test_the_client_never_chooses_host_x_forwarded_host_x_rerank_or_expect(name: str) -> None:
    out = _up((name, "evil.example"), ("Host", "other.example"))
    assert out.getall("Host") == [UPSTREAM_HOST]
    assert not _names(out) & (NEVER_UPSTREAM - {"host"})


@pytest.mark.parametrize(
    ("incoming", "client_ip", "expected"),
    [
        ([], "10.0.0.7", "10.0.0.7"),
        ([("X-Forwarded-For", "1.1.1.1")], "10.0.0.7", "1.1.1.1, 10.0.0.7"),
        ([("X-Forwarded-For", "1.1.1.1, 2.2.2.2")], "10.0.0.7", "1.1.1.1, 2.2.2.2, 10.0.0.7"),
        # Two header fields are one comma-joined list (RFC 9110 5.3): no hop of the chain may be lost.
        ([("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "2.2.2.2")], "10.0.0.7", "1.1.1.1, 2.2.2.2, 10.0.0.7"),
        ([("X-Forwarded-For", "1.1.1.1")], None, "1.1.1.1"),  # no peer address: the chain passes as it is
    ],
)
def test_x_forwarded_for_appends_the_peer(
    incoming: list[tuple[str, str]], client_ip: str | None, expected: str
) -> None:
    out = _up(*incoming, client_ip=client_ip)
    assert out.getall("X-Forwarded-For") == [expected]


def test_no_peer_and_no_chain_sends_no_x_forwarded_for() -> None:
    assert "X-Forwarded-For" not in _up(client_ip=None)


@pytest.mark.parametrize(("incoming", "expected"), [([], "https"), ([("X-Forwarded-Proto", "http")], "http")])
def test_x_forwarded_proto_is_the_listener_scheme_unless_a_proxy_before_us_set_it(
    incoming: list[tuple[str, str]], expected: str
) -> None:
    out = upstream_request_headers(_proxy(*incoming), host=UPSTREAM_HOST, client_ip=None, scheme="https", compat=False)
    assert out.getall("X-Forwarded-Proto") == [expected]


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("Content-Type", "application/vnd.elasticsearch+json; compatible-with=9", "application/json"),
        ("Accept", "application/vnd.elasticsearch+json;compatible-with=8", "application/json"),
        ("Content-Type", "application/vnd.elasticsearch+x-ndjson; compatible-with=9", "application/x-ndjson"),
        ("Content-Type", "application/json; charset=UTF-8", "application/json; charset=UTF-8"),
        ("Accept", "text/plain", "text/plain"),
    ],
)
def test_compat_rewrites_vendor_media_types_for_an_opensearch_upstream(name: str, value: str, expected: str) -> None:
    assert _up((name, value), compat=True)[name] == expected
    assert _up((name, value), compat=False)[name] == value  # without the setting, nothing is rewritten


def test_compat_rewrites_every_accept_header_not_only_the_first() -> None:
    out = _up(
        ("Accept", "application/vnd.elasticsearch+json; compatible-with=9"), ("Accept", "text/plain"), compat=True
    )
    assert sorted(out.getall("Accept")) == ["application/json", "text/plain"]


# A few names a request may carry, in any case, and a few of its own.
_NAMES = st.sampled_from(
    [
        *HOP_BY_HOP,
        *NEVER_UPSTREAM,
        "x-forwarded-for",
        "x-forwarded-proto",
        "authorization",
        "content-type",
        "x-a",
        "x-b",
    ]
) | st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=12)
_CASED = st.builds(lambda name, case: case(name), _NAMES, st.sampled_from([str.lower, str.upper, str.title]))
_VALUES = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20)


@st.composite
def _requests(draw: st.DrawFn) -> list[tuple[str, str]]:
    items = draw(st.lists(st.tuples(_CASED, _VALUES), max_size=12))
    if draw(st.booleans()):  # a Connection header naming some of the request's own headers
        named = draw(st.lists(st.sampled_from([n for n, _ in items] or ["x-a"]), max_size=4))
        items.append((draw(st.sampled_from(["Connection", "connection"])), ", ".join(named)))
    return items


@settings(max_examples=60)
@given(_requests(), st.booleans())
def test_property_no_hop_by_hop_header_leaks_and_the_host_is_always_ours(
    items: list[tuple[str, str]], compat: bool
) -> None:
    incoming = _proxy(*items)
    named = {t.strip().lower() for v in incoming.getall("Connection", []) for t in v.split(",")}
    out = upstream_request_headers(incoming, host=UPSTREAM_HOST, client_ip="10.0.0.7", scheme="http", compat=compat)
    names = _names(out)
    assert not names & HOP_BY_HOP
    assert not names & (named - {"host", "x-forwarded-for", "x-forwarded-proto"})
    assert not names & {"x-forwarded-host", "x-rerank", "expect"}
    assert out.getall("Host") == [UPSTREAM_HOST]
    assert len(out.getall("X-Forwarded-For")) == 1 and out["X-Forwarded-For"].endswith("10.0.0.7")
    # Everything else the client sent reaches the engine, value for value.
    dropped = HOP_BY_HOP | named | NEVER_UPSTREAM | {"x-forwarded-for", "x-forwarded-proto", "content-type", "accept"}
    for name, value in items:
        if name.lower() not in dropped:
            assert value in out.getall(name)


# --- client response headers --------------------------------------------------------------------------------------


def test_response_headers_lose_hop_by_hop_ones_and_those_the_caller_recomputes() -> None:
    upstream = _proxy(
        ("Content-Type", "application/json"),
        ("Content-Length", "12"),
        ("X-Elastic-Product", "Elasticsearch"),
        ("Connection", "keep-alive, X-Internal"),
        ("X-Internal", "1"),
        ("Keep-Alive", "timeout=5"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    )
    out = client_response_headers(upstream, drop=("Content-Length",))
    assert _names(out) == {"content-type", "x-elastic-product", "set-cookie"}
    assert out.getall("Set-Cookie") == ["a=1", "b=2"]


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", "application/vnd.elasticsearch+json;compatible-with=9"),
        ("application/json; charset=UTF-8", "application/vnd.elasticsearch+json;compatible-with=9"),
        ("Application/JSON", "application/vnd.elasticsearch+json;compatible-with=9"),
        ("application/x-ndjson", "application/vnd.elasticsearch+x-ndjson;compatible-with=9"),
        ("text/plain; charset=UTF-8", "text/plain; charset=UTF-8"),
        ("application/yaml", "application/yaml"),
    ],
)
def test_response_content_type_goes_back_to_the_vendor_type_the_client_asked_for(
    content_type: str, expected: str
) -> None:
    out = client_response_headers(_proxy(("Content-Type", content_type)), compat_accept="9")
    assert out["Content-Type"] == expected
    assert client_response_headers(_proxy(("Content-Type", content_type)))["Content-Type"] == content_type


@settings(max_examples=60)
@given(st.lists(st.tuples(_CASED, _VALUES), max_size=12))
def test_property_no_hop_by_hop_header_reaches_the_client(items: list[tuple[str, str]]) -> None:
    incoming = _proxy(*items)
    named = {t.strip().lower() for v in incoming.getall("Connection", []) for t in v.split(",")}
    assert not _names(client_response_headers(incoming)) & (HOP_BY_HOP | named)


# --- media types --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/vnd.elasticsearch+json; compatible-with=9", "application/json"),
        ("application/vnd.elasticsearch+json;compatible-with=8", "application/json"),
        ("application/vnd.elasticsearch+json ; compatible-with = 7", "application/json"),
        ("APPLICATION/VND.ELASTICSEARCH+JSON; Compatible-With=9", "application/json"),
        ("application/vnd.elasticsearch+json", "application/json"),
        ("application/vnd.elasticsearch+x-ndjson; compatible-with=9", "application/x-ndjson"),
        ("application/vnd.elasticsearch+json; compatible-with=9; charset=utf-8", "application/json; charset=utf-8"),
        # Parameters have no order (RFC 9110 5.6.6): compatible-with after the charset goes too.
        ("application/vnd.elasticsearch+json; charset=utf-8; compatible-with=9", "application/json; charset=utf-8"),
        (
            "application/vnd.elasticsearch+json; compatible-with=9, text/plain; q=0.5",
            "application/json, text/plain; q=0.5",
        ),
        ("application/json", "application/json"),
        ("text/plain", "text/plain"),
        ("", ""),
    ],
)
def test_plain_media_type(value: str, expected: str) -> None:
    assert plain_media_type(value) == expected


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        ("application/vnd.elasticsearch+json; compatible-with=9", "9"),
        ("application/vnd.elasticsearch+json;compatible-with=8", "8"),
        ("application/vnd.elasticsearch+x-ndjson; compatible-with=9", "9"),
        ("application/vnd.elasticsearch+json; charset=utf-8; compatible-with=9", "9"),
        ("application/json, application/vnd.elasticsearch+json; compatible-with=8", "8"),
        ("application/vnd.elasticsearch+json", None),
        ("application/json", None),
        ("application/vnd.elasticsearch+json; compatible-with=nine", None),
        ("application/json; compatible-with=9", None),  # only the vendor types carry a version
        ("", None),
        (None, None),
    ],
)
def test_compat_version(accept: str | None, expected: str | None) -> None:
    assert compat_version(accept) == expected


_PARAMS = st.lists(st.sampled_from(["charset=utf-8", "charset=UTF-8", "q=0.9"]), max_size=2)
_VERSIONS = st.integers(min_value=0, max_value=99).map(str)


@given(st.sampled_from(["application/json", "application/x-ndjson"]), _PARAMS, _VERSIONS)
def test_property_plain_undoes_vendor(base: str, params: list[str], version: str) -> None:
    content_type = "; ".join([base, *params])
    vendor = vendor_media_type(content_type, version)
    assert vendor.startswith("application/vnd.elasticsearch+")
    assert plain_media_type(vendor) == base
    assert compat_version(vendor) == version


@given(
    st.sampled_from(["json", "x-ndjson"]),
    st.permutations(["compatible-with=9", "charset=utf-8"]),
    st.sampled_from([";", "; ", " ; "]),
    _VERSIONS,
)
def test_property_vendor_undoes_plain(sub: str, params: list[str], sep: str, version: str) -> None:
    vendor = sep.join([f"application/vnd.elasticsearch+{sub}", *params])
    plain = plain_media_type(vendor)
    assert "vnd.elasticsearch" not in plain and "compatible-with" not in plain
    assert plain.split(";")[0].strip() == f"application/{sub}"
    assert vendor_media_type(plain, version) == f"application/vnd.elasticsearch+{sub};compatible-with={version}"


@given(st.text(max_size=40))
def test_property_plain_media_type_leaves_non_vendor_types_alone(value: str) -> None:
    if "vnd.elasticsearch" not in value.lower():
        assert plain_media_type(value) == value


@pytest.mark.parametrize(
    ("content_type", "json", "ndjson"),
    [
        (None, True, True),
        ("", True, True),
        ("application/json", True, True),
        ("application/json; charset=utf-8", True, True),
        ("Application/JSON", True, True),
        ("application/vnd.elasticsearch+json; compatible-with=9", True, True),
        ("text/plain", True, True),
        ("application/x-ndjson", False, True),
        ("application/vnd.elasticsearch+x-ndjson; compatible-with=9", False, True),
        ("application/cbor", False, False),
        ("application/smile", False, False),
        ("application/yaml", False, False),
    ],
)
def test_json_and_ndjson_media_types(content_type: str | None, json: bool, ndjson: bool) -> None:
    assert is_json_media_type(content_type) is json
    assert is_ndjson_media_type(content_type) is ndjson
