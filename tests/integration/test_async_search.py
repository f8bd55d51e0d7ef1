"""Kibana's `_async_search` through the sidecar.

osmem has no `_async_search`, so the engine here is a **protocol double over a real osmem**: a submit runs the
search on osmem and keeps its reply under an id; it can be told to answer "still running" (with the hits so far)
for the submit and a number of polls first; `GET /_async_search/{id}`, `GET /_async_search/status/{id}` and
`DELETE /_async_search/{id}` follow Elasticsearch's async search API. It records what it is sent.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import ClientSession, web

from sidecar.config import Rule
from tests.fakes import KeyScorer, key_score
from tests.servers import Http, ThreadServer, index_docs

KEY = "shared-by-the-replicas"


@dataclass
class AsyncEngine:
    engine: str
    running: int = 0  # answers "still running" to the submit and the next running - 1 polls
    seen: list[tuple[str, str, Any]] = field(default_factory=list)  # (method, path_qs, body)
    stored: dict[str, dict[str, Any]] = field(default_factory=dict)
    left: dict[str, int] = field(default_factory=dict)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        body = json.loads(raw) if raw else None
        self.seen.append((request.method, request.path_qs, body))
        parts = request.path.strip("/").split("/")
        if parts[-1] == "_async_search" and request.method == "POST":
            return await self.submit(request, "/".join(parts[:-1]), body or {})
        if parts[0] == "_async_search":
            async_id = parts[-1]
            if async_id not in self.stored:
                error = {"type": "resource_not_found_exception", "reason": async_id}
                return web.json_response({"error": {"root_cause": [error], **error}, "status": 404}, status=404)
            if request.method == "DELETE":
                del self.stored[async_id]
                return web.json_response({"acknowledged": True})
            if parts[1] == "status":
                return web.json_response({"id": async_id, "is_running": self.left[async_id] > 0, "is_partial": False})
            return web.json_response(self.envelope(async_id))
        async with (
            ClientSession() as session,
            session.request(
                request.method, self.engine + request.path_qs, data=raw, headers={"Content-Type": "application/json"}
            ) as r,
        ):
            return web.Response(status=r.status, body=await r.read(), content_type="application/json")

    async def submit(self, request: web.Request, index: str, body: dict[str, Any]) -> web.Response:
        params = {k: v for k, v in request.query.items() if k in ("from", "size")}
        async with (
            ClientSession() as session,
            session.post(f"{self.engine}/{index}/_search", json=body, params=params) as r,
        ):
            reply = await r.json()
        async_id = f"engine-{len(self.stored)}"
        self.stored[async_id], self.left[async_id] = reply, self.running
        envelope = self.envelope(async_id)
        if not envelope["is_running"] and request.query.get("keep_on_completion") != "true":
            del envelope["id"]
        return web.json_response(envelope)

    def envelope(self, async_id: str) -> dict[str, Any]:
        running = self.left[async_id] > 0
        if running:
            self.left[async_id] -= 1
        return {
            "id": async_id,
            "is_partial": running,
            "is_running": running,
            "start_time_in_millis": 1,
            "expiration_time_in_millis": 2,
            "response": json.loads(json.dumps(self.stored[async_id])),
        }


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    docs = (
        {"text": f"apple {'banana ' * (i % 5)}doc {i}", "secret": f"s{i}", "@timestamp": 1000 + i} for i in range(60)
    )
    index_docs(http, engine, (("logs", str(i), doc) for i, doc in enumerate(docs)))
    return engine


# A relevance-sorted Discover-style body: KQL free text compiled to multi_match (best_fields, lenient) in a bool
# filter next to the time range, as Kibana's search source builds it; fields and no _source, as Discover asks.
def _kibana_body(size: int = 5, sort: Any = None) -> dict[str, Any]:
    return {
        "size": size,
        "sort": sort if sort is not None else [{"_score": {"order": "desc"}}],
        "track_total_hits": True,
        "fields": ["*"],  # Kibana adds include_unmapped, which osmem does not read
        "_source": False,
        "query": {
            "bool": {
                "must": [],
                "filter": [
                    {"multi_match": {"type": "best_fields", "query": "banana", "lenient": True}},
                    {"range": {"@timestamp": {"gte": 0, "lte": 10_000, "format": "epoch_millis"}}},
                ],
                "should": [],
                "must_not": [],
            }
        },
    }


_SUBMIT = "/logs/_async_search?batched_reduce_size=64&wait_for_completion_timeout=100ms&keep_on_completion=false"


def _window_order(http: Http, engine: str, window: int) -> list[str]:
    body = {**_kibana_body(window), "_source": True}
    hits = json.loads(http("POST", engine + "/logs/_search", body).data)["hits"]["hits"]
    order = sorted(range(len(hits)), key=lambda i: (-key_score("banana", hits[i]["_source"]["text"]), i))
    return [hits[i]["_id"] for i in order]


def _sidecar(make_sidecar: Any, url: str, **settings: Any) -> Any:
    rule = Rule(index="logs*", fields=("text",), window_size=20)
    return make_sidecar(url, scorer=KeyScorer(), rules=(rule,), **{"async_search_key": KEY, **settings})


def test_a_submit_that_completes_is_reranked(corpus: str, make_sidecar: Any, http: Http) -> None:
    double = AsyncEngine(corpus)
    with ThreadServer(double.app()) as engine:
        proxy = _sidecar(make_sidecar, engine.url)
        r = http("POST", proxy.url + _SUBMIT, _kibana_body())
        reply = json.loads(r.data)
        assert r.status == 200 and r.headers["X-Rerank"].startswith("applied; window=20/20"), reply
        assert "id" not in reply and reply["is_running"] is False
        assert double.seen[-1][2]["size"] == 20  # the window was asked for
    hits = reply["response"]["hits"]["hits"]
    assert [h["_id"] for h in hits] == _window_order(http, corpus, 20)[:5]
    assert all("_source" not in h and h["fields"]["text"] for h in hits)  # _source: false kept; fields returned


def test_a_poll_on_another_replica_completes_reranked(corpus: str, make_sidecar: Any, http: Http) -> None:
    double = AsyncEngine(corpus, running=2)
    with ThreadServer(double.app()) as engine:
        first, second = _sidecar(make_sidecar, engine.url), _sidecar(make_sidecar, engine.url)
        r = http("POST", first.url + _SUBMIT, _kibana_body())
        submitted = json.loads(r.data)
        assert r.status == 200 and submitted["is_running"] is True
        assert r.headers["X-Rerank"] == "skipped; reason=async_partial"
        our_id = submitted["id"]
        assert our_id.startswith("rsc1.") and "engine-0" not in our_id
        assert len(submitted["response"]["hits"]["hits"]) == 5  # a running reply is cut to the page, never the window
        r = http("GET", second.url + f"/_async_search/{our_id}?wait_for_completion_timeout=100ms")
        assert r.status == 200 and json.loads(r.data)["is_running"] is True
        status = http("GET", second.url + f"/_async_search/status/{our_id}")
        assert status.status == 200 and json.loads(status.data)["id"] == our_id
        r = http("GET", second.url + f"/_async_search/{our_id}")
        done = json.loads(r.data)
        assert r.status == 200 and done["is_running"] is False and done["id"] == our_id
        assert r.headers["X-Rerank"].startswith("applied; window=20/20")
        assert [h["_id"] for h in done["response"]["hits"]["hits"]] == _window_order(http, corpus, 20)[:5]
        assert ("GET", "/_async_search/engine-0", None) in double.seen  # the engine got its own id
        assert http("DELETE", second.url + f"/_async_search/{our_id}").status == 200
        assert http("GET", second.url + f"/_async_search/{our_id}").status == 404  # the engine's own 404


def test_a_forged_or_foreign_id_is_never_trusted(corpus: str, make_sidecar: Any, http: Http) -> None:
    double = AsyncEngine(corpus, running=1)
    with ThreadServer(double.app()) as engine:
        first = _sidecar(make_sidecar, engine.url)
        other = _sidecar(make_sidecar, engine.url, async_search_key="another-key")
        our_id = json.loads(http("POST", first.url + _SUBMIT, _kibana_body()).data)["id"]
        r = http("GET", other.url + f"/_async_search/{our_id}")  # made with another key: cut, not reranked
        reply = json.loads(r.data)
        assert r.status == 200 and r.headers["X-Rerank"] == "skipped; reason=async_unverified"
        assert len(reply["response"]["hits"]["hits"]) == 5 and all(
            "_source" not in h for h in reply["response"]["hits"]["hits"]
        )
        prefix, payload, mac = our_id.split(".")
        forged = f"{prefix}.{payload}.{'A' * len(mac)}"
        r = http("GET", first.url + f"/_async_search/{forged}")
        assert r.status == 200 and r.headers["X-Rerank"] == "skipped; reason=async_unverified"
        for junk in ("rsc1.x.y", "rsc1.", "rsc1.%00%ff.abc"):
            r = http("GET", first.url + f"/_async_search/{junk}")
            err = json.loads(r.data)
            assert r.status == 400 and err["error"]["type"] == "illegal_argument_exception", err
        r = http("GET", first.url + "/_async_search/engine-0")  # the engine's own id passes as it is
        assert r.status == 200 and "X-Rerank" not in r.headers


@pytest.mark.parametrize(
    "sort",
    [
        [{"@timestamp": {"order": "desc", "unmapped_type": "boolean"}}],  # Discover on a time-based data view
        [{"_score": {"order": "desc"}}, {"@timestamp": {"order": "desc"}}],
    ],
)
def test_a_time_sorted_submit_passes_untouched(corpus: str, make_sidecar: Any, http: Http, sort: Any) -> None:
    double = AsyncEngine(corpus)
    with ThreadServer(double.app()) as engine:
        proxy = _sidecar(make_sidecar, engine.url)
        body = _kibana_body(sort=sort)
        r = http("POST", proxy.url + _SUBMIT, body)
        assert r.status == 200 and r.headers["X-Rerank"] == "skipped; reason=sort"
        assert double.seen[-1][2] == body  # exactly what the client sent


def test_discover_asks_for_hundreds_and_the_window_caps_it(corpus: str, make_sidecar: Any, http: Http) -> None:
    double = AsyncEngine(corpus)
    with ThreadServer(double.app()) as engine:
        proxy = _sidecar(make_sidecar, engine.url, max_window=40)
        start = time.monotonic()
        r = http("POST", proxy.url + _SUBMIT, _kibana_body(size=500))
        assert r.status == 200 and r.headers["X-Rerank"].startswith("applied; window=40/40"), r.headers
        assert double.seen[-1][2]["size"] == 40 and time.monotonic() - start < 30
    assert len(json.loads(r.data)["response"]["hits"]["hits"]) == 40
