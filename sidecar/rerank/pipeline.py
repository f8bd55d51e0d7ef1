"""The rerank pipeline: an intercepted search in, the reply and one outcome out.

It works on bytes and dicts (no aiohttp.web): the handler reads the request and writes the response. The
steps are decide (``search.plan``), fetch the window from the engine, score it (the breaker, the deadline
and the scorer), splice the model's order into the engine's reply.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal
from urllib.parse import quote

from multidict import CIMultiDict
from yarl import URL

from sidecar.config import Rule, ScoringOptions, Settings
from sidecar.encoding import accepts_gzip, decode
from sidecar.errors import BadRequest, RerankFailed, SidecarError, TooManyRequests, UnknownModel, UpstreamUnavailable
from sidecar.headers import client_response_headers, reply_is_json, vendor_media_type
from sidecar.metrics import Metrics
from sidecar.rerank.breaker import CircuitBreaker
from sidecar.rerank.capture import QueryCapture
from sidecar.rerank.events import EventLog, event, shadow_event
from sidecar.rerank.failures import CircuitOpen, Overloaded, ScoringFailed, ScoringTimeout
from sidecar.rerank.outcome import Outcome
from sidecar.rerank.scorers.base import Scorer
from sidecar.rerank.shadow import shadow_figures
from sidecar.search import async_ids
from sidecar.search.body import read_object, write_json
from sidecar.search.hits import engine_page, hit_texts, splice
from sidecar.search.ndjson import dump_msearch, item_indices, parse_msearch
from sidecar.search.plan import Decision, Plan, decide, may_rerank
from sidecar.search.request import cut
from sidecar.upstream import Upstream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchCall:
    """One intercepted `_search` or `_msearch`, as the handler read it."""

    kind: Literal[
        "search", "msearch", "template", "msearch_template", "async_submit", "async_get", "async_status", "async_delete"
    ]
    method: str
    url: URL  # the client's path and query, relative
    indices: tuple[str, ...]  # named by the path
    body: bytes  # decoded (no Content-Encoding)
    parseable: bool  # the Content-Type is one the engine reads as JSON (NDJSON for _msearch)
    headers: CIMultiDict[str]  # for the engine: hop-by-hop removed, Host and X-Forwarded-* set
    reply_compat: str | None  # the vendor media type version to put back on the reply's Content-Type
    opt_out: bool  # X-Rerank: off
    async_id: str = ""  # the async search a poll, status or delete names (ours, or the engine's)


@dataclass(frozen=True)
class PassThrough:
    """Send the client's request on (its own bytes, or ``body``: our rewrite of it) and stream the reply."""

    body: bytes | None
    outcome: Outcome
    after: Callable[[], None] | None = None  # to call once the reply has been sent (shadow mode's work)


@dataclass(frozen=True)
class EngineReply:
    """The engine's reply to our request for the window. ``json`` is the reply as read (and reranked in
    place), ``body`` its bytes for the client; with ``body`` None, ``raw`` goes back as the engine sent it
    (an error: an error never carries the widened window)."""

    status: int
    headers: CIMultiDict[str]  # for the client: compat applied, length and encoding removed
    raw: bytes
    encoding: str | None
    json: dict[str, Any] | None
    outcome: Outcome
    body: bytes | None = None


Where = tuple[str, tuple[str, ...]]  # a search's call kind, and the indices it searched: for its event


def _event_log(settings: Settings, upstream: Upstream, metrics: Metrics) -> EventLog:
    assert settings.events_index is not None
    return EventLog(
        upstream,
        metrics,
        settings.events_index,
        buffer=settings.events_buffer,
        batch=settings.events_batch,
        flush_s=settings.events_flush_ms / 1000,
        timeout_s=settings.events_timeout_ms / 1000,
    )


