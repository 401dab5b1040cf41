"""Click models, and an offline simulator: how many queries interleaving and an A/B test need.

Click models turn relevance grades into clicks. Attractiveness (the click probability of an
examined document) interpolates between ``click_nonrelevant`` and ``click_relevant`` by the
gain fraction ``(2**g - 1) / (2**gmax - 1)``, so non-relevant documents still draw noise
clicks. Defaults are the "navigational" user of Hofmann, Whiteson & de Rijke (TOIS 2013),
whose "perfect" and "informational" users :meth:`CascadeModel.preset` also offers.

* :class:`CascadeModel`: the user reads top-down, clicks an examined document with its
  attractiveness, and after a click stops with a probability that also follows the grade.
* :class:`PositionBasedModel` (PBM): position ``r`` (0-based) is examined with probability
  ``1 / (r + 1) ** eta``, independently of the rest; a click needs both examination and attraction.

:func:`simulate` replays traffic over judged queries (sampled with replacement), shows each
impression a team-draft and a balanced interleaving of the two runs' top ``k``, and sends the
same traffic to an A/B test (each impression to A or B with probability 1/2). For each
number of queries it repeats the experiment ``reps`` times and reports how often each method
names the ranker with the higher NDCG@10 (ir-measures, on the same qrels) at p < ``alpha``:
the sign test for interleaving, Welch's t-test for the A/B metrics, all two-sided.

A/B metrics, per impression (higher read as better, as an analyst would read them):
``ab_clicks`` clicks per impression (the usual click-through metric), ``ab_any_click``
1 - abandonment, ``ab_rr`` reciprocal rank of the first click (0 without one).

>>> m = CascadeModel(click_nonrelevant=0.0, click_relevant=1.0, stop_relevant=1.0)
>>> m.clicks(["x", "y", "z"], {"y": 1, "z": 1}, rng=0)
[1]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from twostage.interleave import METHODS, Interleaving, all_interleavings

__all__ = [
    "AB_METRICS",
    "DEFAULT_GRID",
    "CascadeModel",
    "ClickModel",
    "Curve",
    "PositionBasedModel",
    "SimulationResult",
    "ndcg10",
    "simulate",
]

Qrels = Mapping[str, Mapping[str, int]]
Runs = Mapping[str, Sequence[str]]
Seed = np.random.Generator | int | None
DEFAULT_GRID = (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
AB_METRICS = ("ab_clicks", "ab_any_click", "ab_rr")
NO_DOC = -1  # grade of an empty position (a list shorter than k): never clicked
_CHUNK = 400_000  # impressions simulated at once: bounds memory (about 100 bytes each)

# Hofmann, Whiteson & de Rijke, "Fidelity, soundness, and efficiency of interleaved comparison
# methods", TOIS 31(4) 2013, table 2, binary relevance: P(click | R=0), P(click | R=1),
# P(stop | R=0), P(stop | R=1).
_PRESETS = {
    "perfect": (0.0, 1.0, 0.0, 0.0),
    "navigational": (0.05, 0.95, 0.2, 0.9),
    "informational": (0.4, 0.9, 0.1, 0.5),
    # Not Hofmann's: a user who ignores relevance. Any method that declares winners for it
    # more often than its alpha is biased (balanced interleaving is, team draft is not).
    "blind": (0.3, 0.3, 0.3, 0.3),
}


def _prob(name: str, v: float) -> None:
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {v!r}")


@dataclass(frozen=True, kw_only=True)
class ClickModel:
    """What both models share: grade → attractiveness, and clicks for one ranking.

    ``gmax`` is the top grade of the qrels (1 for binary judgments such as SciFact's); a
    grade above it counts as ``gmax``, a grade at or below 0 as non-relevant.
    """

    click_nonrelevant: float = 0.05
    click_relevant: float = 0.95
    gmax: int = 1

    def __post_init__(self) -> None:
        _prob("click_nonrelevant", self.click_nonrelevant)
        _prob("click_relevant", self.click_relevant)
        if isinstance(self.gmax, bool) or not isinstance(self.gmax, int) or self.gmax < 1:
            raise ValueError(f"gmax must be a positive int, got {self.gmax!r}")

    @property
    def name(self) -> str:
        raise NotImplementedError

    def gain(self, grades: ArrayLike) -> NDArray[np.float64]:
        """``(2**g - 1) / (2**gmax - 1)`` in [0, 1]; empty positions (grade -1) give 0."""
        g = np.clip(np.asarray(grades, dtype=np.float64), 0, self.gmax)
        return np.asarray((np.exp2(g) - 1.0) / (2.0**self.gmax - 1.0))

    def attractiveness(self, grades: ArrayLike) -> NDArray[np.float64]:
        """P(click | examined) per position; 0 where there is no document."""
        g = np.asarray(grades)
        p = self.click_nonrelevant + (self.click_relevant - self.click_nonrelevant) * self.gain(g)
        return np.where(g == NO_DOC, 0.0, p)

    def simulate(self, grades: ArrayLike, rng: Seed = None) -> NDArray[np.bool_]:
        """Clicks (n, k) for ``n`` impressions of rankings whose grades are ``grades`` (n, k)."""
        raise NotImplementedError

    def clicks(
        self, ranking: Sequence[str], judged: Mapping[str, int], rng: Seed = None
    ) -> list[int]:
        """The 0-based positions clicked in one impression of ``ranking``.

        ``judged`` maps document id → grade (unjudged documents are grade 0); ``rng`` is a
        numpy Generator or a seed, so a seed gives the same clicks every time.
        """
        if not len(ranking):
            return []
        grades = np.array([[judged.get(d, 0) for d in ranking]], dtype=np.int64)
        return [int(i) for i in np.flatnonzero(self.simulate(grades, rng)[0])]


@dataclass(frozen=True, kw_only=True)
class CascadeModel(ClickModel):
    """Cascade user: top-down, click with the attractiveness, then stop with P(stop | grade).

    >>> m = CascadeModel.preset("perfect")
    >>> m.simulate([[0, 1, 1], [1, 0, -1]], rng=1).astype(int).tolist()
    [[0, 1, 1], [1, 0, 0]]
    """

    stop_nonrelevant: float = 0.2
    stop_relevant: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        _prob("stop_nonrelevant", self.stop_nonrelevant)
        _prob("stop_relevant", self.stop_relevant)

    @classmethod
    def preset(cls, name: str, *, gmax: int = 1) -> CascadeModel:
        """Hofmann et al.'s "perfect", "navigational" (the default) or "informational" user,
        or "blind" (clicks and stops regardless of relevance: the null for a bias check)."""
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {', '.join(_PRESETS)}")
        c0, c1, s0, s1 = _PRESETS[name]
        return cls(
            click_nonrelevant=c0,
            click_relevant=c1,
            stop_nonrelevant=s0,
            stop_relevant=s1,
            gmax=gmax,
        )

    @property
    def name(self) -> str:
        return "cascade"

    def simulate(self, grades: ArrayLike, rng: Seed = None) -> NDArray[np.bool_]:
        r = np.random.default_rng(rng)
        g = np.atleast_2d(np.asarray(grades))
        attract = self.attractiveness(g)
        stop = self.stop_nonrelevant + (self.stop_relevant - self.stop_nonrelevant) * self.gain(g)
        u = r.random((2, *g.shape))
        clicked = u[0] < attract
        stops = clicked & (u[1] < stop)
        # Still reading at position i: no stopping click above it. One cumulative pass instead
        # of a Python loop over positions.
        reading = np.ones_like(clicked)
        reading[:, 1:] = np.cumsum(stops, axis=1)[:, :-1] == 0
        return np.asarray(clicked & reading)


@dataclass(frozen=True, kw_only=True)
class PositionBasedModel(ClickModel):
    """PBM user: position r examined with P = 1 / (r + 1) ** eta, a click = examined and attracted.

    >>> m = PositionBasedModel(eta=0.0, click_nonrelevant=0.0, click_relevant=1.0)
    >>> m.simulate([[1, 0, 1]], rng=0).astype(int).tolist()
    [[1, 0, 1]]
    """

    eta: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"eta must be a finite number >= 0, got {self.eta!r}")

    @property
    def name(self) -> str:
        return "pbm"

    def examination(self, k: int) -> NDArray[np.float64]:
        """P(examined) for positions 0 .. k-1."""
        return np.asarray(1.0 / np.arange(1, k + 1, dtype=np.float64) ** self.eta)

    def simulate(self, grades: ArrayLike, rng: Seed = None) -> NDArray[np.bool_]:
        r = np.random.default_rng(rng)
        g = np.atleast_2d(np.asarray(grades))
        p = self.attractiveness(g) * self.examination(g.shape[1])
        return np.asarray(r.random(g.shape) < p)


def _dedupe(ranking: Sequence[str], k: int) -> tuple[str, ...]:
    return tuple(dict.fromkeys(ranking))[:k]


def ndcg10(qrels: Qrels, run: Runs) -> tuple[float, dict[str, float]]:
    """Mean NDCG@10 over every query in ``qrels``, and the per-query values:
    :func:`twostage.metrics.per_query` (ir-measures, trec_eval's definition).

    ``run`` maps query → ranked document ids (a repeated id keeps its first place); a query
    it lacks scores 0.
    """
    from twostage.metrics import per_query

    per = per_query(qrels, run, ("nDCG@10",))["nDCG@10"]
    return (sum(per.values()) / len(per) if per else 0.0), per


@dataclass(frozen=True)
class Curve:
    """One method's results over the grid of query counts."""

    method: str
    correct: tuple[float, ...]  # share of experiments naming the better ranker at p < alpha
    wrong: tuple[float, ...]  # share naming the worse one at p < alpha
    median_p: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "correct": list(self.correct),
            "wrong": list(self.wrong),
            "median_p": list(self.median_p),
        }


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`simulate` measured: the truth (NDCG@10), then each method's curve."""

    model: str
    model_params: dict[str, Any]
    ndcg_a: float
    ndcg_b: float
    queries: int  # judged queries the traffic is drawn from
    grid: tuple[int, ...]
    reps: int
    alpha: float
    k: int
    seed: int | None
    curves: dict[str, Curve]
    # Per-impression rates over every simulated impression: interleaving "A"/"B"/"tie"
    # shares; A/B metric means per arm.
    impressions: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def better(self) -> Literal["A", "B"]:
        return "A" if self.ndcg_a > self.ndcg_b else "B"

    def needed(self, method: str, target: float = 0.95) -> float | None:
        """Queries for ``target`` of experiments to name the better ranker, or ``None``.

        Interpolated in log(queries) between the last grid point below ``target`` and the
        first at or above it (the curve is noisy by about ``sqrt(p(1-p)/reps)``).
        """
        ys = self.curves[method].correct
        for i, (n, y) in enumerate(zip(self.grid, ys, strict=True)):
            if y >= target:
                if i == 0:
                    return float(n)
                n0, y0 = self.grid[i - 1], ys[i - 1]
                t = (target - y0) / (y - y0)
                return float(math.exp(math.log(n0) + t * (math.log(n) - math.log(n0))))
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "model_params": self.model_params,
            "ndcg10": {"A": self.ndcg_a, "B": self.ndcg_b},
            "better": self.better,
            "queries": self.queries,
            "grid": list(self.grid),
            "reps": self.reps,
            "alpha": self.alpha,
            "k": self.k,
            "seed": self.seed,
            "curves": {m: c.to_dict() for m, c in self.curves.items()},
            "needed_95": {m: self.needed(m) for m in self.curves},
            "impressions": self.impressions,
            "seconds": self.seconds,
        }


