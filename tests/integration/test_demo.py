"""The ways users meet the product: `demo` offline, `templates apply` and `load` through the sidecar."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest

from sidecar.cli import main
from sidecar.tools.launch import free_port, wait_http
from tests.servers import Http

pytestmark = pytest.mark.slow  # spawns processes or runs for many seconds: not in the fast tier


def test_demo_query_prints_engine_and_reranked_top5_offline() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "sidecar", "demo", "--query", "how do I parse a date string"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert any("packaged all-MiniLM-L6-v2" in line for line in lines)
    header = next(i for i, line in enumerate(lines) if "engine (BM25)" in line and "reranked" in line)
    rows = lines[header + 1 : header + 6]
    assert [r.split(".")[0].strip() for r in rows] == ["1", "2", "3", "4", "5"]
    reranked_titles = [r[len(r) // 2 :] for r in rows]
    assert any("datetime" in t or "strptime" in t for t in reranked_titles), out.stdout


# The demo as a terminal starts it, SIGINT at Python's own handler: a run of the tests started in the background
# (`cmd &` in a script) inherits SIGINT ignored, and Python then leaves it ignored, as a background job should.
_AS_IN_A_TERMINAL = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from sidecar.cli import main; sys.exit(main())"
)


def test_demo_serves_until_interrupted_and_reranks(http: Http) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", _AS_IN_A_TERMINAL, "demo", "--listen", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/_sidecar/ready", timeout=240)
        r = http("POST", url + "/passages/_search", {"query": {"match": {"text": "read a csv file"}}, "size": 3})
        assert r.status == 200 and r.headers["X-Rerank"].startswith("applied")
        assert len(json.loads(r.data)["hits"]["hits"]) == 3
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output[-2000:]
    assert f"curl -s {url}/passages/_search" in output and "Ctrl-C" in output


def test_templates_apply_through_the_sidecar_idempotently(
    engine: str, make_sidecar: Callable[..., Any], http: Http, capsys: pytest.CaptureFixture[str]
) -> None:
    proxy = make_sidecar(engine)
    assert main(["templates", "apply", "--target", proxy.url]) == 0
    first = capsys.readouterr().out.split("\n")
    # the events indices' retention: Elasticsearch's ILM, OpenSearch's ISM; osmem has neither
    assert "unsupported  /_ilm/policy/rerank-sidecar-events" in first
    assert "unsupported  /_plugins/_ism/policies/rerank-sidecar-events" in first
    assert "created      /_component_template/rerank-sidecar-english" in first
    assert "created      /_index_template/rerank-sidecar-events" in first  # without the ILM setting osmem refuses
    assert "created      /_index_template/rerank-sidecar-passages" in first
    assert "unsupported  /_scripts/rerank-sidecar-bm25" in first  # osmem has no stored search templates
    # nor _inference (Elasticsearch's) or ml-commons and search pipelines (OpenSearch's): reported, not failed
    assert "unsupported  /_inference/rerank/rerank-sidecar" in first
    assert "unsupported  /_plugins/_ml/connectors/rerank-sidecar" in first
    assert "unsupported  /_plugins/_ml/models/rerank-sidecar" in first
    assert "unsupported  /_search/pipeline/rerank-sidecar" in first
    assert main(["templates", "apply", "--target", proxy.url]) == 0
    second = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert second == ["unsupported"] * 2 + ["unchanged"] * 4 + ["unsupported"] * 5

    # with the sidecar's URL and a key, the native items are still unsupported on osmem, and nothing fails
    native = ["--sidecar-url", proxy.url, "--rerank-api-key", "k-test"]
    assert main(["templates", "apply", "--target", proxy.url, *native]) == 0
    out, err = capsys.readouterr()
    assert [line.split()[0] for line in out.splitlines()] == second and "skipped" not in err

    assert http("PUT", engine + "/passages-test").status == 200
    mapping = json.loads(http("GET", engine + "/passages-test/_mapping").data)
    assert mapping["passages-test"]["mappings"]["properties"]["text"]["analyzer"] == "english_text"
    analyzed = json.loads(
        http("POST", engine + "/passages-test/_analyze", {"analyzer": "english_text", "text": "the dates"}).data
    )
    assert [t["token"] for t in analyzed["tokens"]] == ["date"]


def test_load_indexes_a_jsonl_corpus_through_the_sidecar(
    engine: str, make_sidecar: Callable[..., Any], http: Http, tmp_path: Any
) -> None:
    proxy = make_sidecar(engine)
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(json.dumps({"id": i, "title": f"t{i}", "text": f"doc {i}"}) for i in range(1200)))
    assert main(["load", "--target", proxy.url, "--corpus", str(corpus), "--index", "mine"]) == 0
    assert json.loads(http("GET", engine + "/mine/_count").data)["count"] == 1200
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text"}\n')
    assert main(["load", "--target", proxy.url, "--corpus", str(bad)]) == 1
