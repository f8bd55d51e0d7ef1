"""Wire-level behaviour of the pass-through proxy, over real sockets."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
from typing import Any

import pytest

from tests import servers
from tests.servers import Http, ThreadServer, echo_app


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
    cases = [
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
            assert s.recv(100).startswith(b"HTTP/1.1 100")
            payload = b'{"index":{}}\n{"a":1}\n'
            s.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload))
            reply = b""
            while b"body_len" not in reply:
                reply += s.recv(65536)
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
                reply = b""
                while chunk := s.recv(65536):
                    reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert len(seen) == 3  # all three reached our upstream, and only it


def test_upstream_down_gives_502_json(make_sidecar: Any, http: Http) -> None:
    proxy = make_sidecar(f"http://127.0.0.1:{servers.free_port()}", retry_deadline_s=0.3)
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
        self.port = servers.free_port()
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn, socket.create_connection(("127.0.0.1", self.target_port)) as up:
                data = b""
                conn.settimeout(2)
                while b"\r\n\r\n" not in data:
                    data += conn.recv(65536)
                head, _, rest = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                up.sendall(head + b"\r\n\r\n" + rest)
                up.recv(65536)  # the engine has done the write; the client never hears of it

    def close(self) -> None:
        self._sock.close()


def test_write_is_not_retried_when_the_connection_drops(engine: str, make_sidecar: Any, http: Http) -> None:
    http("PUT", engine + "/w", {"mappings": {"properties": {"t": {"type": "keyword"}}}})
    fault = _DropAfterForward(int(engine.rsplit(":", 1)[1]))
    try:
        proxy = make_sidecar(f"http://127.0.0.1:{fault.port}", retry_deadline_s=5)
        r = http("POST", proxy.url + "/w/_doc?refresh=true", {"t": "once"})
        assert r.status == 502
        assert fault.connections == 1
        count = json.loads(http("GET", engine + "/w/_count").data)["count"]
        assert count == 1  # at most once, and here exactly the one the engine received
        # A read on the same fault is retried until the deadline (several connections).
        before = fault.connections
        assert http("GET", proxy.url + "/w/_count").status == 502
        assert fault.connections > before + 1
    finally:
        fault.close()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        (
            "POST",
            "/kbn/_async_search?batched_reduce_size=64&wait_for_completion_timeout=100ms&keep_on_completion=false",
            {"query": {"match_all": {}}, "size": 0, "aggs": {"t": {"terms": {"field": "tag"}}}},
        ),
        ("GET", "/_async_search/FmRldE8zREVEUzA2ZVpUeGs2ejJFUFEaMkZ5QTVrSTZSaVN3WlNFVmtlWHJsdzoxMDc=", None),
        ("GET", "/kbn/_field_caps?fields=*&allow_no_indices=true&ignore_unavailable=true", None),
        ("GET", "/_resolve/index/kb*?expand_wildcards=all", None),
        ("POST", "/kbn/_pit?keep_alive=1m", None),
        ("GET", "/_security/_authenticate", None),
        ("GET", "/_nodes?filter_path=nodes.*.version,nodes.*.http.publish_address,nodes.*.ip", None),
    ],
)
def test_kibana_requests_identical(engine: str, sidecar: Any, http: Http, method: str, path: str, body: Any) -> None:
    http("PUT", engine + "/kbn", {"mappings": {"properties": {"tag": {"type": "keyword"}}}})
    headers = {
        "kbn-version": "9.1.0",
        "kbn-xsrf": "kibana",
        "x-elastic-product-origin": "kibana",
        "X-Opaque-Id": "unknownId;kibana:application:discover",
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    _same(http(method, engine + path, body, headers=headers), http(method, sidecar.url + path, body, headers=headers))


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
