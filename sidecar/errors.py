"""The sidecar's errors and the one place that turns them into the engine's error format."""

from __future__ import annotations

from typing import Any


class SidecarError(Exception):
    """An error we answer ourselves, in the shape Elasticsearch and OpenSearch use."""

    status = 500
    type = "sidecar_exception"

    def __init__(self, reason: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        cause = {"type": self.type, "reason": self.reason}
        return {"error": {"root_cause": [cause], **cause}, "status": self.status}


class BadRequest(SidecarError):
    """The client's rerank syntax or parameters are wrong (the engine says x_content_parse_exception etc.)."""

    status = 400
    type = "illegal_argument_exception"


class ParsingError(BadRequest):
    type = "parsing_exception"


class UnknownModel(BadRequest):
    """A request names a model that is not one of ours (the rerank API answers it in its own shape)."""


class PayloadTooLarge(SidecarError):
    status = 413
    type = "content_too_long_exception"


class TooManyRequests(SidecarError):
    status = 429
    type = "es_rejected_execution_exception"


class UpstreamUnavailable(SidecarError):
    """No connection to the engine could be made (or it dropped before answering)."""

    status = 502
    type = "upstream_unavailable_exception"


class UpstreamTimeout(SidecarError):
    status = 504
    type = "upstream_timeout_exception"


class RerankFailed(SidecarError):
    """The model failed and the request (or config) asked for strict behaviour."""

    status = 503
    type = "rerank_failed_exception"


class NotReady(SidecarError):
    status = 503
    type = "not_ready_exception"


class Unauthorized(SidecarError):
    status = 401
    type = "security_exception"


class ModelLoadError(Exception):
    """A model could not be found or loaded; the message says what was tried."""
