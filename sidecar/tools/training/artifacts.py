"""What a training run writes: model folders `serve` loads, the trainer's checkpoints, and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def save_plain(model: Any, folder: Path) -> Path:
    """The student as a transformers folder (config, weights, tokenizer): what `serve` loads as a cross-encoder."""
    folder.mkdir(parents=True, exist_ok=True)
    model.model.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder


def last_checkpoint(folder: Path) -> Path | None:
    done = [p for p in folder.glob("checkpoint-*") if p.is_dir()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def plot(losses: list[float], epochs: list[tuple[int, float]], reference: float, label: str, path: Path) -> None:
    """The loss per logged step, and held-out nDCG@10 per epoch against a reference line (the start, a teacher)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=110)
    left.plot(losses, linewidth=0.8)
    left.set_title("training loss per step")
    left.set_xlabel("step")
    right.plot([e for e, _ in epochs], [m for _, m in epochs], marker="o")
    right.axhline(reference, color="grey", linestyle="--", linewidth=0.8, label=label)
    right.set_title("held-out nDCG@10")
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
