"""The embedded demo: osmem + es_templates + a corpus + the sidecar in front, all on loopback, no network."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.http.server import build_runner
from sidecar.tools import templates
from sidecar.tools.engine_client import EngineClient
from sidecar.tools.indexing import index_docs

INDEX = "passages"


def load_corpus(client: EngineClient, docs: list[dict[str, str]]) -> int:
    """Install es_templates/, then index ``docs`` into `passages`."""
    for _ in templates.apply(client, templates.load(templates.default_dir())):
        pass
    return index_docs(client, INDEX, docs, batch=500)


def search_body(query: str, size: int) -> dict[str, Any]:
    """The BM25 candidate query of es_templates/search_templates (the engine here has no stored templates)."""
    return {
        "query": {"multi_match": {"query": query, "fields": ["title^2", "text"]}},
        "size": size,
        "_source": ["title"],
    }


@dataclass(frozen=True)
class Hit:
    title: str
    score: float


def top(client: EngineClient, query: str, size: int = 5) -> list[Hit]:
    hits = client.request("POST", f"/{INDEX}/_search", search_body(query, size))["hits"]["hits"]
    return [Hit(h["_source"].get("title", h["_id"]), float(h["_score"] or 0.0)) for h in hits]


def side_by_side(engine: list[Hit], reranked: list[Hit], width: int = 44) -> str:
    def cell(hits: list[Hit], i: int) -> str:
        if i >= len(hits):
            return " " * (width + 9)
        title = hits[i].title if len(hits[i].title) <= width else hits[i].title[: width - 1] + "…"
        return f"{hits[i].score:8.3f} {title:<{width}}"

    head = f"    {'engine (BM25)':<{width + 9}}  {'reranked by the sidecar':<{width + 9}}"
    rows = [f"{i + 1:>2}. {cell(engine, i)}  {cell(reranked, i)}" for i in range(max(len(engine), len(reranked)))]
    return "\n".join([head, *rows])


def curl_lines(url: str) -> list[str]:
    body = json.dumps(search_body("how do I parse a date string", 5))
    return [
        f"curl -s {url}/{INDEX}/_search -H 'Content-Type: application/json' -d '{body}' -D - ",
        f"curl -s {url}/{INDEX}/_search -H 'X-Rerank: off' -H 'Content-Type: application/json' -d '{body}'",
        f"curl -s {url}/_sidecar/metrics | grep rerank",
    ]


async def run_sidecar(settings: Settings, until: Callable[[str], Awaitable[int]]) -> int:
    """Serve the sidecar on ``settings.listen`` until the coroutine ``until(url)`` returns."""
    app = create_app(settings)
    runner = build_runner(app, settings)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.listen_host, settings.listen_port).start()
        return await until(f"http://{settings.listen_host}:{settings.listen_port}")
    finally:
        await runner.cleanup()


def read_docs(corpus: Path | None) -> list[dict[str, str]]:
    from sidecar.tools.corpus import read_jsonl, stdlib_docstrings

    docs: Iterable[dict[str, str]] = read_jsonl(corpus) if corpus else stdlib_docstrings()
    return list(docs)
