"""Decide whether a search is reranked, and rewrite it for the engine: pure functions of the request.

``decide`` is four steps: parse the rerank syntax (``request.py``), match a rule, size the window, rewrite
the body the engine gets.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from sidecar.config import DEFAULT_MODEL, Rule, ScoringOptions, Settings, Stage
from sidecar.errors import BadRequest
from sidecar.search.query_text import find_query_text, usable_text
from sidecar.search.request import RerankRequest, Source, cut, has_inner_retriever, parse_ext, parse_retriever


@dataclass(frozen=True)
class Step:
    """One stage of the rerank: ``model`` reorders the top ``window`` hits of the order before it."""

    model: str
    window: int


@dataclass(frozen=True)
class Plan:
    """How to rerank one search."""

    query: str
    fields: tuple[str, ...]
    window: int  # hits fetched from the engine
    start: int  # the client's `from`
    size: int  # the client's `size`
    model: str
    scoring: ScoringOptions
    separator: str = "\n"
    array_mode: str = "join"
    strict: bool = False
    explain: bool = False
    source: Source = "rule"
    hidden_fields: tuple[str, ...] = ()  # fields we asked the engine for that the client must not see
    hide_source: bool = False  # the client asked for no _source at all
    timeout_s: float = 10.0  # model deadline
    budget_s: float | None = None  # latency budget: rerank the head that fits, None: the whole window
    steps: tuple[Step, ...] = ()  # a cascade; empty: one step, ``model`` on the whole window
    rule: str | None = None  # the index pattern of the rule that matched, if one did

    @property
    def cascade(self) -> tuple[Step, ...]:
        return self.steps or (Step(self.model, self.window),)


@dataclass
class Decision:
    """What to send upstream. ``plan`` is None when the search passes through (``reason`` says why)."""

    body: dict[str, Any] | None  # None: forward the client's bytes untouched
    plan: Plan | None = None
    reason: str | None = None
    drop_params: tuple[str, ...] = field(default=())
    # A rule in shadow mode: the search passes untouched (``body`` None); this is what would have been reranked.
    shadow: Plan | None = None
    shadow_body: dict[str, Any] | None = None
    shadow_sample: float = 0.0


# Request features with which a reranked page would not mean what the client asked for.
_SKIP_KEYS = (
    ("scroll", "scroll"),
    ("search_after", "search_after"),
    ("pit", "pit"),
    ("collapse", "collapse"),
)


def may_rerank(body: bytes, rules: Sequence[Rule], indices: Sequence[str]) -> bool:
    """A cheap look before any JSON parse: False means the search is certainly not reranked (no rule matches
    its indices and the body names neither rerank syntax, not even JSON-escaped)."""
    return match_rule(rules, indices) is not None or b"rerank" in body or b"\\u" in body


def decide(
    body: dict[str, Any],
    indices: Sequence[str],
    params: Mapping[str, str],
    settings: Settings,
    *,
    opt_out: bool,
    has_model: Callable[[str], bool],
) -> Decision:
    """The rerank decision for one `_search` body (or one `_msearch` item)."""
    if "ext" not in body and "retriever" not in body:  # the common case decides without copying the body
        if opt_out:
            return Decision(None, reason="disabled_by_header")
        if match_rule(settings.rules, indices) is None:
            return Decision(None, reason="no_rule")
    work = dict(body)  # decide replaces top-level keys only, never mutates what they hold (ext is copied)
    ext = _pop_ext(work)
    stripped = ext is not _NO_EXT

    def skip(reason: str) -> Decision:
        return Decision(work if stripped else None, reason=reason)

    if opt_out:
        return skip("disabled_by_header")
    request, skip_reason = _parse(work, ext)
    if request is not None and request.source == "retriever" and request.model and not has_model(request.model):
        return Decision(None, reason="inference_id_not_ours")  # the engine's own inference endpoint: its to run
    rule = match_rule(settings.rules, indices)  # with ext or a retriever, a rule still gives the defaults
    if skip_reason is None and request is None and rule is None:
        skip_reason = "no_rule"
    if skip_reason is None:
        skip_reason = _unsupported(work, params, inner=request is not None and request.source == "retriever")
    if skip_reason is not None:
        return skip(skip_reason)
    if request is None:
        request = RerankRequest(source="rule")
    query = request.query_text or find_query_text(work.get("query")) or _q_param(params)
    if not query:
        return skip("no_query_text")
    query = usable_text(query)
    if len(query) > settings.max_query_chars:
        raise BadRequest(f"query text of {len(query)} characters is over the maximum of {settings.max_query_chars}")
    model = request.model or (rule.model if rule else None) or DEFAULT_MODEL
    stages = request.stages or (rule.stages if rule else ())
    named = request.model or (rule.model if rule else None) or any(s.model for s in stages)
    if not named and not has_model(DEFAULT_MODEL):
        return skip("no_model")  # `model: none`: nothing to rerank with, the search is the engine's
    for name in {model, *(s.model for s in stages if s.model)}:
        if not has_model(name):
            raise BadRequest(
                f"[inference_id] unknown model [{cut(name)}]; configured: see the sidecar's `models` setting"
            )
    if stages:  # the first stage's window is the window; one stage is a plain rerank with its model
        request = replace(request, window_size=stages[0].window_size, stages=stages)
        model = stages[0].model or model if len(stages) == 1 else model
    window = _window(request, rule, work, params, settings)
    if isinstance(window, str):
        return skip(window)
    if not _source_readable(work.get("_source", True)):
        return skip("engine_judges_source")  # a shape the engine refuses: it says so, in its own words
    plan = _plan(work, request, rule, query, model, window, params, settings)
    if rule is not None and rule.mode == "shadow" and request.source == "rule":
        shadow = _rewrite(work, plan)
        return Decision(None, reason="shadow", shadow=plan, shadow_body=shadow, shadow_sample=rule.shadow_sample)
    return Decision(_rewrite(work, plan), plan=plan, drop_params=("from", "size"))


_NO_EXT = object()


def _pop_ext(work: dict[str, Any]) -> Any:
    """Take ``ext.rerank`` out of the body (the engine must never see it); ``_NO_EXT`` when there is none."""
    ext = work.get("ext")
    if not isinstance(ext, dict) or "rerank" not in ext:
        return _NO_EXT
    rest = {k: v for k, v in ext.items() if k != "rerank"}
    if rest:
        work["ext"] = rest
    else:
        del work["ext"]
    return ext["rerank"]


def _parse(work: dict[str, Any], ext: Any) -> tuple[RerankRequest | None, str | None]:
    """Step 1: the rerank syntax the search used, if any, or why it is not ours. A retriever is replaced in
    ``work`` by the plain search it stands for."""
    if ext is not _NO_EXT:
        return parse_ext(ext, work), None
    retriever = work.get("retriever")
    reranker = retriever.get("text_similarity_reranker") if isinstance(retriever, dict) else None
    if reranker is None:
        return None, None
    if not has_inner_retriever(reranker):
        return None, "retriever_not_ours"  # not a shape we read: the engine says what it makes of it
    request, plain = parse_retriever(reranker, work)
    work.clear()
    work.update(plain)
    return request, None


def match_rule(rules: Sequence[Rule], indices: Sequence[str]) -> Rule | None:
    """Step 2: the first rule whose patterns cover every index the request names (none named: `*` or `_all`)."""
    names = [i for i in indices if i] or ["_all"]
    for rule in rules:
        patterns = [p.strip() for p in rule.index.split(",") if p.strip()]
        if all(any(fnmatch.fnmatchcase(n, p) or (n == "_all" and p == "*") for p in patterns) for n in names):
            return rule
    return None


def _window(
    request: RerankRequest, rule: Rule | None, work: dict[str, Any], params: Mapping[str, str], settings: Settings
) -> tuple[int, int, int] | str:
    """Step 3: (from, size, window), or why the page cannot be reranked. The window covers the page."""
    size = _int_param(params, work, "size", 10)
    start = _int_param(params, work, "from", 0)
    if size is None or start is None or start + size > _MAX_RESULT_WINDOW:
        return "engine_judges_page"  # a value the engine may refuse: it says so, in its own words
    if size == 0:
        return "size_0"
    requested = request.window_size
    if requested is not None and requested > settings.max_window:
        raise BadRequest(f"[window_size] {requested} is over the maximum of {settings.max_window}")
    base = requested if requested is not None else (rule.window_size if rule else 100)
    window = min(max(base, start + size), settings.max_window)
    if start >= window:
        return "from_past_window"
    return start, size, window


def _plan(
    work: dict[str, Any],
    request: RerankRequest,
    rule: Rule | None,
    query: str,
    model: str,
    window: tuple[int, int, int],
    params: Mapping[str, str],
    settings: Settings,
) -> Plan:
    start, size, n = window
    fields = request.fields or (rule.fields if rule else ("text",))
    _, hidden, hide_source = _source_filter(work.get("_source", True), fields)
    return Plan(
        query=query,
        fields=fields,
        window=n,
        start=start,
        size=size,
        model=model,
        scoring=_scoring(rule, request.scoring),
        separator=rule.separator if rule else "\n",
        array_mode=rule.array_mode if rule else "join",
        strict=request.strict,
        explain=bool(work.get("explain") or params.get("explain") == "true"),
        source=request.source,
        hidden_fields=hidden,
        hide_source=hide_source,
        timeout_s=((rule.rerank_timeout_ms if rule else None) or settings.rerank_timeout_ms) / 1000,
        budget_s=_budget_s(request, rule, settings),
        steps=_steps(request.stages or (), model, n),
        rule=rule.index if rule else None,
    )


def _steps(stages: Sequence[Stage], model: str, window: int) -> tuple[Step, ...]:
    if len(stages) < 2:
        return ()
    return tuple(Step(s.model or model, min(s.window_size, window)) for s in stages)


def _budget_s(request: RerankRequest, rule: Rule | None, settings: Settings) -> float | None:
    """The request's budget, else the rule's, else the global one."""
    for ms in (request.budget_ms, rule.rerank_budget_ms if rule else None, settings.rerank_budget_ms):
        if ms is not None:
            return ms / 1000
    return None


def _rewrite(work: dict[str, Any], plan: Plan) -> dict[str, Any]:
    """Step 4: the body the engine gets: the whole window from the top, with the fields the model reads."""
    if "_source" in work:
        work["_source"] = _source_filter(work["_source"], plan.fields)[0]
    work["from"], work["size"] = 0, plan.window
    return work


def _scoring(rule: Rule | None, overrides: Mapping[str, Any]) -> ScoringOptions:
    base = rule.model_dump(include=set(ScoringOptions.model_fields)) if rule else {}
    try:
        return ScoringOptions.model_validate({**base, **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        raise BadRequest(f"[rerank] invalid [{'.'.join(map(str, err['loc']))}]: {err['msg']}") from e


def _unsupported(work: dict[str, Any], params: Mapping[str, str], *, inner: bool) -> str | None:
    """Why the page cannot be reranked; ``inner``: the body's retriever is the one our reranker wrapped."""
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
    if isinstance(work.get("retriever"), dict) and not inner:
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


