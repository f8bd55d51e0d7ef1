"""Real servers for the tests: the osmem engine process and the sidecar on a real socket."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import urllib3
from aiohttp import web

from sidecar.app import create_app
from sidecar.config import Settings
from sidecar.http.server import build_runner
from sidecar.rerank.scorers.base import Scorer
from sidecar.tools.launch import free_port


class SidecarThread:
    """The sidecar app served by aiohttp on 127.0.0.1 in a thread with its own event loop."""

    def __init__(self, settings: Settings, scorer: Scorer | None = None) -> None:
        self.settings = settings
        self.scorer = scorer
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> SidecarThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=120)
        return self

    async def _start(self) -> None:
        self.app = create_app(self.settings, scorer=self.scorer)
        self._runner = build_runner(self.app, self.settings, shutdown_timeout=5)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Http:
    """Thin urllib3 wrapper: raw bytes in and out, nothing decoded behind our back."""

    def __init__(self) -> None:
        self.pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=120))

    def __call__(
        self, method: str, url: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> urllib3.BaseHTTPResponse:
        import json as _json

        hdrs = dict(headers or {})
        if (body is not None and not isinstance(body, (bytes, str)) and not hasattr(body, "__iter__")) or isinstance(
            body, dict
        ):
            body = _json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        return self.pool.request(method, url, body=body, headers=hdrs, decode_content=False, **kw)


def index_docs(http: Http, engine: str, docs: Iterable[tuple[str, str, Any]]) -> None:
    """Index ``(index, id, source)`` documents in one refreshing `_bulk`; none may fail."""
    lines = [
        line
        for index, doc_id, source in docs
        for line in (json.dumps({"index": {"_index": index, "_id": doc_id}}), json.dumps(source))
    ]
    body = ("\n".join(lines) + "\n").encode()
    r = http("POST", engine + "/_bulk?refresh=true", body, {"Content-Type": "application/x-ndjson"})
    assert r.status == 200 and not json.loads(r.data)["errors"], r.data[:300]


class ThreadServer:
    """Any aiohttp app of the tests' own on a real loopback socket, in its own thread and loop."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)

    def __enter__(self) -> ThreadServer:
        self._thread.start()

        async def start() -> None:
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

        asyncio.run_coroutine_threadsafe(start(), self.loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


def echo_app(seen: list[dict[str, Any]], delay: float = 0.0) -> web.Application:
    """An upstream that records each request and answers with what it saw."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        entry = {
            "method": request.method,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body_len": len(body),
        }
        seen.append(entry)
        if delay:
            await asyncio.sleep(delay)
        return web.json_response(entry, headers={"X-Upstream": "echo", "Set-Cookie": "s=1"})

    app = web.Application(client_max_size=1024**3)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
