"""The mission's end-to-end target with the defaults, beside sentence-transformers, in one run.

twostage: ``Engine(Collection)`` with nothing passed (the shipped reranker and its measured
defaults) over SciFact test, every judged query; NDCG@10 by ir-measures, end-to-end latency
per query, candidates scored per query.

sentence-transformers, as its retrieve & rerank documentation shows it:
``SentenceTransformer.encode`` of the query, ``util.semantic_search`` over the corpus
embeddings (computed beforehand, not timed), ``CrossEncoder.predict`` on the top ``depth``
(the same depth and pair length as twostage's default), in float32 and in bfloat16
(``model_kwargs={"torch_dtype": torch.bfloat16}``). The cross-encoder carries the shipped
reranker's own weights (dequantised from its int8 ONNX file into a Hugging Face
``BertForSequenceClassification`` folder): the same 3 layers, the same FLOPs per pair. Only
the head differs: ours mean-pools the last layer, Hugging Face's pools [CLS] through a
384x384 dense layer (0.15 MFLOP a pair of ~1 GFLOP), so its scores are not ours and only
its latency is reported.

The three are timed per query in turn (the order rotates), single-process, each with the
machine's cores. sentence-transformers is a peer, never a dependency: ``pip install
sentence-transformers`` (it pulls PyTorch) into the venv first, or pass ``--no-st``::

    python benches/target.py --out target.json        # BENCHMARKS.md, "The target"
    python benches/target.py --queries 30 --no-st      # a quick look, twostage only
    python benches/target.py --no-st --clients 3       # loaded: 3 concurrent clients

``--clients N`` runs twostage alone with N threads searching at once, each its own share of
the queries (2 cores: every search competes for the CPU), to see what the budget does under
load: latency must stay bounded, fewer pairs get scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import sys
import tempfile
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from twostage import Engine, Reranker
from twostage.beir import Dataset
from twostage.evaluation import collection_for
from twostage.machine import machine_info
from twostage.metrics import per_query
from twostage.train.data import SHARED


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def dist(ms: list[float]) -> dict[str, float]:
    a = np.asarray(ms)
    return {
        "p50": round(float(np.percentile(a, 50)), 1),
        "p99": round(float(np.percentile(a, 99)), 1),
        "mean": round(float(a.mean()), 1),
        "max": round(float(a.max()), 1),
    }


def hf_folder(out: Path) -> Path:
    """The shipped reranker's weights as a Hugging Face BertForSequenceClassification."""
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import save_file

    src = resources.files("twostage") / "models" / "twostage-rerank"
    m = onnx.load(str(src / "model_int8.onnx"))
    t = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}

    def deq(prefix: str) -> np.ndarray:  # x @ W layout, per-output-channel scales
        name = next(n for n in t if n.startswith(prefix) and n.endswith("_quantized"))
        base = name[: -len("_quantized")]
        w = t[name].astype(np.float32) - t[base + "_zero_point"].astype(np.float32)
        return w * t[base + "_scale"]

    # SkipLayerNormalization inputs (x, skip, gamma, beta, bias) and BiasGelu's bias, by layer.
    sln = [n for n in m.graph.node if n.op_type == "SkipLayerNormalization"]
    gelu = [n for n in m.graph.node if n.op_type == "BiasGelu"]
    h = t["emb_ln.weight_10"].shape[0]
    pos = np.zeros((512, h), np.float32)
    pos[: t["emb.pos"].shape[0]] = t["emb.pos"]
    w: dict[str, np.ndarray] = {
        "bert.embeddings.word_embeddings.weight": t["emb.word_q"].astype(np.float32)
        * t["emb.word_scale"][:, None],
        "bert.embeddings.position_embeddings.weight": pos,
        "bert.embeddings.token_type_embeddings.weight": t["type_emb_9"],
        "bert.embeddings.LayerNorm.weight": t["emb_ln.weight_10"],
        "bert.embeddings.LayerNorm.bias": t["emb_ln.bias_11"],
        "bert.pooler.dense.weight": np.eye(h, dtype=np.float32),
        "bert.pooler.dense.bias": np.zeros(h, np.float32),
        "classifier.weight": deq("head.weight").T.copy(),
        "classifier.bias": t["head.bias"],
    }
    layers = len(sln) // 2
    for i in range(layers):
        p = f"bert.encoder.layer.{i}."
        qkv = deq(f"l{i}.qkv.weight")
        qkv_b = next(v for n, v in t.items() if n.startswith(f"l{i}.qkv.bias"))
        for j, name in enumerate(("query", "key", "value")):
            w[p + f"attention.self.{name}.weight"] = qkv[:, j * h : (j + 1) * h].T.copy()
            w[p + f"attention.self.{name}.bias"] = qkv_b[j * h : (j + 1) * h]
        a, f = sln[2 * i], sln[2 * i + 1]
        w[p + "attention.output.dense.weight"] = deq(f"l{i}.attn_out.weight").T.copy()
        w[p + "attention.output.dense.bias"] = t[a.input[4]]
        w[p + "attention.output.LayerNorm.weight"] = t[a.input[2]]
        w[p + "attention.output.LayerNorm.bias"] = t[a.input[3]]
        w[p + "intermediate.dense.weight"] = deq(f"l{i}.ffn_in.weight").T.copy()
        w[p + "intermediate.dense.bias"] = t[gelu[i].input[1]]
        w[p + "output.dense.weight"] = deq(f"l{i}.ffn_out.weight").T.copy()
        w[p + "output.dense.bias"] = t[f.input[4]]
        w[p + "output.LayerNorm.weight"] = t[f.input[2]]
        w[p + "output.LayerNorm.bias"] = t[f.input[3]]
    out.mkdir(parents=True, exist_ok=True)
    save_file(w, str(out / "model.safetensors"))
    config = {
        "architectures": ["BertForSequenceClassification"],
        "model_type": "bert",
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": 12,
        "intermediate_size": 4 * h,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "type_vocab_size": 2,
        "vocab_size": w["bert.embeddings.word_embeddings.weight"].shape[0],
        "num_labels": 1,
    }
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (out / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "BertTokenizerFast", "do_lower_case": True})
    )
    return out


