"""The second stage: batch-invariant scores, the unfused graph, signal fusion fitted on dev
only, the cascade, the shared defaults, and the never-zero-scored budget rule.

The shipped reranker (int8) scores real SciFact abstracts (the sample the package ships);
the engine tests use a small random cross-encoder (tests/tinyce.py) whose twostage.json is
written here, so the cascade's order can be checked against signals computed by hand.
"""

from __future__ import annotations

import gzip
import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tinyce import random_cross_encoder
from twostage._onnx import make_session, pad
from twostage.collection import Collection
from twostage.config import (
    DEFAULT_BUDGET_MS,
    DEFAULT_CANDIDATES,
    DEFAULT_DEPTH,
    DEFAULT_FIRST_STAGE,
    EngineConfig,
)
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.engine import Engine
from twostage.errors import InvalidArgument, InvalidModel
from twostage.fusion import (
    bm25_signal,
    fit_weights,
    fuse_signals,
    rank_signal,
    simplex,
    weights_problem,
    zscore,
)
from twostage.reranker import Reranker

QUERY = "vitamin D deficiency and the risk of fractures"


def abstracts(n: int) -> list[str]:
    path = resources.files("twostage") / "data" / "scifact-1k.corpus.jsonl.gz"
    out = []
    with gzip.open(str(path), "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            out.append(f"{row.get('title', '')}. {row['text']}")
            if len(out) == n:
                break
    return out


@pytest.fixture(scope="module")
def shipped() -> Reranker:
    return Reranker.load("twostage-rerank")


# ---- batch invariance ----------------------------------------------------------------------


class Batched(Reranker):
    """The same model run the old way: one onnxruntime call per padded batch."""

    ROW_WISE = False


def _batch_scores(rr: Reranker, pairs_ids: list[list[int]], types: list[list[int]]) -> np.ndarray:
    return rr.postprocess(rr.run(pad(list(range(len(pairs_ids))), pairs_ids, types)))


def test_a_pair_scores_the_same_alone_and_in_any_batch(shipped: Reranker) -> None:
    docs = abstracts(24)
    # Mates of every length: short ones force padding, long ones change activation ranges.
    docs += ["Vitamin D.", "fracture " * 60, "An unrelated note about trains."]
    pairs = shipped.pack(shipped.tokenize_query(QUERY), shipped.tokenize_documents(docs))
    alone = np.array(
        [_batch_scores(shipped, [pairs.ids[i]], [pairs.type_ids[i]])[0] for i in range(len(docs))]
    )
    spread = float(alone.max() - alone.min())
    assert spread > 1.0  # the scores mean something: a tolerance relative to it is real
    rng = np.random.default_rng(0)
    for size in (2, 5, 16, len(docs)):
        perm = rng.permutation(len(docs))
        for start in range(0, len(docs), size):
            rows = perm[start : start + size].tolist()
            got = _batch_scores(
                shipped, [pairs.ids[i] for i in rows], [pairs.type_ids[i] for i in rows]
            )
            assert np.abs(got - alone[rows]).max() <= 1e-3 * spread, size
    for bs in (1, 7, 32):  # the public path, length-sorted batches
        got = shipped.score_tokens(QUERY, shipped.tokenize_documents(docs), batch_size=bs)
        assert np.abs(got - alone).max() <= 1e-3 * spread


def test_the_batched_int8_run_is_what_moved(shipped: Reranker) -> None:
    """Without row-wise runs the same model's scores depend on the batch: the check above
    has something to catch."""
    batched = Batched.load("twostage-rerank")
    assert shipped.row_wise and not batched.row_wise
    docs = [*abstracts(12), "fracture " * 60]
    pairs = batched.pack(batched.tokenize_query(QUERY), batched.tokenize_documents(docs))
    alone = np.array(
        [_batch_scores(batched, [pairs.ids[i]], [pairs.type_ids[i]])[0] for i in range(len(docs))]
    )
    together = _batch_scores(batched, pairs.ids, pairs.type_ids)
    spread = float(alone.max() - alone.min())
    assert np.abs(together - alone).max() > 1e-3 * spread


def test_unfused_layernorm_is_the_same_arithmetic(shipped: Reranker) -> None:
    """The session runs Add + LayerNormalization where the file has SkipLayerNormalization
    (faster on the CPU); a plain onnxruntime session over the file gives the same logits."""
    path = resources.files("twostage") / "models" / "twostage-rerank" / "model_int8.onnx"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    plain = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ours = make_session(str(path), threads=1)
    docs = abstracts(6)
    rr = shipped.at_length(128)  # full pairs: the logits' spread is what the bound reads
    pairs = rr.pack(rr.tokenize_query(QUERY), rr.tokenize_documents(docs))
    a, o = [], []
    for i in range(len(docs)):
        b = pad([0], [pairs.ids[i]], [pairs.type_ids[i]])
        feeds = b.feeds(["input_ids", "attention_mask", "token_type_ids"])
        a.append(plain.run(None, feeds)[0][0, 0])
        o.append(ours.run(None, feeds)[0][0, 0])
    # Float rounding differs between the two LayerNorm kernels, and the next int8
    # quantisation can round a value the other way: ~1e-3 logits, not more.
    spread = max(a) - min(a)
    assert spread > 1.0
    np.testing.assert_allclose(o, a, atol=1e-3 * spread)


# ---- fusion --------------------------------------------------------------------------------


def test_fuse_signals_is_a_weighted_sum_of_per_query_z_scores() -> None:
    s = {"reranker": np.array([3.0, 1.0, 2.0]), "dense": np.array([0.1, 0.9, 0.5])}
    got = fuse_signals(s, {"reranker": 0.6, "dense": 0.4})
    np.testing.assert_allclose(got, 0.6 * zscore(s["reranker"]) + 0.4 * zscore(s["dense"]))
    # Scale-free: a signal's units do not matter, only its order and spread within the query.
    s2 = {**s, "reranker": 100 * s["reranker"] - 7}
    np.testing.assert_allclose(fuse_signals(s2, {"reranker": 0.6, "dense": 0.4}), got)
    assert zscore(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]
    with pytest.raises(KeyError, match="bm25"):
        fuse_signals(s, {"reranker": 1.0, "bm25": 0.5})


def test_bm25_outside_the_lexical_list_takes_its_floor() -> None:
    got = bm25_signal([1, 2, 3], {1: 9.0, 3: 4.0})
    assert got.tolist() == [9.0, 4.0, 4.0]
    assert bm25_signal([5], {}).tolist() == [0.0]
    assert rank_signal([0, 1, 3]).tolist() == pytest.approx([0.0, -np.log(2), -np.log(4)])


def test_weight_tables_are_checked() -> None:
    ok = {"hybrid": {"reranker": 0.5, "dense": 0.3, "bm25": 0.2}}
    assert weights_problem(ok) is None
    assert "unknown first stage" in (weights_problem({"colbert": {"reranker": 1}}) or "")
    assert "unknown signal" in (weights_problem({"dense": {"reranker": 1, "tfidf": 1}}) or "")
    assert ">= 0" in (weights_problem({"dense": {"reranker": 1, "dense": -1}}) or "")
    assert "reranker's weight" in (weights_problem({"dense": {"dense": 1}}) or "")
    cheap = {"dense": {"reranker": 0.2, "bm25": 1}}
    assert "before the reranker" in (weights_problem(cheap, need_reranker=False) or "")


def test_fusion_is_fitted_on_dev_never_on_test() -> None:
    grid = simplex(("reranker", "dense"), 0.25)
    assert grid[0] == {"reranker": 1.0, "dense": 0.0}  # ties go to the reranker
    assert all(abs(sum(w.values()) - 1) < 1e-9 and w["reranker"] > 0 for w in grid)

    def dev(w: dict[str, float]) -> float:  # dev prefers a quarter on the similarity
        return -abs(w["dense"] - 0.25)

    best, score = fit_weights("scifact train (dev)", dev, ("reranker", "dense"), 0.25)
    assert best == {"reranker": 0.75, "dense": 0.25} and score == 0.0
    flat, _ = fit_weights("dev", lambda w: 1.0, ("reranker", "dense"), 0.25)
    assert flat == {"reranker": 1.0, "dense": 0.0}
    for split in ("test", "scifact/test", "TEST"):
        with pytest.raises(InvalidArgument, match="never on a test split"):
            fit_weights(split, dev, ("reranker", "dense"), 0.25)


def test_the_shipped_model_carries_its_fitted_fusion_and_defaults(shipped: Reranker) -> None:
    assert shipped.fusion_rule == "signals"
    weights, cheap = shipped.fusion_signals, shipped.fusion_cheap
    assert weights is not None and cheap is not None
    assert set(weights) == set(cheap) == {"dense", "bm25", "hybrid"}
    d = shipped.defaults
    assert d["first_stage"] in weights and d["candidates"] >= d["depth"] > 0
    assert shipped.max_length == d["max_length"]
    folder = resources.files("twostage") / "models" / "twostage-rerank"
    fit = json.loads((Path(str(folder)) / "twostage.json").read_text())["fusion"]["fitted_on"]
    assert "dev" in fit and "test" not in fit.replace("never on a test", "")


# ---- the engine: cascade, defaults, budget -------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    path = tmp_path_factory.mktemp("ss") / "col"
    texts = abstracts(300)
    with Collection.create(path, encoder) as col:
        col.add([Document(f"d{i}", t) for i, t in enumerate(texts)])
    return path


@pytest.fixture()
def col(tmp_path: Path, built: Path, encoder: Encoder) -> Collection:
    shutil.copytree(built, tmp_path / "col")
    return Collection.open(tmp_path / "col", encoder)


def tiny_with(folder: Path, settings: dict[str, object]) -> Reranker:
    random_cross_encoder(folder, seed=7)
    (folder / "twostage.json").write_text(json.dumps({"kind": "reranker", **settings}))
    return Reranker.load(folder, precision="fp32")


def test_the_cascade_scores_the_top_of_the_cheap_order(col: Collection, tmp_path: Path) -> None:
    rr = tiny_with(
        tmp_path / "ce",
        {
            "fusion": {
                "mode": "signals",
                "weights": {"dense": {"reranker": 1.0}},
                "cheap": {"dense": {"bm25": 1.0}},  # the dense pool, re-read by BM25
            }
        },
    )
    eng = Engine(col, reranker=rr, config=EngineConfig(budget_ms=1e9, first_stage="dense"))
    resp = eng.search(QUERY, k=40, depth=8, candidates=40)
    assert resp.candidates == 40 and resp.scored == 8 and not resp.degraded
    # By hand: the dense pool of 40, ordered by BM25 (absent from the lexical list: its floor).
    pool = eng.search(QUERY, k=40, rerank=False, first_stage="dense").hits
    keys, scores = col.lexical_search(QUERY, 40)
    bm = dict(zip(keys.tolist(), scores.tolist(), strict=True))
    key_of = col.store.keys_of([h.id for h in pool])
    b = bm25_signal([key_of[h.id] for h in pool], bm)
    cheap = [pool[i].id for i in sorted(range(40), key=lambda i: (-b[i], i))]
    reranked = [h for h in resp.hits if h.reranked]
    assert {h.id for h in reranked} == set(cheap[:8])
    # The eight by the model's score; then the unscored in the cheap order.
    assert [h.reranker_score for h in reranked] == sorted(
        (h.reranker_score for h in reranked), reverse=True
    )
    assert [h.id for h in resp.hits[8:]] == cheap[8:]
    # first_stage_rank stays the first stage's own.
    assert {h.id: h.first_stage_rank for h in resp.hits} == {h.id: h.first_stage_rank for h in pool}


def test_without_cheap_weights_there_is_no_cascade(col: Collection, tmp_path: Path) -> None:
    rr = tiny_with(
        tmp_path / "ce",
        {"fusion": {"mode": "signals", "weights": {"dense": {"reranker": 0.5, "dense": 0.5}}}},
    )
    eng = Engine(col, reranker=rr, config=EngineConfig(budget_ms=1e9, first_stage="dense"))
    resp = eng.search(QUERY, k=20, depth=8)
    assert resp.candidates == resp.scored == 8
    assert sorted(h.first_stage_rank for h in resp.hits if h.reranked) == list(range(1, 9))


def test_one_set_of_defaults(col: Collection, tmp_path: Path, shipped: Reranker) -> None:
    eng = Engine(col)  # the shipped reranker unless told otherwise
    assert eng.reranker is not None and eng.reranker.name == "twostage-rerank"
    d = shipped.defaults
    assert eng.defaults.first_stage == d["first_stage"]
    assert eng.defaults.depth == d["depth"] and eng.defaults.budget_ms == d["budget_ms"]
    assert eng.defaults.candidates == d["candidates"]
    resp = eng.search(QUERY)
    assert resp.first_stage == d["first_stage"] and resp.candidates == d["candidates"]
    assert resp.reranker_version == shipped.version
    # The config wins over the model; no reranker: the built-in defaults.
    eng2 = Engine(col, config=EngineConfig(depth=7, first_stage="bm25"))
    assert (eng2.defaults.depth, eng2.defaults.first_stage) == (7, "bm25")
    bare = Engine(col, reranker=None)
    assert bare.reranker is None
    assert (bare.defaults.first_stage, bare.defaults.depth, bare.defaults.budget_ms) == (
        DEFAULT_FIRST_STAGE,
        DEFAULT_DEPTH,
        DEFAULT_BUDGET_MS,
    )
    assert bare.defaults.candidates == DEFAULT_CANDIDATES
    with pytest.raises(InvalidArgument, match=r"Reranker\.load"):
        Engine(col, reranker="twostage-rerank")  # type: ignore[arg-type]


def test_a_collection_without_bm25_defaults_to_dense(tmp_path: Path, encoder: Encoder) -> None:
    with Collection.create(tmp_path / "c", encoder, lexical=False) as c:
        c.add([Document(f"d{i}", t) for i, t in enumerate(abstracts(20))])
        eng = Engine(c)
        assert eng.defaults.first_stage == "dense"
        resp = eng.search(QUERY, budget_ms=1e9)
        assert resp.first_stage == "dense" and resp.scored > 0


def test_a_bad_defaults_table_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidModel, match=r"defaults\.first_stage"):
        tiny_with(tmp_path / "a", {"defaults": {"first_stage": "colbert"}})
    with pytest.raises(InvalidModel, match="unknown setting"):
        tiny_with(tmp_path / "b", {"defaults": {"dept": 10}})
    with pytest.raises(InvalidModel, match="reranker's weight"):
        tiny_with(
            tmp_path / "c", {"fusion": {"mode": "signals", "weights": {"dense": {"dense": 1}}}}
        )


