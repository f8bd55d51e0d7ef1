"""A small blocking JSON client for the command-line tools (demo, templates, eval, bench), not for the proxy."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import urllib3


def basic_auth(user: str | None) -> dict[str, str]:
    """``USER:PASSWORD`` as an Authorization header (none when ``user`` is None)."""
    if not user:
        return {}
    return {"Authorization": "Basic " + base64.b64encode(user.encode()).decode()}


class EngineError(Exception):
    """The engine answered with an error status."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        reason = body.get("error", body) if isinstance(body, dict) else body
        super().__init__(f"{method} {path} -> {status}: {json.dumps(reason)[:300]}")
        self.status = status
        self.body = body


class EngineClient:
    def __init__(self, url: str, headers: dict[str, str] | None = None, timeout_s: float = 120.0) -> None:
        self.url = url.rstrip("/")
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self._pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=5, read=timeout_s))

    def request(self, method: str, path: str, body: Any = None, *, ok: tuple[int, ...] = ()) -> Any:
        """JSON in, JSON out; an error status raises EngineError unless it is listed in ``ok``."""
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = (
            self._headers if not isinstance(body, bytes) else {**self._headers, "Content-Type": "application/x-ndjson"}
        )
        try:
            r = self._pool.request(method, self.url + path, body=data, headers=headers)
        except urllib3.exceptions.HTTPError as e:
            raise EngineError(method, path, 0, {"error": f"cannot reach {self.url}: {type(e).__name__}"}) from e
        decoded: Any = json.loads(r.data) if r.data else None
        if r.status >= 400 and r.status not in ok:
            raise EngineError(method, path, r.status, decoded)
        return decoded

    def status(self, method: str, path: str) -> int:
        try:
            return int(self._pool.request(method, self.url + path, headers=self._headers).status)
        except urllib3.exceptions.HTTPError as e:
            raise EngineError(method, path, 0, {"error": f"cannot reach {self.url}: {type(e).__name__}"}) from e

    def bulk_index(self, index: str, docs: Iterable[dict[str, str]], batch: int = 1000) -> Iterator[int]:
        """Index ``docs`` (each with `_id`) in `_bulk` batches; yields the count of each batch. Errors raise."""
        it = iter(docs)
        while chunk := list(islice(it, batch)):
            lines: list[bytes] = []
            for doc in chunk:
                source = {k: v for k, v in doc.items() if k != "_id"}
                lines.append(json.dumps({"index": {"_index": index, "_id": doc["_id"]}}).encode())
                lines.append(json.dumps(source).encode())
            reply = self.request("POST", "/_bulk", b"\n".join(lines) + b"\n")
            if reply.get("errors"):
                failed = [i for i in reply["items"] if next(iter(i.values())).get("error")]
                raise EngineError("POST", "/_bulk", 200, {"error": next(iter(failed[0].values()))["error"]})
            yield len(chunk)
        self.request("POST", f"/{index}/_refresh")

    def count(self, index: str) -> int:
        if self.status("HEAD", f"/{index}") != 200:
            return 0
        return int(self.request("GET", f"/{index}/_count")["count"])
