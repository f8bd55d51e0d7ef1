"""The one engine behind us: a single ClientSession, error translation, and safe retries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from multidict import CIMultiDict
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_random_exponential
from yarl import URL

from sidecar.config import Settings
from sidecar.errors import UpstreamTimeout, UpstreamUnavailable
from sidecar.tls import upstream_context

log = logging.getLogger(__name__)

Body = bytes | aiohttp.StreamReader | None


class Upstream:
    """Requests go to the configured origin only: a request supplies a path and query, never a host."""

    def __init__(self, settings: Settings) -> None:
        url = URL(str(settings.upstream))
        self.origin = url.origin()
        self.host_header = url.raw_authority
        self._settings = settings
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        s = self._settings
        if s.upstream.scheme == "https" and not s.upstream_verify:
            log.warning("TLS verification towards %s is OFF (upstream_verify: false)", self.origin)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=s.pool_size, limit_per_host=s.pool_size, ttl_dns_cache=300, ssl=upstream_context(s)
            ),
            timeout=aiohttp.ClientTimeout(total=None, connect=s.connect_timeout_s, sock_read=s.upstream_timeout_s),
            auto_decompress=False,  # compressed bodies pass as they are
            cookie_jar=aiohttp.DummyCookieJar(),  # never keep one client's cookies for another
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            raise_for_status=False,
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, path_qs: str) -> URL:
        """Origin + the request's raw path and query, byte-exact (no re-encoding, no host from the request)."""
        if not path_qs.startswith("/"):
            path_qs = "/" + path_qs
        return URL(str(self.origin) + path_qs, encoded=True)

    @asynccontextmanager
    async def request(
        self, method: str, path_qs: str, headers: CIMultiDict[str], body: Body, *, retry: bool
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Open a response; translate connection errors to 502 and timeouts to 504.

        With ``retry`` (idempotent requests with a replayable body), connection failures are retried with
        jittered backoff until ``retry_deadline_s``; nothing else is ever retried.
        """
        assert self._session is not None, "Upstream.start() was not awaited"
        session = self._session
        url = self.url(path_qs)
        resp: aiohttp.ClientResponse | None = None
        try:
            resp = await _send(session, method, url, headers, body)
        except UpstreamUnavailable:
            if not retry:
                raise
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(UpstreamUnavailable),
                stop=stop_after_delay(self._settings.retry_deadline_s),
                wait=wait_random_exponential(multiplier=0.05, max=1.0),
                reraise=True,
            ):
                with attempt:
                    resp = await _send(session, method, url, headers, body)
        assert resp is not None
        try:
            yield resp
        finally:
            resp.release()

    async def json(self, method: str, path_qs: str, body: Any = None, timeout: float | None = None) -> Any:
        """A small request of our own (readiness, templates); returns (status, decoded JSON)."""
        assert self._session is not None
        headers = CIMultiDict({"Host": self.host_header, "Content-Type": "application/json"})
        t = aiohttp.ClientTimeout(total=timeout or self._settings.upstream_timeout_s)
        try:
            async with self._session.request(method, self.url(path_qs), json=body, headers=headers, timeout=t) as resp:
                return resp.status, await resp.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamUnavailable(f"upstream {self.origin} did not answer: {type(e).__name__}") from e


async def _send(
    session: aiohttp.ClientSession, method: str, url: URL, headers: CIMultiDict[str], body: Body
) -> aiohttp.ClientResponse:
    try:
        return await session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            compress=None,
            chunked=None,
        )
    except aiohttp.ConnectionTimeoutError as e:
        raise UpstreamUnavailable(f"cannot connect to the upstream engine: {type(e).__name__}") from e
    except TimeoutError as e:
        raise UpstreamTimeout(f"upstream did not answer within the timeout ({url.path})") from e
    except aiohttp.ClientConnectionError as e:
        raise UpstreamUnavailable(f"cannot reach the upstream engine: {type(e).__name__}") from e
