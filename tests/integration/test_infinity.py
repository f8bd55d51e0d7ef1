"""A third-party model server as the remote scorer: PyPI's infinity-emb, a real process serving a cross-encoder folder.

infinity pins an older sentence-transformers and numpy than ours, so it lives in a virtual environment of its own;
``SIDECAR_INFINITY`` names its ``infinity_emb`` executable (`.ci/run` builds it and sets ``SIDECAR_REQUIRE_INFINITY``,
so that in CI its absence fails instead of skipping).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sidecar.tools.bench.scorer import build_cross_encoder
from sidecar.tools.embedded import packaged_model
from sidecar.tools.launch import free_port, wait_http
from tests.servers import Http, SidecarThread, index_docs

pytestmark = pytest.mark.slow

QUERY = "apple banana"
SEARCH = {"query": {"match": {"text": "apple"}}, "size": 10}


def _executable() -> str:
    exe = os.environ.get("SIDECAR_INFINITY", "")
    if not Path(exe).is_file():
        reason = "SIDECAR_INFINITY does not name infinity-emb's infinity_emb executable (see .ci/run to build one)"
        if os.environ.get("SIDECAR_REQUIRE_INFINITY", "").strip() not in ("", "0"):
            pytest.fail(f"{reason}; SIDECAR_REQUIRE_INFINITY is set", pytrace=False)
        pytest.skip(reason)
    return exe


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged MiniLM-L6 encoder with a fresh one-logit head: real weights whose scores spread (the tiny
    random BERT's are equal to four digits, too close to tell an order)."""
    return build_cross_encoder(packaged_model(), tmp_path_factory.mktemp("infinity-ce") / "minilm-ce")


@pytest.fixture(scope="module")
def infinity(model_folder: Path) -> Iterator[str]:
    exe, port = _executable(), free_port()
    cmd = [exe, "v2", "--model-id", str(model_folder), "--engine", "torch", "--device", "cpu", "--port", str(port)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", "DO_NOT_TRACK": "1"}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(url + "/health", proc, log, timeout=180)
            yield url
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _infinity_scores(http: Http, url: str, texts: list[str]) -> list[float]:
    """infinity's own answer, asked directly: raw scores (logits), in input order."""
    body = {"query": QUERY, "documents": texts, "raw_scores": True, "return_documents": False}
    results = json.loads(http("POST", url + "/rerank", body).data)["results"]
    return [r["relevance_score"] for r in sorted(results, key=lambda r: r["index"])]


def test_a_search_reranked_by_infinity_gets_its_order_and_raw_scores_as_our_local_model_would(
    infinity: str, model_folder: Path, engine: str, make_sidecar: Callable[..., SidecarThread], http: Http
) -> None:
    texts = [
        f"apple {kind} number {i}"
        for i, kind in enumerate(["banana bread", "pie", "tree orchard", "juice", "and banana smoothie", "cider"] * 2)
    ]
    index_docs(http, engine, (("docs", str(i), {"text": t}) for i, t in enumerate(texts)))
    rule = {"index": "docs", "fields": ["text"], "window_size": 12}
    far = {"url": infinity, "api": "infinity", "max_batch": 5}  # 12 texts: three requests, stitched in order
    remote = make_sidecar(engine, model="none", models={"inf": far}, rules=[{**rule, "model": "inf"}])
    local = make_sidecar(engine, model=str(model_folder), rules=[rule], backend="torch", precision="fp32")
    search = {**SEARCH, "query": {"match": {"text": QUERY}}}
    r = http("POST", remote.url + "/docs/_search", search)
    assert r.status == 200, r.data[:300]
    assert r.headers["X-Rerank"] == "applied; window=12/12" and r.headers["X-Rerank-Model"] == "inf"
    hits = json.loads(r.data)["hits"]["hits"]
    want = _infinity_scores(http, infinity, [h["_source"]["text"] for h in hits])
    scores = [h["_score"] for h in hits]
    assert scores == pytest.approx(want, abs=1e-4)  # raw, as infinity computed them
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 6  # and ranked by them
    # The same folder loaded by the sidecar itself (fp32, as infinity runs it): the same scores.
    mine = json.loads(http("POST", local.url + "/docs/_search", search).data)["hits"]["hits"]
    assert [h["_id"] for h in mine] == [h["_id"] for h in hits]
    assert [h["_score"] for h in mine] == pytest.approx([h["_score"] for h in hits], abs=1e-3)
