"""A model is local (`path`) or remote (`url` + `api`), never both; the remote's defaults and secrets."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from sidecar.config import ModelSpec, Settings
from sidecar.rerank.api import probability
from sidecar.rerank.scorers.remote import APIS, public_url

URL = "http://tei:8080"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "exactly one of `path`"),
        ({"path": "x", "url": URL, "api": "tei"}, "exactly one of `path`"),
        ({"url": URL}, "needs `api`"),
        ({"url": URL, "api": "cohere"}, "needs `remote_model`"),
        ({"url": URL, "api": "tei", "max_length": 128}, "max_length is for a local model"),
        ({"url": URL, "api": "tei", "activation": "sigmoid"}, "activation is for a local model"),
        ({"path": "x", "api": "tei"}, "api is for a remote model"),
        ({"path": "x", "api_key": "k"}, "api_key is for a remote model"),
        ({"url": "ftp://tei", "api": "tei"}, "URL scheme"),
    ],
)
def test_a_spec_is_local_or_remote(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelSpec.model_validate(fields)


def test_max_batch_defaults_to_each_apis_documented_limit() -> None:
    limits = {api: ModelSpec(url=URL, api=api, remote_model="m").batch_limit for api in APIS}
    assert limits == {"tei": 32, "cohere": 1000, "infinity": 2048, "vllm": 256, "sidecar": 1000}
    assert ModelSpec(url=URL, api="tei", max_batch=8).batch_limit == 8


def test_the_api_key_comes_from_the_environment_and_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIDECAR_MODELS__FAR__API_KEY", "sk-env-secret")
    settings = Settings(models={"far": {"url": "https://user:pw@tei:8443/", "api": "tei"}})
    spec = settings.models["far"]
    assert spec.api_key is not None and spec.api_key.get_secret_value() == "sk-env-secret"
    assert "sk-env-secret" not in repr(settings) and "sk-env-secret" not in str(spec)
    assert public_url(spec) == "https://tei:8443/"  # no user or password in logs or /ready


def test_cohere_and_vllm_scores_are_already_probabilities() -> None:
    settings = Settings(
        models={
            "co": ModelSpec(url=URL, api="cohere", remote_model="rerank-v3.5"),
            "vl": ModelSpec(url=URL, api="vllm"),
            "tei": ModelSpec(url=URL, api="tei"),
        }
    )
    assert probability(0.25, "co", settings) == 0.25 and probability(0.25, "vl", settings) == 0.25
    assert probability(0.0, "tei", settings) == 0.5  # TEI's raw_scores are logits, as a local model's
