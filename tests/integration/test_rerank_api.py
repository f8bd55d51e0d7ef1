"""The rerank API on a real socket: Cohere's v2 shape through the official ``cohere`` SDK (a client nobody here
wrote), TEI's shape and every error over raw HTTP; the model queue, breaker and deadline are the real ones."""

from __future__ import annotations

import gzip
import json
import math
import socket
from collections.abc import Callable, Iterator
from typing import Any

import cohere
import pytest
from aiohttp import web
from cohere.v2.types.v2rerank_response import V2RerankResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import Settings
from sidecar.rerank.api import sigmoid
from tests.fakes import KeyScorer, key_score
from tests.servers import Http, SidecarThread

NO_ENGINE = "http://127.0.0.1:9"  # the rerank API never asks the engine
KEYS = ("k-one", "k-two")
QUERY = "which fruit is yellow"
DOCS = [f"document {i} about {w}" for i, w in enumerate(["apple", "banana", "cherry", "lemon", "fig", "grape", "kiwi"])]
NO_RETRY: Any = {"max_retries": 0}  # the SDK retries 429 and 5xx by default: every test sees our first answer
COHERE_PATH = "/_sidecar/v2/rerank"
TEI_PATH = "/_sidecar/rerank"

Make = Callable[..., SidecarThread]


def _best_first(query: str, texts: list[str]) -> list[int]:
    return sorted(range(len(texts)), key=lambda i: (-key_score(query, texts[i]), i))


def _client(server: SidecarThread, key: str = KEYS[0]) -> cohere.ClientV2:
    """The SDK joins its paths to ``base_url``: ``.../_sidecar`` + ``v2/rerank``."""
    return cohere.ClientV2(api_key=key, base_url=server.url + "/_sidecar")


def _post(
    http: Http, server: SidecarThread, path: str, body: Any, key: str | None = KEYS[0], **headers: str
) -> tuple[int, Any, Any]:
    hdrs = {"Content-Type": "application/json", **headers}
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http("POST", server.url + path, data, headers=hdrs)
    return r.status, r.headers, json.loads(r.data)


@pytest.fixture
def keyed(make_sidecar: Make) -> SidecarThread:
    return make_sidecar(NO_ENGINE, KeyScorer(models=("default", "other")), rerank_api_keys=KEYS, max_rerank_documents=9)


# -- (a) the official cohere SDK ---------------------------------------------------------------------------


def test_sdk_parses_our_reply_in_order_with_top_n(keyed: SidecarThread) -> None:
    co = _client(keyed)
    reply = co.rerank(model="default", query=QUERY, documents=DOCS, top_n=3, request_options=NO_RETRY)
    assert isinstance(reply, V2RerankResponse)
    best = _best_first(QUERY, DOCS)
    assert [r.index for r in reply.results] == best[:3]
    for r in reply.results:
        assert r.relevance_score == pytest.approx(sigmoid(key_score(QUERY, DOCS[r.index])))
        assert 0.0 <= r.relevance_score <= 1.0
    assert reply.id and reply.meta is not None and reply.meta.api_version is not None
    assert reply.meta.api_version.version == "2"
    assert reply.meta.warnings is None

    everything = co.rerank(model="default", query=QUERY, documents=DOCS, request_options=NO_RETRY)
    assert [r.index for r in everything.results] == best
    over = co.rerank(model="default", query=QUERY, documents=DOCS, top_n=100, request_options=NO_RETRY)
    assert [r.index for r in over.results] == best
    assert over.id != everything.id


def test_sdk_named_model_second_key_and_ignored_options(keyed: SidecarThread) -> None:
    co = _client(keyed, KEYS[1])
    reply = co.rerank(model="other", query=QUERY, documents=DOCS[:4], max_tokens_per_doc=64, request_options=NO_RETRY)
    assert [r.index for r in reply.results] == _best_first(QUERY, DOCS[:4])
    assert reply.meta is not None and reply.meta.warnings and "max_tokens_per_doc" in reply.meta.warnings[0]
    scorer = keyed.scorer
    assert isinstance(scorer, KeyScorer) and scorer.calls[-1] == ("other", QUERY, 4)


