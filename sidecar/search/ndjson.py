"""_msearch bodies: NDJSON pairs of header and search body."""

from __future__ import annotations

import json
from typing import Any


def parse_msearch(raw: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """Header/body pairs, or None if the body is not well-formed (the engine then says why).

    As the engines read it: one line each, the final newline optional, and an empty header line an empty
    header (the path's indices). An empty body line is left to the engine to judge."""
    lines = raw.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    if not lines or len(lines) % 2:
        return None
    try:
        items = [json.loads(line) if line.strip() or n % 2 else {} for n, line in enumerate(lines)]
    except (ValueError, UnicodeDecodeError):
        return None
    if not all(isinstance(i, dict) for i in items):
        return None
    return list(zip(items[0::2], items[1::2], strict=True))


def dump_msearch(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> bytes:
    return b"".join(json.dumps(h).encode() + b"\n" + json.dumps(b).encode() + b"\n" for h, b in pairs)


def item_indices(header: dict[str, Any], path_indices: tuple[str, ...]) -> tuple[str, ...]:
    index = header.get("index")
    if isinstance(index, str):
        return tuple(i for i in index.split(",") if i)
    if isinstance(index, list):
        return tuple(i for i in index if isinstance(i, str))
    return path_indices
