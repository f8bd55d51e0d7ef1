"""The rerank API: a query and texts in, their order out, in two published shapes (no aiohttp here).

- **Cohere v2** (``POST /_sidecar/v2/rerank``), as https://docs.cohere.com/reference/rerank and the official
  ``cohere`` SDK (``ClientV2.rerank``) define it: ``{model, query, documents: [str], top_n, max_tokens_per_doc}``
  -> ``{id, results: [{index, relevance_score}], meta}``; errors are ``{"message": ...}``
  (https://docs.cohere.com/reference/errors).
- **TEI** (``POST /_sidecar/rerank``), as text-embeddings-inference's openapi.json and router define it:
  ``{query, texts, truncate, truncation_direction, raw_scores, return_text}`` -> ``[{index, score, text?}]``;
  errors are ``{"error": ..., "error_type": ...}`` with TEI's statuses (empty 400, validation 413, overloaded 429,
  backend 424, unhealthy 503).

Both score through ``RerankPipeline.score_texts``: the model's queue, the score cache, the breaker and the
``rerank_timeout_ms`` deadline, as searches do. Only the model's failures differ: a search falls back to the
engine's order, an API call has no order to fall back to and answers 429 or 503.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from sidecar.config import DEFAULT_MODEL, Settings
from sidecar.errors import SidecarError, UnknownModel
from sidecar.rerank.failures import BadInput, CircuitOpen, Overloaded, ScoringFailed, ScoringTimeout
from sidecar.search.body import read_json
from sidecar.search.query_text import usable_text
from sidecar.search.request import cut

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=BaseModel)


class TextScorer(Protocol):
    async def score_texts(self, model: str, query: str, texts: Sequence[str]) -> list[float]: ...


class ApiError(SidecarError):
    """An error of the rerank API in that API's own body and status (the middleware writes any SidecarError)."""

    def __init__(self, status: int, body: dict[str, Any], message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message, headers=headers)
        self.status = status
        self._body = body

    def body(self) -> dict[str, Any]:
        return self._body


# The shape of an API's errors: (status, message, kind) -> the error to raise. ``kind`` is TEI's error_type.
ErrorShape = Callable[[int, str, str], ApiError]


def cohere_error(status: int, message: str, kind: str = "") -> ApiError:
    return ApiError(status, {"message": message}, message)


def tei_error(status: int, message: str, kind: str = "validation") -> ApiError:
    return ApiError(status, {"error": message, "error_type": kind}, message)


@dataclass(frozen=True)
class _Api:
    """What differs between the two shapes, besides the bodies."""

    error: ErrorShape
    prefix: str  # of every message about the request: Cohere's read "invalid request: ..."
    bad_field: int  # status of a field of the wrong type or value
    bad_input: int  # of a text the tokenizer refuses
    model_error: int  # of a model that raised
    refused_fields: Mapping[str, str]  # field: why it is refused by name


# -- access ------------------------------------------------------------------------------------------------


def refusal(remote: str | None, authorization: Sequence[bytes], keys: Sequence[SecretStr]) -> tuple[int, str] | None:
    """Why a caller may not use the API (status, message), or None. With keys, the one Authorization header must be
    ``Bearer <one of them>``, compared as the bytes sent, in constant time, against every key; without keys, only a
    loopback peer is served (403: no key could open it to others)."""
    if not keys:
        if is_loopback(remote):
            return None
        return 403, "the rerank API serves loopback callers only; set rerank_api_keys to open it to others"
    if not authorization:
        return 401, "no api key supplied (Authorization: Bearer KEY)"
    given = bearer(authorization[0]) if len(authorization) == 1 else None
    matched = False
    for key in keys:  # every key is compared, whichever matches
        matched |= given is not None and hmac.compare_digest(given, key.get_secret_value().encode())
    return None if matched else (401, "invalid api token")


def bearer(value: bytes) -> bytes | None:
    """The credentials of a ``Bearer`` header value (the scheme is case-insensitive), or None for another scheme."""
    scheme, _, credentials = value.strip(b" \t").partition(b" ")
    return credentials.strip(b" \t") if scheme.lower() == b"bearer" else None