class STPipeline:
    """sentence-transformers' retrieve & rerank, one dtype."""

    def __init__(
        self, corpus: list[str], ce_dir: Path, dtype: str, depth: int, max_length: int
    ) -> None:
        import torch
        from sentence_transformers import CrossEncoder, SentenceTransformer
        from twostage._models import minilm_checkpoint

        kw = {"torch_dtype": torch.bfloat16} if dtype == "bf16" else {}
        self.bi = SentenceTransformer(str(minilm_checkpoint()), device="cpu", model_kwargs=kw)
        self.ce = CrossEncoder(str(ce_dir), device="cpu", max_length=max_length, model_kwargs=kw)
        self.corpus = corpus
        self.depth = depth
        t = time.perf_counter()
        self.emb = self.bi.encode(corpus, convert_to_tensor=True, batch_size=64)
        _log(f"st {dtype}: corpus embedded in {time.perf_counter() - t:.0f} s (not timed)")

    def search(self, query: str) -> list[int]:
        from sentence_transformers import util

        q = self.bi.encode(query, convert_to_tensor=True)
        hits = util.semantic_search(q, self.emb, top_k=self.depth)[0]
        pairs = [[query, self.corpus[h["corpus_id"]]] for h in hits]
        scores = self.ce.predict(pairs)
        order = np.argsort(-np.asarray(scores, dtype=np.float32), kind="stable")
        return [hits[i]["corpus_id"] for i in order]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--queries", type=int, default=0, help="first N test queries (0: all)")
    ap.add_argument("--no-st", action="store_true", help="twostage only")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--clients", type=int, default=1, help="concurrent searches (twostage only)")
    ap.add_argument("--model", default=None, help="another reranker folder, with its defaults")
    a = ap.parse_args()
    if a.clients > 1:
        a.no_st = True

    ds = Dataset.load(SHARED / "data" / "scifact", "test")
    col = collection_for(ds)
    # The defaults: nothing passed (or another model, which brings its own defaults).
    engine = Engine(col) if a.model is None else Engine(col, reranker=Reranker.load(a.model))
    d = engine.defaults
    rr = engine.reranker
    assert rr is not None
    _log(f"twostage defaults: {d}, reranker {rr.version}, max_length {rr.max_length}")
    qids = sorted(ds.queries)[: a.queries or None]

    systems: dict[str, Any] = {"twostage": None}
    if not a.no_st:
        corpus_ids, corpus = [], []
        with gzip.open(ds.corpus, "rt", encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                corpus_ids.append(str(row["_id"]))
                corpus.append(f"{row.get('title', '')}. {row['text']}".strip(". "))
        ce_dir = hf_folder(Path(tempfile.mkdtemp()) / "ce")
        for dtype in ("fp32", "bf16"):
            systems[f"st-{dtype}"] = STPipeline(corpus, ce_dir, dtype, d.depth, rr.max_length)

    lat: dict[str, list[float]] = {s: [] for s in systems}
    responses: dict[str, Any] = {}  # qid -> twostage's SearchResponse
    lock = threading.Lock()

    def ours(qid: str) -> None:
        t = time.perf_counter()
        resp = engine.search(ds.queries[qid])
        ms = (time.perf_counter() - t) * 1000
        with lock:
            lat["twostage"].append(ms)
            responses[qid] = resp

    for text in (ds.queries[q] + " (warm-up)" for q in qids[: a.warmup]):
        engine.search(text)
        for s in systems.values():
            if s is not None:
                s.search(text)
    if a.clients > 1:  # twostage alone, `clients` threads searching at once
        threads = [
            threading.Thread(target=lambda c=c: [ours(q) for q in qids[c :: a.clients]])
            for c in range(a.clients)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        for n, qid in enumerate(qids):
            names = list(systems)
            names = names[n % len(names) :] + names[: n % len(names)]  # rotate who goes first
            for name in names:
                s = systems[name]
                if s is None:
                    ours(qid)
                else:
                    t = time.perf_counter()
                    s.search(ds.queries[qid])
                    lat[name].append((time.perf_counter() - t) * 1000)
            if (n + 1) % 50 == 0:
                _log(f"{n + 1}/{len(qids)} queries")
    ranking = {q: [h.id for h in r.hits] for q, r in responses.items()}
    scored = [r.scored for r in responses.values()]
    degraded = sum(r.degraded for r in responses.values())
    ndcg = per_query(ds.qrels, ranking, ("nDCG@10",))["nDCG@10"]
    asked = set(qids)
    ndcg = {q: v for q, v in ndcg.items() if q in asked}
    res: dict[str, Any] = {
        "command": "python benches/target.py " + " ".join(sys.argv[1:]),
        "machine": machine_info(),
        "defaults": dataclasses.asdict(d),
        "reranker": rr.version,
        "max_length": rr.max_length,
        "queries": len(qids),
        "clients": a.clients,
        "ndcg@10": round(float(np.mean(list(ndcg.values()))), 4),
        "scored": {
            "min": int(min(scored)),
            "p1": float(np.percentile(scored, 1)),
            "median": float(np.median(scored)),
        },
        "degraded": degraded,
        "latency_ms": {s: dist(v) for s, v in lat.items()},
    }
    for s in systems:
        if s != "twostage":
            res[f"speedup_vs_{s}"] = {
                k: round(res["latency_ms"][s][k] / res["latency_ms"]["twostage"][k], 2)
                for k in ("p50", "p99")
            }
    print(json.dumps(res, indent=1))
    if a.out:
        a.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
