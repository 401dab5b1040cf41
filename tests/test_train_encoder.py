"""twostage.train.encoder: batches, the MNRL loss, a few training steps, export, resume.

The batching and metric tests need no PyTorch. The training tests skip where it is absent
(the optional extra ``twostage-search[train]``); they train a 1-layer slice of the real
all-MiniLM-L6-v2 on real SciFact text from the package's 1k sample: mechanics, not quality
(the quality figures are in TRAINING.md).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinyce import minilm_checkpoint
from twostage.train.encoder import (
    EncoderTrainConfig,
    Schedule,
    epoch_batches,
    retrieval_metrics,
    step_texts,
)

HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(
    not HAS_TORCH, reason="PyTorch not installed (pip install 'twostage-search[train]')"
)
DATA = Path(__file__).resolve().parents[1] / "python" / "twostage" / "data"


def _rows(n: int, negatives: int, seed: int = 0) -> list[dict[str, Any]]:
    """Mined-style rows from the package's SciFact sample: real queries and positives,
    random documents as the 'mined' negatives."""
    with gzip.open(DATA / "scifact-1k.corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = {str(r["_id"]): f"{r['title']}. {r['text']}" for r in map(json.loads, f)}
    lines = (DATA / "scifact-1k.queries.jsonl").read_text(encoding="utf-8").splitlines()
    queries = {str(r["_id"]): r["text"] for r in map(json.loads, lines)}
    pos: dict[str, set[str]] = {}
    for line in (DATA / "scifact-1k.qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0 and d in corpus:
            pos.setdefault(q, set()).add(d)
    rng = random.Random(seed)
    ids = sorted(corpus)
    rows = []
    for q in sorted(pos)[:n]:
        p = sorted(pos[q])[0]
        negs = [corpus[d] for d in rng.sample(ids, negatives + 5) if d not in pos[q]]
        rows.append(
            {
                "qid": q,
                "query": queries[q],
                "positive": corpus[p],
                "negatives": negs[:negatives],
                "source": "scifact",
            }
        )
    return rows


# ---- batches and metrics (no PyTorch) ----------------------------------------------------------


def _toy_rows() -> list[dict[str, Any]]:
    rows = []
    for src, n in (("a", 23), ("b", 9)):
        for i in range(n):
            # Every third query of source a has a second row (a second positive).
            qid = f"{src}{i // 2 if src == 'a' and i % 3 == 0 else i}"
            rows.append(
                {"qid": qid, "query": qid, "positive": f"{src}-pos-{i}", "negatives": [],
                 "source": src}
            )  # fmt: skip
    return rows


def test_epoch_batches_cover_every_row_once_one_source_no_repeated_query() -> None:
    rows = _toy_rows()
    batches = epoch_batches(rows, 4, seed=0, epoch=0)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(rows)))
    for b in batches:
        assert 1 <= len(b) <= 4
        assert len({rows[i]["source"] for i in b}) == 1
        assert len({rows[i]["qid"] for i in b}) == len(b)
    assert batches == epoch_batches(rows, 4, seed=0, epoch=0)  # seeded
    assert batches != epoch_batches(rows, 4, seed=0, epoch=1)


def test_schedule_runs_across_epochs_and_is_a_pure_function_of_the_step() -> None:
    rows = _toy_rows()
    a = Schedule(rows, 4, seed=3)
    n0 = a.epoch_length(0)
    steps = [a(s) for s in range(3 * n0)]
    assert a.epoch_of(n0 - 1) == 0 and a.epoch_of(n0) == 1
    b = Schedule(rows, 4, seed=3)
    assert b(2 * n0 + 1) == steps[2 * n0 + 1]  # straight to a later step: same batch


def test_step_texts_masks_a_duplicate_positive_but_not_its_own_column() -> None:
    rows = [
        {"qid": "1", "query": "q1", "positive": "same", "negatives": ["n1", "n2"], "source": "s"},
        {"qid": "2", "query": "q2", "positive": "other", "negatives": ["same"], "source": "s"},
        {"qid": "3", "query": "q3", "positive": "same", "negatives": ["n3"], "source": "s"},
    ]
    cfg = EncoderTrainConfig(data=[], out=Path("unused"), negatives=1, neg_pool=2)
    queries, docs, mask = step_texts(rows, [0, 1, 2], step=0, cfg=cfg)
    assert queries == ["q1", "q2", "q3"] and docs[:3] == ["same", "other", "same"]
    assert len(docs) == 6 and docs[4] == "same"  # row 2's only negative
    assert mask[0].tolist() == [False, False, True, False, True, False]
    assert not mask[1].any()  # "same" is a true negative for q2
    assert mask[2].tolist() == [True, False, False, False, True, False]


def test_retrieval_metrics_hand_case() -> None:
    pytest.importorskip("ir_measures")
    qrels = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}
    cands = {
        "q1": [("a", 0.9), ("x", 0.8)] + [(f"f{i}", 0.5 - i / 1000) for i in range(98)],
        "q2": [("y", 0.9), ("c", 0.8)],
    }  # q3 is missing from the run: it scores 0 on both
    m = retrieval_metrics(qrels, cands)
    # q1: 1 / (1 + 1/log2(3)); q2: (1/log2(3)) / 1.
    want = (1 / (1 + 1 / np.log2(3)) + 1 / np.log2(3) + 0) / 3
    assert m["ndcg@10"] == pytest.approx(want, abs=1e-4)
    assert m["recall@100"] == pytest.approx((0.5 + 1 + 0) / 3, abs=1e-4)


# ---- training (PyTorch) ------------------------------------------------------------------------


def _cfg(tmp: Path, rows: list[dict[str, Any]], **kw: Any) -> EncoderTrainConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    base: dict[str, Any] = {
        "data": [data], "out": tmp / "run", "layers": [0], "steps": 6, "batch": 4,
        "negatives": 1, "neg_pool": 3, "max_length": 64, "query_max_length": 32, "lr": 1e-4,
        "save_every": 3, "log_every": 100, "threads": 2,
    }  # fmt: skip
    base.update(kw)
    return EncoderTrainConfig(**base)


def _batch_loss(tr: Any, rows: list[dict[str, Any]]) -> float:
    """The MNRL loss over all rows at once, eval mode, first negative each: no sampling."""
    import torch
    from twostage.train.encoder import embed, mnrl_loss

    tr.model.eval()
    with torch.no_grad():
        q = embed(tr.model, tr.queries, [r["query"] for r in rows])
        docs = [r["positive"] for r in rows] + [r["negatives"][0] for r in rows]
        d = embed(tr.model, tr.docs, docs)
        return float(mnrl_loss(q, d, tr.cfg.scale))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 1-layer slice of MiniLM trained for 12 steps on 8 real rows (shared by tests)."""
    if not HAS_TORCH:
        pytest.skip("PyTorch not installed (pip install 'twostage-search[train]')")
    minilm_checkpoint()  # or skip
    from twostage.train.encoder import EncoderTrainer

    tmp = tmp_path_factory.mktemp("enc")
    rows = _rows(8, 3)
    tr = EncoderTrainer(_cfg(tmp, rows, steps=12, batch=8, lr=3e-4, dropout=0.0))
    before = _batch_loss(tr, rows)
    info = tr.run(progress=False, log=None)
    return {"trainer": tr, "rows": rows, "before": before, "after": _batch_loss(tr, rows),
            "info": info, "tmp": tmp}  # fmt: skip


