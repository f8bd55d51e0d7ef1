"""Find the user's query text inside an engine query, and resolve dotted paths."""

from __future__ import annotations

from typing import Any

# Full-text leaf queries whose text is what the user typed.
_TEXT_KEYS = {
    "match": "query",
    "match_phrase": "query",
    "match_phrase_prefix": "query",
    "match_bool_prefix": "query",
    "multi_match": "query",
    "query_string": "query",
    "simple_query_string": "query",
    "combined_fields": "query",
}
# Compound queries and the keys under which their scoring children live.
_COMPOUND: dict[str, tuple[str, ...]] = {
    "bool": ("must", "should", "filter"),
    "dis_max": ("queries",),
    "function_score": ("query",),
    "script_score": ("query",),
    "constant_score": ("filter",),
    "boosting": ("positive",),
    "nested": ("query",),
}


def find_query_text(query: Any) -> str | None:
    """The first full-text query's text, depth first, in the order the engine would read them.

    Found in match, match_phrase, match_phrase_prefix, match_bool_prefix, multi_match, query_string,
    simple_query_string and combined_fields; looked for through bool (must, should, filter), dis_max,
    function_score, script_score, constant_score, boosting (positive) and nested.
    """
    if not isinstance(query, dict):
        return None
    for kind, value in query.items():
        if kind in _TEXT_KEYS:
            text = _leaf_text(kind, value)
            if text:
                return text
        elif kind in _COMPOUND and isinstance(value, dict):
            for key in _COMPOUND[kind]:
                children = value.get(key)
                for child in children if isinstance(children, list) else [children]:
                    text = find_query_text(child)
                    if text:
                        return text
    return None


def _leaf_text(kind: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if kind in ("multi_match", "query_string", "simple_query_string", "combined_fields"):
        text = value.get("query")
    else:  # {"match": {"field": "text"}} or {"match": {"field": {"query": "text"}}}
        inner = next(iter(value.values()), None) if len(value) >= 1 else None
        text = inner.get("query") if isinstance(inner, dict) else inner
    return text.strip() or None if isinstance(text, str) else None


_MISSING = object()


def resolve_path(doc: Any, path: str) -> Any:
    """``a.b.0.c`` in nested dicts and lists; dict keys that contain dots are tried whole first."""
    if isinstance(doc, dict) and path in doc:
        return doc[path]
    head, dot, rest = path.partition(".")
    if isinstance(doc, dict):
        for split in range(len(path), 0, -1):  # longest key first: "resource.id" style keys
            key = path[:split]
            if key in doc and (split == len(path) or path[split] == "."):
                value = resolve_path(doc[key], path[split + 1 :]) if split < len(path) else doc[key]
                if value is not _MISSING:
                    return value
        return _MISSING
    if isinstance(doc, list) and head.isascii() and head.isdigit() and int(head) < len(doc):
        return resolve_path(doc[int(head)], rest) if dot else doc[int(head)]
    return _MISSING


def is_missing(value: Any) -> bool:
    return value is _MISSING
