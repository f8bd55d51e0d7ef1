"""Loading models and running them: the only module that imports torch and transformers."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

from sidecar.config import ModelSpec, Settings
from sidecar.errors import ModelLoadError
from sidecar.rerank.cache import text_key
from sidecar.rerank.failures import BadInput
from sidecar.rerank.scorers import cpu
from sidecar.rerank.scorers.batching import plan_batches
from sidecar.rerank.scorers.embeddings import Embeddings, Vectors
from sidecar.rerank.scorers.exported import cached_export, export_root
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


def device_batch_tokens(device: torch.device) -> int:
    """Padded tokens of one model batch sized for the device: small on the CPU, where a batch of about 20
    passages already fills the cores and smaller batches keep latency low; large on GPUs, which only reach their
    throughput with thousands of tokens in flight (not measured here: no GPU on the machine this was sized on)."""
    return {"cuda": 16384, "mps": 8192}.get(device.type, 2048)


def choose_precision(setting: str, device: torch.device) -> str:
    """auto: fp16 on CUDA and MPS (bf16 is a setting); on the CPU, the precision of ``choose_kernel``'s row."""
    return choose_kernel(setting, "auto", device).precision


def choose_kernel(
    precision: str,
    backend: str,
    device: torch.device,
    *,
    features: Collection[str] | None = None,
    installed: Collection[str] | None = None,
) -> cpu.Kernel:
    """The backend and precision a model runs with: on the CPU, the first row of ``cpu.CPU_TABLE`` that this
    CPU's features and the installed backends allow; on CUDA and MPS, torch (fp16 unless a precision is set)."""
    if device.type != "cpu":
        if backend not in ("auto", "torch"):
            raise ModelLoadError(f"backend {backend} runs on the CPU only; set backend torch for device {device}")
        return cpu.Kernel("torch", "fp16" if precision == "auto" else precision, device.type)
    if precision == "fp16":
        raise ModelLoadError("precision fp16 is for CUDA and MPS; on the CPU use auto, fp32, bf16 or int8")
    found = cpu.cpu_features() if features is None else features
    return cpu.pick(
        found, installed_backends() if installed is None else installed, precision=precision, backend=backend
    )


def installed_backends() -> frozenset[str]:
    """The backends whose packages are importable: torch always; onnx needs onnxruntime and onnx (to export)."""
    needs = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino",)}
    found = {b for b, mods in needs.items() if all(importlib.util.find_spec(m) is not None for m in mods)}
    return frozenset({"torch", *found})


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
            if not (cfg.get("pooling_mode_mean_tokens") or cfg.get("pooling_mode") == "mean"):  # ST < 6, >= 6
                raise ModelLoadError(f"{folder}: only mean pooling is supported for bi-encoders, got {cfg}")


class Forward(Protocol):
    """One backend's forward pass: the inputs as CPU or device tensors in, logits or last hidden state out."""

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor: ...


@dataclass
class TorchForward:
    model: Any
    kind: str
    autocast: bool = False  # bf16 on the CPU: fp32 weights, bf16 matmuls (AMX), fp32 norms and softmax

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            out = self.model(**inputs)
        return out.logits if self.kind == "cross-encoder" else out.last_hidden_state  # type: ignore[no-any-return]


