"""`es_templates/`: read the folder and install it into an engine, idempotently, reporting what changed."""

from __future__ import annotations

import importlib.resources
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidecar.tools.engine_client import EngineClient, EngineError

# Folder -> (API path, key holding the objects in a GET reply, key of the object body in each entry)
_KINDS = {
    "component_templates": ("/_component_template/", "component_templates", "component_template"),
    "index_templates": ("/_index_template/", "index_templates", "index_template"),
    "search_templates": ("/_scripts/", None, "script"),
}
_ORDER = ("component_templates", "index_templates", "search_templates")  # an index template needs its components


def default_dir() -> Path:
    """$SIDECAR_TEMPLATES_DIR; else `es_templates/` as installed from a wheel, inside the package; else the
    top-level `es_templates/` beside the package (a source checkout or an editable install)."""
    env = os.environ.get("SIDECAR_TEMPLATES_DIR")
    if env:
        return Path(env)
    package = Path(str(importlib.resources.files("sidecar")))  # a folder: torch and co. are never zip-imported
    shipped = package / "es_templates"
    return shipped if shipped.is_dir() else package.parent / "es_templates"


@dataclass(frozen=True)
class Template:
    kind: str
    name: str
    body: dict[str, Any]

    @property
    def path(self) -> str:
        return _KINDS[self.kind][0] + self.name


def load(folder: Path) -> list[Template]:
    out = []
    for kind in _ORDER:
        for file in sorted((folder / kind).glob("*.json")):
            try:
                body = json.loads(file.read_text())
            except ValueError as e:
                raise ValueError(f"{file}: {e}") from e
            out.append(Template(kind, file.stem, body))
    if not out:
        raise FileNotFoundError(f"no templates under {folder} (expected {', '.join(_ORDER)}/*.json)")
    return out


def apply(client: EngineClient, templates: list[Template]) -> Iterator[tuple[Template, str]]:
    """Install each template unless the engine already holds the same; yields (template, outcome)."""
    for t in templates:
        current = _current(client, t)
        if current is _UNSUPPORTED:
            yield t, "unsupported"
            continue
        if current is not None and _contains(_flat(current), _flat(t.body)):
            yield t, "unchanged"
            continue
        try:
            client.request("PUT", t.path, t.body)
        except EngineError as e:
            if e.status in (400, 404, 405) and "no handler" in json.dumps(e.body):
                yield t, "unsupported"
                continue
            raise
        yield t, "created" if current is None else "updated"


_UNSUPPORTED: dict[str, Any] = {}


def _current(client: EngineClient, t: Template) -> dict[str, Any] | None:
    reply = client.request("GET", t.path, ok=(400, 404, 405))
    if not isinstance(reply, dict) or _is_error(reply):
        text = json.dumps(reply)
        return _UNSUPPORTED if "no handler" in text else None
    _, list_key, body_key = _KINDS[t.kind]
    if list_key is None:  # GET _scripts/<id> -> {"_id", "found", "script": {...}}
        return {"script": reply["script"]} if reply.get("found") else None
    for entry in reply.get(list_key, []):
        if entry.get("name") == t.name:
            body: dict[str, Any] = entry[body_key]
            return body
    return None


def _is_error(reply: dict[str, Any]) -> bool:
    return "error" in reply or reply.get("found") is False


def _flat(obj: Any, prefix: str = "") -> dict[str, str]:
    """Dotted paths to string values: `settings.index.x` and `settings.x` compare equal, as do 1 and "1"."""
    out: dict[str, str] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            out.update(_flat(v, key.replace("settings.index.", "settings.")))
    elif isinstance(obj, list):
        out[prefix] = json.dumps([_flat(v) if isinstance(v, dict | list) else str(v) for v in obj], sort_keys=True)
    else:
        out[prefix] = json.dumps(obj) if isinstance(obj, str) and obj.startswith("{") else str(obj).lower()
    return out


def _contains(actual: dict[str, str], wanted: dict[str, str]) -> bool:
    return all(actual.get(k) == v for k, v in wanted.items())