@needs_torch
def test_a_few_steps_reduce_the_mnrl_loss(trained: dict[str, Any]) -> None:
    import torch

    before, after = trained["before"], trained["after"]
    assert after < before - 0.2, (before, after)
    info = trained["info"]
    assert info["steps"] == 12 and info["pairs"] == 12 * 8 and info["stopped"] == "steps"
    log = [
        json.loads(x) for x in (trained["tmp"] / "run" / "train_log.jsonl").read_text().splitlines()
    ]
    assert log[-1]["step"] == 12 and log[-1]["pairs_s"] > 0
    assert torch.get_num_threads() == 2


@needs_torch
def test_export_loads_with_encoder_load_and_matches_pytorch(trained: dict[str, Any]) -> None:
    from twostage.encoder import Encoder
    from twostage.train.encoder import encode_texts
    from twostage.train.export import export_encoder_folder

    tr, rows, tmp = trained["trainer"], trained["rows"], trained["tmp"]
    ck = tr.save_model(tmp / "model")
    out = export_encoder_folder(ck, tmp / "encoder")
    assert {p.name for p in out.iterdir()} == {
        "model.onnx", "model_int8.onnx", "tokenizer.json", "twostage.json"
    }  # fmt: skip
    texts = [rows[0]["query"], rows[0]["positive"], "short", "a long text " * 80, ""]
    ref = encode_texts(tr.model, tr.docs, texts)
    fp32 = Encoder.load(out, precision="fp32")
    assert fp32.max_length == 64 and fp32.normalize and fp32.dim == 384
    np.testing.assert_allclose(fp32.encode(texts), ref, atol=1e-4)
    int8 = Encoder.load(out)
    cos = (int8.encode(texts) * ref).sum(axis=1)
    assert cos.min() > 0.97, cos
    # The checkpoint folder itself (a Hugging Face BertModel) loads too, exported on first use.
    direct = Encoder.load(ck, precision="fp32")
    np.testing.assert_allclose(direct.encode(texts), ref, atol=1e-4)
    # The exported folder keeps the checkpoint's identity: a collection embedded by either
    # opens with the other.
    assert fp32.fingerprint == direct.fingerprint
    assert int8.fingerprint == Encoder.load(ck).fingerprint
    # Training moved the weights: the export is not the untrained slice.
    base = _untrained(tmp)
    assert np.abs(encode_texts(base.model, base.docs, texts) - ref).max() > 1e-3


def _untrained(tmp: Path) -> Any:
    """The same 1-layer slice of MiniLM, before any step."""
    from twostage.train.encoder import EncoderTrainer

    return EncoderTrainer(_cfg(tmp / "untrained", _rows(2, 1), dropout=0.0))


@needs_torch
def test_checkpoint_resume_gives_identical_weights(tmp_path: Path) -> None:
    minilm_checkpoint()  # or skip
    import torch
    from twostage.train.encoder import EncoderTrainer

    rows = _rows(10, 2, seed=1)
    straight = EncoderTrainer(_cfg(tmp_path / "a", rows, steps=6, dropout=0.1))
    straight.run(progress=False)
    first = EncoderTrainer(_cfg(tmp_path / "b", rows, steps=6, dropout=0.1))
    first.run(progress=False, until=3)  # a run stopped half way
    resumed = EncoderTrainer(_cfg(tmp_path / "b", rows, steps=6, dropout=0.1))
    assert resumed.resume() and resumed.step == 3
    resumed.run(progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    frozen = "bert.word.weight"
    fresh = EncoderTrainer(_cfg(tmp_path / "c", rows)).model.state_dict()
    assert torch.equal(a[frozen], fresh[frozen])  # word embeddings frozen by default
    assert not torch.equal(a["bert.layers.0.query.weight"], fresh["bert.layers.0.query.weight"])
