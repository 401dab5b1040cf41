"""The ensemble-teacher lever (issue 12): teach the shipped student the fused score.

The shipped reranker's logit alone orders candidates worse than the hybrid first stage; only
fused with the cosine and BM25 does it add. Here its own fused score becomes the target: a
student that reproduces ``logit + cosine + BM25`` from the text alone would carry the
first-stage signals inside its logit. Three steps, each a subcommand:

``recover``: the shipped int8 ONNX graph back to a PyTorch checkpoint (config.json +
model.safetensors, Hugging Face names), dequantised (the per-channel int8 weights times their
scales), so training starts from the shipped student, not from MiniLM. Position rows past the
graph's 128 come from MiniLM (never used at 128 tokens). Checked: the recovered model's fp32
logits against the int8 graph's on real pairs (r 0.984 measured: dynamic int8 activations
differ from fp32; a wrong mapping gives r near 0), and, once re-exported and re-quantised
(``python -m twostage.train export RECOVERED OUT --int8-only``), it scored 120 pairs exactly
as the shipped file.

``score``: mined rows (``python -m twostage.train mine --bm25``) with ``teacher`` = the
ensemble score of the positive and each negative: ``sd · (a · z(logit) + b · z(cos) + c ·
z(bm25))``, z-scores over the row's own list, ``sd`` the logit's spread in that list (so the
Margin-MSE targets keep the logit's scale). Logit: the shipped model at 128 tokens; cosine:
MiniLM int8; BM25: the engine's own (:class:`twostage.lexical.LexicalIndex`, tantivy) over
the passages the set's rows name. The weights (0.4, 0.3, 0.3) were set by hand before any
result, not fitted. (The 2026-12-05 run below scored BM25 with a regex-token Okapi of its
own, k1 0.9 and b 0.4, in commit 176f9d0; it now uses the engine's, which is the BM25 the
fusion it teaches reads. The two teachers agree at r 0.985 on liveqa-med's rows.)

Then ``distill`` (it reuses the teacher-scored files already in ``OUT/teacher``). The run
measured 2026-12-05 (TRAINING.md, "What was measured to matter"; ~25 min on 2 Zen 4 cores)::

    python -m twostage.train mine --out MINED --sets scifact,pubmedqa,liveqa-med,medquad \
      --max-queries medquad=3000 --bm25
    python benches/ensemble_teacher.py recover --out SHIPPED-PT
    python benches/ensemble_teacher.py score --mined MINED --out S3E/teacher
    python -m twostage.train distill --data MINED --sets liveqa-med,medquad,pubmedqa,scifact \
      --out S3E --teacher ensemble --init SHIPPED-PT --student-layers 0,1,2 --steps 2500 \
      --batch 4 --negatives 7 --neg-pool 7 --max-length 128 --lr 1e-4 --head-lr-mult 3 \
      --bf16 --threads 2 --repeat scifact=3 --seed 0 --save-every 500
    python -m twostage.train export S3E/model S3E-onnx --int8-only
    python benches/second_stage.py collect --model S3E-onnx --mined MINED --out e.pkl \
      --lengths 64,128 --depth 100 --stages hybrid
    python benches/second_stage.py fit e.pkl --stages hybrid --depths 50 --lengths 64,128
    python benches/second_stage.py fit-two e.pkl --model S3E-onnx --stages hybrid --plans 50:10
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "python" / "twostage" / "models" / "twostage-rerank"


def recover(out: Path) -> None:
    import onnx
    from onnx import numpy_helper
    from safetensors.numpy import load_file, save_file
    from twostage._models import minilm_checkpoint
    from twostage.train.model import CrossEncoderConfig

    g = onnx.load(str(SHIPPED / "model_int8.onnx")).graph
    w = {t.name: numpy_helper.to_array(t) for t in g.initializer}

    def named(prefix: str) -> str:
        (hit,) = [k for k in w if k.startswith(prefix) and k.endswith("_quantized")]
        return hit[: -len("_quantized")]

    def deq(base: str) -> np.ndarray:  # (in, out) -> HF Linear (out, in)
        q = w[base + "_quantized"].astype(np.float32)
        zp = w[base + "_zero_point"].astype(np.float32)
        return ((q - zp) * w[base + "_scale"]).T.copy()

    # The constants each layer's fused ops take, read off the graph's nodes.
    skip = [n for n in g.node if n.op_type == "SkipLayerNormalization"]
    gelu = [n for n in g.node if n.op_type in ("BiasGelu", "FastGelu")]
    mini = load_file(str(minilm_checkpoint() / "model.safetensors"))
    pos = mini.get("embeddings.position_embeddings.weight")
    pos = np.array(pos if pos is not None else mini["bert.embeddings.position_embeddings.weight"])
    pos[: w["emb.pos"].shape[0]] = w["emb.pos"]
    s: dict[str, np.ndarray] = {
        "bert.embeddings.word_embeddings.weight": w["emb.word_q"].astype(np.float32)
        * w["emb.word_scale"][:, None],
        "bert.embeddings.position_embeddings.weight": pos,
        "bert.embeddings.token_type_embeddings.weight": _one(w, "type_emb"),
        "bert.embeddings.LayerNorm.weight": _one(w, "emb_ln.weight"),
        "bert.embeddings.LayerNorm.bias": _one(w, "emb_ln.bias"),
    }
    n_layers = len(gelu)
    for i in range(n_layers):
        p = f"bert.encoder.layer.{i}."
        qkv = deq(named(f"l{i}.qkv.weight"))
        qkv_b = _one(w, f"l{i}.qkv.bias")
        for j, part in enumerate(("query", "key", "value")):
            s[p + f"attention.self.{part}.weight"] = qkv[j * 384 : (j + 1) * 384].copy()
            s[p + f"attention.self.{part}.bias"] = qkv_b[j * 384 : (j + 1) * 384].copy()
        ln1, ln2 = skip[2 * i], skip[2 * i + 1]
        assert ln1.output[0].startswith(f"l{i}.ln1") and ln2.output[0].startswith(f"l{i}.ln2")
        s[p + "attention.output.dense.weight"] = deq(named(f"l{i}.attn_out.weight"))
        s[p + "attention.output.dense.bias"] = w[ln1.input[4]]
        s[p + "attention.output.LayerNorm.weight"] = w[ln1.input[2]]
        s[p + "attention.output.LayerNorm.bias"] = w[ln1.input[3]]
        s[p + "intermediate.dense.weight"] = deq(named(f"l{i}.ffn_in.weight"))
        s[p + "intermediate.dense.bias"] = w[gelu[i].input[1]]
        s[p + "output.dense.weight"] = deq(named(f"l{i}.ffn_out.weight"))
        s[p + "output.dense.bias"] = w[ln2.input[4]]
        s[p + "output.LayerNorm.weight"] = w[ln2.input[2]]
        s[p + "output.LayerNorm.bias"] = w[ln2.input[3]]
    s["classifier.weight"] = deq("head.weight")
    s["classifier.bias"] = w["head.bias"].reshape(1)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in s.items()},
              str(out / "model.safetensors"))  # fmt: skip
    cfg = CrossEncoderConfig(num_hidden_layers=n_layers, twostage_pooling="mean")
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2))
    (out / "tokenizer.json").write_bytes((SHIPPED / "tokenizer.json").read_bytes())
    _check(out)


def _one(w: dict[str, np.ndarray], prefix: str) -> np.ndarray:
    (hit,) = [v for k, v in w.items() if k.startswith(prefix + "_") or k == prefix]
    return hit


def _check(folder: Path) -> None:
    """fp32 logits of the recovered checkpoint against the int8 graph, on real pairs."""
    import torch
    from twostage.reranker import Reranker
    from twostage.stdlib_docs import stdlib_docs
    from twostage.train.model import load_checkpoint_folder
    from twostage.train.reranker import Packer

    docs = [d.text for d in stdlib_docs(40)]
    query = "how do I read a file line by line"
    want = np.asarray(Reranker.load(str(SHIPPED)).at_length(128).score(query, docs))
    batch = Packer(SHIPPED / "tokenizer.json", 128).batch([(query, d) for d in docs])
    model = load_checkpoint_folder(folder).eval()
    with torch.no_grad():
        got = model(**batch).float().view(-1).numpy()
    r = float(np.corrcoef(got, want)[0, 1])
    print(f"recovered: fp32 vs int8 logits over {len(docs)} pairs: r = {r:.4f}, "
          f"max |diff| {np.abs(got - want).max():.3f} (logit spread {want.std():.3f})")  # fmt: skip
    if r < 0.95:
        sys.exit("recovery failed: the recovered model does not score as the shipped one")


# ---- the ensemble teacher ---------------------------------------------------------------


def score(mined: Path, out: Path, weights: tuple[float, float, float], neg_pool: int) -> None:
    from twostage.encoder import Encoder
    from twostage.filters import KeySet
    from twostage.fusion import fuse_signals
    from twostage.lexical import LexicalIndex
    from twostage.reranker import Reranker
    from twostage.train.mine import iter_jsonl, write_jsonl

    rr = Reranker.load(str(SHIPPED)).at_length(128)
    enc = Encoder.load("minilm-l6")
    w = dict(zip(("reranker", "dense", "bm25"), weights, strict=True))
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(mined.glob("*.jsonl")):
        if path.name.startswith("dev") or (out / path.name).is_file():
            continue
        rows = list(iter_jsonl([path]))
        # Every passage the set's rows name is its collection: BM25's statistics and the
        # cosines come from it, keyed by its position in ``passages``.
        passages = sorted({t for r in rows for t in (r["positive"], *r["negatives"][:neg_pool])})
        key_of = {t: i for i, t in enumerate(passages)}
        t0 = time.perf_counter()
        lex = LexicalIndex.in_memory()
        lex.upsert(np.arange(len(passages), dtype=np.uint64), passages, seq=1)
        vecs = np.concatenate(
            [enc.encode(passages[i : i + 64]) for i in range(0, len(passages), 64)]
        )
        print(f"{path.name}: {len(rows)} rows, {len(passages)} passages indexed in "
              f"{time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)  # fmt: skip
        scored = []
        t0 = time.perf_counter()
        for r in rows:
            docs = [r["positive"], *r["negatives"][:neg_pool]]
            keys = [key_of[d] for d in docs]
            logit = np.asarray(rr.score(r["query"], docs), dtype=np.float64)
            cos = vecs[keys] @ enc.encode([r["query"]], kind="query")[0]
            # The engine's BM25 over just this row's documents (0 where no query word occurs).
            mask = np.zeros(len(passages), dtype=bool)
            mask[keys] = True
            hit_keys, hit_scores = lex.search(
                r["query"], len(docs), allowed=KeySet(mask, int(mask.sum()))
            )
            hit = dict(zip(hit_keys.tolist(), hit_scores.tolist(), strict=True))
            bm25 = np.asarray([hit.get(k, 0.0) for k in keys])
            # The engine's own fusion (z-scores over this row's list), with its signal names.
            fused = fuse_signals({"reranker": logit, "dense": cos, "bm25": bm25}, w)
            target = fused * max(logit.std(), 1e-3)
            scored.append(
                {**r, "negatives": docs[1:], "teacher": [round(float(x), 5) for x in target]}
            )
        write_jsonl(scored, out / path.name)
        print(f"{path.name}: scored in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    (out / "ensemble.json").write_text(json.dumps({"teacher": "ensemble", "weights": w}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("recover")
    r.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("score")
    s.add_argument("--mined", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--weights", default="0.4,0.3,0.3", help="logit,cos,bm25")
    s.add_argument("--neg-pool", type=int, default=7)
    a = ap.parse_args()
    if a.cmd == "recover":
        recover(a.out)
    else:
        wts = tuple(float(x) for x in a.weights.split(","))
        score(a.mined, a.out, (wts[0], wts[1], wts[2]), a.neg_pool)


if __name__ == "__main__":
    main()
