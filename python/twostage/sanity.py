"""Does a reranker rank better than chance? A small judged set shipped with the package.

A model that loads and gives finite scores can still be useless: a cross-encoder whose
classification head was never trained (a fresh ``BertForSequenceClassification`` head on a
pretrained body) scores every pair and orders them at random. Before the server installs a
reranker (``PUT /models/reranker``, an experiment's models, a restart's restore, the model it
starts with) it scores :data:`SANITY_SET`: 40 SciFact test claims, each with the abstract
judged relevant and 5 that are not (the 2 that BM25 ranks highest and 3 drawn at random),
240 pairs, each passage a title and at most 32 words of its abstract
(``benches/sanity_set.py`` made it from the package's SciFact sample; its licence is in
``data/README.md``).

**The statistic** is the pairwise accuracy: per query, the share of (relevant, not relevant)
pairs the model orders right, ties counting one half (the AUC), averaged over the queries.

**The gate.** Scores that carry no information about relevance put the relevant passage at
any of the 6 ranks with equal chance, so a query's accuracy is uniform on {0, 1/5, ..., 1}:
mean 1/2, variance (n_pos + n_neg + 1) / (12 n_pos n_neg) (Mann-Whitney), and the mean over 40
queries has a standard deviation of 0.054. A model passes when its accuracy is at least
:data:`MARGIN_SD` = 4 of those above 1/2, i.e. 0.716. A model without signal passes with
probability 2.0e-5 (the exact tail, by convolution of the 40 uniform counts); ties (a
constant model) only narrow the null, so they pass less often still. Trained rerankers are
far above it: the shipped one scores 0.885 (z = +7.1), in 1.2 s on 2 shared, busy AMD EPYC
cores (up to 3 s when they were busier; ``benches/sanity_set.py measure``).

>>> from twostage.reranker import Reranker
>>> from twostage.sanity import check_reranker
>>> result = check_reranker(Reranker.load("twostage-rerank"))  # doctest: +SKIP
>>> result.passed, round(result.accuracy, 2), round(result.threshold, 3)  # doctest: +SKIP
(True, 0.89, 0.716)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from twostage.errors import InvalidArgument

if TYPE_CHECKING:
    from twostage.reranker import Reranker

#: The judged set shipped with the package (JSONL, the validation-set format below).
SANITY_SET = Path(str(resources.files("twostage") / "data" / "sanity.jsonl"))
#: How far above chance a model must rank, in standard deviations of the null.
MARGIN_SD = 4.0

#: One judged query: the query, its passages, their relevance (> 0: relevant).
JudgedQuery = tuple[str, list[str], list[float]]


def load_judged_set(
    path: str | os.PathLike[str] | None = None,
    *,
    relevance: Callable[[Any], float] = float,
    what: str = "judged set",
) -> list[JudgedQuery]:
    """A judged set in JSONL, one query a line: ``{"query": str, "documents": [{"text":
    str, "relevance": number}, ...]}`` (other keys are ignored). Default: :data:`SANITY_SET`.
    ``relevance`` reads each grade (a ``ValueError`` refuses it, naming the line); ``what``
    names the set in errors.
    """
    where = Path(path) if path is not None else SANITY_SET
    out: list[JudgedQuery] = []
    try:
        lines = where.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise InvalidArgument(f"cannot read the {what} {where}: {e.strerror}") from e
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            docs = [str(d["text"]) for d in row["documents"]]
            rels = [relevance(d.get("relevance", 0)) for d in row["documents"]]
            out.append((str(row["query"]), docs, rels))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise InvalidArgument(
                f"{where}:{n}: expected {{'query', 'documents': [{{'text', 'relevance'}}]}}: {e}"
            ) from e
    if not out:
        raise InvalidArgument(f"the {what} {where} has no queries")
    return out


def pairwise_accuracy(scores: np.ndarray, relevance: list[float] | np.ndarray) -> float | None:
    """The share of (relevant, not relevant) pairs ``scores`` orders right, ties one half;
    None when the query has no such pair.

    >>> pairwise_accuracy(np.array([0.9, 0.2, 0.5]), [1, 0, 0])
    1.0
    >>> pairwise_accuracy(np.array([0.5, 0.5, 0.9]), [1, 0, 0])
    0.25
    """
    s = np.asarray(scores, dtype=np.float64)
    rel = np.asarray(relevance, dtype=np.float64) > 0
    pos, neg = s[rel], s[~rel]
    if not len(pos) or not len(neg):
        return None
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def null_sd(judged: list[JudgedQuery]) -> float:
    """The standard deviation of the mean pairwise accuracy over ``judged`` for scores that
    carry no information (a random order per query): Mann-Whitney's variance per query."""
    var = []
    for _, _, rels in judged:
        p = sum(1 for r in rels if r > 0)
        n = len(rels) - p
        if p and n:
            var.append((p + n + 1) / (12.0 * p * n))
    return math.sqrt(sum(var)) / len(var) if var else float("nan")