def test_a_tight_budget_scores_fewer_never_none(col: Collection, tmp_path: Path) -> None:
    """The model is said to cost a second a token: no batch fits, yet time is left, so one
    pair is scored rather than none. A spent budget (0 ms) still scores nothing."""
    rr = tiny_with(tmp_path / "ce", {})
    cfg = EngineConfig(first_stage="dense", rerank_ms_per_token=1000.0, score_cache_size=0)
    eng = Engine(col, reranker=rr, config=cfg)
    resp = eng.search(QUERY, k=10, depth=30, budget_ms=5000)
    assert resp.scored == 1 and resp.degraded and resp.degraded_reason
    assert resp.degraded_reason.startswith("budget: 29 of 30")
    assert resp.hits[0].reranked
    none = eng.search(QUERY, k=10, depth=30, budget_ms=0)
    assert none.scored == 0 and none.degraded


# ---- the refine step: a second length inside the second stage -------------------------------


REFINE = {
    "defaults": {"max_length": 32},
    "fusion": {
        "mode": "signals",
        "weights": {"dense": {"reranker": 0.5, "rank": 0.5}},
        "refine": {"max_length": 96, "depth": 4, "weights": {"dense": {"reranker": 1.0}}},
    },
}


def test_refine_rescores_the_best_of_the_fused_order_with_longer_pairs(
    col: Collection, tmp_path: Path
) -> None:
    rr = tiny_with(tmp_path / "ce", REFINE)
    assert rr.max_length == 32 and rr.fusion_refine is not None
    long_rr = rr.at_length(96)
    assert long_rr.max_length == 96 and long_rr.version == rr.version
    assert rr.at_length(96) is long_rr and rr.at_length(32) is rr
    eng = Engine(col, reranker=rr, config=EngineConfig(budget_ms=1e9, first_stage="dense"))
    resp = eng.search(QUERY, k=12, depth=10)
    assert resp.scored == 10 and not resp.degraded
    # By hand: the first step, 32-token logits fused with the first-stage rank.
    plain = Engine(
        col,
        reranker=tiny_with(
            tmp_path / "one", {**REFINE, "fusion": {**REFINE["fusion"], "refine": None}}
        ),
        config=EngineConfig(budget_ms=1e9, first_stage="dense"),
    ).search(QUERY, k=12, depth=10)
    first = [h.id for h in plain.hits[:10]]
    assert {h.id for h in resp.hits[:10]} == set(first)  # the same ten scored
    # The best four of that order come first, ordered by their 96-token logits alone.
    top4 = [h for h in resp.hits[:4]]
    assert {h.id for h in top4} == set(first[:4])
    texts = {h.id: d.text for h, d in zip(top4, col.get([h.id for h in top4]), strict=True)}
    logits = dict(zip(texts, long_rr.score(QUERY, list(texts.values())).tolist(), strict=True))
    assert [h.id for h in top4] == sorted(texts, key=lambda i: -logits[i])
    for h in top4:  # each hit reports the logit that placed it: the 96-token one
        assert h.reranker_score == pytest.approx(logits[h.id], abs=1e-4)
    # The other six keep the first step's order and logits, below the refined four.
    assert [h.id for h in resp.hits[4:10]] == first[4:10]
    assert [h.reranker_score for h in resp.hits[4:10]] == [
        h.reranker_score for h in plain.hits[4:10]
    ]
    assert min(h.score for h in top4) > max(h.score for h in resp.hits[4:10])


