"""`rerank-sidecar demo`: the embedded default. No Docker, no network."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path
from typing import Any

from sidecar import logs
from sidecar.commands.errors import reading
from sidecar.config import Settings
from sidecar.tools import demo
from sidecar.tools.embedded import packaged_model, start_engine
from sidecar.tools.engine_client import EngineClient
from sidecar.tools.templates import default_dir


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "demo", help="start an embedded engine with a corpus and the sidecar in front of it (offline)"
    )
    parser.add_argument("--query", help="print the engine's top 5 and the reranked top 5 for this query, then exit")
    parser.add_argument("--corpus", type=Path, help="JSONL with `text` (and `title`, `_id`); default: stdlib docs")
    parser.add_argument("--model", help="model path or hub id (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="where the sidecar listens")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    logs.configure("WARNING", "text")
    model = args.model or str(packaged_model())
    engine = start_engine()
    try:
        return _run(args, engine.url, model)
    except KeyboardInterrupt:  # how the demo is stopped, not an error
        print("\nstopped.")
        return 0
    finally:
        engine.close()


def _run(args: argparse.Namespace, engine_url: str, model: str) -> int:
    which = "the packaged all-MiniLM-L6-v2 (bi-encoder)" if not args.model else args.model
    print(f"engine: osmem-server at {engine_url} (in memory)")
    with reading("corpus"):
        docs = demo.read_docs(args.corpus)
    print(f"corpus: {len(docs)} passages from {args.corpus or 'the Python standard library docstrings'}")
    indexed = demo.load_corpus(EngineClient(engine_url), docs)
    print(f"indexed {indexed} passages into [{demo.INDEX}]; model: {which} at {model}; loading it...", flush=True)
    settings = Settings(
        config=str(default_dir() / "sidecar.yaml"), upstream=engine_url, listen=args.listen, model=model
    )
    if args.query:
        return asyncio.run(demo.run_sidecar(settings, lambda url: _compare(url, engine_url, args.query)))
    return asyncio.run(demo.run_sidecar(settings, lambda url: _serve_forever(url, engine_url)))


async def _compare(url: str, engine_url: str, query: str) -> int:
    loop = asyncio.get_running_loop()
    direct = await loop.run_in_executor(None, demo.top, EngineClient(engine_url), query)
    reranked = await loop.run_in_executor(None, demo.top, EngineClient(url), query)
    print(f"\nquery: {query}\n")
    print(demo.side_by_side(direct, reranked))
    return 0


async def _serve_forever(url: str, engine_url: str) -> int:
    print(f"\nrerank-sidecar is serving on {url} in front of {engine_url}. Try:\n")
    for line in demo.curl_lines(url):
        print("  " + line)
    print("\nCtrl-C stops the sidecar and the engine.", flush=True)
    logging.getLogger("sidecar").setLevel(logging.WARNING)
    await asyncio.Event().wait()
    return 0