@dataclass
class LoadedModel:
    name: str
    kind: str
    device: torch.device
    precision: str
    model: Any  # the torch module on the torch backend; None where another backend runs the model
    encoder: PairEncoder
    label: int | None
    activation: str
    space: str = ""  # what embeddings of this model depend on: path, weights, precision, token limits
    embeddings: Embeddings | None = None  # bi-encoders: document and query vectors kept between searches
    forward: Forward | None = None  # None: TorchForward(model)
    kernel: str = ""  # what ran: "torch int8 (avx2)", "onnx fp32 (avx2)", "torch fp16 (cuda)"
    hidden_size: int = 0
    backend: str = "torch"

    def __post_init__(self) -> None:
        if self.forward is None:
            self.forward = TorchForward(self.model, self.kind)
        if not self.hidden_size and self.model is not None:
            self.hidden_size = int(self.model.config.hidden_size)
        self.kernel = self.kernel or f"{self.backend} {self.precision} ({self.device.type})"

    # -- forward passes (run in the model's worker thread, never on the event loop) ----------------------

    def score(self, query: str, texts: Sequence[str], batch_tokens: int) -> list[float]:
        return self.score_many([(query, texts)], batch_tokens)[0]

    def score_many(self, requests: Sequence[tuple[str, Sequence[str]]], batch_tokens: int) -> list[list[float]]:
        """``score_each``, raising the first request's ``BadInput`` (the tools score one request at a time)."""
        out = []
        for result in self.score_each(requests, batch_tokens):
            if isinstance(result, BadInput):
                raise result
            out.append(result)
        return out

    @torch.inference_mode()
    def score_each(
        self, requests: Sequence[tuple[str, Sequence[str]]], batch_tokens: int
    ) -> list[list[float] | BadInput]:
        """Score several requests at once: their pairs share length-sorted batches, whatever their query.

        A request whose text the tokenizer refuses gets its ``BadInput`` in place of its scores; the others are
        scored (one search's input never fails its neighbours'). A long document split into chunks
        (``max_chunks_per_doc``) scores as its best chunk."""
        if self.kind == "bi-encoder":
            return self._cosine(requests, batch_tokens)
        out: list[list[float] | BadInput] = []
        pairs: list[tuple[list[int], list[int]]] = []
        owner: list[int] = []  # the document each pair belongs to, counted over all requests
        spans: list[tuple[int, int, int]] = []  # (request, its first document, its documents)
        docs = 0
        for n, (query, texts) in enumerate(requests):
            try:
                q = self.encoder.query_ids(query)
                encoded = [self.encoder.pair_chunks(q, d) for d in self.encoder.ids(texts)]
            except BadInput as e:
                out.append(e)
                continue
            out.append([])
            spans.append((n, docs, len(encoded)))
            for chunks in encoded:
                pairs += chunks
                owner += [docs] * len(chunks)
                docs += 1
        flat = [-math.inf] * docs
        for batch in plan_batches([len(p[0]) for p in pairs], batch_tokens):
            logits = self._forward([pairs[i] for i in batch], with_types=True)
            for i, value in zip(batch, self._pick(logits).tolist(), strict=True):
                flat[owner[i]] = max(flat[owner[i]], float(value))
        for n, first, count in spans:
            out[n] = flat[first : first + count]
        return out

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        if logits.shape[-1] == 1:
            chosen = logits[:, 0]
            return torch.sigmoid(chosen) if self.activation == "sigmoid" else chosen
        if self.activation == "softmax":
            return torch.softmax(logits, dim=-1)[:, self.label or 0]
        chosen = logits[:, self.label if self.label is not None else logits.shape[-1] - 1]
        return torch.sigmoid(chosen) if self.activation == "sigmoid" else chosen

    def _cosine(self, requests: Sequence[tuple[str, Sequence[str]]], batch_tokens: int) -> list[list[float] | BadInput]:
        """Cosine of mean-pooled embeddings; a document split into chunks scores as its best chunk.

        Embeddings that ``self.embeddings`` holds are not computed again (documents in memory and in the
        store; queries in memory only): with a warm store a rerank costs one query encoding and a product."""
        keys = {t: text_key(t) for query, docs in requests for t in (query, *docs)}
        known = self.embeddings.get_many(list(set(keys.values()))) if self.embeddings is not None else {}
        todo = [t for t, k in keys.items() if k not in known]
        try:
            fresh = self.embed(todo, batch_tokens)  # tokenizes all of todo before any forward pass
        except BadInput as e:
            if len(requests) == 1:
                return [e]
            return [r for request in requests for r in self._cosine([request], batch_tokens)]  # find whose
        vectors = {**known, **{keys[t]: v for t, v in zip(todo, fresh, strict=True)}}
        if self.embeddings is not None and todo:
            queries = {q for q, _ in requests}
            self.embeddings.put_many([(keys[t], v) for t, v in zip(todo, fresh, strict=True) if t not in queries])
            self.embeddings.put_many([(keys[t], v) for t, v in zip(todo, fresh, strict=True) if t in queries], False)
        out: list[list[float] | BadInput] = []
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
        embeddings = torch.zeros(len(singles), self.hidden_size)
        for batch in plan_batches([len(s[0]) for s in singles], batch_tokens):
            embeddings[batch] = self._forward([singles[i] for i in batch], with_types=False, pooled=True)
        rows = torch.nn.functional.normalize(embeddings, dim=-1).numpy()
        out: list[list[int]] = [[] for _ in texts]
        for row, n in enumerate(owner):
            out[n].append(row)
        return [rows[r] for r in out]

    def _forward(
        self, items: Sequence[tuple[list[int], list[int]]], *, with_types: bool, pooled: bool = False
    ) -> torch.Tensor:
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
        assert self.forward is not None
        out = self.forward(inputs)
        if not pooled:
            return out
        return mean_pool(out.float(), inputs["attention_mask"]).cpu()


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


