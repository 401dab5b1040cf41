"""Ranking quality and paired significance: the one place the project computes NDCG.

Every figure (``twostage eval``, the server's validation floor, training reports, the
interleaving simulator, the benches) goes through :func:`per_query`, which asks ir-measures
(trec_eval's definitions, through pytrec_eval): NDCG with gain = the relevance grade and a
log2 discount, the ideal ranking taken from the qrels. A judged query with no result counts
as 0 (ir-measures alone would leave it out of the mean).

A run is either ranked lists (``{qid: [doc, ...]}``, best first: the order is kept exactly,
whatever trec_eval's tie-breaking would do) or scores (``{qid: {doc: score}}``: higher is
better, ties broken as trec_eval breaks them, by document id).

ir-measures comes with the ``eval``, ``server`` and ``train`` extras.

>>> from twostage.metrics import ndcg10
>>> round(ndcg10({"q": {"a": 1}}, {"q": ["b", "a"]}), 4)
0.6309
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

Run = dict[str, dict[str, float]]  # query id -> document id -> score (higher is better)
Qrels = dict[str, dict[str, int]]
Ranking = dict[str, list[str]]  # query id -> document ids, best first
#: What :func:`per_query` reads: per query, a ranked list or a ``{doc: score}`` mapping.
AnyRun = Mapping[str, Sequence[str] | Mapping[str, float]]

#: The measures every report shows, in ir-measures' notation (RR@10 is MRR@10, AP@100 MAP@100).
MEASURES = ("nDCG@10", "RR@10", "AP@100", "R@10", "R@100", "R@1000")


def as_run(ranking: Mapping[str, Sequence[str]]) -> Run:
    """Scores that reproduce ``ranking``'s order exactly (strictly decreasing by rank; a
    repeated document keeps its first, best, place)."""
    out: Run = {}
    for q, docs in ranking.items():
        unique = list(dict.fromkeys(docs))
        out[q] = {d: float(len(unique) - i) for i, d in enumerate(unique)}
    return out


def per_query(
    qrels: Mapping[str, Mapping[str, int]], run: AnyRun, measures: Sequence[str] = MEASURES
) -> dict[str, dict[str, float]]:
    """``{measure: {qid: value}}`` over every judged query in ``qrels`` (no result: 0).

    ``measures`` in ir-measures' notation (``"nDCG@10"``, ``"RR@10"``, ``"R@100"``, ...).
    Queries of ``run`` that ``qrels`` does not judge are ignored.
    """
    try:
        import ir_measures
    except ImportError as e:  # pragma: no cover - the extras bring it
        raise ImportError(
            "ranking metrics need ir-measures: install the eval, server or train extra "
            "(pip install ir-measures)"
        ) from e

    parsed = [ir_measures.parse_measure(m) for m in measures]
    names = {str(p): m for p, m in zip(parsed, measures, strict=True)}
    out: dict[str, dict[str, float]] = {m: dict.fromkeys(qrels, 0.0) for m in measures}
    judged = {q: {d: int(g) for d, g in rel.items()} for q, rel in qrels.items()}
    scored: Run = {}
    for q, r in run.items():
        if q not in judged:
            continue
        if isinstance(r, Mapping):
            scores = {str(d): float(s) for d, s in r.items()}
        else:
            scores = as_run({q: list(r)})[q]
        if scores:
            scored[q] = scores
    if scored:
        for row in ir_measures.iter_calc(parsed, judged, scored):
            out[names[str(row.measure)]][row.query_id] = float(row.value)
    return out


def aggregate(values: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """The mean of each measure over its queries."""
    return {m: float(np.mean(list(v.values()))) if v else 0.0 for m, v in values.items()}


def ndcg(qrels: Mapping[str, Mapping[str, int]], run: AnyRun, k: int = 10) -> float:
    """Mean NDCG@k over every judged query (see :func:`per_query`)."""
    return aggregate(per_query(qrels, run, (f"nDCG@{k}",)))[f"nDCG@{k}"]


def ndcg10(qrels: Mapping[str, Mapping[str, int]], run: AnyRun) -> float:
    """Mean NDCG@10 over every judged query (see :func:`per_query`)."""
    return ndcg(qrels, run, 10)


def ndcg10_of_scores(scores: Sequence[float] | np.ndarray, relevance: Sequence[float]) -> float:
    """NDCG@10 of one query's candidates ordered by ``scores`` (ties: input order), with the
    integer grade ``relevance[i]`` of candidate ``i``.

    >>> ndcg10_of_scores([0.9, 0.1], [1, 0]), round(ndcg10_of_scores([0.1, 0.9], [1, 0]), 4)
    (1.0, 0.6309)
    """
    s = np.asarray(scores, dtype=np.float64)
    if len(s) != len(relevance):
        raise ValueError(f"{len(s)} scores for {len(relevance)} relevance grades")
    order = np.lexsort((np.arange(len(s)), -s))
    qrels = {"q": {str(i): int(g) for i, g in enumerate(relevance)}}
    return per_query(qrels, {"q": [str(int(i)) for i in order]}, ("nDCG@10",))["nDCG@10"]["q"]


# ---- significance ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Significance:
    """A paired comparison of two runs on one measure (B minus A)."""

    measure: str
    mean_a: float
    mean_b: float
    delta: float
    p_ttest: float
    p_randomization: float
    queries: int
    wins: int  # queries where B is better
    losses: int

    @property
    def significant(self) -> bool:
        """Both tests agree at p < 0.05."""
        return self.p_ttest < 0.05 and self.p_randomization < 0.05


def paired_test(
    a: Mapping[str, float],
    b: Mapping[str, float],
    measure: str = "nDCG@10",
    *,
    resamples: int = 10_000,
    seed: int = 0,
) -> Significance:
    """Paired t-test and randomization test of per-query values ``b`` against ``a``.

    >>> s = paired_test({"1": 0.1, "2": 0.2, "3": 0.3}, {"1": 0.2, "2": 0.3, "3": 0.5})
    >>> round(s.delta, 3), s.wins, s.losses
    (0.133, 3, 0)
    """
    from scipy import stats

    qids = sorted(set(a) | set(b))
    x = np.array([a.get(q, 0.0) for q in qids])
    y = np.array([b.get(q, 0.0) for q in qids])
    d = y - x
    if len(qids) < 2 or not np.any(d):
        p_t = p_r = 1.0
    else:
        if np.allclose(d, d[0]):  # no variance: the t statistic is infinite
            p_t = 0.0
        else:
            p_t = float(stats.ttest_rel(y, x).pvalue)
        perm = stats.permutation_test(
            (d,),
            np.mean,
            permutation_type="samples",
            n_resamples=resamples,
            alternative="two-sided",
            random_state=np.random.default_rng(seed),
        )
        p_r = float(perm.pvalue)
    return Significance(
        measure=measure,
        mean_a=float(x.mean()) if len(x) else 0.0,
        mean_b=float(y.mean()) if len(y) else 0.0,
        delta=float(d.mean()) if len(d) else 0.0,
        p_ttest=p_t,
        p_randomization=p_r,
        queries=len(qids),
        wins=int((d > 0).sum()),
        losses=int((d < 0).sum()),
    )


__all__ = [
    "MEASURES",
    "AnyRun",
    "Qrels",
    "Ranking",
    "Run",
    "Significance",
    "aggregate",
    "as_run",
    "ndcg",
    "ndcg10",
    "ndcg10_of_scores",
    "paired_test",
    "per_query",
]
