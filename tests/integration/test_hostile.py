"""Hostile and careless clients against a real `serve` process (the tiny real model) over a real osmem engine.

Each class of issue #17 is generated, and each case is sent both to the engine directly and through the
sidecar: the sidecar may rerank, never answer worse. A tally of the cases and of the 5xx answers the
sidecar gave where the engine did not is printed at the end (the README's reliability section reports it).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml
from aiohttp import ClientSession, web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.tools.launch import serve_process
from tests.servers import Http, ThreadServer, index_docs

pytestmark = pytest.mark.slow  # spawns a serve process

RULE = {"index": "docs*", "fields": ["text"], "window_size": 20}
ARRAYS = {"index": "arrays", "fields": ["tags"], "array_mode": "max", "window_size": 20}
SEARCH = {"query": {"match": {"text": "apple"}}, "size": 3}
_EXAMPLES = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@dataclass
class Tally:
    cases: int = 0
    ours: list[str] = field(default_factory=list)  # 5xx from the sidecar where the engine gave none


@dataclass
class Target:
    engine: str
    url: str
    http: Http
    tally: Tally

    def both(self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[Any, Any]:
        """The engine's answer and the sidecar's to the same bytes; a 5xx only we gave is tallied."""
        hdrs = {"Content-Type": "application/json", **(headers or {})}
        direct = self.http("POST" if method == "POST" else method, self.engine + path, body, headers=hdrs)
        ours = self.http(method, self.url + path, body, headers=hdrs)
        self.tally.cases += 1
        if ours.status >= 500 and direct.status < 500:
            self.tally.ours.append(f"{path} {body[:80]!r} -> {ours.status} {ours.data[:200]!r}")
        assert b"Traceback" not in ours.data
        return direct, ours


def _strict_json(raw: bytes) -> Any:
    """JSON as the engines and strict clients read it: NaN and Infinity are not JSON."""

    def refuse(literal: str) -> Any:
        raise ValueError(f"not JSON: {literal}")

    return json.loads(raw, parse_constant=refuse)


def _without_took(raw: bytes) -> Any:
    value = json.loads(raw)
    if isinstance(value, dict):
        value.pop("took", None)
    return value


@pytest.fixture(scope="module")
def tally() -> Iterator[Tally]:
    found = Tally()
    yield found
    print(
        f"\nhostile suite: {found.cases} cases sent to the engine and the sidecar; 5xx only from us: {len(found.ours)}"
    )
    assert not found.ours, found.ours


@pytest.fixture(scope="module")
def target(osmem: Any, tiny_model: str, tmp_path_factory: pytest.TempPathFactory, tally: Tally) -> Iterator[Target]:
    clone = osmem.clone()
    http = Http()
    docs = [
        (index, str(i), {"text": f"apple doc {i}", "secret": f"s{i}", "tags": ["apple", str(i)]})
        for i in range(30)
        for index in ("docs", "plain")
    ]
    for i in range(20):  # one hit of 10,000 values, each of which array_mode max scores as its own text
        tags = [f"apple tag {i} {n} " + "banana date " * 20 for n in range(10_000 if i == 0 else 3)]
        docs.append(("arrays", str(i), {"tags": tags}))
    index_docs(http, clone.url, docs)
    config = tmp_path_factory.mktemp("hostile") / "sidecar.yaml"
    settings = {"rules": [RULE, ARRAYS], "breaker_failures": 3, "breaker_cooldown_s": 600, "rerank_timeout_ms": 1000}
    config.write_text(yaml.safe_dump(settings))
    flags = ("--model", tiny_model, "--config", str(config), "--log-level", "WARNING")
    with serve_process(clone.url, *flags, ready_path="/_sidecar/ready") as (_, url):
        yield Target(clone.url, url, http, tally)
    clone.close()


def _applied(r: Any) -> bool:
    return r.status == 200 and r.headers.get("X-Rerank", "").startswith("applied")


def _served_normally(t: Target) -> None:
    """The next ordinary search is reranked and the sidecar is healthy: the hostile one hurt nobody."""
    r = t.http("POST", t.url + "/docs/_search", SEARCH)
    assert _applied(r), (r.status, r.headers.get("X-Rerank"), r.data[:300])
    assert len(json.loads(r.data)["hits"]["hits"]) == 3


# --- 1. Deep nesting ------------------------------------------------------------------------------------------


def _nested(shape: str, depth: int) -> bytes:
    match = '{"match":{"text":"apple"}}'
    if shape == "bool":
        return ('{"query":' + '{"bool":{"must":[' * depth + match + "]}}" * depth + "}").encode()
    if shape == "array":
        return ('{"query":' + match + ',"_source":' + "[" * depth + '"text"' + "]" * depth + "}").encode()
    return (
        '{"query":' + match + ',"aggs":{"a":{"filter":' + '{"bool":{"filter":' * depth + match + "}}" * depth + "}}}"
    ).encode()


@_EXAMPLES
@given(
    shape=st.sampled_from(["bool", "array", "object"]),
    depth=st.one_of(st.integers(1, 400), st.integers(400, 3000)),
    index=st.sampled_from(["docs", "plain"]),
    mention=st.booleans(),
)
def test_deep_nesting_is_answered_as_the_engine_answers_it(
    target: Target, shape: str, depth: int, index: str, mention: bool
) -> None:
    """No 500 at any depth: a search the sidecar cannot read goes to the engine as it came; one it reads is
    reranked. ``mention`` puts the word "rerank" in a string, so the body is parsed even without a rule."""
    body = _nested(shape, depth)
    if mention:
        body = body[:-1] + b',"stats":["rerank"]}'
    direct, ours = target.both("POST", f"/{index}/_search", body)
    assert ours.status == direct.status, (ours.status, direct.status, ours.data[:300])
    if index == "plain" and direct.status == 200:
        assert _without_took(ours.data) == _without_took(direct.data)
    if ours.status == 200:
        _strict_json(ours.data)


# --- 2. Numbers -----------------------------------------------------------------------------------------------

_NUMBERS = [
    "1.5",
    "true",
    "false",
    "null",
    '"5"',
    '"5.5"',
    '"abc"',
    '""',
    "1e999",
    "-1e999",
    "-1",
    "-0.0",
    "0",
    "1e3",
    "2147483647",
    "2147483648",
    "99999999999999999999",
    "NaN",
    "Infinity",
    "-Infinity",
    "[5]",
    "{}",
    "7",
    "1" + "0" * 400,
]


@_EXAMPLES
@given(
    key=st.sampled_from(["size", "from"]), literal=st.sampled_from(_NUMBERS), index=st.sampled_from(["docs", "plain"])
)
def test_page_numbers_are_read_as_the_engine_reads_them(target: Target, key: str, literal: str, index: str) -> None:
    other = "from" if key == "size" else "size"
    body = f'{{"query":{{"match":{{"text":"apple"}}}},"{key}":{literal},"{other}":2}}'.encode()
    direct, ours = target.both("POST", f"/{index}/_search", body)
    assert ours.status == direct.status, (literal, ours.status, direct.status, ours.data[:300])
    if ours.status == 200:
        got, want = _strict_json(ours.data)["hits"]["hits"], json.loads(direct.data)["hits"]["hits"]
        assert len(got) == len(want), (literal, len(got), len(want))


@_EXAMPLES
@given(
    key=st.sampled_from(["size", "from"]), value=st.sampled_from(["1e999", "1.5", "-1", "abc", "2147483648", "", "5"])
)
def test_page_parameters_are_read_as_the_engine_reads_them(target: Target, key: str, value: str) -> None:
    direct, ours = target.both("POST", f"/docs/_search?{key}={value}", json.dumps({"query": SEARCH["query"]}).encode())
    assert ours.status == direct.status, (value, ours.status, direct.status, ours.data[:300])


_FLOATS = ["1e999", "-1e999", "1e308", "-1e308", "3.5e38", "3.3e38", "NaN", "Infinity", '"x"', "true", "0", "-2.5"]


@_EXAMPLES
@given(
    key=st.sampled_from(["query_weight", "rerank_weight", "min_score", "budget_ms"]),
    literal=st.sampled_from(_FLOATS),
    mode=st.sampled_from(["total", "multiply", "avg", "max", "min"]),
)
def test_weights_are_finite_and_no_reply_carries_a_non_finite_number(
    target: Target, key: str, literal: str, mode: str
) -> None:
    spec = (
        '{"query_context":{"query_text":"apple"},"score_mode":"combine",'
        + f'"combine_mode":"{mode}","{key}":{literal}}}'
    )
    body = ('{"query":{"match":{"text":"apple"}},"size":3,"ext":{"rerank":' + spec + "}}").encode()
    r = target.http("POST", target.url + "/docs/_search", body, headers={"Content-Type": "application/json"})
    target.tally.cases += 1
    assert r.status in (200, 400), (literal, r.status, r.data[:300])
    reply = _strict_json(r.data)  # never NaN or Infinity
    if r.status == 200:
        assert all(math.isfinite(h["_score"]) for h in reply["hits"]["hits"])
        assert _applied(r)
    else:
        assert reply["status"] == 400 and reply["error"]["type"]


# --- 3. _msearch items ----------------------------------------------------------------------------------------

_BAD_ITEMS = [
    {"query": {"match": {"text": "apple"}}, "ext": {"rerank": {"query_context": {"query_text": "apple"}, "bogus": 1}}},
    {
        "query": {"match": {"text": "apple"}},
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "model": "nope"}},
    },
    {
        "query": {"match": {"text": "apple"}},
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "window_size": 10**9}},
    },
    {"query": {"match": {"text": "a" * 20_000}}},
    {
        "query": {"match": {"text": "apple"}},
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "fields": ["x" * 2000]}},
    },
]


@_EXAMPLES
@given(items=st.lists(st.one_of(st.none(), st.sampled_from(range(len(_BAD_ITEMS)))), min_size=1, max_size=6))
def test_one_bad_msearch_item_is_that_items_error_and_the_others_are_served(
    target: Target, items: list[int | None]
) -> None:
    lines = []
    for item in items:
        lines += [json.dumps({"index": "docs"}), json.dumps(SEARCH if item is None else _BAD_ITEMS[item])]
    body = ("\n".join(lines) + "\n").encode()
    r = target.http("POST", target.url + "/_msearch", body, headers={"Content-Type": "application/x-ndjson"})
    target.tally.cases += 1
    assert r.status == 200, (r.status, r.data[:300])
    responses = _strict_json(r.data)["responses"]
    assert len(responses) == len(items)
    for item, response in zip(items, responses, strict=True):
        if item is None:
            assert response["status"] == 200 and len(response["hits"]["hits"]) == 3, response
        else:
            assert response["status"] == 400 and response["error"]["reason"], response
            assert len(json.dumps(response)) < 2000  # the error quotes a huge input cut, never whole
    good = items.count(None)
    assert r.headers["X-Rerank"] == (f"applied; items={good}" if good else "skipped; reason=no_item_reranked")


# --- 5. A widened window never leaks ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def formats(
    osmem: Any, tiny_model: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[dict[str, Any]], Http]]:
    """A protocol double over a real osmem that answers in the formats Elasticsearch offers and osmem lacks:
    ``?format=yaml|cbor|smile`` or such an Accept (here: YAML, or the JSON behind a binary marker standing in
    for CBOR and Smile), and ``deflate`` when the client accepts it and not gzip. It records what it was sent."""
    clone = osmem.clone()
    http = Http()
    index_docs(http, clone.url, (("docs", str(i), {"text": f"apple doc {i}", "secret": f"s{i}"}) for i in range(30)))
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append({"path": request.path_qs, "body": body})
        query = [(k, v) for k, v in request.query.items() if k != "format"]
        async with (
            ClientSession() as session,
            session.post(
                clone.url + str(request.rel_url.with_query(query)),
                data=body,
                headers={"Content-Type": "application/json"},
            ) as r,
        ):
            data = await r.read()
        fmt = request.query.get("format") or next(
            (f for f in ("yaml", "cbor", "smile") if f in request.headers.get("Accept", "")), "json"
        )
        headers = {"Content-Type": f"application/{fmt}"}
        if fmt == "yaml":
            data = yaml.safe_dump(json.loads(data)).encode()
        elif fmt != "json":
            data = b"\x3a\x29\x0a\x05" + data
        accept = request.headers.get("Accept-Encoding", "")
        if "deflate" in accept and "gzip" not in accept:
            data, headers["Content-Encoding"] = zlib.compress(data), "deflate"
        return web.Response(status=r.status, body=data, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    config = tmp_path_factory.mktemp("formats") / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"rules": [RULE]}))
    with ThreadServer(app) as double:
        flags = ("--model", tiny_model, "--config", str(config), "--log-level", "WARNING")
        with serve_process(double.url, *flags, ready_path="/_sidecar/health") as (_, url):
            yield url, seen, http
    clone.close()


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?format=yaml", {}),
        ("?format=cbor", {}),
        ("?format=smile", {}),
        ("", {"Accept": "application/yaml"}),
        ("", {"Accept": "application/cbor"}),
        ("", {"Accept": "application/smile"}),
        ("", {"Accept": "application/vnd.elasticsearch+yaml;compatible-with=8"}),
        ("", {"Accept-Encoding": "deflate"}),
        ("", {"Accept-Encoding": "br, deflate"}),
        ("", {"Accept-Encoding": "zstd"}),
    ],
)
@pytest.mark.parametrize("kind", ["search", "msearch"])
def test_a_reply_the_sidecar_cannot_read_back_is_never_widened(
    formats: tuple[str, list[dict[str, Any]], Http], query: str, headers: dict[str, str], kind: str
) -> None:
    url, seen, http = formats
    search = {"query": {"match": {"text": "apple"}}, "size": 2, "_source": {"excludes": ["secret", "text"]}}
    if kind == "search":
        path, body, ctype = "/docs/_search", json.dumps(search).encode(), "application/json"
    else:
        path, body, ctype = (
            "/_msearch",
            b'{"index":"docs"}\n' + json.dumps(search).encode() + b"\n",
            "application/x-ndjson",
        )
    seen.clear()
    r = http("POST", url + path + query, body, headers={"Content-Type": ctype, **headers})
    assert r.status == 200
    data = zlib.decompress(r.data) if r.headers.get("Content-Encoding") == "deflate" else r.data
    assert data.count(b"apple doc") == 0 and data.count(b'"s1') + data.count(b" s1") == 0  # no excluded field
    assert data.count(b"_id") <= 2  # the page the client asked for, never the window
    for sent in seen:  # the engine was asked for the page as the client asked, or for a window we could read
        widened = b'"size": 20' in sent["body"] or b'"size":20' in sent["body"]
        assert not widened or ("format" not in sent["path"] and not headers.get("Accept")), sent


# --- 7. Long field paths ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1001, 20_000, 400_000])
@pytest.mark.parametrize("where", ["fields", "query_text_path", "retriever"])
def test_long_field_paths_are_refused_at_once_and_the_loop_stays_free(target: Target, length: int, where: str) -> None:
    """Paths past the engine's bound (1000 characters) are a 400; the path work is linear, so even the
    longest is answered in well under a second (a guard; it took 13-30 s), and health answers throughout."""
    path = ("a." * length)[:length]
    ext: dict[str, Any] = {"query_context": {"query_text": "apple"}}
    if where == "fields":
        ext["fields"] = [path]
        body: dict[str, Any] = {**SEARCH, "ext": {"rerank": ext}}
    elif where == "query_text_path":
        body = {**SEARCH, "ext": {"rerank": {"query_context": {"query_text_path": path}}}}
    else:
        inner = {"standard": {"query": SEARCH["query"]}}
        body = {
            "retriever": {"text_similarity_reranker": {"retriever": inner, "field": path, "inference_text": "apple"}}
        }
    start = time.monotonic()
    r = target.http("POST", target.url + "/docs/_search", body)
    elapsed = time.monotonic() - start
    target.tally.cases += 1
    assert r.status == 400, (r.status, r.data[:300])
    assert len(r.data) < 2000 and elapsed < 3.0, (len(r.data), elapsed)
    assert target.http("GET", target.url + "/_sidecar/health").status == 200


def test_fifty_fields_of_a_thousand_characters_are_served(target: Target) -> None:
    fields = [("a." * 500)[:999] + str(i % 10) for i in range(49)] + ["text"]
    body = {**SEARCH, "ext": {"rerank": {"query_context": {"query_text": "apple"}, "fields": fields}}}
    r = target.http("POST", target.url + "/docs/_search", body)
    target.tally.cases += 1
    assert _applied(r), (r.status, r.data[:300])
    fields.append("b")
    assert target.http("POST", target.url + "/docs/_search", body).status == 400  # 51 fields


# --- 8. One search's size costs that search --------------------------------------------------------------------


def _queued(t: Target) -> float:
    metrics = t.http("GET", t.url + "/_sidecar/metrics").data.decode()
    return sum(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("sidecar_queue_pairs"))


def test_a_search_with_a_huge_array_neither_starves_its_neighbours_nor_falls_back(target: Target) -> None:
    """A window whose first hit is 10,000 texts (array_mode max): that search is reranked within its share of
    the model (``max_search_pairs``), and ordinary searches sent while it runs are reranked too, none falls back."""
    with ThreadPoolExecutor(4) as pool:
        big = pool.submit(target.http, "POST", target.url + "/arrays/_search", {"query": {"match": {"tags": "apple"}}})
        deadline = time.monotonic() + 30
        while not big.done() and _queued(target) == 0:  # the neighbours come while the big one holds the model
            assert time.monotonic() < deadline
            time.sleep(0.005)
        ordinary = [pool.submit(target.http, "POST", target.url + "/docs/_search", SEARCH) for _ in range(12)]
        answers = [f.result() for f in ordinary]
        r = big.result()
    target.tally.cases += 13
    assert all(_applied(a) for a in answers), [a.headers.get("X-Rerank") for a in answers]
    assert _applied(r), (r.status, r.headers.get("X-Rerank"), r.data[:200])
    assert len(json.loads(r.data)["hits"]["hits"]) == 10


# --- 9. Input errors are the request's, never the model's -------------------------------------------------------

_HOSTILE_TEXT = st.one_of(
    st.sampled_from(["\\ud800", "\\udfff", "a\\ud83dz", "\\udc00\\ud800", "\\u0000", "\\u202e", "\\ufeff"]),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=30).map(lambda s: json.dumps(s)[1:-1]),
)


@_EXAMPLES
@given(text=_HOSTILE_TEXT, where=st.sampled_from(["query", "document"]))
def test_untokenizable_text_never_opens_the_circuit_for_others(target: Target, text: str, where: str) -> None:
    """Lone surrogates and other odd text in a query or a document: that search is reranked or skipped, and the
    next ordinary search is still reranked (the breaker opens after 3 model failures)."""
    if where == "query":
        ext = '{"rerank":{"query_context":{"query_text":"apple ' + text + '"}}}'
        raw = ('{"query":{"match":{"text":"apple"}},"size":3,"ext":' + ext + "}").encode()
        r = target.http("POST", target.url + "/docs/_search", raw, headers={"Content-Type": "application/json"})
    else:
        target.http(
            "PUT",
            target.engine + "/docs/_doc/odd?refresh=true",
            ('{"text":"apple odd ' + text + '"}').encode(),
            headers={"Content-Type": "application/json"},
        )
        r = target.http("POST", target.url + "/docs/_search", {"query": {"match": {"text": "odd"}}, "size": 3})
    target.tally.cases += 1
    assert r.status in (200, 400), (r.status, r.data[:300])
    _strict_json(r.data)
    _served_normally(target)


def test_the_suite_ends_with_the_sidecar_serving(target: Target) -> None:
    """After everything above, one process still serves, reranked, with its circuit closed."""
    _served_normally(target)
    ready = target.http("GET", target.url + "/_sidecar/ready")
    assert ready.status == 200 and b"circuit" not in ready.data