_INT32 = 2**31 - 1
_MAX_RESULT_WINDOW = 10_000  # the engines' default index.max_result_window: a deeper page is the engine's to judge
_PARAM_INT = re.compile(r"[+-]?[0-9]+")
_BODY_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


def _int_param(params: Mapping[str, str], body: dict[str, Any], key: str, default: int) -> int | None:
    """``size`` or ``from`` read as the engine reads it, or None where the engine would refuse the value.

    A URL parameter is a whole number; in the body a number or a numeric string, a fraction truncated (as
    Jackson's coercion does), within a 32-bit int; a boolean, null, array or object is refused; so is a
    negative value."""
    if key in params:
        raw = params[key]
        value = int(raw) if _PARAM_INT.fullmatch(raw) and len(raw) < 20 else None
    else:
        value = _body_int(body.get(key, default))
    return value if value is not None and 0 <= value <= _INT32 else None


def _body_int(raw: Any) -> int | None:
    if isinstance(raw, bool):
        return None
    if isinstance(raw, int):
        return raw
    if isinstance(raw, str) and len(raw) < 40 and _BODY_NUMBER.fullmatch(raw):
        raw = float(raw)
    if isinstance(raw, float) and math.isfinite(raw) and abs(raw) <= _INT32:
        return int(raw)
    return None


