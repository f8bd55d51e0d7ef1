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
    function_score, script_score, constant_score, boosting (positive) and nested. An explicit stack, not
    recursion: a query nested as deep as the engine allows is walked like a flat one.
    """
    stack = [query]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        children: list[Any] = []
        for kind, value in node.items():
            if kind in _TEXT_KEYS:
                text = _leaf_text(kind, value)
                if text:
                    return text
            elif kind in _COMPOUND and isinstance(value, dict):
                for key in _COMPOUND[kind]:
                    found = value.get(key)
                    children.extend(found if isinstance(found, list) else [found])
            if children:  # this clause's children come before the node's later clauses
                stack.append({k: v for k, v in _after(node, kind)})
                break
        stack.extend(reversed(children))
    return None


def _after(node: dict[str, Any], kind: str) -> list[tuple[str, Any]]:
    items = list(node.items())
    return items[[k for k, _ in items].index(kind) + 1 :]


def _leaf_text(kind: str, value: Any) -> str | None:
    if not isinstance(value, dict):
        return None
    if kind in ("multi_match", "query_string", "simple_query_string", "combined_fields"):
        text = value.get("query")
    else:  # {"match": {"field": "text"}} or {"match": {"field": {"query": "text"}}}
        inner = next(iter(value.values()), None) if len(value) >= 1 else None
        text = inner.get("query") if isinstance(inner, dict) else inner
    return text.strip() or None if isinstance(text, str) else None


def usable_text(text: str) -> str:
    """``text`` as a model can read it: a lone surrogate (JSON allows "\\ud800", UTF-8 cannot encode it) becomes
    U+FFFD, as a decoder replaces an invalid byte; a high and a low one in a row are the character they make."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return text


_MISSING = object()


def resolve_path(doc: Any, path: str) -> Any:
    """``a.b.0.c`` in nested dicts and lists; dict keys that contain dots are tried whole first (the longest key
    first, then shorter ones if the rest does not resolve). A search over (node, offset) states, each visited
    once: linear in the path for ordinary documents, never exponential for crafted ones."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    seen: set[tuple[int, int]] = set()
    while stack:
        node, at = stack.pop()
        if (id(node), at) in seen:
            continue
        seen.add((id(node), at))
        rest = path[at:] if at else path
        if isinstance(node, dict):
            if rest in node:
                return node[rest]
            stack.extend((node[key], at + len(key) + 1) for key in prefix_keys(node, rest))
        elif isinstance(node, list):
            head, dot, _ = rest.partition(".")
            if head.isascii() and head.isdigit() and len(head) < 19 and int(head) < len(node):
                if not dot:
                    return node[int(head)]
                stack.append((node[int(head)], at + len(head) + 1))
    return _MISSING


def prefix_keys(node: dict[str, Any], rest: str) -> list[str]:
    """The keys of ``node`` that ``rest`` starts with, followed by a dot; shortest first (tried last). Found
    from whichever is fewer, the node's keys or the dots in ``rest``."""
    if len(node) < rest.count("."):
        keys = [k for k in node if isinstance(k, str) and rest.startswith(k) and rest[len(k) : len(k) + 1] == "."]
        return sorted(keys, key=len)
    dots = [i for i, c in enumerate(rest) if c == "."]
    return [rest[:i] for i in dots if rest[:i] in node]


def is_missing(value: Any) -> bool:
    return value is _MISSING
