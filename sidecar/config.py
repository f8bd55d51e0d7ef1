"""Settings: one frozen tree, from flags > environment (``SIDECAR_*``) > YAML file > defaults."""

from __future__ import annotations

import itertools
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

ScoreMode = Literal["replace", "normalize", "combine"]
CombineMode = Literal["total", "multiply", "avg", "max", "min"]
Normalization = Literal["none", "min_max", "z_score"]
ModelKind = Literal["auto", "cross-encoder", "bi-encoder"]
# The name of the model that `model` configures: what rules without a `model`, headers, metrics and /ready call it.
DEFAULT_MODEL = "default"
# `model: none`: no default model; with no named models either, the sidecar is a pure proxy.
NO_MODEL = "none"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ScoringOptions(_Frozen):
    """How model scores become hit scores; set per rule and overridable per request."""

    score_mode: ScoreMode = Field("replace", description="replace, normalize (ES: max(s,0)+min(exp(s),1)) or combine")
    combine_mode: CombineMode = Field("total", description="with score_mode=combine: how engine and model scores mix")
    query_weight: float = Field(
        1.0, allow_inf_nan=False, ge=-3.4e38, le=3.4e38, description="with combine: weight of the engine's score"
    )
    rerank_weight: float = Field(
        1.0, allow_inf_nan=False, ge=-3.4e38, le=3.4e38, description="with combine: weight of the model's score"
    )
    normalization: Normalization = Field(
        "none",
        description="with combine: engine and model scores each normalized over the reranked hits of the search "
        "first (min_max to [0, 1], z_score to mean 0 and deviation 1), as OpenSearch's hybrid normalization",
    )
    min_score: float | None = Field(
        None, allow_inf_nan=False, description="drop reranked hits whose final score is below this"
    )


class Stage(_Frozen):
    """One step of a cascade: ``model`` reranks the top ``window_size`` of the previous step's order."""

    model: str | None = Field(None, description="named model from `models`; the rule's (or default) model when unset")
    window_size: int = Field(ge=1, description="hits this stage reranks, from the top of the previous order")


def check_cascade(stages: tuple[Stage, ...]) -> tuple[Stage, ...]:
    """Each stage reranks at most as many hits as the one before it."""
    for before, after in itertools.pairwise(stages):
        if after.window_size > before.window_size:
            raise ValueError(
                f"a stage reranks the previous stage's top hits: window_size {after.window_size} follows "
                f"{before.window_size}"
            )
    return stages


class Rule(ScoringOptions):
    """Drop-in rule: searches on matching indices are reranked without any change to the application."""

    index: str = Field(description="index pattern(s) as requests name them: 'docs*', 'a,b', an alias")
    fields: tuple[str, ...] = Field(("text",), description="document fields scored, in order (dotted paths)")
    window_size: int = Field(100, ge=1, description="BM25 candidates fetched and reranked")
    model: str | None = Field(None, description="named model from `models`; default model when unset")
    separator: str = Field("\n", description="joins the fields' values into one text")
    array_mode: Literal["join", "max"] = Field("join", description="array values: joined, or each scored, max kept")
    rerank_timeout_ms: float | None = Field(None, gt=0, description="model deadline for this rule's searches")
    rerank_budget_ms: float | None = Field(None, ge=0, description="latency budget for this rule's searches")
    stages: tuple[Stage, ...] = Field(
        (),
        description="a cascade, e.g. a bi-encoder on 100 then a cross-encoder on its top 20; the first stage's "
        "window_size is the window; the budget covers the whole cascade",
    )
    mode: Literal["rerank", "shadow"] = Field(
        "rerank",
        description="shadow: serve the engine's order untouched, and rerank a sample afterwards with the model's "
        "idle time only, to measure what reranking would change (sidecar_shadow_* metrics)",
    )
    shadow_sample: float = Field(1.0, ge=0, le=1, description="with mode shadow: the share of searches shadowed")

    @field_validator("stages")
    @classmethod
    def _cascade(cls, value: tuple[Stage, ...]) -> tuple[Stage, ...]:
        return check_cascade(value)


RemoteApi = Literal["tei", "cohere", "infinity", "vllm", "sidecar"]
# Most documents one request may carry, as each server documents it: TEI's default --max-client-batch-size (32),
# Cohere's rerank (1000 documents), infinity's request list limit, vLLM (no cap: its default max_num_seqs), and
# another sidecar's default max_rerank_documents.
REMOTE_MAX_BATCH: dict[str, int] = {"tei": 32, "cohere": 1000, "infinity": 2048, "vllm": 256, "sidecar": 1000}
# Remote APIs whose scores are probabilities in [0, 1] (Cohere's and vLLM's relevance_score), not raw logits.
_PROBABILITY_APIS = frozenset({"cohere", "vllm"})
_LOCAL_ONLY = ("label", "max_length", "max_chunks_per_doc", "backend")


