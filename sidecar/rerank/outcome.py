"""How a search ended: one value that the X-Rerank header, the access log and the metrics all read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["applied", "skipped", "fallback"]


@dataclass(frozen=True)
class Outcome:
    """applied (scored and reordered), skipped (not ours to rerank) or fallback (the engine's order, and why).

    ``reason`` says why a search was skipped or fell back; for an applied search it is the syntax that asked
    (rule, ext or retriever), and ``reranked`` < ``window`` when the latency budget allowed only a head of the
    window (``applied; window=37/100; reason=budget``), or the search's share of the model did
    (``max_search_pairs``: ``reason=search_cap``). An ``_msearch`` ends in one summary outcome whose
    ``items`` are its reranked searches' own outcomes.
    """

    kind: Kind
    reason: str = ""
    model: str | None = None
    window: int = 0  # hits fetched from the engine for reranking
    reranked: int = 0  # of those, hits the model scored
    took_ms: float | None = None
    cut: str = ""  # why the model(s) scored less than they were to: "budget" or "search_cap"; "" when they did not
    items: tuple[Outcome, ...] = ()

    @classmethod
    def skipped(cls, reason: str) -> Outcome:
        return cls("skipped", reason)

    @property
    def is_msearch(self) -> bool:
        return bool(self.items)

    def headers(self) -> dict[str, str]:
        """X-Rerank (and the model and timing) for the client."""
        if self.items:
            return self._msearch_headers()
        if self.kind == "skipped":
            return {"X-Rerank": f"skipped; reason={self.reason}"}
        out = {"X-Rerank": self._applied() if self.kind == "applied" else f"fallback; reason={self.reason}"}
        if self.model is not None:
            out["X-Rerank-Model"] = self.model
        if self.kind == "applied" and self.took_ms is not None:
            out["X-Rerank-Took-Ms"] = f"{self.took_ms:.1f}"
        return out

    def _applied(self) -> str:
        return f"applied; window={self.reranked}/{self.window}" + (f"; reason={self.cut}" if self.cut else "")

    def _msearch_headers(self) -> dict[str, str]:
        applied = sum(1 for o in self.items if o.kind == "applied")
        value = f"applied; items={applied}"
        fallback = next((o for o in self.items if o.kind == "fallback"), None)
        if fallback is not None:
            value += f"; fallback; reason={fallback.reason}"
        out = {"X-Rerank": value}
        models = sorted({o.model for o in self.items if o.model is not None})
        if models:
            out["X-Rerank-Model"] = ",".join(models)
        return out

    def log_field(self) -> str:
        """The access log's rerank= field: applied:100/100, applied:37/100:budget, applied:items=2,
        fallback:timeout, skipped:no_rule."""
        if self.items:
            return f"applied:items={sum(1 for o in self.items if o.kind == 'applied')}"
        if self.kind == "applied":
            return f"applied:{self.reranked}/{self.window}" + (f":{self.cut}" if self.cut else "")
        return f"{self.kind}:{self.reason}"
