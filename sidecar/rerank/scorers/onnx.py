"""ONNX Runtime: a transformers model exported offline to ONNX, optionally int8, and run on the CPU.

Export traces the torch model read from the local folder or the HF cache (never the hub), with eager attention
(plain MatMul and Softmax). The session's own graph optimizations (ORT_ENABLE_ALL) fuse what they recognise;
the offline BERT optimizer (onnxruntime.transformers) was no faster here, and its fused attention is slower
once quantized, so it is not used.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

FILE = "model.onnx"


class Head(torch.nn.Module):
    """The one tensor a backend returns: logits (cross-encoders) or the last hidden state (bi-encoders)."""

    def __init__(self, model: Any, kind: str, names: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.kind = kind
        self.names = tuple(names)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> torch.Tensor:  # named parameters: OpenVINO names the converted model's inputs after them
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        out = self.model(**{n: given[n] for n in self.names})
        return out.logits if self.kind == "cross-encoder" else out.last_hidden_state  # type: ignore[no-any-return]


def example_inputs(names: Sequence[str], vocab: int) -> tuple[torch.Tensor, ...]:
    """Two rows of 16 tokens, the second half padding: the shapes the trace generalises from."""
    ids = torch.arange(100, 132, dtype=torch.long).reshape(2, 16) % vocab
    mask = torch.ones((2, 16), dtype=torch.long)
    mask[1, 8:] = 0
    types = torch.zeros((2, 16), dtype=torch.long)
    types[:, 6:] = 1
    by_name = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return tuple(by_name[n] for n in names)


@dataclass(frozen=True)
class Int8:
    """How ``build`` quantizes: ONNX Runtime's dynamic quantization (u8 activations, one scale per tensor) of
    the MatMuls that have a weight; attention's activation-by-activation MatMuls stay fp32.

    Measured on TREC DL19 BM25 top 100 with the packaged all-MiniLM-L6-v2 (nDCG@10; fp32 0.6424), AVX2-only EPYC:
    s8 weights with fp32 down-projections 0.6436 (the default); u8 weights (u8u8 kernels, no 16-bit sums to
    saturate) with fp32 down-projections 0.6386; s8 including the down-projections 0.6337 (out of the 0.005
    bound: their input is the GELU output, whose few large values one 8-bit scale cannot hold).
    """

    signed: bool = True  # s8 weights (u8s8 kernels) or u8 (u8u8)
    down_projections: bool = False  # quantize the feed-forward down-projections too
    reduce_range: bool = False  # 7-bit weights

    def __str__(self) -> str:
        names = (
            "s8" if self.signed else "u8",
            "all" if self.down_projections else "fp32-down",
            "7bit" * self.reduce_range,
        )
        return "-".join(n for n in names if n)


INT8 = Int8()
# Part of the export cache key: change it whenever what ``build`` writes changes.
RECIPE = f"onnx/1: eager trace, opset 17; int8 {INT8}"


def build(
    model: Any, config: Any, kind: str, names: Sequence[str], precision: str, folder: Path, int8: Int8 = INT8
) -> None:
    """Write ``folder/model.onnx``: the fp32 graph, or its int8 form (``Int8`` says what is quantized)."""
    plain = folder / "traced.onnx"
    _export(model, kind, names, plain, int(config.vocab_size))
    if precision == "int8":
        _quantize(plain, folder / FILE, int(getattr(config, "intermediate_size", 0) or 0), int8)
        plain.unlink()
    else:
        plain.rename(folder / FILE)


def _export(model: Any, kind: str, names: Sequence[str], path: Path, vocab: int) -> None:
    axes = {n: {0: "batch", 1: "tokens"} for n in names}
    axes["output"] = {0: "batch"} if kind == "cross-encoder" else {0: "batch", 1: "tokens"}
    # The TorchScript exporter: torch >= 2.9 defaults to the dynamo one, which needs onnxscript.
    legacy: dict[str, Any] = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the tracer's notes on Python conditions it records as constants
        torch.onnx.export(
            Head(model, kind, names),
            example_inputs(names, vocab),
            str(path),
            **legacy,
            opset_version=17,
            input_names=list(names),
            output_names=["output"],
            dynamic_axes=axes,
        )


def _quantize(source: Path, target: Path, intermediate: int, recipe: Int8) -> None:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source), load_external_data=False).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    down = [  # MatMuls whose weight is (intermediate_size, hidden): as in torch, in_features == intermediate_size
        node.name
        for node in graph.node
        if node.op_type == "MatMul"
        and any(len(shapes.get(x, ())) == 2 and shapes[x][0] == intermediate for x in node.input)
    ]
    if recipe.down_projections:
        down = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(
            str(source),
            str(target),
            weight_type=QuantType.QInt8 if recipe.signed else QuantType.QUInt8,
            nodes_to_exclude=down,
            reduce_range=recipe.reduce_range,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


class OnnxForward:
    """One ONNX Runtime session on the CPU; its threads do not spin between calls (the loop shares the cores)."""

    def __init__(self, path: Path, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self._names = [i.name for i in self._session.get_inputs()]

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        ids = inputs["input_ids"].numpy()
        feeds = {n: inputs[n].numpy() if n in inputs else np.zeros_like(ids) for n in self._names}
        out = self._session.run(None, feeds)[0]
        return torch.from_numpy(np.asarray(out))