class ModelSpec(_Frozen):
    """A model that rules and `inference_id` may name: a local one (`path`) or one served by a remote (`url`)."""

    path: str | None = Field(
        None, description="hub id (uses the HF cache, honours HF_HUB_OFFLINE) or a local folder; or set `url`"
    )
    url: AnyHttpUrl | None = Field(
        None,
        description="a remote model server instead of `path`: its base URL (the API's path is added: /rerank, "
        "/v2/rerank; for api sidecar, the other sidecar's /_sidecar)",
    )
    api: RemoteApi | None = Field(
        None,
        description="with `url`: the server's rerank API, tei | cohere | infinity | vllm | sidecar (another "
        "sidecar's TEI-shaped /_sidecar/rerank, raw scores of its default model)",
    )
    remote_model: str | None = Field(
        None, description="with `url`: the `model` the server is asked for (needed by cohere; infinity, vllm: optional)"
    )
    max_batch: int | None = Field(
        None,
        ge=1,
        description="with `url`: most documents per request; more are split into concurrent requests. Default: the "
        "API's documented limit (tei 32, cohere 1000, infinity 2048, vllm 256, sidecar 1000)",
    )
    api_key: SecretStr | None = Field(
        None,
        description="with `url`: sent as Authorization: Bearer KEY; or from SIDECAR_MODELS__<NAME>__API_KEY; never "
        "logged",
    )
    max_connections: int = Field(32, ge=1, description="with `url`: open connections to the server at most")
    verify: bool = Field(True, description="with an https `url`: verify the server's certificate and host name")
    ca_file: str | None = Field(None, description="with an https `url`: CA bundle (default: system CAs)")
    kind: ModelKind = Field("auto", description="auto: a sentence-transformers folder (modules.json) is a bi-encoder")
    label: int | str | None = Field(None, description="for classifiers with several labels: which label scores")
    activation: Literal["none", "sigmoid", "softmax"] = Field("none", description="applied to the chosen logit")
    max_length: int | None = Field(None, ge=8, le=8192, description="token limit per pair; default: model's, <=512")
    max_chunks_per_doc: int | None = Field(None, ge=1, le=64, description="long documents: token windows scored")
    backend: Literal["auto", "torch", "onnx", "openvino"] | None = Field(
        None, description="runtime of this model on the CPU; default: the global backend"
    )

    @model_validator(mode="after")
    def _local_or_remote(self) -> ModelSpec:
        """Exactly one of `path` and `url`; the other kind's fields are refused, never silently unused."""
        if (self.path is None) == (self.url is None):
            raise ValueError("a model needs exactly one of `path` (a local model) and `url` (a remote one)")
        if self.url is None:
            remote = [f for f in ("api", "remote_model", "max_batch", "api_key", "ca_file") if getattr(self, f)]
            if remote:
                raise ValueError(f"{remote[0]} is for a remote model (with `url`), not one with `path`")
            return self
        if self.api is None:
            raise ValueError("a remote model (with `url`) needs `api`: tei, cohere, infinity, vllm or sidecar")
        if self.api == "cohere" and not self.remote_model:
            raise ValueError("api cohere needs `remote_model`: the model the server is asked for")
        local = [f for f in _LOCAL_ONLY if getattr(self, f) is not None]
        if local or self.kind != "auto" or self.activation != "none":
            field = local[0] if local else ("kind" if self.kind != "auto" else "activation")
            raise ValueError(f"{field} is for a local model (with `path`); a remote model is configured on its server")
        return self

    @property
    def remote(self) -> bool:
        return self.url is not None

    @property
    def local_path(self) -> str:
        """``path``, for the code that loads a local model (a remote one is never loaded)."""
        if self.path is None:
            raise ValueError("a remote model (with `url`) has no local path to load")
        return self.path

    @property
    def batch_limit(self) -> int:
        """Documents per request to a remote: ``max_batch``, else the API's documented limit."""
        return self.max_batch or REMOTE_MAX_BATCH[self.api or "tei"]

    @property
    def scores_are_probabilities(self) -> bool:
        """The scores are in [0, 1] already: a local model's activation, or a remote API that returns them so."""
        return self.activation != "none" or (self.api is not None and self.api in _PROBABILITY_APIS)


