"""`rerank-sidecar warm` fills the store from an index through the engine; `serve` then finds every document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sidecar.cli import main
from sidecar.config import Rule
from sidecar.rerank.scorers.embeddings import SqliteStore
from tests.models import packaged_minilm
from tests.servers import Http

pytestmark = pytest.mark.slow  # real weights


@pytest.fixture
def corpus(engine: str, http: Http) -> str:
    lines = []
    for i in range(300):
        doc = {"title": f"title {i}", "text": f"document {i} about apples and parsing dates"}
        lines += [json.dumps({"index": {"_index": "docs", "_id": str(i)}}), json.dumps(doc)]
    body = ("\n".join(lines) + "\n").encode()
    r = http("POST", engine + "/_bulk?refresh=true", body, headers={"Content-Type": "application/x-ndjson"})
    assert not json.loads(r.data)["errors"]
    return engine


def _warm(engine: str, store: Path, *extra: str) -> int:
    model = str(packaged_minilm())
    args = ["warm", "--upstream", engine, "--index", "docs", "--model", model, "--embedding-store", str(store)]
    return main([*args, "--fields", "title,text", "--batch", "64", *extra])


def test_warm_fills_the_store_resumes_and_uses_credentials_unlogged(
    corpus: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = tmp_path / "emb.sqlite"
    monkeypatch.setenv("SIDECAR_UPSTREAM_BASIC_AUTH", "elastic:s3cret-pass")  # osmem ignores it; never printed
    assert _warm(corpus, store) == 0
    out = capsys.readouterr()
    assert "300 documents, 300 texts embedded, 0 already held" in out.out
    assert "s3cret" not in out.out + out.err
    view = SqliteStore(store, 10**9)
    (space,) = {row[0] for row in view._db.execute("SELECT DISTINCT space FROM embeddings")}
    assert view.count(space) == 300
    # interrupted runs resume: what is held is skipped
    view._db.execute("DELETE FROM embeddings WHERE key IN (SELECT key FROM embeddings LIMIT 100)")
    assert view.count(space) == 200
    assert _warm(corpus, store) == 0
    assert "300 documents, 100 texts embedded, 200 already held" in capsys.readouterr().out
    assert view.count(space) == 300


def test_warm_without_a_store_or_with_a_cross_encoder_is_a_usage_error(
    corpus: str, tiny_model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["warm", "--upstream", corpus, "--index", "docs", "--model", str(packaged_minilm())]) == 2
    assert "set embedding_store" in capsys.readouterr().err
    args = ["warm", "--upstream", corpus, "--index", "docs", "--model", tiny_model]
    assert main([*args, "--embedding-store", str(tmp_path / "e.sqlite")]) == 2
    assert "only bi-encoder" in capsys.readouterr().err


def test_serve_finds_what_warm_stored(corpus: str, tmp_path: Path, make_sidecar: Any, http: Http) -> None:
    store = tmp_path / "emb.sqlite"
    assert _warm(corpus, store) == 0
    rule = Rule(index="docs", fields=("title", "text"), window_size=50)
    proxy = make_sidecar(corpus, model=str(packaged_minilm()), embedding_store=store, rules=(rule,))
    r = http("POST", proxy.url + "/docs/_search", {"query": {"match": {"text": "parsing dates"}}})
    assert r.headers["X-Rerank"] == "applied; window=50/50"
    text = http("GET", proxy.url + "/_sidecar/metrics").data.decode()
    found = {
        s.labels["source"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sidecar_embeddings_total"
    }
    # the documents from the store, the query computed once (and found in memory by a later pass, if any)
    assert found["store"] == 50.0 and found["missing"] == 1.0