@dataclass
class _Shown:
    """Every interleaving of every query, padded into arrays for vectorised replay."""

    cum: NDArray[np.float64]  # (Q, C) cumulative probabilities, padded with 1
    grades: NDArray[np.int64]  # (Q, C, k), NO_DOC where nothing is shown
    to_a: NDArray[
        np.bool_
    ]  # (Q, C, k, k): [.., l, p] position p credits A if l is the lowest click
    to_b: NDArray[np.bool_]


def credit_masks(il: Interleaving, k: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(k, k) masks: row ``l`` marks the positions that credit A (B) when ``l`` is the lowest click.

    With them :func:`twostage.interleave.credit` becomes ``(clicks & mask[lowest]).sum()``.
    """
    n = len(il.docs)
    to_a = np.zeros((k, k), dtype=bool)
    to_b = np.zeros((k, k), dtype=bool)
    if il.method == "team_draft":
        to_a[:, :n] = np.array([t == "A" for t in il.teams], dtype=bool)
        to_b[:, :n] = np.array([t == "B" for t in il.teams], dtype=bool)
        return to_a, to_b
    rank_a = {d: r for r, d in enumerate(il.a, 1)}
    rank_b = {d: r for r, d in enumerate(il.b, 1)}
    beyond = n + len(il.a) + len(il.b) + 1
    for low in range(n):
        doc = il.docs[low]
        cut = min(rank_a.get(doc, beyond), rank_b.get(doc, beyond))
        top_a, top_b = set(il.a[:cut]), set(il.b[:cut])
        to_a[low, :n] = [d in top_a for d in il.docs]
        to_b[low, :n] = [d in top_b for d in il.docs]
    return to_a, to_b


def _shown(
    method: str,
    lists: list[tuple[tuple[str, ...], tuple[str, ...]]],
    judged: list[dict[str, int]],
    k: int,
) -> _Shown:
    per = [all_interleavings(method, a, b, k) for a, b in lists]
    q, c = len(per), max(len(x) for x in per)
    out = _Shown(
        cum=np.ones((q, c)),
        grades=np.full((q, c, k), NO_DOC, dtype=np.int64),
        to_a=np.zeros((q, c, k, k), dtype=bool),
        to_b=np.zeros((q, c, k, k), dtype=bool),
    )
    for i, (options, rel) in enumerate(zip(per, judged, strict=True)):
        out.cum[i, : len(options)] = np.cumsum([p for p, _ in options])
        out.cum[i, len(options) - 1 :] = 1.0  # no rounding gap at the top
        for j, (_, il) in enumerate(options):
            out.grades[i, j, : len(il.docs)] = [rel.get(d, 0) for d in il.docs]
            out.to_a[i, j], out.to_b[i, j] = credit_masks(il, k)
    return out


def _grades(
    lists: list[tuple[str, ...]], judged: list[dict[str, int]], k: int
) -> NDArray[np.int64]:
    g = np.full((len(lists), k), NO_DOC, dtype=np.int64)
    for i, (docs, rel) in enumerate(zip(lists, judged, strict=True)):
        g[i, : len(docs)] = [rel.get(d, 0) for d in docs]
    return g


def _lowest(clicks: NDArray[np.bool_]) -> NDArray[np.int64]:
    """Index of the last click per row (0 for a row without clicks; callers mask those)."""
    k = clicks.shape[1]
    return np.asarray(k - 1 - np.argmax(clicks[:, ::-1], axis=1))


def sign_test_p(wins_a: NDArray[np.int64], wins_b: NDArray[np.int64]) -> NDArray[np.float64]:
    """Vectorised :func:`twostage.interleave.sign_test`: ``min(1, 2 P(X <= min))``, X ~ Bin(n, ½).

    For p = ½ the binomial is symmetric, so this is exactly scipy's two-sided ``binomtest``.
    """
    from scipy.stats import binom

    n = wins_a + wins_b
    p = np.minimum(1.0, 2.0 * binom.cdf(np.minimum(wins_a, wins_b), n, 0.5))
    return np.asarray(np.where(n == 0, 1.0, p))


def welch_p(
    n: NDArray[np.float64], s: NDArray[np.float64], ss: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Two-sided Welch t-test from per-arm counts, sums and sums of squares, shape (2, R).

    Returns (p, mean_a - mean_b). An arm with fewer than 2 impressions gives p = 1; two arms
    without variance give p = 1 if their means agree and 0 if not. scipy's t distribution
    supplies the tail; the statistic is computed here so that degenerate experiments need no
    warnings filter.
    """
    from scipy.stats import t as student

    ok = (n >= 2).all(axis=0)
    nn = np.where(n >= 2, n, 2.0)
    mean = s / nn
    var = np.maximum((ss - nn * mean**2) / (nn - 1), 0.0)
    se2_parts = var / nn
    se2 = se2_parts.sum(axis=0)
    diff = mean[0] - mean[1]
    flat = se2 <= 1e-15
    se2_safe = np.where(flat, 1.0, se2)
    tstat = diff / np.sqrt(se2_safe)
    denom = (se2_parts**2 / (nn - 1)).sum(axis=0)
    df = np.where(flat, 1.0, se2_safe**2 / np.where(denom > 0, denom, 1.0))
    p = 2.0 * student.sf(np.abs(tstat), df)
    p = np.where(flat, np.where(np.abs(diff) < 1e-12, 1.0, 0.0), p)
    return np.asarray(np.where(ok, p, 1.0)), np.asarray(diff)


def simulate(
    qrels: Qrels,
    run_a: Runs,
    run_b: Runs,
    *,
    model: ClickModel | None = None,
    grid: Sequence[int] = DEFAULT_GRID,
    reps: int = 500,
    k: int = 10,
    alpha: float = 0.05,
    seed: int | None = 0,
) -> SimulationResult:
    """Replay simulated traffic ``reps`` times per grid size; see the module docstring.

    ``run_a`` / ``run_b`` map query id → ranked document ids (only the top ``k`` are shown).
    Traffic is drawn, with replacement, from the queries in ``qrels`` that have at least one
    positive grade. Deterministic for a given ``seed``.

    Each impression's interleaving is drawn from :func:`twostage.interleave.all_interleavings`
    (the exact distribution ``team_draft``/``balanced`` sample from) and credited with
    :func:`credit_masks`, which the tests check against :func:`twostage.interleave.credit`,
    so whole experiments run as numpy arrays.
    """
    import time

    started = time.perf_counter()
    m = model if model is not None else CascadeModel()
    if reps < 1 or not grid or min(grid) < 1 or k < 1 or not 0 < alpha < 1:
        raise ValueError("reps, k and every grid size must be >= 1, and alpha in (0, 1)")
    top = max((g for rel in qrels.values() for g in rel.values()), default=0)
    if top > m.gmax:
        raise ValueError(f"the qrels have grade {top} above the model's gmax={m.gmax}")
    qids = sorted(q for q, rel in qrels.items() if any(g > 0 for g in rel.values()))
    if not qids:
        raise ValueError("no query in the qrels has a relevant document")
    judged = [{d: int(g) for d, g in qrels[q].items()} for q in qids]
    sub = {q: qrels[q] for q in qids}
    ndcg_a, _ = ndcg10(sub, {q: run_a.get(q, []) for q in qids})
    ndcg_b, _ = ndcg10(sub, {q: run_b.get(q, []) for q in qids})
    if ndcg_a == ndcg_b:
        raise ValueError(f"both runs have NDCG@10 {ndcg_a:.4f}: there is no better ranker")
    better_a = ndcg_a > ndcg_b
    lists = [(_dedupe(run_a.get(q, []), k), _dedupe(run_b.get(q, []), k)) for q in qids]
    shown = {meth: _shown(meth, lists, judged, k) for meth in METHODS}
    ab_grades = np.stack(
        [_grades([a for a, _ in lists], judged, k), _grades([b for _, b in lists], judged, k)]
    )  # (2, Q, k)

    rng = np.random.default_rng(seed)
    names = [*METHODS, *AB_METRICS]
    correct = {x: [] for x in names}  # type: dict[str, list[float]]
    wrong = {x: [] for x in names}  # type: dict[str, list[float]]
    median_p = {x: [] for x in names}  # type: dict[str, list[float]]
    totals = {x: np.zeros(3) for x in METHODS}  # A wins, B wins, ties
    ab_tot = np.zeros((len(AB_METRICS), 2, 2))  # metric, arm, (n, sum)
    for n_q in grid:
        per_chunk = max(1, _CHUNK // n_q)
        stats: dict[str, list[tuple[NDArray[np.float64], NDArray[np.float64]]]] = {
            x: [] for x in names
        }
        for start in range(0, reps, per_chunk):
            r = min(per_chunk, reps - start)
            q = rng.integers(0, len(qids), size=(r, n_q)).ravel()
            for meth in METHODS:
                sh = shown[meth]
                u = rng.random(q.shape)
                c = (sh.cum[q] < u[:, None]).sum(axis=1)
                c = np.minimum(c, sh.cum.shape[1] - 1)
                clicks = m.simulate(sh.grades[q, c], rng)
                low = _lowest(clicks)
                ca = (clicks & sh.to_a[q, c, low]).sum(axis=1).reshape(r, n_q)
                cb = (clicks & sh.to_b[q, c, low]).sum(axis=1).reshape(r, n_q)
                wa, wb = (ca > cb).sum(axis=1), (cb > ca).sum(axis=1)
                totals[meth] += [wa.sum(), wb.sum(), r * n_q - wa.sum() - wb.sum()]
                stats[meth].append((sign_test_p(wa, wb), (wa - wb).astype(np.float64)))
            arm = (rng.random(q.shape) < 0.5).astype(np.int64)  # 0: A, 1: B
            clicks = m.simulate(ab_grades[arm, q], rng)
            first = np.argmax(clicks, axis=1)
            any_click = clicks.any(axis=1)
            values = {
                "ab_clicks": clicks.sum(axis=1).astype(np.float64),
                "ab_any_click": any_click.astype(np.float64),
                "ab_rr": np.where(any_click, 1.0 / (first + 1.0), 0.0),
            }
            arm2 = arm.reshape(r, n_q)
            onehot = np.stack([arm2 == 0, arm2 == 1]).astype(np.float64)  # (2, r, n_q)
            cnt = onehot.sum(axis=2)
            for i, name in enumerate(AB_METRICS):
                v = values[name].reshape(r, n_q)
                s, ss = (onehot * v).sum(axis=2), (onehot * v * v).sum(axis=2)
                ab_tot[i, :, 0] += cnt.sum(axis=1)
                ab_tot[i, :, 1] += s.sum(axis=1)
                stats[name].append(welch_p(cnt, s, ss))
        for name in names:
            p = np.concatenate([x[0] for x in stats[name]])
            d = np.concatenate([x[1] for x in stats[name]])
            sig = p < alpha
            right = (d > 0) if better_a else (d < 0)
            correct[name].append(float((sig & right).mean()))
            wrong[name].append(float((sig & ~right & (d != 0)).mean()))
            median_p[name].append(float(np.median(p)))

    impressions: dict[str, dict[str, float]] = {}
    for meth in METHODS:
        t = totals[meth] / totals[meth].sum()
        impressions[meth] = {"A": float(t[0]), "B": float(t[1]), "tie": float(t[2])}
    for i, name in enumerate(AB_METRICS):
        impressions[name] = {
            arm_name: float(ab_tot[i, j, 1] / max(ab_tot[i, j, 0], 1.0))
            for j, arm_name in enumerate(("A", "B"))
        }
    params = {
        key: getattr(m, key)
        for key in m.__dataclass_fields__  # every model field, for the record
    }
    return SimulationResult(
        model=m.name,
        model_params=params,
        ndcg_a=ndcg_a,
        ndcg_b=ndcg_b,
        queries=len(qids),
        grid=tuple(int(g) for g in grid),
        reps=reps,
        alpha=alpha,
        k=k,
        seed=seed,
        curves={x: Curve(x, tuple(correct[x]), tuple(wrong[x]), tuple(median_p[x])) for x in names},
        impressions=impressions,
        seconds=time.perf_counter() - started,
    )