class UpstreamNodes(tuple[AnyHttpUrl, ...]):
    """The engine's nodes (one, or several of one cluster, or its coordinating tier), in the order given.

    Given as one URL, a comma-separated list (a flag, an environment variable, a YAML string) or a YAML list. Each
    URL's origin (scheme, host, port) and path are used: a path is a prefix every request goes under (an engine
    behind a gateway at https://gw/es); user info is ignored (credentials are the clients' or upstream_api_key's).
    Each node may appear once. All nodes share one scheme: the upstream_* TLS settings are one set for the whole
    upstream, and a cluster half behind TLS would send some of the clients' credentials in clear text (a mix is
    a typo far more often than a design). ``str()`` gives the comma-separated form back.
    """

    __slots__ = ()

    @property
    def scheme(self) -> str:
        """The nodes' one scheme, http or https."""
        return self[0].scheme

    def __str__(self) -> str:
        return ",".join(str(url) for url in self)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        urls = core_schema.tuple_schema([handler.generate_schema(AnyHttpUrl)], variadic_item_index=0, min_length=1)
        return core_schema.no_info_before_validator_function(
            _split_nodes,
            core_schema.no_info_after_validator_function(cls._checked, urls),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda nodes: [str(u) for u in nodes]),
        )

    @classmethod
    def _checked(cls, urls: tuple[AnyHttpUrl, ...]) -> UpstreamNodes:
        if len({url.scheme for url in urls}) > 1:
            raise ValueError("every upstream node needs the same scheme (all http or all https)")
        origins = [(url.scheme, url.host, url.port, (url.path or "/").rstrip("/")) for url in urls]
        if len(set(origins)) != len(origins):
            raise ValueError("an upstream node is listed twice")
        return cls(urls)


