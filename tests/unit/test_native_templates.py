"""The engines' own rerank features pointed at the sidecar: the templates' shapes against our Cohere v2 API.

No Elasticsearch or OpenSearch runs here, so each engine's side is mirrored from its source:
- Elasticsearch's `custom` service (x-pack/plugin/inference/.../services/custom): `${query}` and `${input}` in
  `request` are replaced by their JSON (a string, an array of strings); `json_parser.relevance_score` and
  `reranked_index` are JSONPaths into the reply.
- ml-commons' `connector.pre_process.cohere.rerank` (CohereRerankPreProcessFunction) sets `query`, `documents`
  and `top_n` = the number of documents, each as JSON with a string's quotes dropped (the template quotes it);
  `connector.post_process.cohere.rerank` (CohereRerankPostProcessFunction) reads `$.results` and puts each
  `relevance_score` at its `index`: one score per document, in the order sent.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from typing import Any

import pytest

from sidecar.config import Settings
from sidecar.rerank.api import CohereRequest, cohere_rerank
from sidecar.tools.engine_client import EngineClient, EngineError
from sidecar.tools.templates import PLACEHOLDERS, Template, apply, default_dir, load, placeholders, render

ROOT = default_dir()
NATIVE = {
    "inference_endpoints/rerank-sidecar.json": {"sidecar_url", "rerank_api_key"},
    "ml_connectors/rerank-sidecar.json": {"sidecar_url", "rerank_api_key"},
    "ml_models/rerank-sidecar.json": {"connector_id"},
    "search_pipelines/rerank-sidecar.json": {"model_id"},
}
QUERY = 'what is a "date" \\ parser?'  # quotes and a backslash: the engines must escape them
DOCS = ["strptime parses a date string", "a fruit, the date"]


def _body(name: str) -> Any:
    return json.loads((ROOT / name).read_text())


class _Scorer:
    """A deterministic model: the longer text scores higher."""

    async def score_texts(self, model: str, query: str, texts: Sequence[str]) -> list[float]:
        assert model == "default"
        return [float(len(t)) / 10 for t in texts]


def _our_reply(request: dict[str, Any]) -> dict[str, Any]:
    """What the sidecar's /_sidecar/v2/rerank answers to ``request`` (its real handler logic, a fake model)."""
    return asyncio.run(cohere_rerank(_Scorer(), Settings(), json.dumps(request).encode()))


def _jsonpath(doc: Any, path: str) -> list[Any]:
    """The `$.a[*].b` JSONPaths the templates use (enough to read them the way the engines do)."""
    assert re.fullmatch(r"\$(\.\w+(\[\*\])?)+", path), path
    values = [doc]
    for step in path[2:].split("."):
        key, many = step.removesuffix("[*]"), step.endswith("[*]")
        values = [v[key] for v in values]
        if many:
            values = [item for v in values for item in v]
    return values


@pytest.mark.parametrize("name", sorted(NATIVE))
def test_each_native_template_is_json_with_only_its_documented_placeholders(name: str) -> None:
    body = _body(name)
    assert placeholders(body) == NATIVE[name]
    text = json.dumps(body)
    assert set(re.findall(r"\{\{(\w+)\}\}", text)) == NATIVE[name]  # no {{other}} the installer would leave
    assert set(PLACEHOLDERS) == {"sidecar_url", "rerank_api_key"}


def test_load_reads_the_native_kinds_in_dependency_order() -> None:
    kinds = ("inference_endpoints", "ml_connectors", "ml_models", "search_pipelines")
    native = [t.path for t in load(ROOT) if t.kind in kinds]
    assert native == [
        "/_inference/rerank/rerank-sidecar",
        "/_plugins/_ml/connectors/rerank-sidecar",
        "/_plugins/_ml/models/rerank-sidecar",
        "/_search/pipeline/rerank-sidecar",
    ]


