"""The events index on a real engine (osmem): `templates apply` installs its template and reports the lifecycle
policies `unsupported`, a `_bulk` of the sidecar's documents lands in a daily index with exactly the mapping, and the
aggregations the dashboards run work on it."""

from __future__ import annotations

import json
from typing import Any

from sidecar.tools.engine_client import EngineClient
from sidecar.tools.templates import apply, default_dir, load

INDEX = "rerank-sidecar-events-2026.12.01"
EVENTS = [
    {
        "@timestamp": "2026-12-01T15:00:00.123Z",
        "index": "docs",
        "rule": "docs*",
        "kind": "search",
        "outcome": "applied",
        "window": 100,
        "reranked": 40,
        "added_ms": 123.4,
        "model": "default",
    },
    {
        "@timestamp": "2026-12-01T15:00:01.000Z",
        "index": "docs",
        "rule": "docs*",
        "kind": "msearch",
        "outcome": "fallback",
        "reason": "timeout",
        "window": 100,
        "reranked": 0,
        "added_ms": 250.0,
        "model": "default",
    },
    {
        "@timestamp": "2026-12-01T15:00:02.000Z",
        "index": "docs",
        "rule": "docs*",
        "kind": "search",
        "outcome": "shadow",
        "window": 50,
        "reranked": 50,
        "added_ms": 0.0,
        "model": "default",
        "shadow": {"overlap_at_10": 0.8, "top_hit_rank": 3, "kendall_tau": 0.21, "would_add_ms": 80.0},
        "query": "free text",
        "added_later": "a field a newer sidecar writes",
    },
]


def test_templates_apply_installs_the_events_template_and_reports_the_policies_unsupported(engine: str) -> None:
    client = EngineClient(engine)
    events = [t for t in load(default_dir()) if t.name == "rerank-sidecar-events"]
    assert {t.path: outcome for t, outcome in apply(client, events)} == {
        "/_ilm/policy/rerank-sidecar-events": "unsupported",  # Elasticsearch's
        "/_plugins/_ism/policies/rerank-sidecar-events": "unsupported",  # OpenSearch's; osmem has neither
        "/_index_template/rerank-sidecar-events": "created",  # without index.lifecycle.name, which osmem refuses
    }
    assert [outcome for _, outcome in apply(client, events)] == ["unsupported", "unsupported", "unchanged"]

    lines = [json.dumps(x) for e in EVENTS for x in ({"index": {"_index": INDEX}}, e)]
    reply = client.request("POST", "/_bulk?refresh=true", ("\n".join(lines) + "\n").encode())
    assert reply["errors"] is False  # dynamic: false keeps a field it does not know, unindexed, and never fails

    (template,) = [t for t in events if t.kind == "index_templates"]
    mapping = client.request("GET", f"/{INDEX}/_mapping")[INDEX]["mappings"]
    assert mapping["properties"] == template.body["template"]["mappings"]["properties"]
    assert str(mapping["dynamic"]).lower() == "false"
    settings = client.request("GET", f"/{INDEX}/_settings")[INDEX]["settings"]["index"]
    assert settings["number_of_shards"] == "1" and "lifecycle" not in settings

    unknown = _search(client, {"query": {"match": {"added_later": "newer"}}})
    assert unknown["hits"]["total"]["value"] == 0  # kept in _source, not indexed


def test_the_dashboards_aggregations_run_on_the_events_index(engine: str) -> None:
    client = EngineClient(engine)
    list(apply(client, [t for t in load(default_dir()) if t.name == "rerank-sidecar-events"]))
    lines = [json.dumps(x) for e in EVENTS for x in ({"index": {"_index": INDEX}}, e)]
    client.request("POST", "/_bulk?refresh=true", ("\n".join(lines) + "\n").encode())

    over_time = {"date_histogram": {"field": "@timestamp", "fixed_interval": "1h"}}
    reply = _search(
        client,
        {
            "aggs": {
                "outcomes": {**over_time, "aggs": {"outcome": {"terms": {"field": "outcome"}}}},
                "latency": {"percentiles": {"field": "added_ms", "percents": [50, 99]}},
                "reranked": {"sum": {"field": "reranked"}},
                "window": {"sum": {"field": "window"}},
                "overlap": {"avg": {"field": "shadow.overlap_at_10"}},
                "fallbacks": {
                    "filter": {"term": {"outcome": "fallback"}},
                    "aggs": {"reason": {"terms": {"field": "reason"}}},
                },
            }
        },
    )
    aggs = reply["aggregations"]
    (hour,) = aggs["outcomes"]["buckets"]
    assert {b["key"]: b["doc_count"] for b in hour["outcome"]["buckets"]} == {"applied": 1, "fallback": 1, "shadow": 1}
    assert aggs["latency"]["values"]["99.0"] is not None
    assert aggs["reranked"]["value"] / aggs["window"]["value"] == 90 / 250
    assert abs(aggs["overlap"]["value"] - 0.8) < 1e-6  # a float field: 0.8 as a float32
    assert [b["key"] for b in aggs["fallbacks"]["reason"]["buckets"]] == ["timeout"]
    query = _search(client, {"query": {"match": {"query": "text"}}})
    assert query["hits"]["total"]["value"] == 1  # the query text is searchable text


def _search(client: EngineClient, body: dict[str, Any]) -> dict[str, Any]:
    reply: dict[str, Any] = client.request("POST", "/rerank-sidecar-events-*/_search", {"size": 0, **body})
    return reply
