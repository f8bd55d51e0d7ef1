"""OpenVINO: a transformers model converted offline (``openvino.convert_model`` on the loaded torch model) and run.

int8 is NNCF's per-channel 8-bit weight compression (no calibration data needed); OpenVINO's CPU plugin runs those
layers from int8 weights, with its run-time dynamic quantization of activations where it applies it (per group,
DYNAMIC_QUANTIZATION_GROUP_SIZE). Scores stay much closer to fp32 than per-tensor dynamic int8 does; on an
AVX2-only EPYC it was slower than ONNX Runtime int8 (see ``cpu.CPU_TABLE``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sidecar.rerank.scorers.onnx import Head, example_inputs

FILE = "model.xml"
RECIPE = "openvino/1: convert_model on the eager torch model; int8: NNCF int8_asym per-channel weights"  # cache key
_HINT = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}  # int8: the layers left in floating point run in f32


def build(model: Any, config: Any, kind: str, names: Sequence[str], precision: str, folder: Path) -> None:
    import openvino as ov

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(
            Head(model, kind, names), example_input=example_inputs(names, int(config.vocab_size))
        )
    if precision == "int8":
        import nncf

        nncf.set_log_level(logging.WARNING)  # not its tables of bit widths at INFO
        converted = nncf.compress_weights(converted, mode=nncf.CompressWeightsMode.INT8_ASYM)
    ov.save_model(converted, str(folder / FILE), compress_to_fp16=False)


class OpenVinoForward:
    """One compiled model and one infer request, used from the model's worker thread only."""

    def __init__(self, path: Path, threads: int, precision: str) -> None:
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": threads,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": _HINT.get(precision, "f32"),
        }
        self._compiled = ov.Core().compile_model(str(path), "CPU", config)
        self._request = self._compiled.create_infer_request()
        self._names = [i.get_any_name() for i in self._compiled.inputs]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = inputs["input_ids"].numpy()
        feeds = {n: inputs[n].numpy() if n in inputs else np.zeros_like(ids) for n in self._names}
        out = self._request.infer(feeds)[self._compiled.output(0)]
        return torch.from_numpy(np.array(out))  # a copy: the request reuses its output buffer
