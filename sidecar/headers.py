"""Pure header rules of a reverse proxy: hop-by-hop removal, forwarding, vendor media types."""

from __future__ import annotations

import re
from collections.abc import Iterable

from multidict import CIMultiDict, CIMultiDictProxy

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Never forwarded upstream: we answer Expect ourselves, Host/X-Forwarded-* are ours to set, X-Rerank is ours.
_NOT_UPSTREAM = frozenset({"host", "expect", "x-forwarded-host", "x-rerank"})

# A vendor media type and its parameters (in any order), up to the next media range of an Accept list.
_VENDOR = re.compile(r"application/vnd\.elasticsearch\+(json|x-ndjson)(?![\w.+-])((?:\s*;[^;,]*)*)", re.I)
_COMPAT_PARAM = re.compile(r'\s*compatible-with\s*=\s*"?(\d+)"?\s*', re.I)


def _without_hop_by_hop(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """A copy without the hop-by-hop headers and those the Connection header names (copied whole, then the few
    present removed: a proxy does this twice per request, and most requests carry none of them)."""
    out = CIMultiDict(headers)
    named = out.getall("Connection", ())
    for name in HOP_BY_HOP.union(t.strip() for v in named for t in v.split(",")) if named else HOP_BY_HOP:
        if name in out:
            del out[name]
    return out


def upstream_request_headers(
    incoming: CIMultiDictProxy[str], *, host: str, client_ip: str | None, scheme: str, compat: bool
) -> CIMultiDict[str]:
    """Headers for the upstream: everything the client sent, minus hop-by-hop, plus Host and X-Forwarded-*."""
    out = _without_hop_by_hop(incoming)
    for name in _NOT_UPSTREAM:
        out.popall(name, None)
    out["Host"] = host
    if client_ip:
        prior = ", ".join(incoming.getall("X-Forwarded-For", []))  # two fields are one list: keep every hop
        out["X-Forwarded-For"] = f"{prior}, {client_ip}" if prior else client_ip
    out.setdefault("X-Forwarded-Proto", scheme)
    if compat:
        for name in ("Content-Type", "Accept"):
            for value in out.popall(name, []):
                out.add(name, plain_media_type(value))
    return out


def client_response_headers(
    upstream: CIMultiDictProxy[str], *, compat_accept: str | None = None, drop: Iterable[str] = ()
) -> CIMultiDict[str]:
    """Headers for the client: the engine's, minus hop-by-hop and whatever the caller recomputes."""
    out = _without_hop_by_hop(upstream)
    for name in drop:
        out.popall(name, None)
    if compat_accept and "Content-Type" in out:
        out["Content-Type"] = vendor_media_type(out["Content-Type"], compat_accept)
    return out


def plain_media_type(value: str) -> str:
    """application/vnd.elasticsearch+json; compatible-with=9 -> application/json (ndjson alike)."""
    return _VENDOR.sub(_plain, value)


def _plain(m: re.Match[str]) -> str:
    params = [p for p in m.group(2).split(";")[1:] if not _COMPAT_PARAM.fullmatch(p)]
    return f"application/{m.group(1).lower()}" + "".join(f";{p}" for p in params)


def compat_version(accept: str | None) -> str | None:
    """The compatible-with version a vendor Accept header asks for, if any."""
    if not accept:
        return None
    for m in _VENDOR.finditer(accept):
        for param in m.group(2).split(";")[1:]:
            if version := _COMPAT_PARAM.fullmatch(param):
                return version.group(1)
    return None


def vendor_media_type(content_type: str, version: str) -> str:
    """application/json[; charset] -> the vendor type the client asked for."""
    base = content_type.split(";", 1)[0].strip().lower()
    if base == "application/json":
        return f"application/vnd.elasticsearch+json;compatible-with={version}"
    if base == "application/x-ndjson":
        return f"application/vnd.elasticsearch+x-ndjson;compatible-with={version}"
    return content_type


def is_json_media_type(content_type: str | None) -> bool:
    """JSON as either engine spells it; absent Content-Type counts as JSON, as the engines assume."""
    if not content_type:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base in ("application/json", "application/vnd.elasticsearch+json", "text/plain")


def is_ndjson_media_type(content_type: str | None) -> bool:
    if not content_type:
        return True
    base = content_type.split(";", 1)[0].strip().lower()
    return base in (
        "application/x-ndjson",
        "application/vnd.elasticsearch+x-ndjson",
        "application/json",
        "application/vnd.elasticsearch+json",
        "text/plain",
    )


_OTHER_FORMATS = re.compile(r"yaml|cbor|smile", re.I)


def reply_is_json(format_param: str | None, accept: str | None) -> bool:
    """Whether the engine answers a search in JSON: no ``?format=`` other than json, and an Accept that names
    none of the engines' other formats (YAML, CBOR, Smile)."""
    if format_param is not None and format_param.strip().lower() != "json":
        return False
    return not _OTHER_FORMATS.search(accept or "")
