"""`rerank-sidecar load`: index a corpus (JSONL, or the standard library's docstrings) into an engine."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from sidecar.commands.errors import reading
from sidecar.tools import demo
from sidecar.tools.engine_client import EngineClient, basic_auth
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
    with reading("corpus"):
        docs = demo.read_docs(args.corpus)
    count = index_docs(client, args.index, docs, batch=500)
    print(f"{count} documents in [{args.index}]")
    return 0
