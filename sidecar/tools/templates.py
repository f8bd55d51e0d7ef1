"""`es_templates/`: read the folder and install it into an engine, idempotently, reporting what changed.

Besides the index side (component, index and search templates), the folder holds the retention of the sidecar's
events indices (an Elasticsearch ILM policy, an OpenSearch ISM policy: each engine installs its own and reports the
other's `unsupported`), and the engines' own rerank features pointed at the sidecar's rerank API: an Elasticsearch
`_inference` rerank endpoint (the `custom` service), and for OpenSearch an ml-commons connector, the remote model on it
and a search pipeline with the `rerank` processor.
Their files hold placeholders, `{{name}}`, filled in as they are installed: `sidecar_url` and `rerank_api_key`
from the caller, `ilm_policy`, `connector_id` and `model_id` from the objects installed before them.
"""

from __future__ import annotations

import importlib.resources
import json
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.tools.engine_client import EngineClient, EngineError

# Folder -> (API path, key holding the objects in a GET reply, key of the object body in each entry)
_KINDS = {
    "ilm_policies": ("/_ilm/policy/", None, None),  # Elasticsearch index lifecycle management
    "ism_policies": ("/_plugins/_ism/policies/", None, None),  # OpenSearch index state management
    "component_templates": ("/_component_template/", "component_templates", "component_template"),
    "index_templates": ("/_index_template/", "index_templates", "index_template"),
    "search_templates": ("/_scripts/", None, "script"),
    "inference_endpoints": ("/_inference/rerank/", "endpoints", None),  # Elasticsearch 8.19 / 9.1+
    "ml_connectors": ("/_plugins/_ml/connectors/", None, None),  # OpenSearch ml-commons, found by name
    "ml_models": ("/_plugins/_ml/models/", None, None),
    "search_pipelines": ("/_search/pipeline/", None, None),  # OpenSearch
}
# An index template needs its components (and the ILM policy it names); a model its connector; a pipeline its model.
_ORDER = (
    "ilm_policies",
    "ism_policies",
    "component_templates",
    "index_templates",
    "search_templates",
    "inference_endpoints",
    "ml_connectors",
    "ml_models",
    "search_pipelines",
)

# `{{name}}` in a template's strings. The caller gives the first two; `apply` learns the others as it goes.
# Any other `{{...}}` (the search template's mustache) is the engine's and stays as it is.
PLACEHOLDERS = ("sidecar_url", "rerank_api_key")
_LEARNED = ("ilm_policy", "connector_id", "model_id")
# Learned only where the engine has the API: a setting whose whole value is one of these, still without a value, is
# left out rather than the template skipped (`index.lifecycle.name` is an unknown setting to OpenSearch and osmem).
_OPTIONAL = ("ilm_policy",)
_PLACEHOLDER = re.compile(r"\{\{(" + "|".join(PLACEHOLDERS + _LEARNED) + r")\}\}")
# Secrets the engine stores but never returns: left out when comparing with what it holds.
_SECRETS = ("secret_parameters", "credential")
_TASK_WAIT_S = 60.0


def default_dir() -> Path:
    """$SIDECAR_TEMPLATES_DIR; else `es_templates/` as installed from a wheel, inside the package; else the
    top-level `es_templates/` beside the package (a source checkout or an editable install)."""
    env = os.environ.get("SIDECAR_TEMPLATES_DIR")
    if env:
        return Path(env)
    package = Path(str(importlib.resources.files("sidecar")))  # a folder: torch and co. are never zip-imported
    shipped = package / "es_templates"
    return shipped if shipped.is_dir() else package.parent / "es_templates"


@dataclass(frozen=True)
class Template:
    kind: str
    name: str
    body: dict[str, Any]

    @property
    def path(self) -> str:
        return _KINDS[self.kind][0] + self.name

    def path_for(self, object_id: str) -> str:
        """The path of the engine's object by its generated id (ml-commons names are not ids)."""
        return _KINDS[self.kind][0] + object_id


def load(folder: Path) -> list[Template]:
    out = []
    for kind in _ORDER:
        for file in sorted((folder / kind).glob("*.json")):
            try:
                body = json.loads(file.read_text())
            except ValueError as e:
                raise ValueError(f"{file}: {e}") from e
            out.append(Template(kind, file.stem, body))
    if not out:
        raise FileNotFoundError(f"no templates under {folder} (expected {', '.join(_ORDER)}/*.json)")
    return out


def placeholders(body: Any) -> set[str]:
    """The `{{name}}` placeholders a template body holds (only the documented ones)."""
    if isinstance(body, dict):
        return set().union(*(placeholders(v) for v in body.values()))
    if isinstance(body, list):
        return set().union(*(placeholders(v) for v in body))
    return set(_PLACEHOLDER.findall(body)) if isinstance(body, str) else set()