def _split_nodes(value: Any) -> Any:
    """``"http://a:9200, http://b:9200"`` -> a list of two; anything else is left to the tuple's own validation."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, AnyHttpUrl):
        return [value]
    return value


class Settings(BaseSettings):
    """Every field is a flag (`--field-name`), an environment variable (`SIDECAR_FIELD_NAME`) and a YAML key."""

    model_config = SettingsConfigDict(
        env_prefix="SIDECAR_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    config: Path | None = Field(None, description="YAML file with any of these keys")
    upstream: Annotated[UpstreamNodes, NoDecode] = Field(
        UpstreamNodes((AnyHttpUrl("http://127.0.0.1:9200"),)),
        description="the engine behind us: one URL (a path in it is a prefix: an engine behind a gateway at "
        "https://gw/es), or its nodes (or coordinating tier) comma-separated (a list in "
        "YAML), all http or all https: requests go round-robin to the live ones, a node that fails to connect or "
        "times out rests for a backoff, reads are retried on another node, writes never",
    )
    listen: str = Field("127.0.0.1:8080", description="host:port to serve on")
    compat_media_types: bool = Field(
        False,
        description="rewrite application/vnd.elasticsearch+json media types to application/json for an "
        "OpenSearch upstream (and back on replies), so the official elasticsearch client works",
    )
    pool_size: int = Field(256, ge=1, description="max open connections to the upstream")
    connect_timeout_s: float = Field(5.0, gt=0, description="upstream connect timeout")
    upstream_timeout_s: float = Field(60.0, gt=0, description="max wait for upstream bytes (first byte and between)")
    retry_deadline_s: float = Field(10.0, ge=0, description="total time idempotent reads may spend retrying")
    upstream_dead_backoff_s: float = Field(
        1.0,
        gt=0,
        description="a node that fails (connection error or timeout; an HTTP error is an answer) gets no requests "
        "for this long, doubled at each failure in a row, while another node is live",
    )
    upstream_max_dead_backoff_s: float = Field(30.0, gt=0, description="the longest a failed node rests")
    shutdown_grace_s: float = Field(30.0, ge=0, description="SIGTERM: time in-flight requests get to finish")
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a request's line and headers must arrive within this many seconds (of the connection opening, "
        "or of the request's first byte on a kept-alive one); past it the connection is closed without a reply",
    )
    body_timeout_s: float = Field(
        10.0,
        gt=0,
        description="longest pause in a request body's bytes (while the sidecar is reading it); past it the "
        "connection is closed and the request abandoned (a pass-through upstream sees its body cut short)",
    )
    keepalive_timeout_s: float = Field(
        75.0, gt=0, description="an idle kept-alive client connection is closed after this many seconds"
    )
    max_connections: int = Field(
        512,
        ge=1,
        description="most open client connections; one over it is closed as soon as it is accepted, unserved, "
        "while the open ones are served as before",
    )
    max_search_body_bytes: int = Field(10 * 1024 * 1024, ge=1024, description="largest intercepted search body")
    max_msearch_items: int = Field(1000, ge=1, description="largest _msearch the sidecar intercepts (items)")
    max_query_chars: int = Field(10_000, ge=1, description="longest query text sent to a model")
    max_window: int = Field(1000, ge=1, description="largest candidate window one search may ask for")
    upstream_api_key: SecretStr | None = Field(
        None,
        description="the sidecar's own requests to the engine (events, readiness) and the tools' (warm): "
        "Authorization: ApiKey <this>; never logged; clients' requests keep their own credentials",
    )
    upstream_basic_auth: SecretStr | None = Field(
        None, description="like upstream_api_key, as USER:PASSWORD for basic auth; never logged"
    )
    admin_token: SecretStr | None = Field(
        None,
        description="if set, /_sidecar/* except health and the rerank API needs this bearer; a probe of ready "
        "without it gets the bare verdict (200 ready or 503 not ready), the details need it",
    )
    async_search_key: SecretStr | None = Field(
        None,
        description="key that signs the async search ids the sidecar hands out (they carry the rerank plan): give "
        "every replica the same one so that a poll on any of them is reranked; unset: a random key per process "
        "(a poll that reaches another process is cut to its page, not reranked); never logged",
    )
    rerank_api_keys: tuple[SecretStr, ...] = Field(
        (),
        description="keys of the rerank API (/_sidecar/v2/rerank, /_sidecar/rerank): a caller sends one as "
        "Authorization: Bearer KEY; unset: the API answers loopback callers only (others get 403); never logged",
    )
    max_rerank_documents: int = Field(
        1000, ge=1, description="most documents (texts) one rerank API request may send; keep it <= max_search_pairs"
    )
    upstream_verify: bool = Field(True, description="verify an https upstream's certificate and host name")
    upstream_ca_file: str | None = Field(None, description="CA bundle for an https upstream (default: system CAs)")
    upstream_client_cert: str | None = Field(None, description="client certificate (PEM) for an https upstream")
    upstream_client_key: str | None = Field(None, description="its private key (PEM), if not in the cert file")
    tls_cert: str | None = Field(None, description="serve HTTPS with this certificate chain (PEM)")
    tls_key: str | None = Field(None, description="the listener certificate's private key (PEM)")
    model: str = Field(
        "cross-encoder/ms-marco-MiniLM-L6-v2",
        description="default model: hub id or local path; `none`: no default model (with no `models`, a pure proxy: "
        "searches pass with `skipped; reason=no_model`)",
    )
    model_kind: ModelKind = Field("auto", description="kind of the default model")
    models: dict[str, ModelSpec] = Field(default_factory=dict, description="named models for rules/inference_id")
    rules: tuple[Rule, ...] = Field((), description="drop-in rerank rules")
    device: Literal["auto", "cpu", "cuda", "mps"] = Field("auto", description="auto: CUDA, then MPS, then CPU")
    precision: Literal["auto", "fp32", "fp16", "bf16", "int8"] = Field(
        "auto",
        description="auto: fp16 on CUDA/MPS; on the CPU the pick of the CPU table (rerank/scorers/cpu.py): bf16 "
        "with AMX, int8 with VNNI, onnx int8 (FFN down-projections in fp32) with AVX2, else fp32",
    )
    backend: Literal["auto", "torch", "onnx", "openvino"] = Field(
        "auto", description="CPU runtime; auto: the CPU table's pick (rerank/scorers/cpu.py) among installed ones"
    )
    export_dir: Path | None = Field(
        None, description="cache of ONNX/OpenVINO exports, keyed by weights; default: $HF_HOME/rerank-sidecar/exports"
    )
    max_length: int | None = Field(None, ge=8, le=8192, description="default token limit per pair")
    max_chunks_per_doc: int = Field(
        1, ge=1, le=64, description="1: truncate long documents; N: score up to N overlapping windows, keep the max"
    )
    batch_tokens: int | None = Field(
        None,
        ge=64,
        description="token budget of one model batch (padded tokens); default: 2048 CPU, 8192 MPS, 16384 CUDA",
    )
    max_wait_ms: float = Field(0.0, ge=0, description="how long a batch waits for more requests' pairs")
    queue_pairs: int = Field(20000, ge=1, description="max pairs waiting for the model")
    shadow_pending: int = Field(
        4, ge=0, description="shadow reranks under way at once; a shadowed search beyond them is dropped and counted"
    )
    events_index: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        description="write one document per reranked or shadowed search to daily indices NAME-YYYY.MM.DD "
        "(es_templates has their template, retention and dashboards); off when unset",
    )
    events_include_query: bool = Field(False, description="events carry the query text (never document text)")
    events_buffer: int = Field(10_000, ge=1, description="events waiting to be written; past it they are dropped")
    events_batch: int = Field(500, ge=1, description="events per _bulk request")
    events_flush_ms: float = Field(1000, gt=0, description="longest an event waits for its batch to fill")
    events_timeout_ms: float = Field(5000, gt=0, description="an events _bulk slower than this is dropped")
    capture_queries: Path | None = Field(
        None,
        description="append the query text of each reranked search to this file, one per line (for "
        "`distill --queries`); never document text. Off when unset",
    )
    capture_queries_max: int = Field(100_000, ge=1, description="capture_queries stops at this many lines")
    max_search_pairs: int = Field(
        2000,
        ge=1,
        description="most pairs one search (one _msearch item) puts on the model's queue: a window's texts past "
        "it (or past what the model can score in about half of rerank_timeout_ms, or in the search's budget) are "
        "not scored and follow in the engine's order, as a budget's tail does",
    )
    rerank_timeout_ms: float = Field(
        10_000, gt=0, description="model deadline per search; past it the engine's order is returned (fallback)"
    )
    rerank_budget_ms: float | None = Field(
        None,
        ge=0,
        description="latency budget per search: rerank the longest head of the window the model can score in "
        "this time (queue included), the rest follows in the engine's order; unset: the whole window",
    )
    breaker_failures: int = Field(5, ge=1, description="consecutive model failures that open its circuit")
    breaker_cooldown_s: float = Field(30.0, gt=0, description="how long an open circuit sends no work to the model")
    overload: Literal["fallback", "429"] = Field(
        "fallback", description="a full model queue: fall back to the engine's order, or answer 429 Retry-After"
    )
    embedding_cache_mb: int = Field(
        512, ge=0, description="bi-encoders: document and query embeddings kept in memory (MB, all models)"
    )
    embedding_store: Path | None = Field(
        None,
        description="bi-encoders: a SQLite file of document embeddings, shared by the serve processes of a host "
        "and kept across restarts; `rerank-sidecar warm` fills it from an index",
    )
    embedding_store_mb: int = Field(4096, ge=1, description="bound of the embedding store file (MB); oldest go first")
    score_cache_entries: int = Field(100_000, ge=0, description="LRU entries of (model, query, doc) scores")
    token_cache_entries: int = Field(100_000, ge=0, description="LRU entries of tokenized documents")
    threads: int | None = Field(None, ge=1, description="torch CPU threads; default: all cores")
    log_format: Literal["text", "json"] = Field("text", description="log line format")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="log level")

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port, e.g. 127.0.0.1:8080")
        return value

    @field_validator("rerank_api_keys")
    @classmethod
    def _usable_keys(cls, value: tuple[SecretStr, ...]) -> tuple[SecretStr, ...]:
        """A key is sent as ``Bearer KEY``: an empty one, or one with spaces around it, could never be sent."""
        for key in value:
            secret = key.get_secret_value()
            if not secret or secret != secret.strip(" \t") or any(c in secret for c in "\r\n"):
                raise ValueError("each key must be non-empty, without surrounding spaces or line breaks")
        return value

    @property
    def listen_host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def listen_port(self) -> int:
        return int(self.listen.rpartition(":")[2])

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = _config_path(init_settings, env_settings)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file is not None:
            sources.append(_StrictYaml(settings_cls, config_file))
        return tuple(sources)


class ConfigFileError(ValueError):
    """The YAML file cannot be read or is not a mapping."""


class _StrictYaml(YamlConfigSettingsSource):
    """A YAML source that fails loudly: a missing file or a non-mapping is an error, not 'no settings'."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        try:
            path.read_bytes()
        except OSError as e:
            raise ConfigFileError(f"config: cannot read {path}: {e.strerror or e}") from e
        super().__init__(settings_cls, yaml_file=path)

    def _read_file(self, file_path: Path | Traversable) -> dict[str, Any]:
        import yaml

        try:
            data = yaml.safe_load(file_path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigFileError(f"config: {file_path} is not valid YAML: {e}".replace("\n", " ")) from e
        if not isinstance(data, dict):
            raise ConfigFileError(f"config: {file_path} must hold a mapping of settings")
        return data


def _config_path(init: PydanticBaseSettingsSource, env: PydanticBaseSettingsSource) -> Path | None:
    if isinstance(init, InitSettingsSource) and init.init_kwargs.get("config"):
        return Path(init.init_kwargs["config"])
    value = env()
    return Path(value["config"]) if value.get("config") else None
