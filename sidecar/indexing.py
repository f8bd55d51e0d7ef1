"""Index a dataset folder's corpus into an engine, with a progress bar; skipped when the index already holds it."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from . import datasets
from .engine_client import EngineClient


def index_dataset(client: EngineClient, index: str, folder: Path) -> None:
    """(Re)create ``index`` with title and text fields unless it already holds exactly this corpus."""
    docs = list(datasets.corpus(folder))
    if client.count(index) == len(docs):
        return
    client.request("DELETE", f"/{index}", ok=(404,))
    mapping = {"properties": {"title": {"type": "text"}, "text": {"type": "text"}}}
    client.request("PUT", f"/{index}", {"mappings": mapping})
    with tqdm(total=len(docs), desc="indexing", unit="doc") as bar:
        for n in client.bulk_index(index, docs, batch=2000):
            bar.update(n)
