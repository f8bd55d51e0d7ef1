"""Content encodings of the bodies the sidecar reads and rewrites: identity and gzip."""

from __future__ import annotations

import gzip


def decode(raw: bytes, encoding: str | None) -> bytes | None:
    """The plain bytes, or None for an encoding we do not read (or a broken gzip): such a body passes untouched."""
    if not encoding or encoding.lower() == "identity":
        return raw
    if encoding.lower() in ("gzip", "x-gzip"):
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError):
            return None
    return None


def is_gzip(encoding: str | None) -> bool:
    return encoding is not None and encoding.lower() in ("gzip", "x-gzip")


def accepts_gzip(accept_encoding: str | None) -> bool:
    return "gzip" in (accept_encoding or "").lower()


def gzip_body(raw: bytes) -> bytes:
    return gzip.compress(raw, compresslevel=5)
