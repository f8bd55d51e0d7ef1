"""Search bodies read as the engine reads them: JSON that the engine would accept, or nothing.

Python's ``json`` is laxer than the engines' parser: it takes ``NaN`` and ``Infinity``, turns ``1e999`` into
infinity (which it would then write back as ``Infinity``, not JSON), and fails with ``RecursionError`` on
nesting the engine accepts. A body any of this applies to is not ours to read: it goes to the engine
untouched, and the engine answers it in its own words.
"""

from __future__ import annotations

import json
import math
from typing import Any

_NOT_OURS = ValueError("not a body we read")


def _refuse(literal: str) -> Any:
    raise _NOT_OURS


def _finite(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise _NOT_OURS
    return value


def read_json(raw: bytes) -> Any:
    """The JSON value, or raise ValueError where the engine's reading and ours could differ."""
    try:
        return json.loads(raw, parse_constant=_refuse, parse_float=_finite)
    except RecursionError as e:
        raise ValueError("nested deeper than the sidecar reads") from e


def read_object(raw: bytes) -> dict[str, Any] | None:
    """A JSON object (an empty body is an empty search), or None: not JSON we read, or not an object."""
    if not raw.strip():
        return {}
    try:
        value = read_json(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def write_json(value: Any) -> bytes | None:
    """The bytes for the engine, or None where ``value`` nests too deep to write back."""
    try:
        return json.dumps(value, allow_nan=False).encode()
    except RecursionError:
        return None
