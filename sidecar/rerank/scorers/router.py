"""The app's scorer: each model name goes to the backend that has it, local (this process) or remote."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from sidecar.config import Settings
from sidecar.metrics import Metrics
from sidecar.rerank.scorers.base import Scorer


class Scorers:
    """Several ``Scorer`` backends as one: a model belongs to the first backend that has it."""

    def __init__(self, backends: Sequence[Scorer]) -> None:
        self._backends = tuple(backends)

    async def start(self) -> None:
        await asyncio.gather(*(b.start() for b in self._backends))

    async def close(self) -> None:
        await asyncio.gather(*(b.close() for b in self._backends))

    async def reload(self) -> Mapping[str, str]:
        return {k: v for done in await asyncio.gather(*(b.reload() for b in self._backends)) for k, v in done.items()}

    def has_model(self, name: str) -> bool:
        return any(b.has_model(name) for b in self._backends)

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        merged: dict[str, Mapping[str, object]] = {}
        for backend in reversed(self._backends):  # the first backend's entry wins, as its model does
            merged.update(backend.readiness())
        return merged

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        backend = next((b for b in self._backends if b.has_model(model)), self._backends[0])
        return await backend.scores(model, query, texts, budget_s=budget_s, tier=tier)


def default_scorer(settings: Settings, metrics: Metrics) -> Scorer:
    """The local models of the settings, and the remote ones (``url``) when there are any. With every model
    remote (and ``model: none``, or a remote model named ``default``), nothing is loaded here: no torch."""
    from sidecar.rerank.scorers.local import LocalScorer

    local = LocalScorer(settings, metrics)
    if not any(spec.remote for spec in settings.models.values()):
        return local
    from sidecar.rerank.scorers.remote import RemoteScorer

    return Scorers([local, RemoteScorer(settings, metrics)])
