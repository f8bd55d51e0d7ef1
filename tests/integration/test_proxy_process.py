"""The sidecar as its own process: streaming memory, graceful shutdown, config errors."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from sidecar.tools.launch import serve_process as sidecar_process
from tests.servers import Http, ThreadServer, echo_app, peak_rss_kb, rss_kb

pytestmark = pytest.mark.slow  # spawns processes or runs for many seconds: not in the fast tier
DOC = json.dumps({"n": 1, "blob": "lorem ipsum dolor sit amet " * 370})  # ~10 KB
ACTION = b'{"index":{}}\n'


def _bulk_body(n_docs: int) -> Iterator[bytes]:
    line = ACTION + DOC.encode() + b"\n"
    batch = line * 100
    for _ in range(n_docs // 100):
        yield batch


def test_100mb_bulk_streams_with_bounded_memory(engine: str, http: Http, tiny_model: str) -> None:
    http("PUT", engine + "/big", {"mappings": {"properties": {"blob": {"type": "text", "index": False}}}})
    # The engine's http.max_content_length is 100 MiB (as Elasticsearch's default): stay between the two.
    n_docs = 10_200
    size = n_docs * (len(ACTION) + len(DOC) + 1)
    assert 100 * 10**6 <= size < 100 * 2**20
    with sidecar_process(engine, "--model", tiny_model) as (proc, url):
        http("GET", url + "/")  # warm: imports and pools are in place before we measure
        before = rss_kb(proc.pid)
        r = http(
            "POST",
            url + "/big/_bulk",
            _bulk_body(n_docs),
            headers={"Content-Type": "application/x-ndjson"},
            chunked=True,
            preload_content=False,
        )
        # Read the (large) bulk reply in pieces, too.
        errors = b'"errors":false' in r.read(200)
        for _ in r.stream(1 << 16):
            pass
        assert r.status == 200 and errors, r.status
        peak = peak_rss_kb(proc.pid)
    http("POST", engine + "/big/_refresh")
    assert json.loads(http("GET", engine + "/big/_count").data)["count"] == n_docs
    growth_mb = (peak - before) / 1024
    print(f"bulk {size / 1e6:.0f} MB through the sidecar: peak RSS grew {growth_mb:.1f} MB")
    assert growth_mb < 50


def test_sigterm_lets_in_flight_requests_finish(http: Http, tiny_model: str) -> None:
    seen: list[dict[str, Any]] = []
    with ThreadServer(echo_app(seen, delay=1.5)) as up, sidecar_process(up.url, "--model", tiny_model) as (proc, url):
        result: dict[str, Any] = {}

        def call() -> None:
            r = http("GET", url + "/slow/_doc/1")
            result["status"], result["body"] = r.status, r.data

        t = threading.Thread(target=call)
        t.start()
        while not seen:
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t.join(timeout=10)
        assert result["status"] == 200 and json.loads(result["body"])["raw_path"] == "/slow/_doc/1"
        assert proc.wait(timeout=10) == 0


def _serve(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "sidecar", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    bad_key = tmp_path / "a.yaml"
    bad_key.write_text("upstream: http://127.0.0.1:9200\nwindow: 3\n")
    bad_value = tmp_path / "b.yaml"
    bad_value.write_text("pool_size: many\n")
    cases = [
        (["--config", str(bad_key)], "window"),
        (["--config", str(bad_value)], "pool_size"),
        (["--config", str(tmp_path / "missing.yaml")], "cannot read"),
        (["--listen", "nowhere"], "listen"),
        (["--upstream", "ftp://x"], "upstream"),
    ]
    for args, needle in cases:
        done = _serve(*args)
        assert done.returncode == 2, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], done.stderr
    done = _serve(env={"SIDECAR_MAX_WINDOW": "-3"})
    assert done.returncode == 2 and "max_window" in done.stderr


def test_missing_model_is_one_clear_message(tmp_path: Path) -> None:
    done = _serve("--model", str(tmp_path / "no-such-model"), env={"HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "no-such-model" in last and "local copy" in last and "Traceback" not in done.stderr
    assert done.stderr.count("cannot load model [default]") == 1, done.stderr  # not logged and printed


def _available(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_available()
    return torch.backends.mps.is_available()


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_unavailable_device_is_one_clear_message(device: str, tiny_model: str) -> None:
    if _available(device):
        pytest.skip(f"{device} is available here")
    done = _serve("--device", device, "--model", tiny_model)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("rerank-sidecar: ") and f"device {device} is not available" in last, done.stderr
    assert done.stderr.count(f"device {device}") == 1, done.stderr


def test_model_none_serves_as_a_pure_proxy(engine: str, http: Http, tmp_path: Path) -> None:
    """`--model none` starts with no model at all (offline, nothing to load): searches that a rule or the rerank
    syntax would rerank pass with `skipped; reason=no_model`, the rerank syntax stripped; ready is 200."""
    http("POST", engine + "/docs/_doc?refresh=true", {"text": "apple pie"})
    config = tmp_path / "sidecar.yaml"
    config.write_text(json.dumps({"rules": [{"index": "docs"}]}))
    flags = ("--model", "none", "--config", str(config))
    with sidecar_process(engine, *flags, env={"HF_HUB_OFFLINE": "1"}, ready_path="/_sidecar/ready") as (_, url):
        search = {"query": {"match": {"text": "apple"}}}
        ext = {**search, "ext": {"rerank": {"query_context": {"query_text": "apple"}}}}
        for body in (search, ext):
            r = http("POST", url + "/docs/_search", body)
            assert r.status == 200 and r.headers["X-Rerank"] == "skipped; reason=no_model", r.data[:300]
            assert [h["_id"] for h in json.loads(r.data)["hits"]["hits"]] == [
                h["_id"] for h in json.loads(http("POST", engine + "/docs/_search", search).data)["hits"]["hits"]
            ]
        ready = json.loads(http("GET", url + "/_sidecar/ready").data)
        assert ready["status"] == "ready" and ready["models"] == {}
        assert http("GET", url + "/docs/_count").status == 200