@dataclass(frozen=True)
class SanityResult:
    """How a reranker ranked the sanity set, and whether that is better than chance."""

    passed: bool
    accuracy: float  # the mean pairwise accuracy (chance: 0.5)
    threshold: float  # 0.5 + margin_sd * null_sd: the least accuracy that passes
    null_sd: float
    z: float  # (accuracy - 0.5) / null_sd
    queries: int
    pairs: int
    ms: float  # scoring time
    reason: str | None = None  # why it failed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, rounded."""
        out = asdict(self)
        for key in ("accuracy", "threshold", "null_sd", "z"):
            out[key] = round(out[key], 4) if math.isfinite(out[key]) else None
        out["ms"] = round(self.ms, 1)
        return out

    def summary(self) -> str:
        """One line: verdict, accuracy against the threshold, size, time."""
        verdict = "passed" if self.passed else "FAILED"
        line = (
            f"{verdict}: pairwise accuracy {self.accuracy:.3f} (chance 0.5, pass >= "
            f"{self.threshold:.3f}, z {self.z:+.1f}) on {self.queries} queries, {self.pairs} "
            f"pairs, {self.ms:.0f} ms"
        )
        return line if math.isfinite(self.accuracy) else f"{line} ({self.reason})"


def check_reranker(
    rr: Reranker,
    judged: list[JudgedQuery] | None = None,
    *,
    margin_sd: float = MARGIN_SD,
    batch_size: int = 32,
) -> SanityResult:
    """Score ``judged`` (default: the shipped :data:`SANITY_SET`) with ``rr`` and say whether
    it ranks better than chance by ``margin_sd`` null standard deviations. Never raises for
    a bad model: a non-finite score or a model that fails is a failed result with its reason.
    """
    judged = load_judged_set() if judged is None else judged
    pairs = [(q, d) for q, docs, _ in judged for d in docs]
    sd = null_sd(judged)
    threshold = 0.5 + margin_sd * sd
    t0 = time.perf_counter()
    reason: str | None = None
    try:
        scores = np.asarray(rr.predict(pairs, batch_size=batch_size), dtype=np.float64)
    except Exception as e:  # a model that cannot score the set fails it
        scores = np.full(len(pairs), np.nan)
        reason = f"the model failed on the sanity set: {type(e).__name__}: {e}"
    ms = (time.perf_counter() - t0) * 1000.0
    accs: list[float] = []
    if reason is None and not np.isfinite(scores).all():
        bad = int(np.flatnonzero(~np.isfinite(scores))[0])
        reason = f"non-finite score {scores[bad]} on sanity pair {bad} ({pairs[bad][0]!r:.60})"
    if reason is None:
        start = 0
        for _, docs, rels in judged:
            acc = pairwise_accuracy(scores[start : start + len(docs)], rels)
            start += len(docs)
            if acc is not None:
                accs.append(acc)
    accuracy = float(np.mean(accs)) if accs else float("nan")
    z = (accuracy - 0.5) / sd if accs else float("nan")
    if reason is None and not accuracy >= threshold:
        reason = (
            f"it ranks the sanity set no better than chance: pairwise accuracy {accuracy:.3f}, "
            f"needs >= {threshold:.3f} (chance 0.5 + {margin_sd:g} sd)"
        )
    return SanityResult(
        passed=reason is None,
        accuracy=accuracy,
        threshold=threshold,
        null_sd=sd,
        z=z,
        queries=len(judged),
        pairs=len(pairs),
        ms=ms,
        reason=reason,
    )


__all__ = [
    "MARGIN_SD",
    "SANITY_SET",
    "JudgedQuery",
    "SanityResult",
    "check_reranker",
    "load_judged_set",
    "null_sd",
    "pairwise_accuracy",
]