@pytest.mark.parametrize(
    ("call", "error", "status", "words"),
    [
        ({"query": ""}, cohere.BadRequestError, 400, "query must not be empty"),
        ({"query": " \t"}, cohere.BadRequestError, 400, "query must not be empty"),
        ({"documents": []}, cohere.BadRequestError, 400, "list of documents must not be empty"),
        ({"documents": ["d"] * 10}, cohere.BadRequestError, 400, "at most 9 - received 10"),
        ({"top_n": 0}, cohere.BadRequestError, 400, "top_n"),
        ({"model": "rerank-v3.5"}, cohere.NotFoundError, 404, "model 'rerank-v3.5' not found"),
    ],
)
def test_sdk_raises_our_4xx(
    keyed: SidecarThread, call: dict[str, Any], error: type[cohere.core.ApiError], status: int, words: str
) -> None:
    args: dict[str, Any] = {"model": "default", "query": QUERY, "documents": DOCS} | call
    with pytest.raises(error) as raised:
        _client(keyed).rerank(**args, request_options=NO_RETRY)
    assert raised.value.status_code == status
    assert isinstance(raised.value.body, dict) and words in raised.value.body["message"]
    assert set(raised.value.body) == {"message"}


def test_sdk_wrong_key_is_401(keyed: SidecarThread) -> None:
    with pytest.raises(cohere.UnauthorizedError) as raised:
        _client(keyed, "k-one-and-more").rerank(model="default", query=QUERY, documents=DOCS, request_options=NO_RETRY)
    assert raised.value.status_code == 401
    assert raised.value.body == {"message": "invalid api token"}


def test_real_model_full_queue_is_429_through_the_sdk(make_sidecar: Make, tiny_model: str, http: Http) -> None:
    """The real model queue: with room for one pair, one document is scored and two (neither in the score cache)
    are refused at once; two of which one is cached are one pair for the model, and scored."""
    server = make_sidecar(NO_ENGINE, model=tiny_model, queue_pairs=1, rerank_api_keys=KEYS)
    co = _client(server)
    one = co.rerank(model="default", query=QUERY, documents=DOCS[:1], request_options=NO_RETRY)
    assert [r.index for r in one.results] == [0]
    cached_and_new = co.rerank(model="default", query=QUERY, documents=DOCS[:2], request_options=NO_RETRY)
    assert sorted(r.index for r in cached_and_new.results) == [0, 1]
    with pytest.raises(cohere.TooManyRequestsError) as raised:
        co.rerank(model="default", query=QUERY, documents=DOCS[2:4], request_options=NO_RETRY)
    assert raised.value.status_code == 429  # its Retry-After: below, raw (5.13 errors carry no headers)
    assert "overloaded" in str(raised.value.body)  # 5.13 parses it into a type of its own
    status, headers, body = _post(http, server, TEI_PATH, {"query": QUERY, "texts": DOCS[4:6]})
    assert (status, body["error_type"], headers.get("Retry-After")) == (429, "overloaded", "1")


# Words of the tiny model's vocabulary (tests/models.py): its random weights tell them apart, if only just.
TINY_QUERY = "apple date"
TINY_DOCS = ["apple banana doc 1", "the date parse string", "json time 7", "banana", "apple apple", "doc 3 , 4"]


def test_real_model_both_shapes_agree(make_sidecar: Make, tiny_model: str, http: Http) -> None:
    """The tiny cross-encoder through both shapes: the same order; Cohere's relevance is the sigmoid of TEI's raw
    score, which is TEI's default score; the reply parses into the SDK's types."""
    server = make_sidecar(NO_ENGINE, model=tiny_model, rerank_api_keys=KEYS)
    co = _client(server)
    cohere_reply = co.rerank(model="default", query=TINY_QUERY, documents=TINY_DOCS, request_options=NO_RETRY)
    status, _, raw = _post(http, server, TEI_PATH, {"query": TINY_QUERY, "texts": TINY_DOCS, "raw_scores": True})
    assert status == 200
    _, _, plain = _post(http, server, TEI_PATH, {"query": TINY_QUERY, "texts": TINY_DOCS})
    assert [r.index for r in cohere_reply.results] == [r["index"] for r in raw] == [r["index"] for r in plain]
    assert sorted(r["index"] for r in raw) == list(range(len(TINY_DOCS)))
    scores = [r["score"] for r in raw]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) > 1  # a model's scores, not a constant
    for c, r, p in zip(cohere_reply.results, raw, plain, strict=True):
        assert c.relevance_score == pytest.approx(sigmoid(r["score"])) == pytest.approx(p["score"])
    top = co.rerank(model="default", query=TINY_QUERY, documents=TINY_DOCS, top_n=2, request_options=NO_RETRY)
    assert [r.index for r in top.results] == [r["index"] for r in raw[:2]]


