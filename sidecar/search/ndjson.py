"""_msearch bodies: NDJSON pairs of header and search body."""

from __future__ import annotations

from typing import Any

from sidecar.search.body import read_json, write_json


def parse_msearch(raw: bytes) -> list[tuple[dict[str, Any], dict[str, Any]]] | None:
    """Header/body pairs, or None if the body is not well-formed (the engine then says why).

    As the engines read it: one line each, the final newline optional, and an empty header line an empty
    header (the path's indices). An empty body line is left to the engine to judge; so is a line that is not
    JSON we read as the engine does (``search.body``)."""
    lines = raw.split(b"\n")
    if lines and not lines[-1].strip():
        lines.pop()
    if not lines or len(lines) % 2:
        return None
    try:
        items = [read_json(line) if line.strip() or n % 2 else {} for n, line in enumerate(lines)]
    except (ValueError, UnicodeDecodeError):
        return None
    if not all(isinstance(i, dict) for i in items):
        return None
    return list(zip(items[0::2], items[1::2], strict=True))


def dump_msearch(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> bytes | None:
    """The NDJSON body, or None where an item nests too deep to write back."""
    lines = [write_json(v) for pair in pairs for v in pair]
    if any(line is None for line in lines):
        return None
    return b"".join(line + b"\n" for line in lines if line is not None)


def item_indices(header: dict[str, Any], path_indices: tuple[str, ...]) -> tuple[str, ...]:
    index = header.get("index")
    if isinstance(index, str):
        return tuple(i for i in index.split(",") if i)
    if isinstance(index, list):
        return tuple(i for i in index if isinstance(i, str))
    return path_indices
