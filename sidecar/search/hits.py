"""Read document text out of hits, and splice reranked hits back into the engine's reply."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sidecar.config import ScoringOptions
from sidecar.search.plan import Plan
from sidecar.search.query_text import is_missing, prefix_keys, resolve_path, usable_text


def hit_texts(hit: dict[str, Any], plan: Plan) -> list[str]:
    """The texts to score for one hit: one joined text, or (array_mode=max) one per value."""
    return document_texts(hit, plan.fields, plan.separator, plan.array_mode)


def document_texts(hit: dict[str, Any], fields: Sequence[str], separator: str, array_mode: str) -> list[str]:
    """A hit's text as a rule reads it (also what `warm` embeds, so that serving finds it)."""
    values: list[str] = []
    for name in fields:
        returned = hit.get("fields")  # the engine's `fields` section, when the search asked for some
        value = returned.get(name) if isinstance(returned, dict) and name in returned else None
        if value is None:
            found = resolve_path(hit.get("_source") or {}, name)
            value = None if is_missing(found) else found
        values.extend(v for v in _strings(value) if v.strip())  # an empty title adds no separator
    if array_mode == "max" and len(values) > 1:
        return values
    return [separator.join(values)]


def _strings(value: Any) -> list[str]:
    """The scalar values in ``value``, arrays flattened in order (an explicit stack: any depth), objects skipped."""
    out: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        elif item is not None and not isinstance(item, dict):
            out.append(usable_text(str(item)))
    return out


def final_score(engine: float | None, model: float, opts: ScoringOptions) -> float:
    if opts.score_mode == "replace":
        return model
    if opts.score_mode == "normalize":  # Elasticsearch's text_similarity_reranker normalisation
        return max(model, 0.0) + (1.0 if model >= 0 else math.exp(model))
    q, r = opts.query_weight * (engine or 0.0), opts.rerank_weight * model
    return {
        "total": q + r,
        "multiply": q * r,
        "avg": (q + r) / 2,
        "max": max(q, r),
        "min": min(q, r),
    }[opts.combine_mode]


def normalized(values: Sequence[float], how: str) -> list[float]:
    """Scores of one search rescaled over its reranked hits: min_max to [0, 1] (all equal: 1), z_score to
    mean 0 and deviation 1 (all equal: 0)."""
    if how == "none" or not values:
        return list(values)
    if how == "min_max":
        low, high = min(values), max(values)
        return [(v - low) / (high - low) if high > low else 1.0 for v in values]
    mean = sum(values) / len(values)
    deviation = math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))
    return [(v - mean) / deviation if deviation > 0 else 0.0 for v in values]


def final_scores(engine: Sequence[float | None], model: Sequence[float], opts: ScoringOptions) -> list[float]:
    """The reranked hits' scores, with the engine's and the model's normalized first when asked to."""
    if opts.score_mode != "combine" or opts.normalization == "none":
        return [final_score(e, m, opts) for e, m in zip(engine, model, strict=True)]
    e_norm = normalized([e or 0.0 for e in engine], opts.normalization)
    m_norm = normalized(list(model), opts.normalization)
    return [final_score(e, m, opts) for e, m in zip(e_norm, m_norm, strict=True)]


def splice(reply: dict[str, Any], plan: Plan, model_scores: Sequence[float], model_name: str) -> dict[str, Any]:
    """Reorder the window by the model, keep [from, from + size); everything else stays the engine's.

    ``model_scores`` may cover only a head of the window (a latency budget ran out): the rest follows in the
    engine's order below it, each hit scored one less than the one above, so that ``_score`` never rises
    down the list in any score mode. ``min_score`` drops any hit, head or tail, whose final score is below it.
    """
    hits_obj = reply.get("hits")
    if not isinstance(hits_obj, dict):
        return reply
    window: list[dict[str, Any]] = hits_obj.get("hits") or []
    head = len(model_scores)
    ranked: list[tuple[Any, int, Any, dict[str, Any], str]] = []  # (final score, engine rank, engine score...)
    engine_scores = [hit.get("_score") for hit in window[:head]]
    why = f"reranked by model [{model_name}] ({plan.scoring.score_mode})"
    for rank, score in enumerate(final_scores(engine_scores, model_scores, plan.scoring)):
        ranked.append((score, rank, engine_scores[rank], window[rank], why))
    ranked.sort(key=lambda t: (-t[0], t[1]))  # ties keep the engine's order
    floor = ranked[-1][0] if ranked else None
    for n, hit in enumerate(window[head:]):
        engine = hit.get("_score")
        below = floor - (n + 1) if floor is not None else engine
        why = f"not reranked: below the reranked head of {head} in a window of {len(window)}"
        ranked.append((below, head + n, engine, hit, why))
    if plan.scoring.min_score is not None:
        ranked = [t for t in ranked if t[0] is not None and t[0] >= plan.scoring.min_score]
    out = []
    for score, rank, engine, hit, why in ranked[plan.start : plan.start + plan.size]:
        hit = dict(hit)
        hit["_score"] = score
        _hide(hit, plan)
        if plan.explain:
            hit["_explanation"] = {
                "value": score,
                "description": f"{why}; engine score [{engine}], engine rank [{rank + 1}]",
                "details": [hit["_explanation"]] if "_explanation" in hit else [],
            }
        out.append(hit)
    hits_obj["hits"] = out
    hits_obj["max_score"] = ranked[0][0] if ranked else None
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
    source = dict(source)  # the objects on each hidden path are copied, nothing else: the reply may be shared
    for path in plan.hidden_fields:
        _delete_path(source, path)
    hit["_source"] = source


def _delete_path(node: dict[str, Any], path: str) -> None:
    """Delete ``path`` from ``node``, copying each object it goes through (the longest key first, as
    resolve_path reads them); objects it leaves empty go too."""
    trail: list[tuple[dict[str, Any], str]] = []
    while path not in node:
        keys = prefix_keys(node, path)
        if not keys or not isinstance(node[keys[-1]], dict):
            return
        key = keys[-1]
        node[key] = child = dict(node[key])
        trail.append((node, key))
        node, path = child, path[len(key) + 1 :]
    del node[path]
    for parent, key in reversed(trail):
        if parent[key]:
            break
        del parent[key]
