"""Run `rerank-sidecar serve` as a child process (benchmarks measure the real process, not a thread of theirs)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

import urllib3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serve_process(
    upstream: str, *flags: str, env: dict[str, str] | None = None, ready_path: str | None = "/_sidecar/health"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`python -m sidecar serve` on a free loopback port; stopped with SIGTERM (then killed) on exit."""
    with server_process(["sidecar", "serve", "--upstream", upstream, *flags], env=env, ready_path=ready_path) as out:
        yield out


@contextmanager
def server_process(
    module_args: list[str], *, env: dict[str, str] | None = None, ready_path: str | None = "/"
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``python -m MODULE ARGS --listen 127.0.0.1:PORT`` on a free port, ready (``ready_path`` answers 200, or
    with None the port listens); stopped with SIGTERM (then killed) on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", *module_args, "--listen", f"127.0.0.1:{port}"]
    # Its log goes to a file: a pipe that nobody drains would block the server once it fills.
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            if ready_path is None:  # the caller waits its own way (HTTPS, say)
                _wait_port(port, proc)
            else:
                wait_http(url + ready_path, proc, log)
            yield proc, url
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def wait_http(
    url: str, proc: subprocess.Popen[bytes] | None = None, log: IO[bytes] | None = None, timeout: float = 120.0
) -> None:
    """Wait until ``url`` answers 200 (or the process dies, which raises with its output)."""
    http = urllib3.PoolManager()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = ""
            if log is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
            raise RuntimeError(f"process exited with {proc.returncode}: {out}")
        try:
            if http.request("GET", url, timeout=1.0, retries=False).status == 200:
                return
        except urllib3.exceptions.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
