"""The engine: stages, deadline and fallback, caches, filters, atomic reranker swaps.

The encoder is MiniLM (int8) over real passages; the rerankers are small cross-encoders with
random weights (tests/tinyce.py), run by onnxruntime: their scores carry no meaning, but their
cost, batching, cancellation and identity are real, which is what these tests check.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from tinyce import random_cross_encoder
from twostage._onnx import pad
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.engine import Engine, _Cancel
from twostage.errors import InvalidArgument
from twostage.reranker import Reranker
from twostage.stdlib_docs import stdlib_docs

QUERY = "how do I compress data with gzip"


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    path = tmp_path_factory.mktemp("engine") / "col"
    with Collection.create(path, encoder) as col:
        # Every third of the first 900 passages: topics, modules, classes, functions and
        # methods (their metadata "kind" is what the filter test selects on).
        col.add(list(stdlib_docs(900))[::3])
    return path


@pytest.fixture()
def col(tmp_path: Path, built: Path, encoder: Encoder) -> Collection:
    shutil.copytree(built, tmp_path / "col")
    return Collection.open(tmp_path / "col", encoder)


@pytest.fixture(scope="module")
def rr_a(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    # fp32: scores do not depend on batch composition (dynamic int8 scales per batch), so
    # the engine's scores can be compared with the model's own, pair for pair.
    folder = random_cross_encoder(tmp_path_factory.mktemp("a") / "ce-a", seed=1)
    return Reranker.load(folder, precision="fp32")


@pytest.fixture(scope="module")
def rr_deep(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    # onnxruntime honours a terminate flag between graph nodes, never inside one; with two
    # layers a single fused Attention node is a third of a run, so cancellation is tested on
    # eight, where a node is a few percent (as in a real six-layer MiniLM).
    # Batched (as with a device provider): on the CPU a run is one pair, a millisecond here,
    # too short to hang; a batch of hundreds is a run worth cancelling.
    folder = random_cross_encoder(tmp_path_factory.mktemp("deep") / "ce-deep", seed=5, layers=8)
    return Batched.load(folder, precision="fp32")


class Batched(Reranker):
    ROW_WISE = False


@pytest.fixture(scope="module")
def rr_b(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    folder = random_cross_encoder(tmp_path_factory.mktemp("b") / "ce-b", seed=2)
    return Reranker.load(folder, precision="fp32")


def dense(**kw: object) -> EngineConfig:
    """These tests check mechanics on the dense first stage (the index's own order)."""
    return EngineConfig(first_stage="dense", **kw)  # type: ignore[arg-type]


def unlimited(**kw: object) -> EngineConfig:
    return dense(budget_ms=1e9, **kw)


def test_two_stage_answer(col: Collection, rr_a: Reranker) -> None:
    eng = Engine(col, reranker=rr_a, config=unlimited())
    first = eng.search(QUERY, k=30, rerank=False)
    resp = eng.search(QUERY, k=10, depth=30)
    assert not resp.degraded and resp.degraded_reason is None
    assert resp.candidates == resp.scored == 30
    assert resp.reranker_version == rr_a.version
    assert len(resp.hits) == 10 and all(h.reranked for h in resp.hits)
    assert all(h.reranker_version == rr_a.version for h in resp.hits)
    # The order is the reranker's, over exactly the first stage's 30 candidates.
    scores = [h.score for h in resp.hits]
    assert scores == sorted(scores, reverse=True)
    by_id = {h.id: h for h in first.hits}
    for h in resp.hits:
        assert by_id[h.id].first_stage_rank == h.first_stage_rank
        assert by_id[h.id].first_stage_score == pytest.approx(h.first_stage_score)
    docs = col.get([h.id for h in resp.hits])
    expect = rr_a.score(QUERY, [d.content for d in docs])
    np.testing.assert_allclose(scores, expect, rtol=1e-4, atol=1e-4)
    t = resp.timings
    assert min(t.encode, t.ann, t.fetch, t.rerank) > 0
    assert t.total >= t.encode + t.ann + t.fetch + t.rerank - 1e-6
    assert resp.hits[0].title and resp.hits[0].snippet


def test_first_stage_alone(col: Collection, rr_a: Reranker) -> None:
    eng = Engine(col, reranker=rr_a, config=dense())
    a = eng.search(QUERY, k=8, rerank=False)
    b = eng.search(QUERY, k=8, depth=0)
    for resp in (a, b):
        assert not resp.degraded and resp.reranker_version is None and resp.scored == 0
        assert [h.first_stage_rank for h in resp.hits] == list(range(1, 9))
        assert not any(h.reranked for h in resp.hits)
        assert [h.score for h in resp.hits] == [h.first_stage_score for h in resp.hits]
    assert [h.id for h in a.hits] == [h.id for h in b.hits]
    # The first stage is the index's own order.
    keys = col.index.search(col.embed_query(QUERY), 8).keys
    assert [h.id for h in a.hits] == [d.id for d in col.fetch(keys) if d]


def test_zero_budget_is_the_first_stage_degraded(col: Collection, rr_a: Reranker) -> None:
    eng = Engine(col, reranker=rr_a, config=dense())
    eng.search(QUERY, k=10, depth=20, budget_ms=1e9)  # fill the score cache: still unused
    resp = eng.search(QUERY, k=10, depth=20, budget_ms=0)
    assert resp.degraded and "budget" in (resp.degraded_reason or "")
    assert resp.scored == 0 and not any(h.reranked for h in resp.hits)
    assert [h.first_stage_rank for h in resp.hits] == list(range(1, 11))


def long_docs(col: Collection, n: int = 1000) -> list[str]:
    """n long passages that all tie in the first stage: a lot of reranking work."""
    texts = [" ".join(["compression"] * 200) + f" {i}" for i in range(n)]
    docs = [Document(f"long{i}", t) for i, t in enumerate(texts)]
    # Near the query, and distinct: HNSW does not link many identical vectors usefully.
    vec = col.embed_query("compression")
    noise = np.random.default_rng(0).standard_normal((n, vec.size)).astype(np.float32)
    vecs = vec + 0.02 * noise / np.linalg.norm(noise, axis=1, keepdims=True)
    col.add_embedded(docs, vecs, col.encoder.token_ids(texts))
    return texts


def test_budget_scores_a_prefix_in_first_stage_order(col: Collection, rr_a: Reranker) -> None:
    """1000 long pairs take about a second here: a 150 ms budget scores a prefix of them."""
    long_docs(col)
    eng = Engine(col, reranker=rr_a, config=dense(rerank_batch_size=8, score_cache_size=0))
    resp = eng.search("compression", k=1000, depth=1000, budget_ms=150)
    assert resp.candidates >= 500  # plenty of long documents: more work than the budget
    assert resp.degraded and (resp.degraded_reason or "").startswith("budget")
    assert 0 < resp.scored < 1000
    assert resp.timings.total < 150 + 100  # it stopped at the budget, not after the work
    # Scored: the first candidates, in front; the rest keep their first-stage order.
    scored = [h for h in resp.hits if h.reranked]
    assert sorted(h.first_stage_rank for h in scored) == list(range(1, resp.scored + 1))
    assert [h.reranked for h in resp.hits[: resp.scored]] == [True] * resp.scored
    rest = [h.first_stage_rank for h in resp.hits[resp.scored :]]
    assert rest == list(range(resp.scored + 1, len(resp.hits) + 1))


def test_a_hung_run_is_cancelled_at_the_deadline(col: Collection, rr_deep: Reranker) -> None:
    """A real onnxruntime run far longer than the budget is terminated, not waited for."""
    # The engine is told the model is free, so it starts one batch of 600 long pairs: an
    # uncancelled run several budgets long on a fast, quiet CPU too (400 pairs under a 150 ms
    # budget took 308 ms on a quiet Zen 4, against 196 ms for the cancelled search).
    n = 600
    cfg = EngineConfig(rerank_batch_size=n, cancel_grace_ms=20, rerank_ms_per_token=0.0)
    eng = Engine(col, reranker=rr_deep, config=cfg)
    texts = long_docs(col, n)
    t0 = time.perf_counter()
    resp = eng.search("compression", k=10, depth=n, budget_ms=100)
    took = time.perf_counter() - t0
    assert resp.degraded and "timeout" in (resp.degraded_reason or "")
    assert len(resp.hits) == 10 and not any(h.reranked for h in resp.hits)
    # The same work uncancelled, for scale: the cancelled search stopped well before it.
    pairs = rr_deep.pack(rr_deep.tokenize_query("compression"), col.encoder.token_ids(texts))
    t0 = time.perf_counter()
    rr_deep.run(pad(list(range(len(pairs))), pairs.ids, pairs.type_ids))
    full = time.perf_counter() - t0
    assert took < 0.6 * full, f"cancelled search {took * 1e3:.0f} ms, full run {full * 1e3:.0f} ms"


def test_cancel_terminates_a_real_run(rr_deep: Reranker) -> None:
    pairs = rr_deep.pack(rr_deep.tokenize_query("q"), [list(range(1000, 1120))] * 500)
    batch = pad(list(range(len(pairs))), pairs.ids, pairs.type_ids)
    t0 = time.perf_counter()
    rr_deep.run(batch)
    full = time.perf_counter() - t0
    t0 = time.perf_counter()
    cancel = _Cancel(0.05)
    with pytest.raises(Exception, match=r"(?i)terminat|cancel|exiting"), cancel:
        rr_deep.run(batch, cancel.options)
    took = time.perf_counter() - t0
    assert cancel.fired and took < 0.6 * full, (took, full)


class Exploding(Reranker):
    """A real model whose runs fail after the first (a crashed provider, an OOM)."""

    calls = 0

    def run(self, batch, options=None):  # type: ignore[no-untyped-def]
        Exploding.calls += 1
        if Exploding.calls > 2:  # the engine's warm-up takes one run and one row
            raise RuntimeError("provider crashed")
        return super().run(batch, options)

    def submit(self, ids, type_ids=None, options=None):  # type: ignore[no-untyped-def]
        Exploding.calls += 1
        if Exploding.calls > 2:
            failed: Future[np.ndarray] = Future()
            failed.set_exception(RuntimeError("provider crashed"))
            return failed
        return super().submit(ids, type_ids, options)


class NaNScores(Reranker):
    def postprocess(self, logits: np.ndarray) -> np.ndarray:
        out = super().postprocess(logits)
        out[0] = np.nan
        return out


def test_reranker_failures_fall_back_never_raise(col: Collection, tmp_path: Path) -> None:
    folder = random_cross_encoder(tmp_path / "ce", seed=3)
    eng = Engine(col, reranker=Exploding.load(folder), config=unlimited())
    resp = eng.search(QUERY, k=10, depth=30)
    assert resp.degraded and "provider crashed" in (resp.degraded_reason or "")
    assert len(resp.hits) == 10 and [h.first_stage_rank for h in resp.hits] == list(range(1, 11))
    eng2 = Engine(col, reranker=None, config=unlimited())
    with pytest.raises(InvalidArgument, match="non-finite"):
        # Refused at the warm-up: never installed.
        eng2.swap_reranker(NaNScores.load(folder), sanity_check=False)
    assert eng2.reranker is None


def test_caches_and_invalidation_by_version_and_change(
    col: Collection, rr_a: Reranker, rr_b: Reranker
) -> None:
    eng = Engine(col, reranker=rr_a, config=unlimited())
    first = eng.search(QUERY, k=5, depth=20)
    assert not first.query_cached and first.cached_scores == 0
    again = eng.search(QUERY, k=5, depth=20)
    assert again.query_cached and again.cached_scores == 20
    assert [h.id for h in again.hits] == [h.id for h in first.hits]
    assert [h.score for h in again.hits] == pytest.approx([h.score for h in first.hits])
    eng.swap_reranker(rr_b, sanity_check=False)  # random weights: mechanics only
    swapped = eng.search(QUERY, k=5, depth=20)
    assert swapped.cached_scores == 0 and swapped.reranker_version == rr_b.version
    # A changed document is scored again (its sequence number is part of the cache key).
    top = swapped.hits[0]
    doc = col.get([top.id])[0]
    col.add_embedded(
        [Document(doc.id, doc.text + " (edited)", doc.title, doc.metadata)],
        col.store.embeddings([col.store.keys_of([doc.id])[doc.id]]),
    )
    after = eng.search(QUERY, k=5, depth=20)
    assert after.cached_scores == 19
    stats = eng.cache_stats()
    assert stats["query"]["hits"] == 3 and stats["scores"]["size"] == 20 + 20 + 1


def test_filter(col: Collection, rr_a: Reranker) -> None:
    eng = Engine(col, reranker=rr_a, config=unlimited())
    resp = eng.search(QUERY, k=5, depth=10, filter={"kind": "function"})
    assert len(resp.hits) == 5 and all(h.reranked for h in resp.hits)
    assert all((h.metadata or {}).get("kind") == "function" for h in resp.hits)
    either = eng.search(QUERY, k=10, rerank=False, filter={"kind": ["class", "module"]})
    assert {(h.metadata or {})["kind"] for h in either.hits} <= {"class", "module"}
    none = eng.search(QUERY, k=5, filter={"kind": "no-such-kind"})
    assert none.hits == []


def test_bad_requests_are_refused_with_the_reason(col: Collection, rr_a: Reranker) -> None:
    eng = Engine(col, reranker=rr_a, config=dense())
    for kwargs, msg in [
        ({"query": ""}, "empty"),
        ({"query": "   "}, "empty"),
        ({"query": "x" * 5000}, "limit is 2048"),
        ({"query": 3}, "must be a string"),
        ({"query": "q", "k": 0}, "k must be"),
        ({"query": "q", "k": 10_000}, "k must be"),
        ({"query": "q", "depth": -1}, "depth must be"),
        ({"query": "q", "budget_ms": float("nan")}, "budget_ms"),
        ({"query": "q", "budget_ms": -5}, "budget_ms"),
        ({"query": "q", "filter": "kind=method"}, "filter"),
    ]:
        with pytest.raises(InvalidArgument, match=msg):
            eng.search(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="expected a Reranker"):
        eng.swap_reranker("not a model")  # type: ignore[arg-type]
    assert eng.reranker is rr_a
    with pytest.raises(InvalidArgument, match="depth"):
        EngineConfig(depth=5000)


def test_swaps_during_concurrent_searches_never_tear(
    col: Collection, rr_a: Reranker, rr_b: Reranker
) -> None:
    """Every answer is scored by exactly one model: its version and its scores agree."""
    eng = Engine(col, reranker=rr_a, config=unlimited(score_cache_size=0, rerank_batch_size=4))
    queries = ["read a csv file", "spawn a subprocess", "parse json", "regular expression groups"]
    # Each model's scores for each query's candidates, computed alone.
    truth: dict[tuple[str, str], dict[str, float]] = {}
    for q in queries:
        cands = eng.search(q, k=12, rerank=False).hits
        docs = col.get([h.id for h in cands])
        for rr in (rr_a, rr_b):
            s = rr.score(q, [d.content for d in docs])
            truth[(rr.version, q)] = dict(zip([d.id for d in docs], s.tolist(), strict=True))
    errors: list[str] = []
    seen: set[str] = set()
    stop = threading.Event()

    def client(n: int) -> None:
        i = n
        while not stop.is_set():
            q = queries[i % len(queries)]
            i += 1
            resp = eng.search(q, k=12, depth=12)
            seen.add(resp.reranker_version or "")
            versions = {h.reranker_version for h in resp.hits}
            if versions != {resp.reranker_version} or resp.scored != 12:
                errors.append(f"mixed or partial answer: {versions}, scored {resp.scored}")
                continue
            want = truth[(resp.reranker_version or "", q)]
            for h in resp.hits:
                if abs(h.score - want[h.id]) > 1e-3:
                    errors.append(
                        f"{h.id}: {h.score} is not {resp.reranker_version}'s {want[h.id]}"
                    )

    generation = eng.reranker_generation
    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for i in range(30):
        eng.swap_reranker(rr_b if i % 2 == 0 else rr_a, sanity_check=False)
        time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors[:5]
    assert seen == {rr_a.version, rr_b.version}
    assert eng.reranker_generation == generation + 30


def test_fusion_orders_by_reranker_score_plus_weighted_similarity(
    col: Collection, rr_a: Reranker
) -> None:
    eng = Engine(col, reranker=rr_a, config=unlimited(fusion_weight=20.0))
    resp = eng.search(QUERY, k=30, depth=30)
    assert all(h.reranked and h.reranker_score is not None for h in resp.hits)
    for h in resp.hits:
        assert h.score == pytest.approx(h.reranker_score + 20.0 * h.first_stage_score)
    assert [h.score for h in resp.hits] == sorted((h.score for h in resp.hits), reverse=True)
    plain = Engine(col, reranker=rr_a, config=unlimited(fusion_weight=0.0)).search(
        QUERY, k=30, depth=30
    )
    assert all(h.score == h.reranker_score for h in plain.hits)
    # The model's own setting applies when the config leaves it open (this one has none).
    assert rr_a.fusion_weight is None


def test_z_fusion_standardises_both_scores_per_query(col: Collection, rr_a: Reranker) -> None:
    eng = Engine(col, reranker=rr_a, config=unlimited(fusion_weight=0.3, fusion_rule="z"))
    resp = eng.search(QUERY, k=30, depth=30)
    assert all(h.reranked for h in resp.hits)
    lg = np.array([h.reranker_score for h in resp.hits])
    cs = np.array([h.first_stage_score for h in resp.hits])
    want = 0.7 * (lg - lg.mean()) / lg.std() + 0.3 * (cs - cs.mean()) / cs.std()
    np.testing.assert_allclose([h.score for h in resp.hits], want, rtol=1e-4, atol=1e-4)
    assert [h.score for h in resp.hits] == sorted((h.score for h in resp.hits), reverse=True)
    # Share 0 is the reranker's own order; share 1 the first stage's.
    only_rr = Engine(col, reranker=rr_a, config=unlimited(fusion_weight=0.0, fusion_rule="z"))
    assert [h.id for h in only_rr.search(QUERY, k=30, depth=30).hits] == [
        h.id for h in sorted(resp.hits, key=lambda h: -h.reranker_score)
    ]
    only_fs = Engine(col, reranker=rr_a, config=unlimited(fusion_weight=1.0, fusion_rule="z"))
    assert [h.first_stage_rank for h in only_fs.search(QUERY, k=30, depth=30).hits] == list(
        range(1, 31)
    )
    with pytest.raises(InvalidArgument, match="share"):
        EngineConfig(fusion_weight=20.0, fusion_rule="z")
    with pytest.raises(InvalidArgument, match="fusion_rule"):
        EngineConfig(fusion_rule="max")
    with pytest.raises(InvalidArgument, match="needs fusion_weight"):
        EngineConfig(fusion_rule="z")


def test_a_model_with_a_bad_fusion_mode_is_refused(tmp_path: Path) -> None:
    from twostage.errors import InvalidModel
    from twostage.train.export import export_folder

    onnx = export_folder(random_cross_encoder(tmp_path / "ce", seed=6), tmp_path / "onnx")
    settings = json.loads((onnx / "twostage.json").read_text())
    for bad in ({"mode": "max"}, {"mode": "z", "first_stage_weight": 20}):
        (onnx / "twostage.json").write_text(json.dumps({**settings, "fusion": bad}))
        with pytest.raises(InvalidModel, match="fusion"):
            Reranker.load(onnx, precision="fp32")
    good = {"mode": "z", "first_stage_weight": 0.4}
    (onnx / "twostage.json").write_text(json.dumps({**settings, "fusion": good}))
    rr = Reranker.load(onnx, precision="fp32")
    assert (rr.fusion_rule, rr.fusion_weight) == ("z", 0.4)


def test_a_candidate_deleted_mid_search_still_gets_a_dense_signal(col: Collection) -> None:
    """Hybrid's fusion reads the dense similarity of every fetched candidate; one deleted
    between the fetch and that read (a soak found it as a 500) ranks lowest on it."""
    eng = Engine(col, reranker=None, config=unlimited())
    keys = np.fromiter(col.store.keys(), dtype=np.uint64)[:5]
    vec = col.embed_query(QUERY)
    before = eng._similarities(vec, keys)
    gone = np.append(keys, np.uint64(2**40))  # a key no longer in the store
    sims = eng._similarities(vec, gone)
    assert np.isfinite(sims).all() and sims[:5] == pytest.approx(before)
    assert sims[-1] == pytest.approx(before.min())