def _source_filter(src: Any, fields: tuple[str, ...]) -> tuple[Any, tuple[str, ...], bool]:
    """The client's ``_source`` filter widened so that the engine returns the fields we score: (the filter to
    send, the fields the client must not see, whether the client asked for no ``_source`` at all)."""
    if src is True or src is None:
        return src, (), False
    if src is False:
        return {"includes": list(fields)}, fields, True
    if isinstance(src, str):
        src = [src]
    if isinstance(src, list):
        includes, excludes = list(src), []
    elif isinstance(src, dict):
        includes = list(_as_list(src.get("includes", src.get("include", []))))
        excludes = list(_as_list(src.get("excludes", src.get("exclude", []))))
    else:
        return src, (), False
    hidden = tuple(f for f in fields if not source_visible(f, includes, excludes))
    if not hidden:
        return src, (), False
    new_includes = includes + [f for f in hidden if f not in includes] if includes else []
    new_excludes = [e for e in excludes if not any(_path_match(f, e) for f in hidden)]
    return {"includes": new_includes, "excludes": new_excludes}, hidden, False


def _source_readable(src: Any) -> bool:
    """A ``_source`` value of a shape the engine reads: a boolean, a pattern or a list of them, or an object
    of ``includes``/``excludes`` (or ``include``/``exclude``) that are patterns or lists of them."""

    def patterns(value: Any) -> bool:
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))

    if isinstance(src, bool | str) or src is None:
        return True
    if isinstance(src, list):
        return patterns(src)
    if isinstance(src, dict):
        return set(src) <= {"includes", "excludes", "include", "exclude"} and all(map(patterns, src.values()))
    return False


def _as_list(value: Any) -> list[str]:
    return [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if value else []


def _path_match(path: str, pattern: str) -> bool:
    """As source filtering: a pattern matches the path itself or a parent object of it."""
    ends = [i for i, c in enumerate(path) if c == "."] + [len(path)]
    return any(fnmatch.fnmatchcase(path[:i], pattern) for i in ends)


def source_visible(path: str, includes: Sequence[str], excludes: Sequence[str]) -> bool:
    included = not includes or any(_path_match(path, p) for p in includes)
    return included and not any(_path_match(path, p) for p in excludes)
