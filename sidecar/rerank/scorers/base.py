"""The one interface the rerank pipeline uses to score documents; local and remote backends implement it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable


@runtime_checkable
class Scorer(Protocol):
    """Scores (query, text) pairs with a named model; higher is more relevant.

    The texts come in the engine's order, best first: a scorer that cannot score them all in time, or will not
    spend that much of the model on one search (``max_search_pairs``), scores a prefix, with or without a
    budget. Any str is a valid text: one the model cannot read raises ``BadInput``, which is the search's
    fault and not the model's. A failure to score raises ``sidecar.rerank.failures.ScoringFailed`` (or a
    subclass: ``Overloaded`` for a full queue). Anything else a scorer raises is counted as the model's failure
    too.
    """

    async def start(self) -> None:
        """Load and warm up every model (called once, with the app)."""

    async def close(self) -> None:
        """Release models and worker threads."""

    async def reload(self) -> Mapping[str, str]:
        """Load again the models whose files changed since they were loaded, each swapped in at once when ready
        (searches already queued finish on the old one); per model reloaded, "reloaded" or why it was not."""

    def has_model(self, name: str) -> bool:
        """Whether the model ``name`` (``DEFAULT_MODEL`` for the default) can be scored."""

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        """Per model: {"state": "loading" | "ready" | "failed", ...}."""

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        """One score per text, in the given order.

        With ``budget_s``, the scores of the longest prefix of ``texts`` that could be scored within that many
        seconds (scores already known, from a cache, cost nothing; 0 asks for those alone). ``tier`` 1 is work
        that may wait for the model's idle time (shadow mode); a backend without a queue of its own ignores it."""
