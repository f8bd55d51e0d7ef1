"""Loading models and running them: the only module that imports torch and transformers."""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from sidecar.config import ModelSpec
from sidecar.errors import ModelLoadError
from sidecar.rerank.cache import text_key
from sidecar.rerank.scorers.batching import plan_batches
from sidecar.rerank.scorers.embeddings import Embeddings, Vectors
from sidecar.rerank.scorers.tokens import PairEncoder

log = logging.getLogger(__name__)
# We truncate pairs ourselves (tokens.py) after tokenising whole documents once: the tokenizer's
# "sequence length is longer than the maximum" warning would be noise, as are the weight-loading bars.
logging.getLogger("transformers.tokenization_utils_base").setLevel(logging.ERROR)


def choose_device(setting: str) -> torch.device:
    """auto: CUDA, then Apple MPS, then CPU. A device asked for by name that this machine lacks is a ModelLoadError."""
    if setting == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    device = torch.device(setting)
    why = None
    if device.type == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda is not None or getattr(torch.version, "hip", None) is not None
        why = "no CUDA device is visible" if built else f"torch {torch.__version__} was built without CUDA"
    elif device.type == "mps" and not _mps_available():
        why = "this machine has no Apple MPS device"
    if why is not None:
        raise ModelLoadError(f"device {setting} is not available: {why}; set --device (SIDECAR_DEVICE) to auto or cpu")
    return device


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return mps is not None and bool(mps.is_available())


def choose_precision(setting: str, device: torch.device) -> str:
    """auto: fp16 on CUDA and MPS (bf16 is a setting), int8 on CPU (see ``_quantize``)."""
    if setting != "auto":
        return setting
    if device.type in ("cuda", "mps"):
        return "fp16"
    return "int8"


def detect_kind(path: str, forced: str) -> str:
    if forced != "auto":
        return forced
    folder = Path(path).expanduser()
    if folder.is_dir():
        return "bi-encoder" if (folder / "modules.json").exists() else "cross-encoder"
    try:  # a hub id: look in the HF cache (or the hub, unless HF_HUB_OFFLINE) for a sentence-transformers layout
        from huggingface_hub import hf_hub_download

        hf_hub_download(path, "modules.json")
        return "bi-encoder"
    except Exception:
        return "cross-encoder"


def _mean_pooling_only(folder: Path) -> None:
    """Refuse a sentence-transformers folder whose pooling we would not reproduce (CLS, max...)."""
    modules = json.loads((folder / "modules.json").read_text())
    for module in modules:
        if module.get("type", "").endswith("Pooling"):
            cfg = json.loads((folder / module["path"] / "config.json").read_text())
            if not cfg.get("pooling_mode_mean_tokens", False):
                raise ModelLoadError(f"{folder}: only mean pooling is supported for bi-encoders, got {cfg}")


