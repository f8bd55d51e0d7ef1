"""TLS contexts: towards the upstream and remote model servers (verification on by default) and, optionally, on the
listener."""

from __future__ import annotations

import ssl

from sidecar.config import ModelSpec, Settings


def upstream_context(settings: Settings) -> ssl.SSLContext | bool:
    """For an https upstream: system CAs or ``upstream_ca_file``, an optional client certificate, and
    verification unless ``upstream_verify`` is false (then a warning is logged at start-up)."""
    if settings.upstream.scheme != "https":
        return True  # aiohttp's default; unused for http
    ctx = ssl.create_default_context(cafile=settings.upstream_ca_file)
    if settings.upstream_client_cert:
        ctx.load_cert_chain(settings.upstream_client_cert, settings.upstream_client_key)
    if not settings.upstream_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def remote_context(spec: ModelSpec) -> ssl.SSLContext | bool:
    """For a remote model server at an https ``url``: system CAs or its ``ca_file``, verified unless ``verify`` is
    false (then a warning is logged at start-up)."""
    if spec.url is None or spec.url.scheme != "https":
        return True
    ctx = ssl.create_default_context(cafile=spec.ca_file)
    if not spec.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def listener_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(settings.tls_cert, settings.tls_key)
    return ctx
