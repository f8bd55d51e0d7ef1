"""Remote scorers: named models served by another process (TEI, Cohere, infinity, vLLM, another sidecar).

One ``ClientSession`` per remote for the life of the app, with a bounded pool and TLS verified by default. A
request is split into ``max_batch``-sized calls that run concurrently and are stitched back in order. Only
connection failures are retried, with jittered backoff, and no retry starts past half of ``rerank_timeout_ms``
from the first attempt; the search's own deadline (the pipeline's ``wait_for``) cancels the calls in flight.

Scores are on the scale the API returns: raw logits from ``tei``, ``sidecar`` and ``infinity`` (asked for with
``raw_scores: true``), probabilities in [0, 1] from ``cohere`` and ``vllm`` (their ``relevance_score``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_before_delay, wait_random_exponential
from yarl import URL

from sidecar.config import ModelSpec, Settings
from sidecar.metrics import Metrics
from sidecar.rerank.cache import LRU, through_cache
from sidecar.rerank.failures import BadInput, Overloaded, RemoteUnavailable, ScoringFailed
from sidecar.tls import remote_context

log = logging.getLogger(__name__)

Body = Callable[[ModelSpec, str, Sequence[str]], dict[str, Any]]
Parse = Callable[[Any, int], list[float]]


@dataclass(frozen=True)
class _Api:
    path: str  # joined to the spec's url
    body: Body
    parse: Parse


def _tei_body(spec: ModelSpec, query: str, texts: Sequence[str]) -> dict[str, Any]:
    return {"query": query, "texts": list(texts), "raw_scores": True, "truncate": True}


def _cohere_body(spec: ModelSpec, query: str, texts: Sequence[str]) -> dict[str, Any]:
    return {"model": spec.remote_model, "query": query, "documents": list(texts)}


def _infinity_body(spec: ModelSpec, query: str, texts: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "documents": list(texts), "raw_scores": True, "return_documents": False}
    return {**body, "model": spec.remote_model} if spec.remote_model else body


def _vllm_body(spec: ModelSpec, query: str, texts: Sequence[str]) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "documents": list(texts)}
    return {**body, "model": spec.remote_model} if spec.remote_model else body


def _stitch(pairs: Any, n: int, score_key: str) -> list[float]:
    """Scores in the order sent, from ``[{index, <score_key>}]``: every index once, every score a finite number."""
    if not isinstance(pairs, list) or len(pairs) != n:
        raise ScoringFailed(
            f"the remote answered {len(pairs) if isinstance(pairs, list) else 'no list of'} scores for {n} texts"
        )
    out: list[float | None] = [None] * n
    for item in pairs:
        index = item.get("index") if isinstance(item, dict) else None
        score = item.get(score_key) if isinstance(item, dict) else None
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < n
            or out[index] is not None
            or not isinstance(score, (int, float))
            or isinstance(score, bool)
            or not math.isfinite(score)
        ):
            raise ScoringFailed(f"the remote's reply is not one score per text (an item reads {str(item)[:80]!r})")
        out[index] = float(score)
    return [s for s in out if s is not None]


def _tei_parse(reply: Any, n: int) -> list[float]:
    return _stitch(reply, n, "score")


def _results_parse(reply: Any, n: int) -> list[float]:
    """Cohere's, infinity's and vLLM's ``{results: [{index, relevance_score}]}``."""
    return _stitch(reply.get("results") if isinstance(reply, dict) else None, n, "relevance_score")


APIS: dict[str, _Api] = {
    "tei": _Api("/rerank", _tei_body, _tei_parse),
    "sidecar": _Api("/rerank", _tei_body, _tei_parse),  # url is the other sidecar's /_sidecar: its TEI shape
    "cohere": _Api("/v2/rerank", _cohere_body, _results_parse),
    "infinity": _Api("/rerank", _infinity_body, _results_parse),
    "vllm": _Api("/v1/rerank", _vllm_body, _results_parse),
}


def public_url(spec: ModelSpec) -> str:
    """The remote's url without any user or password in it: what logs and /ready show."""
    return str(URL(str(spec.url)).with_user(None))


