"""The scoring engine on real (tiny and packaged) weights: loading, token assembly, batching, caching, labels."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from sidecar.config import ModelSpec, Settings
from sidecar.errors import ModelLoadError
from sidecar.metrics import Metrics
from sidecar.rerank.cache import LRU
from sidecar.rerank.failures import Overloaded
from sidecar.rerank.scorers.batching import plan_batches
from sidecar.rerank.scorers.local import LocalScorer
from sidecar.rerank.scorers.models import load_model
from sidecar.rerank.scorers.tokens import PairEncoder
from tests.models import build_tiny_cross_encoder, packaged_minilm

DOCS = ["the date string", "parse json", "apple banana " * 40, "", "time ??", "x"]


def test_batches_respect_the_token_budget_and_cover_everything() -> None:
    lengths = [5, 90, 12, 12, 40, 7, 300, 3]
    batches = plan_batches(lengths, 100)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 100
    assert [6] in batches  # an over-long item gets a batch of its own


def test_lru_evicts_oldest_and_counts() -> None:
    cache: LRU[str, int] = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and len(cache) == 2
    assert (cache.hits, cache.misses) == (2, 1)


@pytest.mark.parametrize("max_length", [16, 40, 512])
def test_pair_assembly_is_identical_to_the_tokenizer(max_length: int) -> None:
    tokenizer = AutoTokenizer.from_pretrained(packaged_minilm())
    enc = PairEncoder(tokenizer, max_length, 100)
    query = "how do I parse a date string"
    q = enc.query_ids(query)
    for doc, ids in zip(DOCS, enc.ids(DOCS), strict=True):
        want = tokenizer(query, doc, truncation="only_second", max_length=max_length, return_token_type_ids=True)
        got_ids, got_types = enc.pair(q, ids)
        assert got_ids == want["input_ids"] and got_types == want["token_type_ids"], doc
    enc.ids(DOCS)
    assert enc.cache.hits == len(set(DOCS))


def test_tiny_cross_encoder_scores_like_transformers(tiny_model: str) -> None:
    from transformers import AutoModelForSequenceClassification

    loaded = load_model(
        "t", ModelSpec(path=tiny_model), device="cpu", precision="fp32", max_length=None, token_cache=10
    )
    assert loaded.kind == "cross-encoder" and loaded.kernel.startswith("torch fp32 (")  # fp32 named: the reference
    got = loaded.score("parse the date", DOCS, batch_tokens=64)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ref_model = AutoModelForSequenceClassification.from_pretrained(tiny_model).eval()
    with torch.inference_mode():
        for doc, score in zip(DOCS, got, strict=True):
            inputs = tok("parse the date", doc, truncation="only_second", max_length=128, return_tensors="pt")
            assert score == pytest.approx(ref_model(**inputs).logits[0, 0].item(), abs=1e-4)


def test_label_choice_and_activation(tmp_path: Path) -> None:
    folder = build_tiny_cross_encoder(tmp_path / "three", num_labels=3)
    by_index = load_model(
        "m", ModelSpec(path=str(folder), label=1), device="cpu", precision="fp32", max_length=None, token_cache=0
    )
    by_name = load_model(
        "m",
        ModelSpec(path=str(folder), label="label_1", activation="softmax"),
        device="cpu",
        precision="fp32",
        max_length=None,
        token_cache=0,
    )
    logits = by_index.score("q", DOCS, 256)
    probs = by_name.score("q", DOCS, 256)
    assert all(0 <= p <= 1 for p in probs) and logits != probs
    with pytest.raises(ModelLoadError, match="no label"):
        load_model(
            "m",
            ModelSpec(path=str(folder), label="nope"),
            device="cpu",
            precision="fp32",
            max_length=None,
            token_cache=0,
        )


def test_bad_model_path_says_what_was_tried(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(
            "default",
            ModelSpec(path=str(tmp_path / "missing")),
            device="cpu",
            precision="fp32",
            max_length=None,
            token_cache=0,
        )
    assert "missing" in str(info.value) and "local copy" in str(info.value)


def test_packaged_minilm_is_a_bi_encoder_that_ranks_sensibly() -> None:
    loaded = load_model(
        "mini", ModelSpec(path=str(packaged_minilm())), device="cpu", precision="fp32", max_length=None, token_cache=10
    )
    assert loaded.kind == "bi-encoder"
    docs = [
        "Use datetime.strptime to parse a date string into a datetime object.",
        "Bananas are rich in potassium.",
        "The json module decodes JSON documents.",
    ]
    scores = loaded.score("how do I parse a date string", docs, 512)
    assert scores[0] == max(scores) and all(-1.0 <= s <= 1.0 for s in scores)


async def test_scorer_batches_across_requests_caches_and_refuses_when_full(tiny_model: str) -> None:
    settings = Settings(model=tiny_model, precision="fp32", max_wait_ms=30, queue_pairs=50)
    metrics = Metrics()
    scorer = LocalScorer(settings, metrics)
    await scorer.start()
    try:
        assert scorer.readiness()["default"]["state"] == "ready"
        first = await asyncio.gather(*(scorer.scores("default", f"q{i}", DOCS) for i in range(4)))
        assert all(len(s) == len(DOCS) for s in first)
        again = await scorer.scores("default", "q0", DOCS)
        assert again == first[0]
        assert scorer._cache.hits >= len(DOCS)
        with pytest.raises(Overloaded):
            await scorer.scores("default", "big", [f"doc {i}" for i in range(60)])
        assert len(await scorer.scores("default", "after", ["a"])) == 1  # the worker keeps serving
    finally:
        await scorer.close()


@pytest.mark.parametrize("which", ["tiny", "packaged"])
def test_requests_with_different_queries_share_batches_without_changing_scores(which: str, tiny_model: str) -> None:
    path = tiny_model if which == "tiny" else str(packaged_minilm())
    loaded = load_model("m", ModelSpec(path=path), device="cpu", precision="fp32", max_length=None, token_cache=0)
    requests = [("parse a date string", DOCS), ("json time", DOCS[::-1]), ("banana", DOCS[:2])]
    together = loaded.score_many(requests, 4096)
    alone = [loaded.score(q, texts, 4096) for q, texts in requests]
    assert [len(s) for s in together] == [len(DOCS), len(DOCS), 2]
    for merged, single in zip(together, alone, strict=True):
        assert merged == pytest.approx(single, abs=1e-5)


def test_long_documents_score_as_their_best_token_window(tiny_model: str) -> None:
    def load(chunks: int) -> Any:
        spec = ModelSpec(path=tiny_model, max_length=24)
        return load_model("m", spec, device="cpu", precision="fp32", max_length=None, token_cache=0, max_chunks=chunks)

    words = ["apple"] * 30 + ["parse", "the", "date", "string"] + ["banana"] * 10  # one token per word
    query = "date string"
    chunked, plain = load(4), load(1)
    windows = chunked.encoder.pair_chunks(
        chunked.encoder.query_ids(query), tuple(chunked.encoder.ids([" ".join(words)])[0])
    )
    assert len(windows) == 4 and all(len(ids) <= 24 for ids, _ in windows)
    room = 24 - chunked.encoder.template.specials - 2
    step = room - min(32, room // 2)
    texts = [" ".join(words[i : i + room]) for i in range(0, step * len(windows), step)]
    best = max(plain.score(query, [t], 4096)[0] for t in texts)
    assert chunked.score(query, [" ".join(words)], 4096)[0] == pytest.approx(best, abs=1e-5)
    assert plain.score(query, [" ".join(words)], 4096)[0] == pytest.approx(plain.score(query, [texts[0]], 4096)[0])


def test_chunking_finds_the_answer_past_the_truncation_point_with_real_weights() -> None:
    def load(chunks: int) -> Any:
        spec = ModelSpec(path=str(packaged_minilm()), max_length=128)
        return load_model("m", spec, device="cpu", precision="fp32", max_length=None, token_cache=0, max_chunks=chunks)

    filler = "Bananas grow in tropical regions and are harvested green. " * 20
    doc = filler + "To parse a date string in Python, call datetime.strptime with a format."
    query = "how do I parse a date string"
    truncated, chunked = load(1).score(query, [doc], 4096)[0], load(8).score(query, [doc], 4096)[0]
    assert chunked > truncated + 0.1


def test_cpu_bf16_is_autocast_over_fp32_weights(tiny_model: str) -> None:
    spec = ModelSpec(path=tiny_model)
    fp32 = load_model("m", spec, device="cpu", precision="fp32", max_length=None, token_cache=0)
    bf16 = load_model("m", spec, device="cpu", precision="bf16", max_length=None, token_cache=0)
    assert bf16.kernel.startswith("torch bf16 (") and next(bf16.model.parameters()).dtype == torch.float32
    assert bf16.score("parse the date", DOCS, 64) == pytest.approx(fp32.score("parse the date", DOCS, 64), abs=0.02)
