"""Exported models on disk: one folder per (model weights, kind, backend, recipe, exporter versions).

An export is built in a scratch folder beside its final place and renamed into place when complete, so that a
crashed export is never read and two processes exporting the same model at once both end up with a whole one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

log = logging.getLogger(__name__)
_DONE = "export.json"


def export_root(setting: Path | None) -> Path:
    """The folder setting, else ``rerank-sidecar/exports`` in the Hugging Face home (HF_HOME honoured)."""
    if setting is not None:
        return setting.expanduser()
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "rerank-sidecar" / "exports"


def cached_export(root: Path, name: str, key: Mapping[str, str], build: Callable[[Path], None]) -> Path:
    """The folder holding the export that ``key`` describes, built by ``build(folder)`` the first time."""
    text = json.dumps(dict(key), sort_keys=True)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-")[-48:] or "model"
    folder = root / f"{slug}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"
    if (folder / _DONE).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        log.info("exporting %s to %s (once; later starts read it from there)", name, folder)
        build(scratch)
        (scratch / _DONE).write_text(text + "\n")
        try:
            os.rename(scratch, folder)
        except OSError:  # another process finished the same export first (or an incomplete one is in the way)
            if not (folder / _DONE).is_file():
                shutil.rmtree(folder, ignore_errors=True)
                os.rename(scratch, folder)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return folder
