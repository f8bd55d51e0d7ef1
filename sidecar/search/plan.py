"""Decide whether a search is reranked, and rewrite it for the engine: pure functions of the request."""

from __future__ import annotations

import copy
import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from sidecar.config import Rule, ScoringOptions, Settings
from sidecar.errors import BadRequest, ParsingError
from sidecar.search.query_text import find_query_text, is_missing, resolve_path


@dataclass(frozen=True)
class Plan:
    """How to rerank one search."""

    query: str
    fields: tuple[str, ...]
    window: int  # hits fetched from the engine
    start: int  # the client's `from`
    size: int  # the client's `size`
    model: str | None
    scoring: ScoringOptions
    separator: str = "\n"
    array_mode: str = "join"
    strict: bool = False
    explain: bool = False
    source: str = "rule"  # rule | ext | retriever
    hidden_fields: tuple[str, ...] = ()  # fields we asked the engine for that the client must not see
    hide_source: bool = False  # the client asked for no _source at all
    timeout_s: float = 10.0  # model deadline


@dataclass
class Decision:
    """What to send upstream. ``plan`` is None when the search passes through (``reason`` says why)."""

    body: dict[str, Any] | None  # None: forward the client's bytes untouched
    plan: Plan | None = None
    reason: str | None = None
    drop_params: tuple[str, ...] = field(default=())


# Request features with which a reranked page would not mean what the client asked for.
_SKIP_KEYS = (
    ("scroll", "scroll"),
    ("search_after", "search_after"),
    ("pit", "pit"),
    ("collapse", "collapse"),
)


def decide(
    body: dict[str, Any],
    indices: Sequence[str],
    params: Mapping[str, str],
    settings: Settings,
    *,
    opt_out: bool,
    has_model: Callable[[str | None], bool],
) -> Decision:
    """The rerank decision for one `_search` body (or one `_msearch` item)."""
    if "ext" not in body and "retriever" not in body:  # the common case decides without copying the body
        if opt_out:
            return Decision(None, reason="disabled_by_header")
        if match_rule(settings.rules, indices) is None:
            return Decision(None, reason="no_rule")
    work = copy.deepcopy(body)
    ext_spec = _pop_ext(work)
    stripped = ext_spec is not None
    retriever = work.get("retriever")
    reranker = retriever.get("text_similarity_reranker") if isinstance(retriever, dict) else None

    def skip(reason: str) -> Decision:
        return Decision(work if stripped else None, reason=reason)

    if reranker is not None and not _inner_is_standard(reranker):
        return skip("retriever_not_standard")  # a real Elasticsearch may run it natively
    if opt_out:
        return skip("disabled_by_header")

    if ext_spec is not None:
        spec, source = _ext_spec(ext_spec, work), "ext"
    elif reranker is not None:
        work, spec = _from_retriever(work, reranker)
        source = "retriever"
    else:
        if match_rule(settings.rules, indices) is None:
            return skip("no_rule")
        spec, source = {}, "rule"
    rule = match_rule(settings.rules, indices)  # with ext or a retriever, a rule still gives the defaults

    reason = _unsupported(work, params)
    if reason:
        return skip(reason)

    query = spec.pop("query_text", None) or find_query_text(work.get("query")) or _q_param(params)
    if not query:
        return skip("no_query_text")
    if len(query) > settings.max_query_chars:
        raise BadRequest(f"query text of {len(query)} characters is over the maximum of {settings.max_query_chars}")

    model = spec.pop("model", None) or (rule.model if rule else None)
    if not has_model(model):
        raise BadRequest(f"[inference_id] unknown model [{model}]; configured: see the sidecar's `models` setting")

    size = _int_param(params, work, "size", 10)
    start = _int_param(params, work, "from", 0)
    if size == 0:
        return skip("size_0")
    requested = spec.pop("window_size", None)
    if requested is not None and requested > settings.max_window:
        raise BadRequest(f"[window_size] {requested} is over the maximum of {settings.max_window}")
    base = requested if requested is not None else (rule.window_size if rule else 100)
    window = min(max(base, start + size), settings.max_window)
    if start >= window:
        return skip("from_past_window")

    fields = tuple(spec.pop("fields", None) or (rule.fields if rule else ("text",)))
    scoring = _scoring(rule, spec)
    hidden, hide_source = _ensure_fields(work, fields)
    work["from"], work["size"] = 0, window
    plan = Plan(
        query=query,
        fields=fields,
        window=window,
        start=start,
        size=size,
        model=model,
        scoring=scoring,
        separator=rule.separator if rule else "\n",
        array_mode=rule.array_mode if rule else "join",
        strict=bool(spec.pop("strict", False)),
        explain=bool(work.get("explain") or params.get("explain") == "true"),
        source=source,
        hidden_fields=hidden,
        hide_source=hide_source,
        timeout_s=((rule.rerank_timeout_ms if rule else None) or settings.rerank_timeout_ms) / 1000,
    )
    return Decision(work, plan=plan, drop_params=("from", "size"))