def load_configured(name: str, spec: ModelSpec, settings: Settings, *, token_cache: int | None = None) -> LoadedModel:
    """``load_model`` with the device, precision, backend and token limits of the settings (serve and warm alike:
    warm's embeddings must be the ones serve computes)."""
    return load_model(
        name,
        spec,
        device=settings.device,
        precision=settings.precision,
        max_length=settings.max_length,
        token_cache=settings.token_cache_entries if token_cache is None else token_cache,
        max_chunks=settings.max_chunks_per_doc,
        backend=settings.backend,
        export_dir=settings.export_dir,
    )


def load_model(
    name: str,
    spec: ModelSpec,
    *,
    device: str,
    precision: str,
    max_length: int | None,
    token_cache: int,
    max_chunks: int = 1,
    backend: str = "auto",
    export_dir: Path | None = None,
) -> LoadedModel:
    """Load a hub id (HF cache; HF_HUB_OFFLINE honoured) or a local folder, on the chosen device, backend and
    precision. ``spec.backend``, where set, overrides ``backend``; exports to ONNX or OpenVINO are kept in
    ``export_dir`` (default: beside the HF cache) and made again only when the weights change."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    kind = detect_kind(spec.local_path, spec.kind)
    dev = choose_device(device)
    asked = spec.backend or backend
    kernel = choose_kernel(precision, asked, dev)
    tokenizer, config = _read_config(name, spec)
    if kind == "bi-encoder" and Path(spec.local_path).is_dir():
        _mean_pooling_only(Path(spec.local_path))
    fingerprint = weights_fingerprint(spec.local_path, config)
    load = _loader(name, spec, kind)
    try:
        model, forward = _runner(load, config, kind, kernel, dev, fingerprint, export_root(export_dir), tokenizer)
    except ModelLoadError as e:
        if asked != "auto" or kernel.backend == "torch":
            raise
        log.warning("model [%s]: %s; falling back to the next kernel for this CPU", name, e)
        kernel = choose_kernel(precision, "torch", dev)
        model, forward = _runner(load, config, kind, kernel, dev, fingerprint, export_root(export_dir), tokenizer)
    prec = kernel.precision
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
    log.info("model [%s] %s from %s on %s (%s, max_length %d)", name, kind, spec.path, dev, kernel.name, limit)
    numerics = prec if kernel.backend == "torch" else f"{kernel.backend}-{prec}"  # torch keeps the stores' old keys
    space = f"{fingerprint}|{numerics}|{limit}|{encoder.max_chunks}"
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    return LoadedModel(
        name, kind, dev, prec, model, encoder, label, spec.activation, space,
        forward=forward, kernel=kernel.name, hidden_size=hidden, backend=kernel.backend,
    )  # fmt: skip


def _runner(
    load: Callable[[], Any],
    config: Any,
    kind: str,
    kernel: cpu.Kernel,
    device: torch.device,
    fingerprint: str,
    root: Path,
    tokenizer: Any,
) -> tuple[Any, Forward]:
    """The torch module (torch backend; None otherwise) and the forward pass of ``kernel``."""
    if kernel.backend == "torch":
        try:
            model = _with_precision(load().eval(), device, kernel.precision)
        except (RuntimeError, AssertionError) as e:  # torch: not compiled with CUDA, out of memory, a driver error
            raise ModelLoadError(
                f"cannot put the model on {device} in {kernel.precision}: {type(e).__name__}: {e}"
            ) from e
        return model, TorchForward(model, kind, autocast=device.type == "cpu" and kernel.precision == "bf16")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in _input_names(tokenizer)]
    threads = torch.get_num_threads()
    if kernel.backend == "onnx":
        if kernel.precision not in ("fp32", "int8"):
            raise ModelLoadError(f"backend onnx runs fp32 or int8, not {kernel.precision}")
        _need("onnx", "onnxruntime", "onnx")
        from sidecar.rerank.scorers import onnx

        folder = _export(
            root,
            fingerprint,
            kind,
            kernel,
            load,
            lambda m, out: onnx.build(m, config, kind, names, kernel.precision, out),
            onnx.RECIPE,
        )
        return None, _started(lambda: onnx.OnnxForward(folder / onnx.FILE, threads), folder)
    if kernel.precision not in ("fp32", "int8", "bf16"):
        raise ModelLoadError(f"backend openvino runs fp32, int8 or bf16, not {kernel.precision}")
    _need("openvino", "openvino", *(("nncf",) if kernel.precision == "int8" else ()))
    from sidecar.rerank.scorers import openvino

    stored = "fp32" if kernel.precision == "bf16" else kernel.precision  # bf16 is a run-time hint on fp32 weights
    folder = _export(
        root, fingerprint, kind, cpu.Kernel("openvino", stored, ""), load,
        lambda m, out: openvino.build(m, config, kind, names, stored, out), openvino.RECIPE,
    )  # fmt: skip
    return None, _started(lambda: openvino.OpenVinoForward(folder / openvino.FILE, threads, kernel.precision), folder)


def _started(start: Callable[[], Forward], folder: Path) -> Forward:
    try:
        return start()
    except Exception as e:  # the runtime's own errors: a damaged export, an operator this version lacks
        raise ModelLoadError(
            f"cannot run the export in {folder} ({type(e).__name__}: {e}); delete it to export again"
        ) from e


def _input_names(tokenizer: Any) -> list[str]:
    return list(getattr(tokenizer, "model_input_names", ["input_ids", "attention_mask"]))


def _need(backend: str, *modules: str) -> None:
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelLoadError(
            f"backend {backend} needs {', '.join(missing)}: pip install 'rerank-sidecar[{backend}]' (or use torch)"
        )


def _export(
    root: Path,
    fingerprint: str,
    kind: str,
    kernel: cpu.Kernel,
    load: Callable[[], Any],
    build: Callable[[Any, Path], None],
    recipe: str,
) -> Path:
    """The cached export of this model for ``kernel``, made from the torch model (loaded only on a miss)."""
    from importlib.metadata import PackageNotFoundError, version

    def have(package: str) -> str:
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    tools = ("torch", "transformers", *(("onnxruntime",) if kernel.backend == "onnx" else ("openvino", "nncf")))
    key = {"model": fingerprint, "kind": kind, "precision": kernel.precision, "recipe": recipe}
    key |= {f"version:{t}": have(t) for t in tools}

    def make(out: Path) -> None:
        model = load().eval()
        if hasattr(model, "set_attn_implementation"):  # transformers >= 4.48; eager was the default before
            model.set_attn_implementation("eager")  # plain MatMul/Softmax attention: no SDPA-only operators
        build(model, out)

    try:
        return cached_export(root, Path(fingerprint.split(":")[0]).name, key, make)
    except ModelLoadError:
        raise
    except Exception as e:  # the exporters' and runtimes' own errors: an operator they lack, a full disk
        raise ModelLoadError(
            f"cannot export the model for {kernel.backend} {kernel.precision}: {type(e).__name__}: {e}"
        ) from e


def weights_fingerprint(path: str, config: Any = None) -> str:
    """The model's path, and for a local folder the size and time of its weights (a retrained model saved
    in the same folder must not meet the old one's embeddings); for a hub id, the cached revision."""
    folder = Path(path).expanduser()
    for name in ("model.safetensors", "pytorch_model.bin"):
        weights = folder / name
        if weights.is_file():
            stat = weights.stat()
            return f"{folder.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    revision = getattr(config, "_commit_hash", None)
    return f"{path}@{revision}" if revision else path


