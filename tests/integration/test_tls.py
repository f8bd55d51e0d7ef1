"""TLS to an https upstream (verification on by default, CA bundle, opt-out) and HTTPS on the listener."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
import urllib3
from aiohttp import web

from sidecar.tools.launch import free_port, serve_process
from tests.servers import echo_app

pytestmark = pytest.mark.slow  # spawns processes or runs for many seconds: not in the fast tier


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_upstream(ca: trustme.CA) -> Iterator[str]:
    """The echo upstream behind HTTPS with a certificate for 127.0.0.1 signed by the test CA."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    port, loop = free_port(), asyncio.new_event_loop()
    runner = web.AppRunner(echo_app([]), access_log=None)
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()

    asyncio.run_coroutine_threadsafe(start(), loop).result(timeout=10)
    yield f"https://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)


def _get(url: str, **kw: Any) -> Any:
    return urllib3.PoolManager(retries=False, **kw).request("GET", url, timeout=10)


def test_https_upstream_is_verified_by_default(https_upstream: str, make_sidecar: Any) -> None:
    proxy = make_sidecar(https_upstream, retry_deadline_s=0.2)
    r = _get(proxy.url + "/_cluster/health")
    assert r.status == 502 and "error" in json.loads(r.data)  # an unknown CA is refused, in the engine's format


def test_https_upstream_with_the_ca_bundle_or_verification_off(
    https_upstream: str, make_sidecar: Any, ca: trustme.CA, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(bundle))
    trusted = make_sidecar(https_upstream, upstream_ca_file=str(bundle))
    r = _get(trusted.url + "/_cluster/health?x=1")
    assert r.status == 200 and json.loads(r.data)["raw_path"] == "/_cluster/health?x=1"
    unverified = make_sidecar(https_upstream, upstream_verify=False)
    assert _get(unverified.url + "/").status == 200


def test_the_listener_serves_https(ca: trustme.CA, tmp_path: Path, engine: str, tiny_model: str) -> None:
    cert = ca.issue_cert("127.0.0.1")
    chain, key = tmp_path / "chain.pem", tmp_path / "key.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    flags = ("--model", tiny_model, "--tls-cert", str(chain), "--tls-key", str(key))
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with serve_process(engine, *flags, ready_path=None) as (_, url):
        https = url.replace("http://", "https://")
        r = _get(https + "/_sidecar/health", ca_certs=str(ca_file))
        assert r.status == 200
        r = _get(https + "/", ca_certs=str(ca_file))
        assert r.status == 200 and json.loads(r.data)["version"]["distribution"] == "opensearch"
