"""Flags generated from the Settings model, so every flag is also an env var and a YAML key."""

from __future__ import annotations

import argparse
from typing import Any, get_args, get_origin

from sidecar.config import Settings

_COMPOUND = (dict, tuple, list)


def _is_flag(annotation: Any) -> bool:
    origin = get_origin(annotation)
    if origin in _COMPOUND or annotation in _COMPOUND:
        return False
    return not any(get_origin(a) in _COMPOUND for a in get_args(annotation))


def add_settings_flags(parser: argparse.ArgumentParser) -> None:
    for name, field in Settings.model_fields.items():
        if not _is_flag(field.annotation):
            continue
        flag = "--" + name.replace("_", "-")
        kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": field.description}
        if field.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        parser.add_argument(flag, **kwargs)


def settings_from_args(args: argparse.Namespace, **overrides: Any) -> Settings:
    """Flags > SIDECAR_* environment > YAML file > defaults.

    Bad config raises pydantic's ValidationError or ConfigFileError (the CLI exits 2 with one line)."""
    given = {k: v for k, v in vars(args).items() if k in Settings.model_fields}
    given.update(overrides)
    return Settings(**given)


def reference_table() -> str:
    """The settings reference of the README, generated from the model (a test keeps the README in sync)."""
    rows = ["| YAML key | flag | environment | default | what it does |", "|---|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, (), {}) else f"`{default}`"
        flag = f"`--{name.replace('_', '-')}`" if _is_flag(field.annotation) else "(file or env)"
        rows.append(f"| `{name}` | {flag} | `SIDECAR_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)