def is_loopback(remote: str | None) -> bool:
    """The peer's address is loopback (127.0.0.0/8, ::1, or ::ffff:127.x.y.z). A proxy in front of the sidecar
    on the same host makes every caller loopback: ``X-Forwarded-For`` is never read."""
    try:
        address = ipaddress.ip_address(remote or "")
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


# -- request shapes ----------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class RelevantSpans(_Strict):
    """The SDK's ``relevant_spans`` (Rerank v5 models): only ``disabled`` is served."""

    mode: Literal["enabled", "disabled"]
    threshold: float | None = None
    max_spans: int | None = None


class CohereRequest(_Strict):
    model: str
    query: str
    documents: list[str]
    top_n: int | None = Field(None, ge=1)
    max_tokens_per_doc: int | None = Field(None, ge=1)
    relevant_spans: RelevantSpans | None = None
    priority: int | None = Field(None, ge=0)  # a scheduling hint of Cohere's: accepted, not used


# Rerank v1 fields that v2 dropped (https://docs.cohere.com/docs/migrating-v1-to-v2): refused by name.
_COHERE_V1_FIELDS = {
    "return_documents": "v2 never returns documents (false is accepted): a result's index points into yours",
    "rank_fields": "v2 takes documents as strings: format structured documents as text (YAML) yourself",
    "max_chunks_per_doc": "v2 has max_tokens_per_doc instead",
}


class TeiRequest(BaseModel):
    # Strict types; fields TEI does not know are ignored, as TEI's serde reading of the body ignores them.
    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    query: str
    texts: list[str]
    truncate: bool | None = None
    truncation_direction: Literal["left", "right", "Left", "Right"] = "right"
    raw_scores: bool = False
    return_text: bool = False


def _parse(model: type[_M], body: bytes, api: _Api) -> _M:
    """The request, or the API's error: 400 for a body that is not a JSON object, ``bad_field`` for a wrong field."""
    try:
        value = read_json(body)
    except ValueError as e:  # UnicodeDecodeError is one
        raise api.error(400, f"{api.prefix}the body is not JSON ({type(e).__name__})", "validation") from e
    refused = [name for name in api.refused_fields if name in value] if isinstance(value, dict) else []
    if refused == ["return_documents"] and value["return_documents"] is False:  # early v2 SDKs' field: no-op
        value = {k: v for k, v in value.items() if k != "return_documents"}
        refused = []
    if refused:
        raise api.error(
            400, f"{api.prefix}{refused[0]} is not a v2 field: {api.refused_fields[refused[0]]}", "validation"
        )
    try:
        return model.model_validate(value)
    except ValidationError as e:
        first = e.errors(include_url=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise api.error(api.bad_field, f"{api.prefix}{where}: {first['msg']}", "validation") from e


COHERE = _Api(cohere_error, "invalid request: ", 400, 400, 500, _COHERE_V1_FIELDS)
TEI = _Api(tei_error, "", 422, 422, 424, {})


# -- scores ------------------------------------------------------------------------------------------------


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)  # never overflows for x < 0
    return z / (1.0 + z)


def probability(score: float, model: str, settings: Settings) -> float:
    """A score in [0, 1]: the sigmoid of the model's score (its logit, as TEI's ``raw_scores: false``), or the score
    itself where the model's ``activation`` (sigmoid, softmax), or a remote API that answers so (cohere, vllm),
    already makes it one."""
    spec = settings.models.get(model)
    return score if spec is not None and spec.scores_are_probabilities else sigmoid(score)


def ranked(scores: Sequence[float]) -> list[int]:
    """Indices by score, best first; equal scores in the order sent."""
    return sorted(range(len(scores)), key=lambda i: (-scores[i], i))


async def _scores(pipeline: TextScorer, model: str, query: str, texts: Sequence[str], api: _Api) -> list[float]:
    """One finite score per text, or the API's error (``UnknownModel`` is the caller's to word)."""
    try:
        scores = await pipeline.score_texts(model, query, [usable_text(t) for t in texts])
        if not all(math.isfinite(s) for s in scores):
            raise ScoringFailed("a score is not a finite number")
    except ScoringFailed as e:
        raise _failure(e, model, api) from e
    return scores