def render(body: Any, values: Mapping[str, str]) -> Any:
    """``body`` with each placeholder that has a value replaced by it (in parsed JSON: a value needs no escaping);
    one without a value stays as it is."""
    if isinstance(body, dict):
        return {k: render(v, values) for k, v in body.items()}
    if isinstance(body, list):
        return [render(v, values) for v in body]
    if isinstance(body, str):
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), body)
    return body


def _filled(t: Template, known: Mapping[str, str]) -> Any:
    """The template's body with its placeholders filled, or None when one of them has no value yet (an optional one
    without a value takes its setting with it)."""
    body = _without_unset(t.body, {f"{{{{{name}}}}}" for name in _OPTIONAL if name not in known})
    return render(body, known) if placeholders(body) <= known.keys() else None


def _without_unset(body: Any, unset: set[str]) -> Any:
    """``body`` without the entries whose value is one of the ``unset`` placeholders, nor the objects that held only
    such entries."""
    if not isinstance(body, dict):
        return body
    out = {}
    for k, v in body.items():
        kept = _without_unset(v, unset)
        if not (isinstance(v, str) and v in unset) and not (isinstance(v, dict) and v and not kept):
            out[k] = kept
    return out


def apply(
    client: EngineClient, templates: list[Template], values: Mapping[str, str] | None = None
) -> Iterator[tuple[Template, str]]:
    """Install each template unless the engine already holds the same; yields (template, outcome): created,
    updated, unchanged, unsupported (the engine has no such API), or skipped (a placeholder has no value: the
    caller gave no sidecar URL or key, or what it needs was not installed)."""
    known = {k: v for k, v in (values or {}).items() if v}
    for t in templates:
        yield t, _apply_one(client, t, known)


def _apply_one(client: EngineClient, t: Template, known: dict[str, str]) -> str:
    if t.kind == "ml_connectors":
        return _apply_connector(client, t, known)
    if t.kind == "ml_models":
        return _apply_model(client, t, known)
    outcome = _apply_put(client, t, known)
    if t.kind == "ilm_policies" and outcome in ("created", "updated", "unchanged"):
        known["ilm_policy"] = t.name  # the events index template names it in `index.lifecycle.name`
    return outcome


def _apply_put(client: EngineClient, t: Template, known: dict[str, str]) -> str:
    """An object the engine keeps under its name: GET it, compare, PUT it when it differs."""
    current = _current(client, t)
    if current is _UNSUPPORTED:
        return "unsupported"
    body = _filled(t, known)
    if body is None:
        return "skipped"
    if current is not None and _contains(_flat(current), _flat(_public(body))):
        return "unchanged"
    if current is not None and t.kind == "inference_endpoints":
        client.request("DELETE", t.path)  # an endpoint's settings are not updatable in place (only its secrets)
    try:
        client.request("PUT", _put_path(t, current), body)
    except EngineError as e:
        if e.status in (400, 404, 405) and _no_handler(e.body):
            return "unsupported"
        raise
    return "created" if current is None else "updated"


def _put_path(t: Template, current: dict[str, Any] | None) -> str:
    """ISM updates a policy only with the sequence number and primary term of the version it replaces."""
    if t.kind == "ism_policies" and current is not None:
        return f"{t.path}?if_seq_no={current['_seq_no']}&if_primary_term={current['_primary_term']}"
    return t.path


_UNSUPPORTED: dict[str, Any] = {}


def _current(client: EngineClient, t: Template) -> dict[str, Any] | None:
    reply = client.request("GET", t.path, ok=(400, 404, 405))
    if not isinstance(reply, dict) or _is_error(reply):
        return _UNSUPPORTED if _no_handler(reply) else None
    _, list_key, body_key = _KINDS[t.kind]
    if t.kind in ("search_pipelines", "ilm_policies"):  # GET <kind>/<id> -> {"<id>": {...}} ({"policy": ...} for ILM)
        by_id: dict[str, Any] | None = reply.get(t.name)
        return by_id
    if t.kind == "ism_policies":  # {"_id", "_seq_no", "_primary_term", "policy": {...}}: the numbers guard an update
        return reply if "policy" in reply else None
    if list_key is None:  # GET _scripts/<id> -> {"_id", "found", "script": {...}}
        return {"script": reply["script"]} if reply.get("found") else None
    for entry in reply.get(list_key, []):
        if entry.get("name", entry.get("inference_id")) == t.name:
            body: dict[str, Any] = entry[body_key] if body_key else entry
            return body
    return None


