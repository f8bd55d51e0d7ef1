"""The incremental inflater: gzip.decompress's answers, with memory bounded by the limit whatever the ratio."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.encoding import decode, gunzip
from sidecar.errors import PayloadTooLarge


def _reference(raw: bytes) -> bytes | None:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error):
        return None


_payloads = st.one_of(
    st.binary(max_size=3000),
    st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=8), st.integers(1, 5000)),  # compresses well
)
_members = st.lists(st.tuples(_payloads, st.integers(0, 9)), min_size=1, max_size=3)


def _body(members: list[tuple[bytes, int]], padding: int) -> tuple[bytes, bytes]:
    raw = b"".join(gzip.compress(data, compresslevel=level) + b"\0" * padding for data, level in members)
    return raw, b"".join(data for data, _ in members)


@given(members=_members, padding=st.integers(0, 3))
def test_valid_bodies_inflate_as_gzip_decompress_does(members: list[tuple[bytes, int]], padding: int) -> None:
    raw, plain = _body(members, padding)
    assert gunzip(raw, len(plain)) == plain == _reference(raw)  # exactly at the limit is within it
    assert decode(raw, "gzip", limit=len(plain) + 10) == plain


@given(members=_members, over=st.integers(1, 4096))
def test_a_body_that_inflates_past_the_limit_is_413(members: list[tuple[bytes, int]], over: int) -> None:
    raw, plain = _body(members, 0)
    limit = len(plain) - over
    if limit < 0:
        return
    with pytest.raises(PayloadTooLarge) as e:
        gunzip(raw, limit)
    assert e.value.status == 413 and str(limit) in e.value.reason


@given(
    members=_members,
    cut=st.floats(0, 1, exclude_max=True),
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), max_size=3),
    junk=st.binary(max_size=12),
)
def test_broken_bodies_are_none_as_gzip_decompress_refuses_them(
    members: list[tuple[bytes, int]], cut: float, flips: list[tuple[float, int]], junk: bytes
) -> None:
    """Truncated, corrupted or followed by junk: None (the body passes to the engine untouched) exactly when
    gzip.decompress fails, else the same bytes."""
    raw, _ = _body(members, 0)
    broken = bytearray(raw[: int(len(raw) * cut)] if cut else raw)
    for at, xor in flips:
        if broken:
            broken[int(len(broken) * at)] ^= xor
    body = bytes(broken) + junk
    assert gunzip(body, 1 << 24) == _reference(body)
    assert decode(body, "gzip") == _reference(body)  # a broken deflate stream raised zlib.error here: a 500


def test_not_gzip_at_all_is_none_and_other_encodings_pass() -> None:
    assert gunzip(b'{"query": {}}', 1000) is None
    assert gunzip(zlib.compress(b"deflate, not gzip"), 1000) is None
    assert gunzip(b"", 1000) == b"" == gzip.decompress(b"")
    assert decode(b"abc", "br", limit=10) is None
    assert decode(b"abc", None, limit=10) == b"abc"  # identity is the read limit's business


@pytest.mark.parametrize("ratio_mb", [10, 100])
def test_a_gzip_bomb_takes_memory_near_the_limit_not_its_inflated_size(ratio_mb: int) -> None:
    """Zeros compress about 1000:1; whatever the ratio, the inflater holds about ``limit`` bytes."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (1 << 20)
    bomb = b"".join(compressor.compress(chunk) for _ in range(ratio_mb)) + compressor.flush()
    limit = 1 << 20
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            gunzip(bomb, limit)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit + 2 * len(bomb), peak
