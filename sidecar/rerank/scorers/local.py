"""The local scorer: models loaded in this process, one thread and one batcher each, and a score cache."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from sidecar.config import DEFAULT_MODEL, NO_MODEL, ModelSpec, Settings
from sidecar.errors import ModelLoadError
from sidecar.metrics import Metrics
from sidecar.rerank.batcher import Batcher, estimate_tokens
from sidecar.rerank.cache import LRU, text_key, through_cache
from sidecar.rerank.failures import BadInput
from sidecar.rerank.scorers.embeddings import Embeddings, MemoryCache, SqliteStore

if TYPE_CHECKING:
    from sidecar.rerank.scorers.models import LoadedModel


_CALIBRATION_TEXT = (
    "A passage of about the length the engines return: a few sentences of plain prose that the model reads "
    "with the query, so that the first searches' budgets are planned on a measured rate, not a guess. "
) * 2


class _LocalModel:
    """One model: its own thread (never the loop, never the default executor) and its batcher."""

    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        settings: Settings,
        metrics: Metrics,
        vectors: tuple[MemoryCache, SqliteStore | None],
    ) -> None:
        self.name = name
        self.spec = spec
        self._vectors = vectors
        self._metrics = metrics
        self._settings = settings
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"model-{name}")
        self.model: LoadedModel | None = None
        self.batch_tokens = 2048
        self.state = "loading"
        self.error: str | None = None
        self.batcher = Batcher(
            name,
            self._compute,
            self._executor,
            metrics,
            queue_pairs=settings.queue_pairs,
            max_search_pairs=settings.max_search_pairs,
            budget_pairs=32,  # set for the device once the model is loaded
            max_wait_s=settings.max_wait_ms / 1000,
            order_horizon_s=settings.rerank_timeout_ms / 1000,
            estimate=self._estimate,
        )
        self._max_tokens = 512.0
        self.stamp: str | None = None  # the weights' size and time when loaded (a local folder's), else None

    def weights_changed(self) -> bool:
        """Whether the folder it was loaded from holds other weights now (a hub id never changes here)."""
        return self.stamp is not None and _stamp(self.spec) != self.stamp

    async def start(self) -> None:
        from sidecar.rerank.scorers.models import device_batch_tokens, load_configured

        loop = asyncio.get_running_loop()
        s = self._settings
        self.stamp = _stamp(self.spec)  # before reading: weights written during the load count as a change
        try:
            model = await loop.run_in_executor(
                self._executor,
                lambda: load_configured(self.name, self.spec, s),
            )
            await loop.run_in_executor(self._executor, model.score, "warm up", ["the model is warming up"], 512)
        except ModelLoadError as e:
            self.state, self.error = "failed", str(e)
            raise
        self.model = model
        self.batch_tokens = self._settings.batch_tokens or device_batch_tokens(model.device)
        # One pass takes about 1.5 batches of pairs: 32 on a CPU, 256 on a GPU.
        self.batcher.budget_pairs = max(1, self.batch_tokens // 64)
        self.batcher.shares_cpu = model.device.type == "cpu"
        self._max_tokens = float(model.encoder.max_length * model.encoder.max_chunks)
        await self._calibrate(loop)
        if model.kind == "bi-encoder":  # after the calibration, whose texts must not fill the store
            model.embeddings = Embeddings(model.space, *self._vectors, metrics=self._metrics)
        self.state = "ready"
        self.batcher.start()

    async def _calibrate(self, loop: asyncio.AbstractEventLoop) -> None:
        """A first rate for the cost model, from one timed pass of passage-sized pairs."""
        query, texts = "how is the model's speed measured", [_CALIBRATION_TEXT] * 8
        await loop.run_in_executor(self._executor, self._compute, [(query, texts)])  # the first pass is slower
        started = time.perf_counter()
        await loop.run_in_executor(self._executor, self._compute, [(query, texts)])
        self.batcher.calibrate(time.perf_counter() - started, sum(self._estimate(query, t) for t in texts))

    def _estimate(self, query: str, text: str) -> float:
        """Tokens to run through the model; a document whose embedding is in memory costs next to nothing."""
        embeddings = self.model.embeddings if self.model is not None else None
        if embeddings is not None and embeddings.known(text_key(text)):
            return 1.0
        return min(self._max_tokens, estimate_tokens(query, text))

    async def close(self) -> None:
        await self.batcher.close()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _compute(self, jobs: Sequence[tuple[str, list[str]]]) -> list[list[float] | BadInput]:
        """Runs in the model's thread: the pairs of all jobs share length-sorted batches; a job whose text the
        tokenizer refuses gets its ``BadInput``, the others their scores."""
        assert self.model is not None
        return self.model.score_each(jobs, self.batch_tokens)


def _stamp(spec: ModelSpec) -> str | None:
    from sidecar.rerank.scorers.models import weights_fingerprint

    return weights_fingerprint(spec.local_path) if Path(spec.local_path).expanduser().is_dir() else None


class LocalScorer:
    """The Scorer the app uses by default: the default model plus the named models from settings."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        default = (
            {}
            if settings.model.lower() == NO_MODEL
            else {DEFAULT_MODEL: ModelSpec(path=settings.model, kind=settings.model_kind)}
        )
        # Remote models (``url``) are the remote scorer's; a named `default` that is remote replaces `model`.
        specs = {name: spec for name, spec in {**default, **settings.models}.items() if not spec.remote}
        memory = MemoryCache(settings.embedding_cache_mb * 1024 * 1024)
        path = settings.embedding_store
        self._store = SqliteStore(path, settings.embedding_store_mb * 1024 * 1024) if path is not None else None
        vectors = (memory, self._store)
        self._models = {name: _LocalModel(name, spec, settings, metrics, vectors) for name, spec in specs.items()}
        self._vectors = vectors
        self._cache: LRU[tuple[str, str, bytes], float] = LRU(settings.score_cache_entries)
        self._loads = dict.fromkeys(self._models, 0)  # per model, how often it was reloaded: part of its cache key
        self._reloading: set[str] = set()

    async def start(self) -> None:
        if not self._models:  # a pure proxy: no torch at all
            return
        import torch

        torch.set_num_threads(self._settings.threads or os.cpu_count() or 1)
        await asyncio.gather(*(m.start() for m in self._models.values()))

    async def close(self) -> None:
        await asyncio.gather(*(m.close() for m in self._models.values()))
        if self._store is not None:
            self._store.close()

    async def reload(self) -> Mapping[str, str]:
        """Load again each model whose folder holds other weights than it was loaded from, beside the old one;
        new searches go to the new model from the moment it is warm, the searches already queued finish on the
        old one, which is then released. A model that does not load keeps the old one serving.

        Returns, per model looked at, "reloaded" or why not."""
        changed = [name for name, m in self._models.items() if m.weights_changed() and name not in self._reloading]
        return dict(zip(changed, await asyncio.gather(*(self._reload(name) for name in changed)), strict=True))

    async def _reload(self, name: str) -> str:
        old = self._models[name]
        new = _LocalModel(name, old.spec, self._settings, self._metrics, self._vectors)
        self._reloading.add(name)
        try:
            await new.start()
        except ModelLoadError as e:
            await new.close()
            return str(e)
        finally:
            self._reloading.discard(name)
        self._models[name] = new  # one reference: the next search scores with the new weights
        self._loads[name] += 1  # and never meets the old weights' cached scores
        await old.batcher.drained()
        await old.close()
        return "reloaded"

    def has_model(self, name: str) -> bool:
        return name in self._models

    def readiness(self) -> Mapping[str, Mapping[str, object]]:
        return {
            name: {
                "state": m.state,
                "path": m.spec.path,
                **({"kernel": m.model.kernel} if m.model is not None else {}),
                **({"error": m.error} if m.error else {}),
            }
            for name, m in self._models.items()
        }

    async def scores(
        self, model: str, query: str, texts: Sequence[str], *, budget_s: float | None = None, tier: int = 0
    ) -> list[float]:
        batcher = self._models[model].batcher

        def compute(wanted: list[str]) -> Awaitable[list[float]]:
            return batcher.submit(query, wanted, budget_s=budget_s, tier=tier)

        key = (f"{model}#{self._loads[model]}", query)
        return await through_cache(self._cache, self._metrics, key, texts, budget_s, compute)
