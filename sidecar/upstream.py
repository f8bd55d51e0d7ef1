"""The one engine behind us: a single ClientSession, error translation, and safe retries."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import attr
from multidict import CIMultiDict, CIMultiDictProxy
from tenacity import AsyncRetrying, retry_if_exception_type, stop_before_delay, wait_random_exponential
from yarl import URL

from sidecar.config import Settings
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.tls import upstream_context

log = logging.getLogger(__name__)

Body = bytes | aiohttp.StreamReader | None
# Builds the session when the app starts (inside the running loop); the seam for tests, like httpx's transport.
SessionFactory = Callable[[], aiohttp.ClientSession]

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


class Upstream:
    """Requests go to the configured origin only: a request supplies a path and query, never a host.

    ``session_factory`` replaces the session built from the settings (see ``default_session``); it is called once,
    in ``start()``, and the session it returns is closed by ``close()``.
    """

    def __init__(self, settings: Settings, *, session_factory: SessionFactory | None = None) -> None:
        url = URL(str(settings.upstream))
        self.origin = url.origin()
        self.host_header = url.raw_authority
        self._settings = settings
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        if s.upstream.scheme == "https" and not s.upstream_verify:
            log.warning("TLS verification towards %s is OFF (upstream_verify: false)", self.origin)
        self._session = self._session_factory() if self._session_factory is not None else default_session(s)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_qs: str) -> URL:
        """Origin + the request's raw path and query, byte-exact (no re-encoding, no host from the request)."""
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        return URL(str(self.origin) + path_qs, encoded=True)

    async def send(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: Body, *, retry: bool
    ) -> aiohttp.ClientResponse:
        """Open a response, which the caller releases (``request`` does); translate connection errors to 502 and
        timeouts to 504.

        With ``retry`` (idempotent requests with a replayable body), connection failures are retried with
        jittered backoff until ``retry_deadline_s``; nothing else is ever retried.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        url = self.url(path_qs)
        if retry:
            return await self._send_retrying(self._session, method, url, headers, body)
        return await _send(self._session, method, url, headers, body, self._session.timeout)

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

    async def _send_retrying(
        self, session: aiohttp.ClientSession, method: str, url: URL, headers: CIMultiDict[str], body: Body
    ) -> aiohttp.ClientResponse:
        """The deadline counts from the first attempt. No retry starts after it (tenacity's stop_after_delay would
        start one after sleeping past it), and a retry's connect is cut at it, so that a connect that hangs cannot
        run a whole ``connect_timeout_s`` past the deadline. The first attempt has the session's own timeouts."""
        deadline = time.monotonic() + self._settings.retry_deadline_s
        try:  # the first attempt outside tenacity: its objects are reference cycles, left for the GC on every read
            return await _send(session, method, url, headers, body, session.timeout)
        except UpstreamUnavailable as e:
            first = e
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(UpstreamUnavailable),
            stop=stop_before_delay(deadline - time.monotonic()),
            wait=wait_random_exponential(multiplier=0.05, max=1.0),
            reraise=True,
        ):
            with attempt:
                if attempt.retry_state.attempt_number == 1:
                    raise first  # tenacity's attempt 1 is the one made above: it decides whether, and when, to retry
                timeout = _connect_within(session.timeout, deadline - time.monotonic())
                return await _send(session, method, url, headers, body, timeout)
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
        for the engine, never a client's; returns (status, decoded JSON)."""
        assert self._session is not None
        kind = "application/json" if ndjson is None else "application/x-ndjson"
        headers = CIMultiDict({"Host": self.host_header, "Content-Type": kind, **own_credentials(self._settings)})
        t = aiohttp.ClientTimeout(total=timeout or self._settings.upstream_timeout_s)
        sent: dict[str, Any] = {"json": body} if ndjson is None else {"data": ndjson}
        try:
            async with self._session.request(
                method, self.url(path_qs), headers=headers, timeout=t, skip_auto_headers=_AUTO_HEADERS, **sent
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:  # ValueError: the reply is not JSON
            raise UpstreamUnavailable(f"upstream {self.origin} did not answer: {type(e).__name__}") from e


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
