"""The rerank API's pure parts: who may call it, how scores become [0, 1], the order."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from sidecar.config import ModelSpec, Settings
from sidecar.rerank.api import bearer, is_loopback, probability, ranked, refusal, sigmoid

KEYS = (SecretStr("k-one"), SecretStr("kø-two"))


@pytest.mark.parametrize(
    ("remote", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("192.0.2.2", False),
        ("::ffff:192.0.2.2", False),
        ("fe80::1%eth0", False),
        ("10.0.0.1", False),
        ("", False),
        (None, False),
        ("localhost", False),  # a name is not an address: the peer is always an address
    ],
)
def test_loopback(remote: str | None, loopback: bool) -> None:
    assert is_loopback(remote) is loopback


def test_without_keys_loopback_only() -> None:
    assert refusal("127.0.0.1", [], ()) is None
    assert refusal("127.0.0.1", [b"Bearer whatever"], ()) is None
    status, message = refusal("192.0.2.2", [b"Bearer k-one"], ()) or (0, "")
    assert status == 403 and "rerank_api_keys" in message


@pytest.mark.parametrize("remote", ["127.0.0.1", "192.0.2.2"])
def test_with_keys_every_caller_needs_one(remote: str) -> None:
    assert refusal(remote, [b"Bearer k-one"], KEYS) is None
    assert refusal(remote, ["Bearer kø-two".encode()], KEYS) is None
    assert refusal(remote, [b"bearer \t k-one "], KEYS) is None
    assert refusal(remote, [], KEYS) == (401, "no api key supplied (Authorization: Bearer KEY)")
    for wrong in (
        [b"Bearer k-one", b"Bearer k-one"],
        [b"Basic k-one"],
        [b"k-one"],
        [b"Bearer"],
        ["Bearer kø-two".encode("latin-1")],
    ):
        assert refusal(remote, wrong, KEYS) == (401, "invalid api token"), wrong


@given(value=st.binary(max_size=40), remote=st.sampled_from(["127.0.0.1", "192.0.2.2"]))
def test_only_a_key_opens_it(value: bytes, remote: str) -> None:
    """Whatever bytes the header holds: served exactly when its Bearer credentials are one of the keys."""
    credentials = bearer(value)
    expected = credentials is not None and credentials in {k.get_secret_value().encode() for k in KEYS}
    assert (refusal(remote, [value], KEYS) is None) is expected


def test_settings_refuse_keys_that_could_never_be_sent() -> None:
    for bad in ("", " k", "k ", "k\n"):
        with pytest.raises(ValidationError):
            Settings(rerank_api_keys=(bad,))
    assert Settings(rerank_api_keys=("a b",)).rerank_api_keys[0].get_secret_value() == "a b"


@given(x=st.floats(allow_nan=False))
def test_sigmoid_is_a_probability_and_never_overflows(x: float) -> None:
    assert 0.0 <= sigmoid(x) <= 1.0
    if abs(x) < 30:
        assert sigmoid(x) == pytest.approx(1 / (1 + math.exp(-x)))
        assert sigmoid(x) + sigmoid(-x) == pytest.approx(1.0)


def test_probability_keeps_a_models_own_activation() -> None:
    settings = Settings(models={"p": ModelSpec(path="x", activation="sigmoid"), "l": ModelSpec(path="y")})
    assert probability(0.25, "p", settings) == 0.25
    assert probability(0.0, "l", settings) == 0.5
    assert probability(0.0, "default", settings) == 0.5


@given(scores=st.lists(st.floats(allow_nan=False, allow_infinity=False, width=16), max_size=12))
def test_ranked_is_best_first_ties_in_order(scores: list[float]) -> None:
    order = ranked(scores)
    assert sorted(order) == list(range(len(scores)))
    for a, b in itertools.pairwise(order):
        assert scores[a] > scores[b] or (scores[a] == scores[b] and a < b)