def _failure(e: ScoringFailed, model: str, api: _Api) -> ApiError:
    """429 for a full queue; 503 for an open circuit or the deadline; the request's fault for a text the tokenizer
    refuses; a model that raised is ``model_error``. The model's own words stay in the log."""
    name = cut(model)
    if isinstance(e, Overloaded):
        return _retry(api.error(429, f"model [{name}] is overloaded; retry later", "overloaded"))
    if isinstance(e, CircuitOpen):
        return _retry(api.error(503, f"model [{name}] is unavailable (its circuit is open); retry later", "unhealthy"))
    if isinstance(e, ScoringTimeout):
        return _retry(api.error(503, f"model [{name}] did not score in time: {e}", "unhealthy"))
    if isinstance(e, BadInput):
        return api.error(api.bad_input, f"{api.prefix}the model cannot read this input", "tokenizer")
    log.warning("rerank API: model [%s] failed (%s): %s", name, e.reason, e)
    return api.error(api.model_error, f"model [{name}] failed to score; see the sidecar's log", "backend")


def _retry(error: ApiError) -> ApiError:
    error.headers["Retry-After"] = "1"
    return error


# -- Cohere v2 ---------------------------------------------------------------------------------------------


async def cohere_rerank(pipeline: TextScorer, settings: Settings, body: bytes) -> dict[str, Any]:
    """The v2 reply to ``body``, or raise its ``ApiError``."""
    request = _parse(CohereRequest, body, COHERE)
    query = usable_text(request.query)
    if not query.strip():
        raise cohere_error(400, "invalid request: query must not be empty or be only whitespace")
    if len(query) > settings.max_query_chars:
        limit = settings.max_query_chars
        raise cohere_error(400, f"invalid request: query is {len(query)} characters, over the maximum of {limit}")
    if not request.documents:
        raise cohere_error(400, "invalid request: list of documents must not be empty")
    if len(request.documents) > settings.max_rerank_documents:
        n, limit = len(request.documents), settings.max_rerank_documents
        raise cohere_error(400, f"invalid request: total number of documents must be at most {limit} - received {n}")
    if request.relevant_spans is not None and request.relevant_spans.mode == "enabled":
        raise cohere_error(400, f"invalid request: relevant_spans is not supported by model '{cut(request.model)}'")
    try:
        scores = await _scores(pipeline, request.model, query, request.documents, COHERE)
    except UnknownModel as e:
        message = f"model '{cut(request.model)}' not found, make sure the correct model ID was used"
        raise cohere_error(404, message) from e
    meta: dict[str, Any] = {"api_version": {"version": "2"}}
    if request.max_tokens_per_doc is not None:
        meta["warnings"] = ["max_tokens_per_doc is not applied: each document is cut at the model's own token limit"]
    results = [
        {"index": i, "relevance_score": probability(scores[i], request.model, settings)}
        for i in ranked(scores)[: request.top_n]
    ]
    return {"id": str(uuid.uuid4()), "results": results, "meta": meta}


# -- TEI ---------------------------------------------------------------------------------------------------


async def tei_rerank(pipeline: TextScorer, settings: Settings, body: bytes) -> list[dict[str, Any]]:
    """TEI's reply to ``body``, scored by the default model (a TEI server serves one), or raise its ``ApiError``."""
    request = _parse(TeiRequest, body, TEI)
    if request.truncation_direction.lower() == "left":
        raise tei_error(422, "truncation_direction `left` is not supported: the sidecar keeps the start of a text")
    query = usable_text(request.query)
    if not query:
        raise tei_error(400, "`query` cannot be empty", "empty")
    if len(query) > settings.max_query_chars:
        raise tei_error(422, f"`query` is {len(query)} characters, over the maximum of {settings.max_query_chars}")
    if not request.texts:
        raise tei_error(400, "`texts` cannot be empty", "empty")
    if len(request.texts) > settings.max_rerank_documents:
        n, limit = len(request.texts), settings.max_rerank_documents
        raise tei_error(413, f"batch size {n} > maximum allowed batch size {limit}")
    try:
        scores = await _scores(pipeline, DEFAULT_MODEL, query, request.texts, TEI)
    except UnknownModel as e:
        raise tei_error(424, "no default model is loaded to rerank with", "backend") from e
    return [
        {
            "index": i,
            **({"text": request.texts[i]} if request.return_text else {}),
            "score": scores[i] if request.raw_scores else probability(scores[i], DEFAULT_MODEL, settings),
        }
        for i in ranked(scores)
    ]
