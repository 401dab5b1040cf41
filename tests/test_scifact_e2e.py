"""End to end on SciFact (5,183 abstracts, 300 test queries with judgments), through the CLI.

Metrics come from ir-measures (pytrec_eval underneath), the library the evaluation uses.
Published anchor: all-MiniLM-L6-v2 scores about 0.645 NDCG@10 on SciFact (BEIR / MTEB).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.engine import Engine
from twostage.metrics import paired_test

ir_measures = pytest.importorskip("ir_measures", reason="ir-measures not installed")
SCIFACT = SHARED / "data" / "scifact"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (SCIFACT / "corpus.jsonl.gz").is_file(),
        reason=f"SciFact not found at {SCIFACT} (the shared data sets sit beside the clone)",
    ),
]


DENSE = EngineConfig(first_stage="dense")


def load_test_split() -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    with open(SCIFACT / "qrels" / "test.tsv") as f:
        next(f)  # header
        for line in f:
            qid, did, rel = line.split("\t")
            qrels.setdefault(qid, {})[did] = int(rel)
    queries = {}
    with open(SCIFACT / "queries.jsonl") as f:
        for line in f:
            q = json.loads(line)
            if q["_id"] in qrels:
                queries[q["_id"]] = q["text"]
    return queries, qrels


@pytest.fixture(scope="module")
def collection_dir(scifact_collection: Path) -> Path:
    """The session's SciFact collection (conftest), built once with `twostage index build`."""
    return scifact_collection


def ndcg_and_recall(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict:
    measures = [ir_measures.nDCG @ 10, ir_measures.R @ 100]
    return {str(m): v for m, v in ir_measures.calc_aggregate(measures, qrels, run).items()}


def test_first_stage_quality_and_stability(collection_dir: Path) -> None:
    queries, qrels = load_test_split()
    assert len(queries) == 300
    col = Collection.open(collection_dir)
    engine = Engine(col, reranker=None, config=DENSE)
    run: dict[str, dict[str, float]] = {}
    for qid, text in queries.items():
        resp = engine.search(text, k=100, rerank=False)
        assert not resp.degraded
        run[qid] = {h.id: h.first_stage_score for h in resp.hits}
    got = ndcg_and_recall(run, qrels)
    assert got["nDCG@10"] >= 0.63, got

    # Recall@100 against exact search over the same stored embeddings.
    ids = list(col.store.ids())
    keys = col.store.keys_of(ids)
    matrix = col.store.embeddings([keys[i] for i in ids])
    qvecs = col.encoder.encode(list(queries.values()), kind="query")
    exact: dict[str, dict[str, float]] = {}
    for qid, qv in zip(queries, qvecs, strict=True):
        sims = matrix @ qv
        top = np.argpartition(-sims, 100)[:100]
        exact[qid] = {ids[i]: float(sims[i]) for i in top}
    brute = ndcg_and_recall(exact, qrels)
    assert got["R@100"] >= brute["R@100"] - 0.02, (got, brute)

    # Reopen: the same answers.
    sample = list(queries.items())[:25]
    before = [[h.id for h in engine.search(t, k=10, rerank=False).hits] for _, t in sample]
    col.close()
    col = Collection.open(collection_dir)
    assert col.recovery is None
    engine = Engine(col, reranker=None, config=DENSE)
    after = [[h.id for h in engine.search(t, k=10, rerank=False).hits] for _, t in sample]
    assert after == before
    col.close()
    print(f"\nSciFact test: first stage {got}, exact search {brute}")


def test_the_defaults_beat_the_best_first_stage(collection_dir: Path) -> None:
    """``Engine(col)`` as a new user gets it (the shipped reranker, its fitted fusion and
    cascade, hybrid candidates), with the budget lifted so the check does not depend on
    this machine's speed: better than hybrid alone on every query set's mean, significantly.
    Measured: 0.7416 against 0.7133 (BENCHMARKS.md, "The target"); the weights were
    fitted on SciFact train queries, never on these."""
    queries, qrels = load_test_split()
    col = Collection.open(collection_dir)
    engine = Engine(col)
    one, two = {}, {}
    for qid, text in queries.items():
        first = engine.search(text, k=10, rerank=False)
        resp = engine.search(text, k=10, budget_ms=60_000)
        assert first.first_stage == resp.first_stage == "hybrid"
        assert not resp.degraded and resp.scored == engine.defaults.depth
        one[qid] = {h.id: -float(i) for i, h in enumerate(first.hits)}
        two[qid] = {h.id: -float(i) for i, h in enumerate(resp.hits)}
    col.close()
    per = [
        {r.query_id: r.value for r in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run)}
        for run in (one, two)
    ]
    test = paired_test(per[0], per[1])
    print(f"\nSciFact test NDCG@10: hybrid {test.mean_a:.4f}, defaults {test.mean_b:.4f}")
    assert test.mean_b >= test.mean_a + 0.01 and test.p_ttest < 0.05, test


def test_cli_search_and_info(collection_dir: Path) -> None:
    cmd = [sys.executable, "-m", "twostage"]
    done = subprocess.run(
        [
            *cmd,
            "search",
            str(collection_dir),
            "vitamin D and fractures",
            "-k",
            "3",
            "--json",
            "--budget-ms",
            "0",
            "--depth",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    resp = json.loads(done.stdout)
    assert len(resp["hits"]) == 3
    assert set(resp["timings"]) == {"encode", "ann", "bm25", "fetch", "rerank", "total"}
    assert resp["first_stage"] == "hybrid"  # the shipped reranker's default
    if resp["candidates"]:  # a reranker is installed: a zero budget leaves it no time
        assert resp["degraded"] and not any(h["reranked"] for h in resp["hits"])
    info = subprocess.run(
        [*cmd, "index", "info", str(collection_dir), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["documents"] == 5183