def test_real_model_share_of_the_queue_is_all_or_503(make_sidecar: Make, tiny_model: str, http: Http) -> None:
    """A search's share of the model (max_search_pairs) bounds an API call too: past it, no partial answer."""
    server = make_sidecar(NO_ENGINE, model=tiny_model, max_search_pairs=2)
    assert _post(http, server, TEI_PATH, {"query": TINY_QUERY, "texts": TINY_DOCS[:2]}, key=None)[0] == 200
    status, _, body = _post(http, server, TEI_PATH, {"query": TINY_QUERY, "texts": TINY_DOCS[2:5]}, key=None)
    assert (status, body["error_type"]) == (503, "unhealthy") and "2 of 3 texts" in body["error"]


def test_circuit_opens_after_model_failures_then_503(make_sidecar: Make, http: Http) -> None:
    """A model that raises: Cohere's 500 and TEI's 424 (backend), then, the circuit open, 503 in both shapes."""
    server = make_sidecar(NO_ENGINE, KeyScorer(fail=True), breaker_failures=2, rerank_api_keys=KEYS)
    with pytest.raises(cohere.InternalServerError) as first:
        _client(server).rerank(model="default", query=QUERY, documents=DOCS, request_options=NO_RETRY)
    assert first.value.status_code == 500 and "exploded" not in first.value.body["message"]
    status, _, body = _post(http, server, TEI_PATH, {"query": QUERY, "texts": DOCS})
    assert (status, body["error_type"]) == (424, "backend")
    with pytest.raises(cohere.ServiceUnavailableError) as opened:
        _client(server).rerank(model="default", query=QUERY, documents=DOCS, request_options=NO_RETRY)
    assert opened.value.status_code == 503 and "circuit is open" in opened.value.body["message"]
    status, headers, body = _post(http, server, TEI_PATH, {"query": QUERY, "texts": DOCS})
    assert (status, body["error_type"], headers.get("Retry-After")) == (503, "unhealthy", "1")


def test_deadline_is_503(make_sidecar: Make, http: Http) -> None:
    server = make_sidecar(NO_ENGINE, KeyScorer(hang=5.0), rerank_timeout_ms=100, rerank_api_keys=KEYS)
    with pytest.raises(cohere.ServiceUnavailableError) as raised:
        _client(server).rerank(model="default", query=QUERY, documents=DOCS, request_options=NO_RETRY)
    assert "did not score in time" in raised.value.body["message"]
    status, _, body = _post(http, server, TEI_PATH, {"query": QUERY, "texts": DOCS})
    assert (status, body["error_type"]) == (503, "unhealthy")


# -- (b) TEI's shape, raw ----------------------------------------------------------------------------------


def test_tei_order_scores_and_text(keyed: SidecarThread, http: Http) -> None:
    best = _best_first(QUERY, DOCS)
    status, headers, raw = _post(http, keyed, TEI_PATH, {"query": QUERY, "texts": DOCS, "raw_scores": True})
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    assert raw == [{"index": i, "score": key_score(QUERY, DOCS[i])} for i in best]
    _, _, plain = _post(http, keyed, TEI_PATH, {"query": QUERY, "texts": DOCS, "return_text": True, "truncate": False})
    assert plain == [{"index": i, "text": DOCS[i], "score": sigmoid(key_score(QUERY, DOCS[i]))} for i in best]
    extra = {"query": QUERY, "texts": DOCS[:2], "truncate": None, "truncation_direction": "Right", "unknown": [1]}
    assert _post(http, keyed, TEI_PATH, extra)[0] == 200  # fields TEI does not know are ignored, as TEI does


def test_gzip_body_and_its_limits(make_sidecar: Make, http: Http) -> None:
    server = make_sidecar(NO_ENGINE, max_search_body_bytes=4096)
    body = json.dumps({"query": QUERY, "texts": DOCS}).encode()
    status, _, reply = _post(http, server, TEI_PATH, gzip.compress(body), key=None, **{"Content-Encoding": "gzip"})
    assert status == 200 and len(reply) == len(DOCS)
    bomb = gzip.compress(json.dumps({"query": QUERY, "texts": ["x" * 10_000]}).encode())
    status, _, reply = _post(http, server, TEI_PATH, bomb, key=None, **{"Content-Encoding": "gzip"})
    assert (status, reply["error_type"]) == (413, "validation")
    status, _, reply = _post(http, server, COHERE_PATH, b"{" + b" " * 5000 + b"}", key=None)
    assert status == 413 and set(reply) == {"message"}
    status, _, reply = _post(http, server, TEI_PATH, body, key=None, **{"Content-Encoding": "br"})
    assert status == 400 and "Content-Encoding" in reply["error"]