def test_scores_of_two_lengths_are_cached_apart(col: Collection, tmp_path: Path) -> None:
    rr = tiny_with(tmp_path / "ce", REFINE)
    eng = Engine(col, reranker=rr, config=EngineConfig(budget_ms=1e9, first_stage="dense"))
    a = eng.search(QUERY, k=10, depth=10)
    b = eng.search(QUERY, k=10, depth=10)
    assert b.cached_scores == 10  # the first step's ten, from the cache
    assert [(h.id, h.reranker_score) for h in a.hits] == [(h.id, h.reranker_score) for h in b.hits]
    # 10 pairs at 32 tokens and 4 at 96: the four documents are cached twice, apart.
    assert eng.cache_stats()["scores"]["size"] == 14


def test_refine_time_is_set_aside_and_a_tight_budget_still_scores(
    col: Collection, tmp_path: Path
) -> None:
    """With the model said to cost 10 ms a token, neither step fits: the first still scores
    one pair, the refine step's shortfall is the answer's reason, and nothing raises."""
    rr = tiny_with(tmp_path / "ce", REFINE)
    cfg = EngineConfig(first_stage="dense", rerank_ms_per_token=10.0, score_cache_size=0)
    resp = Engine(col, reranker=rr, config=cfg).search(QUERY, k=10, depth=10, budget_ms=800)
    assert resp.scored >= 1 and resp.degraded and resp.degraded_reason
    assert resp.hits[0].reranked


def test_a_bad_refine_table_is_refused(tmp_path: Path) -> None:
    base = REFINE["fusion"]
    for refine, match in [
        ({"max_length": 96, "depth": 0, "weights": base["refine"]["weights"]}, "refine.depth"),  # type: ignore[index]
        (
            {"max_length": 4096, "depth": 4, "weights": base["refine"]["weights"]},
            "refine.max_length",
        ),  # type: ignore[index]
        ({"max_length": 96, "depth": 4, "weights": {"dense": {"dense": 1.0}}}, "reranker's weight"),
        ({"max_length": 96, "depth": 4, "weights": {}, "deep": 1}, "unknown setting"),
    ]:
        with pytest.raises(InvalidModel, match=match):
            tiny_with(
                tmp_path / match.replace(" ", "_"), {**REFINE, "fusion": {**base, "refine": refine}}
            )  # type: ignore[dict-item]
