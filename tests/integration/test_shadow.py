"""Shadow mode: the engine's order is served untouched, and a sample is reranked afterwards at idle priority."""

from __future__ import annotations

import json
import time
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Rule
from sidecar.rerank.shadow import shadow_figures
from tests.fakes import KeyScorer, key_score
from tests.servers import Http, index_docs


def _corpus(http: Http, engine: str) -> None:
    index_docs(http, engine, (("docs", str(i), {"text": f"apple {'pear ' * (i % 7)}{i}"}) for i in range(40)))


def _metrics(http: Http, url: str) -> dict[str, float]:
    text = http("GET", url + "/_sidecar/metrics").data.decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("sidecar_shadow"):
                label = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                out[f"{sample.name}{{{label}}}"] = sample.value
    return out


def _wait(http: Http, url: str, key: str, at_least: float) -> dict[str, float]:
    deadline = time.monotonic() + 10
    while (found := _metrics(http, url)).get(key, 0) < at_least:
        assert time.monotonic() < deadline, found
        time.sleep(0.02)
    return found


SEARCH = {"query": {"match": {"text": "apple pear"}}, "size": 5}


def test_a_shadowed_search_is_served_untouched_and_measured_afterwards(
    engine: str, make_sidecar: Any, http: Http
) -> None:
    _corpus(http, engine)
    scorer = KeyScorer()
    proxy = make_sidecar(engine, scorer=scorer, rules=(Rule(index="docs", window_size=20, mode="shadow"),))
    r = http("POST", proxy.url + "/docs/_search", SEARCH)
    direct = http("POST", engine + "/docs/_search", SEARCH)
    assert r.status == 200 and r.headers["X-Rerank"] == "skipped; reason=shadow"
    assert json.loads(r.data)["hits"] == json.loads(direct.data)["hits"]  # the engine's order, untouched
    found = _wait(http, proxy.url, "sidecar_shadow_total{result=done}", 1)
    assert scorer.tiers == [1]  # at idle priority
    window = json.loads(http("POST", engine + "/docs/_search", {**SEARCH, "size": 20}).data)["hits"]["hits"]
    want = shadow_figures([key_score("apple pear", h["_source"]["text"]) for h in window])
    assert abs(found["sidecar_shadow_overlap_at_10_sum{}"] - want.overlap_at_10) < 1e-9
    assert found["sidecar_shadow_top_hit_rank_sum{}"] == want.top_hit_rank, found
    # tau can be negative, so its histogram has no _sum: the one observation is in the bucket that holds it
    buckets = {float(k.split("le=")[1].rstrip("}")): v for k, v in found.items() if "kendall_tau_bucket" in k}
    holding = min(le for le in buckets if le >= want.kendall_tau)
    assert next(le for le, n in sorted(buckets.items()) if n == 1) == holding
    assert found["sidecar_shadow_seconds_count{}"] == 1


def test_the_sample_and_the_bound_on_pending_work(engine: str, make_sidecar: Any, http: Http) -> None:
    _corpus(http, engine)
    never = KeyScorer()
    proxy = make_sidecar(engine, scorer=never, rules=(Rule(index="docs", mode="shadow", shadow_sample=0.0),))
    for _ in range(5):
        assert http("POST", proxy.url + "/docs/_search", SEARCH).headers["X-Rerank"] == "skipped; reason=shadow"
    time.sleep(0.2)
    assert never.calls == [] and _metrics(http, proxy.url).get("sidecar_shadow_total{result=done}", 0) == 0
    slow = KeyScorer(hang=2.0)  # each shadow rerank holds its place for 2 s
    proxy = make_sidecar(engine, scorer=slow, rules=(Rule(index="docs", mode="shadow"),), shadow_pending=2)
    start = time.monotonic()
    for _ in range(5):
        assert http("POST", proxy.url + "/docs/_search", SEARCH).status == 200
    assert time.monotonic() - start < 1.5  # served without waiting for any of it
    found = _wait(http, proxy.url, "sidecar_shadow_total{result=dropped}", 3)
    assert found["sidecar_shadow_total{result=dropped}"] == 3


def test_explicit_rerank_syntax_is_reranked_on_a_shadow_rule(engine: str, make_sidecar: Any, http: Http) -> None:
    _corpus(http, engine)
    proxy = make_sidecar(engine, rules=(Rule(index="docs", mode="shadow"),))
    body = {**SEARCH, "ext": {"rerank": {"query_context": {"query_text": "apple pear"}}}}
    r = http("POST", proxy.url + "/docs/_search", body)
    assert r.status == 200 and r.headers["X-Rerank"].startswith("applied")