def test_render_fills_ours_and_leaves_the_engines_templates() -> None:
    values = {"sidecar_url": "http://sidecar:8080", "rerank_api_key": 'k"ey'}
    es = render(_body("inference_endpoints/rerank-sidecar.json"), values)
    assert es["service_settings"]["url"] == "http://sidecar:8080/_sidecar/v2/rerank"
    assert es["service_settings"]["secret_parameters"] == {"api_key": 'k"ey'}  # a value in parsed JSON: no escaping
    assert es["service_settings"]["headers"]["Authorization"] == "Bearer ${api_key}"  # Elasticsearch's own
    mustache = render(_body("search_templates/rerank-sidecar-bm25.json"), values)
    assert mustache == _body("search_templates/rerank-sidecar-bm25.json")  # {{query}} is the engine's


def test_elasticsearch_custom_service_request_is_our_cohere_v2_request() -> None:
    settings = _body("inference_endpoints/rerank-sidecar.json")["service_settings"]
    assert settings["url"].endswith("/_sidecar/v2/rerank")
    template = settings["request"]
    assert '"${query}"' not in template and '"${input}"' not in template  # the docs: never inside quotes
    rendered = template.replace("${query}", json.dumps(QUERY)).replace("${input}", json.dumps(DOCS))
    request = CohereRequest.model_validate(json.loads(rendered))  # strict, extra fields forbidden
    assert (request.model, request.query, request.documents, request.top_n) == ("default", QUERY, DOCS, None)


def test_elasticsearch_json_parser_reads_our_reply() -> None:
    parser = _body("inference_endpoints/rerank-sidecar.json")["service_settings"]["response"]["json_parser"]
    assert parser == {"reranked_index": "$.results[*].index", "relevance_score": "$.results[*].relevance_score"}
    reply = _our_reply({"model": "default", "query": QUERY, "documents": DOCS})
    indices, scores = _jsonpath(reply, parser["reranked_index"]), _jsonpath(reply, parser["relevance_score"])
    assert indices == [0, 1]  # "strptime parses a date string" is the longer one
    assert len(scores) == 2 and scores[0] > scores[1] and all(0 <= s <= 1 for s in scores)


def test_opensearch_connector_request_is_our_cohere_v2_request_and_its_post_process_reads_our_reply() -> None:
    connector = _body("ml_connectors/rerank-sidecar.json")
    (action,) = connector["actions"]
    assert action["action_type"] == "predict" and action["method"] == "POST"
    assert action["url"] == "{{sidecar_url}}/_sidecar/v2/rerank"
    assert action["headers"]["Authorization"] == "Bearer ${credential.api_key}"
    assert action["pre_process_function"] == "connector.pre_process.cohere.rerank"
    assert action["post_process_function"] == "connector.post_process.cohere.rerank"
    docs = list(reversed(DOCS))
    parameters = {  # CohereRerankPreProcessFunction, then the connector's own parameters
        "query": json.dumps(QUERY)[1:-1],
        "documents": json.dumps(docs),
        "top_n": str(len(docs)),
        **connector["parameters"],
    }
    body = re.sub(r"\$\{parameters\.(\w+)\}", lambda m: parameters[m.group(1)], action["request_body"])
    request = CohereRequest.model_validate(json.loads(body))
    assert (request.model, request.query, request.documents, request.top_n) == ("default", QUERY, docs, 2)

    (results,) = _jsonpath(_our_reply(json.loads(body)), "$.results")  # what post_process.cohere.rerank is given
    assert all({"index", "relevance_score"} <= r.keys() for r in results) and len(results) == len(docs)
    similarity: list[float | None] = [None] * len(docs)
    for r in results:
        similarity[r["index"]] = r["relevance_score"]
    assert similarity[1] is not None and similarity[0] is not None and similarity[1] > similarity[0]