TEI_ERRORS = [
    ({"query": QUERY, "texts": []}, 400, "empty", "`texts` cannot be empty"),
    ({"query": "", "texts": DOCS}, 400, "empty", "`query` cannot be empty"),
    ({"query": QUERY, "texts": ["t"] * 10}, 413, "validation", "batch size 10 > maximum allowed batch size 9"),
    ({"query": "q" * 10_001, "texts": DOCS}, 422, "validation", "over the maximum of 10000"),
    ({"texts": DOCS}, 422, "validation", "query: Field required"),
    ({"query": QUERY}, 422, "validation", "texts: Field required"),
    ({"query": QUERY, "texts": "one"}, 422, "validation", "texts: Input should be a valid list"),
    ({"query": QUERY, "texts": [[1, 2]]}, 422, "validation", "texts.0: Input should be a valid string"),
    ({"query": QUERY, "texts": DOCS, "raw_scores": "yes"}, 422, "validation", "raw_scores"),
    ({"query": QUERY, "texts": DOCS, "return_text": 1}, 422, "validation", "return_text"),
    ({"query": QUERY, "texts": DOCS, "truncation_direction": "up"}, 422, "validation", "truncation_direction"),
    ({"query": QUERY, "texts": DOCS, "truncation_direction": "left"}, 422, "validation", "`left` is not supported"),
    ([QUERY, DOCS], 422, "validation", "body: Input should be a valid dictionary"),
    (b'{"query": "q", "texts": [', 400, "validation", "not JSON"),
    (b'{"query": "q", "texts": ["a"], "raw_scores": NaN}', 400, "validation", "not JSON"),
    (b"\xff\xfe", 400, "validation", "not JSON"),
]


def test_lone_surrogates_are_read_and_sent_back(keyed: SidecarThread, http: Http) -> None:
    """JSON may escape half a surrogate pair; the model reads it as U+FFFD, the reply carries the text as sent."""
    body = b'{"query": "q \\ud800", "texts": ["a \\udc00", "b"], "return_text": true}'
    status, _, reply = _post(http, keyed, TEI_PATH, body)
    assert status == 200 and sorted(r["text"] for r in reply) == ["a \udc00", "b"]


@pytest.mark.parametrize(("body", "status", "kind", "words"), TEI_ERRORS)
def test_tei_errors(keyed: SidecarThread, http: Http, body: Any, status: int, kind: str, words: str) -> None:
    got, _, reply = _post(http, keyed, TEI_PATH, body)
    assert (got, reply["error_type"]) == (status, kind), reply
    assert words in reply["error"] and set(reply) == {"error", "error_type"}


COHERE_ERRORS = [
    ({"return_documents": True}, "return_documents is not a v2 field"),
    ({"rank_fields": ["title"]}, "rank_fields is not a v2 field"),
    ({"max_chunks_per_doc": 2}, "max_chunks_per_doc is not a v2 field"),
    ({"documents": [{"text": "a"}]}, "documents.0: Input should be a valid string"),
    ({"documents": "a"}, "documents: Input should be a valid list"),
    ({"top_n": 2.0}, "top_n: Input should be a valid integer"),
    ({"top_n": True}, "top_n: Input should be a valid integer"),
    ({"max_tokens_per_doc": 0}, "max_tokens_per_doc"),
    ({"query": 7}, "query: Input should be a valid string"),
    ({"query": "q" * 10_001}, "over the maximum of 10000"),
    ({"stream": True}, "stream: Extra inputs are not permitted"),
    ({"model": None}, "model: Input should be a valid string"),
    ({"relevant_spans": {"mode": "enabled"}}, "relevant_spans is not supported by model 'default'"),
    ({"relevant_spans": {"mode": "on"}}, "relevant_spans.mode"),
    ({"priority": -1}, "priority"),
]


@pytest.mark.parametrize(("change", "words"), COHERE_ERRORS)
def test_cohere_errors(keyed: SidecarThread, http: Http, change: dict[str, Any], words: str) -> None:
    body = {"model": "default", "query": QUERY, "documents": DOCS} | change
    status, _, reply = _post(http, keyed, COHERE_PATH, body)
    assert status == 400 and set(reply) == {"message"}
    assert reply["message"].startswith("invalid request: ") and words in reply["message"], reply


