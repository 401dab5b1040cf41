"""One NDCG: every place the project reports NDCG@10 gives the same number, ir-measures'
(trec_eval's definition, gain = the grade), on graded judgments where gain definitions
differ (2^rel - 1 would give another value here)."""

from __future__ import annotations

import math

import numpy as np
import pytest

ir_measures = pytest.importorskip("ir_measures", reason="ir-measures (the eval extra) missing")

QRELS = {"q1": {"a": 3, "b": 1, "c": 2}, "q2": {"x": 1}, "q3": {"z": 2}}
RANKING = {"q1": ["b", "x", "a", "c"], "q2": ["y", "x"], "q3": []}  # q3: nothing retrieved


def _by_hand() -> dict[str, float]:
    def dcg(gains: list[int]) -> float:
        return sum(g / math.log2(i + 2) for i, g in enumerate(gains))

    return {
        "q1": dcg([1, 0, 3, 2]) / dcg([3, 2, 1]),
        "q2": dcg([0, 1]) / dcg([1]),
        "q3": 0.0,
    }


def test_every_ndcg_is_the_same_one() -> None:
    from twostage.clicks import ndcg10 as clicks_ndcg10
    from twostage.metrics import as_run, ndcg10, ndcg10_of_scores, per_query
    from twostage.server.models import ndcg_at_10
    from twostage.train.encoder import per_query_metrics
    from twostage.train.evaluate import ndcg10 as train_ndcg10
    from twostage.train.evaluate import ndcg_at_k

    want = _by_hand()
    mean = sum(want.values()) / 3
    assert per_query(QRELS, RANKING, ("nDCG@10",))["nDCG@10"] == pytest.approx(want)
    assert ndcg10(QRELS, RANKING) == pytest.approx(mean)
    assert train_ndcg10(QRELS, as_run(RANKING)) == pytest.approx(mean)
    assert ndcg_at_k(QRELS, as_run(RANKING), 10) == pytest.approx(mean)
    got, per = clicks_ndcg10(QRELS, RANKING)
    assert got == pytest.approx(mean) and per == pytest.approx(want)
    cands = {
        q: [(d, float(len(docs) - i)) for i, d in enumerate(docs)] for q, docs in RANKING.items()
    }
    assert per_query_metrics(QRELS, cands)["ndcg@10"] == pytest.approx(want)
    # The server's floor: one query's candidates with their grades, ordered by score.
    docs = ["b", "x", "a", "c"]
    grades = [QRELS["q1"].get(d, 0) for d in docs]
    scores = np.array([4.0, 3.0, 2.0, 1.0])
    assert ndcg_at_10(scores, grades) == pytest.approx(want["q1"])
    assert ndcg10_of_scores(scores, grades) == pytest.approx(want["q1"])
    # Not the exponential gain the server used before.
    exp = sum((2**g - 1) / math.log2(i + 2) for i, g in enumerate([1, 0, 3, 2])) / sum(
        (2**g - 1) / math.log2(i + 2) for i, g in enumerate([3, 2, 1])
    )
    assert abs(ndcg_at_10(scores, grades) - exp) > 0.01


def test_ties_keep_the_given_order_and_scores_sort_as_trec_eval() -> None:
    from twostage.metrics import ndcg10, ndcg10_of_scores

    # Equal scores: the input order decides (a constant model gets the input order's figure).
    assert ndcg10_of_scores([1.0, 1.0], [0, 1]) == pytest.approx(1 / math.log2(3))
    assert ndcg10_of_scores([1.0, 1.0], [1, 0]) == 1.0
    # A scored run with a tie: trec_eval breaks it by document id, descending.
    assert ndcg10({"q": {"a": 1}}, {"q": {"a": 1.0, "b": 1.0}}) == pytest.approx(1 / math.log2(3))
    # A ranked list keeps its order exactly, whatever the ids.
    assert ndcg10({"q": {"a": 1}}, {"q": ["a", "b"]}) == 1.0


def test_validation_set_grades_are_integers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from twostage.errors import InvalidArgument
    from twostage.server.models import load_validation_set

    good = tmp_path / "v.jsonl"
    good.write_text(
        '{"query": "q", "documents": [{"text": "a", "relevance": 2.0}, {"text": "b"}]}\n'
    )
    assert load_validation_set(good) == [("q", ["a", "b"], [2, 0])]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q", "documents": [{"text": "a", "relevance": 0.5}]}\n')
    with pytest.raises(InvalidArgument, match="integer grade"):
        load_validation_set(bad)
