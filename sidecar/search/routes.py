"""Which requests are searches we may rerank."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote


@dataclass(frozen=True)
class SearchRoute:
    kind: Literal["search", "msearch", "template"]
    indices: tuple[str, ...]  # as the path names them; empty means all


def search_route(method: str, path: str) -> SearchRoute | None:
    """``[/{index}]/_search``, ``[/{index}]/_msearch`` and ``[/{index}]/_search/template`` with GET or POST;
    anything else is not ours."""
    if method not in ("GET", "POST"):
        return None
    parts = path.strip("/").split("/")
    if parts[-2:] == ["_search", "template"]:
        route = search_route(method, "/".join(parts[:-1]))
        return None if route is None else SearchRoute("template", route.indices)
    if len(parts) == 1 and parts[0] in ("_search", "_msearch"):
        return SearchRoute(parts[0][1:], ())  # type: ignore[arg-type]
    named = parts[0] and (not parts[0].startswith("_") or parts[0] == "_all")  # _all: every index, by name
    if len(parts) == 2 and parts[1] in ("_search", "_msearch") and named:
        indices = tuple(i for i in unquote(parts[0]).split(",") if i)
        return SearchRoute(parts[1][1:], indices)  # type: ignore[arg-type]
    return None
