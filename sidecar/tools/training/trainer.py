"""The training loop: batches per loss, epochs with evaluation, checkpoints, resume, and the guard rail."""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm import tqdm
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    get_linear_schedule_with_warmup,
)

from sidecar.rerank.scorers.models import mean_pool
from sidecar.tools.training import losses
from sidecar.tools.training.data import Example, TrainingSet

log = logging.getLogger(__name__)

Kind = Literal["cross-encoder", "bi-encoder"]
Loss = Literal["bce", "lambda", "contrastive"]
_WEIGHTS = ("model.safetensors", "pytorch_model.bin")


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

    The best epoch is copied to ``out/best`` only if it beats the starting model; otherwise nothing is handed out.
    """
    _seed(cfg.seed)
    checkpoints = cfg.out / "checkpoints"
    last = _latest(checkpoints) if resume else None
    tokenizer = AutoTokenizer.from_pretrained(str(last or cfg.start))
    model = _load(str(last or cfg.start), cfg.kind)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = len(list(_batches(cfg, data, random.Random(0))))
    total = steps_per_epoch * cfg.epochs
    scheduler = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)  # type: ignore[no-untyped-call]
    history = History()
    first_epoch = 1
    if last is not None:
        state = torch.load(last / "trainer_state.pt", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        history = History(**state["history"])
        first_epoch = state["epoch"] + 1
        print(f"resuming from {last} (epoch {state['epoch']} done)")
    if history.start_metric is None:
        history.start_metric = evaluate(Path(cfg.start))
        print(f"starting model {cfg.start}: held-out nDCG@10 {history.start_metric:.4f}")
    for epoch in range(first_epoch, cfg.epochs + 1):
        model.train()
        batches = list(_batches(cfg, data, random.Random(cfg.seed * 1000 + epoch)))
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch")
        epoch_losses = []
        for batch in bar:
            loss = _step(cfg, model, tokenizer, batch)
            loss.backward()  # type: ignore[no-untyped-call]
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            epoch_losses.append(loss.item())
            bar.set_postfix(loss=f"{sum(epoch_losses[-20:]) / len(epoch_losses[-20:]):.4f}")
        history.losses += epoch_losses
        folder = checkpoints / f"epoch-{epoch}"
        _save(model, tokenizer, folder, cfg)
        metric = evaluate(folder)
        history.epochs.append(
            {"epoch": epoch, "nDCG@10": metric, "loss": sum(epoch_losses) / max(1, len(epoch_losses))}
        )
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": asdict(history),
            },
            folder / "trainer_state.pt",
        )
        print(f"epoch {epoch}: mean loss {history.epochs[-1]['loss']:.4f}, held-out nDCG@10 {metric:.4f}")
    _hand_out(cfg, history)
    (cfg.out / "history.json").write_text(json.dumps(asdict(history), indent=2) + "\n")
    _plot(history, cfg.out / "training.png")
    return history


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
    shutil.copytree(cfg.out / "checkpoints" / f"epoch-{epoch}", target, ignore=shutil.ignore_patterns("trainer_*"))
    start = history.start_metric
    print(f"best: epoch {epoch}, held-out nDCG@10 {best['nDCG@10']:.4f} (start {start:.4f}) -> {target}")


# -- batches -------------------------------------------------------------------------------------------------

Batch = dict[str, Any]


def _batches(cfg: TrainConfig, data: TrainingSet, rng: random.Random) -> Iterator[Batch]:
    if cfg.loss == "bce":
        items = [(e.query, doc, g / data.max_grade) for e in data.examples for doc, g in _docs(e)]
        rng.shuffle(items)
        for i in range(0, len(items), cfg.batch_size):
            chunk = items[i : i + cfg.batch_size]
            yield {"pairs": [(q, data.texts[d]) for q, d, _ in chunk], "labels": [y for _, _, y in chunk]}
    elif cfg.loss == "lambda":
        lists = [_sample_list(e, cfg.list_size, rng) for e in data.examples]
        per_batch = max(1, cfg.batch_size // cfg.list_size)
        for i in range(0, len(lists), per_batch):
            group = lists[i : i + per_batch]
            yield {"lists": [(e.query, [(data.texts[d], g) for d, g in docs]) for e, docs in group]}
    else:
        rows = [(e, pos) for e in data.examples for pos, g in e.graded.items() if g > 0]
        rng.shuffle(rows)
        for i in range(0, len(rows), cfg.batch_size):
            part = rows[i : i + cfg.batch_size]
            negs = [rng.choice(e.negatives or [d for d, g in e.graded.items() if g == 0] or [None]) for e, _ in part]
            yield {
                "queries": [e.query for e, _ in part],
                "qids": [e.qid for e, _ in part],
                "positives": [(data.texts[p], e.qid, e) for e, p in part],
                "negatives": [data.texts[n] for n in negs if n is not None],
            }


def _docs(e: Example) -> list[tuple[str, int]]:
    return [*e.graded.items(), *((d, 0) for d in e.negatives)]


def _sample_list(e: Example, size: int, rng: random.Random) -> tuple[Example, list[tuple[str, int]]]:
    positives = [(d, g) for d, g in e.graded.items() if g > 0]
    negatives = [(d, 0) for d, g in e.graded.items() if g == 0] + [(d, 0) for d in e.negatives]
    take_pos = rng.sample(positives, min(len(positives), size // 2))
    take_neg = rng.sample(negatives, min(len(negatives), size - len(take_pos)))
    return e, take_pos + take_neg


# -- one step ------------------------------------------------------------------------------------------------


def _step(cfg: TrainConfig, model: Any, tokenizer: Any, batch: Batch) -> torch.Tensor:
    if cfg.loss == "bce":
        pairs = batch["pairs"]
        logits = _logits(model, tokenizer, [q for q, _ in pairs], [d for _, d in pairs], cfg.max_length)
        return losses.bce(logits, torch.tensor(batch["labels"], dtype=torch.float))
    if cfg.loss == "lambda":
        width = max(len(docs) for _, docs in batch["lists"])
        queries = [q for q, docs in batch["lists"] for _ in docs]
        texts = [t for _, docs in batch["lists"] for t, _ in docs]
        logits = _logits(model, tokenizer, queries, texts, cfg.max_length)
        scores = torch.zeros(len(batch["lists"]), width)
        grades = torch.full((len(batch["lists"]), width), -1.0)
        at = 0
        for row, (_, docs) in enumerate(batch["lists"]):
            scores[row, : len(docs)] = logits[at : at + len(docs)]
            grades[row, : len(docs)] = torch.tensor([float(g) for _, g in docs])
            at += len(docs)
        return losses.lambda_loss(scores, grades)
    q = _embed(model, tokenizer, batch["queries"], cfg.max_length)
    docs = [t for t, _, _ in batch["positives"]] + batch["negatives"]
    d = _embed(model, tokenizer, docs, cfg.max_length)
    ids = {qid: i for i, qid in enumerate(dict.fromkeys(batch["qids"]))}
    row_qids = torch.tensor([ids[qid] for qid in batch["qids"]])
    doc_qids = torch.tensor([ids[qid] for _, qid, _ in batch["positives"]] + [-1] * len(batch["negatives"]))
    return losses.contrastive(q, d, torch.arange(len(batch["queries"])), row_qids, doc_qids)


def _logits(model: Any, tokenizer: Any, queries: list[str], docs: list[str], max_length: int) -> torch.Tensor:
    enc = tokenizer(queries, docs, truncation="only_second", max_length=max_length, padding=True, return_tensors="pt")
    out: torch.Tensor = model(**enc).logits[:, 0]
    return out


def _embed(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> torch.Tensor:
    enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    pooled = mean_pool(model(**enc).last_hidden_state, enc["attention_mask"])  # as serving pools
    return torch.nn.functional.normalize(pooled, dim=-1)


# -- models and checkpoints ----------------------------------------------------------------------------------


def _load(path: str, kind: Kind) -> Any:
    if kind == "bi-encoder":
        return AutoModel.from_pretrained(path)
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)


def _save(model: Any, tokenizer: Any, folder: Path, cfg: TrainConfig) -> None:
    """A folder `serve` loads as is; a bi-encoder keeps the start folder's sentence-transformers files."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    start = Path(cfg.start)
    if cfg.kind == "bi-encoder" and (start / "modules.json").exists():
        for item in start.iterdir():
            if item.name in _WEIGHTS or (folder / item.name).exists():
                continue
            if item.is_dir():
                shutil.copytree(item, folder / item.name)
            elif item.suffix in (".json", ".txt", ".md"):
                shutil.copy(item, folder / item.name)


def _latest(checkpoints: Path) -> Path | None:
    done = [p for p in checkpoints.glob("epoch-*") if (p / "trainer_state.pt").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _seed(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _plot(history: History, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=110)
    left.plot(history.losses, linewidth=0.8)
    left.set_title("training loss per batch")
    left.set_xlabel("batch")
    epochs = [0] + [int(e["epoch"]) for e in history.epochs]
    metric = [history.start_metric or 0.0] + [e["nDCG@10"] for e in history.epochs]
    right.plot(epochs, metric, marker="o")
    right.axhline(history.start_metric or 0.0, color="grey", linestyle="--", linewidth=0.8, label="starting model")
    right.set_title("held-out nDCG@10")
    right.set_xlabel("epoch")
    right.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
