"""Fill the embedding store from an index: scroll it through the engine, embed what the store lacks.

Documents are read as the matching rule reads them (its fields, separator and array mode), so that `serve`
finds each embedding under the same key. Resumable: what the store holds is skipped, so a second run after an
interruption only embeds the rest.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from sidecar.config import DEFAULT_MODEL, ModelSpec, Rule, Settings
from sidecar.rerank.cache import text_key
from sidecar.rerank.scorers.embeddings import MemoryCache, SqliteStore
from sidecar.search.hits import document_texts
from sidecar.search.plan import match_rule
from sidecar.tools.engine_client import EngineClient
from sidecar.upstream import own_credentials

_SCROLL = "5m"


class WarmError(Exception):
    """The store, the model or the index cannot be warmed as asked."""


@dataclass(frozen=True)
class Warmed:
    documents: int
    embedded: int  # texts embedded now
    skipped: int  # texts the store held already


def scroll(client: EngineClient, index: str, fields: tuple[str, ...], batch: int) -> Iterator[list[dict[str, Any]]]:
    """Every document of ``index``, a page at a time, in index order; the scroll is cleared at the end."""
    body = {"size": batch, "sort": ["_doc"], "_source": list(fields), "query": {"match_all": {}}}
    reply = client.request("POST", f"/{index}/_search?scroll={_SCROLL}", body)
    scroll_id = reply.get("_scroll_id")
    try:
        while hits := reply["hits"]["hits"]:
            yield hits
            reply = client.request("POST", "/_search/scroll", {"scroll": _SCROLL, "scroll_id": scroll_id})
            scroll_id = reply.get("_scroll_id", scroll_id)
    finally:
        if scroll_id:
            client.request("DELETE", "/_search/scroll", {"scroll_id": scroll_id}, ok=(404,))


def warm(settings: Settings, index: str, *, fields: tuple[str, ...] | None, model: str | None, batch: int) -> Warmed:
    from sidecar.rerank.scorers.models import load_configured

    if settings.embedding_store is None:
        raise WarmError("warm fills the embedding store: set embedding_store (--embedding-store PATH)")
    rule = match_rule(settings.rules, [index]) or Rule(index=index)
    name = model or rule.model or DEFAULT_MODEL
    specs = {DEFAULT_MODEL: ModelSpec(path=settings.model, kind=settings.model_kind), **settings.models}
    if name not in specs:
        raise WarmError(f"unknown model [{name}]; configured: {', '.join(sorted(specs))}")
    if specs[name].remote:
        raise WarmError(f"model [{name}] is remote: its embeddings live on its own server")
    loaded = load_configured(name, specs[name], settings, token_cache=0)
    if loaded.kind != "bi-encoder":
        raise WarmError(f"model [{name}] is a {loaded.kind}: only bi-encoder embeddings can be kept")
    store = SqliteStore(settings.embedding_store, settings.embedding_store_mb * 1024 * 1024)
    from sidecar.rerank.scorers.embeddings import Embeddings

    embeddings = Embeddings(loaded.space, MemoryCache(0), store)
    # The first node: a scroll is one client's run of requests, and a tool needs no node pool.
    client = EngineClient(str(settings.upstream[0]).rstrip("/"), headers=own_credentials(settings))
    total = client.count(index)
    read = fields or rule.fields
    documents = embedded = skipped = 0
    try:
        with tqdm(total=total, desc=f"warming [{index}]", unit="doc") as bar:
            for page in scroll(client, index, read, batch):
                texts = {t for hit in page for t in document_texts(hit, read, rule.separator, rule.array_mode)}
                keys = {t: text_key(t) for t in texts}
                held = store.has_many(loaded.space, list(keys.values()))
                todo = [t for t in texts if keys[t] not in held]
                vectors = loaded.embed(todo, settings.batch_tokens or 2048)
                embeddings.put_many([(keys[t], v) for t, v in zip(todo, vectors, strict=True)])
                documents += len(page)
                embedded += len(todo)
                skipped += len(texts) - len(todo)
                bar.update(len(page))
    finally:
        store.close()
    return Warmed(documents, embedded, skipped)
