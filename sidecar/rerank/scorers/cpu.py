"""Which kernel runs a model on this CPU: instruction-set features, and the table ``precision: auto`` reads.

Each row of ``CPU_TABLE`` names a backend and precision for CPUs with one feature, and the measurement that
earned it its place: its speed here and its fidelity (TREC DL19 nDCG@10 within 0.005 of fp32). The fidelity is
checked by tests and benchmarks on machines with that feature (tests/quality compares ``auto`` with fp32 on the
CI machine's CPU; tests/unit/test_backends.py checks each backend's scores on a slice), never at start-up.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Backend = Literal["torch", "onnx", "openvino"]
BACKENDS: tuple[Backend, ...] = ("torch", "onnx", "openvino")

# The flags the table is keyed by, in /proc/cpuinfo's spelling.
AMX = "amx_bf16"
AVX512_VNNI = "avx512_vnni"
AVX_VNNI = "avx_vnni"  # the 256-bit VNNI of Alder Lake and later client cores
AVX512 = "avx512f"
AVX2 = "avx2"
FEATURES = frozenset({AMX, AVX512_VNNI, AVX_VNNI, AVX512, AVX2})


@dataclass(frozen=True)
class Kernel:
    """One way to run a model on a CPU: what ``/ready`` and ``bench scorer`` name as the kernel that ran."""

    backend: Backend
    precision: str  # fp32, int8 (dynamic activations, fp32 FFN down-projections), bf16 (autocast)
    isa: str  # the CPU feature this row needs; "" for any CPU
    evidence: str = ""  # why the row is in the table: speed and fidelity, and where they were measured

    @property
    def name(self) -> str:
        return f"{self.backend} {self.precision} ({self.isa.replace('_', '-') or 'generic'})"


# Rows in order of preference: the first whose feature the CPU has and whose backend is installed wins.
# Speeds: the MiniLM-L6 cross-encoder on TREC DL19 BM25 top-100 pairs (`bench scorer`); fidelity: TREC DL19 nDCG@10
# of the packaged all-MiniLM-L6-v2 on the same candidates, fp32 0.6424, bound 0.005.
CPU_TABLE: tuple[Kernel, ...] = (
    Kernel(
        "torch",
        "bf16",
        AMX,
        "bf16 autocast 3.5-4.3x fp32 on AMX CPUs (issue #13); its numerics, emulated on AVX2, kept a DL19 slice's "
        "order (tests/unit/test_backends.py); full-DL19 nDCG@10 to be measured on an AMX machine",
    ),
    Kernel(
        "torch",
        "int8",
        AVX512_VNNI,
        "int8 2.2x fp32 with VNNI (issue #13); the avx2 row's arithmetic (7-bit activations, exact int32 sums), "
        "so its scores: nDCG@10 0.6436",
    ),
    Kernel("torch", "int8", AVX_VNNI, "as the avx512-vnni row"),
    Kernel(
        "onnx",
        "int8",
        AVX2,
        "ONNX Runtime int8 (s8 weights, fp32 FFN down-projections) 1.6x torch int8 and 2.2-2.5x torch fp32 on an "
        "AVX2-only EPYC; nDCG@10 0.6436",
    ),
    Kernel(
        "torch",
        "int8",
        AVX2,
        "1.4-1.5x torch fp32 on an AVX2-only EPYC (fp32 FFN down-projections); nDCG@10 0.6436",
    ),
    # Rows below are reached with a backend or precision named: slower here, or fidelity not measured on DL19.
    Kernel("onnx", "fp32", AVX2, "1.8x torch fp32 on an AVX2-only EPYC; scores within 1e-6 of torch fp32"),
    Kernel(
        "openvino",
        "int8",
        AVX2,
        "NNCF int8 weights, per-group dynamic activations: 1.2-1.4x torch int8 on an AVX2-only EPYC; closest int8 "
        "to fp32 on a DL19 slice, full-DL19 nDCG@10 not measured",
    ),
    Kernel("openvino", "fp32", AVX2, "1.0-1.1x torch int8, 1.5x torch fp32 on an AVX2-only EPYC"),
    Kernel("torch", "fp32", "", "the reference"),
)


def pick(
    features: Collection[str],
    installed: Collection[str],
    *,
    precision: str = "auto",
    backend: str = "auto",
    table: tuple[Kernel, ...] = CPU_TABLE,
) -> Kernel:
    """The kernel for a CPU with ``features`` and the backends ``installed``.

    ``precision: auto`` takes the first row the CPU and the installed backends allow (restricted to one backend
    when ``backend`` names it). An explicit precision is honoured as given: with ``backend: auto`` on torch, the
    reference implementation of every precision; with a named backend, on that backend.
    """
    if precision != "auto":
        chosen: Backend = "torch" if backend == "auto" else _backend(backend)
        row = next((k for k in table if (k.backend, k.precision) == (chosen, precision) and _fits(k, features)), None)
        return _labelled(row or Kernel(chosen, precision, "", "asked for"), features)
    for row in table:
        if _fits(row, features) and row.backend in installed and backend in ("auto", row.backend):
            return _labelled(row, features)
    return _labelled(Kernel(_backend(backend) if backend != "auto" else "torch", "fp32", "", "no row"), features)


def _fits(row: Kernel, features: Collection[str]) -> bool:
    return not row.isa or row.isa in features


def _labelled(row: Kernel, features: Collection[str]) -> Kernel:
    """A row for any CPU names the vector instructions its kernels use on this one (avx512f, avx2)."""
    if row.isa:
        return row
    wider = {"int8": (AVX512_VNNI, AVX_VNNI), "bf16": (AMX,)}.get(row.precision, ())
    isa = next((f for f in (*wider, AVX512, AVX2) if f in features), "")
    return Kernel(row.backend, row.precision, isa, row.evidence)


def _backend(name: str) -> Backend:
    for b in BACKENDS:
        if b == name:
            return b
    raise ValueError(f"unknown backend {name!r}; one of {', '.join(BACKENDS)}")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This CPU's table features: the kernel's flags in /proc/cpuinfo (Linux), else what torch detects."""
    try:
        flags = parse_flags(cpuinfo.read_text())
    except OSError:
        flags = frozenset()
    return flags & FEATURES if flags else _torch_features()


def parse_flags(cpuinfo: str) -> frozenset[str]:
    """The ``flags`` of the first processor in a /proc/cpuinfo text (x86; empty elsewhere)."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def _torch_features() -> frozenset[str]:
    """Where /proc/cpuinfo is absent (macOS, Windows): torch's own CPU probes, with /proc/cpuinfo's names."""
    import torch

    probes = {
        AVX2: "_is_avx2_supported",
        AVX512: "_is_avx512_supported",
        AVX512_VNNI: "_is_vnni_supported",
        AMX: "_is_amx_tile_supported",
    }
    found = {name for name, probe in probes.items() if getattr(torch.cpu, probe, lambda: False)()}
    if not found and torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        found.add(AVX2)
    return frozenset(found)
