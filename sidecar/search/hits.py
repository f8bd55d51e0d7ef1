"""Read document text out of hits, and splice reranked hits back into the engine's reply."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sidecar.config import ScoringOptions
from sidecar.search.plan import Plan
from sidecar.search.query_text import is_missing, resolve_path


def hit_texts(hit: dict[str, Any], plan: Plan) -> list[str]:
    """The texts to score for one hit: one joined text, or (array_mode=max) one per value."""
    values: list[str] = []
    for name in plan.fields:
        fields = hit.get("fields")
        value = fields.get(name) if isinstance(fields, dict) and name in fields else None
        if value is None:
            found = resolve_path(hit.get("_source") or {}, name)
            value = None if is_missing(found) else found
        values.extend(v for v in _strings(value) if v.strip())  # an empty title adds no separator
    if plan.array_mode == "max" and len(values) > 1:
        return values
    return [plan.separator.join(values)]


def _strings(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return []
    return [str(value)]


def final_score(engine: float | None, model: float, opts: ScoringOptions) -> float:
    if opts.score_mode == "replace":
        return model
    if opts.score_mode == "normalize":  # Elasticsearch's text_similarity_reranker normalisation
        return max(model, 0.0) + min(math.exp(model), 1.0)
    q, r = opts.query_weight * (engine or 0.0), opts.rerank_weight * model
    return {
        "total": q + r,
        "multiply": q * r,
        "avg": (q + r) / 2,
        "max": max(q, r),
        "min": min(q, r),
    }[opts.combine_mode]


def splice(reply: dict[str, Any], plan: Plan, model_scores: Sequence[float], model_name: str) -> dict[str, Any]:
    """Reorder the window by the model, keep [from, from + size); everything else stays the engine's."""
    hits_obj = reply.get("hits")
    if not isinstance(hits_obj, dict):
        return reply
    window: list[dict[str, Any]] = hits_obj.get("hits") or []
    scored = []
    for rank, (hit, s) in enumerate(zip(window, model_scores, strict=True)):
        engine = hit.get("_score")
        scored.append((final_score(engine, s, plan.scoring), rank, engine, hit))
    scored.sort(key=lambda t: (-t[0], t[1]))  # ties keep the engine's order
    if plan.scoring.min_score is not None:
        scored = [t for t in scored if t[0] >= plan.scoring.min_score]
    page = scored[plan.start : plan.start + plan.size]
    out = []
    for score, rank, engine, hit in page:
        hit = dict(hit)
        hit["_score"] = score
        _hide(hit, plan)
        if plan.explain:
            hit["_explanation"] = {
                "value": score,
                "description": f"reranked by model [{model_name}] ({plan.scoring.score_mode}); "
                f"engine score [{engine}], engine rank [{rank + 1}]",
                "details": [hit["_explanation"]] if "_explanation" in hit else [],
            }
        out.append(hit)
    hits_obj["hits"] = out
    hits_obj["max_score"] = scored[0][0] if scored else None
    return reply


def engine_page(reply: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """The engine's own order for the requested page (used when reranking falls back)."""
    hits_obj = reply.get("hits")
    if isinstance(hits_obj, dict):
        page = [dict(h) for h in (hits_obj.get("hits") or [])[plan.start : plan.start + plan.size]]
        for hit in page:
            _hide(hit, plan)
        hits_obj["hits"] = page
    return reply


def _hide(hit: dict[str, Any], plan: Plan) -> None:
    if plan.hide_source:
        hit.pop("_source", None)
        return
    source = hit.get("_source")
    if not plan.hidden_fields or not isinstance(source, dict):
        return
    source = _deep_copy_dicts(source)
    for path in plan.hidden_fields:
        _delete_path(source, path.split("."))
    hit["_source"] = source


def _deep_copy_dicts(value: dict[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy_dicts(v) if isinstance(v, dict) else v for k, v in value.items()}


def _delete_path(node: dict[str, Any], parts: list[str]) -> None:
    for split in range(len(parts), 0, -1):  # keys with dots first, as resolve_path reads them
        key = ".".join(parts[:split])
        if key not in node:
            continue
        if split == len(parts):
            del node[key]
        elif isinstance(node[key], dict):
            _delete_path(node[key], parts[split:])
            if not node[key]:
                del node[key]
        return