def _read_config(name: str, spec: ModelSpec) -> tuple[Any, Any]:
    """Tokenizer and config from a local folder or the Hugging Face cache."""
    try:
        return AutoTokenizer.from_pretrained(spec.local_path), AutoConfig.from_pretrained(spec.local_path)
    except Exception as e:
        raise _unreadable(name, spec, e) from e


def _loader(name: str, spec: ModelSpec, kind: str) -> Callable[[], Any]:
    """Reads the weights (on the CPU, fp32) when called: never, where an export made earlier runs the model."""

    def load() -> Any:
        try:
            if kind == "bi-encoder":
                return AutoModel.from_pretrained(spec.local_path)
            return AutoModelForSequenceClassification.from_pretrained(spec.local_path)
        except Exception as e:
            raise _unreadable(name, spec, e) from e

    return load


def _unreadable(name: str, spec: ModelSpec, e: Exception) -> ModelLoadError:
    offline = os.environ.get("HF_HUB_OFFLINE", "0")
    return ModelLoadError(
        f"cannot load model [{name}] from '{spec.path}': not a local folder with a config.json, and not a "
        f"hub id found in the Hugging Face cache (HF_HUB_OFFLINE={offline}, "
        f"HF_HOME={os.environ.get('HF_HOME', '~/.cache/huggingface')}). Point --model (or models.{name}.path) "
        f"at a local copy, e.g. one saved with save_pretrained. ({type(e).__name__})"
    )


def _with_precision(model: Any, device: torch.device, precision: str) -> Any:
    if precision == "int8":
        if device.type != "cpu":
            raise ModelLoadError("precision int8 (dynamic quantization) is for the CPU only")
        return _quantize(model)
    if precision == "fp16":
        model = model.half()
    elif precision == "bf16" and device.type != "cpu":  # on the CPU, bf16 is autocast over fp32 weights
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
