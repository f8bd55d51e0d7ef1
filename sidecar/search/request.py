"""The rerank syntaxes a search may carry, one frozen model each, converted to one ``RerankRequest``.

- ``ext.rerank``: our own syntax, in the search body's ``ext`` section (so the engine never sees it).
- ``retriever.text_similarity_reranker``: Elasticsearch's retriever syntax, with a ``standard`` inner retriever.
- neither: a rule matched the indices (``RerankRequest(source="rule")``).

Unknown keys and wrong types are 400s in the engine's format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator

from sidecar.config import CombineMode, Normalization, ScoreMode, Stage, check_cascade
from sidecar.errors import BadRequest, ParsingError
from sidecar.search.query_text import is_missing, resolve_path

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
# As OpenSearch bounds them: a field path of at most 1000 characters, at most 50 fields a search.
FieldPath = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=1000)]
MAX_FIELDS = 50
# A weight or score as the engine reads one: a finite 32-bit float, so any score computed from it stays finite.
Finite = Annotated[float, Field(allow_inf_nan=False, ge=-3.4e38, le=3.4e38)]
Source = Literal["rule", "ext", "retriever"]


@dataclass(frozen=True)
class RerankRequest:
    """What one search asked for; unset (None) values come from the matching rule, then the settings."""

    source: Source
    query_text: str | None = None
    fields: tuple[str, ...] | None = None
    window_size: int | None = None
    model: str | None = None
    scoring: dict[str, Any] = field(default_factory=dict)  # overrides of the rule's ScoringOptions
    strict: bool = False  # allow_rerank_failures: false
    budget_ms: float | None = None
    stages: tuple[Stage, ...] | None = None


class _Syntax(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


M = TypeVar("M", bound=_Syntax)


class QueryContext(_Syntax):
    query_text: str | None = None
    query_text_path: FieldPath | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> QueryContext:
        if (self.query_text is None) == (self.query_text_path is None):
            raise ValueError("needs exactly one of [query_text] or [query_text_path]")
        return self


class StageSyntax(_Syntax):
    model: Text | None = None
    window_size: int = Field(ge=1)


class ExtRerank(_Syntax):
    """``"ext": {"rerank": {...}}``."""

    query_context: QueryContext
    fields: list[FieldPath] | None = Field(None, min_length=1, max_length=MAX_FIELDS)
    window_size: int | None = Field(None, ge=1)
    model: Text | None = None
    score_mode: ScoreMode | None = None
    combine_mode: CombineMode | None = None
    query_weight: Finite | None = None
    rerank_weight: Finite | None = None
    min_score: Finite | None = None
    normalization: Normalization | None = None
    allow_rerank_failures: bool | None = None
    budget_ms: float | None = Field(None, ge=0, le=3_600_000)
    stages: list[StageSyntax] | None = Field(None, min_length=1, max_length=4)

    @model_validator(mode="after")
    def _cascade(self) -> ExtRerank:
        if self.stages:
            check_cascade(self._stages() or ())
        return self

    def _stages(self) -> tuple[Stage, ...] | None:
        return tuple(Stage(model=s.model, window_size=s.window_size) for s in self.stages) if self.stages else None

    def to_request(self, body: dict[str, Any]) -> RerankRequest:
        ctx = self.query_context
        text: Any = ctx.query_text
        if ctx.query_text_path is not None:
            text = resolve_path(body, ctx.query_text_path)
            if is_missing(text) or not isinstance(text, str):
                raise BadRequest(
                    f"[ext.rerank.query_context.query_text_path] [{ctx.query_text_path}] does not resolve to a string"
                )
        if not text.strip():
            raise BadRequest("[ext.rerank.query_context.query_text] must be a non-empty string")
        scoring = self.model_dump(
            include={"score_mode", "combine_mode", "query_weight", "rerank_weight", "min_score", "normalization"}
        )
        return RerankRequest(
            source="ext",
            query_text=text,
            fields=tuple(self.fields) if self.fields else None,
            window_size=self.window_size,
            model=self.model,
            scoring={k: v for k, v in scoring.items() if v is not None},
            strict=self.allow_rerank_failures is False,
            budget_ms=self.budget_ms,
            stages=self._stages(),
        )


class TextSimilarityReranker(_Syntax):
    """``"retriever": {"text_similarity_reranker": {"retriever": {KIND: {...}}, ...}}``: a ``standard`` inner
    retriever becomes a plain query; any other (``rrf``, ``linear``, ``knn``...) goes to the engine as it is,
    and the top of what it returns is reranked."""

    retriever: dict[str, dict[str, Any]] = Field(min_length=1, max_length=1)
    field: FieldPath
    inference_text: Text
    rank_window_size: int | None = Field(None, ge=1)
    min_score: Finite | None = None
    inference_id: Text | None = None
    allow_rerank_failures: bool | None = None
    chunk_rescorer: Any = None  # accepted; documents are chunked by the `max_chunks_per_doc` setting

    def to_request(self) -> RerankRequest:
        return RerankRequest(
            source="retriever",
            query_text=self.inference_text,
            fields=(self.field,),
            window_size=self.rank_window_size,
            model=self.inference_id,
            scoring={} if self.min_score is None else {"min_score": self.min_score},
            strict=self.allow_rerank_failures is False,
        )

    def search_body(self, body: dict[str, Any]) -> dict[str, Any]:
        """The plain search the inner ``standard`` retriever stands for (its filter joins the query); for any
        other inner retriever, the search with that retriever in place of ours."""
        out = {k: v for k, v in body.items() if k != "retriever"}
        if "standard" not in self.retriever:
            out["retriever"] = dict(self.retriever)
            return out
        standard = dict(self.retriever["standard"])
        flt = standard.pop("filter", None)
        query = standard.pop("query", {"match_all": {}})
        if flt is not None:
            query = {"bool": {"must": [query], "filter": flt if isinstance(flt, list) else [flt]}}
        out["query"] = query
        out.update(standard)  # sort, min_score, collapse, search_after, terminate_after...
        return out


def parse_ext(spec: Any, body: dict[str, Any]) -> RerankRequest:
    if not isinstance(spec, dict):
        raise ParsingError("[ext.rerank] must be an object")
    return _validate(ExtRerank, spec, "ext.rerank").to_request(body)


def parse_retriever(spec: Any, body: dict[str, Any]) -> tuple[RerankRequest, dict[str, Any]]:
    """The request, and the search body to send the engine instead of the retriever."""
    reranker = _validate(TextSimilarityReranker, spec, "text_similarity_reranker")
    return reranker.to_request(), reranker.search_body(body)


def has_inner_retriever(spec: Any) -> bool:
    """The reranker wraps one retriever (``{KIND: {...}}``); anything else is the engine's to judge."""
    inner = spec.get("retriever") if isinstance(spec, dict) else None
    return isinstance(inner, dict) and len(inner) == 1 and isinstance(next(iter(inner.values())), dict)


def _validate(model: type[M], spec: Any, where: str) -> M:
    try:
        return model.model_validate(spec)
    except ValidationError as e:
        err = e.errors()[0]
        loc = cut(".".join(str(p) for p in err["loc"]))
        if err["type"] == "extra_forbidden":
            raise ParsingError(f"[{where}] unknown key [{loc}]") from e
        if err["type"] == "missing":
            raise ParsingError(f"[{where}] [{loc}] is required") from e
        if loc.startswith("query_context") and err["type"] == "value_error":
            raise ParsingError(f"[{where}.query_context] {err['msg'].removeprefix('Value error, ')}") from e
        if err["type"] == "value_error":
            raise BadRequest(f"[{where}] {err['msg'].removeprefix('Value error, ')}") from e
        raise BadRequest(f"[{where}] invalid value for [{loc}]: {cut(repr(err.get('input')))} ({err['msg']})") from e


def cut(text: str, limit: int = 100) -> str:
    """``text`` as an error quotes it: a long one cut, so that an error never echoes a huge input."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
