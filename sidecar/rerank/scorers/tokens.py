"""Pair assembly without re-tokenizing documents: cached document ids + the tokenizer's pair template."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.rerank.cache import LRU, text_key
from sidecar.rerank.failures import BadInput


@dataclass(frozen=True)
class PairTemplate:
    """Where special tokens go around (query, document): prefix q mid d suffix, with token type ids."""

    prefix: tuple[int, ...]
    mid: tuple[int, ...]
    suffix: tuple[int, ...]
    types: tuple[int, int, int, int, int]  # type ids of prefix, query, mid, document, suffix

    @property
    def specials(self) -> int:
        return len(self.prefix) + len(self.mid) + len(self.suffix)


def probe_template(tokenizer: Any) -> PairTemplate:
    """Learn the template from the tokenizer itself, by encoding a pair of known single tokens."""
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    b = tokenizer("b", add_special_tokens=False)["input_ids"]
    enc = tokenizer("a", "b", return_token_type_ids=True)
    ids, types = list(enc["input_ids"]), list(enc.get("token_type_ids") or [0] * len(enc["input_ids"]))
    ia = _find(ids, a, 0)
    ib = _find(ids, b, ia + len(a))
    prefix, mid, suffix = ids[:ia], ids[ia + len(a) : ib], ids[ib + len(b) :]
    t = (
        types[0] if prefix else 0,
        types[ia],
        types[ia + len(a)] if mid else types[ia],
        types[ib],
        types[-1] if suffix else types[ib],
    )
    return PairTemplate(tuple(prefix), tuple(mid), tuple(suffix), t)


def probe_single(tokenizer: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    a = tokenizer("a", add_special_tokens=False)["input_ids"]
    ids = list(tokenizer("a")["input_ids"])
    i = _find(ids, a, 0)
    return tuple(ids[:i]), tuple(ids[i + len(a) :])


def _find(seq: list[int], sub: list[int], start: int) -> int:
    for i in range(start, len(seq) - len(sub) + 1):
        if seq[i : i + len(sub)] == sub:
            return i
    raise ValueError("cannot learn the tokenizer's pair template")


def encodable(text: str) -> str:
    """``text`` as a tokenizer takes it: a lone surrogate (JSON's "\\ud800", which no UTF-8 can carry) becomes
    U+FFFD, a surrogate pair the character it stands for; a valid text is returned as it is."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


def tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Token ids without special tokens. Any str can be tokenized (``encodable``); should the tokenizer still
    refuse one, that is the text's fault: ``BadInput``, which the search that sent it answers for alone."""
    try:
        return list(tokenizer([encodable(t) for t in texts], add_special_tokens=False)["input_ids"])
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # its own errors, and a Rust panic (pyo3's PanicException is a BaseException)
        raise BadInput(f"the tokenizer refused a text: {type(e).__name__}") from e


class PairEncoder:
    """Builds model inputs for (query, doc) pairs, identical to ``tokenizer(q, d, truncation="only_second")``."""

    def __init__(
        self, tokenizer: Any, max_length: int, cache_entries: int, max_chunks: int = 1, overlap: int = 32
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_chunks = max_chunks
        self.overlap = overlap
        self.template = probe_template(tokenizer)
        self.single_template = probe_single(tokenizer)
        self.cache: LRU[bytes, tuple[int, ...]] = LRU(cache_entries)

    def ids(self, texts: Sequence[str]) -> list[tuple[int, ...]]:
        """Token ids of each text without special tokens; cached by text hash, misses tokenized in one call."""
        keys = [text_key(t) for t in texts]
        out: list[tuple[int, ...] | None] = [self.cache.get(k) for k in keys]
        missing = [i for i, v in enumerate(out) if v is None]
        if missing:
            encoded = tokenize(self.tokenizer, [texts[i] for i in missing])
            for i, ids in zip(missing, encoded, strict=True):
                value = tuple(ids)
                out[i] = value
                self.cache.put(keys[i], value)
        return [v for v in out if v is not None]

    def query_ids(self, query: str) -> tuple[int, ...]:
        ids = tuple(tokenize(self.tokenizer, [query])[0])
        # Where the tokenizer itself would fail (the query leaves no room for the document), we cut the query
        # to half the budget instead, so that every document is still read.
        if len(ids) > self.max_length - self.template.specials - 1:
            ids = ids[: max(1, (self.max_length - self.template.specials) // 2)]
        return ids

    def single(self, ids: tuple[int, ...]) -> tuple[list[int], list[int]]:
        """One sequence with its special tokens (bi-encoders), truncated as the tokenizer would."""
        prefix, suffix = self.single_template
        body = list(ids[: max(0, self.max_length - len(prefix) - len(suffix))])
        out = [*prefix, *body, *suffix]
        return out, [0] * len(out)

    def pair(self, query: tuple[int, ...], doc: tuple[int, ...]) -> tuple[list[int], list[int]]:
        if not doc:  # as the tokenizer does: an empty second text encodes as the query alone
            return self.single(query)
        t = self.template
        room = max(0, self.max_length - t.specials - len(query))
        doc = doc[:room]
        ids = [*t.prefix, *query, *t.mid, *doc, *t.suffix]
        types = (
            [t.types[0]] * len(t.prefix)
            + [t.types[1]] * len(query)
            + [t.types[2]] * len(t.mid)
            + [t.types[3]] * len(doc)
            + [t.types[4]] * len(t.suffix)
        )
        return ids, types

    def pair_chunks(self, query: tuple[int, ...], doc: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
        """The pair, or with ``max_chunks`` > 1 one pair per token window of a long document (overlapping by
        ``overlap`` tokens), as Elasticsearch's chunked rescoring and Cohere do; the caller keeps the best."""
        room = max(1, self.max_length - self.template.specials - len(query))
        return [self.pair(query, window) for window in self._windows(doc, room)]

    def single_chunks(self, doc: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
        prefix, suffix = self.single_template
        room = max(1, self.max_length - len(prefix) - len(suffix))
        return [self.single(window) for window in self._windows(doc, room)]

    def _windows(self, doc: tuple[int, ...], room: int) -> list[tuple[int, ...]]:
        if self.max_chunks <= 1 or len(doc) <= room:
            return [doc]
        overlap = min(self.overlap, room // 2)
        starts = range(0, len(doc) - overlap, room - overlap)
        return [doc[i : i + room] for i in list(starts)[: self.max_chunks]]
