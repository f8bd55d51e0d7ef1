"""The one interface the search side uses to score documents."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """Scores (query, text) pairs with a named model; higher is more relevant."""

    async def start(self) -> None:
        """Load and warm up every model (called once, with the app)."""

    async def close(self) -> None:
        """Release models and worker threads."""

    def has_model(self, name: str | None) -> bool:
        """Whether ``name`` (None: the default model) can be scored."""

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        """Per model: {"state": "loading" | "ready" | "failed", ...}."""

    async def scores(self, model: str | None, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in the given order."""
