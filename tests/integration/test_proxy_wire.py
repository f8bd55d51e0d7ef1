"""Wire-level behaviour of the pass-through proxy, over real sockets."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
from aiohttp import web

from sidecar.tools.launch import free_port
from tests.servers import Http, ThreadServer, echo_app

# Headers a proxy may legitimately change: hop-by-hop ones (RFC 9110 7.6.1) and the ones that say where a request
# came from and went to.
_PROXY_SET = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)


def _recv_until(sock: socket.socket, done: Callable[[bytes], bool], timeout: float = 10.0) -> bytes:
    """Read until ``done(data)``; fails on end of stream or after ``timeout`` seconds in all."""
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply within {timeout} s; got {data[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"the peer closed before a complete reply; got {data[:200]!r}")
        data += chunk
    return data


def _at_least(n: int, data: bytes) -> bool:
    return len(data) >= n


def _recv_all(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything until the peer closes, within ``timeout`` seconds in all."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"the peer did not close within {timeout} s; got {data[:200]!r}")
        sock.settimeout(left)
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def _same(a: Any, b: Any) -> None:
    """Status, body and the engine's own headers are identical."""
    assert a.status == b.status
    assert a.data == b.data
    for name in ("Content-Type", "Content-Encoding", "X-Elastic-Product"):
        assert a.headers.get(name) == b.headers.get(name), name


def _seed(http: Http, url: str) -> None:
    http("PUT", url + "/docs", {"mappings": {"properties": {"text": {"type": "text"}}}})
    lines = []
    for i, t in enumerate(["a b c", "a b", "c d", "ünïcode wörds", "plain text"]):
        lines += [json.dumps({"index": {"_index": "docs", "_id": str(i)}}), json.dumps({"text": t})]
    r = http(
        "POST",
        url + "/_bulk?refresh=true",
        ("\n".join(lines) + "\n").encode(),
        headers={"Content-Type": "application/x-ndjson"},
    )
    assert r.status == 200 and not json.loads(r.data)["errors"]


def test_reads_errors_and_query_strings_pass_unchanged(engine: str, sidecar: Any, http: Http) -> None:
    _seed(http, sidecar.url)
    cases: list[tuple[str, str, Any]] = [
        ("GET", "/docs/_search?q=a%20b&q=c", None),
        ("GET", "/docs/_search?q=text:%C3%BCn%C3%AFcode", None),
        ("GET", "/docs/_count", None),
        ("GET", "/nope/_search", None),  # engine 404
        ("POST", "/docs/_search", {"query": {"no_such_query": {}}}),  # engine 400
        ("POST", "/docs/_search", b"{not json"),  # engine's own parse error
        ("GET", "/_cat/indices?v&h=index,docs.count", None),
        ("HEAD", "/docs", None),
        ("HEAD", "/missing", None),
    ]
    for method, path, body in cases:
        direct, proxied = http(method, engine + path, body), http(method, sidecar.url + path, body)
        _same(direct, proxied)
    assert http("GET", sidecar.url + "/nope/_search").status == 404
    assert http("HEAD", sidecar.url + "/missing").status == 404


def test_gzip_request_and_response_pass_as_they_are(engine: str, sidecar: Any, http: Http) -> None:
    _seed(http, sidecar.url)
    body = gzip.compress(json.dumps({"text": "zipped doc"}).encode())
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip", "Accept-Encoding": "gzip"}
    r = http("POST", sidecar.url + "/docs/_doc/z?refresh=true", body, headers=headers)
    assert r.status == 201, r.data
    direct = http("GET", engine + "/docs/_doc/z", headers={"Accept-Encoding": "gzip"})
    proxied = http("GET", sidecar.url + "/docs/_doc/z", headers={"Accept-Encoding": "gzip"})
    _same(direct, proxied)
    assert json.loads(direct.data)["_source"]["text"] == "zipped doc"


