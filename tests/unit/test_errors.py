"""The error hierarchy and the engine-style body every error is answered with."""

from __future__ import annotations

import json

import pytest

from sidecar import errors
from sidecar.errors import (
    BadRequest,
    NotReady,
    ParsingError,
    PayloadTooLarge,
    RerankFailed,
    SidecarError,
    TooManyRequests,
    Unauthorized,
    UpstreamTimeout,
    UpstreamUnavailable,
)


@pytest.mark.parametrize(
    ("cls", "status", "type_"),
    [
        (SidecarError, 500, "sidecar_exception"),
        (BadRequest, 400, "illegal_argument_exception"),
        (ParsingError, 400, "parsing_exception"),
        (Unauthorized, 401, "security_exception"),
        (PayloadTooLarge, 413, "content_too_long_exception"),
        (TooManyRequests, 429, "es_rejected_execution_exception"),
        (UpstreamUnavailable, 502, "upstream_unavailable_exception"),
        (RerankFailed, 503, "rerank_failed_exception"),
        (NotReady, 503, "not_ready_exception"),
        (UpstreamTimeout, 504, "upstream_timeout_exception"),
    ],
)
def test_status_and_type_per_class(cls: type[SidecarError], status: int, type_: str) -> None:
    err = cls("something [x] went wrong")
    assert (err.status, err.type) == (status, type_)
    assert err.body() == {
        "error": {
            "root_cause": [{"type": type_, "reason": "something [x] went wrong"}],
            "type": type_,
            "reason": "something [x] went wrong",
        },
        "status": status,
    }


def _all_sidecar_errors() -> list[type[SidecarError]]:
    found: list[type[SidecarError]] = []
    todo: list[type[SidecarError]] = [SidecarError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return [c for c in found if c.__module__ == errors.__name__]


@pytest.mark.parametrize("cls", _all_sidecar_errors(), ids=lambda c: c.__name__)
def test_every_error_class_answers_in_the_engine_format(cls: type[SidecarError]) -> None:
    """Any class added to errors.py later is held to the same shape."""
    err = cls("why")
    body = json.loads(json.dumps(err.body()))  # plain JSON all the way down
    assert set(body) == {"error", "status"} and body["status"] == err.status
    assert 400 <= err.status <= 599 and isinstance(err.type, str) and err.type.endswith("_exception")
    error = body["error"]
    assert {"root_cause", "type", "reason"} <= set(error)
    assert error["root_cause"] == [{"type": error["type"], "reason": "why"}]
    assert (error["type"], error["reason"]) == (err.type, "why")
    assert str(err) == "why" and err.reason == "why"


def test_headers_travel_with_the_error_and_are_not_shared() -> None:
    busy = TooManyRequests("queue full", headers={"Retry-After": "1"})
    assert busy.headers == {"Retry-After": "1"}
    a, b = BadRequest("a"), BadRequest("b")
    a.headers["X"] = "1"
    assert b.headers == {}


def test_the_hierarchy_lets_callers_catch_by_kind() -> None:
    assert issubclass(ParsingError, BadRequest)
    for cls in _all_sidecar_errors():
        assert issubclass(cls, SidecarError) and issubclass(cls, Exception)
    assert not issubclass(UpstreamTimeout, UpstreamUnavailable)  # a timeout is never retried as a refusal is
    with pytest.raises(SidecarError) as info:
        raise UpstreamUnavailable("down") from ConnectionRefusedError()
    assert isinstance(info.value.__cause__, ConnectionRefusedError)


def test_a_body_is_a_fresh_dict_each_time() -> None:
    err = BadRequest("x")
    body = err.body()
    body["error"]["root_cause"].append({"type": "other"})
    assert err.body()["error"]["root_cause"] == [{"type": "illegal_argument_exception", "reason": "x"}]
