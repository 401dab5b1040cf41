"""twostage.train: mining, listwise training, checkpoints, export, the shipped reranker.

Tests that need PyTorch skip where it is absent (it is the optional extra
``twostage-search[train]``).
They train for a few steps on a 1-2 layer slice of the real all-MiniLM-L6-v2 weights with
real SciFact text (the package's own 1k sample, so no ``../shared`` is needed): mechanics,
not quality. Quality is measured by the commands in TRAINING.md.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from pathlib import Path

import numpy as np
import pytest
from tinyce import minilm_checkpoint
from twostage.train.data import Judged
from twostage.train.evaluate import ndcg_at_k, rerank_run
from twostage.train.mine import MineConfig, mine_set, select_negatives

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch not installed (pip install 'twostage-search[train]')"
)
DATA = Path(__file__).resolve().parents[1] / "python" / "twostage" / "data"
SHIPPED = Path(__file__).resolve().parents[1] / "python" / "twostage" / "models" / "twostage-rerank"


def _scifact_1k() -> tuple[dict[str, str], dict[str, str], dict[str, set[str]]]:
    """The package's SciFact sample: (queries, corpus, positives) with real text."""
    with gzip.open(DATA / "scifact-1k.corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = {}
        for line in f:
            r = json.loads(line)
            corpus[str(r["_id"])] = f"{r['title']}. {r['text']}"
    queries = {}
    for line in (DATA / "scifact-1k.queries.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        queries[str(r["_id"])] = r["text"]
    pos: dict[str, set[str]] = {}
    for line in (DATA / "scifact-1k.qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0 and d in corpus:
            pos.setdefault(q, set()).add(d)
    return queries, corpus, pos


def _groups(n: int, negatives: int, seed: int = 0) -> list[dict]:
    """Real (query, positive, random negatives) groups from the SciFact sample."""
    queries, corpus, pos = _scifact_1k()
    rng = random.Random(seed)
    ids = sorted(corpus)
    rows = []
    for q in sorted(pos)[:n]:
        p = sorted(pos[q])[0]
        negs = [corpus[d] for d in rng.sample(ids, negatives + 5) if d not in pos[q]][:negatives]
        rows.append({"query": queries[q], "positive": corpus[p], "negatives": negs, "source": "t"})
    return rows


# ---- mining (no PyTorch) ---------------------------------------------------------------------


def test_select_negatives_drops_positives_and_near_positives() -> None:
    ranked = [("d1", 0.95), ("p1", 0.90), ("d2", 0.87), ("p2", 0.80), ("d3", 0.84), ("d4", 0.6)]
    negs = select_negatives(ranked, {"p1", "p2"}, 0.90, MineConfig(margin=0.05))
    assert negs == [("d3", 0.84), ("d4", 0.6)]  # d1 above, d2 within the margin: dropped
    assert (
        select_negatives(ranked, {"p1"}, 0.90, MineConfig(margin=0.0, skip_top=1))
        == [
            ("d2", 0.87),
            ("p2", 0.80),
            ("d3", 0.84),
            ("d4", 0.6),
        ][: MineConfig().keep]
    )


def test_mine_set_with_vectors_keeps_only_true_hard_negatives() -> None:
    # 1 query; the positive at cosine 0.8, one unjudged doc at 0.79 (a likely false
    # negative), hard ones at 0.6/0.5, an easy one at 0.1.
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    cos = {"pos": 0.8, "near": 0.79, "hard1": 0.6, "hard2": 0.5, "easy": 0.1}
    pids = sorted(cos)
    d = np.array([[cos[p], np.sqrt(1 - cos[p] ** 2)] for p in pids], dtype=np.float32)
    data = Judged("t", "", True, {"q": "query"}, {p: f"text {p}" for p in pids}, {"q": {"pos"}})
    rows = mine_set(data, None, MineConfig(k=5, margin=0.05), vectors=(q, d))
    assert len(rows) == 1
    assert rows[0]["positive"] == "text pos"
    assert rows[0]["negatives"] == ["text hard1", "text hard2", "text easy"]
    assert rows[0]["neg_scores"] == pytest.approx([0.6, 0.5, 0.1], abs=1e-5)


def test_bm25_mining_adds_word_matches_the_bi_encoder_ranks_low() -> None:
    # The bi-encoder (these vectors) ranks "lex" last; it is the only other document that
    # shares the query's words, so only the BM25 list brings it within k = 2.
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    cos = {"pos": 0.9, "sem1": 0.7, "sem2": 0.6, "lex": 0.1}
    text = {"pos": "zinc finger proteins", "sem1": "transcription factors",
            "sem2": "dna binding", "lex": "zinc finger sandwich recipe"}  # fmt: skip
    pids = sorted(cos)
    d = np.array([[cos[p], np.sqrt(1 - cos[p] ** 2)] for p in pids], dtype=np.float32)
    data = Judged("t", "", True, {"q": "zinc finger"}, text, {"q": {"pos"}})
    dense = mine_set(data, None, MineConfig(k=2, margin=0.05), vectors=(q, d))
    both = mine_set(data, None, MineConfig(k=2, margin=0.05, bm25=True), vectors=(q, d))
    assert text["lex"] not in dense[0]["negatives"]
    assert both[0]["negatives"][:2] == [text["sem1"], text["lex"]]  # interleaved rank by rank
    assert both[0]["neg_scores"][1] == pytest.approx(0.1, abs=1e-5)  # its cosine, as the filter saw


def test_mine_pairs_set_uses_judged_negatives_hardest_first() -> None:
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    cos = {"a": 0.9, "b": 0.2, "c": 0.7, "u": 0.5}
    pids = sorted(cos)
    d = np.array([[cos[p], np.sqrt(1 - cos[p] ** 2)] for p in pids], dtype=np.float32)
    data = Judged(
        "t", "", True, {"q": "query"}, {p: p for p in pids},
        positives={"q": {"a"}}, negatives={"q": {"b", "c"}}, candidates={"q": ["a", "b", "c", "u"]},
    )  # fmt: skip
    rows = mine_set(data, None, MineConfig(), vectors=(q, d))
    # "u" was never judged: not a negative. Judged ones come hardest first.
    assert rows[0]["negatives"] == ["c", "b"]


def test_mine_with_the_real_encoder() -> None:
    minilm_checkpoint()  # or skip
    from twostage.encoder import Encoder

    queries, corpus, pos = _scifact_1k()
    qs = sorted(pos)[:6]
    docs = sorted({d for q in qs for d in pos[q]} | set(sorted(corpus)[:150]))
    data = Judged(
        "s", "", True, {q: queries[q] for q in qs}, {d: corpus[d] for d in docs},
        {q: pos[q] for q in qs},
    )  # fmt: skip
    cfg = MineConfig(k=20, margin=0.03)
    rows = mine_set(data, Encoder.load("minilm-l6"), cfg)
    assert rows
    for r in rows:
        assert r["positive"] not in r["negatives"]
        qid = next(q for q in qs if queries[q] == r["query"])
        assert not {corpus[d] for d in pos[qid]} & set(r["negatives"])
        assert all(s <= r["pos_score"] - cfg.margin + 1e-6 for s in r["neg_scores"])
        assert r["neg_scores"] == sorted(r["neg_scores"], reverse=True)


# ---- evaluation (no PyTorch) -----------------------------------------------------------------


def test_ndcg_hand_case_and_ir_measures() -> None:
    qrels = {"q1": {"a": 2, "b": 1}, "q2": {"c": 1}}
    run = {"q1": {"b": 3.0, "x": 2.0, "a": 1.0}, "q2": {"y": 1.0}}
    # q1: DCG = 1/log2(2) + 2/log2(4) = 2; IDCG = 2 + 1/log2(3); q2: 0.
    want = (2 / (2 + 1 / np.log2(3)) + 0.0) / 2
    assert ndcg_at_k(qrels, run, 10) == pytest.approx(want)
    ir_measures = pytest.importorskip("ir_measures")
    from twostage.train.evaluate import ndcg10

    assert ndcg10(qrels, run) == pytest.approx(want, abs=1e-4)
    assert ir_measures is not None


def test_rerank_run_orders_top_depth_and_keeps_the_rest() -> None:
    cands = {"q": [("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]}
    run = rerank_run(cands, {"q": np.array([0.0, 5.0, 1.0])}, depth=3)
    assert sorted(run["q"], key=lambda d: -run["q"][d]) == ["b", "c", "a", "d"]
    fused = rerank_run(cands, {"q": np.array([0.0, 0.2, 9.0])}, depth=2, fusion=1.0)
    assert sorted(fused["q"], key=lambda d: -fused["q"][d]) == ["b", "a", "c", "d"]


# ---- training (PyTorch) ------------------------------------------------------------------------


def _cfg(tmp: Path, rows: list[dict], **kw: object):  # type: ignore[no-untyped-def]
    from twostage.train.reranker import TrainConfig

    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base = {
        "data": [data], "out": tmp / "run", "layers": [0], "steps": 6, "batch": 2,
        "negatives": 3, "max_length": 64, "lr": 1e-4, "save_every": 3, "log_every": 100,
        "threads": 2,
    }  # fmt: skip
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@needs_torch
def test_packer_matches_the_serving_reranker(tmp_path: Path) -> None:
    from twostage.reranker import Reranker
    from twostage.train.export import export_folder
    from twostage.train.model import load_pretrained, save_checkpoint
    from twostage.train.reranker import Packer, default_init

    model = load_pretrained(default_init(), [0], dropout=0.0)
    ck = save_checkpoint(model, tmp_path / "ck", default_init() / "tokenizer.json")
    out = export_folder(ck, tmp_path / "onnx", max_length=48)
    rr = Reranker.load(out, precision="fp32")
    pk = Packer(default_init() / "tokenizer.json", 48)
    q = "a rather long question about " + "many things " * 30
    for d in ["short doc", "a much longer document " * 40, ""]:
        served = rr.pack(rr.tokenize_query(q), rr.tokenize_documents([d]))
        ids, types = pk.pack(pk.ids([q])[0], pk.ids([d])[0])
        assert served.ids[0] == ids and served.type_ids[0] == types


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2-layer slice of MiniLM trained for 12 steps on 4 real groups (shared by tests)."""
    if not HAS_TORCH:
        pytest.skip("PyTorch not installed (pip install 'twostage-search[train]')")
    from twostage.train.reranker import Trainer, listwise_eval

    tmp = tmp_path_factory.mktemp("trained")
    rows = _groups(4, 3)
    cfg = _cfg(tmp, rows, layers=[0, 1], steps=12, batch=4, lr=1e-3, dropout=0.0, max_length=96)
    tr = Trainer(cfg)
    before = listwise_eval(tr.model, tr.packer, rows, negatives=3)
    for _ in range(cfg.steps):
        tr.train_step()
    after = listwise_eval(tr.model, tr.packer, rows, negatives=3)
    return {"trainer": tr, "rows": rows, "before": before, "after": after, "tmp": tmp}


@needs_torch
def test_a_few_steps_reduce_the_listwise_loss(trained: dict) -> None:
    import torch

    before, after = trained["before"], trained["after"]
    assert before == pytest.approx(np.log(4), abs=0.2)  # an untrained head: near uniform
    assert after < before - 0.3, (before, after)
    assert torch.get_num_threads() == 2


@needs_torch
def test_checkpoint_resume_gives_identical_weights(tmp_path: Path) -> None:
    import torch
    from twostage.train.reranker import Trainer

    rows = _groups(6, 4, seed=1)
    straight = Trainer(_cfg(tmp_path / "a", rows, steps=6, dropout=0.1, max_length=48))
    straight.run(log=lambda m: None)
    first = Trainer(_cfg(tmp_path / "b", rows, steps=6, dropout=0.1, max_length=48))
    first.run(log=lambda m: None, until=3)  # a run stopped half way
    resumed = Trainer(_cfg(tmp_path / "b", rows, steps=6, dropout=0.1, max_length=48))
    assert resumed.resume() and resumed.step == 3
    resumed.run(log=lambda m: None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(
        a["classifier.weight"],
        Trainer(_cfg(tmp_path / "c", rows)).model.state_dict()["classifier.weight"],
    )


@needs_torch
def test_exported_onnx_matches_pytorch(trained: dict) -> None:
    from twostage.reranker import Reranker
    from twostage.train.export import export_folder
    from twostage.train.reranker import score_pairs

    tr, rows, tmp = trained["trainer"], trained["rows"], trained["tmp"]
    ck = tr.save_model(tmp / "model")
    out = export_folder(ck, tmp / "onnx")
    assert {p.name for p in out.iterdir()} >= {"model.onnx", "model_int8.onnx", "tokenizer.json"}
    pairs = [(r["query"], d) for r in rows for d in [r["positive"], *r["negatives"]]]
    ref = score_pairs(tr.model, tr.packer, pairs)
    assert ref.std() > 0.05  # trained: the scores do differ, the comparison is not vacuous
    fp32 = Reranker.load(out, precision="fp32")
    assert fp32.max_length == 96
    got = np.concatenate([fp32.score(q, [d]) for q, d in pairs])
    np.testing.assert_allclose(got, ref, atol=1e-4)
    int8 = Reranker.load(out, precision="int8")  # compact: int8 word embeddings too
    got8 = np.concatenate([int8.score(q, [d]) for q, d in pairs])
    assert np.corrcoef(got8, ref)[0, 1] > 0.98
    assert (out / "model_int8.onnx").stat().st_size < (out / "model.onnx").stat().st_size / 3
    # The mean-pooling checkpoint is not a BertForSequenceClassification: loading it as one
    # (the [CLS] head) must fail, not score wrong.
    from twostage.errors import InvalidModel

    with pytest.raises(InvalidModel, match="pooler"):
        Reranker.load(ck, precision="fp32")


# ---- the shipped default (no PyTorch) --------------------------------------------------------


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no shipped reranker in python/twostage/models")
def test_shipped_reranker_ranks_scifact_positives_above_random_documents() -> None:
    from twostage.reranker import Reranker

    rr = Reranker.load("twostage-rerank")
    assert rr.precision == "int8"
    queries, corpus, pos = _scifact_1k()
    rng = random.Random(0)
    ids = sorted(corpus)
    ranks = []
    for q in sorted(pos)[:12]:
        p = sorted(pos[q])[0]
        others = [d for d in rng.sample(ids, 20) if d not in pos[q]]
        s = rr.score(queries[q], [corpus[p]] + [corpus[d] for d in others])
        ranks.append(int((s[1:] > s[0]).sum()) + 1)
    # Chance gives a mean reciprocal rank of ~0.17 among ~20 candidates.
    mrr = float(np.mean([1 / r for r in ranks]))
    assert mrr > 0.6, f"positive ranks {ranks}"


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="no shipped reranker in python/twostage/models")
def test_shipped_reranker_is_int8_only_and_small() -> None:
    from twostage.errors import ModelNotFound
    from twostage.reranker import Reranker

    files = {p.name for p in SHIPPED.iterdir()}
    assert {"model_int8.onnx", "tokenizer.json", "twostage.json", "MODEL_CARD.md"} <= files
    assert sum(p.stat().st_size for p in SHIPPED.iterdir()) < 25 * 2**20
    with pytest.raises(ModelNotFound, match=r"model\.onnx"):
        Reranker.load("twostage-rerank", precision="fp32")


@needs_torch
def test_distill_student_learns_the_teachers_margins(trained: dict) -> None:
    import torch
    from twostage.train.distill import teacher_rows
    from twostage.train.export import export_folder
    from twostage.train.reranker import Trainer, margin_mse_loss, score_pairs

    tr, rows, tmp = trained["trainer"], trained["rows"], trained["tmp"]
    teacher = export_folder(tr.save_model(tmp / "teacher"), tmp / "teacher-onnx", fp32=False)
    scored = teacher_rows(rows, str(teacher), neg_pool=3)
    assert all(len(r["teacher"]) == 1 + len(r["negatives"]) for r in scored)
    cfg = _cfg(tmp / "student", scored, layers=[0], steps=15, batch=4, lr=1e-3, dropout=0.0)
    cfg.loss = "margin_mse"
    student = Trainer(cfg)
    group = 1 + cfg.negatives

    def loss() -> float:
        pairs = [(r["query"], d) for r in scored for d in [r["positive"], *r["negatives"]]]
        s = torch.from_numpy(score_pairs(student.model, student.packer, pairs))
        t = torch.tensor([x for r in scored for x in r["teacher"]])
        return float(margin_mse_loss(s, t, group))

    before = loss()
    for _ in range(cfg.steps):
        student.train_step()
    assert loss() < 0.5 * before


@needs_torch
def test_random_negatives_come_from_the_rows_source_never_a_positive(tmp_path: Path) -> None:
    from twostage.train.reranker import RandomPool, step_batch

    rows = _groups(6, 3)
    for i, r in enumerate(rows):
        r["qid"] = str(i)
    # A query with two judged positives: two rows, and neither may be the other's negative.
    rows.append(dict(rows[0], positive=rows[1]["positive"]))
    other = [dict(r, source="u", positive=r["positive"] + " (u)") for r in _groups(2, 3, seed=5)]
    for i, r in enumerate(other):
        r["qid"] = f"u{i}"
    rows += other
    pool = RandomPool.of(rows)
    assert set(pool.passages) == {"t", "u"}
    assert pool.positives[("t", "0")] == {rows[0]["positive"], rows[1]["positive"]}
    cfg = _cfg(tmp_path, rows, steps=1, batch=9, negatives=5)
    cfg.negatives_from = "random"
    hard_cfg = _cfg(tmp_path, rows, steps=1, batch=9, negatives=5)
    drawn = 0
    for step in range(8):
        pairs, teacher = step_batch(rows, step, cfg, pool)
        assert teacher is None and len(pairs) == 9 * 6
        for g in range(9):
            (q, pos), *negs = pairs[g * 6 : (g + 1) * 6]
            row = next(r for r in rows if r["query"] == q and r["positive"] == pos)
            avoid = {r["positive"] for r in rows if r["qid"] == row["qid"]}
            assert all(d in pool.passages[row["source"]] and d not in avoid for _, d in negs)
            drawn += sum(d not in row["negatives"] for _, d in negs)
        hard, _ = step_batch(rows, step, hard_cfg)
        assert [p[0] for p in hard] == [p[0] for p in pairs]  # the same rows, in order
    assert drawn > 0  # not the mined list under another name
    with pytest.raises(ValueError, match="RandomPool"):
        step_batch(rows, 0, cfg)


@needs_torch
def test_pointwise_loss_is_binary_cross_entropy_with_the_positive_first() -> None:
    import torch
    from twostage.train.reranker import pointwise_loss

    s = torch.tensor([3.0, -1.0, 0.5, 2.0, 2.0, -4.0])
    want = (
        -(
            np.log(1 / (1 + np.exp(-3.0)))
            + np.log(1 - 1 / (1 + np.exp(1.0)))
            + np.log(1 - 1 / (1 + np.exp(-0.5)))
            + np.log(1 / (1 + np.exp(-2.0)))
            + np.log(1 - 1 / (1 + np.exp(-2.0)))
            + np.log(1 - 1 / (1 + np.exp(4.0)))
        )
        / 6
    )
    assert float(pointwise_loss(s, 3)) == pytest.approx(want, rel=1e-5)
    # Unlike the listwise loss, it moves when every score in a group shifts together.
    from twostage.train.reranker import listwise_loss

    assert float(listwise_loss(s + 5, 3)) == pytest.approx(float(listwise_loss(s, 3)), rel=1e-5)
    assert float(pointwise_loss(s + 5, 3)) != pytest.approx(float(pointwise_loss(s, 3)), rel=1e-3)


@needs_torch
def test_a_few_pointwise_steps_on_random_negatives_train(tmp_path: Path) -> None:
    import torch
    from twostage.train.reranker import Trainer, pointwise_loss, score_pairs

    rows = _groups(4, 3)
    cfg = _cfg(tmp_path, rows, layers=[0], steps=12, batch=4, lr=1e-3, dropout=0.0, max_length=64)
    cfg.loss, cfg.negatives_from, cfg.negatives = "pointwise", "random", 3
    tr = Trainer(cfg)
    fixed = [(r["query"], d) for r in rows for d in [r["positive"], *r["negatives"]]]

    def loss() -> float:
        return float(pointwise_loss(torch.from_numpy(score_pairs(tr.model, tr.packer, fixed)), 4))

    before = loss()
    for _ in range(cfg.steps):
        tr.train_step()
    assert loss() < before - 0.1, (before, loss())
    cfg.loss = "pairwise"
    with pytest.raises(ValueError, match="unknown loss 'pairwise'"):
        tr.train_step()


def test_first_stage_cache_is_keyed_by_the_texts(tmp_path: Path) -> None:
    """The same ids with other words must not read vectors cached for the first words."""
    from twostage.train.evaluate import first_stage

    queries = {"q": "how do cats purr"}
    cats = {"a": "Cats purr with their larynx.", "b": "Bridges carry traffic over rivers."}
    swapped = {"a": cats["b"], "b": cats["a"]}
    first = first_stage(queries, cats, 2, cache=tmp_path)
    second = first_stage(queries, swapped, 2, cache=tmp_path)
    assert first["q"][0][0] == "a" and second["q"][0][0] == "b"
    assert len(list(tmp_path.glob("docs-*.npy"))) == 2


def test_ndcg10_counts_a_query_missing_from_the_run_once() -> None:
    from twostage.train.evaluate import ndcg10

    qrels = {"a": {"d1": 1}, "b": {"d2": 1}}
    run = {"a": {"d1": 1.0}}  # "b" retrieved nothing: it scores 0, once
    assert ndcg10(qrels, run) == pytest.approx(0.5)
    assert ndcg10(qrels, run) == pytest.approx(ndcg_at_k(qrels, run, 10))
