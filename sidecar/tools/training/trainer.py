"""Fine-tuning on judgments with sentence-transformers' trainers and losses, plus what is ours: held-out
evaluation after every epoch, resume, the guard rail that never hands out a worse model, and the plot."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from sidecar.tools.training.artifacts import last_checkpoint, plot, save_plain
from sidecar.tools.training.data import Example, TrainingSet

Kind = Literal["cross-encoder", "bi-encoder"]
Loss = Literal["bce", "lambda", "contrastive"]


@dataclass(frozen=True)
class TrainConfig:
    start: str
    kind: Kind
    loss: Loss
    out: Path
    epochs: int = 2
    batch_size: int = 16
    list_size: int = 16
    lr: float = 2e-5
    max_length: int = 256
    seed: int = 0
    min_gain: float = 0.005  # what "beats the starting model" means: more than noise


@dataclass
class History:
    start_metric: float | None = None
    epochs: list[dict[str, float]] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)


def train(cfg: TrainConfig, data: TrainingSet, evaluate: Callable[[Path], float], resume: bool = False) -> History:
    """Train, evaluating ``evaluate(model_folder) -> nDCG@10`` on held-out data before and after each epoch.

    Each epoch's model is ``out/checkpoints/epoch-N`` (a folder `serve` loads); the trainer's own state for
    ``resume`` is in ``out/trainer``. The best epoch is copied to ``out/best`` only if it beats the starting model.
    """
    from transformers import TrainerCallback

    saved = cfg.out / "history.json"
    last = last_checkpoint(cfg.out / "trainer") if resume else None
    history = History(**json.loads(saved.read_text())) if last is not None and saved.exists() else History()
    if last is not None:
        print(f"resuming from {last} (epoch {len(history.epochs)} done)")
    if history.start_metric is None:
        history.start_metric = evaluate(Path(cfg.start))
        print(f"starting model {cfg.start}: held-out nDCG@10 {history.start_metric:.4f}")
    model = _model(cfg)

    class EpochEnd(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            logs = kwargs.get("logs") or {}
            if "loss" in logs:
                history.losses.append(float(logs["loss"]))
                self.epoch_losses.append(float(logs["loss"]))

        def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.epoch_losses: list[float] = []

        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epoch = round(state.epoch or 0)
            folder = cfg.out / "checkpoints" / f"epoch-{epoch}"
            _save(model, cfg.kind, folder)
            metric = evaluate(folder)
            loss = sum(self.epoch_losses) / max(1, len(self.epoch_losses))
            history.epochs.append({"epoch": epoch, "nDCG@10": metric, "loss": loss})
            saved.write_text(json.dumps(asdict(history), indent=2) + "\n")
            print(f"epoch {epoch}: mean loss {loss:.4f}, held-out nDCG@10 {metric:.4f}")

    trainer = _trainer(cfg, model, data, [EpochEnd()])
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    _hand_out(cfg, history)
    saved.write_text(json.dumps(asdict(history), indent=2) + "\n")
    epochs = [(0, history.start_metric or 0.0)] + [(int(e["epoch"]), e["nDCG@10"]) for e in history.epochs]
    plot(history.losses, epochs, history.start_metric or 0.0, "starting model", cfg.out / "training.png")
    return history


def _model(cfg: TrainConfig) -> Any:
    if cfg.kind == "bi-encoder":
        from sentence_transformers import SentenceTransformer

        bi = SentenceTransformer(cfg.start)
        bi.max_seq_length = cfg.max_length
        return bi
    from sentence_transformers.cross_encoder import CrossEncoder

    return CrossEncoder(cfg.start, num_labels=1, max_length=cfg.max_length)


def _trainer(cfg: TrainConfig, model: Any, data: TrainingSet, callbacks: list[Any]) -> Any:
    """The sentence-transformers trainer, loss and dataset for ``cfg.loss``."""
    from datasets import Dataset

    rng = random.Random(cfg.seed)
    common: dict[str, Any] = {
        "output_dir": str(cfg.out / "trainer"),
        "num_train_epochs": cfg.epochs,
        "learning_rate": cfg.lr,
        "warmup_steps": 0.1,  # a float: the share of the steps (transformers 5)
        "weight_decay": 0.01,
        "save_strategy": "epoch",
        "save_total_limit": 2,
        "logging_steps": 1,
        "seed": cfg.seed,
        "report_to": "none",
        "disable_tqdm": False,
    }
    if cfg.kind == "bi-encoder":
        from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
        from sentence_transformers.base.sampler import BatchSamplers
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

        rows = _triplets(data, rng)
        # in-batch negatives: no two rows of one query share a batch, so another positive is never a negative
        bi_args = SentenceTransformerTrainingArguments(
            per_device_train_batch_size=cfg.batch_size, batch_sampler=BatchSamplers.NO_DUPLICATES, **common
        )
        dataset = Dataset.from_dict({k: [r[i] for r in rows] for i, k in enumerate(("anchor", "positive", "negative"))})
        return SentenceTransformerTrainer(
            model=model,
            args=bi_args,
            train_dataset=dataset,
            loss=MultipleNegativesRankingLoss(model),
            callbacks=callbacks,
        )
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss, LambdaLoss, NDCGLoss2PPScheme

    if cfg.loss == "bce":
        pairs = [(e.query, data.texts[d], g / data.max_grade) for e in data.examples for d, g in _docs(e)]
        rng.shuffle(pairs)
        dataset = Dataset.from_dict({k: [p[i] for p in pairs] for i, k in enumerate(("query", "doc", "label"))})
        loss: Any = BinaryCrossEntropyLoss(model)
        per_batch = cfg.batch_size
    else:
        lists = [_sample_list(e, cfg.list_size, rng) for e in data.examples]
        dataset = Dataset.from_dict(
            {
                "query": [e.query for e, _ in lists],
                "docs": [[data.texts[d] for d, _ in docs] for _, docs in lists],
                "labels": [[float(g) for _, g in docs] for _, docs in lists],
            }
        )
        loss = LambdaLoss(model, weighting_scheme=NDCGLoss2PPScheme())
        per_batch = max(1, cfg.batch_size // cfg.list_size)
    args = CrossEncoderTrainingArguments(per_device_train_batch_size=per_batch, **common)
    return CrossEncoderTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=callbacks)


def _triplets(data: TrainingSet, rng: random.Random) -> list[tuple[str, str, str]]:
    """(query, judged positive, a mined or judged negative) for every positive of a query that has a negative."""
    rows = []
    for e in data.examples:
        negatives = e.negatives or [d for d, g in e.graded.items() if g == 0]
        if negatives:
            rows += [(e.query, data.texts[p], data.texts[rng.choice(negatives)]) for p, g in e.graded.items() if g > 0]
    rng.shuffle(rows)
    return rows


def _docs(e: Example) -> list[tuple[str, int]]:
    return [*e.graded.items(), *((d, 0) for d in e.negatives)]


def _sample_list(e: Example, size: int, rng: random.Random) -> tuple[Example, list[tuple[str, int]]]:
    positives = [(d, g) for d, g in e.graded.items() if g > 0]
    negatives = [(d, 0) for d, g in e.graded.items() if g == 0] + [(d, 0) for d in e.negatives]
    take_pos = rng.sample(positives, min(len(positives), size // 2))
    take_neg = rng.sample(negatives, min(len(negatives), size - len(take_pos)))
    return e, take_pos + take_neg


def _save(model: Any, kind: Kind, folder: Path) -> None:
    """A folder `serve` loads as is: a sentence-transformers folder for a bi-encoder, plain transformers for a
    cross-encoder (a sentence-transformers CrossEncoder folder carries a modules.json that reads as a bi-encoder)."""
    if kind == "bi-encoder":
        model.save(str(folder))
        return
    save_plain(model, folder)


def _hand_out(cfg: TrainConfig, history: History) -> None:
    best = max(history.epochs, key=lambda e: e["nDCG@10"], default=None)
    target = cfg.out / "best"
    if target.exists():
        shutil.rmtree(target)
    assert history.start_metric is not None
    if best is None or best["nDCG@10"] <= history.start_metric + cfg.min_gain:
        got = f"{best['nDCG@10']:.4f}" if best else "none"
        print(
            f"no epoch beat the starting model by more than {cfg.min_gain} (held-out nDCG@10 "
            f"{history.start_metric:.4f}; best epoch {got}): "
            f"keep using {cfg.start}. No model was written to {target}."
        )
        return
    epoch = int(best["epoch"])
    shutil.copytree(cfg.out / "checkpoints" / f"epoch-{epoch}", target)
    start = history.start_metric
    print(f"best: epoch {epoch}, held-out nDCG@10 {best['nDCG@10']:.4f} (start {start:.4f}) -> {target}")