def test_cohere_accepted_no_ops_and_a_bad_body(keyed: SidecarThread, http: Http) -> None:
    # fields of newer SDKs (7.x): spans disabled, and a priority (the queue has none: ignored)
    body = {"model": "default", "query": QUERY, "documents": DOCS[:2], "relevant_spans": {"mode": "disabled"}}
    body |= {"priority": 3}
    status, _, reply = _post(http, keyed, COHERE_PATH, body)
    assert status == 200 and len(reply["results"]) == 2
    # early v2 SDKs (5.13) could send return_documents: false asks for nothing we would not do
    status, _, reply = _post(http, keyed, COHERE_PATH, body | {"return_documents": False})
    assert status == 200 and all(set(r) == {"index", "relevance_score"} for r in reply["results"])
    status, _, reply = _post(http, keyed, COHERE_PATH, b"[1")
    assert status == 400 and "not JSON" in reply["message"]


@pytest.mark.parametrize("path", [COHERE_PATH, TEI_PATH])
def test_other_methods_are_the_apis_405(keyed: SidecarThread, http: Http, path: str) -> None:
    r = http("GET", keyed.url + path)
    assert r.status == 405 and r.headers["Allow"] == "POST"
    assert "message" in json.loads(r.data) if path == COHERE_PATH else "error_type" in json.loads(r.data)


# -- wrong types, generated --------------------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_not_str = _json.filter(lambda v: not isinstance(v, str))
_not_str_list = _json.filter(lambda v: not (isinstance(v, list) and all(isinstance(x, str) for x in v)))
_not_int = _json.filter(lambda v: v is not None and (isinstance(v, bool) or not isinstance(v, int)))
_not_bool = _json.filter(lambda v: not isinstance(v, bool))


@pytest.fixture(scope="module")
def shared() -> Iterator[SidecarThread]:
    server = SidecarThread(Settings(upstream=NO_ENGINE, rerank_api_keys=KEYS), scorer=KeyScorer()).start()
    yield server
    server.stop()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field_value=st.one_of(
        st.tuples(st.sampled_from(["model", "query"]), _not_str),
        st.tuples(st.just("documents"), _not_str_list),
        st.tuples(st.sampled_from(["top_n", "max_tokens_per_doc", "priority"]), _not_int),
    )
)
def test_cohere_wrong_types_are_400_with_a_message(shared: SidecarThread, http: Http, field_value: Any) -> None:
    field, value = field_value
    body = {"model": "default", "query": QUERY, "documents": DOCS} | {field: value}
    status, _, reply = _post(http, shared, COHERE_PATH, body)
    assert status == 400 and set(reply) == {"message"}, (body, reply)
    assert reply["message"].startswith("invalid request: ")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    field_value=st.one_of(
        st.tuples(st.just("query"), _not_str),
        st.tuples(st.just("texts"), _not_str_list),
        st.tuples(st.sampled_from(["raw_scores", "return_text"]), _not_bool),
        st.tuples(st.just("truncate"), _not_bool.filter(lambda v: v is not None)),
        st.tuples(st.just("truncation_direction"), _json.filter(lambda v: v not in ("right", "Right"))),
    )
)
def test_tei_wrong_types_are_4xx_in_teis_shape(shared: SidecarThread, http: Http, field_value: Any) -> None:
    field, value = field_value
    body = {"query": QUERY, "texts": DOCS} | {field: value}
    status, _, reply = _post(http, shared, TEI_PATH, body)
    assert status in (400, 422) and set(reply) == {"error", "error_type"}, (body, reply)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=st.lists(st.text(max_size=30), min_size=1, max_size=9), query=st.text(min_size=1, max_size=30))
def test_any_texts_are_all_ranked(shared: SidecarThread, http: Http, texts: list[str], query: str) -> None:
    """Any strings JSON carries (lone surrogates included): every index once, best first."""
    status, _, reply = _post(http, shared, TEI_PATH, {"query": query, "texts": texts, "raw_scores": True})
    assert status == 200, reply
    assert sorted(r["index"] for r in reply) == list(range(len(texts)))
    scores = [r["score"] for r in reply]
    assert scores == sorted(scores, reverse=True) and all(math.isfinite(s) for s in scores)


