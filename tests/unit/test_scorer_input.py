"""Hostile text through the real local scorer (the tiny saved BERT and its real tokenizer): any str the pipeline
hands the scorer is scored, or refused as that search's own input, never failing the searches it shares a
pass with and never counting against the model."""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.config import DEFAULT_MODEL, Settings
from sidecar.metrics import Metrics
from sidecar.rerank.failures import BadInput, ScoringFailed
from sidecar.rerank.scorers.local import LocalScorer

T = TypeVar("T")
NORMAL = ("parse the date string", ["the date string", "apple banana", "json time doc"])


class _Running:
    """A LocalScorer started on an event loop of its own thread, so that each example can use it."""

    def __init__(self, scorer: LocalScorer, metrics: Metrics) -> None:
        self.scorer, self.metrics = scorer, metrics
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def passes(self) -> float:
        return self.metrics.registry.get_sample_value("sidecar_batch_pairs_count") or 0.0

    def stop(self) -> None:
        self.run(self.scorer.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def running(tiny_model: str) -> Iterator[_Running]:
    s = Settings(model=tiny_model, device="cpu", precision="fp32", backend="torch", score_cache_entries=0)
    metrics = Metrics()
    r = _Running(LocalScorer(s, metrics), metrics)
    r.run(r.scorer.start())
    yield r
    r.stop()


_pieces = st.one_of(
    st.characters(categories=["Cs"]),  # lone surrogates, as JSON's "\ud800" decodes
    st.characters(categories=["Cc", "Cf", "Mn", "Zs", "Zl", "Co", "Cn"]),  # controls, NUL, combining marks
    st.characters(),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\ud83d\ude00", "e\u0301\u0301\u0301", "\ufeff", " ", "date"]),
)
_hostile = st.one_of(
    st.lists(_pieces, max_size=60).map("".join),
    st.just(""),
    st.tuples(_pieces, st.integers(1_000, 30_000)).map(lambda t: t[0] * t[1]),  # one very long word
    st.tuples(_pieces, st.integers(1_000, 10_000)).map(lambda t: (t[0] + " ") * t[1]),  # very many tokens
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=_hostile, texts=st.lists(_hostile, min_size=1, max_size=8))
def test_hostile_text_in_a_shared_pass_never_fails_the_other_search_nor_counts_against_the_model(
    running: _Running, query: str, texts: list[str]
) -> None:
    alone = running.run(running.scorer.scores(DEFAULT_MODEL, *NORMAL))
    before = running.passes()

    async def both() -> list[list[float] | BaseException]:
        normal = running.scorer.scores(DEFAULT_MODEL, *NORMAL)
        hostile = running.scorer.scores(DEFAULT_MODEL, query, texts)
        return list(await asyncio.gather(normal, hostile, return_exceptions=True))

    normal, hostile = running.run(both())
    assert not isinstance(normal, BaseException), repr(normal)  # the other search is scored...
    assert normal == pytest.approx(alone, rel=1e-4, abs=1e-5)
    assert running.passes() == before + 1  # ...in the one pass the two searches shared
    if isinstance(hostile, BaseException):  # refused as this search's input: its fault, not the model's
        assert isinstance(hostile, ScoringFailed) and not hostile.counts_against_model, repr(hostile)
    else:
        assert len(hostile) == len(texts) and all(math.isfinite(s) for s in hostile)


class _Refusing:
    """The real tokenizer, refusing any batch with "boom" in it as a tokenizer may refuse what it cannot read."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.model_input_names = tokenizer.model_input_names
        self.pad_token_id = tokenizer.pad_token_id

    def __call__(self, text: Any, *args: Any, **kwargs: Any) -> Any:
        if any("boom" in t for t in ([text] if isinstance(text, str) else text)):
            raise TypeError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
        return self._tokenizer(text, *args, **kwargs)


@pytest.mark.parametrize("kind", ["cross-encoder", "bi-encoder"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(refused=st.lists(st.booleans(), min_size=1, max_size=5), where=st.sampled_from(["query", "text"]))
def test_a_text_the_tokenizer_refuses_fails_its_own_request_in_the_pass_alone(
    loaded: dict[str, Any], kind: str, refused: list[bool], where: str
) -> None:
    model = loaded[kind]
    requests = [
        (
            f"boom {i}" if bad and where == "query" else f"date {i}",
            ["the date", "boom" if bad and where == "text" else "json"],
        )
        for i, bad in enumerate(refused)
    ]
    got = model.score_each(requests, 2048)
    for (query, texts), bad, result in zip(requests, refused, got, strict=True):
        if bad:
            assert isinstance(result, BadInput) and not result.counts_against_model
        else:
            assert result == pytest.approx(model.score_each([(query, texts)], 2048)[0], rel=1e-4, abs=1e-5)


@pytest.fixture(scope="module")
def loaded(tiny_model: str) -> dict[str, Any]:
    from sidecar.config import ModelSpec
    from sidecar.rerank.scorers.models import load_model
    from sidecar.rerank.scorers.tokens import PairEncoder
    from tests.models import packaged_minilm

    out = {}
    for kind, path in (("cross-encoder", tiny_model), ("bi-encoder", str(packaged_minilm()))):
        m = load_model(
            kind, ModelSpec(path=path), device="cpu", precision="fp32", max_length=64, token_cache=0, backend="torch"
        )
        m.encoder = PairEncoder(_Refusing(m.encoder.tokenizer), m.encoder.max_length, 0)
        out[kind] = m
    return out