def test_opensearch_model_and_pipeline_point_at_what_apply_installs() -> None:
    model = _body("ml_models/rerank-sidecar.json")
    assert model["function_name"] == "remote" and model["connector_id"] == "{{connector_id}}"
    (processor,) = _body("search_pipelines/rerank-sidecar.json")["response_processors"]
    assert processor["rerank"]["ml_opensearch"] == {"model_id": "{{model_id}}"}
    assert processor["rerank"]["context"]["document_fields"] == ["title", "text"]  # es_templates/sidecar.yaml's


class _FakeEngine(EngineClient):
    """Just enough of Elasticsearch's _inference and OpenSearch's ml-commons to follow apply's calls."""

    def __init__(self) -> None:
        super().__init__("http://fake.invalid")
        self.objects: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []

    def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = ()) -> Any:
        self.calls.append((method, path))
        path = path.split("?")[0]
        if path.endswith("/_search"):
            kind = path.removesuffix("/_search")
            hits = [{"_id": k.rsplit("/", 1)[1], "_source": v} for k, v in self.objects.items() if k.startswith(kind)]
            return {"hits": {"hits": hits}}
        if path.startswith("/_plugins/_ml/") and method == "POST":
            kind, verb = path.rsplit("/", 1)
            if verb == "_deploy":
                self.objects[kind]["model_state"] = "DEPLOYED"
                return {}
            new_id = f"id{len(self.objects)}"
            self.objects[f"{kind}/{new_id}"] = {**body, **({"model_state": "DEPLOYED"} if "models" in kind else {})}
            return {"connector_id" if "connectors" in kind else "model_id": new_id}
        if method == "GET" and path.startswith("/_inference/"):
            if path not in self.objects:
                return {"error": {"type": "resource_not_found_exception"}, "status": 404}
            public = dict(self.objects[path], service_settings=dict(self.objects[path]["service_settings"]))
            del public["service_settings"]["secret_parameters"]  # never returned
            return {"endpoints": [{"inference_id": path.rsplit("/", 1)[1], "task_type": "rerank", **public}]}
        if method == "GET":
            name = path.rsplit("/", 1)[1]
            return {name: self.objects[path]} if path in self.objects else {}
        if method == "PUT" and path in self.objects and path.startswith("/_inference/"):
            raise EngineError(method, path, 400, {"error": "Inference endpoint [x] already exists"})
        if method in ("PUT", "DELETE"):
            self.objects.pop(path, None)
            if method == "PUT":
                self.objects[path] = body
            return {"acknowledged": True}
        raise AssertionError((method, path))


def test_apply_installs_the_chain_with_learned_ids_and_is_idempotent() -> None:
    native = [
        t for t in load(ROOT) if t.kind in ("inference_endpoints", "ml_connectors", "ml_models", "search_pipelines")
    ]
    engine = _FakeEngine()
    values = {"sidecar_url": "http://sidecar:8080", "rerank_api_key": "k"}
    assert [o for _, o in apply(engine, native, values)] == ["created"] * 4
    pipeline = engine.objects["/_search/pipeline/rerank-sidecar"]
    model_id = pipeline["response_processors"][0]["rerank"]["ml_opensearch"]["model_id"]
    (connector_id,) = [k.rsplit("/", 1)[1] for k in engine.objects if k.startswith("/_plugins/_ml/connectors/")]
    assert engine.objects[f"/_plugins/_ml/models/{model_id}"]["connector_id"] == connector_id
    assert [o for _, o in apply(engine, native, values)] == ["unchanged"] * 4  # secrets are not compared

    changed = [Template(t.kind, t.name, render(t.body, {"sidecar_url": "http://other:8080"})) for t in native[:1]]
    assert [o for _, o in apply(engine, changed, {"rerank_api_key": "k"})] == ["updated"]  # DELETE, then PUT
    assert ("DELETE", "/_inference/rerank/rerank-sidecar") in engine.calls

    assert [o for _, o in apply(_FakeEngine(), native, {})] == ["skipped"] * 4  # no URL, no key: nothing half-made
