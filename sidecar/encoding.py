"""Content encodings of the bodies the sidecar reads and rewrites: identity and gzip."""

from __future__ import annotations

import gzip
import zlib

from sidecar.errors import PayloadTooLarge

_GZIP = 16 + zlib.MAX_WBITS  # zlib reads the gzip header and checks its CRC and length


def decode(raw: bytes, encoding: str | None, *, limit: int | None = None) -> bytes | None:
    """The plain bytes, or None for an encoding we do not read (or a broken gzip): such a body passes untouched.

    With ``limit``, a gzip body is inflated a piece at a time and ``PayloadTooLarge`` is raised as soon as it passes
    ``limit`` bytes: the memory it takes is bounded by the limit, whatever its compression ratio."""
    if not encoding or encoding.lower() == "identity":
        return raw
    if is_gzip(encoding):
        if limit is None:
            try:
                return gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):  # zlib.error: a broken deflate stream
                return None
        return gunzip(raw, limit)
    return None


def gunzip(raw: bytes, limit: int) -> bytes | None:
    """``gzip.decompress`` (members one after another, zero padding between them) that never holds more than
    ``limit`` + 1 inflated bytes: past ``limit`` it raises ``PayloadTooLarge``. None for a broken or truncated body."""
    out = bytearray()
    data = raw
    try:
        while data:  # one gzip member per round
            member = zlib.decompressobj(_GZIP)
            pending = data
            while not member.eof:
                piece = member.decompress(pending, limit - len(out) + 1)  # one byte over the limit tells
                out += piece
                if len(out) > limit:
                    raise PayloadTooLarge(f"search body inflates to more than the limit of {limit} bytes")
                if not piece and len(member.unconsumed_tail) >= len(pending):
                    return None  # no progress: the body ends before its member does
                pending = member.unconsumed_tail
            data = member.unused_data.lstrip(b"\0")
    except zlib.error:
        return None
    return bytes(out)


def is_gzip(encoding: str | None) -> bool:
    return encoding is not None and encoding.lower() in ("gzip", "x-gzip")


def accepts_gzip(accept_encoding: str | None) -> bool:
    return "gzip" in (accept_encoding or "").lower()


def gzip_body(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=5)