def match_rule(rules: Sequence[Rule], indices: Sequence[str]) -> Rule | None:
    """The first rule whose patterns cover every index the request names (none named: `*` or `_all`)."""
    names = [i for i in indices if i] or ["_all"]
    for rule in rules:
        patterns = [p.strip() for p in rule.index.split(",") if p.strip()]
        if all(any(fnmatch.fnmatchcase(n, p) or (n == "_all" and p == "*") for p in patterns) for n in names):
            return rule
    return None


def _pop_ext(work: dict[str, Any]) -> dict[str, Any] | None:
    ext = work.get("ext")
    if not isinstance(ext, dict) or "rerank" not in ext:
        return None
    spec = ext.pop("rerank")
    if not ext:
        del work["ext"]
    if not isinstance(spec, dict):
        raise ParsingError("[ext.rerank] must be an object")
    return spec


_EXT_KEYS = {
    "query_context",
    "fields",
    "window_size",
    "model",
    "score_mode",
    "min_score",
    "combine_mode",
    "query_weight",
    "rerank_weight",
    "allow_rerank_failures",
}


def _ext_spec(ext: dict[str, Any], work: dict[str, Any]) -> dict[str, Any]:
    unknown = set(ext) - _EXT_KEYS
    if unknown:
        raise ParsingError(f"[ext.rerank] unknown key [{sorted(unknown)[0]}]")
    ctx = ext.get("query_context")
    if not isinstance(ctx, dict) or len(ctx.keys() & {"query_text", "query_text_path"}) != 1 or len(ctx) != 1:
        raise ParsingError("[ext.rerank.query_context] needs exactly one of [query_text] or [query_text_path]")
    if "query_text" in ctx:
        text = ctx["query_text"]
        if not isinstance(text, str) or not text.strip():
            raise BadRequest("[ext.rerank.query_context.query_text] must be a non-empty string")
    else:
        path = ctx["query_text_path"]
        text = resolve_path(work, path) if isinstance(path, str) else None
        if is_missing(text) or not isinstance(text, str) or not text.strip():
            raise BadRequest(f"[ext.rerank.query_context.query_text_path] [{path}] does not resolve to a string")
    spec = {k: v for k, v in ext.items() if k != "query_context"}
    spec["query_text"] = text
    if "allow_rerank_failures" in spec:
        spec["strict"] = spec.pop("allow_rerank_failures") is False
    return _typed(spec, "ext.rerank")


def _inner_is_standard(reranker: Any) -> bool:
    inner = reranker.get("retriever") if isinstance(reranker, dict) else None
    return isinstance(inner, dict) and set(inner) == {"standard"} and isinstance(inner["standard"], dict)


_RETRIEVER_KEYS = {
    "retriever",
    "field",
    "inference_text",
    "rank_window_size",
    "min_score",
    "inference_id",
    "allow_rerank_failures",
    "chunk_rescorer",
}


