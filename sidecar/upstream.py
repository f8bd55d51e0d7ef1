"""The engine behind us: one ClientSession for all its nodes, the node pool, error translation, and safe retries.

``upstream`` names one node or several (the nodes of one cluster, or its coordinating tier). Every request goes to a
node the pool picks, round-robin over the live ones, and never to a host the request names: a request supplies a
path and query only. A node that fails to connect, drops the connection or times out is marked dead and rests for a
backoff; an idempotent read that failed to connect is retried at once on another live node (after a jittered wait
when none is left), until ``retry_deadline_s``; a write is sent once, to one node, whatever happens.
"""

from __future__ import annotations

import base64
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import attr
from multidict import CIMultiDict, CIMultiDictProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_before_delay,
    wait_random_exponential,
)
from yarl import URL

from sidecar.config import Settings
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.tls import upstream_context

if TYPE_CHECKING:
    from sidecar.metrics import Metrics

log = logging.getLogger(__name__)

Body = bytes | aiohttp.StreamReader | None
# Builds the session when the app starts (inside the running loop); the seam for tests, like httpx's transport.
SessionFactory = Callable[[], aiohttp.ClientSession]
Clock = Callable[[], float]

# The wait before a retry that has no untried live node left: jittered, doubling from 50 ms to 1 s.
_RETRY_BACKOFF = wait_random_exponential(multiplier=0.05, max=1.0)

# Headers aiohttp adds to a request that lacks them; we send only what the client sent. Skipped per request,
# and only those missing: a session-wide skip list costs every request a sorted copy of its headers.
_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")

# POST endpoints that only read: safe to replay when the connection could not be made.
_READ_ENDPOINTS = frozenset({"_search", "_msearch", "_count", "_mget", "_field_caps", "_validate", "_explain"})
# A path that names any of these is never replayed, whatever else it names (a document id may be "_search").
_NEVER_REPLAYED = frozenset(
    {"_bulk", "_doc", "_create", "_update", "_update_by_query", "_delete_by_query", "_reindex", "scroll"}
)


def is_retryable(method: str, path: str) -> bool:
    """Idempotent reads only. Scroll pages and every write are never replayed.

    A POST is a read when its endpoint, the first path segment that starts with ``_`` (index names cannot;
    ``_all`` is an index expression), is a read endpoint, and no segment names a write: ``/idx/_doc/_search``
    indexes a document whose id is ``_search``.
    """
    if method in ("GET", "HEAD", "OPTIONS"):
        return "/scroll" not in path
    if method == "POST":
        parts = [p for p in path.split("/") if p]
        endpoint = next((p for p in parts if p.startswith("_") and p != "_all"), None)
        return endpoint in _READ_ENDPOINTS and _NEVER_REPLAYED.isdisjoint(parts)
    return False


def default_session(settings: Settings, *, connector: aiohttp.BaseConnector | None = None) -> aiohttp.ClientSession:
    """The session the app uses: a TCP pool from the settings, or ``connector`` (tests: one that opens no socket)."""
    if connector is None:
        connector = aiohttp.TCPConnector(
            limit=settings.pool_size,
            limit_per_host=settings.pool_size,
            ttl_dns_cache=300,
            ssl=upstream_context(settings),
        )
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(
            total=None, connect=settings.connect_timeout_s, sock_read=settings.upstream_timeout_s
        ),
        auto_decompress=False,  # compressed bodies pass as they are
        cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
        raise_for_status=False,
    )
    # aiohttp resends GET/PUT/DELETE... once by itself when a kept-alive connection drops before the reply: an
    # engine that did the DELETE and then dropped would see it twice. Only is_retryable decides what is replayed.
    # (No public switch exists; aiohttp's own TestClient turns it off the same way.)
    session._retry_connection = False
    return session