def test_headers_forwarded_hop_by_hop_dropped_host_fixed(make_sidecar: Any, http: Http) -> None:
    seen: list[dict[str, Any]] = []
    with ThreadServer(echo_app(seen)) as up:
        proxy = make_sidecar(up.url)
        r = http(
            "POST",
            proxy.url + "/idx/_doc?x=1&x=2&y=%2F",
            b'{"a":1}',
            headers={
                "Content-Type": "application/json",
                "Authorization": "ApiKey c2VjcmV0OmtleQ==",
                "X-Opaque-Id": "req-42",
                "kbn-version": "9.0.0",
                "Connection": "keep-alive, X-Drop-Me",
                "X-Drop-Me": "1",
                "Keep-Alive": "timeout=5",
                "Host": "evil.example:9200",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-For": "10.9.9.9",
            },
        )
        assert r.status == 200
        assert r.headers["X-Upstream"] == "echo"
        assert r.headers.get("Set-Cookie") == "s=1"  # passed to the client, not kept by us
        got = json.loads(r.data)
        headers = {k.lower(): v for k, v in got["headers"]}
        assert got["raw_path"] == "/idx/_doc?x=1&x=2&y=%2F"
        assert headers["authorization"] == "ApiKey c2VjcmV0OmtleQ=="
        assert headers["x-opaque-id"] == "req-42" and headers["kbn-version"] == "9.0.0"
        assert headers["host"] == up.url.removeprefix("http://")
        assert "x-drop-me" not in headers and "keep-alive" not in headers
        assert "x-forwarded-host" not in headers
        assert headers["x-forwarded-for"] == "10.9.9.9, 127.0.0.1"
        assert headers["x-forwarded-proto"] == "http"
        # A second request does not carry the cookie the upstream set.
        http("GET", proxy.url + "/x")
        assert "cookie" not in {k.lower() for k, _ in seen[-1]["headers"]}


def test_chunked_and_expect_100_continue(make_sidecar: Any) -> None:
    seen: list[dict[str, Any]] = []
    with ThreadServer(echo_app(seen)) as up:
        proxy = make_sidecar(up.url)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
            s.sendall(
                b"POST /_bulk HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-ndjson\r\n"
                b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
            )
            assert _recv_until(s, lambda d: b"\r\n\r\n" in d).startswith(b"HTTP/1.1 100")
            payload = b'{"index":{}}\n{"a":1}\n'
            s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            reply = _recv_until(s, lambda d: b"body_len" in d)
        assert reply.startswith(b"HTTP/1.1 200")
        assert seen[-1]["body_len"] == len(payload)
        assert "expect" not in {k.lower() for k, _ in seen[-1]["headers"]}


def test_absolute_uri_and_dotdot_paths_stay_on_upstream(make_sidecar: Any) -> None:
    seen: list[dict[str, Any]] = []
    with ThreadServer(echo_app(seen)) as up:
        proxy = make_sidecar(up.url)
        for target in (b"http://169.254.169.254/latest/meta-data", b"/../../etc/passwd", b"//evil.example/x"):
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as s:
                s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
                reply = _recv_all(s)
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert len(seen) == 3  # all three reached our upstream, and only it


