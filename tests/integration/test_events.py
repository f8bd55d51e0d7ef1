"""`events_index`: a document per reranked or shadowed search, written to the engine in `_bulk` batches."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
from aiohttp import web

from sidecar.config import Rule
from sidecar.tools.scrape import counter
from tests.fakes import KeyScorer
from tests.servers import Http, ThreadServer, index_docs

SEARCH = {"query": {"match": {"text": "apple pear"}}, "size": 3}


def _corpus(http: Http, engine: str) -> None:
    index_docs(http, engine, (("docs", str(i), {"text": f"apple {'pear ' * (i % 5)}{i}"}) for i in range(30)))


def _events(http: Http, engine: str, want: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while True:
        http("POST", engine + "/rsc-events-*/_refresh")
        r = http("POST", engine + "/rsc-events-*/_search", {"size": 100, "sort": [{"@timestamp": "asc"}]})
        hits = json.loads(r.data).get("hits", {}).get("hits", []) if r.status == 200 else []
        if len(hits) >= want or time.monotonic() > deadline:
            return [h["_source"] | {"_index": h["_index"]} for h in hits]
        time.sleep(0.05)


def test_events_land_in_daily_indices_with_their_fields_and_no_query_text(
    engine: str, make_sidecar: Any, http: Http
) -> None:
    _corpus(http, engine)
    rules = (Rule(index="docs", window_size=20), Rule(index="shadowed", mode="shadow"))
    proxy = make_sidecar(engine, rules=rules, events_index="rsc-events", events_flush_ms=50)
    assert http("POST", proxy.url + "/docs/_search", SEARCH).headers["X-Rerank"] == "applied; window=20/20"
    lines = [{"index": "docs"}, SEARCH, {}, {"query": {"match": {"text": "pear"}}}]
    msearch = "".join(json.dumps(x) + "\n" for x in lines)
    r = http("POST", proxy.url + "/_msearch", msearch, headers={"Content-Type": "application/x-ndjson"})
    assert r.status == 200
    http("POST", proxy.url + "/docs/_search", SEARCH, headers={"X-Rerank": "off"})  # not reranked: no event
    events = _events(http, engine, 2)
    assert len(events) == 2, events
    day = time.strftime("%Y.%m.%d", time.gmtime())
    first, item = events
    assert first["_index"] == f"rsc-events-{day}"
    assert first["@timestamp"].startswith(day.replace(".", "-")) and first["@timestamp"].endswith("Z")
    assert {k: first[k] for k in ("index", "rule", "kind", "outcome", "window", "reranked", "model")} == {
        "index": "docs",
        "rule": "docs",
        "kind": "search",
        "outcome": "applied",
        "window": 20,
        "reranked": 20,
        "model": "default",
    }
    assert isinstance(first["added_ms"], float) and first["added_ms"] >= 0
    assert item["kind"] == "msearch" and item["index"] == "docs" and item["outcome"] == "applied"
    assert "query" not in first and "apple" not in json.dumps(events)  # no query text, no document text
    assert counter(proxy.url, "sidecar_events")["written"] == 2


def test_a_fallback_a_shadow_and_the_query_when_asked(engine: str, make_sidecar: Any, http: Http) -> None:
    _corpus(http, engine)
    index_docs(http, engine, (("shadowed", str(i), {"text": f"apple {i}"}) for i in range(5)))
    rules = (Rule(index="docs"), Rule(index="shadowed", mode="shadow"))
    settings = {"events_index": "rsc-events", "events_flush_ms": 50, "events_include_query": True}
    failing = make_sidecar(engine, scorer=KeyScorer(fail=True), rules=rules, **settings)
    assert http("POST", failing.url + "/docs/_search", SEARCH).headers["X-Rerank"].startswith("fallback")
    proxy = make_sidecar(engine, rules=rules, **settings)
    assert http("POST", proxy.url + "/shadowed/_search", SEARCH).headers["X-Rerank"] == "skipped; reason=shadow"
    fallback, shadow = _events(http, engine, 2)
    assert fallback["outcome"] == "fallback" and fallback["reason"] == "model_error"
    assert fallback["query"] == "apple pear"
    assert shadow["outcome"] == "shadow" and shadow["index"] == "shadowed" and shadow["rule"] == "shadowed"
    figures = shadow["shadow"]
    assert set(figures) == {"overlap_at_10", "top_hit_rank", "kendall_tau", "would_add_ms"}
    assert 0 <= figures["overlap_at_10"] <= 1 and figures["top_hit_rank"] >= 1


def _slow_bulk_engine(engine: str, status: int | None) -> web.Application:
    """A double over the real engine: `_bulk` hangs (status None) or is refused; everything else is forwarded."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/_bulk":
            if status is None:
                await asyncio.sleep(30)
            return web.json_response({"error": {"type": "x", "reason": "refused"}, "status": status}, status=status)
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                request.method,
                engine + request.path_qs,
                data=await request.read(),
                headers={"Content-Type": "application/json"},
            ) as r,
        ):
            return web.Response(body=await r.read(), status=r.status, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


def test_a_hanging_or_refusing_engine_drops_events_and_never_slows_a_search(
    engine: str, make_sidecar: Any, http: Http
) -> None:
    _corpus(http, engine)
    for status, dropped in ((None, "dropped"), (503, "failed")):
        with ThreadServer(_slow_bulk_engine(engine, status)) as double:
            proxy = make_sidecar(
                double.url,
                rules=(Rule(index="docs"),),
                events_index="rsc-events",
                events_flush_ms=10,
                events_batch=2,
                events_buffer=4,
                events_timeout_ms=300,
            )
            start = time.monotonic()
            for _ in range(20):
                assert http("POST", proxy.url + "/docs/_search", SEARCH).headers["X-Rerank"].startswith("applied")
            assert time.monotonic() - start < 5  # 20 searches, while every _bulk hangs 30 s or is refused
            deadline = time.monotonic() + 10
            while sum((counts := counter(proxy.url, "sidecar_events")).values()) < 20:
                assert time.monotonic() < deadline, counts
                time.sleep(0.05)
            assert counts.get("written", 0) == 0 and counts[dropped] > 0, counts
            assert sum(counts.values()) == 20  # every event accounted for: written, failed or dropped
