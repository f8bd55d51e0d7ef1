"""Why scoring did not produce scores: each failure carries the reason that the outcome reports."""

from __future__ import annotations


class ScoringFailed(Exception):
    """The model could not score (it raised, or a scorer backend failed); counts against its circuit."""

    reason = "model_error"
    counts_against_model = True


class ScoringTimeout(ScoringFailed):
    """The search's model deadline (``rerank_timeout_ms``) passed before the scores came."""

    reason = "timeout"


class RemoteUnavailable(ScoringFailed):
    """A remote model server could not be reached (connection refused or cut, connect timeout), retries included."""

    reason = "remote_unavailable"


class CircuitOpen(ScoringFailed):
    """The model's circuit is open: no work is sent to it until the cool-down ends."""

    reason = "circuit_open"
    counts_against_model = False


class Overloaded(ScoringFailed):
    """The model's queue is full; the search did not wait. Says nothing about the model's health."""

    reason = "overloaded"
    counts_against_model = False


class BadInput(ScoringFailed):
    """The search's own text could not be made into model input (the tokenizer refused it): the request's
    fault, not the model's. Only that search falls back; the searches it shared a pass with are scored."""

    reason = "bad_input"
    counts_against_model = False
