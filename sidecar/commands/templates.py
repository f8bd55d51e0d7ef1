"""`rerank-sidecar templates apply`: install es_templates/ into an engine (directly or through the sidecar)."""

from __future__ import annotations

import argparse
import os
import sys
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
    apply.add_argument(
        "--sidecar-url",
        help="the sidecar as the ENGINE reaches it, e.g. http://sidecar:8080: installs the engine's own rerank "
        "objects ({{sidecar_url}}); without it they are skipped",
    )
    apply.add_argument(
        "--rerank-api-key",
        default=os.environ.get(API_KEY_ENV),
        help=f"one of the sidecar's rerank_api_keys, for the engine to send ({{{{rerank_api_key}}}}; "
        f"default: ${API_KEY_ENV}, which keeps it out of the process list)",
    )
    apply.set_defaults(run=run_apply)


API_KEY_ENV = "SIDECAR_RERANK_API_KEY"


def run_apply(args: argparse.Namespace) -> int:
    client = EngineClient(args.target, headers=basic_auth(args.user))
    with reading("templates"):
        found = templates.load(args.dir or templates.default_dir())
    values = {"sidecar_url": (args.sidecar_url or "").rstrip("/"), "rerank_api_key": args.rerank_api_key or ""}
    skipped = False
    for template, outcome in templates.apply(client, found, values):
        print(f"{outcome:12} {template.path}")
        skipped |= outcome == "skipped"
    if skipped:
        print(
            f"rerank-sidecar: skipped objects need --sidecar-url and --rerank-api-key (or ${API_KEY_ENV})",
            file=sys.stderr,
        )
    return 0
