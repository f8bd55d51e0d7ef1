"""SIGHUP: a `serve` process reads its rules again; a bad file or an unknown model keeps the old ones."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import yaml

from sidecar.tools.launch import serve_process
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
