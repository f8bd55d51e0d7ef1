"""The CPU table behind ``precision: auto``: feature sets and installed backends in, the kernel out."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sidecar.errors import ModelLoadError
from sidecar.rerank.scorers import cpu
from sidecar.rerank.scorers.models import choose_kernel, choose_precision

SAPPHIRE_RAPIDS = {"avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_tile", "avx512_bf16"}
ICE_LAKE = {"avx2", "avx512f", "avx512_vnni"}
ALDER_LAKE = {"avx2", "avx_vnni"}
EPYC_ROME = {"avx2", "fma", "sse4_2"}  # AVX2 only: the machine the avx2 rows were measured on
ARM: set[str] = set()
TORCH_ONLY = {"torch"}
EVERYTHING = {"torch", "onnx", "openvino"}


@pytest.mark.parametrize(
    ("features", "installed", "kernel"),
    [
        (SAPPHIRE_RAPIDS, TORCH_ONLY, "torch bf16 (amx-bf16)"),
        (SAPPHIRE_RAPIDS, EVERYTHING, "torch bf16 (amx-bf16)"),
        (ICE_LAKE, TORCH_ONLY, "torch int8 (avx512-vnni)"),
        (ALDER_LAKE, TORCH_ONLY, "torch int8 (avx-vnni)"),
        (EPYC_ROME, TORCH_ONLY, "torch int8 (avx2)"),
        (EPYC_ROME, {"torch", "openvino"}, "torch int8 (avx2)"),
        (EPYC_ROME, EVERYTHING, "onnx int8 (avx2)"),
        (ARM, EVERYTHING, "torch fp32 (generic)"),
    ],
)
def test_auto_takes_the_first_row_the_cpu_and_the_installed_backends_allow(
    features: set[str], installed: set[str], kernel: str
) -> None:
    assert cpu.pick(features, installed).name == kernel


def test_every_row_names_its_evidence_and_a_known_feature() -> None:
    for row in cpu.CPU_TABLE:
        assert row.evidence and (row.isa in cpu.FEATURES or row.isa == "")
        assert row.backend in cpu.BACKENDS and row.precision in ("fp32", "int8", "bf16")
    assert cpu.CPU_TABLE[-1] == cpu.Kernel("torch", "fp32", "", cpu.CPU_TABLE[-1].evidence)  # always a fallback


def test_a_named_backend_gets_its_own_row_or_its_fp32() -> None:
    assert cpu.pick(EPYC_ROME, EVERYTHING, backend="torch").name == "torch int8 (avx2)"
    assert cpu.pick(EPYC_ROME, EVERYTHING, backend="onnx").name == "onnx int8 (avx2)"
    assert cpu.pick(EPYC_ROME, EVERYTHING, backend="openvino").name == "openvino int8 (avx2)"
    assert cpu.pick(ARM, EVERYTHING, backend="onnx").name == "onnx fp32 (generic)"


def test_an_explicit_precision_is_honoured_and_runs_on_torch_unless_a_backend_is_named() -> None:
    assert cpu.pick(SAPPHIRE_RAPIDS, EVERYTHING, precision="fp32").name == "torch fp32 (avx512f)"
    assert cpu.pick(EPYC_ROME, EVERYTHING, precision="int8").name == "torch int8 (avx2)"
    assert cpu.pick(EPYC_ROME, EVERYTHING, precision="bf16").name == "torch bf16 (avx2)"
    assert cpu.pick(EPYC_ROME, EVERYTHING, precision="fp32", backend="onnx").name == "onnx fp32 (avx2)"
    with pytest.raises(ValueError, match="unknown backend"):
        cpu.pick(EPYC_ROME, EVERYTHING, backend="tensorrt")


def test_features_come_from_the_cpuinfo_flags(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: GenuineIntel\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni amx_bf16 amx_tile\n"
        "\nprocessor\t: 1\nflags\t\t: fpu sse2 avx2\n"
    )
    assert cpu.cpu_features(info) == {"avx2", "avx512f", "avx512_vnni", "amx_bf16"}
    assert cpu.parse_flags("processor : 0\nFeatures : fp asimd\n") == frozenset()  # an ARM cpuinfo has no flags


def test_without_cpuinfo_the_features_come_from_torch(tmp_path: Path) -> None:
    found = cpu.cpu_features(tmp_path / "absent")
    assert found <= cpu.FEATURES
    assert ("avx2" in found) == (torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"))


def test_this_machine_reads_its_own_flags() -> None:
    here = Path("/proc/cpuinfo")
    if not here.exists():
        pytest.skip("no /proc/cpuinfo")
    flags = cpu.parse_flags(here.read_text())
    assert cpu.cpu_features() == flags & cpu.FEATURES
    assert choose_precision("auto", torch.device("cpu")) == choose_kernel("auto", "auto", torch.device("cpu")).precision


def test_gpus_run_torch_fp16_and_refuse_cpu_backends() -> None:
    cuda = torch.device("cuda")
    assert choose_kernel("auto", "auto", cuda).name == "torch fp16 (cuda)"
    assert choose_kernel("bf16", "torch", cuda).precision == "bf16"
    with pytest.raises(ModelLoadError, match="CPU only"):
        choose_kernel("auto", "onnx", cuda)
    with pytest.raises(ModelLoadError, match="fp16 is for CUDA"):
        choose_kernel("fp16", "auto", torch.device("cpu"), features=EPYC_ROME, installed=TORCH_ONLY)
