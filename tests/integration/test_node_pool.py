"""Several upstream nodes over real sockets: osmem-server processes (they do not cluster: each gets the same
documents, stamped with its number so that a reply says which node served it), the sidecar in front of all of
them, and a double that accepts a request and drops the connection."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import pytest
from aiohttp import web
from osmem_server import OsmemServer
from prometheus_client.parser import text_string_to_metric_families

from sidecar.config import Rule
from tests.servers import Http, SidecarThread, ThreadServer, index_docs

RULE = Rule(index="docs*", fields=("text",), window_size=10)
DOCS = 12
MakeSidecar = Callable[..., SidecarThread]


class Cluster:
    """``n`` osmem-server processes with the same documents; a node can be killed and started again on its port."""

    def __init__(self, n: int) -> None:
        self.nodes = [self._start(i) for i in range(n)]

    def _start(self, i: int, addr: str | None = None) -> OsmemServer:
        server = OsmemServer.start(japanese=False, addr=addr)
        docs = [("docs", str(j), {"text": f"apple doc {j}", "node": i}) for j in range(DOCS)]
        index_docs(Http(), server.url, docs)
        return server

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def kill(self, i: int) -> None:
        self.nodes[i].process.kill()
        self.nodes[i].process.wait()

    def restart(self, i: int) -> None:
        self.nodes[i] = self._start(i, addr=self.urls[i].removeprefix("http://"))

    def close(self) -> None:
        for node in self.nodes:
            node.close(grace=1)


@pytest.fixture
def cluster() -> Iterator[Callable[[int], Cluster]]:
    made: list[Cluster] = []

    def make(n: int) -> Cluster:
        made.append(Cluster(n))
        return made[-1]

    yield make
    for c in made:
        c.close()


class Dropper:
    """A node that reads each request's head, counts it, and closes the connection without a reply."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                if data:
                    self.requests.append(data.split(b"\r\n", 1)[0])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def dropper() -> Iterator[Dropper]:
    d = Dropper()
    yield d
    d.close()


def _search(http: Http, url: str) -> tuple[int, set[int], list[str], str | None]:
    """A reranked search: status, the nodes its hits came from, their ids, and the X-Rerank header."""
    r = http("POST", url + "/docs/_search", {"query": {"match": {"text": "apple"}}, "size": 5})
    if r.status != 200:
        return r.status, set(), [], None
    hits = json.loads(r.data)["hits"]["hits"]
    return r.status, {h["_source"]["node"] for h in hits}, [h["_id"] for h in hits], r.headers.get("X-Rerank")


def _get(http: Http, url: str, doc: str = "3") -> tuple[int, int | None]:
    """A pass-through read of one document: status and the node that had it."""
    r = http("GET", url + f"/docs/_doc/{doc}")
    return r.status, json.loads(r.data)["_source"]["node"] if r.status == 200 else None


def _node_up(http: Http, sidecar: SidecarThread) -> dict[str, float]:
    text = http("GET", sidecar.url + "/_sidecar/metrics").data.decode()
    return {
        s.labels["node"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "sidecar_upstream_node_up"
    }


def test_searches_and_reads_spread_over_every_node(
    cluster: Callable[[int], Cluster], make_sidecar: MakeSidecar, http: Http
) -> None:
    c = cluster(3)
    proxy = make_sidecar(",".join(c.urls), rules=(RULE,))
    searched = [_search(http, proxy.url) for _ in range(9)]
    assert {s[0] for s in searched} == {200} and {s[3] for s in searched} == {"applied; window=10/10"}
    assert len({tuple(s[2]) for s in searched}) == 1  # the same documents everywhere: the same answer
    assert Counter(n for s in searched for n in s[1]) == {0: 3, 1: 3, 2: 3}  # round-robin: 3 searches each
    read = [_get(http, proxy.url) for _ in range(6)]
    assert Counter(node for _, node in read) == {0: 2, 1: 2, 2: 2}
    assert set(_node_up(http, proxy).values()) == {1.0}


def test_reads_keep_succeeding_when_a_node_dies_mid_run(
    cluster: Callable[[int], Cluster], make_sidecar: MakeSidecar, http: Http
) -> None:
    c = cluster(3)
    proxy = make_sidecar(",".join(c.urls), rules=(RULE,))
    expected = _search(http, proxy.url)[2]
    done = threading.Semaphore(0)
    killed_at: list[float] = []

    def client(k: int) -> list[tuple[float, int, set[int], list[str]]]:
        out = []
        for i in range(30):
            t0 = time.monotonic()
            if i % 2:
                status, node = _get(http, proxy.url, str(k % DOCS))
                out.append((t0, status, {node} if node is not None else set(), expected))
            else:
                status, nodes, ids, _ = _search(http, proxy.url)
                out.append((t0, status, nodes, ids))
            done.release()
        return out

    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(client, k) for k in range(2)]
        for _ in range(16):
            done.acquire(timeout=60)
        c.kill(1)
        killed_at.append(time.monotonic())
        results = [r for run in runs for r in run.result(timeout=120)]
    assert len(results) == 60
    assert [(status, ids) for _, status, _, ids in results] == [(200, expected)] * 60  # no client saw a thing
    after = Counter(n for t0, _, nodes, _ in results if t0 > killed_at[0] for n in nodes)
    assert after[1] == 0 and after[0] > 0 and after[2] > 0
    assert _node_up(http, proxy)[c.urls[1]] == 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/_bulk", b'{"index":{"_index":"docs","_id":"w1"}}\n{"text":"written"}\n'),
        ("PUT", "/docs/_doc/w1", b'{"text":"written"}'),
        ("POST", "/docs/_doc/w1/_update", b'{"doc":{"text":"written"}}'),
    ],
)
def test_a_write_whose_node_drops_the_connection_is_not_retried(
    cluster: Callable[[int], Cluster],
    dropper: Dropper,
    make_sidecar: MakeSidecar,
    http: Http,
    method: str,
    path: str,
    body: bytes,
) -> None:
    """The dropper is the first node, so it gets the first request; the live osmem node never sees the write."""
    c = cluster(1)
    proxy = make_sidecar(f"{dropper.url},{c.urls[0]}", rules=(RULE,))
    kind = "application/x-ndjson" if path == "/_bulk" else "application/json"
    r = http(method, proxy.url + path, body, headers={"Content-Type": kind})
    assert r.status == 502
    assert dropper.requests == [f"{method} {path} HTTP/1.1".encode()]  # sent once
    assert http("GET", c.urls[0] + "/docs/_doc/w1").status == 404  # and not to the other node
    assert _node_up(http, proxy) == {dropper.url: 0.0, c.urls[0]: 1.0}


