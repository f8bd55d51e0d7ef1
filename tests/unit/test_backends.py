"""The ONNX Runtime and OpenVINO backends on real weights: exported offline, cached by weights, and scoring as
torch fp32 does within each kernel's bound (score differences and rank agreement on a slice of TREC DL19)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from sidecar.config import ModelSpec
from sidecar.errors import ModelLoadError
from sidecar.rerank.scorers import models
from sidecar.rerank.scorers.models import load_model
from tests.models import packaged_minilm
from tests.quality.data import data_dir

DOCS = ["the date string", "parse json", "apple banana " * 40, "", "time ??", "x"]
QUERY = "parse the date"


def _load(path: str, backend: str, precision: str, exports: Path, own: str | None = None) -> models.LoadedModel:
    return load_model(
        "m",
        ModelSpec(path=path, backend=own),
        device="cpu",
        precision=precision,
        backend=backend,
        max_length=None,
        token_cache=0,
        export_dir=exports,
    )


def _exports(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if (p / "export.json").is_file())


def test_onnx_scores_as_torch_does_and_its_export_is_made_once_per_weights(tiny_model: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    folder = tmp_path / "model"
    shutil.copytree(tiny_model, folder)
    exports = tmp_path / "exports"
    want = _load(str(folder), "torch", "fp32", exports).score(QUERY, DOCS, 64)
    onnx = _load(str(folder), "onnx", "fp32", exports)
    assert onnx.kernel.startswith("onnx fp32 (") and onnx.model is None
    assert onnx.score(QUERY, DOCS, 64) == pytest.approx(want, abs=1e-5)
    [made] = _exports(exports)
    built = (made / "model.onnx").stat().st_mtime_ns
    assert _load(str(folder), "onnx", "fp32", exports).score(QUERY, DOCS, 64) == pytest.approx(want, abs=1e-5)
    assert _exports(exports) == [made] and (made / "model.onnx").stat().st_mtime_ns == built  # read, not made again
    weights = folder / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # retrained in place
    _load(str(folder), "onnx", "fp32", exports)
    assert len(_exports(exports)) == 2
    assert not [p for p in exports.iterdir() if p.name.startswith(".building-")]


def test_onnx_int8_keeps_the_feed_forward_down_projections_in_fp32(tiny_model: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    loaded = _load(tiny_model, "onnx", "int8", tmp_path)
    assert loaded.kernel.startswith("onnx int8 (")
    assert len(loaded.score(QUERY, DOCS, 64)) == len(DOCS)
    [made] = _exports(tmp_path)
    graph = onnx.load(str(made / "model.onnx")).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    float_weights = [shapes[i] for n in graph.node if n.op_type == "MatMul" for i in n.input if i in shapes]
    assert float_weights and all(s[0] == 64 for s in float_weights)  # intermediate_size 64: the down-projections
    assert sum(n.op_type == "MatMulInteger" for n in graph.node) >= 2 * 4  # q, k, v, out, up of both layers


def test_a_model_s_backend_overrides_the_global_one(tiny_model: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    assert _load(tiny_model, "torch", "fp32", tmp_path, own="onnx").kernel.startswith("onnx fp32")
    assert _load(tiny_model, "onnx", "fp32", tmp_path, own="torch").kernel.startswith("torch fp32")


def test_a_backend_without_its_package_says_what_to_install() -> None:
    with pytest.raises(ModelLoadError, match=r"pip install 'rerank-sidecar\[onnx\]'"):
        models._need("onnx", "a_module_that_is_not_installed")


def test_an_unsupported_precision_is_refused_by_the_backend(tiny_model: str, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="onnx runs fp32 or int8"):
        _load(tiny_model, "onnx", "bf16", tmp_path)


# -- fidelity on a slice: the packaged all-MiniLM-L6-v2 (real weights) on TREC DL19 BM25 top 100 ---------------

# kernel -> (most |cosine difference| to torch fp32, least mean Kendall tau, least top-10 agreement) on the first
# 3 queries, with room over what an AVX2-only EPYC measured (in brackets). Full-DL19 nDCG@10, fp32 0.6424: torch
# int8 0.6436, onnx int8 0.6436 (see cpu.CPU_TABLE and onnx.Int8); full passes are left to the benchmarks.
BOUNDS = {
    ("torch", "int8"): (0.12, 0.90, 0.85),  # (0.090, 0.931, 0.93)
    ("onnx", "fp32"): (1e-5, 0.999, 1.0),  # (4e-7, 1.000, 1.00)
    ("onnx", "int8"): (0.07, 0.92, 0.9),  # (0.045, 0.957, 1.00)
    ("openvino", "fp32"): (1e-5, 0.999, 1.0),  # (4e-7, 1.000, 1.00)
    ("openvino", "int8"): (0.03, 0.97, 0.9),  # (0.013, 0.992, 1.00)
}
MODULES = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "nncf"), "torch": ()}


@pytest.fixture(scope="module")
def slice_and_reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Any], list[list[float]], Path]:
    from sidecar.tools.datasets import candidates

    rows = candidates(data_dir("trec_dl19"))[:3]
    exports = tmp_path_factory.mktemp("exports")
    reference = _load(str(packaged_minilm()), "torch", "fp32", exports)
    return rows, [reference.score(c.query, c.texts, 2048) for c in rows], exports


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    n, agree = len(a), 0
    for i in range(n):
        for j in range(i + 1, n):
            s = (a[i] - a[j]) * (b[i] - b[j])
            agree += 1 if s > 0 else -1 if s < 0 else 0
    return agree / (n * (n - 1) / 2)


def top_k(scores: Sequence[float], k: int = 10) -> set[int]:
    return set(sorted(range(len(scores)), key=lambda i: -scores[i])[:k])


@pytest.mark.slow
@pytest.mark.parametrize(("backend", "precision"), list(BOUNDS))
def test_each_kernel_ranks_a_dl19_slice_as_torch_fp32_does(
    backend: str, precision: str, slice_and_reference: tuple[list[Any], list[list[float]], Path]
) -> None:
    for module in MODULES[backend]:
        pytest.importorskip(module)
    rows, reference, exports = slice_and_reference
    loaded = _load(str(packaged_minilm()), backend, precision, exports)
    got = [loaded.score(c.query, c.texts, 2048) for c in rows]
    diff = max(abs(x - y) for g, r in zip(got, reference, strict=True) for x, y in zip(g, r, strict=True))
    tau = sum(kendall_tau(g, r) for g, r in zip(got, reference, strict=True)) / len(rows)
    top = sum(len(top_k(g) & top_k(r)) / 10 for g, r in zip(got, reference, strict=True)) / len(rows)
    print(f"{loaded.kernel}: max |diff| {diff:.1e}, Kendall tau {tau:.3f}, top-10 agreement {top:.2f}")
    most, tau_min, top_min = BOUNDS[(backend, precision)]
    assert diff <= most and tau >= tau_min and top >= top_min


@pytest.mark.slow
def test_bf16_autocast_the_amx_row_ranks_a_dl19_slice_as_fp32_does(
    slice_and_reference: tuple[list[Any], list[list[float]], Path],
) -> None:
    """The AMX row's numerics (bf16 matmuls, fp32 norms and softmax), emulated here: 30 passages keep it short."""
    rows, reference, exports = slice_and_reference
    loaded = _load(str(packaged_minilm()), "torch", "bf16", exports)
    assert loaded.kernel.startswith("torch bf16 (") and next(loaded.model.parameters()).dtype == torch.float32
    got, want = loaded.score(rows[0].query, rows[0].texts[:30], 2048), reference[0][:30]
    diff = max(abs(x - y) for x, y in zip(got, want, strict=True))
    print(f"{loaded.kernel}: max |diff| {diff:.1e}, Kendall tau {kendall_tau(got, want):.3f}")
    assert diff <= 0.01 and kendall_tau(got, want) >= 0.97  # measured here: 1.6e-03, tau 1.000