class RerankPipeline:
    def __init__(self, settings: Settings, upstream: Upstream, scorer: Scorer, metrics: Metrics) -> None:
        self._settings = settings
        self._upstream = upstream
        self._scorer = scorer
        self._metrics = metrics
        self._breakers: dict[str, CircuitBreaker] = {}
        self._shadows: set[asyncio.Task[None]] = set()
        self._random = random.Random()
        key = settings.async_search_key
        self._async_key = key.get_secret_value().encode() if key is not None else secrets.token_bytes(32)
        path = settings.capture_queries
        self._capture = None if path is None else QueryCapture(path, settings.capture_queries_max)
        self._events = None if settings.events_index is None else _event_log(settings, upstream, metrics)

    async def start(self) -> None:
        await self._scorer.start()
        if self._capture is not None:
            self._capture.start()
        if self._events is not None:
            await self._events.start()

    async def close(self) -> None:
        for task in self._shadows:
            task.cancel()
        await asyncio.gather(*self._shadows, return_exceptions=True)
        await self._scorer.close()
        if self._capture is not None:
            await asyncio.to_thread(self._capture.close)
        if self._events is not None:
            await self._events.close()

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        """Per model: the scorer's state, and its circuit when that is not closed."""
        return {
            name: {**state, **({"circuit": b.state} if (b := self._breakers.get(name)) and b.state != "closed" else {})}
            for name, state in self._scorer.readiness().items()
        }

    def reload_rules(self, rules: tuple[Rule, ...]) -> str | None:
        """Serve ``rules`` from the next search on, or say why not (a model no scorer has) and keep the old ones.

        One reference swap on the loop: a search in flight keeps the plan it was given from the old rules."""
        named = {r.model for r in rules if r.model} | {s.model for r in rules for s in r.stages or () if s.model}
        unknown = sorted(m for m in named if not self._scorer.has_model(m))
        if unknown:
            return f"the rules name models that are not loaded: {', '.join(unknown)} (models load at start only)"
        self._settings = self._settings.model_copy(update={"rules": rules})
        return None

    async def reload_models(self) -> Mapping[str, str]:
        """Load again the models whose files changed (``Scorer.reload``); per model, "reloaded" or why not."""
        return await self._scorer.reload()

    def may_rerank(self, body: bytes, indices: tuple[str, ...]) -> bool:
        """False when a `_search` certainly passes through: no rule for its indices, no rerank syntax in it."""
        return may_rerank(body, self._settings.rules, indices)

    async def run(self, call: SearchCall) -> PassThrough | EngineReply:
        if call.kind == "msearch":
            return await self._msearch(call)
        if call.kind == "template":
            return await self._template(call)
        if call.kind == "msearch_template":
            return await self._msearch_template(call)
        if call.kind in ("async_get", "async_status", "async_delete"):
            return await self._async_poll(call)
        return await self._search(call)  # a _search, or an _async_search submit

    # -- _search -----------------------------------------------------------------------------------------

    async def _search(self, call: SearchCall) -> PassThrough | EngineReply:
        if not may_rerank(call.body, self._settings.rules, call.indices):  # no JSON parse for most searches
            return PassThrough(None, Outcome.skipped("disabled_by_header" if call.opt_out else "no_rule"))
        body = read_object(call.body) if call.parseable else None
        if body is None:
            return PassThrough(None, Outcome.skipped("unparsed_body"))
        return await self._search_body(call, body)

    async def _search_body(self, call: SearchCall, body: dict[str, Any]) -> PassThrough | EngineReply:
        params = dict(call.url.query)
        if not reply_is_json(params.get("format"), call.headers.get("Accept")):
            return PassThrough(None, _NOT_JSON)  # a reply we could not cut to the page: never widened
        decision = self._decide(body, call.indices, params, call.opt_out)
        if decision.shadow is not None:
            sampled = self._random.random() < decision.shadow_sample
            return PassThrough(None, Outcome.skipped("shadow"), self._shadow_later(call, decision) if sampled else None)
        rewritten = None if decision.body is None else write_json(decision.body)
        if decision.body is not None and rewritten is None:  # too deep to write back: the engine judges it
            return PassThrough(None, Outcome.skipped("unparsed_body"))
        if decision.plan is None or rewritten is None:
            return PassThrough(rewritten, Outcome.skipped(decision.reason or ""))
        start = time.perf_counter()
        engine = await self._fetch(call, rewritten, decision.drop_params)
        if engine.status == 200 and engine.json is None:
            return PassThrough(None, _NOT_JSON)  # the window came back unreadable: ask again, as the client did
        if engine.json is None or engine.status != 200:
            return _as_sent(engine)
        if call.kind == "async_submit":
            return _finished(engine, await self._async_reply(engine.json, decision.plan, (call.kind, call.indices)))
        outcome = await self._rerank(engine.json, decision.plan, (call.kind, call.indices))
        _add_took(engine.json, start)
        return _finished(engine, outcome)

    # -- shadow mode -----------------------------------------------------------------------------------

    def _shadow_later(self, call: SearchCall, decision: Decision) -> Callable[[], None] | None:
        """What to start once the engine's reply has gone to the client: fetch the window again and rerank it
        at the model's idle priority, at most ``shadow_pending`` at once (beyond that, dropped and counted)."""
        body = write_json(decision.shadow_body)
        plan = decision.shadow
        if body is None or plan is None:
            return None

        def start() -> None:
            if len(self._shadows) >= self._settings.shadow_pending:
                self._metrics.shadow.labels("dropped").inc()
                return
            task = asyncio.create_task(self._shadow(call, body, plan))
            self._shadows.add(task)
            task.add_done_callback(self._shadows.discard)

        return start

    async def _shadow(self, call: SearchCall, body: bytes, plan: Plan) -> None:
        t0 = time.perf_counter()
        try:
            engine = await self._fetch(call, body, ("from", "size"))
            hits = (engine.json or {}).get("hits", {}).get("hits") if engine.status == 200 else None
            if not isinstance(hits, list) or not hits:
                self._metrics.shadow.labels("failed").inc()
                return
            per_hit = await self._hit_texts(hits, plan)
            flat = [t for texts in per_hit for t in texts]
            t1 = time.perf_counter()
            scored = self._scorer.scores(plan.model, plan.query, flat, tier=1)
            flat_scores = await asyncio.wait_for(scored, plan.timeout_s)
            model_ms = (time.perf_counter() - t1) * 1000
        except (ScoringFailed, SidecarError, TimeoutError):
            self._metrics.shadow.labels("dropped").inc()
            return
        scores = _per_hit(per_hit, flat_scores)
        figures = await asyncio.to_thread(shadow_figures, scores)
        if self._events is not None:
            shown = {**asdict(figures), "would_add_ms": round(model_ms, 3)}
            self._events.record(shadow_event(call.kind, call.indices, plan, shown, self._settings.events_include_query))
        self._metrics.shadow_overlap.observe(figures.overlap_at_10)
        self._metrics.shadow_top_rank.observe(figures.top_hit_rank)
        self._metrics.shadow_tau.observe(figures.kendall_tau)
        self._metrics.shadow_seconds.observe(time.perf_counter() - t0)
        self._metrics.shadow.labels("done").inc()

    # -- _async_search ---------------------------------------------------------------------------------

    async def _async_reply(self, envelope: dict[str, Any], plan: Plan, where: Where) -> Outcome:
        """An async search's reply: its id becomes ours (carrying the plan), a complete response is reranked,
        a running or partial one is cut to the client's page in the engine's order (its progress stays true)."""
        if isinstance(envelope.get("id"), str):
            envelope["id"] = async_ids.wrap(envelope["id"], plan, self._async_key)
        response = envelope.get("response")
        if not isinstance(response, dict):
            return Outcome.skipped("async_no_response")
        if envelope.get("is_running") or envelope.get("is_partial"):
            engine_page(response, plan)
            return Outcome.skipped("async_partial")
        return await self._rerank(response, plan, where)

    async def _async_poll(self, call: SearchCall) -> PassThrough | EngineReply:
        """A poll, status or delete of an async search: an id of ours is unwrapped for the engine, and a poll
        that completes is reranked with the plan the id carries, by whichever replica it reaches."""
        if not async_ids.is_ours(call.async_id):
            return PassThrough(None, Outcome.skipped("async_not_ours"))  # the engine's own id: as it came
        try:
            ours = async_ids.unwrap(call.async_id, self._async_key)
        except async_ids.InvalidId as e:
            raise BadRequest(f"invalid async search id [{cut(call.async_id)}]") from e
        if not reply_is_json(call.url.query.get("format"), call.headers.get("Accept")):
            raise BadRequest("an async search submitted through the rerank sidecar is read back as JSON only")
        sub = "status/" if call.kind == "async_status" else ""
        path = f"/_async_search/{sub}{quote(ours.engine_id, safe='')}"
        engine = await self._fetch(replace(call, url=call.url.with_path(path, encoded=True)), b"", ())
        if engine.status == 200 and engine.json is None:
            raise UpstreamUnavailable("the engine's async search reply could not be read")
        if engine.json is None or engine.status != 200:
            return _as_sent(engine)
        if call.kind != "async_get" or not ours.verified:  # a forged or foreign id: cut to its page, never trusted
            if isinstance(engine.json.get("id"), str):
                engine.json["id"] = call.async_id
            response = engine.json.get("response")
            if isinstance(response, dict):
                engine_page(response, ours.plan)
            return _finished(
                engine, Outcome.skipped("async_status" if call.kind != "async_get" else "async_unverified")
            )
        return _finished(engine, await self._async_reply(engine.json, ours.plan, (call.kind, call.indices)))

    # -- _search/template --------------------------------------------------------------------------------

    async def _template(self, call: SearchCall) -> PassThrough | EngineReply:
        """Rendered by the engine's `_render/template`, then planned and reranked as the `_search` it stands for;
        an engine that cannot render it (no templates, a bad one) gets the request untouched and answers it."""
        if not may_rerank(call.body, self._settings.rules, call.indices):
            return PassThrough(None, Outcome.skipped("disabled_by_header" if call.opt_out else "no_rule"))
        template = read_object(call.body) if call.parseable else None
        if template is None:
            return PassThrough(None, Outcome.skipped("unparsed_body"))
        search = await self._render(call, template)
        if search is None:
            return PassThrough(None, Outcome.skipped("template_not_rendered"))
        path = "/" + ",".join(call.indices) + "/_search" if call.indices else "/_search"
        as_search = replace(call, kind="search", method="POST", url=call.url.with_path(path))
        return _untouched_unless_reranked(await self._search_body(as_search, search))

    async def _msearch_template(self, call: SearchCall) -> PassThrough | EngineReply:
        """Each item rendered by the engine, then the whole planned and reranked as the `_msearch` it stands for;
        if any item cannot be rendered, the request goes to the engine untouched and it answers item by item."""
        pairs = parse_msearch(call.body) if call.parseable else None
        if pairs is None:
            return PassThrough(None, Outcome.skipped("unparsed_body"))
        rules = self._settings.rules
        if not any(may_rerank(call.body, rules, item_indices(h, call.indices)) for h, _ in pairs):
            return PassThrough(None, Outcome.skipped("disabled_by_header" if call.opt_out else "no_rule"))
        if len(pairs) > self._settings.max_msearch_items:
            return PassThrough(None, Outcome.skipped("unparsed_body"))  # the engine's to refuse
        searches = await asyncio.gather(*(self._render(call, t) for _, t in pairs))
        rendered = [(h, s) for (h, _), s in zip(pairs, searches, strict=True) if s is not None]
        body = dump_msearch(rendered) if len(rendered) == len(pairs) else None
        if body is None:
            return PassThrough(None, Outcome.skipped("template_not_rendered"))
        path = "/" + ",".join(call.indices) + "/_msearch" if call.indices else "/_msearch"
        as_msearch = replace(call, kind="msearch", method="POST", body=body, url=call.url.with_path(path))
        return _untouched_unless_reranked(await self._msearch(as_msearch))

    async def _render(self, call: SearchCall, template: dict[str, Any]) -> dict[str, Any] | None:
        """The search a template stands for, rendered by the engine's `_render/template`; None where it cannot."""
        body = write_json({k: v for k, v in template.items() if k in ("id", "source", "params")})
        if body is None:
            return None
        engine = await self._fetch(replace(call, method="POST", url=URL("/_render/template")), body, ())
        rendered = engine.json if engine.status == 200 else None
        search = rendered.get("template_output") if rendered is not None else None
        if not isinstance(search, dict):
            return None
        for key in ("explain", "profile"):  # the template request's own search options
            if key in template:
                search[key] = template[key]
        return search

    def _decide(
        self, body: dict[str, Any], indices: tuple[str, ...], params: dict[str, str], opt_out: bool
    ) -> Decision:
        return decide(body, indices, params, self._settings, opt_out=opt_out, has_model=self._scorer.has_model)

    # -- _msearch ----------------------------------------------------------------------------------------

    async def _msearch(self, call: SearchCall) -> PassThrough | EngineReply:
        pairs = parse_msearch(call.body) if call.parseable else None
        if pairs is None:
            return PassThrough(None, Outcome.skipped("unparsed_body"))
        if len(pairs) > self._settings.max_msearch_items:
            limit = self._settings.max_msearch_items
            raise BadRequest(f"_msearch of {len(pairs)} searches is over the maximum of {limit} (max_msearch_items)")
        if not reply_is_json(call.url.query.get("format"), call.headers.get("Accept")):
            return PassThrough(None, _NOT_JSON)
        params = {k: v for k, v in call.url.query.items() if k == "filter_path"}
        decisions = [self._decide_item(b, item_indices(h, call.indices), params, call.opt_out) for h, b in pairs]
        failed = {i: d for i, d in enumerate(decisions) if isinstance(d, SidecarError)}
        plans = [d.plan if isinstance(d, Decision) else None for d in decisions]
        sent = [
            (h, d.body if d.body is not None else b)
            for (h, b), d in zip(pairs, decisions, strict=True)
            if isinstance(d, Decision)
        ]
        rewritten = dump_msearch(sent)
        if not failed and not any(plans):
            untouched = all(isinstance(d, Decision) and d.body is None for d in decisions)
            return PassThrough(None if untouched else rewritten, Outcome.skipped("no_item_reranked"))
        if rewritten is None:
            return PassThrough(None, Outcome.skipped("unparsed_body"))
        start = time.perf_counter()
        if sent:
            engine = await self._fetch(call, rewritten, ())
        else:  # every item is one of our 400s: the engine has nothing to do
            engine = _our_reply(call, {"took": 0, "responses": []})
        responses = engine.json.get("responses") if engine.json is not None else None
        if engine.status == 200 and engine.json is None:
            return PassThrough(None, _NOT_JSON)
        if engine.status != 200 or not isinstance(responses, list) or len(responses) != len(sent):
            return _as_sent(engine)
        answers = iter(responses)  # the engine's answers, and ours (the items we refused) in their places
        merged = [failed[i].body() if i in failed else next(answers) for i in range(len(pairs))]
        assert engine.json is not None
        engine.json["responses"] = merged

        async def one(i: int, plan: Plan | None) -> Outcome | None:
            item = merged[i]
            if plan is None or not isinstance(item, dict) or "error" in item or item.get("status", 200) != 200:
                return None
            try:
                outcome = await self._rerank(item, plan, (call.kind, item_indices(pairs[i][0], call.indices)))
            except SidecarError as e:  # this search's 429 or strict failure; the others are served
                merged[i] = e.body()
                return None
            _add_took(item, start)
            return outcome

        outcomes = await asyncio.gather(*(one(i, p) for i, p in enumerate(plans)))
        items = tuple(o for o in outcomes if o is not None)
        return _finished(engine, Outcome("applied", items=items) if items else Outcome.skipped("no_item_reranked"))

    def _decide_item(
        self, body: dict[str, Any], indices: tuple[str, ...], params: dict[str, str], opt_out: bool
    ) -> Decision | SidecarError:
        """One item's decision, or its error: the engine answers `_msearch` item by item, and so do we."""
        try:
            return self._decide(body, indices, params, opt_out)
        except SidecarError as e:
            return e

    # -- the engine --------------------------------------------------------------------------------------

    async def _fetch(self, call: SearchCall, body: bytes, drop_params: tuple[str, ...]) -> EngineReply:
        headers = CIMultiDict(call.headers)
        headers.popall("Content-Encoding", None)
        # The window's reply must come back in an encoding we read (and cut), whatever the client accepts.
        headers["Accept-Encoding"] = "gzip" if accepts_gzip(call.headers.get("Accept-Encoding")) else "identity"
        headers["Content-Length"] = str(len(body))
        headers.setdefault("Content-Type", "application/json")
        query = [(k, v) for k, v in call.url.query.items() if k not in drop_params]
        path_qs = str(call.url.with_query(query))
        t0 = time.perf_counter()
        status, reply_headers, data = await self._upstream.fetch(call.method, path_qs, headers, body, retry=True)
        self._metrics.upstream_seconds.labels("search").observe(time.perf_counter() - t0)
        out_headers = client_response_headers(
            reply_headers, drop=("Content-Length", "Content-Encoding"), compat_accept=call.reply_compat
        )
        encoding = reply_headers.get("Content-Encoding")
        plain = decode(data, encoding)
        reply = read_object(plain) if plain is not None and plain.strip() else None
        return EngineReply(status, out_headers, data, encoding, reply, Outcome.skipped("engine_error"))

    # -- scoring -----------------------------------------------------------------------------------------

    async def _rerank(self, reply: dict[str, Any], plan: Plan, where: Where) -> Outcome:
        """``_reorder``, and the search's event (``where``: the call's kind and the indices searched)."""
        outcome = await self._reorder(reply, plan)
        if self._events is not None:
            self._events.record(event(*where, plan, outcome, self._settings.events_include_query))
        return outcome

    async def _reorder(self, reply: dict[str, Any], plan: Plan) -> Outcome:
        """Splice the model's order into ``reply``; if scoring fails, the engine's page (or raise, strict).

        A cascade reorders the top of the window stage by stage; the last stage's scores are the reply's."""
        hits = (reply.get("hits") or {}).get("hits") or []
        if self._capture is not None:
            self._capture.record(plan.query)
        texts = await self._hit_texts(hits, plan)  # our own code: a bug here is ours, not the model's
        steps = plan.cascade
        label = ">".join(s.model for s in steps)
        t0 = time.perf_counter()
        deadline = None if plan.budget_s is None else t0 + plan.budget_s
        order, first, cut = list(range(len(hits))), 0, False
        try:
            for n, step in enumerate(steps):
                head = order[: step.window]
                budget = None if deadline is None else max(0.0, deadline - time.perf_counter()) / (len(steps) - n)
                scores = await self._score([texts[i] for i in head], plan, step.model, budget)
                first = len(scores) if n == 0 else first
                cut = cut or len(scores) < len(head)
                if n < len(steps) - 1:  # an inner stage: its model reorders its head for the next stage
                    best = sorted(range(len(scores)), key=lambda j: (-scores[j], j))
                    order = [head[j] for j in best] + head[len(scores) :] + order[step.window :]
        except ScoringFailed as e:
            if isinstance(e, Overloaded) and self._settings.overload == "429":
                raise TooManyRequests(str(e), headers={"Retry-After": "1"}) from e
            log.warning("rerank fell back (%s) for model %s: %s", e.reason, label, e)
            if plan.strict:
                raise RerankFailed(
                    f"reranking with model [{label}] failed ({e.reason}) and failures are not allowed"
                ) from e
            engine_page(reply, plan)
            return Outcome("fallback", e.reason, model=label, window=len(hits))
        took_ms = (time.perf_counter() - t0) * 1000
        if len(steps) > 1:
            reply["hits"]["hits"] = [hits[i] for i in order]
        splice(reply, plan, scores, label)
        why = ("budget" if plan.budget_s is not None else "search_cap") if cut else ""
        return Outcome("applied", plan.source, label, len(hits), first, took_ms, cut=why)

    async def _hit_texts(self, hits: list[dict[str, Any]], plan: Plan) -> list[list[str]]:
        """Each hit's texts, per hit and so off the loop. With array_mode max a hit is many texts: each keeps its
        first values within an even share of the search's max_search_pairs."""
        share = max(1, self._settings.max_search_pairs // max(1, len(hits)))
        return await asyncio.to_thread(lambda: [hit_texts(h, plan)[:share] for h in hits])

    async def _score(self, per_hit: list[list[str]], plan: Plan, model: str, budget_s: float | None) -> list[float]:
        """One score per hit (its best text) for the head of the window that the budget allows (all of it
        without one), within the deadline, through the model's circuit breaker."""
        if not per_hit:
            return []
        breaker = self._breaker(model)
        if not breaker.allow():
            raise CircuitOpen(f"model [{model}] circuit is open")
        flat = [t for texts in per_hit for t in texts]
        try:
            flat_scores = await asyncio.wait_for(self._flat_scores(plan, model, flat, budget_s), plan.timeout_s)
        except TimeoutError as e:
            self._settle(breaker, model, breaker.failure)
            raise ScoringTimeout(f"no scores within {plan.timeout_s * 1000:.0f} ms") from e
        except ScoringFailed as e:
            self._settle(breaker, model, breaker.failure if e.counts_against_model else breaker.release)
            raise
        except BaseException:  # our own bug, or the search was cancelled: no verdict on the model
            breaker.release()
            raise
        self._settle(breaker, model, breaker.success)
        return _per_hit(per_hit, flat_scores)

    async def _flat_scores(self, plan: Plan, model: str, texts: list[str], budget_s: float | None) -> list[float]:
        """With a budget, a page after the first continues the head that page 1 reranked, from the score
        cache, at no model cost; only where nothing is cached (evicted, or page 1 went to another replica)
        is a fresh head scored within the budget."""
        if budget_s is not None and plan.start > 0:
            cached = await self._scorer.scores(model, plan.query, texts, budget_s=0.0)
            if cached:
                return cached
        return await self._scorer.scores(model, plan.query, texts, budget_s=budget_s)

    def _settle(self, breaker: CircuitBreaker, model: str, verdict: Callable[[], None]) -> None:
        verdict()
        self._metrics.circuit_open.labels(model).set(breaker.state != "closed")

    def _breaker(self, model: str) -> CircuitBreaker:
        if model not in self._breakers:
            s = self._settings
            self._breakers[model] = CircuitBreaker(s.breaker_failures, s.breaker_cooldown_s)
        return self._breakers[model]

    # -- the rerank API ----------------------------------------------------------------------------------

    async def score_texts(self, model: str, query: str, texts: Sequence[str]) -> list[float]:
        """One score per text, in order (the rerank API): the model's queue, caches and breaker, within
        ``rerank_timeout_ms``, as a search's. ``UnknownModel`` for a model that is not ours; ``ScoringFailed``
        when not every text was scored (one search's share of the model is bounded: ``max_search_pairs``)."""
        if not self._scorer.has_model(model):
            raise UnknownModel(f"no model named [{model}]")
        timeout_s = self._settings.rerank_timeout_ms / 1000
        plan = Plan(query, (), len(texts), 0, len(texts), model, ScoringOptions(), timeout_s=timeout_s)
        scores = await self._score([[t] for t in texts], plan, model, None)
        if len(scores) < len(texts):
            raise ScoringTimeout(f"{len(scores)} of {len(texts)} texts scored within the model's share of the deadline")
        return scores


_NOT_JSON = Outcome.skipped("reply_not_json")


def _per_hit(per_hit: list[list[str]], flat_scores: list[float]) -> list[float]:
    """One score per hit, its best text's; a hit counts as scored when all its texts are."""
    out, i = [], 0
    for texts in per_hit:
        if i + len(texts) > len(flat_scores):
            break
        out.append(max(flat_scores[i : i + len(texts)]))
        i += len(texts)
    return out


def _untouched_unless_reranked(result: PassThrough | EngineReply) -> PassThrough | EngineReply:
    """A template request that ends up not reranked goes on as the client sent it, never its rendered body."""
    return PassThrough(None, result.outcome) if isinstance(result, PassThrough) else result


def _add_took(reply: dict[str, Any], start: float) -> None:
    took = reply.get("took")
    if isinstance(took, int) and not isinstance(took, bool):
        reply["took"] = took + round((time.perf_counter() - start) * 1000)


def _our_reply(call: SearchCall, body: dict[str, Any]) -> EngineReply:
    content_type = "application/json"
    if call.reply_compat:
        content_type = vendor_media_type(content_type, call.reply_compat)
    headers = CIMultiDict({"Content-Type": content_type})
    return EngineReply(200, headers, b"", None, body, Outcome.skipped("no_item_reranked"))


def _as_sent(engine: EngineReply) -> EngineReply:
    """The engine's reply exactly as it came (an error, not JSON, not the shape we expect)."""
    return EngineReply(engine.status, engine.headers, engine.raw, engine.encoding, None, engine.outcome)


def _finished(engine: EngineReply, outcome: Outcome) -> EngineReply | PassThrough:
    """The reranked reply written back; a reply that nests too deep to write goes again as the client sent it."""
    body = write_json(engine.json)
    if body is None:
        return PassThrough(None, Outcome.skipped("unparsed_reply"))
    return EngineReply(engine.status, engine.headers, engine.raw, engine.encoding, engine.json, outcome, body)
