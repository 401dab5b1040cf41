"""The cross-encoder: scores (query, document) pairs read jointly, on onnxruntime.

Pairs are packed as ``[CLS] query [SEP] document [SEP]`` with token_type_ids 0 then 1. The
document side is truncated first; a query longer than half of ``max_length`` is capped to
that half, so an over-long query never raises (a tokenizer told to truncate only the second
segment does). Documents can be tokenised once at ingest (:meth:`Reranker.tokenize_documents`)
and scored later with :meth:`Reranker.score_tokens`: only the query is tokenised per request.

>>> from twostage.reranker import Reranker
>>> rr = Reranker.load("path/to/cross-encoder")  # doctest: +SKIP
>>> rr.score("what is bm25", ["a ranking function", "a bird"])  # doctest: +SKIP
array([ 3.1, -7.2], dtype=float32)

The verbs of sentence-transformers' ``CrossEncoder`` work the same way:

>>> rr.predict([("what is bm25", "a ranking function"), ("hnsw", "a bird")])  # doctest: +SKIP
array([ 3.1, -6.8], dtype=float32)
>>> rr.rank("what is bm25", ["a bird", "a ranking function"], top_k=1)  # doctest: +SKIP
[{'corpus_id': 1, 'score': 3.1}]
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict, overload

import numpy as np

from twostage._models import ModelFiles, Precision, resolve
from twostage._onnx import Batch, OnnxModel, check_texts, plan_batches
from twostage.config import FIRST_STAGES, fusion_problem
from twostage.errors import InvalidModel
from twostage.fusion import weights_problem


@dataclass(frozen=True)
class Pairs:
    """Packed pairs ready to batch: token ids and token type ids per pair."""

    ids: list[list[int]]
    type_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.ids)


class _Ranked(TypedDict):
    corpus_id: int
    score: float


class RankedDocument(_Ranked, total=False):
    """One entry of :meth:`Reranker.rank`: the document's position in the input list
    (``corpus_id``), its score, and its ``text`` when asked for (``return_documents``)."""

    text: str


def defaults_problem(defaults: object) -> str | None:
    """What is wrong with a twostage.json ``defaults`` table, or None."""
    if defaults is None:
        return None
    if not isinstance(defaults, dict):
        return f"defaults must be a table (first_stage, depth, budget_ms), not {defaults!r}"
    for k, v in defaults.items():
        if k == "first_stage":
            if v not in FIRST_STAGES:
                return f"defaults.first_stage must be one of {', '.join(FIRST_STAGES)}, not {v!r}"
        elif k in ("depth", "budget_ms", "candidates", "max_length"):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 60_000:
                return f"defaults.{k} must be a number in 0..60000, not {v!r}"
        else:
            return (
                f"defaults: unknown setting {k!r} "
                "(first_stage, depth, candidates, budget_ms, max_length)"
            )
    return None


class Refine(NamedTuple):
    """twostage.json ``fusion.refine``: see :attr:`Reranker.fusion_refine`."""

    max_length: int
    depth: int
    weights: dict[str, dict[str, float]]


def refine_problem(refine: object, settings: dict[str, Any]) -> str | None:
    """What is wrong with a twostage.json ``fusion.refine`` table, or None."""
    if not isinstance(refine, dict):
        return "fusion.refine must be a table (max_length, depth, weights)"
    unknown = set(refine) - {"max_length", "depth", "weights"}
    if unknown:
        return f"fusion.refine: unknown setting {sorted(unknown)[0]!r} (max_length, depth, weights)"
    model_max = int(settings.get("max_length", 0))
    n, d = refine.get("max_length"), refine.get("depth")
    if isinstance(n, bool) or not isinstance(n, int) or not Reranker.MIN_LENGTH <= n <= model_max:
        lo = Reranker.MIN_LENGTH
        return f"fusion.refine.max_length must be an integer in {lo}..{model_max}, not {n!r}"
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        return f"fusion.refine.depth must be an integer >= 1, not {d!r}"
    return weights_problem(refine.get("weights"), what="refine.weights")


class Reranker(OnnxModel):
    """A cross-encoder (BERT family, sequence classification head).

    Use :meth:`load`. ``score`` and ``score_tokens`` are the whole pipeline; ``pack``,
    ``batches``, ``run`` and ``postprocess`` are its stages, so a server can batch pairs
    from several requests into one ``run``.
    """

    MIN_LENGTH = 8  # room for [CLS] query [SEP] document [SEP] with a few tokens each
    #: A pair's score must not depend on its batch-mates (int8 activation scales are per
    #: tensor): on the CPU each pair runs alone, ``threads`` pairs at a time.
    ROW_WISE = True

    @classmethod
    def load(
        cls,
        spec: str | os.PathLike[str],
        *,
        precision: Precision = "int8",
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | str | None = None,
    ) -> Reranker:
        """Load a cross-encoder.

        Args:
            spec: a folder (model.onnx + tokenizer.json [+ twostage.json], or a Hugging Face
                ``BertForSequenceClassification`` checkpoint: config.json + model.safetensors +
                tokenizer.json, exported on first use), or a Hugging Face repo id.
            precision: ``"int8"`` (dynamic, per-channel) or ``"fp32"``.
            max_length: pair token limit; default: the length its defaults were measured at
                (twostage.json ``defaults.max_length``), else the model's own (the upper bound).
            threads: pairs scored at once on the CPU, one onnxruntime thread each (each pair
                runs alone, so its score does not depend on its batch-mates); with a device
                provider, onnxruntime's intra-op threads. Default: this machine's cores.
            providers: e.g. ``["cuda"]``; default CPU.

        >>> rr = Reranker.load("ce/", precision="fp32", max_length=256)  # doctest: +SKIP
        """
        files = resolve(spec, "reranker", precision)
        return cls(files, max_length=max_length, threads=threads, providers=providers)

    def __init__(
        self,
        files: ModelFiles,
        *,
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | str | None = None,
    ) -> None:
        """Internal: use :meth:`load`, which resolves a spec to ``files``."""
        problem = defaults_problem(files.settings.get("defaults"))
        if problem:
            raise InvalidModel(f"{files.onnx.parent}/twostage.json: {problem}")
        if max_length is None:  # the pair length the model's defaults were measured at
            max_length = (files.settings.get("defaults") or {}).get("max_length")
        super().__init__(files, max_length=max_length, threads=threads, providers=providers)
        cls_id = self._tokenizer.token_to_id("[CLS]")
        sep_id = self._tokenizer.token_to_id("[SEP]")
        if cls_id is None or sep_id is None:
            raise InvalidModel(f"{files.tokenizer}: no [CLS]/[SEP] tokens (BERT family only)")
        self._cls, self._sep = cls_id, sep_id
        outs = self._session.get_outputs()
        out = next((o for o in outs if o.name == "logits"), outs[0])
        if len(out.shape) != 2:
            raise InvalidModel(
                f"{files.onnx}: expected logits (batch, labels); outputs found: "
                f"{[(o.name, o.shape) for o in outs]}"
            )
        self._output = out.name
        self._settings = files.settings
        fusion = files.settings.get("fusion") or {}
        if fusion.get("mode") == "signals":
            problem = weights_problem(fusion.get("weights"))
            if not problem and fusion.get("cheap") is not None:
                problem = weights_problem(fusion["cheap"], need_reranker=False, what="cheap")
            if not problem and fusion.get("refine") is not None:
                problem = refine_problem(fusion["refine"], files.settings)
            if problem:
                raise InvalidModel(f"{files.onnx.parent}/twostage.json: {problem}")
        else:
            problem = fusion_problem(
                fusion.get("mode") or "linear", fusion.get("first_stage_weight")
            )
            if problem:
                raise InvalidModel(f"twostage.json fusion (mode, first_stage_weight): {problem}")

    # ---- properties ----
    @property
    def version(self) -> str:
        """The model version hits report: ``name@fingerprint``."""
        return f"{self._name}@{self._fingerprint}"

    @property
    def fusion_weight(self) -> float | None:
        """Weight of the first-stage similarity the model was tuned to be added to, if any.

        From ``fusion.first_stage_weight`` in the model's twostage.json.
        """
        fusion = self._settings.get("fusion") or {}
        w = fusion.get("first_stage_weight")
        return None if w is None else float(w)

    @property
    def fusion_rule(self) -> str:
        """How :attr:`fusion_weight` combines the scores: ``"linear"`` or ``"z"``
        (:func:`twostage.engine.fuse`); ``fusion.mode`` in twostage.json, default linear."""
        return str((self._settings.get("fusion") or {}).get("mode") or "linear")

    @functools.cached_property  # read on every search; settings never change
    def fusion_signals(self) -> dict[str, dict[str, float]] | None:
        """Signal weights per first stage (:mod:`twostage.fusion`) when
        :attr:`fusion_rule` is ``"signals"``, else None."""
        return self._signal_table("weights")

    @functools.cached_property
    def fusion_cheap(self) -> dict[str, dict[str, float]] | None:
        """The cascade's cheap weights per first stage (first-stage signals only, no
        reranker): twostage.json ``fusion.cheap`` in ``"signals"`` mode, else None."""
        return self._signal_table("cheap")

    @functools.cached_property
    def fusion_refine(self) -> Refine | None:
        """The second step inside the second stage (twostage.json ``fusion.refine``), or
        None: after the model has scored the cascade's top ``depth`` at :attr:`max_length`
        tokens and they are fused, it scores the best ``refine.depth`` of that order again
        at ``refine.max_length`` tokens (longer, dearer) and fuses those with
        ``refine.weights``, ``rank`` being the rank after the first step."""
        fusion = self._settings.get("fusion") or {}
        r = fusion.get("refine") if fusion.get("mode") == "signals" else None
        if not r:
            return None
        weights = {s: {k: float(v) for k, v in t.items()} for s, t in r["weights"].items()}
        return Refine(int(r["max_length"]), int(r["depth"]), weights)

    def at_length(self, max_length: int) -> Reranker:
        """This model with another pair token limit: the same session, threads and version
        (a score cache must key on :attr:`max_length` too)."""
        if max_length == self._max_length:
            return self
        # Shared by the copies (a shallow copy keeps the dict): one tokenizer per length.
        made: dict[int, Reranker] = self.__dict__.setdefault("_at_lengths", {})
        other = made.get(max_length)
        if other is None:
            from twostage._models import load_tokenizer

            model_max = int(self._settings["max_length"])
            if not self.MIN_LENGTH <= max_length <= model_max:
                raise ValueError(
                    f"max_length must be in {self.MIN_LENGTH}..{model_max} for this model"
                )
            other = copy.copy(self)
            other._max_length = max_length
            other._tokenizer = load_tokenizer(self._tokenizer_path, max_length)
            made[max_length] = other
        return other

    def _signal_table(self, name: str) -> dict[str, dict[str, float]] | None:
        fusion = self._settings.get("fusion") or {}
        table = fusion.get(name) if fusion.get("mode") == "signals" else None
        if not table:
            return None
        return {s: {k: float(v) for k, v in t.items()} for s, t in table.items()}

    @property
    def defaults(self) -> dict[str, Any]:
        """The search settings this model was measured to fit (twostage.json ``defaults``):
        ``first_stage``, ``depth``, ``budget_ms``, each optional."""
        return dict(self._settings.get("defaults") or {})

    @property
    def recommended_depth(self) -> int | None:
        """The rerank depth the model's evaluation chose (twostage.json), if any."""
        d = self.defaults.get(
            "depth", (self._settings.get("fusion") or {}).get("recommended_depth")
        )
        return None if d is None else int(d)

    def __repr__(self) -> str:
        return (
            f"Reranker(name={self._name!r}, precision={self._precision!r}, "
            f"max_length={self._max_length}, fingerprint={self._fingerprint!r})"
        )

    # ---- stages ----
    def tokenize_documents(self, documents: Sequence[str]) -> list[list[int]]:
        """Token ids of documents without special tokens: what ingest stores for later."""
        return self.token_ids(check_texts(documents, "documents"))

    def tokenize_query(self, query: str) -> list[int]:
        """Token ids of the query without special tokens."""
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        ids: list[int] = self._tokenizer.encode(query, add_special_tokens=False).ids
        return ids

    def pack(self, query_ids: Sequence[int], doc_token_ids: Sequence[Sequence[int]]) -> Pairs:
        """``[CLS] q [SEP] d [SEP]`` per document, within ``max_length``.

        The document gives way first; the query keeps at most half of the budget unless the
        document leaves it more room.
        """
        budget = self._max_length - 3
        ids: list[list[int]] = []
        types: list[list[int]] = []
        for i, d in enumerate(doc_token_ids):
            if isinstance(d, (str, bytes)):
                raise TypeError(f"doc_token_ids[{i}] is {type(d).__name__}, expected ids")
            q_keep = min(len(query_ids), max(budget // 2, budget - len(d)))
            d_keep = min(len(d), budget - q_keep)
            head = [self._cls, *query_ids[:q_keep], self._sep]
            tail = [*d[:d_keep], self._sep]
            ids.append(head + tail)
            types.append([0] * len(head) + [1] * len(tail))
        return Pairs(ids, types)

    def batches(self, pairs: Pairs, batch_size: int = 32) -> list[Batch]:
        """Length-sorted batches padded to their own longest pair."""
        return plan_batches(pairs.ids, batch_size, pairs.type_ids)

    def postprocess(self, logits: np.ndarray) -> np.ndarray:
        """One score per pair: the logit of a 1-label head, else P(last label)."""
        logits = np.asarray(logits, dtype=np.float32)
        if logits.shape[1] == 1:
            return logits[:, 0]
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        return (p[:, -1] / p.sum(axis=1)).astype(np.float32)

    # ---- the pipeline ----
    def score_tokens(
        self,
        query: str,
        doc_token_ids: Sequence[Sequence[int]],
        *,
        batch_size: int = 32,
    ) -> np.ndarray:
        """Scores for pre-tokenised documents (from :meth:`tokenize_documents`): float32[n]."""
        pairs = self.pack(self.tokenize_query(query), doc_token_ids)
        out = np.empty(len(pairs), dtype=np.float32)
        for batch in self.batches(pairs, batch_size):
            out[batch.rows] = self.postprocess(self.run(batch))
        return out

    def score(self, query: str, documents: Sequence[str], *, batch_size: int = 32) -> np.ndarray:
        """Score each document against ``query``: float32[len(documents)], higher is better.

        >>> Reranker.load("ce/").score("q", ["d1", "d2"]).shape  # doctest: +SKIP
        (2,)
        """
        if not isinstance(query, str):
            raise TypeError(f"query is {type(query).__name__}, expected str")
        return self.score_tokens(query, self.tokenize_documents(documents), batch_size=batch_size)

    # ---- sentence-transformers' CrossEncoder verbs ----
    @overload
    def predict(self, pairs: tuple[str, str], *, batch_size: int = ...) -> float: ...
    @overload
    def predict(
        self, pairs: Sequence[tuple[str, str]] | Sequence[list[str]], *, batch_size: int = ...
    ) -> np.ndarray: ...
    def predict(
        self,
        pairs: tuple[str, str] | Sequence[tuple[str, str]] | Sequence[list[str]],
        *,
        batch_size: int = 32,
    ) -> float | np.ndarray:
        """Scores of (query, document) pairs, as ``CrossEncoder.predict``: float32[n], higher
        is more relevant, the same score :meth:`score` gives each pair. One pair alone (a
        2-tuple of strings) gives one float. Each distinct query is tokenised once.

        >>> rr.predict([("q1", "d1"), ("q1", "d2"), ("q2", "d3")], batch_size=16)  # doctest: +SKIP
        array([ 2.5, -1.0,  0.3], dtype=float32)
        >>> rr.predict(("q1", "d1"))  # doctest: +SKIP
        2.5
        """
        single = (
            isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(x, str) for x in pairs)
        )
        rows = [pairs] if single else pairs
        if isinstance(rows, (str, bytes)):
            raise TypeError("pairs must be a list of (query, document) pairs, not a string")
        queries: list[str] = []
        docs: list[str] = []
        for i, pair in enumerate(rows):
            if isinstance(pair, (str, bytes)) or len(pair) != 2:
                raise TypeError(f"pairs[{i}] must be a (query, document) pair, not {pair!r:.80}")
            q, d = pair
            if not isinstance(q, str) or not isinstance(d, str):
                raise TypeError(
                    f"pairs[{i}] holds {type(q).__name__} and {type(d).__name__}, expected str"
                )
            queries.append(q)
            docs.append(d)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, not {batch_size!r}")
        q_ids = {q: self.tokenize_query(q) for q in dict.fromkeys(queries)}
        d_ids = self.tokenize_documents(docs)
        ids: list[list[int]] = []
        type_ids: list[list[int]] = []
        for q, doc_ids in zip(queries, d_ids, strict=True):
            packed = self.pack(q_ids[q], [doc_ids])
            ids.append(packed.ids[0])
            type_ids.append(packed.type_ids[0])
        out = np.empty(len(ids), dtype=np.float32)
        for batch in self.batches(Pairs(ids, type_ids), batch_size):
            out[batch.rows] = self.postprocess(self.run(batch))
        return float(out[0]) if single else out

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        top_k: int | None = None,
        return_documents: bool = False,
        *,
        batch_size: int = 32,
    ) -> list[RankedDocument]:
        """``documents`` ordered by their score for ``query``, as ``CrossEncoder.rank``: one
        dict per document, ``{"corpus_id": its position in documents, "score": float}`` (and
        ``"text"`` with ``return_documents=True``), best first; equal scores keep the input
        order. ``top_k``: only the best ``top_k``.

        >>> rr.rank("gzip", ["a bird", "gzip compresses"], return_documents=True)  # doctest: +SKIP
        [{'corpus_id': 1, 'score': 4.2, 'text': 'gzip compresses'},
         {'corpus_id': 0, 'score': -7.5, 'text': 'a bird'}]
        """
        if top_k is not None and (
            isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1
        ):
            raise ValueError(f"top_k must be None or an integer >= 1, not {top_k!r}")
        docs = check_texts(documents, "documents")
        scores = self.score(query, docs, batch_size=batch_size) if docs else np.zeros(0)
        order = sorted(range(len(docs)), key=lambda i: (-float(scores[i]), i))[:top_k]
        out: list[RankedDocument] = []
        for i in order:
            entry: RankedDocument = {"corpus_id": i, "score": float(scores[i])}
            if return_documents:
                entry["text"] = docs[i]
            out.append(entry)
        return out


__all__ = ["Pairs", "RankedDocument", "Reranker", "defaults_problem"]
