"""Layer-wise distillation of a cut student: the layer mapping, the masked hidden-state error, and the loss that
observes the student's own forward passes (tiny BERT, real weights saved with save_pretrained)."""

from __future__ import annotations

import torch
from torch.nn import functional

from sidecar.tools.training import distill
from sidecar.tools.training.layers import LayerDistillLoss, hidden_mse, layer_map


def test_student_layers_learn_evenly_spaced_layers_of_the_uncut_encoder() -> None:
    assert layer_map(2, 6) == [3, 6]  # TinyBERT's uniform mapping; the last learns the last
    assert layer_map(3, 12) == [4, 8, 12]
    assert layer_map(6, 6) == [1, 2, 3, 4, 5, 6]


def test_the_hidden_state_error_counts_only_real_tokens() -> None:
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    expected = functional.mse_loss(student[mask.bool()], teacher[mask.bool()])
    assert torch.allclose(hidden_mse(student, teacher, mask), expected)
    teacher[0, 3:] += 100.0  # padding: whatever it holds does not count
    assert torch.allclose(hidden_mse(student, teacher, mask), expected)


def _batch() -> tuple[list[list[str]] | list[str], list[torch.Tensor]]:
    queries = ["apple date", "parse json string"]
    docs = [["the apple doc", "banana time", "date 1 2"], ["json string parse", "the time", "apples"]]
    return [queries, docs], [torch.tensor([3.0, 1.0, 2.0]), torch.tensor([2.0, 0.0, 1.0])]


def test_a_student_with_all_the_layers_matches_and_a_cut_one_learns_to(tiny_model: str) -> None:
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    inputs, labels = _batch()
    whole = distill.student_model(tiny_model, [0, 1], 64).eval()  # dropout off: the same function as the uncut
    loss = LayerDistillLoss(whole, distill.uncut_encoder(tiny_model), 1.0, ListNetLoss(whole))
    parts = loss(inputs, labels)
    assert set(parts) == {"listwise", "hidden"} and parts["hidden"].item() < 1e-10

    cut = distill.student_model(tiny_model, [1], 64).eval()  # layer 1 alone learns the uncut layer 2 (the last)
    uncut = distill.uncut_encoder(tiny_model)
    loss = LayerDistillLoss(cut, uncut, 1.0, ListNetLoss(cut))
    assert loss.targets == [2]
    optimiser = torch.optim.Adam(cut.parameters(), lr=1e-4)
    first = None
    for _ in range(15):
        hidden = loss(inputs, labels)["hidden"]
        first = hidden.item() if first is None else first
        optimiser.zero_grad()
        hidden.backward()
        optimiser.step()
    assert first is not None and first > 1e-4 and hidden.item() < first / 2, (first, hidden.item())
    assert all(p.grad is None for p in uncut.parameters())  # the uncut encoder is a fixed target
    cut.predict([("apple", "the apple doc")])  # outside the loss nothing is recorded
    assert loss._calls is None