def test_a_read_whose_node_drops_the_connection_is_answered_by_another(
    cluster: Callable[[int], Cluster], dropper: Dropper, make_sidecar: MakeSidecar, http: Http
) -> None:
    c = cluster(1)
    proxy = make_sidecar(f"{dropper.url},{c.urls[0]}", rules=(RULE,))
    assert _search(http, proxy.url)[:2] == (200, {0})  # a reranked search: the pipeline's read
    assert dropper.requests == [b"POST /docs/_search HTTP/1.1"]
    reads = [_get(http, proxy.url) for _ in range(3)]
    assert reads == [(200, 0)] * 3 and len(dropper.requests) == 1  # the dropper rests: nothing more goes there
    fresh = make_sidecar(f"{dropper.url},{c.urls[0]}")
    assert _get(http, fresh.url) == (200, 0)  # a pass-through read
    assert dropper.requests[1:] == [b"GET /docs/_doc/3 HTTP/1.1"]


def test_a_node_that_comes_back_is_used_again_after_its_backoff(
    cluster: Callable[[int], Cluster], make_sidecar: MakeSidecar, http: Http
) -> None:
    backoff = 1.5
    c = cluster(2)
    proxy = make_sidecar(
        ",".join(c.urls), rules=(RULE,), upstream_dead_backoff_s=backoff, upstream_max_dead_backoff_s=backoff
    )
    assert {n for _ in range(4) for n in _search(http, proxy.url)[1]} == {0, 1}  # both nodes, connections kept
    c.kill(0)
    marked_after: float | None = None
    for _ in range(6):
        t0 = time.monotonic()
        assert _search(http, proxy.url)[:2] == (200, {1})
        if _node_up(http, proxy)[c.urls[0]] == 0:
            marked_after = t0  # node 0 was found dead by this search: it rests until at least t0 + backoff
            break
    assert marked_after is not None
    c.restart(0)
    served: list[tuple[float, set[int]]] = []
    while time.monotonic() < marked_after + backoff + 10 and not any(0 in nodes for _, nodes in served):
        t0 = time.monotonic()
        status, nodes, _, _ = _search(http, proxy.url)
        assert status == 200
        served.append((t0, nodes))
        time.sleep(0.05)
    back = [t0 for t0, nodes in served if 0 in nodes]
    assert back and back[0] >= marked_after + backoff  # up again, and used again, but not before its backoff
    assert any(t0 < marked_after + backoff for t0, _ in served)  # it was up, and still rested
    assert _node_up(http, proxy)[c.urls[0]] == 1


def test_one_node_still_works_as_before(engine: str, make_sidecar: MakeSidecar, http: Http) -> None:
    """A single URL: every request goes to it, retries included, whatever its state."""
    index_docs(http, engine, [("docs", "3", {"text": "apple", "node": 7})])
    proxy = make_sidecar(engine)
    assert [_get(http, proxy.url) for _ in range(3)] == [(200, 7)] * 3
    assert _node_up(http, proxy) == {engine.rstrip("/"): 1.0}


def test_an_engine_behind_a_gateway_path_gets_every_request_under_it(
    engine: str, make_sidecar: MakeSidecar, http: Http
) -> None:
    """`upstream: http://gw/es`: a gateway (the tests' own, in front of a real osmem) serves the engine under /es
    and nothing else; the sidecar's pass-through, its reranked searches and its readiness all go under /es."""
    index_docs(http, engine, [("docs", str(i), {"text": f"apple {i}"}) for i in range(5)])
    seen: list[str] = []

    async def gateway(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        if not request.path.startswith("/es/"):
            return web.json_response({"error": "no such route"}, status=404)
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                request.method, engine + request.raw_path[3:], data=await request.read(), headers=request.headers
            ) as r,
        ):
            return web.Response(body=await r.read(), status=r.status, content_type=r.content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", gateway)
    with ThreadServer(app) as gw:
        proxy = make_sidecar(gw.url + "/es/", rules=[Rule(index="docs", window_size=5)])
        assert http("GET", proxy.url + "/docs/_doc/3").status == 200
        r = http("POST", proxy.url + "/docs/_search?q=apple", {"size": 2})
        assert r.status == 200 and r.headers["X-Rerank"] == "applied; window=5/5"
        assert http("GET", proxy.url + "/_sidecar/ready").status == 200
    assert seen and all(p.startswith("/es/") for p in seen), seen
    assert "/es/docs/_doc/3" in seen and "/es/docs/_search?q=apple" in seen
