"""Orchestrates a rerank: parse, decide, fetch the window, score, splice, reply."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from sidecar.config import Settings
from sidecar.errors import BadRequest, PayloadTooLarge, RerankFailed, TooManyRequests
from sidecar.headers import client_response_headers, is_json_media_type, is_ndjson_media_type
from sidecar.http.keys import RERANK_STATUS
from sidecar.http.passthrough import forward, reply_compat_version, upstream_headers
from sidecar.metrics import Metrics
from sidecar.rerank.breaker import CircuitBreaker
from sidecar.rerank.scorers.base import Scorer
from sidecar.search.hits import engine_page, hit_texts, splice
from sidecar.search.ndjson import dump_msearch, item_indices, parse_msearch
from sidecar.search.plan import Decision, Plan, decide
from sidecar.search.routes import SearchRoute
from sidecar.upstream import Upstream

log = logging.getLogger(__name__)


@dataclass
class EngineReply:
    status: int
    headers: CIMultiDict[str]  # for the client, compat applied, length and encoding removed
    raw: bytes  # as the engine sent it
    encoding: str | None
    json: dict[str, Any] | None  # the decoded reply when it is a JSON object


class RerankService:
    def __init__(self, settings: Settings, upstream: Upstream, metrics: Metrics, *, scorer: Scorer | None) -> None:
        self._settings = settings
        self._upstream = upstream
        self._metrics = metrics
        self._scorer = scorer
        self._breakers: dict[str, CircuitBreaker] = {}

    async def start(self) -> None:
        if self._scorer is not None:
            await self._scorer.start()

    async def close(self) -> None:
        if self._scorer is not None:
            await self._scorer.close()

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        """Per model: the scorer's state, and its circuit when that is not closed."""
        models = {} if self._scorer is None else self._scorer.readiness()
        return {
            name: {**state, **({"circuit": b.state} if (b := self._breakers.get(name)) and b.state != "closed" else {})}
            for name, state in models.items()
        }

    def _has_model(self, name: str | None) -> bool:
        return self._scorer is not None and self._scorer.has_model(name)

    def model_name(self, name: str | None) -> str:
        return name or self._settings.model

    # -- entry point -------------------------------------------------------------------------------------

    async def handle(self, request: web.Request, route: SearchRoute) -> web.StreamResponse:
        raw = await self._read(request)
        text = _decode(raw, request.headers.get("Content-Encoding"))
        opt_out = request.headers.get("X-Rerank", "").strip().lower() == "off"
        if text is None:
            return await forward(request, raw, buffered=True)
        if route.kind == "msearch":
            return await self._msearch(request, route, raw, text, opt_out)
        return await self._search(request, route, raw, text, opt_out)

    async def _read(self, request: web.Request) -> bytes:
        limit = self._settings.max_search_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"search body of {request.content_length} bytes is over the limit of {limit}")
        return await request.read()

    # -- _search -----------------------------------------------------------------------------------------

    async def _search(
        self, request: web.Request, route: SearchRoute, raw: bytes, text: bytes, opt_out: bool
    ) -> web.StreamResponse:
        body = _json_object(text) if is_json_media_type(request.headers.get("Content-Type")) else None
        if body is None:
            return await forward(request, raw, buffered=True, extra_headers=_skipped("unparsed_body"))
        params = dict(request.rel_url.query)
        decision = decide(body, route.indices, params, self._settings, opt_out=opt_out, has_model=self._has_model)
        if decision.plan is None:
            return await self._pass(request, raw, decision)
        plan = decision.plan
        assert decision.body is not None
        start = time.perf_counter()
        engine = await self._fetch(request, json.dumps(decision.body).encode(), decision)
        if engine.status != 200 or engine.json is None:
            return _respond_raw(engine)
        reply = engine.json
        outcome = await self._rerank(reply, plan)
        reply["took"] = int(reply.get("took", 0)) + round((time.perf_counter() - start) * 1000)
        return _respond(request, engine, outcome)

    async def _pass(self, request: web.Request, raw: bytes, decision: Decision) -> web.StreamResponse:
        self._metrics.rerank.labels("skipped", decision.reason or "").inc()
        request[RERANK_STATUS] = f"skipped:{decision.reason}"
        extra = _skipped(decision.reason or "")
        if decision.body is None:
            return await forward(request, raw, buffered=True, extra_headers=extra)
        return await forward(
            request, json.dumps(decision.body).encode(), buffered=True, rewritten=True, extra_headers=extra
        )

    async def _fetch(self, request: web.Request, body: bytes, decision: Decision) -> EngineReply:
        headers = upstream_headers(request)
        headers.popall("Content-Encoding", None)
        headers["Content-Length"] = str(len(body))
        headers.setdefault("Content-Type", "application/json")
        query = [(k, v) for k, v in request.rel_url.query.items() if k not in decision.drop_params]
        path_qs = str(request.rel_url.with_query(query))
        t0 = time.perf_counter()
        async with self._upstream.request(request.method, path_qs, headers, body, retry=True) as resp:
            data = await resp.read()
            self._metrics.upstream_seconds.labels("search").observe(time.perf_counter() - t0)
            out_headers = client_response_headers(
                resp.headers,
                drop=("Content-Length", "Content-Encoding"),
                compat_accept=reply_compat_version(request),
            )
            encoding = resp.headers.get("Content-Encoding")
            plain = _decode(data, encoding)
            reply = _json_object(plain) if plain is not None else None
            return EngineReply(resp.status, out_headers, data, encoding, reply)

    # -- scoring -----------------------------------------------------------------------------------------

    async def _rerank(self, reply: dict[str, Any], plan: Plan) -> dict[str, str]:
        """Splice model order into ``reply``; on failure fall back to the engine's page (or raise, strict)."""
        model = self.model_name(plan.model)
        hits = (reply.get("hits") or {}).get("hits") or []
        breaker = self._breaker(plan.model)
        t0 = time.perf_counter()
        try:
            if not breaker.allow():
                raise _CircuitOpen
            scores = await asyncio.wait_for(self._score_hits(hits, plan), plan.timeout_s)
        except Exception as e:  # the model is not allowed to take search down: fall back, visibly
            reason = _reason(e)
            if reason == "overloaded" and self._settings.overload == "429":
                raise
            if reason in ("timeout", "model_error"):
                breaker.failure()
            log.warning("rerank fell back (%s) for model %s: %s", reason, model, type(e).__name__)
            self._metrics.rerank.labels("fallback", reason).inc()
            self._metrics.circuit_open.labels(model).set(breaker.state != "closed")
            if plan.strict:
                raise RerankFailed(
                    f"reranking with model [{model}] failed ({reason}) and failures are not allowed"
                ) from e
            engine_page(reply, plan)
            return {"X-Rerank": f"fallback; reason={reason}", "X-Rerank-Model": model}
        breaker.success()
        self._metrics.circuit_open.labels(model).set(0)
        took = time.perf_counter() - t0
        self._metrics.rerank_seconds.observe(took)
        self._metrics.window.observe(len(hits))
        self._metrics.rerank.labels("applied", plan.source).inc()
        splice(reply, plan, scores, model)
        return {"X-Rerank": "applied", "X-Rerank-Model": model, "X-Rerank-Took-Ms": f"{took * 1000:.1f}"}

    def _breaker(self, name: str | None) -> CircuitBreaker:
        key = name or "default"
        if key not in self._breakers:
            s = self._settings
            self._breakers[key] = CircuitBreaker(s.breaker_failures, s.breaker_cooldown_s)
        return self._breakers[key]

    async def _score_hits(self, hits: list[dict[str, Any]], plan: Plan) -> list[float]:
        if not hits:
            return []
        assert self._scorer is not None
        per_hit = [hit_texts(h, plan) for h in hits]
        flat = [t for texts in per_hit for t in texts]
        flat_scores = await self._scorer.scores(plan.model, plan.query, flat)
        out, i = [], 0
        for texts in per_hit:
            out.append(max(flat_scores[i : i + len(texts)]))
            i += len(texts)
        return out

    # -- _msearch ----------------------------------------------------------------------------------------

    async def _msearch(
        self, request: web.Request, route: SearchRoute, raw: bytes, text: bytes, opt_out: bool
    ) -> web.StreamResponse:
        pairs = parse_msearch(text) if is_ndjson_media_type(request.headers.get("Content-Type")) else None
        if pairs is None:
            return await forward(request, raw, buffered=True, extra_headers=_skipped("unparsed_body"))
        if len(pairs) > self._settings.max_msearch_items:
            limit = self._settings.max_msearch_items
            raise BadRequest(f"_msearch of {len(pairs)} searches is over the maximum of {limit} (max_msearch_items)")
        params = {k: v for k, v in request.rel_url.query.items() if k == "filter_path"}
        decisions = [
            decide(
                b,
                item_indices(h, route.indices),
                params,
                self._settings,
                opt_out=opt_out,
                has_model=self._has_model,
            )
            for h, b in pairs
        ]
        plans = [d.plan for d in decisions]
        if not any(plans) and all(d.body is None for d in decisions):
            return await forward(request, raw, buffered=True, extra_headers=_skipped("no_item_reranked"))
        new_pairs = [(h, d.body if d.body is not None else b) for (h, b), d in zip(pairs, decisions, strict=True)]
        if not any(plans):
            return await forward(
                request,
                dump_msearch(new_pairs),
                buffered=True,
                rewritten=True,
                extra_headers=_skipped("no_item_reranked"),
            )
        start = time.perf_counter()
        engine = await self._fetch(request, dump_msearch(new_pairs), Decision(None))
        responses = engine.json.get("responses") if engine.json is not None else None
        if engine.status != 200 or not isinstance(responses, list) or len(responses) != len(plans):
            return _respond_raw(engine)

        async def one(item: Any, plan: Plan | None) -> dict[str, str] | None:
            if plan is None or not isinstance(item, dict) or "error" in item or item.get("status", 200) != 200:
                return None
            return await self._rerank(item, plan)

        outcomes = await asyncio.gather(*(one(r, p) for r, p in zip(responses, plans, strict=True)))
        took = round((time.perf_counter() - start) * 1000)
        for item, plan in zip(responses, plans, strict=True):
            if plan is not None and isinstance(item, dict) and "took" in item:
                item["took"] = int(item["took"]) + took
        applied = [o for o in outcomes if o]
        summary = {"X-Rerank": f"applied; items={sum(1 for o in applied if o['X-Rerank'] == 'applied')}"}
        fallbacks = [o["X-Rerank"] for o in applied if o["X-Rerank"] != "applied"]
        if fallbacks:
            summary["X-Rerank"] += f"; {fallbacks[0]}"
        models = sorted({o["X-Rerank-Model"] for o in applied})
        if models:
            summary["X-Rerank-Model"] = ",".join(models)
        return _respond(request, engine, summary)


