"""Real weights on real data: TREC DL19 through osmem and the sidecar (packaged all-MiniLM-L6-v2)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sidecar.config import Rule

from ..models import packaged_minilm
from ..servers import Http
from sidecar.datasets import corpus, qrels, queries

from .data import data_dir, ndcg10

pytestmark = pytest.mark.quality


def _index(http: Http, url: str, folder: Any) -> int:
    http("PUT", url + "/dl19", {"mappings": {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}})
    batch: list[bytes] = []
    n = 0
    for doc in corpus(folder):
        batch += [
            json.dumps({"index": {"_index": "dl19", "_id": doc["_id"]}}).encode(),
            json.dumps({"title": doc.get("title", ""), "text": doc["text"]}).encode(),
        ]
        n += 1
        if len(batch) >= 4000:
            assert (
                http(
                    "POST", url + "/_bulk", b"\n".join(batch) + b"\n", headers={"Content-Type": "application/x-ndjson"}
                ).status
                == 200
            )
            batch = []
    if batch:
        http("POST", url + "/_bulk", b"\n".join(batch) + b"\n", headers={"Content-Type": "application/x-ndjson"})
    http("POST", url + "/dl19/_refresh")
    return n


def _run(http: Http, url: str, qs: dict[str, str]) -> dict[str, dict[str, float]]:
    run: dict[str, dict[str, float]] = {}
    for qid, text in qs.items():
        r = http("POST", url + "/dl19/_search", {"query": {"match": {"text": text}}, "size": 10, "_source": False})
        hits = json.loads(r.data)["hits"]["hits"]
        run[qid] = {h["_id"]: float(len(hits) - i) for i, h in enumerate(hits)}
    return run


def test_sidecar_beats_engine_bm25_on_dl19(engine: str, make_sidecar: Any, http: Http) -> None:
    folder = data_dir("trec_dl19")
    judged = qrels(folder)
    qs = {q: t for q, t in queries(folder).items() if q in judged}
    proxy = make_sidecar(
        engine, model=str(packaged_minilm()), rules=(Rule(index="dl19", fields=("text",), window_size=100),)
    )
    assert _index(http, proxy.url, folder) == json.loads(http("GET", engine + "/dl19/_count").data)["count"]
    bm25 = ndcg10(judged, _run(http, engine, qs))
    reranked = ndcg10(judged, _run(http, proxy.url, qs))
    print(f"DL19 nDCG@10 end to end: osmem BM25 {bm25:.4f} -> through the sidecar {reranked:.4f}")
    assert reranked - bm25 >= 0.25
