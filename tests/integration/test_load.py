"""Load: 20,000 mixed requests from 64 concurrent clients through a `serve` process with a real (tiny) model."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections import Counter
from pathlib import Path

import aiohttp
import pytest
import yaml

from sidecar.tools.launch import serve_process
from tests.servers import Http, rss_kb

pytestmark = pytest.mark.slow  # 20,000 requests through a serve process: not in the fast tier
REQUESTS = int(os.environ.get("SIDECAR_LOAD_REQUESTS", "20000"))
WORDS = ["apple", "banana", "cherry", "date", "parse", "string", "time", "json"]


def _prepare(http: Http, engine: str) -> None:
    for index in ("docs", "plain"):
        lines = []
        for i in range(300):
            text = " ".join(random.Random(i).choices(WORDS, k=8))
            lines += [json.dumps({"index": {"_index": index, "_id": str(i)}}), json.dumps({"text": text})]
        body = ("\n".join(lines) + "\n").encode()
        http("POST", engine + "/_bulk?refresh=true", body, headers={"Content-Type": "application/x-ndjson"})


def _request(i: int) -> tuple[str, str, bytes, str]:
    """(kind, path, body, content type): reranked and plain searches, _msearch, and small _bulk writes."""
    rng = random.Random(i)
    query = {"query": {"match": {"text": " ".join(rng.sample(WORDS, 2))}}, "size": 5}
    kind = ("rerank", "plain", "msearch", "bulk")[i % 4]
    if kind == "rerank":
        return kind, "/docs/_search", json.dumps(query).encode(), "application/json"
    if kind == "plain":
        return kind, "/plain/_search", json.dumps(query).encode(), "application/json"
    if kind == "msearch":
        lines = [{"index": "docs"}, query, {"index": "plain"}, query]
        return kind, "/_msearch", ("\n".join(map(json.dumps, lines)) + "\n").encode(), "application/x-ndjson"
    lines = [{"index": {"_index": "writes", "_id": f"d{i}"}}, {"text": "written under load"}]
    return kind, "/_bulk", ("\n".join(map(json.dumps, lines)) + "\n").encode(), "application/x-ndjson"


async def _drive(url: str, total: int, clients: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    queue = iter(range(total))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=clients)) as session:

        async def client() -> None:
            for i in queue:
                kind, path, body, ctype = _request(i)
                async with session.post(url + path, data=body, headers={"Content-Type": ctype}) as r:
                    reply = await r.json(content_type=None)
                    ok = r.status == 200 and not reply.get("errors")
                    if kind == "rerank":
                        ok = ok and r.headers.get("X-Rerank", "").startswith("applied; window=")
                    outcomes[f"{kind}:{'ok' if ok else r.status}"] += 1

        await asyncio.gather(*(client() for _ in range(clients)))
    return outcomes


def test_20000_mixed_requests_from_64_clients(engine: str, http: Http, tiny_model: str, tmp_path: Path) -> None:
    _prepare(http, engine)
    config = tmp_path / "sidecar.yaml"
    config.write_text(yaml.safe_dump({"rules": [{"index": "docs*", "fields": ["text"], "window_size": 20}]}))
    flags = ("--model", tiny_model, "--config", str(config), "--log-level", "WARNING")
    with serve_process(engine, *flags, ready_path="/_sidecar/ready") as (proc, url):
        asyncio.run(_drive(url, 1000, 64))  # warm-up: caches, pools, allocator
        before = rss_kb(proc.pid)
        outcomes = asyncio.run(_drive(url, REQUESTS, 64))
        after = rss_kb(proc.pid)
    unexpected = {k: n for k, n in outcomes.items() if not k.endswith(":ok")}
    print(f"{sum(outcomes.values())} requests: {dict(outcomes)}; sidecar RSS {before // 1024} -> {after // 1024} MB")
    assert sum(outcomes.values()) == REQUESTS and not unexpected
    assert after - before < 100 * 1024
    written = json.loads(http("GET", engine + "/writes/_count").data)["count"]
    assert written == REQUESTS // 4
