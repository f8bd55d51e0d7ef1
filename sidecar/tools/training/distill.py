"""Distillation: a teacher's scores on engine candidates become listwise targets for a small cross-encoder student.

Each training query (real or a pseudo-query cut from a passage) gets the engine's BM25 candidates; the teacher
scores them; the student learns the teacher's distribution over each list (ListNet: cross-entropy to the softmax
of the teacher's scores over a temperature, i.e. a listwise KL), on sentence-transformers' CrossEncoderTrainer.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from sidecar.tools.training.artifacts import last_checkpoint, save_plain
from sidecar.tools.training.layers import LayerDistillLoss

Retrieve = Callable[[str, int], list[tuple[str, str]]]  # query, k -> [(doc id, text)] best first
Score = Callable[[str, list[str]], list[float]]

_SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class ScoredList:
    """One training query, its candidates and the teacher's score of each."""

    query: str
    docs: list[str]
    scores: list[float]


def pseudo_queries(texts: Sequence[str], n: int, rng: random.Random, words: tuple[int, int] = (4, 10)) -> list[str]:
    """Inverse-cloze queries: a span of ``words`` words from a random sentence of a random passage."""
    out: list[str] = []
    pool = [t for t in texts if len(t.split()) >= words[0]]
    if not pool:
        return out
    while len(out) < n:
        sentences = [s for s in _SENTENCE.split(rng.choice(pool)) if len(s.split()) >= words[0]]
        if not sentences:
            continue
        tokens = rng.choice(sentences).split()
        size = rng.randint(words[0], min(words[1], len(tokens)))
        at = rng.randint(0, len(tokens) - size)
        out.append(" ".join(tokens[at : at + size]).strip(" .,;:!?\"'()"))
    return out