class _RemoteModel:
    """One remote model: its session, its API's shapes, and the split into ``max_batch``-sized requests."""

    def __init__(self, name: str, spec: ModelSpec, settings: Settings) -> None:
        assert spec.url is not None and spec.api is not None
        self.name = name
        self.spec = spec
        self._settings = settings
        self._api = APIS[spec.api]
        self._url = URL(str(spec.url).rstrip("/") + self._api.path)
        # Half the model deadline: a remote that stays down is reported as such before the search's deadline.
        self._retry_window_s = settings.rerank_timeout_ms / 2000
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.api_key is not None:
            self._headers["Authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
        self._session: aiohttp.ClientSession | None = None
        self.state = "loading"

    async def start(self) -> None:
        spec, s = self.spec, self._settings
        if spec.url is not None and spec.url.scheme == "https" and not spec.verify:
            log.warning("TLS verification towards model [%s] at %s is OFF (verify: false)", self.name, public_url(spec))
        connector = aiohttp.TCPConnector(
            limit=spec.max_connections, limit_per_host=spec.max_connections, ttl_dns_cache=300, ssl=remote_context(spec)
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=s.connect_timeout_s),  # the search's deadline cuts it
            cookie_jar=aiohttp.DummyCookieJar(),
            raise_for_status=False,
        )
        self.state = "ready"
        log.info(
            "model [%s] is remote: %s at %s (max_batch %d)", self.name, spec.api, public_url(spec), spec.batch_limit
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def scores(self, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text: ``max_batch``-sized requests at once; the first to fail cancels the others."""
        size = self.spec.batch_limit
        calls = [asyncio.ensure_future(self._call(query, texts[i : i + size])) for i in range(0, len(texts), size)]
        try:
            parts = await asyncio.gather(*calls)
        except asyncio.CancelledError:
            raise  # gather has cancelled the calls
        except BaseException:
            for call in calls:
                call.cancel()
            await asyncio.gather(*calls, return_exceptions=True)
            raise
        return [score for part in parts for score in part]

    async def _call(self, query: str, texts: Sequence[str]) -> list[float]:
        """One request; a connection failure is retried, no retry starting past half of ``rerank_timeout_ms``."""
        retrying = AsyncRetrying(
            retry=retry_if_exception_type(RemoteUnavailable),
            stop=stop_before_delay(self._retry_window_s),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                return await self._post(query, texts)
        raise AssertionError("unreachable: tenacity re-raises the last attempt's error")

    async def _post(self, query: str, texts: Sequence[str]) -> list[float]:
        assert self._session is not None, "RemoteScorer.start() was not awaited"
        body = self._api.body(self.spec, query, texts)
        started = time.perf_counter()
        try:
            async with self._session.post(self._url, json=body, headers=self._headers, allow_redirects=False) as resp:
                status = resp.status
                raw = await resp.read()
        except (aiohttp.ClientConnectionError, aiohttp.ConnectionTimeoutError) as e:
            raise RemoteUnavailable(
                f"model [{self.name}]: cannot reach {public_url(self.spec)} ({type(e).__name__})"
            ) from e
        except aiohttp.ClientError as e:  # not HTTP at all (a wrong port, a broken proxy in between)
            raise ScoringFailed(f"model [{self.name}]: an invalid reply from its server ({type(e).__name__})") from e
        log.debug(
            "model [%s]: %d texts scored remotely in %.1f ms",
            self.name,
            len(texts),
            (time.perf_counter() - started) * 1000,
        )
        if status != 200:
            raise _refusal(self.name, status, raw)
        try:
            reply = json.loads(raw)
        except ValueError as e:
            raise ScoringFailed(f"model [{self.name}]: its server's reply is not JSON") from e
        try:
            return self._api.parse(reply, len(texts))
        except ScoringFailed as e:
            raise ScoringFailed(f"model [{self.name}]: {e}") from e


def _refusal(name: str, status: int, raw: bytes) -> ScoringFailed:
    """A non-200 reply: 429 is the remote's full queue (``Overloaded``); a tokenizer's refusal of a TEI-shaped
    request is the search's text (``BadInput``); anything else counts against the model. The remote's own words
    are logged at DEBUG only: they may quote the texts."""
    log.debug("model [%s]: its server answered %d: %s", name, status, raw[:300])
    if status == 429:
        return Overloaded(f"model [{name}]: its server is overloaded (429)")
    if status in (413, 422) and b'"tokenizer"' in raw:
        return BadInput(f"model [{name}]: its server cannot read this input ({status})")
    return ScoringFailed(f"model [{name}]: its server answered {status}")


class RemoteScorer:
    """The remote models of the settings (those with a ``url``) behind the ``Scorer`` protocol, with a score cache.

    A remote has no cost model here: a search's ``budget_s`` does not cut its window (0 still asks for cached
    scores only); ``max_search_pairs`` does, and the search's deadline falls back as for a local model. With no
    queue of its own, a remote ignores ``tier`` (shadow work is sent at once).
    """

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._models = {
            name: _RemoteModel(name, spec, settings) for name, spec in settings.models.items() if spec.remote
        }
        self._cache: LRU[tuple[str, str, bytes], float] = LRU(settings.score_cache_entries)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._models)

    async def start(self) -> None:
        await asyncio.gather(*(m.start() for m in self._models.values()))

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self._models.values()))

    async def reload(self) -> Mapping[str, str]:
        return {}  # nothing of a remote model is on this machine's disk

    def has_model(self, name: str) -> bool:
        return name in self._models

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        return {
            name: {"state": m.state, "url": public_url(m.spec), "api": m.spec.api} for name, m in self._models.items()
        }

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        texts = texts[: self._settings.max_search_pairs]
        remote = self._models[model]
        return await through_cache(
            self._cache, self._metrics, (model, query), texts, budget_s, lambda wanted: remote.scores(query, wanted)
        )
