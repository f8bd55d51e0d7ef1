"""SIGHUP: a `serve` process reads its rules again, and loads again a model whose folder holds new weights; a bad
file, an unknown model or weights that do not load keep the old ones."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from sidecar.tools.launch import serve_process
from tests.models import build_tiny_cross_encoder
from tests.servers import Http, index_docs

SEARCH = {"query": {"match": {"text": "apple"}}, "size": 3}


def _verdict(http: Http, url: str, index: str) -> str:
    return str(http("POST", f"{url}/{index}/_search", SEARCH).headers["X-Rerank"])


def _until(http: Http, url: str, index: str, starts: str) -> None:
    deadline = time.monotonic() + 10
    while not (got := _verdict(http, url, index)).startswith(starts):
        assert time.monotonic() < deadline, got
        time.sleep(0.05)


def test_sighup_swaps_the_rules_and_a_bad_file_keeps_them(
    engine: str, tiny_model: str, tmp_path: Path, http: Http
) -> None:
    for index in ("first", "second"):
        index_docs(http, engine, ((index, str(i), {"text": f"apple {i}"}) for i in range(5)))
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"rules": [{"index": "first"}]}))
    with serve_process(engine, "--config", str(config), "--model", tiny_model) as (proc, url):
        assert _verdict(http, url, "first").startswith("applied")
        assert _verdict(http, url, "second") == "skipped; reason=no_rule"
        config.write_text(yaml.safe_dump({"rules": [{"index": "second"}]}))
        proc.send_signal(signal.SIGHUP)
        _until(http, url, "second", "applied")
        assert _verdict(http, url, "first") == "skipped; reason=no_rule"
        for bad in ("rules: [ {index: ", json.dumps({"rules": [{"index": "first", "model": "nowhere"}]})):
            config.write_text(bad)  # unreadable YAML, then a model that is not loaded
            proc.send_signal(signal.SIGHUP)
            time.sleep(0.5)
            assert proc.poll() is None  # still serving
            assert _verdict(http, url, "second").startswith("applied")  # the old rules stay
            assert _verdict(http, url, "first") == "skipped; reason=no_rule"


def _scores(http: Http, url: str) -> list[float]:
    reply = http("POST", f"{url}/docs/_search", SEARCH)
    assert reply.headers["X-Rerank"].startswith("applied"), reply.headers["X-Rerank"]
    return [hit["_score"] for hit in reply.json()["hits"]["hits"]]


def test_sighup_loads_new_weights_of_a_model_folder_and_keeps_the_old_ones_when_they_do_not_load(
    engine: str, tmp_path: Path, http: Http
) -> None:
    index_docs(http, engine, (("docs", str(i), {"text": f"apple {'banana ' * i}"}) for i in range(5)))
    folder = build_tiny_cross_encoder(tmp_path / "model", seed=0)
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"rules": [{"index": "docs"}]}))
    with serve_process(engine, "--config", str(config), "--model", str(folder)) as (proc, url):
        old = _scores(http, url)
        proc.send_signal(signal.SIGHUP)  # nothing changed on disk: the same model serves, the same scores
        time.sleep(0.5)
        assert _scores(http, url) == old
        build_tiny_cross_encoder(folder, seed=1)  # retrained weights saved over the folder
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while (new := _scores(http, url)) == old:  # the score cache must not hand back the old weights' scores
            assert time.monotonic() < deadline, "the new weights were never served"
            time.sleep(0.1)
        (folder / "model.safetensors").write_bytes(b"not a safetensors file")
        proc.send_signal(signal.SIGHUP)
        time.sleep(2)
        assert proc.poll() is None  # still serving, on the weights that loaded last
        assert _scores(http, url) == new