def test_upstream_down_gives_502_json(make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(f"http://127.0.0.1:{free_port()}", retry_deadline_s=0.3)
    for method, path in (("GET", "/_search"), ("POST", "/idx/_doc"), ("GET", "/_cluster/health")):
        r = http(
            method, proxy.url + path, b"{}" if method == "POST" else None, headers={"Content-Type": "application/json"}
        )
        assert r.status == 502
        body = json.loads(r.data)
        assert body["status"] == 502 and body["error"]["type"] and body["error"]["root_cause"]
    ready = http("GET", proxy.url + "/_sidecar/ready")
    assert ready.status == 503 and "upstream" in json.loads(ready.data)["error"]["reason"]
    assert http("GET", proxy.url + "/_sidecar/health").status == 200


def test_upstream_stalled_gives_504_json(make_sidecar: Any, http: Http) -> None:
    seen: list[dict[str, Any]] = []
    with ThreadServer(echo_app(seen, delay=5)) as up:
        proxy = make_sidecar(up.url, upstream_timeout_s=0.5, retry_deadline_s=0)
        t0 = time.monotonic()
        r = http("GET", proxy.url + "/slow")
        assert r.status == 504 and json.loads(r.data)["error"]["type"] == "upstream_timeout_exception"
        assert time.monotonic() - t0 < 4


class _DropAfterForward:
    """A fault proxy: forwards each request to the engine, waits for its reply, then drops the connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.connections = 0
        self.errors: list[BaseException] = []  # the serving thread's failures, asserted empty by the test
        self._stopping = threading.Event()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            conn, _ = self._sock.accept()
            if self._stopping.is_set():
                conn.close()
                return
            self.connections += 1
            try:
                with conn, socket.create_connection(("127.0.0.1", self.target_port), timeout=10) as up:
                    data = _recv_until(conn, lambda d: b"\r\n\r\n" in d)
                    head, _, rest = data.partition(b"\r\n\r\n")
                    length = next(
                        (
                            int(line.split(b":")[1])
                            for line in head.split(b"\r\n")
                            if line.lower().startswith(b"content-length")
                        ),
                        0,
                    )
                    missing = length - len(rest)
                    if missing > 0:
                        rest += _recv_until(conn, partial(_at_least, missing))
                    up.sendall(head + b"\r\n\r\n" + rest)
                    # The engine has done the write once it answers; the client never hears of it.
                    _recv_until(up, lambda d: b"\r\n\r\n" in d)
            except Exception as e:  # recorded for the test to assert on, never swallowed
                self.errors.append(e)

    def close(self) -> None:
        self._stopping.set()
        socket.create_connection(("127.0.0.1", self.port), timeout=5).close()  # wakes the accept()
        self._thread.join(timeout=10)
        self._sock.close()
        assert not self._thread.is_alive(), "the fault proxy's thread did not stop"


def test_write_is_not_retried_when_the_connection_drops(engine: str, make_sidecar: Any, http: Http) -> None:
    http("PUT", engine + "/w", {"mappings": {"properties": {"t": {"type": "keyword"}}}})
    fault = _DropAfterForward(int(engine.rsplit(":", 1)[1]))
    try:
        # A deadline long enough for several attempts: a retried write would reach the fault proxy again.
        proxy = make_sidecar(f"http://127.0.0.1:{fault.port}", retry_deadline_s=1.5)
        r = http("POST", proxy.url + "/w/_doc?refresh=true", {"t": "once"})
        assert r.status == 502 and json.loads(r.data)["status"] == 502
        assert fault.connections == 1
        count = json.loads(http("GET", engine + "/w/_count").data)["count"]
        assert count == 1  # at most once, and here exactly the one the engine received
        # A read on the same fault is retried until the deadline (several connections).
        before = fault.connections
        assert http("GET", proxy.url + "/w/_count").status == 502
        assert fault.connections > before + 1
    finally:
        fault.close()
    assert not fault.errors, fault.errors


@dataclass(frozen=True)
class _Seen:
    """One request exactly as the upstream received it."""

    method: str
    raw_path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def end_to_end(self) -> list[tuple[str, str]]:
        """The headers a proxy must pass on unchanged: names (as spelt), values and order."""
        return [(k, v) for k, v in self.headers if k.lower() not in _PROXY_SET]


def _recorder(seen: list[_Seen]) -> web.Application:
    """An upstream that keeps every request's method, raw path and query, headers and body bytes."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(_Seen(request.method, request.raw_path, tuple(request.headers.items()), body))
        return web.json_response({"acknowledged": True, "seen": len(seen)}, headers={"X-Elastic-Product": "x"})

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


_KIBANA_HEADERS = {
    "kbn-version": "9.1.0",
    "kbn-xsrf": "kibana",
    "x-elastic-product-origin": "kibana",
    "X-Opaque-Id": "unknownId;kibana:application:discover",
    "Content-Type": "application/json",
    "Accept": "application/json",
}
_KIBANA_AGGS = {"query": {"match_all": {}}, "size": 0, "aggs": {"t": {"terms": {"field": "tag"}}}}
_KIBANA_REQUESTS = {
    "async_search": (
        "POST",
        "/kbn/_async_search?batched_reduce_size=64&wait_for_completion_timeout=100ms&keep_on_completion=false",
        _KIBANA_AGGS,
    ),
    "async_search_get": (
        "GET",
        "/_async_search/FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=",
        None,
    ),
    "field_caps": ("GET", "/kbn/_field_caps?fields=*&allow_no_indices=true&ignore_unavailable=true", None),
    "resolve_index": ("GET", "/_resolve/index/kb*?expand_wildcards=all", None),
    "pit": ("POST", "/kbn/_pit?keep_alive=1m", None),
    "security": ("GET", "/_security/_authenticate", None),
    "nodes": ("GET", "/_nodes?filter_path=nodes.*.version,nodes.*.http.publish_address,nodes.*.ip", None),
}


@pytest.mark.parametrize("name", list(_KIBANA_REQUESTS))
def test_kibana_requests_reach_the_upstream_byte_for_byte(make_sidecar: Any, http: Http, name: str) -> None:
    """What Kibana sends arrives at the upstream as Kibana sent it.

    osmem has no `_async_search`, `_pit` or `_security`: it answers each with the same 400, direct or through us,
    so comparing its replies would prove nothing. Instead a recording upstream receives each request twice,
    directly and through the sidecar: method, raw path and query, headers (less hop-by-hop ones and the
    Host / X-Forwarded-* a proxy sets) and body bytes must be the same, and so must the replies.
    """
    method, path, body = _KIBANA_REQUESTS[name]
    data = None if body is None else json.dumps(body).encode()
    seen: list[_Seen] = []
    with ThreadServer(_recorder(seen)) as up:
        proxy = make_sidecar(up.url)
        direct = http(method, up.url + path, data, headers=_KIBANA_HEADERS)
        proxied = http(method, proxy.url + path, data, headers=_KIBANA_HEADERS)
    assert len(seen) == 2, seen
    sent, forwarded = seen
    assert (forwarded.method, forwarded.raw_path, forwarded.body) == (sent.method, sent.raw_path, sent.body)
    assert forwarded.raw_path == path and forwarded.body == (data or b"")
    assert forwarded.end_to_end() == sent.end_to_end()
    assert {k for k, _ in sent.end_to_end()} >= set(_KIBANA_HEADERS)  # the comparison covers Kibana's own
    assert dict((k.lower(), v) for k, v in forwarded.headers)["host"] == up.url.removeprefix("http://")
    assert direct.status == proxied.status == 200
    assert json.loads(direct.data)["seen"] == 1 and json.loads(proxied.data)["seen"] == 2
    assert proxied.headers["X-Elastic-Product"] == direct.headers["X-Elastic-Product"]


@pytest.mark.parametrize("name", ["field_caps", "resolve_index", "nodes"])
def test_kibana_requests_osmem_serves_answer_as_they_do_directly(
    engine: str, sidecar: Any, http: Http, name: str
) -> None:
    """The Kibana requests osmem does serve: the sidecar's reply is the engine's, and it is a real answer."""
    method, path, body = _KIBANA_REQUESTS[name]
    http("PUT", engine + "/kbn", {"mappings": {"properties": {"tag": {"type": "keyword"}}}})
    direct = http(method, engine + path, body, headers=_KIBANA_HEADERS)
    assert direct.status == 200, direct.data[:300]  # not two identical errors
    _same(direct, http(method, sidecar.url + path, body, headers=_KIBANA_HEADERS))


def test_kibana_msearch_with_rest_total_hits_as_int(engine: str, sidecar: Any, http: Http) -> None:
    _seed(http, engine)
    body = (
        b'{"index":"docs","preference":1700000000000}\n'
        b'{"query":{"match":{"text":"a"}},"size":2,"track_total_hits":true}\n'
        b'{"index":"nope"}\n{"query":{"match_all":{}}}\n'
    )
    path = "/_msearch?rest_total_hits_as_int=true&ignore_throttled=false"
    headers = {"Content-Type": "application/x-ndjson", "kbn-version": "9.1.0", "X-Opaque-Id": "k1"}
    direct, proxied = (
        http("POST", engine + path, body, headers=headers),
        http("POST", sidecar.url + path, body, headers=headers),
    )
    _same(direct, proxied)
    assert json.loads(proxied.data)["responses"][0]["hits"]["total"] == 2