def own_credentials(settings: Settings) -> dict[str, str]:
    """Credentials for the sidecar's and the tools' own requests (upstream_api_key, else upstream_basic_auth)."""
    if settings.upstream_api_key is not None:
        return {"Authorization": "ApiKey " + settings.upstream_api_key.get_secret_value()}
    if settings.upstream_basic_auth is not None:
        token = base64.b64encode(settings.upstream_basic_auth.get_secret_value().encode()).decode()
        return {"Authorization": "Basic " + token}
    return {}


@dataclass(frozen=True, slots=True)
class Node:
    """One node of the upstream: where its requests go and the Host header they carry (its own authority)."""

    origin: URL
    prefix: str = ""  # a path every request goes under (an engine behind a gateway at https://gw/es), no end slash

    @classmethod
    def of(cls, url: object) -> Node:
        """The node at ``url``: its origin (scheme, host, port) and its path as a prefix; user info is ignored."""
        parsed = URL(str(url))
        return cls(parsed.origin(), parsed.raw_path.rstrip("/"))

    @property
    def host_header(self) -> str:
        return self.origin.raw_authority

    @property
    def name(self) -> str:
        """For logs and the ``sidecar_upstream_node_up`` metric: the origin and prefix, never credentials."""
        return str(self.origin) + self.prefix

    def url(self, path_qs: str) -> URL:
        """Origin + prefix + the request's raw path and query, byte-exact (no re-encoding, no host from the
        request)."""
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        return URL(str(self.origin) + self.prefix + path_qs, encoded=True)


class NodePool:
    """Which node a request goes to: round-robin over the live nodes; a node that fails rests, then is tried again.

    As elastic-transport's node pool: a failed node is dead for ``backoff_s * 2 ** (failures in a row - 1)``
    seconds, at most ``max_backoff_s`` (1 s doubling to 30 s by default); when that ends it is live again (its
    next request tells: a failure rests it twice as long, an answer resets its count). Where this one differs:

    - Only the caller decides what a failure is (``Upstream``: no connection, a dropped connection, a timeout).
      An HTTP answer, a 5xx included, is the engine's reply, passed to the client as the engine said it, and
      says the node is up.
    - A failure reported while the node already rests counts nothing: the requests in flight when a node goes
      down fail together, and are one failure, not fifty that jump to the longest backoff at once.
    - When every node rests, the request goes to the one whose backoff ends first rather than failing fast: the
      engine may well be back (a restart, a network blip), and a single-node upstream behaves as it always has.

    ``avoid`` (the nodes a request has tried) steers a retry to another live node when there is one. Used on the
    event loop only (no locks, nothing blocks). ``clock`` is monotonic seconds (a seam for tests); ``on_change`` is
    called with ``(node, up)`` when a node fails after answering, and when it answers again after failing.
    """

    def __init__(
        self,
        nodes: Sequence[Node],
        *,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock: Clock = time.monotonic,
        on_change: Callable[[Node, bool], None] | None = None,
    ) -> None:
        if not nodes:
            raise ValueError("a node pool needs at least one node")
        if len(set(nodes)) != len(nodes):
            raise ValueError("a node is listed twice")
        self.nodes = tuple(nodes)
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._clock = clock
        self._on_change = on_change
        self._failures: dict[Node, int] = {}  # failures in a row, until the node answers again
        self._resting: dict[Node, float] = {}  # a dead node -> when its backoff ends
        self._turn = -1

    def live(self) -> list[Node]:
        """The nodes not resting, in their configured order; those whose backoff has ended are live again."""
        if self._resting:
            now = self._clock()
            for node in [n for n, until in self._resting.items() if until <= now]:
                del self._resting[node]
                log.debug("upstream node %s: backoff over, trying it again", node.name)
            return [n for n in self.nodes if n not in self._resting]
        return list(self.nodes)

    def get(self, avoid: Collection[Node] = ()) -> Node:
        """The next live node not in ``avoid`` (round-robin); else the next live one; else, every node resting, the
        one whose backoff ends first (preferring one not in ``avoid``)."""
        if not self._resting and not avoid and len(self.nodes) == 1:  # one node, up: every request's case there
            return self.nodes[0]
        live = self.live()
        choice = [n for n in live if n not in avoid] or live
        if choice:
            self._turn += 1
            return choice[self._turn % len(choice)]
        resting = [n for n in self._resting if n not in avoid] or list(self._resting)
        return min(resting, key=self._resting.__getitem__)

    def has_untried(self, tried: Collection[Node]) -> bool:
        """Whether a live node is left that is not in ``tried`` (then a retry need not wait)."""
        return any(n not in tried for n in self.live())

    def resting(self, node: Node) -> bool:
        return self._resting.get(node, -math.inf) > self._clock()

    def mark_dead(self, node: Node) -> None:
        """``node`` failed: it rests, twice as long as after its previous failure in a row."""
        now = self._clock()
        if self._resting.get(node, now) > now:
            return  # already resting: a request in flight when it failed, or a try while every node rests
        failures = self._failures.get(node, 0) + 1
        self._failures[node] = failures
        rest = min(self._backoff_s * 2.0 ** min(failures - 1, 64), self._max_backoff_s)
        self._resting[node] = now + rest
        log.warning(
            "upstream node %s failed (%d in a row): no requests for %.1f s unless every node is down",
            node.name,
            failures,
            rest,
        )
        if failures == 1 and self._on_change is not None:
            self._on_change(node, False)

    def mark_live(self, node: Node) -> None:
        """``node`` answered: it is live, and its failure count starts again."""
        if self._failures.pop(node, None) is None:
            return  # the common case: it was fine
        self._resting.pop(node, None)
        log.info("upstream node %s answers again", node.name)
        if self._on_change is not None:
            self._on_change(node, True)