@dataclass
class LoadedModel:
    name: str
    kind: str
    device: torch.device
    precision: str
    model: Any
    encoder: PairEncoder
    label: int | None
    activation: str
    space: str = ""  # what embeddings of this model depend on: path, weights, precision, token limits
    embeddings: Embeddings | None = None  # bi-encoders: document and query vectors kept between searches

    # -- forward passes (run in the model's worker thread, never on the event loop) ----------------------

    def score(self, query: str, texts: Sequence[str], batch_tokens: int) -> list[float]:
        return self.score_many([(query, texts)], batch_tokens)[0]

    @torch.inference_mode()
    def score_many(self, requests: Sequence[tuple[str, Sequence[str]]], batch_tokens: int) -> list[list[float]]:
        """Score several requests at once: their pairs share length-sorted batches, whatever their query.

        A long document split into chunks (``max_chunks_per_doc``) scores as its best chunk."""
        if self.kind == "bi-encoder":
            return self._cosine(requests, batch_tokens)
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []  # the document each pair belongs to, counted over all requests
        docs = 0
        for query, texts in requests:
            q = self.encoder.query_ids(query)
            for d in self.encoder.ids(texts):
                chunks = self.encoder.pair_chunks(q, d)
                pairs += chunks
                owner += [docs] * len(chunks)
                docs += 1
        flat = [-math.inf] * docs
        for batch in plan_batches([len(p[0]) for p in pairs], batch_tokens):
            logits = self._forward([pairs[i] for i in batch], with_types=True).logits
            for i, value in zip(batch, self._pick(logits).tolist(), strict=True):
                flat[owner[i]] = max(flat[owner[i]], float(value))
        return _split(flat, [len(texts) for _, texts in requests])

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[-1] == 1:
            chosen = logits[:, 0]
            return torch.sigmoid(chosen) if self.activation == "sigmoid" else chosen
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-1)[:, self.label or 0]
        chosen = logits[:, self.label if self.label is not None else logits.shape[-1] - 1]
        return torch.sigmoid(chosen) if self.activation == "sigmoid" else chosen

    def _cosine(self, requests: Sequence[tuple[str, Sequence[str]]], batch_tokens: int) -> list[list[float]]:
        """Cosine of mean-pooled embeddings; a document split into chunks scores as its best chunk.

        Embeddings that ``self.embeddings`` holds are not computed again (documents in memory and in the
        store; queries in memory only): with a warm store a rerank costs one query encoding and a product."""
        keys = {t: text_key(t) for query, docs in requests for t in (query, *docs)}
        known = self.embeddings.get_many(list(set(keys.values()))) if self.embeddings is not None else {}
        todo = [t for t, k in keys.items() if k not in known]
        fresh = self.embed(todo, batch_tokens)
        vectors = {**known, **{keys[t]: v for t, v in zip(todo, fresh, strict=True)}}
        if self.embeddings is not None and todo:
            queries = {q for q, _ in requests}
            self.embeddings.put_many([(keys[t], v) for t, v in zip(todo, fresh, strict=True) if t not in queries])
            self.embeddings.put_many([(keys[t], v) for t, v in zip(todo, fresh, strict=True) if t in queries], False)
        out = []
        for query, docs in requests:
            q = vectors[keys[query]][0]  # a query's first window: queries are short
            out.append([float((vectors[keys[d]] @ q).max()) for d in docs])
        return out

    @torch.inference_mode()
    def embed(self, texts: Sequence[str], batch_tokens: int) -> list[Vectors]:
        """Unit-length mean-pooled embeddings, one row per token window of each text."""
        singles: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []
        for n, ids in enumerate(self.encoder.ids(texts)):
            chunks = self.encoder.single_chunks(ids)
            singles += chunks
            owner += [n] * len(chunks)
        if not singles:
            return []
        embeddings = torch.zeros(len(singles), self.model.config.hidden_size)
        for batch in plan_batches([len(s[0]) for s in singles], batch_tokens):
            embeddings[batch] = self._forward([singles[i] for i in batch], with_types=False, pooled=True)
        rows = torch.nn.functional.normalize(embeddings, dim=-1).numpy()
        out: list[list[int]] = [[] for _ in texts]
        for row, n in enumerate(owner):
            out[n].append(row)
        return [rows[r] for r in out]

    def _forward(self, items: Sequence[tuple[list[int], list[int]]], *, with_types: bool, pooled: bool = False) -> Any:
        longest = max(len(ids) for ids, _ in items)
        pad = self.encoder.tokenizer.pad_token_id or 0
        ids = torch.full((len(items), longest), pad, dtype=torch.long)
        types = torch.zeros((len(items), longest), dtype=torch.long)
        mask = torch.zeros((len(items), longest), dtype=torch.long)
        for row, (tok, typ) in enumerate(items):
            ids[row, : len(tok)] = torch.tensor(tok)
            types[row, : len(typ)] = torch.tensor(typ)
            mask[row, : len(tok)] = 1
        inputs = {"input_ids": ids, "attention_mask": mask}
        if with_types and "token_type_ids" in self.encoder.tokenizer.model_input_names:
            inputs["token_type_ids"] = types
        if self.device.type != "cpu":
            inputs = {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in inputs.items()}
        out = self.model(**inputs)
        if not pooled:
            return out
        return mean_pool(out.last_hidden_state.float(), inputs["attention_mask"]).cpu()


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token embeddings the attention mask keeps: sentence-transformers' mean pooling.

    Serving (bi-encoder scores) and training (the contrastive loss) both pool with this one function."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


def _split(flat: list[float], sizes: Sequence[int]) -> list[list[float]]:
    out, at = [], 0
    for n in sizes:
        out.append(flat[at : at + n])
        at += n
    return out