# -- OpenSearch ml-commons: objects with generated ids, found by name --------------------------------------


def _apply_connector(client: EngineClient, t: Template, known: dict[str, str]) -> str:
    """Create the connector, or update it in place (its id, and so the model on it, stays); learns connector_id."""
    found = _find_by_name(client, "/_plugins/_ml/connectors/_search", t.name)
    if found is _UNSUPPORTED:
        return "unsupported"
    body = _filled(t, known)
    if body is None:
        return "skipped"
    if found is None:
        known["connector_id"] = client.request("POST", "/_plugins/_ml/connectors/_create", body)["connector_id"]
        return "created"
    known["connector_id"] = found["_id"]
    if _contains(_flat(found["_source"]), _flat(_public(body))):
        return "unchanged"
    client.request("PUT", t.path_for(found["_id"]), body)  # refused while a model on it is deployed: undeploy it
    return "updated"


def _apply_model(client: EngineClient, t: Template, known: dict[str, str]) -> str:
    """Register and deploy the remote model on the connector (or deploy it again); learns model_id."""
    query = {
        "bool": {"must": [{"term": {"name.keyword": t.name}}], "must_not": [{"exists": {"field": "chunk_number"}}]}
    }
    found = _find_by_name(client, "/_plugins/_ml/models/_search", t.name, query)
    if found is _UNSUPPORTED:
        return "unsupported"
    body = _filled(t, known)
    if body is None:
        return "skipped"
    if found is None:
        reply = client.request("POST", "/_plugins/_ml/models/_register?deploy=true", body)
        known["model_id"] = reply.get("model_id") or _task_model_id(client, reply["task_id"])
        return "created"
    model_id = known["model_id"] = found["_id"]
    source = found["_source"]
    if source.get("connector_id") != body["connector_id"]:
        client.request("PUT", t.path_for(model_id), {"connector_id": body["connector_id"]})
    elif source.get("model_state") == "DEPLOYED":
        return "unchanged"
    client.request("POST", t.path_for(model_id) + "/_deploy")
    return "updated"


def _find_by_name(
    client: EngineClient, path: str, name: str, query: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """The first hit named ``name`` (``_id`` and ``_source``), None, or _UNSUPPORTED where the API is missing."""
    search = {"query": query or {"term": {"name.keyword": name}}, "size": 1}
    reply = client.request("POST", path, search, ok=(400, 404, 405))
    if not isinstance(reply, dict) or _is_error(reply):  # 404: ml-commons has not created its index yet
        return _UNSUPPORTED if _no_handler(reply) else None
    hits: list[dict[str, Any]] = reply.get("hits", {}).get("hits", [])
    return hits[0] if hits else None


def _task_model_id(client: EngineClient, task_id: str) -> str:
    """Older ml-commons answer a registration with a task only: wait for it to name the model."""
    deadline = time.monotonic() + _TASK_WAIT_S
    while True:
        task = client.request("GET", f"/_plugins/_ml/tasks/{task_id}")
        if task.get("model_id"):
            return str(task["model_id"])
        if task.get("state") == "FAILED" or time.monotonic() > deadline:
            raise EngineError("GET", f"/_plugins/_ml/tasks/{task_id}", 200, {"error": task})
        time.sleep(0.5)


def _public(body: Any) -> Any:
    """``body`` without the secrets an engine keeps to itself (it never returns them to compare with)."""
    if isinstance(body, dict):
        return {k: _public(v) for k, v in body.items() if k not in _SECRETS}
    if isinstance(body, list):
        return [_public(v) for v in body]
    return body


def _no_handler(reply: Any) -> bool:
    """The engine has no such API: "no handler found for uri" (both engines and osmem), or a path that exists
    for other methods only ("Incorrect HTTP method")."""
    text = json.dumps(reply)
    return "no handler" in text or "Incorrect HTTP method" in text


def _is_error(reply: dict[str, Any]) -> bool:
    return "error" in reply or reply.get("found") is False


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    """Dotted paths to string values: `settings.index.x` and `settings.x` compare equal, as do 1 and "1". A list is
    its length and its items by position, so an item may hold more than was sent (the defaults an engine adds, such as
    ISM's `retry` on each action) and still compare equal, while an item added or removed does not."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.update(_flat(v, key.replace("settings.index.", "settings.")))
    elif isinstance(obj, list):
        out[f"{prefix}.#"] = str(len(obj))
        for i, v in enumerate(obj):
            out.update(_flat(v, f"{prefix}[{i}]"))
    else:
        out[prefix] = json.dumps(obj) if isinstance(obj, str) and obj.startswith("{") else str(obj).lower()
    return out


def _contains(actual: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(actual.get(k) == v for k, v in wanted.items())
