"""Index documents into an engine with a progress bar; skipped when the index already holds that many."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sidecar.tools import datasets
from sidecar.tools.embedded import engine_at
from sidecar.tools.engine_client import EngineClient

_TITLE_TEXT = {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}


def index_docs(
    client: EngineClient,
    index: str,
    docs: list[dict[str, str]],
    *,
    mappings: dict[str, Any] | None = None,
    batch: int = 1000,
) -> int:
    """(Re)create ``index`` (with ``mappings``, else as templates say) unless it holds exactly this many documents."""
    if client.count(index) == len(docs):
        return len(docs)
    client.request("DELETE", f"/{index}", ok=(404,))
    if mappings is not None:
        client.request("PUT", f"/{index}", {"mappings": mappings})
    with tqdm(total=len(docs), desc="indexing", unit="doc") as bar:
        for n in client.bulk_index(index, docs, batch=batch):
            bar.update(n)
    return client.count(index)


def index_dataset(client: EngineClient, index: str, folder: Path) -> int:
    """A dataset folder's corpus with title and text fields."""
    return index_docs(client, index, list(datasets.corpus(folder)), mappings=_TITLE_TEXT, batch=2000)


Retrieve = Callable[[str, int], list[dict[str, Any]]]


@contextmanager
def bm25(engine: str | None, index: str, folder: Path) -> Iterator[Retrieve]:
    """A BM25 retriever over a dataset folder's corpus: ``engine`` (default: the embedded one) holding it in
    ``index``, asked with a ``multi_match`` over title and text, never reranked; ``retrieve(query, k)`` gives the
    top k hits (``_id`` and ``_source``)."""
    with engine_at(engine) as running:
        client = EngineClient(running.url, headers={"X-Rerank": "off"})
        index_dataset(client, index, folder)

        def retrieve(query: str, k: int) -> list[dict[str, Any]]:
            body = {"query": {"multi_match": {"query": query, "fields": ["title", "text"]}}, "size": k}
            hits: list[dict[str, Any]] = client.request("POST", f"/{index}/_search", body)["hits"]["hits"]
            return hits

        yield retrieve