class _CircuitOpen(Exception):
    """The model's circuit is open: no work is sent to it until the cool-down ends."""


def _reason(e: Exception) -> str:
    if isinstance(e, TimeoutError):
        return "timeout"
    if isinstance(e, _CircuitOpen):
        return "circuit_open"
    if isinstance(e, TooManyRequests):
        return "overloaded"
    return "model_error"


def _skipped(reason: str) -> dict[str, str]:
    return {"X-Rerank": f"skipped; reason={reason}"}


def _decode(raw: bytes, encoding: str | None) -> bytes | None:
    if not encoding or encoding.lower() == "identity":
        return raw
    if encoding.lower() in ("gzip", "x-gzip"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError):
            return None
    return None  # an encoding we do not read: pass through untouched


def _json_object(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def _respond_raw(engine: EngineReply) -> web.Response:
    """The engine's reply exactly as it came (errors, non-JSON)."""
    headers = CIMultiDict(engine.headers)
    if engine.encoding:
        headers["Content-Encoding"] = engine.encoding
    return web.Response(status=engine.status, body=engine.raw, headers=headers)


def _respond(request: web.Request, engine: EngineReply, extra: Mapping[str, str]) -> web.Response:
    """The reranked reply; compressed back if the engine compressed and the client accepts gzip."""
    body = json.dumps(engine.json).encode()
    headers = CIMultiDict(engine.headers)
    headers.update(extra)
    gzip_ok = "gzip" in request.headers.get("Accept-Encoding", "").lower()
    if engine.encoding and engine.encoding.lower() in ("gzip", "x-gzip") and gzip_ok:
        body = gzip.compress(body, compresslevel=5)
        headers["Content-Encoding"] = "gzip"
    return web.Response(status=engine.status, body=body, headers=headers)
