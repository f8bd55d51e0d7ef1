"""`rerank-sidecar warm`: fill the embedding store (the `embedding_store` setting) from an index."""

from __future__ import annotations

import argparse
from typing import Any

from sidecar.commands.settings_args import add_settings_flags, settings_from_args
from sidecar.tools.warm import warm


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "warm", help="embed an index's documents into the embedding store that serve reads (resumable)"
    )
    parser.add_argument("--index", required=True, help="the index to scroll, through --upstream")
    parser.add_argument("--fields", help="comma-separated fields to embed (default: the matching rule's)")
    parser.add_argument("--model-name", help="named bi-encoder from `models` (default: the rule's, else default)")
    parser.add_argument("--batch", type=int, default=256, help="documents per scroll page (default: %(default)s)")
    add_settings_flags(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    fields = tuple(f.strip() for f in args.fields.split(",") if f.strip()) if args.fields else None
    done = warm(settings, args.index, fields=fields, model=args.model_name, batch=args.batch)
    print(f"[{args.index}]: {done.documents} documents, {done.embedded} texts embedded, {done.skipped} already held")
    return 0
