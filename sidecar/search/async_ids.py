"""Async-search ids that carry the rerank plan: the client polls any replica, and the one it reaches knows how
to rerank the completed reply.

An id is ``rsc1.<payload>.<mac>``: the payload is the engine's id and the plan (compressed JSON, base64url),
the mac an HMAC-SHA256 of it with the key the replicas share (``async_search_key``). A payload whose mac does
not verify (forged, or made with another key) is never trusted for reranking: its page is only cut to what it
says the client asked for, which is all a forger could see anyway, since the engine's own id still decides
whose search it is.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import zlib
from dataclasses import dataclass
from typing import Any

from sidecar.config import ScoringOptions
from sidecar.search.plan import Plan, Step

_PREFIX = "rsc1."


class InvalidId(ValueError):
    """Not an id of ours that can be read at all."""


@dataclass(frozen=True)
class Unwrapped:
    engine_id: str
    plan: Plan
    verified: bool  # the mac holds: the plan is ours to rerank with


def is_ours(async_id: str) -> bool:
    return async_id.startswith(_PREFIX)


def wrap(engine_id: str, plan: Plan, key: bytes) -> str:
    payload = _b64(zlib.compress(json.dumps({"e": engine_id, "p": _plan_json(plan)}).encode()))
    return f"{_PREFIX}{payload}.{_mac(payload, key)}"


def unwrap(async_id: str, key: bytes) -> Unwrapped:
    try:
        payload, mac = async_id.removeprefix(_PREFIX).split(".")
        data = json.loads(zlib.decompress(_unb64(payload), bufsize=1 << 16))
        return Unwrapped(str(data["e"]), _plan(data["p"]), hmac.compare_digest(mac, _mac(payload, key)))
    except (ValueError, KeyError, TypeError, zlib.error) as e:
        raise InvalidId("not an async search id of this sidecar") from e


def _mac(payload: str, key: bytes) -> str:
    return _b64(hmac.new(key, payload.encode(), hashlib.sha256).digest()[:18])


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _plan_json(plan: Plan) -> dict[str, Any]:
    out = dataclasses.asdict(plan)
    out["scoring"] = plan.scoring.model_dump()
    return out


def _plan(data: dict[str, Any]) -> Plan:
    fields = {f.name for f in dataclasses.fields(Plan)}
    if not isinstance(data, dict) or not set(data) <= fields:
        raise InvalidId("unknown plan fields")
    values = dict(data)
    values["fields"] = tuple(values["fields"])
    values["hidden_fields"] = tuple(values.get("hidden_fields", ()))
    values["scoring"] = ScoringOptions.model_validate(values["scoring"])
    values["steps"] = tuple(Step(str(s["model"]), int(s["window"])) for s in values.get("steps", ()))
    return Plan(**values)