def read_queries(path: Path) -> list[str]:
    """A query file: ``id<TAB>text`` lines (queries.tsv) or one query per line (what ``capture_queries`` writes)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.split("\t", 1)[1] if "\t" in line else line
        if text.strip():
            out.append(text.strip())
    return list(dict.fromkeys(out))


def cached_lists(cache: Path, queries: Sequence[str]) -> list[ScoredList]:
    """What an earlier run of the same queries scored (``score_lists`` appends to ``cache`` as it goes)."""
    done = [ScoredList(**json.loads(line)) for line in cache.read_text().splitlines()] if cache.exists() else []
    if [x.query for x in done] != list(queries[: len(done)]):
        raise ValueError("it holds the lists of other queries: remove it, or give another --out")
    return done


def score_lists(
    queries: Sequence[str],
    done: list[ScoredList],
    retrieve: Retrieve,
    teacher: Score,
    cache: Path,
    depth: int,
    list_size: int,
    rng: random.Random,
) -> list[ScoredList]:
    """The teacher's scores on ``list_size`` of each query's top ``depth`` candidates after the ``done`` ones,
    appended to ``cache`` as they are made, so that a stopped run resumes where it stopped. A query with fewer
    than two candidates is cached with no documents (the cache lines up with the queries) and left out."""
    with cache.open("a", encoding="utf-8") as f:
        for query in tqdm(queries[len(done) :], desc="teacher", unit="query", initial=len(done), total=len(queries)):
            found = retrieve(query, depth)
            texts = [text for _, text in rng.sample(found, min(list_size, len(found)))] if len(found) > 1 else []
            item = ScoredList(query, texts, [float(s) for s in teacher(query, texts)] if texts else [])
            f.write(json.dumps(item.__dict__) + "\n")
            done.append(item)
    return [x for x in done if x.docs]


def student_model(source: str, layers: Sequence[int] | None, max_length: int, seed: int = 0) -> Any:
    """A sentence-transformers CrossEncoder with one logit from ``source`` (a cross-encoder, or an encoder such as
    a bi-encoder's, whose head is then new, drawn from ``seed``: the same run starts from the same student);
    ``layers`` keeps only those transformer layers (0-based, in order), as DistilBERT and the MiniLM-L2/L4
    rerankers are cut from deeper encoders."""
    from sentence_transformers.cross_encoder import CrossEncoder
    from transformers import set_seed

    set_seed(seed)
    model = CrossEncoder(source, num_labels=1, max_length=max_length)
    if layers is not None:
        hf = model.model
        encoder = hf.base_model.encoder
        if not layers or sorted(set(layers)) != list(layers) or layers[0] < 0 or layers[-1] >= len(encoder.layer):
            raise ValueError(f"--student-layers: {source} has layers 0-{len(encoder.layer) - 1}; got {list(layers)}")
        encoder.layer = type(encoder.layer)(encoder.layer[i] for i in layers)
        hf.config.num_hidden_layers = len(layers)
    return model


def uncut_encoder(source: str) -> Any:
    """The whole encoder of ``source`` (no head), whose hidden states a student cut from it learns."""
    from transformers import AutoModel

    return AutoModel.from_pretrained(source)


def fit(
    model: Any,
    lists: Sequence[ScoredList],
    out: Path,
    *,
    temperature: float,
    epochs: float,
    batch_lists: int,
    lr: float,
    seed: int,
    resume: bool,
    on_epoch: Callable[[int, Path], None],
    uncut: Any = None,
    hidden_weight: float = 1.0,
) -> list[float]:
    """ListNet on the teacher's scores over ``temperature``, ``batch_lists`` lists per step, checkpoints in
    ``out/checkpoints`` (kept: the last two), ``on_epoch(epoch, plain_folder)`` after each epoch; returns the
    logged losses. With ``uncut`` (the encoder a cut student was cut from), ``hidden_weight`` times the MSE of
    the student's hidden states to its layers is added (``layers.LayerDistillLoss``)."""
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
    from sentence_transformers.cross_encoder.losses import ListNetLoss
    from transformers import TrainerCallback

    data = Dataset.from_dict(
        {
            "query": [x.query for x in lists],
            "docs": [x.docs for x in lists],
            "labels": [[s / temperature for s in x.scores] for x in lists],
        }
    )
    args = CrossEncoderTrainingArguments(
        output_dir=str(out / "checkpoints"),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_lists,
        learning_rate=lr,
        warmup_steps=0.1,  # a float: the share of the steps (transformers 5)
        weight_decay=0.01,
        save_strategy="steps",
        save_steps=100,
        save_total_limit=2,
        logging_steps=20,
        seed=seed,
        report_to="none",
        use_cpu=not _cuda(),
        dataloader_drop_last=False,
    )

    class EpochEnd(TrainerCallback):
        def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            epoch = round(state.epoch or 0)
            on_epoch(epoch, save_plain(model, out / "epochs" / f"epoch-{epoch}"))

    loss: Any = ListNetLoss(model)
    if uncut is not None:
        loss = LayerDistillLoss(model, uncut, hidden_weight, loss)
    trainer = CrossEncoderTrainer(model=model, args=args, train_dataset=data, loss=loss, callbacks=[EpochEnd()])
    last = last_checkpoint(out / "checkpoints") if resume else None
    trainer.train(resume_from_checkpoint=str(last) if last else None)
    logged = [e for e in trainer.state.log_history if "loss" in e]
    (out / "loss.json").write_text(json.dumps(logged) + "\n")
    return [float(e["loss"]) for e in logged]


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def agreement(teacher: Sequence[Sequence[float]], student: Sequence[Sequence[float]]) -> float:
    """Mean Kendall tau between the teacher's and the student's order of each list (1: the same order)."""
    from scipy import stats

    taus = []
    for t, s in zip(teacher, student, strict=True):
        tau = stats.kendalltau(t, s).statistic
        if tau == tau:  # not NaN (a constant list)
            taus.append(float(tau))
    return sum(taus) / len(taus) if taus else 0.0