def _from_retriever(work: dict[str, Any], reranker: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """text_similarity_reranker{standard{...}} -> a plain search body plus our rerank spec."""
    unknown = set(reranker) - _RETRIEVER_KEYS
    if unknown:
        raise ParsingError(f"[text_similarity_reranker] unknown field [{sorted(unknown)[0]}]")
    text, fld = reranker.get("inference_text"), reranker.get("field")
    if not isinstance(text, str) or not text.strip():
        raise BadRequest("[text_similarity_reranker] [inference_text] must be a non-empty string")
    if not isinstance(fld, str) or not fld:
        raise BadRequest("[text_similarity_reranker] [field] must name a document field")
    standard = dict(reranker["retriever"]["standard"])
    body = {k: v for k, v in work.items() if k != "retriever"}
    flt = standard.pop("filter", None)
    query = standard.pop("query", {"match_all": {}})
    if flt is not None:
        query = {"bool": {"must": [query], "filter": flt if isinstance(flt, list) else [flt]}}
    body["query"] = query
    body.update(standard)  # sort, min_score, collapse, search_after, terminate_after...
    spec: dict[str, Any] = {"query_text": text, "fields": [fld]}
    if "rank_window_size" in reranker:
        spec["window_size"] = reranker["rank_window_size"]
    if "min_score" in reranker:
        spec["min_score"] = reranker["min_score"]
    if "inference_id" in reranker:
        spec["model"] = reranker["inference_id"]
    if "allow_rerank_failures" in reranker:
        spec["strict"] = reranker["allow_rerank_failures"] is False
    return body, _typed(spec, "text_similarity_reranker")


def _typed(spec: dict[str, Any], where: str) -> dict[str, Any]:
    checks: dict[str, Callable[[Any], bool]] = {
        "window_size": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
        "fields": lambda v: isinstance(v, list) and bool(v) and all(isinstance(f, str) and f for f in v),
        "model": lambda v: isinstance(v, str) and bool(v),
        "min_score": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "query_weight": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        "rerank_weight": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }
    for key, ok in checks.items():
        if key in spec and not ok(spec[key]):
            raise BadRequest(f"[{where}] invalid value for [{key}]: {spec[key]!r}")
    return spec


def _scoring(rule: Rule | None, spec: dict[str, Any]) -> ScoringOptions:
    base = ScoringOptions.model_validate(rule.model_dump(include=set(ScoringOptions.model_fields))) if rule else None
    overrides = {k: spec.pop(k) for k in list(spec) if k in ScoringOptions.model_fields}
    try:
        merged = {**(base.model_dump() if base else {}), **overrides}
        return ScoringOptions.model_validate(merged)
    except ValidationError as e:
        err = e.errors()[0]
        raise BadRequest(f"[rerank] invalid [{'.'.join(map(str, err['loc']))}]: {err['msg']}") from e


def _unsupported(work: dict[str, Any], params: Mapping[str, str]) -> str | None:
    if "scroll" in params:
        return "scroll"
    if "filter_path" in params:
        return "filter_path"
    for key, reason in _SKIP_KEYS:
        if work.get(key) is not None:
            return reason
    sort = work.get("sort", params.get("sort"))
    if sort is not None and not _sorts_by_score(sort):
        return "sort"
    if isinstance(work.get("retriever"), dict):
        return "retriever_not_reranker"
    return None


def _sorts_by_score(sort: Any) -> bool:
    items = sort if isinstance(sort, list) else [sort]
    if not items:
        return True
    first = items[0]
    if isinstance(first, str):
        return first.split(":")[0] == "_score" and len(items) == 1
    if isinstance(first, dict) and len(items) == 1 and set(first) == {"_score"}:
        order = first["_score"]
        return order == "desc" or (isinstance(order, dict) and order.get("order", "desc") == "desc")
    return False


def _q_param(params: Mapping[str, str]) -> str | None:
    q = params.get("q")
    return q.strip() or None if q else None


def _int_param(params: Mapping[str, str], body: dict[str, Any], key: str, default: int) -> int:
    raw = params.get(key, body.get(key, default))
    try:
        value = int(raw)
    except (TypeError, ValueError) as e:
        raise BadRequest(f"[{key}] must be a whole number, got [{raw}]") from e
    if value < 0:
        raise BadRequest(f"[{key}] must be 0 or more, got [{value}]")
    return value


def _ensure_fields(work: dict[str, Any], fields: tuple[str, ...]) -> tuple[tuple[str, ...], bool]:
    """Make the engine return the fields we score; say which ones the client must not see."""
    src = work.get("_source", True)
    if src is True or src is None:
        return (), False
    if src is False:
        work["_source"] = {"includes": list(fields)}
        return fields, True
    if isinstance(src, str):
        src = [src]
    if isinstance(src, list):
        includes, excludes = list(src), []
    elif isinstance(src, dict):
        includes = list(_as_list(src.get("includes", src.get("include", []))))
        excludes = list(_as_list(src.get("excludes", src.get("exclude", []))))
    else:
        return (), False
    hidden = tuple(f for f in fields if not source_visible(f, includes, excludes))
    if not hidden:
        return (), False
    new_includes = includes + [f for f in hidden if f not in includes] if includes else []
    new_excludes = [e for e in excludes if not any(_path_match(f, e) for f in hidden)]
    work["_source"] = {"includes": new_includes, "excludes": new_excludes}
    return hidden, False


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if value else []


def _path_match(path: str, pattern: str) -> bool:
    """As source filtering: a pattern matches the path itself or a parent object of it."""
    parts = path.split(".")
    return any(fnmatch.fnmatchcase(".".join(parts[:i]), pattern) for i in range(1, len(parts) + 1))


def source_visible(path: str, includes: Sequence[str], excludes: Sequence[str]) -> bool:
    included = not includes or any(_path_match(path, p) for p in includes)
    return included and not any(_path_match(path, p) for p in excludes)
