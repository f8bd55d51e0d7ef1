"""Which requests are searches we may rerank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote


@dataclass(frozen=True)
class SearchRoute:
    kind: Literal[
        "search", "msearch", "template", "msearch_template", "async_submit", "async_get", "async_status", "async_delete"
    ]
    indices: tuple[str, ...]  # as the path names them; empty means all
    async_id: str = ""  # the async search a poll, status or delete names


def search_route(method: str, path: str) -> SearchRoute | None:
    """``[/{index}]/_search``, ``[/{index}]/_msearch`` and ``[/{index}]/_search/template`` with GET or POST;
    anything else is not ours."""
    parts = path.strip("/").split("/")
    if parts[0] == "_async_search" and len(parts) in (2, 3):
        return _async_route(method, parts)
    if method not in ("GET", "POST"):
        return None
    if parts[-1] == "_async_search" and method == "POST":
        route = search_route(method, "/".join([*parts[:-1], "_search"]))
        return None if route is None else SearchRoute("async_submit", route.indices)
    if parts[-1] == "template" and len(parts) >= 2 and parts[-2] in ("_search", "_msearch"):
        route = search_route(method, "/".join(parts[:-1]))
        if route is None:
            return None
        return SearchRoute("template" if parts[-2] == "_search" else "msearch_template", route.indices)
    if len(parts) == 1 and parts[0] in ("_search", "_msearch"):
        return SearchRoute(parts[0][1:], ())  # type: ignore[arg-type]
    named = parts[0] and (not parts[0].startswith("_") or parts[0] == "_all")  # _all: every index, by name
    if len(parts) == 2 and parts[1] in ("_search", "_msearch") and named:
        indices = tuple(i for i in unquote(parts[0]).split(",") if i)
        return SearchRoute(parts[1][1:], indices)  # type: ignore[arg-type]
    return None


def _async_route(method: str, parts: list[str]) -> SearchRoute | None:
    """``GET /_async_search/{id}``, ``GET /_async_search/status/{id}`` and ``DELETE /_async_search/{id}``."""
    if len(parts) == 3:
        return SearchRoute("async_status", (), unquote(parts[2])) if method == "GET" and parts[1] == "status" else None
    kinds = {"GET": "async_get", "DELETE": "async_delete"}
    return SearchRoute(kinds[method], (), unquote(parts[1])) if method in kinds and parts[1] else None  # type: ignore[arg-type]
