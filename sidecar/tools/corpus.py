"""Corpora that need no download: the Python standard library's docstrings, or a JSONL file of the user's."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

Doc = dict[str, str]

# Modules that open windows, print on import, or only exist for tests and packaging.
_SKIP = frozenset(
    {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv", "lib2to3", "test"}
)
_MIN_CHARS = 40
_MAX_CHARS = 2000


def stdlib_docstrings() -> Iterator[Doc]:
    """One passage per documented public module, class, function and method of the standard library."""
    for name in sorted(sys.stdlib_module_names):
        if name in _SKIP or name.startswith("_"):
            continue
        module = _quiet_import(name)
        if module is None:
            continue
        yield from _passage(name, module)
        for attr, obj in sorted(vars(module).items()):
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isclass(obj):
                yield from _passage(f"{name}.{attr}", obj)
                for member, value in sorted(vars(obj).items()):
                    if not member.startswith("_") and (inspect.isfunction(value) or inspect.ismethoddescriptor(value)):
                        yield from _passage(f"{name}.{attr}.{member}", value)
            elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
                yield from _passage(f"{name}.{attr}", obj)


def _quiet_import(name: str) -> Any:
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except Exception:
        return None


def _passage(qualname: str, obj: object) -> Iterator[Doc]:
    doc = inspect.getdoc(obj)
    if doc and len(doc) >= _MIN_CHARS:
        yield {"_id": qualname, "title": qualname, "text": doc[:_MAX_CHARS]}


def read_jsonl(path: Path) -> Iterator[Doc]:
    """Documents from a JSONL file: one object per line with `text`, optional `_id` (or `id`) and `title`."""
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                text = raw["text"]
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: expected a JSON object with a `text` field") from e
            doc_id = raw.get("_id", raw.get("id", str(number)))
            yield {"_id": str(doc_id), "title": str(raw.get("title", "")), "text": str(text)}
