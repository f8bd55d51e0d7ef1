"""A small bounded LRU with hit and miss counts."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from sidecar.metrics import Metrics

K = TypeVar("K")
V = TypeVar("V")


def text_key(text: str) -> bytes:
    """A compact, collision-safe key for a document text; any str has one (a lone surrogate from JSON's
    "\\ud800" too), and a valid text's key is its UTF-8 hash as before."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class LRU(Generic[K, V]):
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data: OrderedDict[K, V] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: K, value: V) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


ScoreCache = LRU[tuple[str, str, bytes], float]


async def through_cache(
    cache: ScoreCache,
    metrics: Metrics,
    key: tuple[str, str],
    texts: Sequence[str],
    budget_s: float | None,
    compute: Callable[[list[str]], Awaitable[list[float]]],
) -> list[float]:
    """Scores of ``texts`` for ``key`` (model, query): the known ones from ``cache``, the others from ``compute``
    (which may score a prefix of them; with ``budget_s`` 0, it is not called). The longest scored prefix."""
    keys = [(*key, text_key(t)) for t in texts]
    cached = [cache.get(k) for k in keys]
    missing = [i for i, v in enumerate(cached) if v is None]
    metrics.cache.labels("hit").inc(len(texts) - len(missing))
    metrics.cache.labels("miss").inc(len(missing))
    if missing and (budget_s is None or budget_s > 0):
        fresh = await compute([texts[i] for i in missing])
        for i, s in zip(missing, fresh, strict=False):  # a prefix of what was missing
            cached[i] = s
            cache.put(keys[i], s)
    prefix = next((n for n, v in enumerate(cached) if v is None), len(cached))
    return [float(v) for v in cached[:prefix] if v is not None]
