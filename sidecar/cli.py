"""Entry point: parse flags, build Settings once, configure logging, run."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sidecar.commands import bench, demo, evaluate, load, serve, templates, train


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rerank-sidecar", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve.register(sub)
    demo.register(sub)
    templates.register(sub)
    load.register(sub)
    evaluate.register(sub)
    train.register(sub)
    bench.register(sub)
    args = parser.parse_args(argv)
    result: int = args.run(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
