"""`rerank-sidecar load`: index a corpus (JSONL, or the standard library's docstrings) into an engine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sidecar.tools import demo
from sidecar.tools.engine_client import EngineClient, EngineError, basic_auth
from sidecar.tools.indexing import index_docs


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser("load", help="index a corpus into an engine (progress bar)")
    parser.add_argument("--target", required=True, help="engine or sidecar URL")
    parser.add_argument("--corpus", type=Path, help="JSONL with `text` (and `title`, `_id`); default: stdlib docs")
    parser.add_argument("--index", default=demo.INDEX, help="index name (default: %(default)s)")
    parser.add_argument("--user", help="basic auth as USER:PASSWORD")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    client = EngineClient(args.target, headers=basic_auth(args.user))
    try:
        docs = demo.read_docs(args.corpus)
        count = index_docs(client, args.index, docs, batch=500)
    except (OSError, ValueError, EngineError) as e:
        print(f"rerank-sidecar: load: {e}", file=sys.stderr)
        return 1
    print(f"{count} documents in [{args.index}]")
    return 0
