"""Layer-wise distillation: a student cut to K layers also learns the hidden states of the encoder it was cut from.

TinyBERT's uniform mapping: student layer i of K (1-based) learns layer i * N / K of the uncut N-layer encoder, by
the mean squared error over the real (unpadded) tokens, plus the same error on the last layer's first token
alone: the head reads the pair from that token, and at two layers it starts out the same for every pair (a cut
L6 cross-encoder scores a list of 16 within 0.001). One score per pair is a thin signal for a 2-layer encoder to
learn from; every token's hidden state is a dense one, and the head kept from the uncut model reads a first
token that looks like the one it was trained on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """For each student layer, the uncut encoder's layer it learns (1-based: index into ``hidden_states``)."""
    return [(i + 1) * teacher_layers // student_layers for i in range(student_layers)]


def hidden_mse(student: Tensor, teacher: Tensor, mask: Tensor) -> Tensor:
    """The mean squared error per hidden unit over the tokens ``mask`` keeps (batch, tokens) of (batch, tokens, d)."""
    keep = mask.unsqueeze(-1).to(student.dtype)
    return ((student - teacher) ** 2 * keep).sum() / (keep.sum() * student.shape[-1])


class LayerDistillLoss(nn.Module):
    """``listwise`` (a sentence-transformers loss on ``model``) plus ``weight`` times the hidden-state MSE to
    ``uncut`` (a transformers encoder with as many hidden units), on the pairs ``listwise`` scores: the student's
    forward passes are observed through hooks, so each pair is encoded by the student once."""

    def __init__(self, model: Any, uncut: Any, weight: float, listwise: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.listwise = listwise
        self.weight = weight
        self.uncut = uncut.eval().requires_grad_(False)
        base = model.model.base_model
        self.targets = layer_map(len(base.encoder.layer), len(uncut.encoder.layer))
        self._calls: list[tuple[dict[str, Tensor], list[Tensor]]] | None = None
        base.register_forward_pre_hook(self._on_inputs, with_kwargs=True)
        for layer in base.encoder.layer:
            layer.register_forward_hook(self._on_layer)

    def _on_inputs(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._calls is not None:
            ids = args[0] if args else kwargs["input_ids"]
            extra = {k: kwargs[k] for k in ("attention_mask", "token_type_ids") if kwargs.get(k) is not None}
            self._calls.append(({"input_ids": ids, **extra}, []))

    def _on_layer(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._calls:
            self._calls[-1][1].append(output[0] if isinstance(output, tuple) else output)

    def forward(
        self, inputs: Any, labels: Any, prompt: str | None = None, task: str | None = None
    ) -> dict[str, Tensor]:
        self._calls = []
        try:
            ranking = self.listwise(inputs, labels, prompt=prompt, task=task)
            calls = self._calls
        finally:
            self._calls = None
        return {"listwise": ranking, "hidden": self.weight * torch.stack([self._mse(*c) for c in calls]).mean()}

    def _mse(self, tokens: dict[str, Tensor], hidden: list[Tensor]) -> Tensor:
        with torch.no_grad():
            target = self.uncut(**tokens, output_hidden_states=True).hidden_states
        mask = tokens.get("attention_mask", torch.ones_like(tokens["input_ids"]))
        layers = [hidden_mse(h, target[j], mask) for h, j in zip(hidden, self.targets, strict=True)]
        first = hidden_mse(hidden[-1][:, :1], target[self.targets[-1]][:, :1], mask[:, :1])
        return torch.stack(layers).mean() + first

    def get_config_dict(self) -> dict[str, Any]:
        return {"weight": self.weight, "layer_map": self.targets}
