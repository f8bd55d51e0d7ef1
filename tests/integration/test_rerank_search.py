"""Reranked _search through the sidecar, osmem as the engine, a deterministic scorer as the unit seam."""

from __future__ import annotations

import gzip
import json
import re
from typing import Any

import pytest
from aiohttp import ClientSession, web

from sidecar.config import Rule
from tests.fakes import KeyScorer, key_score
from tests.servers import Http, ThreadServer

WORDS = ["apple", "banana", "cherry", "durian", "elder", "fig", "grape"]


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    http(
        "PUT",
        engine + "/docs",
        {
            "mappings": {
                "properties": {
                    "title": {"type": "text"},
                    "text": {"type": "text"},
                    "n": {"type": "integer"},
                    "tag": {"type": "keyword"},
                    "meta": {"properties": {"lang": {"type": "keyword"}}},
                }
            }
        },
    )
    lines = []
    for i in range(80):
        doc = {
            "title": f"title {i}",
            "text": f"apple {WORDS[i % 7]} {WORDS[(i * 3) % 7]} apple{'s' * (i % 4)} doc {i}",
            "n": i,
            "tag": "even" if i % 2 == 0 else "odd",
            "meta": {"lang": "en"},
        }
        lines += [json.dumps({"index": {"_index": "docs", "_id": str(i)}}), json.dumps(doc)]
    r = http(
        "POST",
        engine + "/_bulk?refresh=true",
        ("\n".join(lines) + "\n").encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert not json.loads(r.data)["errors"]
    return engine


def _whole_window(header: str) -> bool:
    """``applied; window=N/N``: reranked, the whole window (no budget cut it short)."""
    m = re.fullmatch(r"applied; window=(\d+)/(\d+)", header)
    return m is not None and m.group(1) == m.group(2) and int(m.group(1)) > 0


def _rule(**kw: Any) -> Rule:
    return Rule(
        index=kw.pop("index", "docs*"), fields=kw.pop("fields", ("text",)), window_size=kw.pop("window_size", 50), **kw
    )


@pytest.fixture
def scorer() -> KeyScorer:
    return KeyScorer()


@pytest.fixture
def proxy(corpus: str, make_sidecar: Any, scorer: KeyScorer) -> Any:
    return make_sidecar(corpus, scorer=scorer, rules=(_rule(),))


def _search(http: Http, url: str, body: Any, path: str = "/docs/_search", **headers: str) -> tuple[Any, Any]:
    r = http("POST", url + path, body, headers={"Content-Type": "application/json", **headers})
    return r, json.loads(gzip.decompress(r.data) if r.headers.get("Content-Encoding") == "gzip" else r.data)


def _expected_ids(http: Http, engine: str, query: str, window: int, field: str = "text") -> list[str]:
    _, direct = _search(http, engine, {"query": {"match": {"text": query}}, "size": window})
    hits = direct["hits"]["hits"]
    order = sorted(range(len(hits)), key=lambda i: (-key_score(query, hits[i]["_source"][field]), i))
    return [hits[i]["_id"] for i in order]


def test_rule_reranks_in_exactly_the_scorers_order(proxy: Any, corpus: str, http: Http) -> None:
    r, got = _search(http, proxy.url, {"query": {"match": {"text": "apple"}}, "size": 10})
    assert r.status == 200 and _whole_window(r.headers["X-Rerank"])
    assert r.headers["X-Rerank-Model"] and float(r.headers["X-Rerank-Took-Ms"]) >= 0
    expected = _expected_ids(http, corpus, "apple", 50)
    assert [h["_id"] for h in got["hits"]["hits"]] == expected[:10]
    assert got["hits"]["max_score"] == got["hits"]["hits"][0]["_score"]
    assert got["hits"]["hits"][0]["_score"] == pytest.approx(
        key_score("apple", got["hits"]["hits"][0]["_source"]["text"])
    )
    _, direct = _search(http, corpus, {"query": {"match": {"text": "apple"}}, "size": 10})
    assert got["hits"]["total"] == direct["hits"]["total"] and got["_shards"] == direct["_shards"]
    assert [h["_id"] for h in direct["hits"]["hits"]] != expected[:10]  # the test could fail


def test_pages_are_disjoint_and_cover_the_window_in_order(proxy: Any, corpus: str, http: Http) -> None:
    ids: list[str] = []
    for page in range(5):
        r, got = _search(http, proxy.url, {"query": {"match": {"text": "apple"}}, "from": page * 10, "size": 10})
        assert _whole_window(r.headers["X-Rerank"])
        ids += [h["_id"] for h in got["hits"]["hits"]]
    assert ids == _expected_ids(http, corpus, "apple", 50)
    assert len(set(ids)) == 50
    # URL parameters page the same way.
    r = http("GET", proxy.url + "/docs/_search?q=apple&from=10&size=10")
    assert [h["_id"] for h in json.loads(r.data)["hits"]["hits"]] == ids[10:20]


def test_ext_rerank_with_text_and_path(corpus: str, make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(corpus, scorer=KeyScorer())  # no rule: ext alone triggers
    body = {
        "query": {"match": {"text": {"query": "apple"}}},
        "size": 5,
        "ext": {"rerank": {"query_context": {"query_text_path": "query.match.text.query"}, "window_size": 50}},
    }
    r, got = _search(http, proxy.url, body)
    assert r.status == 200 and _whole_window(r.headers["X-Rerank"]), got
    assert [h["_id"] for h in got["hits"]["hits"]] == _expected_ids(http, corpus, "apple", 50)[:5]
    body["ext"] = {"rerank": {"query_context": {"query_text": "banana"}, "window_size": 50, "fields": ["title"]}}
    r, got = _search(http, proxy.url, body)
    _, direct = _search(http, corpus, {"query": {"match": {"text": "apple"}}, "size": 50})
    hits = direct["hits"]["hits"]
    order = sorted(range(50), key=lambda i: (-key_score("banana", hits[i]["_source"]["title"]), i))
    assert [h["_id"] for h in got["hits"]["hits"]] == [hits[i]["_id"] for i in order[:5]]


def test_retriever_syntax_reranks_and_carries_standard_keys(corpus: str, make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(corpus, scorer=KeyScorer(models=("default", "mini")))
    body = {
        "size": 5,
        "retriever": {
            "text_similarity_reranker": {
                "retriever": {"standard": {"query": {"match": {"text": "apple"}}, "filter": {"term": {"tag": "even"}}}},
                "field": "text",
                "inference_text": "apple",
                "rank_window_size": 30,
                "inference_id": "mini",
            }
        },
    }
    r, got = _search(http, proxy.url, body)
    assert r.status == 200 and _whole_window(r.headers["X-Rerank"]) and r.headers["X-Rerank-Model"] == "mini", got
    _, direct = _search(
        http,
        corpus,
        {
            "query": {"bool": {"must": [{"match": {"text": "apple"}}], "filter": [{"term": {"tag": "even"}}]}},
            "size": 30,
        },
    )
    hits = direct["hits"]["hits"]
    order = sorted(range(len(hits)), key=lambda i: (-key_score("apple", hits[i]["_source"]["text"]), i))
    assert [h["_id"] for h in got["hits"]["hits"]] == [hits[i]["_id"] for i in order[:5]]
    assert all(h["_source"]["tag"] == "even" for h in got["hits"]["hits"])

    # An inference_id that is not one of ours is the engine's own endpoint: the engine runs it (or says why not).
    body["retriever"]["text_similarity_reranker"]["inference_id"] = "elser-endpoint"
    r = http("POST", proxy.url + "/docs/_search", body)
    direct = http("POST", corpus + "/docs/_search", body)
    assert (r.status, r.data) == (direct.status, direct.data)
    assert r.headers["X-Rerank"] == "skipped; reason=inference_id_not_ours"


def _retrievers_app(engine: str, seen: list[dict[str, Any]]) -> web.Application:
    """A protocol double over a real osmem for what osmem lacks: Elasticsearch's ``standard`` and ``rrf``
    retrievers (each standard retriever a query on osmem, fused by reciprocal rank as Elasticsearch's rrf with
    ``rank_constant`` 60). It records each search body it gets; everything else goes to osmem as it came."""

    async def run(session: ClientSession, path: str, retriever: dict[str, Any], size: int) -> list[dict[str, Any]]:
        ((kind, spec),) = retriever.items()
        if kind == "standard":
            async with session.post(engine + path, json={"query": spec["query"], "size": size}) as r:
                return list((await r.json())["hits"]["hits"])
        assert kind == "rrf", kind
        window = spec.get("rank_window_size", size)
        lists = [await run(session, path, sub, window) for sub in spec["retrievers"]]
        fused: dict[str, float] = {}
        hits: dict[str, dict[str, Any]] = {}
        for ranked in lists:
            for rank, hit in enumerate(ranked):
                fused[hit["_id"]] = fused.get(hit["_id"], 0.0) + 1 / (60 + rank + 1)
                hits[hit["_id"]] = hit
        order = sorted(fused, key=lambda i: (-fused[i], i))[:size]
        return [{**hits[i], "_score": fused[i]} for i in order]

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        async with ClientSession() as session:
            parsed = json.loads(body) if body and request.path.endswith("/_search") else {}
            if "retriever" not in parsed:
                async with session.request(
                    request.method, engine + request.path_qs, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    return web.Response(status=r.status, body=await r.read(), content_type="application/json")
            seen.append(parsed)
            size, start = parsed.get("size", 10), parsed.get("from", 0)
            hits = (await run(session, request.path, parsed["retriever"], start + size))[start:]
        reply = {"took": 1, "timed_out": False, "hits": {"total": {"value": len(hits), "relation": "eq"}, "hits": hits}}
        return web.json_response(reply)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def test_a_reranker_over_a_hybrid_retriever_sends_it_unchanged_and_reranks_its_top(
    corpus: str, make_sidecar: Any, http: Http
) -> None:
    inner = {
        "rrf": {
            "retrievers": [
                {"standard": {"query": {"match": {"text": "banana"}}}},
                {"standard": {"query": {"match": {"text": "cherry"}}}},
            ],
            "rank_window_size": 40,
        }
    }
    body = {
        "size": 5,
        "_source": ["text"],
        "retriever": {
            "text_similarity_reranker": {
                "retriever": inner,
                "field": "text",
                "inference_text": "grape",
                "rank_window_size": 30,
            }
        },
    }
    seen: list[dict[str, Any]] = []
    with ThreadServer(_retrievers_app(corpus, seen)) as double:
        proxy = make_sidecar(double.url)
        r, got = _search(http, proxy.url, body)
        assert r.status == 200 and _whole_window(r.headers["X-Rerank"]), (r.status, got)
        assert seen[-1]["retriever"] == inner and seen[-1]["size"] == 30  # the inner retriever, as it came
        window = json.loads(http("POST", double.url + "/docs/_search", {"retriever": inner, "size": 30}).data)
    hits = window["hits"]["hits"]
    order = sorted(range(len(hits)), key=lambda i: (-key_score("grape", hits[i]["_source"]["text"]), i))
    assert [h["_id"] for h in got["hits"]["hits"]] == [hits[i]["_id"] for i in order[:5]]


def test_a_reranker_over_a_retriever_we_cannot_read_goes_to_the_engine_as_is(
    proxy: Any, corpus: str, http: Http
) -> None:
    body = {"retriever": {"text_similarity_reranker": {"retriever": "rrf", "field": "text", "inference_text": "apple"}}}
    r, _got = _search(http, proxy.url, body)
    direct = http("POST", corpus + "/docs/_search", body)
    assert (r.status, r.data) == (direct.status, direct.data)
    assert r.headers["X-Rerank"] == "skipped; reason=retriever_not_ours"


@pytest.mark.parametrize(
    ("body", "path", "reason"),
    [
        ({"query": {"match": {"text": "apple"}}, "sort": [{"n": "asc"}]}, "/docs/_search", "sort"),
        ({"query": {"match": {"text": "apple"}}, "size": 3}, "/docs/_search?scroll=1m", "scroll"),
        (
            {"query": {"match": {"text": "apple"}}, "sort": [{"n": "asc"}], "search_after": [5]},
            "/docs/_search",
            "search_after",
        ),
        ({"query": {"match": {"text": "apple"}}, "search_after": [1.0]}, "/docs/_search", "search_after"),
        ({"query": {"match": {"text": "apple"}}, "collapse": {"field": "tag"}}, "/docs/_search", "collapse"),
        (
            {"query": {"match": {"text": "apple"}}, "size": 0, "aggs": {"t": {"terms": {"field": "tag"}}}},
            "/docs/_search",
            "size_0",
        ),
        ({"query": {"match": {"text": "apple"}}, "from": 1000, "size": 10}, "/docs/_search", "from_past_window"),
        ({"query": {"match_all": {}}}, "/docs/_search", "no_query_text"),
        ({"query": {"term": {"tag": "even"}}}, "/docs/_search", "no_query_text"),
        ({"query": {"match": {"text": "apple"}}}, "/other*/_search", "no_rule"),
        ({"query": {"match": {"text": "apple"}}}, "/docs/_search?filter_path=hits.hits._id", "filter_path"),
    ],
)
def test_pass_through_cases_are_byte_identical(
    proxy: Any, corpus: str, http: Http, body: Any, path: str, reason: str
) -> None:
    if "other" in path:
        http("PUT", corpus + "/other1", {})
    raw = json.dumps(body).encode()
    direct = http("POST", corpus + path, raw, headers={"Content-Type": "application/json"})
    via = http("POST", proxy.url + path, raw, headers={"Content-Type": "application/json"})
    if "scroll" in path:  # scroll ids differ per request; the hits must not
        d, v = json.loads(direct.data), json.loads(via.data)
        assert d["hits"] == v["hits"]
    else:
        assert (via.status, _untimed(via.data)) == (direct.status, _untimed(direct.data))
    assert via.headers["X-Rerank"] == f"skipped; reason={reason}"


def test_opt_out_header_and_ext_stripped(proxy: Any, corpus: str, http: Http, scorer: KeyScorer) -> None:
    body = {"query": {"match": {"text": "apple"}}}
    direct = http("POST", corpus + "/docs/_search", body)
    via = http("POST", proxy.url + "/docs/_search", body, headers={"X-Rerank": "off"})
    assert (
        _untimed(via.data) == _untimed(direct.data) and via.headers["X-Rerank"] == "skipped; reason=disabled_by_header"
    )
    with_ext = {**body, "ext": {"rerank": {"query_context": {"query_text": "apple"}}}}
    via = http("POST", proxy.url + "/docs/_search", with_ext, headers={"X-Rerank": "off"})
    assert via.status == 200 and _untimed(via.data) == _untimed(direct.data)  # our syntax never reached the engine
    assert not scorer.calls


def test_source_filtering_fields_highlight_and_aggs(proxy: Any, corpus: str, http: Http) -> None:
    base = {"query": {"match": {"text": "apple"}}, "size": 8}
    expected = _expected_ids(http, corpus, "apple", 50)[:8]
    for src, keys in (
        (["n"], {"n"}),
        (False, None),
        ({"excludes": ["text"]}, {"title", "n", "tag", "meta"}),
        ({"includes": ["meta.*", "title"]}, {"meta", "title"}),
    ):
        r, got = _search(http, proxy.url, {**base, "_source": src})
        assert _whole_window(r.headers["X-Rerank"])
        assert [h["_id"] for h in got["hits"]["hits"]] == expected
        for h in got["hits"]["hits"]:
            assert (set(h["_source"]) if "_source" in h else None) == keys, src
    # fields, highlight and aggregations stay as the engine made them, attached to their hits
    body = {
        **base,
        "fields": ["tag"],
        "highlight": {"fields": {"text": {}}},
        "aggs": {"t": {"terms": {"field": "tag"}}},
    }
    _, got = _search(http, proxy.url, body)
    _, direct = _search(http, corpus, {**body, "size": 50})
    by_id = {h["_id"]: h for h in direct["hits"]["hits"]}
    for h in got["hits"]["hits"]:
        assert h["highlight"] == by_id[h["_id"]]["highlight"] and h["fields"] == by_id[h["_id"]]["fields"]
    assert got["aggregations"] == direct["aggregations"]


def test_score_modes_min_score_and_explain(corpus: str, make_sidecar: Any, http: Http) -> None:
    import math

    proxy = make_sidecar(
        corpus,
        scorer=KeyScorer(),
        rules=(_rule(score_mode="combine", combine_mode="total", query_weight=2.0, rerank_weight=0.5),),
    )
    _, direct = _search(http, corpus, {"query": {"match": {"text": "apple"}}, "size": 50})
    engine = {h["_id"]: h for h in direct["hits"]["hits"]}
    _, got = _search(http, proxy.url, {"query": {"match": {"text": "apple"}}, "explain": True})
    for h in got["hits"]["hits"]:
        want = 2.0 * engine[h["_id"]]["_score"] + 0.5 * key_score("apple", engine[h["_id"]]["_source"]["text"])
        assert h["_score"] == pytest.approx(want)
        assert "reranked by model" in h["_explanation"]["description"]
    body = {
        "query": {"match": {"text": "apple"}},
        "size": 50,
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "score_mode": "normalize", "min_score": 50}},
    }
    _, got = _search(http, proxy.url, body)
    for h in got["hits"]["hits"]:
        s = key_score("apple", engine[h["_id"]]["_source"]["text"])
        assert h["_score"] == pytest.approx(max(s, 0) + min(math.exp(s), 1)) and h["_score"] >= 50
    assert 0 < len(got["hits"]["hits"]) < 50


@pytest.mark.parametrize(
    ("ext", "needle"),
    [
        ({"query_context": {}}, "exactly one"),
        ({"query_context": {"query_text": "a", "query_text_path": "x"}}, "exactly one"),
        ({"query_context": {"query_text_path": "query.nothing.here"}}, "does not resolve"),
        ({"query_context": {"query_text": "a"}, "window_size": 5000}, "maximum"),
        ({"query_context": {"query_text": "a"}, "window_size": "big"}, "window_size"),
        ({"query_context": {"query_text": "a"}, "score_mode": "sideways"}, "score_mode"),
        ({"query_context": {"query_text": "a"}, "bogus": 1}, "bogus"),
        ("not an object", "must be an object"),
    ],
)
def test_bad_rerank_syntax_is_400_in_engine_format(proxy: Any, http: Http, ext: Any, needle: str) -> None:
    r, err = _search(http, proxy.url, {"query": {"match": {"text": "apple"}}, "ext": {"rerank": ext}})
    assert r.status == 400 and err["status"] == 400, err
    assert needle in err["error"]["reason"] and err["error"]["root_cause"]


def test_gzip_search_reranked(proxy: Any, http: Http) -> None:
    body = gzip.compress(json.dumps({"query": {"match": {"text": "apple"}}}).encode())
    r = http(
        "POST",
        proxy.url + "/docs/_search",
        body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert r.status == 200 and _whole_window(r.headers["X-Rerank"])


def test_model_failure_falls_back_or_fails_strictly(corpus: str, make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(corpus, scorer=KeyScorer(fail=True), rules=(_rule(),))
    _, direct = _search(http, corpus, {"query": {"match": {"text": "apple"}}, "from": 10, "size": 5})
    r, got = _search(http, proxy.url, {"query": {"match": {"text": "apple"}}, "from": 10, "size": 5})
    assert r.status == 200 and r.headers["X-Rerank"] == "fallback; reason=model_error"
    assert [h["_id"] for h in got["hits"]["hits"]] == [h["_id"] for h in direct["hits"]["hits"]]
    strict = {
        "query": {"match": {"text": "apple"}},
        "ext": {"rerank": {"query_context": {"query_text": "apple"}, "allow_rerank_failures": False}},
    }
    r, err = _search(http, proxy.url, strict)
    assert r.status == 503 and err["error"]["type"] == "rerank_failed_exception"
    assert "exploded" not in json.dumps(err)  # internal error text is never echoed


def _untimed(raw: bytes) -> bytes:
    """The bytes with the engine's `took` blanked: two runs of one search may differ by a millisecond."""
    return re.sub(rb'"took":\d+', b'"took":_', raw)


def test_msearch_mixes_reranked_passed_and_failing_items(proxy: Any, corpus: str, http: Http) -> None:
    items = [
        ({"index": "docs"}, {"query": {"match": {"text": "apple"}}, "size": 5}),  # rule: reranked
        ({"index": "docs"}, {"query": {"match_all": {}}, "size": 3}),  # no text: passed
        ({"index": "missing"}, {"query": {"match": {"text": "apple"}}}),  # engine error
        (
            {},
            {
                "query": {"match": {"text": "apple"}},
                "size": 5,
                "ext": {"rerank": {"query_context": {"query_text": "cherry"}}},
            },
        ),  # path index + ext
    ]
    raw = b"".join(json.dumps(h).encode() + b"\n" + json.dumps(b).encode() + b"\n" for h, b in items)
    for ctype in ("application/x-ndjson", "application/json"):
        r = http("POST", proxy.url + "/docs/_msearch", raw, headers={"Content-Type": ctype})
        assert r.status == 200 and r.headers["X-Rerank"].startswith("applied; items=2"), r.data
        got = json.loads(r.data)["responses"]
        assert len(got) == 4
        assert [h["_id"] for h in got[0]["hits"]["hits"]] == _expected_ids(http, corpus, "apple", 50)[:5]
        _, direct = _search(http, corpus, {"query": {"match_all": {}}, "size": 3})
        assert got[1]["hits"]["hits"] == direct["hits"]["hits"]
        assert got[2]["status"] == 404 and got[2]["error"]["type"] == "index_not_found_exception"
        _, window = _search(http, corpus, {"query": {"match": {"text": "apple"}}, "size": 50})
        hits = window["hits"]["hits"]
        order = sorted(range(50), key=lambda i: (-key_score("cherry", hits[i]["_source"]["text"]), i))
        assert [h["_id"] for h in got[3]["hits"]["hits"]] == [hits[i]["_id"] for i in order[:5]]


def test_both_official_clients_run_a_reranked_search(corpus: str, make_sidecar: Any) -> None:
    from elasticsearch import Elasticsearch
    from opensearchpy import OpenSearch

    proxy = make_sidecar(corpus, scorer=KeyScorer(), rules=(_rule(),), compat_media_types=True)
    http = Http()
    expected = _expected_ids(http, corpus, "apple", 50)[:10]
    os_hits = OpenSearch(hosts=[proxy.url]).search(index="docs", body={"query": {"match": {"text": "apple"}}})
    es_hits = Elasticsearch(proxy.url).search(index="docs", query={"match": {"text": "apple"}})
    assert [h["_id"] for h in os_hits["hits"]["hits"]] == expected
    assert [h["_id"] for h in es_hits["hits"]["hits"]] == expected
    es_msearch = Elasticsearch(proxy.url).msearch(searches=[{"index": "docs"}, {"query": {"match": {"text": "apple"}}}])
    assert [h["_id"] for h in es_msearch["responses"][0]["hits"]["hits"]] == expected


def _templates_app(engine: str, seen: list[str]) -> web.Application:
    """A protocol double over a real osmem for what osmem lacks: search templates (stored with
    ``PUT _scripts/{id}``, inline ``source``), rendered by plain ``{{name}}`` substitution, the one mustache
    feature these tests use; ``_render/template`` and ``[/{index}]/_search/template`` as Elasticsearch has them.
    It records the paths it serves; everything else goes to osmem as it came."""
    scripts: dict[str, Any] = {}

    def render(request_body: dict[str, Any]) -> dict[str, Any]:
        source = request_body.get("source") or scripts[request_body["id"]]
        text = source if isinstance(source, str) else json.dumps(source)
        for name, value in request_body.get("params", {}).items():
            text = text.replace("{{" + name + "}}", json.dumps(value)[1:-1] if isinstance(value, str) else str(value))
        return dict(json.loads(text))

    async def handle(request: web.Request) -> web.Response:
        seen.append(request.path)
        body = await request.read()
        if request.path.startswith("/_scripts/"):
            scripts[request.path.rsplit("/", 1)[1]] = json.loads(body)["script"]["source"]
            return web.json_response({"acknowledged": True})
        if request.path == "/_render/template":
            return web.json_response({"template_output": render(json.loads(body))})
        path = request.path_qs
        if request.path.endswith("/_search/template"):
            path, body = request.path.removesuffix("/template"), json.dumps(render(json.loads(body))).encode()
        if request.path.endswith("/_msearch/template"):
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            items = [(lines[i], render(lines[i + 1])) for i in range(0, len(lines), 2)]
            path = request.path.removesuffix("/template")
            body = b"".join(json.dumps(h).encode() + b"\n" + json.dumps(b).encode() + b"\n" for h, b in items)
        async with (
            ClientSession() as session,
            session.request(
                request.method, engine + path, data=body, headers={"Content-Type": "application/json"}
            ) as r,
        ):
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


@pytest.mark.parametrize("stored", [False, True])
def test_a_search_template_is_rendered_by_the_engine_and_reranked(
    corpus: str, make_sidecar: Any, http: Http, stored: bool
) -> None:
    source = {"query": {"match": {"text": "{{q}}"}}, "size": 5}
    template: dict[str, Any] = {"params": {"q": "banana"}}
    seen: list[str] = []
    with ThreadServer(_templates_app(corpus, seen)) as double:
        if stored:
            http("PUT", double.url + "/_scripts/by-text", {"script": {"lang": "mustache", "source": source}})
            template["id"] = "by-text"
        else:
            template["source"] = source
        proxy = make_sidecar(double.url, rules=(Rule(index="docs", window_size=30),))
        r = http("POST", proxy.url + "/docs/_search/template", template)
        got = json.loads(r.data)
        assert r.status == 200 and _whole_window(r.headers["X-Rerank"]), (r.status, got)
        assert "/_render/template" in seen and "/docs/_search" in seen  # rendered, then the window as a search
    _, direct = _search(http, corpus, {"query": {"match": {"text": "banana"}}, "size": 30})
    hits = direct["hits"]["hits"]
    order = sorted(range(len(hits)), key=lambda i: (-key_score("banana", hits[i]["_source"]["text"]), i))
    assert [h["_id"] for h in got["hits"]["hits"]] == [hits[i]["_id"] for i in order[:5]]


def test_a_search_template_the_engine_cannot_render_goes_to_it_as_is(
    corpus: str, make_sidecar: Any, http: Http
) -> None:
    """osmem has no templates: the request reaches it untouched and its answer comes back as it gave it."""
    proxy = make_sidecar(corpus, rules=(Rule(index="docs"),))
    template = {"source": {"query": {"match": {"text": "{{q}}"}}}, "params": {"q": "apple"}}
    r = http("POST", proxy.url + "/docs/_search/template", template)
    direct = http("POST", corpus + "/docs/_search/template", template)
    assert (r.status, r.data) == (direct.status, direct.data)
    assert r.headers["X-Rerank"] == "skipped; reason=template_not_rendered"


def test_a_search_template_that_is_not_reranked_reaches_the_engine_as_sent(
    corpus: str, make_sidecar: Any, http: Http
) -> None:
    """Rendered to a search the sidecar does not rerank (sorted by a field; or with ext.rerank and X-Rerank: off):
    the template request goes on as the client sent it, never the rendered body to the template API."""
    seen: list[str] = []
    with ThreadServer(_templates_app(corpus, seen)) as double:
        proxy = make_sidecar(double.url, rules=(Rule(index="docs"),))
        for source, headers in (
            ({"query": {"match": {"text": "{{q}}"}}, "sort": [{"n": "asc"}], "size": 3}, {}),
            (
                {"query": {"match": {"text": "{{q}}"}}, "ext": {"rerank": {"query_context": {"query_text": "x"}}}},
                {"X-Rerank": "off"},
            ),
        ):
            template = {"source": source, "params": {"q": "banana"}}
            r = http("POST", proxy.url + "/docs/_search/template", template, headers=headers)
            direct = http("POST", double.url + "/docs/_search/template", template)
            assert (r.status, r.data) == (direct.status, direct.data), r.data[:200]
            assert r.headers["X-Rerank"].startswith("skipped"), r.headers["X-Rerank"]


def test_an_msearch_template_is_rendered_item_by_item_and_reranked(corpus: str, make_sidecar: Any, http: Http) -> None:
    seen: list[str] = []
    source = {"query": {"match": {"text": "{{q}}"}}, "size": 5}
    lines = []
    for index, q in (("docs", "banana"), ("other", "banana"), ("docs", "cherry")):
        lines += [json.dumps({"index": index}), json.dumps({"source": source, "params": {"q": q}})]
    body = ("\n".join(lines) + "\n").encode()
    with ThreadServer(_templates_app(corpus, seen)) as double:
        proxy = make_sidecar(double.url, rules=(Rule(index="docs", window_size=30),))
        r = http("POST", proxy.url + "/_msearch/template", body, headers={"Content-Type": "application/x-ndjson"})
        got = json.loads(r.data)["responses"]
        assert r.status == 200 and r.headers["X-Rerank"] == "applied; items=2", r.headers["X-Rerank"]
        assert seen.count("/_render/template") == 3 and "/_msearch" in seen
    for item, q in ((got[0], "banana"), (got[2], "cherry")):
        _, direct = _search(http, corpus, {"query": {"match": {"text": q}}, "size": 30})
        hits = direct["hits"]["hits"]
        order = sorted(range(len(hits)), key=lambda i: (-key_score(q, hits[i]["_source"]["text"]), i))
        assert [h["_id"] for h in item["hits"]["hits"]] == [hits[i]["_id"] for i in order[:5]]
    assert got[1]["status"] == 404  # no such index: the engine's own answer for that item


def test_an_msearch_template_the_engine_cannot_render_goes_to_it_as_is(
    corpus: str, make_sidecar: Any, http: Http
) -> None:
    proxy = make_sidecar(corpus, rules=(Rule(index="docs"),))
    body = b'{"index":"docs"}\n{"source":{"query":{"match":{"text":"{{q}}"}}},"params":{"q":"apple"}}\n'
    headers = {"Content-Type": "application/x-ndjson"}
    r = http("POST", proxy.url + "/_msearch/template", body, headers=headers)
    direct = http("POST", corpus + "/_msearch/template", body, headers=headers)
    assert (r.status, r.data) == (direct.status, direct.data)
    assert r.headers["X-Rerank"] == "skipped; reason=template_not_rendered"
