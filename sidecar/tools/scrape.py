"""Read one labelled counter from a sidecar's `/_sidecar/metrics` (benchmarks and tests check their accounting)."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def counter(url: str, name: str, label: str = "result") -> dict[str, float]:
    """``{label value: count}`` of the counter ``name`` (without ``_total``) of the sidecar at ``url``."""
    with urllib.request.urlopen(url + "/_sidecar/metrics", timeout=10) as r:
        text = r.read().decode()
    return {
        s.labels[label]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == name
        for s in f.samples
        if s.name == f"{name}_total"
    }
