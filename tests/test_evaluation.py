"""Offline evaluation: metrics against hand-checked values and the library, TREC runs,
significance tests, the depth runs' invariants, the report, and the CLI.

The end-to-end checks run the real thing on ADI (82 documents, 35 judged queries, from
``../shared/data``): the ingest pipeline, MiniLM, the BM25 index and the shipped reranker.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import SHARED
from twostage.beir import Dataset, read_qrels, read_trec, write_trec
from twostage.cli import main
from twostage.errors import InvalidArgument
from twostage.evaluation import evaluate
from twostage.metrics import aggregate, as_run, paired_test, per_query

ir_measures = pytest.importorskip("ir_measures", reason="ir-measures (the eval extra) missing")
ADI = SHARED / "data" / "adi"
needs_adi = pytest.mark.skipif(
    not (ADI / "corpus.jsonl").is_file(),
    reason=f"ADI not found at {ADI} (the shared data sets sit beside the clone)",
)


# ---- metrics: hand-checkable ----------------------------------------------------------------


def test_metrics_on_a_hand_checked_case() -> None:
    qrels = {"q1": {"a": 1, "c": 2}, "q2": {"x": 1}, "q3": {"z": 1}}
    ranking = {"q1": ["b", "a", "c"], "q2": ["x"], "q3": []}  # q3 retrieved nothing
    values = per_query(qrels, ranking)
    # trec_eval's NDCG: gain = the grade, discount log2(rank + 1).
    # q1: DCG = 1/log2(3) + 2/log2(4); ideal = 2/log2(2) + 1/log2(3).
    dcg = 1 / math.log2(3) + 2 / math.log2(4)
    idcg = 2 + 1 / math.log2(3)
    assert values["nDCG@10"]["q1"] == pytest.approx(dcg / idcg)
    assert values["RR@10"]["q1"] == pytest.approx(0.5)  # first relevant at rank 2
    assert values["AP@100"]["q1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert values["R@10"]["q1"] == 1.0
    assert values["nDCG@10"]["q2"] == 1.0
    # A judged query with no result counts as 0 in the mean (ir-measures would drop it).
    assert values["nDCG@10"]["q3"] == 0.0
    means = aggregate(values)
    assert means["nDCG@10"] == pytest.approx((dcg / idcg + 1.0 + 0.0) / 3)
    assert means["R@1000"] == pytest.approx(2 / 3)


def test_scores_reproduce_the_ranking_whatever_the_ties() -> None:
    """trec_eval sorts by score and breaks ties by document id; rank-derived scores keep
    our order exactly, so a run file means the ranking we evaluated."""
    ranking = {"q": ["a", "c", "b"]}
    run = as_run(ranking)
    assert sorted(run["q"], key=lambda d: -run["q"][d]) == ["a", "c", "b"]
    qrels = {"q": {"b": 1}}
    assert per_query(qrels, ranking)["RR@10"]["q"] == pytest.approx(1 / 3)


def test_trec_files_round_trip_and_read_the_same_in_ir_measures(tmp_path: Path) -> None:
    ranking = {"1": ["d3", "d1", "d2"], "2": ["d9"]}
    write_trec(ranking, tmp_path / "run.trec", "mine")
    assert read_trec(tmp_path / "run.trec") == ranking
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "1 Q0 d3 1 3 mine"
    qrels = {"1": {"d1": 1}, "2": {"d9": 2}}
    theirs = ir_measures.calc_aggregate(
        [ir_measures.nDCG @ 10], qrels, ir_measures.read_trec_run(str(tmp_path / "run.trec"))
    )[ir_measures.nDCG @ 10]
    assert aggregate(per_query(qrels, ranking, ["nDCG@10"]))["nDCG@10"] == pytest.approx(theirs)
    with pytest.raises(InvalidArgument, match="one word"):
        write_trec(ranking, tmp_path / "x.trec", "two words")
    (tmp_path / "bad.trec").write_text("1 Q0 d1 1\n")
    with pytest.raises(InvalidArgument, match="line 1: expected 6 fields"):
        read_trec(tmp_path / "bad.trec")


def test_paired_tests() -> None:
    a = {str(i): 0.5 for i in range(10)}
    same = paired_test(a, dict(a))
    assert same.p_ttest == 1.0 and same.p_randomization == 1.0 and same.delta == 0.0
    b = {q: v + 0.1 for q, v in a.items()}  # ten queries, every one better
    up = paired_test(a, b)
    assert up.wins == 10 and up.losses == 0 and up.delta == pytest.approx(0.1)
    # 2^10 sign patterns, enumerated exactly: only all-plus and all-minus are as extreme.
    assert up.p_randomization == pytest.approx(2 / 1024)
    assert up.significant
    mixed = {q: v + (0.1 if int(q) % 2 else -0.1) for q, v in a.items()}
    assert not paired_test(a, mixed).significant
    # A query one side lacks counts as 0 for it.
    assert paired_test({"1": 1.0}, {"1": 1.0, "2": 1.0}).mean_a == 0.5


# ---- data ---------------------------------------------------------------------------------


def test_bad_folders_and_qrels_are_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"no corpus\.jsonl"):
        Dataset.load(tmp_path)
    (tmp_path / "corpus.jsonl").write_text('{"_id": "d1", "text": "x"}\n')
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    with pytest.raises(FileNotFoundError, match=r"test\.tsv not found \(splits here: \['dev'\]"):
        Dataset.load(tmp_path)
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\tyes\n")
    with pytest.raises(InvalidArgument, match="line 2: grade 'yes' is not a number"):
        read_qrels(tmp_path / "qrels" / "test.tsv")
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (tmp_path / "queries.jsonl").write_text('{"_id": "q9", "text": "unjudged"}\n')
    with pytest.raises(InvalidArgument, match="no judged query has a text"):
        Dataset.load(tmp_path)
    (tmp_path / "queries.jsonl").write_text('{"_id": "q1", "text": "x?"}\n{"_id": "q2"}\n')
    with pytest.raises(InvalidArgument, match=r"queries\.jsonl line 2"):
        Dataset.load(tmp_path)


@needs_adi
def test_only_judged_queries_count() -> None:
    ds = Dataset.load(ADI)
    assert len(ds.qrels) == len(ds.queries) == 35
    assert set(ds.queries) == set(ds.qrels)


# ---- the whole evaluation on real data ----------------------------------------------------------


@pytest.fixture(scope="module")
def adi_eval(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("eval") / "out"
    ev = evaluate(
        [ADI],
        depths=[5, 10],
        first_stages=["dense", "bm25", "hybrid"],
        rerankers=["twostage-rerank"],
        latency_queries=3,
        collections=tmp_path_factory.mktemp("collections"),
        out=out,
        command="pytest",
    )
    return out, ev


@needs_adi
def test_evaluation_writes_runs_results_report_and_plot(adi_eval: tuple[Path, object]) -> None:
    out, ev = adi_eval
    (ds,) = ev.datasets  # type: ignore[attr-defined]
    names = [c.name for c in ds.configs]
    assert names[:3] == ["dense", "bm25", "hybrid"]
    assert "hybrid+twostage-rerank@10" in names and len(names) == 3 + 3 * 2
    report = (out / "report.md").read_text()
    assert "## adi (test: 35 queries, 82 documents)" in report
    assert "Deepest depth within 150 ms at p99" in report
    png = (out / "adi-depth.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    results = json.loads((out / "results.json").read_text())
    assert results["datasets"][0]["latency"]["twostage-rerank"]["dense"]["10"]["n"] == 3.0
    # Every configuration's run file, read back by ir-measures itself, gives the reported
    # metrics: the report is the library's number on the file we wrote.
    qrels = Dataset.load(ADI).qrels
    for c in ds.configs:
        run = ir_measures.read_trec_run(str(out / c.run_file))
        ndcg = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[
            ir_measures.nDCG @ 10
        ]
        assert c.metrics["nDCG@10"] == pytest.approx(ndcg, abs=1e-9), c.name


@needs_adi
def test_a_depth_d_run_is_what_the_engine_answers_at_depth_d(
    adi_eval: tuple[Path, object], tmp_path: Path
) -> None:
    """Each reranked run is ``Engine.search(depth=d)``'s answer (the cascade scores the top d
    of its cheap order, not of the first stage's), over the first stage's candidates."""
    from twostage.collection import Collection
    from twostage.config import EngineConfig
    from twostage.engine import Engine
    from twostage.reranker import Reranker

    out, ev = adi_eval
    (ds,) = ev.datasets  # type: ignore[attr-defined]
    files = {c.name: out / c.run_file for c in ds.configs}
    assert files["dense"] == out / "runs" / "adi" / "dense.trec.gz"
    data = Dataset.load(ADI)
    cfg = EngineConfig(budget_ms=1e9, max_k=1000, max_depth=1000)
    with Collection.open(ds.collection, read_only=True) as col:
        engine = Engine(col, reranker=Reranker.load("twostage-rerank"), config=cfg)
        for fs in ("dense", "bm25", "hybrid"):
            first = read_trec(files[fs])
            for d in (5, 10):
                reranked = read_trec(files[f"{fs}+twostage-rerank@{d}"])
                assert set(reranked) == set(first)
                for q in sorted(data.queries)[:5]:
                    resp = engine.search(data.queries[q], k=1000, depth=d, first_stage=fs)
                    assert reranked[q] == [h.id for h in resp.hits], (fs, d, q)
                    assert [h.reranked for h in resp.hits[:d]] == [True] * d
                for q, docs in first.items():  # the same candidates, reordered
                    assert sorted(reranked[q]) == sorted(docs), (fs, d, q)
            table = ds.table()
            assert table[f"{fs}+twostage-rerank@10"]["R@1000"] == pytest.approx(table[fs]["R@1000"])


@needs_adi
def test_significance_compares_first_stages_and_each_rerank(adi_eval: tuple[Path, object]) -> None:
    _, ev = adi_eval
    (ds,) = ev.datasets  # type: ignore[attr-defined]
    kinds = {(c["kind"], c["a"], c["b"]) for c in ds.comparisons}
    assert ("first stages", "dense", "bm25") in kinds
    assert ("reranking", "bm25", "bm25+twostage-rerank@5") in kinds
    table = ds.table()
    for c in ds.comparisons:
        assert 0.0 <= c["p_ttest"] <= 1.0 and 0.0 <= c["p_randomization"] <= 1.0
        assert c["delta"] == pytest.approx(table[c["b"]]["nDCG@10"] - table[c["a"]]["nDCG@10"])
    assert ds.affordable_depth("twostage-rerank", "dense") in (None, 5, 10)


# ---- the CLI ---------------------------------------------------------------------------------


@needs_adi
def test_cli_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["eval", "--data", str(ADI), "--reranker", "none", "--first-stage", "bm25"]
    argv += ["--collections", str(tmp_path / "c"), "--out", str(tmp_path / "o")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "adi (test, 35 queries, 82 documents)" in out and "bm25" in out
    assert (tmp_path / "o" / "runs" / "adi" / "bm25.trec.gz").is_file()
    assert "None" not in out
    assert not (tmp_path / "o" / "adi-depth.png").exists()  # nothing reranked: no curve
    assert main(["eval", "--data", str(ADI), "--depths", "10,x"]) == 1
    assert "--depths must be comma-separated integers" in capsys.readouterr().err
    assert main(["eval", "--data", str(ADI), "--first-stage", "sparse"]) == 1
    assert "first stage must be one of" in capsys.readouterr().err
    assert main(["eval", "--data", str(tmp_path / "nowhere")]) == 1
    assert "no corpus.jsonl" in capsys.readouterr().err
