"""`capture_queries`: the query texts of reranked searches go to a file, one per line, up to a bound."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sidecar.config import Rule
from tests.servers import Http, index_docs


def _lines(path: Path, want: int) -> list[str]:
    deadline = time.monotonic() + 10
    while len(lines := path.read_text().splitlines() if path.exists() else []) < want:
        assert time.monotonic() < deadline, lines
        time.sleep(0.02)
    return lines


def test_only_query_texts_of_reranked_searches_are_written_up_to_the_bound(
    engine: str, make_sidecar: Any, http: Http, tmp_path: Path
) -> None:
    index_docs(http, engine, (("docs", str(i), {"text": f"apple pear secret-{i}"}) for i in range(10)))
    path = tmp_path / "captured" / "queries.txt"
    path.parent.mkdir()
    path.write_text("an earlier query\n")  # lines already there count towards the bound
    proxy = make_sidecar(engine, rules=(Rule(index="docs"),), capture_queries=path, capture_queries_max=3)

    def search(text: str, **headers: str) -> str:
        body = {"query": {"match": {"text": text}}, "size": 3}
        return str(http("POST", proxy.url + "/docs/_search", body, headers=headers).headers["X-Rerank"])

    assert search("apple\tpear\nsecret-1").startswith("applied")
    assert search("pear", **{"X-Rerank": "off"}).startswith("skipped")  # not reranked: not captured
    assert search("apple").startswith("applied")
    assert search("pear apple").startswith("applied")  # past the bound
    lines = _lines(path, 3)
    time.sleep(0.3)
    assert path.read_text().splitlines() == lines == ["an earlier query", "apple pear secret-1", "apple"]
