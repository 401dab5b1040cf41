"""Score fusion over every signal a candidate list has: the reranker and the first stages.

A reranked candidate's final score is a weighted sum of standardised signals, each
z-scored over the query's scored candidates (so a weight does not depend on how widely a
model's logits or a collection's BM25 scores spread):

* ``reranker``: the cross-encoder's score;
* ``dense``: the bi-encoder's similarity (computed from the stored embedding when the
  candidate came from BM25 alone);
* ``bm25``: the BM25 score (a candidate outside the lexical list takes the lowest score in
  it: it ranked below all of them);
* ``rank``: ``-log(1 + first-stage rank)``, the order the first stage produced.

Weights are fitted per first stage on held-out training queries (never on a test split) and
ship in the reranker's ``twostage.json``::

    "fusion": {"mode": "signals",
               "weights": {"hybrid": {"reranker": 0.5, "dense": 0.2, "bm25": 0.2, "rank": 0.1},
                           "dense": {...}, "bm25": {...}}}

>>> import numpy as np
>>> s = {"reranker": np.array([2.0, 0.0, 1.0]), "dense": np.array([0.5, 0.7, 0.6])}
>>> fuse_signals(s, {"reranker": 0.75, "dense": 0.25}).round(2).tolist()
[0.61, -0.61, 0.0]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from twostage.errors import InvalidArgument

#: The signals a weight may name, in the order reports print them.
SIGNALS = ("reranker", "dense", "bm25", "rank")


def zscore(x: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` over one query's candidates; a constant signal gives zeros."""
    x = np.asarray(x, dtype=np.float64)
    if x.size == 0:
        return x
    sd = float(x.std())
    return (x - x.mean()) / sd if sd > 1e-12 else np.zeros_like(x)


def bm25_signal(keys: Sequence[int], bm25: Mapping[int, float]) -> np.ndarray:
    """BM25 per candidate; those outside the lexical list take the list's lowest score."""
    floor = min(bm25.values()) if bm25 else 0.0
    return np.asarray([bm25.get(int(k), floor) for k in keys], dtype=np.float64)


def rank_signal(ranks: Sequence[int] | np.ndarray) -> np.ndarray:
    """``-log(1 + rank)`` for 0-based first-stage ranks: higher is earlier."""
    return -np.log1p(np.asarray(ranks, dtype=np.float64))


def first_stage_signals(
    keys: Sequence[int],
    dense: Sequence[float] | np.ndarray | None,
    bm25: Mapping[int, float] | None,
    ranks: Sequence[int] | np.ndarray,
) -> dict[str, np.ndarray]:
    """The first-stage signals of the candidates ``keys``: ``dense`` similarities (aligned
    with ``keys``), the BM25 list's scores by key, and their ranks; a signal given as None
    is left out. The engine and the offline fit both build their inputs here."""
    sig = {"rank": rank_signal(ranks)}
    if dense is not None:
        sig["dense"] = np.asarray(dense, dtype=np.float64)
    if bm25 is not None:
        sig["bm25"] = bm25_signal(keys, bm25)
    return sig


def fuse_signals(signals: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """``sum(w * zscore(signal))`` over the weighted signals (all the same length)."""
    out: np.ndarray | None = None
    for name, w in weights.items():
        if not w:
            continue
        if name not in signals:
            raise KeyError(f"fusion weight for {name!r}, but no such signal was computed")
        term = float(w) * zscore(signals[name])
        out = term if out is None else out + term
    if out is None:
        n = len(next(iter(signals.values()))) if signals else 0
        return np.zeros(n, dtype=np.float64)
    return out


def weights_problem(
    weights: object, *, need_reranker: bool = True, what: str = "weights"
) -> str | None:
    """What is wrong with a per-first-stage weight table (``fusion.weights``, or the
    cascade's ``fusion.cheap`` with ``need_reranker=False``), or None."""
    from twostage.config import FIRST_STAGES

    if not isinstance(weights, Mapping) or not weights:
        return f"fusion.{what} must map first stages (dense, bm25, hybrid) to signal weights"
    for stage, table in weights.items():
        if stage not in FIRST_STAGES:
            return f"fusion.{what}: unknown first stage {stage!r} ({', '.join(FIRST_STAGES)})"
        if not isinstance(table, Mapping) or not table:
            return f"fusion.{what}.{stage} must map signals to weights"
        for name, w in table.items():
            if name not in SIGNALS:
                return f"fusion.{what}.{stage}: unknown signal {name!r} ({', '.join(SIGNALS)})"
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                return f"fusion.{what}.{stage}.{name} must be a finite number, not {w!r}"
            if w < 0:
                return f"fusion.{what}.{stage}.{name} must be >= 0, not {w}"
        if need_reranker and not table.get("reranker"):
            return f"fusion.{what}.{stage}: the reranker's weight must be > 0"
        if not need_reranker and table.get("reranker"):
            return f"fusion.{what}.{stage}: the cheap stage runs before the reranker"
    return None


def simplex(names: Sequence[str], step: float) -> list[dict[str, float]]:
    """Every weight vector over ``names`` on a grid of ``step`` that sums to 1 (the fit's
    search space; the first name, the reranker, always > 0 and largest first)."""
    n = round(1 / step)
    out: list[dict[str, float]] = []

    def rec(i: int, left: int, acc: list[int]) -> None:
        if i == len(names) - 1:
            out.append({nm: round(c * step, 6) for nm, c in zip(names, [*acc, left], strict=True)})
            return
        for c in range(left + 1):
            rec(i + 1, left - c, [*acc, c])

    rec(0, n, [])
    # Most weight on the first name first: a fit's ties go to the reranker.
    return sorted((w for w in out if w[names[0]] > 0), key=lambda w: -w[names[0]])


def fit_weights(
    split: str,
    dev_score: Callable[[dict[str, float]], float],
    names: Sequence[str] = SIGNALS,
    step: float = 0.1,
) -> tuple[dict[str, float], float]:
    """The weights on the simplex grid with the best ``dev_score`` (e.g. NDCG@10 over the
    dev queries), and that score; ties go to the earlier grid point (more weight on the
    reranker). ``split`` names the queries ``dev_score`` reads: a test split is refused,
    because weights fitted on it would report a gain no unseen collection gets.
    """
    if "test" in split.lower():
        raise InvalidArgument(
            f"fusion weights are fitted on train/dev queries, never on a test split ({split!r})"
        )
    grid = simplex(names, step)
    scores = [round(float(dev_score(w)), 9) for w in grid]
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    return grid[best], scores[best]


__all__ = [
    "SIGNALS",
    "bm25_signal",
    "first_stage_signals",
    "fit_weights",
    "fuse_signals",
    "rank_signal",
    "simplex",
    "weights_problem",
    "zscore",
]
