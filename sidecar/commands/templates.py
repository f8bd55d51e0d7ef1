"""`rerank-sidecar templates apply`: install es_templates/ into an engine (directly or through the sidecar)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidecar.commands.errors import reading
from sidecar.tools import templates
from sidecar.tools.engine_client import EngineClient, basic_auth


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("templates", help="index, component and search templates")
    actions = parser.add_subparsers(dest="action", required=True)
    apply = actions.add_parser("apply", help="install es_templates/ (idempotent; reports what changed)")
    apply.add_argument("--target", required=True, help="engine or sidecar URL, e.g. http://localhost:9200")
    apply.add_argument("--dir", type=Path, default=None, help="templates folder (default: es_templates/)")
    apply.add_argument("--user", help="basic auth as USER:PASSWORD (or set an Authorization header upstream)")
    apply.set_defaults(run=run_apply)


def run_apply(args: argparse.Namespace) -> int:
    client = EngineClient(args.target, headers=basic_auth(args.user))
    with reading("templates"):
        found = templates.load(args.dir or templates.default_dir())
    for template, outcome in templates.apply(client, found):
        print(f"{outcome:12} {template.path}")
    return 0
