"""The official clients through the sidecar get exactly what they get from the engine directly."""

from __future__ import annotations

from typing import Any

import pytest
from elasticsearch import Elasticsearch
from opensearchpy import OpenSearch, helpers

N_DOCS = 3_000  # three bulk chunks and four scroll pages: multi-chunk and multi-page, in seconds


def _strip_took(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_took(v) for k, v in value.items() if k != "took"}
    if isinstance(value, list):
        return [_strip_took(v) for v in value]
    return value


def _reads(client: Any, index: str, *, es: bool) -> dict[str, Any]:
    """Every read the issue names, as plain data."""
    body = {"query": {"match": {"text": "apple"}}, "size": 5}
    out: dict[str, Any] = {
        "count": client.count(index=index)["count"],
        "search": dict(client.search(index=index, body=body) if not es else client.search(index=index, **body)),
        "msearch": dict(
            client.msearch(body=[{"index": index}, body, {"index": index}, {"query": {"match_all": {}}, "size": 2}])
            if not es
            else client.msearch(
                searches=[{"index": index}, body, {"index": index}, {"query": {"match_all": {}}, "size": 2}]
            )
        ),
        "mget": dict(
            client.mget(index=index, body={"ids": ["1", "2", "nope"]})
            if not es
            else client.mget(index=index, ids=["1", "2", "nope"])
        ),
        "exists": bool(client.indices.exists(index=index)),
        "cat": str(client.cat.indices(index=index, h="index,docs.count")),
    }
    ids: list[str] = []
    page = (
        client.search(index=index, body={"size": 1000, "sort": ["_doc"]}, scroll="1m")
        if not es
        else client.search(index=index, size=1000, sort=["_doc"], scroll="1m")
    )
    for _ in range(N_DOCS // 1000 + 2):  # bounded: a scroll that never ends fails instead of hanging
        if not page["hits"]["hits"]:
            break
        ids += [h["_id"] for h in page["hits"]["hits"]]
        page = (
            client.scroll(scroll_id=page["_scroll_id"], scroll="1m")
            if es
            else client.scroll(body={"scroll_id": page["_scroll_id"], "scroll": "1m"})
        )
    else:
        raise AssertionError(f"the scroll had not ended after {len(ids)} hits")
    out["scroll_ids"] = sorted(ids)
    stripped: dict[str, Any] = _strip_took(out)
    return stripped


def _docs(index: str) -> list[dict[str, Any]]:
    words = ["apple", "banana", "cherry", "durian", "elder"]
    return [
        {"_index": index, "_id": str(i), "_source": {"text": f"{words[i % 5]} {words[(i * 7) % 5]} doc {i}", "n": i}}
        for i in range(N_DOCS)
    ]


def _write_and_compare(direct: Any, proxied: Any, index: str, *, es: bool) -> None:
    """Write through ``proxied``; reads through it must equal the opensearch-py client's direct reads."""
    mapping = {"properties": {"text": {"type": "text"}, "n": {"type": "integer"}}}
    if es:
        proxied.indices.create(index=index, mappings=mapping)
    else:
        proxied.indices.create(index=index, body={"mappings": mapping})
    if es:
        from elasticsearch import helpers as es_helpers

        ok, errors = es_helpers.bulk(proxied, _docs(index), chunk_size=1200, refresh=True)
    else:
        ok, errors = helpers.bulk(proxied, _docs(index), chunk_size=1200, refresh=True)
    assert ok == N_DOCS and not errors
    assert direct.count(index=index)["count"] == N_DOCS

    if es:
        proxied.update(index=index, id="3", doc={"text": "updated apple"}, refresh=True)
        proxied.delete(index=index, id="4", refresh=True)
    else:
        proxied.update(index=index, id="3", body={"doc": {"text": "updated apple"}}, refresh=True)
        proxied.delete(index=index, id="4", refresh=True)
    assert direct.get(index=index, id="3")["_source"]["text"] == "updated apple"
    assert not direct.exists(index=index, id="4")

    via, straight = _reads(proxied, index, es=es), _reads(direct, index, es=False)
    assert via == straight
    assert via["count"] == N_DOCS - 1 and len(via["scroll_ids"]) == N_DOCS - 1
    assert via["search"]["hits"]["hits"], "the search found nothing: the comparison would be empty"


def test_opensearch_client_through_sidecar(engine: str, sidecar: Any) -> None:
    direct, proxied = OpenSearch(hosts=[engine]), OpenSearch(hosts=[sidecar.url], timeout=60)
    _write_and_compare(direct, proxied, "books", es=False)


def test_elasticsearch_client_through_sidecar_with_compat(engine: str, make_sidecar: Any) -> None:
    proxy = make_sidecar(engine, compat_media_types=True)
    proxied = Elasticsearch(proxy.url, request_timeout=60)
    # Directly, the engine answers this client 406; the reference is the same reads made plainly.
    _write_and_compare(OpenSearch(hosts=[engine]), proxied, "films", es=True)


def test_elasticsearch_client_without_compat_gets_engine_406(engine: str, sidecar: Any) -> None:
    """Off by default: the vendor media type reaches the engine unchanged, and so does its answer."""
    from elasticsearch import ApiError

    client = Elasticsearch(sidecar.url)
    with pytest.raises(ApiError) as info:
        client.search(index="x", query={"match_all": {}})
    assert info.value.meta.status == 406