class Upstream:
    """Requests go to the configured nodes only: a request supplies a path and query, never a host.

    One ``ClientSession`` serves every node (a session takes absolute URLs; its connector keeps a pool per host
    within ``pool_size`` in all). The node is picked per request by ``pool``; the Host header sent is that node's
    authority, whatever the caller put there. ``origin``, ``host_header`` and ``url()`` are the first configured
    node's: what the forwarder puts in the headers it builds (the Host is replaced per node here), and a name for
    the upstream in logs; nothing uses them to choose where a request goes.

    ``session_factory`` replaces the session built from the settings (see ``default_session``); it is called once,
    in ``start()``, and the session it returns is closed by ``close()``. ``metrics`` gets
    ``sidecar_upstream_node_up``; ``clock`` is the node pool's (a seam for tests).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: SessionFactory | None = None,
        metrics: Metrics | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        nodes = [Node.of(url) for url in settings.upstream]
        self._node_up = None if metrics is None else metrics.upstream_node_up
        self.pool = NodePool(
            nodes,
            backoff_s=settings.upstream_dead_backoff_s,
            max_backoff_s=settings.upstream_max_dead_backoff_s,
            clock=clock,
            on_change=self._node_changed,
        )
        for node in nodes:
            self._node_changed(node, True)
        self.origin = nodes[0].origin
        self.host_header = nodes[0].host_header
        self._settings = settings
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None

    @property
    def nodes(self) -> tuple[Node, ...]:
        return self.pool.nodes

    async def start(self) -> None:
        s = self._settings
        if s.upstream.scheme == "https" and not s.upstream_verify:
            names = ", ".join(n.name for n in self.nodes)
            log.warning("TLS verification towards %s is OFF (upstream_verify: false)", names)
        self._session = self._session_factory() if self._session_factory is not None else default_session(s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_qs: str) -> URL:
        """The first node's URL for ``path_qs`` (see ``Node.url``); a request may go to any node."""
        return self.nodes[0].url(path_qs)

    async def send(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: Body, *, retry: bool
    ) -> aiohttp.ClientResponse:
        """Open a response, which the caller releases (``request`` does); translate connection errors to 502 and
        timeouts to 504.

        With ``retry`` (idempotent requests with a replayable body), connection failures are retried, on another
        live node when there is one, until ``retry_deadline_s``; nothing else is ever retried. A write goes to one
        node, once: a connection it dropped may have carried the write, and a second node would do it again.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        if retry:
            return await self._send_retrying(self._session, method, path_qs, headers, body)
        session = self._session
        return await self._send_to(self.pool.get(), session, method, path_qs, headers, body, session.timeout)

    @asynccontextmanager
    async def request(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: Body, *, retry: bool
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``send`` as a context manager that releases the response."""
        resp = await self.send(method, path_qs, headers, body, retry=retry)
        try:
            yield resp
        finally:
            resp.release()

    async def _send_to(
        self,
        node: Node,
        session: aiohttp.ClientSession,
        method: str,
        path_qs: str,
        headers: CIMultiDict[str],
        body: Body,
        timeout: aiohttp.ClientTimeout,
    ) -> aiohttp.ClientResponse:
        """One attempt at ``node``, and what it says of the node: reply headers, whatever the status, mean it is up;
        no connection, a dropped one or a timeout mean it failed. A connect cut short by the retry deadline (a
        connect timeout shorter than the session's) says nothing of the node."""
        try:
            resp = await _send(session, method, node.url(path_qs), _with_host(headers, node), body, timeout)
        except UpstreamUnavailable as e:
            cut = timeout.connect != session.timeout.connect
            if not (cut and isinstance(e.__cause__, aiohttp.ConnectionTimeoutError)):
                self.pool.mark_dead(node)
            raise
        except UpstreamTimeout:
            self.pool.mark_dead(node)
            raise
        self.pool.mark_live(node)
        return resp

    async def _send_retrying(
        self, session: aiohttp.ClientSession, method: str, path_qs: str, headers: CIMultiDict[str], body: Body
    ) -> aiohttp.ClientResponse:
        """The deadline counts from the first attempt. No retry starts after it (tenacity's stop_after_delay would
        start one after sleeping past it), and a retry's connect is cut at it, so that a connect that hangs cannot
        run a whole ``connect_timeout_s`` past the deadline. The first attempt has the session's own timeouts.

        Each retry goes to a live node the request has not tried, at once; with none left, to the pool's choice
        (the next live node, or the one whose backoff ends first) after a jittered wait."""
        deadline = time.monotonic() + self._settings.retry_deadline_s
        tried = [self.pool.get()]
        try:  # the first attempt outside tenacity: its objects are reference cycles, left for the GC on every read
            return await self._send_to(tried[0], session, method, path_qs, headers, body, session.timeout)
        except UpstreamUnavailable as e:
            first = e

        def wait(state: RetryCallState) -> float:
            return 0.0 if self.pool.has_untried(tried) else _RETRY_BACKOFF(state)

        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(UpstreamUnavailable),
            stop=stop_before_delay(deadline - time.monotonic()),
            wait=wait,
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first  # tenacity's attempt 1 is the one made above: it decides whether, and when, to retry
                node = self.pool.get(avoid=tried)
                tried.append(node)
                timeout = _connect_within(session.timeout, deadline - time.monotonic())
                return await self._send_to(node, session, method, path_qs, headers, body, timeout)
        raise AssertionError("unreachable: tenacity re-raises the last attempt's error")

    async def fetch(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: bytes, *, retry: bool
    ) -> tuple[int, CIMultiDictProxy[str], bytes]:
        """A whole reply (status, headers, body as sent); one that breaks off is a 502, never a shorter body."""
        async with self.request(method, path_qs, headers, body, retry=retry) as resp:
            try:
                return resp.status, resp.headers, await resp.read()
            except (TimeoutError, aiohttp.ClientError) as e:
                raise UpstreamUnavailable(f"the upstream engine broke off its reply: {type(e).__name__}") from e

    async def json(
        self,
        method: str,
        path_qs: str,
        body: Any = None,
        timeout: float | None = None,
        *,
        ndjson: bytes | None = None,
    ) -> Any:
        """A small request of our own (readiness, events' ``ndjson`` bulk bodies), with the settings' credentials
        for the engine, never a client's; returns (status, decoded JSON).

        A read (readiness) that gets no answer tries each other node once, within ``timeout`` in all, without
        waiting: the engine is ready when a node answers. A write (an events ``_bulk``) goes to one node, once."""
        assert self._session is not None
        kind = "application/json" if ndjson is None else "application/x-ndjson"
        headers = CIMultiDict({"Host": self.host_header, "Content-Type": kind, **own_credentials(self._settings)})
        sent: dict[str, Any] = {"json": body} if ndjson is None else {"data": ndjson}
        tries = len(self.nodes) if is_retryable(method, path_qs.partition("?")[0]) else 1
        deadline = time.monotonic() + (timeout or self._settings.upstream_timeout_s)
        tried: list[Node] = []
        while True:
            node = self.pool.get(avoid=tried)
            tried.append(node)
            try:
                return await self._json_at(node, method, path_qs, headers, deadline - time.monotonic(), sent)
            except UpstreamUnavailable:  # on past a node that failed; one that answered (not JSON) is the answer
                if len(tried) >= tries or not self.pool.resting(node) or time.monotonic() >= deadline:
                    raise

    async def _json_at(
        self, node: Node, method: str, path_qs: str, headers: CIMultiDict[str], timeout: float, sent: dict[str, Any]
    ) -> tuple[int, Any]:
        assert self._session is not None
        t = aiohttp.ClientTimeout(total=max(timeout, 0.001))  # aiohttp reads 0 as "no timeout"
        try:
            resp = await self._session.request(
                method,
                node.url(path_qs),
                headers=_with_host(headers, node),
                timeout=t,
                skip_auto_headers=_AUTO_HEADERS,
                **sent,
            )
        except (TimeoutError, aiohttp.ClientError) as e:
            self.pool.mark_dead(node)
            raise UpstreamUnavailable(f"upstream {node.name} did not answer: {type(e).__name__}") from e
        self.pool.mark_live(node)
        try:
            async with resp:
                return resp.status, await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:  # ValueError: the reply is not JSON
            raise UpstreamUnavailable(f"upstream {node.name} did not answer: {type(e).__name__}") from e

    def _node_changed(self, node: Node, up: bool) -> None:
        if self._node_up is not None:
            self._node_up.labels(node.name).set(1 if up else 0)


