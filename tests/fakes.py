"""Deterministic scorers for unit seams (never for a quality claim)."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Mapping, Sequence

from sidecar.rerank.failures import ScoringFailed


def key_score(query: str, text: str) -> float:
    """An arbitrary but fixed order, unrelated to BM25: crc32 of the pair."""
    return (zlib.crc32(f"{query}|{text}".encode()) % 100_000) / 1000.0


class KeyScorer:
    """Scores by ``key_score``; records calls; can be told to fail or hang."""

    def __init__(self, models: Sequence[str] = ("default",), fail: bool = False, hang: float = 0.0) -> None:
        self.models = set(models)
        self.fail = fail
        self.hang = hang
        self.calls: list[tuple[str, str, int]] = []
        self.tiers: list[int] = []

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def reload(self) -> Mapping[str, str]:
        return {}

    def has_model(self, name: str) -> bool:
        return name in self.models

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        return {m: {"state": "ready"} for m in self.models}

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        self.calls.append((model, query, len(texts)))
        self.tiers.append(tier)
        if self.hang:
            await asyncio.sleep(self.hang)
        if self.fail:
            raise ScoringFailed("model exploded")
        return [key_score(query, t) for t in texts]
