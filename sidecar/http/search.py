"""The catch-all handler: searches go to the rerank pipeline, everything else straight through."""

from __future__ import annotations

from aiohttp import web
from multidict import CIMultiDict

from sidecar.encoding import accepts_gzip, decode, gzip_body, is_gzip
from sidecar.errors import PayloadTooLarge
from sidecar.headers import is_json_media_type, is_ndjson_media_type
from sidecar.http.keys import FORWARDER, OUTCOME, PIPELINE, ROUTE, SETTINGS
from sidecar.rerank.outcome import Outcome
from sidecar.rerank.pipeline import EngineReply, PassThrough, SearchCall
from sidecar.search.async_ids import is_ours
from sidecar.search.routes import search_route


async def dispatch(request: web.Request) -> web.StreamResponse:
    route = search_route(request.method, request.path)
    forwarder = request.app[FORWARDER]
    if route is None or (route.async_id and not is_ours(route.async_id)):  # an engine's own async id: untouched
        return await forwarder.forward(request)
    request[ROUTE] = route.kind
    raw, text = await _read(request)
    if text is None:
        return await _pass(request, raw, PassThrough(None, _UNPARSED))
    opt_out = request.headers.get("X-Rerank", "").strip().lower() == "off"
    pipeline = request.app[PIPELINE]
    if route.kind == "search" and not pipeline.may_rerank(text, route.indices):  # most searches: no JSON parse
        return await _pass(request, raw, PassThrough(None, _OPTED_OUT if opt_out else _NO_RULE))
    content_type = request.headers.get("Content-Type")
    call = SearchCall(
        kind=route.kind,
        method=request.method,
        url=request.rel_url,
        indices=route.indices,
        body=text,
        parseable=(is_ndjson_media_type if "msearch" in route.kind else is_json_media_type)(content_type),
        headers=forwarder.upstream_headers(request),
        reply_compat=forwarder.reply_compat(request),
        opt_out=opt_out,
        async_id=route.async_id,
    )
    result = await pipeline.run(call)
    if isinstance(result, PassThrough):
        return await _pass(request, raw, result)
    request[OUTCOME] = result.outcome
    return _reply(request, result)


_UNPARSED = Outcome.skipped("unparsed_body")
_NO_RULE = Outcome.skipped("no_rule")
_OPTED_OUT = Outcome.skipped("disabled_by_header")


async def _read(request: web.Request) -> tuple[bytes, bytes | None]:
    """The body as sent and decoded (None: an encoding we do not read). ``max_search_body_bytes`` bounds both: the
    bytes read, and the bytes a compressed body inflates to (checked as it inflates, whatever its ratio)."""
    limit = request.app[SETTINGS].max_search_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"search body of {request.content_length} bytes is over the limit of {limit}")
    if request.content_length is not None:  # within the limit (above); the app's client_max_size is the limit too
        body = await request.read()
    else:
        raw = bytearray()
        async for chunk in request.content.iter_any():  # a chunked body has no length to check up front
            raw += chunk
            if len(raw) > limit:
                raise PayloadTooLarge(f"search body is over the limit of {limit} bytes")
        body = bytes(raw)
    return body, decode(body, request.headers.get("Content-Encoding"), limit=limit)


async def _pass(request: web.Request, raw: bytes, result: PassThrough) -> web.StreamResponse:
    request[OUTCOME] = result.outcome
    body = raw if result.body is None else result.body
    response = await request.app[FORWARDER].forward(
        request, body, rewritten=result.body is not None, extra_headers=result.outcome.headers()
    )
    if result.after is not None:  # shadow work starts once the client has its reply: it adds no latency
        if not response.prepared:
            await response.prepare(request)
            await response.write_eof()
        result.after()
    return response


def _reply(request: web.Request, engine: EngineReply) -> web.Response:
    """The reranked reply, compressed back if the engine compressed and the client accepts gzip; or the
    engine's bytes as they came."""
    headers = CIMultiDict(engine.headers)
    headers.update(engine.outcome.headers())
    if engine.body is None:
        if engine.encoding:
            headers["Content-Encoding"] = engine.encoding
        return web.Response(status=engine.status, body=engine.raw, headers=headers)
    body = engine.body
    if is_gzip(engine.encoding) and accepts_gzip(request.headers.get("Accept-Encoding")):
        body = gzip_body(body)
        headers["Content-Encoding"] = "gzip"
    return web.Response(status=engine.status, body=body, headers=headers)