def _with_host(headers: CIMultiDict[str], node: Node) -> CIMultiDict[str]:
    """``headers`` with ``node``'s authority as the Host (a copy when it differs; the caller's are left alone)."""
    if headers.get("Host") == node.host_header:
        return headers
    out = headers.copy()
    out["Host"] = node.host_header
    return out


def _connect_within(timeout: aiohttp.ClientTimeout, remaining: float) -> aiohttp.ClientTimeout:
    """``timeout`` with its connect phase (pool wait and connect) ending at most ``remaining`` seconds from now."""
    remaining = max(remaining, 0.001)  # aiohttp reads 0 as "no timeout"
    return attr.evolve(timeout, connect=min(timeout.connect, remaining) if timeout.connect else remaining)


async def _send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    headers: CIMultiDict[str],
    body: Body,
    timeout: aiohttp.ClientTimeout,
) -> aiohttp.ClientResponse:
    try:
        return await session.request(
            method,
            url,
            headers=headers,
            data=body,
            skip_auto_headers=[h for h in _AUTO_HEADERS if h not in headers] or None,
            allow_redirects=False,
            compress=None,
            chunked=None,
            timeout=timeout,
        )
    except aiohttp.ConnectionTimeoutError as e:
        raise UpstreamUnavailable(f"cannot connect to the upstream engine: {type(e).__name__}") from e
    except TimeoutError as e:
        raise UpstreamTimeout(f"upstream did not answer within the timeout ({url.path})") from e
    except aiohttp.ClientConnectionError as e:
        raise UpstreamUnavailable(f"cannot reach the upstream engine: {type(e).__name__}") from e
    except aiohttp.ClientResponseError as e:  # not HTTP at all (a wrong port, a broken proxy in between)
        raise UpstreamUnavailable(f"the upstream engine sent an invalid reply: {type(e).__name__}") from e