def load_model(
    name: str,
    spec: ModelSpec,
    *,
    device: str,
    precision: str,
    max_length: int | None,
    token_cache: int,
    max_chunks: int = 1,
) -> LoadedModel:
    """Load a hub id (HF cache; HF_HUB_OFFLINE honoured) or a local folder, on the chosen device and precision."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    kind = detect_kind(spec.path, spec.kind)
    dev = choose_device(device)
    prec = choose_precision(precision, dev)
    tokenizer, config, model = _read(name, spec, kind)
    try:
        model = _with_precision(model.eval(), dev, prec)
    except (RuntimeError, AssertionError) as e:  # torch: not compiled with CUDA, out of memory, a driver error
        raise ModelLoadError(f"cannot put model [{name}] on {dev} in {prec}: {type(e).__name__}: {e}") from e
    limit = spec.max_length or max_length or min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    limit = min(limit, int(getattr(config, "max_position_embeddings", limit) or limit))
    label = spec.label
    if isinstance(label, str):
        label = config.label2id.get(label)
        if label is None:
            raise ModelLoadError(f"model [{name}] has no label [{spec.label}]; labels: {list(config.label2id)}")
    try:
        encoder = PairEncoder(tokenizer, limit, token_cache, max_chunks=spec.max_chunks_per_doc or max_chunks)
    except ValueError as e:  # the tokenizer does not put a query and a document into one sequence as BERT's do
        raise ModelLoadError(f"model [{name}] from '{spec.path}': {e}") from e
    log.info("model [%s] %s from %s on %s (%s, max_length %d)", name, kind, spec.path, dev, prec, limit)
    space = f"{_fingerprint(spec.path)}|{prec}|{limit}|{encoder.max_chunks}"
    return LoadedModel(name, kind, dev, prec, model, encoder, label, spec.activation, space)


def _fingerprint(path: str) -> str:
    """The model's path, and for a local folder the size and time of its weights (a retrained model saved
    in the same folder must not meet the old one's embeddings)."""
    folder = Path(path).expanduser()
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / name
        if weights.is_file():
            stat = weights.stat()
            return f"{folder.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return path


def _read(name: str, spec: ModelSpec, kind: str) -> tuple[Any, Any, Any]:
    """Tokenizer, config and model (on the CPU, fp32) from a local folder or the Hugging Face cache."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(spec.path)
        config = AutoConfig.from_pretrained(spec.path)
        if kind == "bi-encoder":
            if Path(spec.path).is_dir():
                _mean_pooling_only(Path(spec.path))
            model = AutoModel.from_pretrained(spec.path)
        else:
            model = AutoModelForSequenceClassification.from_pretrained(spec.path)
    except ModelLoadError:
        raise
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise ModelLoadError(
            f"cannot load model [{name}] from '{spec.path}': not a local folder with a config.json, and not a "
            f"hub id found in the Hugging Face cache (HF_HUB_OFFLINE={offline}, "
            f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}). Point --model (or models.{name}.path) "
            f"at a local copy, e.g. one saved with save_pretrained. ({type(e).__name__})"
        ) from e
    return tokenizer, config, model


def _with_precision(model: Any, device: torch.device, precision: str) -> Any:
    if precision == "int8":
        if device.type != "cpu":
            raise ModelLoadError("precision int8 (dynamic quantization) is for the CPU only")
        return _quantize(model)
    if precision == "fp16":
        model = model.half()
    elif precision == "bf16":
        model = model.to(torch.bfloat16)
    return model.to(device)


def _quantize(model: Any) -> Any:
    """Dynamic int8 quantization of every linear layer except the feed-forward down-projections.

    The down-projection's input is the GELU output, whose few large activations a per-tensor 8-bit scale
    (7-bit on AVX2, to avoid saturation) cannot hold. Quantizing it too cost 0.0125 nDCG@10 on TREC DL19 top 100
    (0.6299 vs 0.6424 fp32); keeping it in fp32 gives 0.6436, and the other two thirds of the matmul work
    still run in int8.
    """
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    inner = getattr(model.config, "intermediate_size", None)
    spec = {
        name: default_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module.in_features != inner
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8)  # type: ignore[no-untyped-call]
