"""The floor a Python proxy can reach: the least an aiohttp forwarder does, for `bench proxy` to measure against.

One ClientSession; the request's method, path and query, headers and body go to the upstream; its status,
Content-Type and body come back. No header policy, no logging, no metrics, no search parsing, no retries.
Run as its own process, on uvloop like `serve`::

    python -m sidecar.tools.bench.bare_forwarder --upstream http://127.0.0.1:9200 --listen 127.0.0.1:8081
"""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from sidecar.eventloop import new_event_loop
from sidecar.tools.launch import server_process

_MODULE = "sidecar.tools.bench.bare_forwarder"
SESSION = web.AppKey("session", aiohttp.ClientSession)
ORIGIN = web.AppKey("origin", str)
# aiohttp's client writes these itself (Host from the URL, the length from the body).
_OWN = frozenset({"host", "content-length", "transfer-encoding"})


async def forward(request: web.Request) -> web.Response:
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in _OWN)
    body = await request.read() if request.body_exists else None
    url = URL(request.app[ORIGIN] + request.raw_path, encoded=True)
    async with request.app[SESSION].request(request.method, url, headers=headers, data=body) as resp:
        data = await resp.read()
        return web.Response(status=resp.status, body=data, headers={"Content-Type": resp.content_type})


def create_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[ORIGIN] = str(URL(upstream).origin())

    async def session(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=256)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False) as s:
            app[SESSION] = s
            yield

    app.cleanup_ctx.append(session)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


@contextmanager
def bare_forwarder_process(upstream: str) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """This module as a child process on a free loopback port, ready (it forwards ``GET /``); stopped on exit."""
    with server_process([_MODULE, "--upstream", upstream]) as out:
        yield out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sidecar.tools.bench.bare_forwarder", description=__doc__)
    parser.add_argument("--upstream", required=True, help="engine URL")
    parser.add_argument("--listen", default="127.0.0.1:8081", help="host:port to serve on")
    args = parser.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    web.run_app(
        create_app(args.upstream),
        loop=new_event_loop(),
        host=host,
        port=int(port),
        access_log=None,
        print=None,
        auto_decompress=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