# -- access ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COHERE_PATH, TEI_PATH])
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer", "Bearer ", "Basic k-one", "Bearer k-on", "Bearer k-one k-two", "k-one", b"Bearer k-\xc3\xb8ne"],
)
def test_without_a_key_is_401(keyed: SidecarThread, http: Http, path: str, authorization: str | bytes | None) -> None:
    headers: dict[str, Any] = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    body = (
        {"model": "default", "query": QUERY, "documents": DOCS} if path == COHERE_PATH else {"query": "q", "texts": []}
    )
    r = http("POST", keyed.url + path, json.dumps(body).encode(), headers=headers)
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    reply = json.loads(r.data)
    assert set(reply) == ({"message"} if path == COHERE_PATH else {"error", "error_type"})


def test_two_authorization_headers_are_401(keyed: SidecarThread) -> None:
    lines = [f"POST {TEI_PATH} HTTP/1.1", "Host: s", "Connection: close", "Content-Type: application/json"]
    lines += [f"Authorization: Bearer {KEYS[0]}", f"Authorization: Bearer {KEYS[0]}"]
    body = json.dumps({"query": QUERY, "texts": DOCS}).encode()
    data = "\r\n".join([*lines, f"Content-Length: {len(body)}"]).encode() + b"\r\n\r\n" + body
    with socket.create_connection(("127.0.0.1", keyed.port), timeout=10) as s:
        s.sendall(data)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 401")


def test_the_scheme_is_case_insensitive(keyed: SidecarThread, http: Http) -> None:
    status, _, _ = _post(http, keyed, TEI_PATH, {"query": QUERY, "texts": DOCS}, key=None, Authorization="bEaReR k-two")
    assert status == 200


def _non_loopback_address() -> str | None:
    """An address of this host that is not loopback, or None."""
    for probe in ("192.0.2.1", "10.255.255.255"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))  # UDP: no packet is sent, the kernel picks the local address
            except OSError:
                continue
            address = str(s.getsockname()[0])
            if not address.startswith("127."):
                return address
    return None


def _also_listen(server: SidecarThread, host: str) -> str:
    """The sidecar served on ``host`` too (on the same runner, and port)."""
    import asyncio

    runner = server._runner
    assert runner is not None
    asyncio.run_coroutine_threadsafe(web.TCPSite(runner, host, server.port).start(), server.loop).result(timeout=10)
    return f"http://{host}:{server.port}"


def test_without_keys_only_loopback_is_served(make_sidecar: Make, http: Http) -> None:
    host = _non_loopback_address()
    if host is None:
        pytest.skip("this host has no address but loopback")
    server = make_sidecar(NO_ENGINE)
    remote_url = _also_listen(server, host)
    tei = json.dumps({"query": QUERY, "texts": DOCS}).encode()
    co = json.dumps({"model": "default", "query": QUERY, "documents": DOCS}).encode()
    json_type = {"Content-Type": "application/json"}
    assert http("POST", server.url + TEI_PATH, tei, headers=json_type).status == 200
    assert http("POST", server.url + COHERE_PATH, co, headers=json_type).status == 200
    r = http("POST", remote_url + TEI_PATH, tei, headers=json_type)
    assert r.status == 403 and json.loads(r.data)["error_type"] == "forbidden"
    r = http("POST", remote_url + COHERE_PATH, co, headers={**json_type, "Authorization": "Bearer anything"})
    assert r.status == 403 and "loopback" in json.loads(r.data)["message"]


def test_with_keys_others_are_served_with_a_key(make_sidecar: Make, http: Http) -> None:
    host = _non_loopback_address()
    if host is None:
        pytest.skip("this host has no address but loopback")
    server = make_sidecar(NO_ENGINE, rerank_api_keys=KEYS)
    remote_url = _also_listen(server, host)
    tei = json.dumps({"query": QUERY, "texts": DOCS}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEYS[1]}"}
    assert http("POST", remote_url + TEI_PATH, tei, headers=headers).status == 200
    assert http("POST", remote_url + TEI_PATH, tei, headers={"Content-Type": "application/json"}).status == 401
    # cohere's SDK from "another host"
    reply = cohere.ClientV2(api_key=KEYS[0], base_url=remote_url + "/_sidecar").rerank(
        model="default", query=QUERY, documents=DOCS, top_n=1, request_options=NO_RETRY
    )
    assert [r.index for r in reply.results] == _best_first(QUERY, DOCS)[:1]
