"""The reranker sanity set (``python/twostage/data/sanity.jsonl``): make it, and measure the gate.

``make`` writes the set from the package's own SciFact sample (``data/scifact-1k.*``, CC BY 4.0
claims and judgments, ODC-By 1.0 abstracts): 40 test claims drawn with ``random.Random(0)``,
each with its first judged abstract (relevance 1) and 5 unjudged ones (relevance 0): the 2
that BM25 (the package's tantivy index over the 1,000 abstracts) ranks highest, and 3 drawn
at random; each passage is the title and the first 50 words of the abstract, in a shuffled
order. Nothing is tuned on it: the gate's threshold comes from the null distribution
(:mod:`twostage.sanity`).

``measure`` scores the set with the shipped reranker (time and accuracy), with copies of it
whose classification head is randomised (seeds 0..n-1) or zeroed, and, where the
all-MiniLM-L6-v2 checkpoint is installed, with that pretrained body under a freshly
initialised classification head (the model a swap once accepted)::

    python benches/sanity_set.py make
    python benches/sanity_set.py measure --seeds 20 --rounds 5
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np

DATA = Path(str(resources.files("twostage") / "data"))
QUERIES, HARD, RANDOM, WORDS = 40, 2, 3, 32


def make(out: Path) -> None:
    from twostage.lexical import LexicalIndex

    with gzip.open(DATA / "scifact-1k.corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = {str(r["_id"]): r for r in map(json.loads, f)}
    with open(DATA / "scifact-1k.queries.jsonl", encoding="utf-8") as f:
        claims = {str(r["_id"]): r["text"] for r in map(json.loads, f)}
    judged: dict[str, list[str]] = {}
    with open(DATA / "scifact-1k.qrels.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            q, d, _ = line.split()
            judged.setdefault(q, []).append(d)
    ids = sorted(corpus)
    lex = LexicalIndex.in_memory()
    lex.upsert(
        list(range(len(ids))),
        [f"{corpus[i].get('title', '')} {corpus[i]['text']}" for i in ids],
        seq=1,
    )
    rng = random.Random(0)
    qids = sorted(judged, key=int)
    rng.shuffle(qids)

    def passage(doc_id: str) -> str:
        r = corpus[doc_id]
        words = r["text"].split()
        text = " ".join(words[:WORDS]) + (" …" if len(words) > WORDS else "")
        return f"{r['title'].rstrip('.')}. {text}" if r.get("title") else text

    rows = []
    for q in qids[:QUERIES]:
        keys, _ = lex.search(claims[q], 50)
        hard = [ids[k] for k in keys.tolist() if ids[k] not in judged[q]][:HARD]
        pool = [i for i in ids if i not in judged[q] and i not in hard]
        negatives = hard + rng.sample(pool, RANDOM)
        docs = [(judged[q][0], 1)] + [(d, 0) for d in negatives]
        rng.shuffle(docs)
        rows.append(
            {
                "query_id": q,
                "query": claims[q],
                "documents": [{"id": d, "text": passage(d), "relevance": r} for d, r in docs],
            }
        )
    with open(out, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    pairs = sum(len(r["documents"]) for r in rows)
    print(f"{out}: {len(rows)} queries, {pairs} pairs, {out.stat().st_size:,} bytes")


def broken_head(src: Path, out: Path, seed: int | None) -> Path:
    """A copy of the ONNX reranker in ``src`` with its head's int8 weights random (``seed``)
    or zero (``None``: every pair gets the bias, a constant)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(src / "model_int8.onnx"))
    for init in model.graph.initializer:
        if init.name == "head.weight_quantized":
            w = numpy_helper.to_array(init)
            new = (
                np.zeros_like(w)
                if seed is None
                else np.random.default_rng(seed).integers(-127, 128, w.shape).astype(w.dtype)
            )
            init.CopyFrom(numpy_helper.from_array(new, init.name))
            break
    else:
        raise SystemExit(f"{src}: no head.weight_quantized initializer")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "twostage.json"):
        shutil.copy(src / name, out / name)
    onnx.save(model, str(out / "model_int8.onnx"))
    return out


def minilm_random_head(out: Path, seed: int) -> Path | None:
    """all-MiniLM-L6-v2's pretrained body under a new classification head (N(0, 0.02), bias
    0, as transformers initialises one): a BertForSequenceClassification folder."""
    from safetensors.numpy import load_file, save_file
    from twostage._models import minilm_checkpoint
    from twostage.errors import ModelNotFound

    try:
        src = minilm_checkpoint()
    except ModelNotFound:
        return None
    weights = {
        f"bert.{k}": v
        for k, v in load_file(str(src / "model.safetensors")).items()
        if k != "embeddings.position_ids"
    }
    rng = np.random.default_rng(seed)
    weights["classifier.weight"] = (rng.standard_normal((1, 384)) * 0.02).astype(np.float32)
    weights["classifier.bias"] = np.zeros(1, np.float32)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], num_labels=1)
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
    return out


def measure(seeds: int, rounds: int, minilm: int) -> None:
    from twostage.machine import machine_info
    from twostage.reranker import Reranker
    from twostage.sanity import check_reranker

    print(json.dumps(machine_info()))
    shipped = Path(str(resources.files("twostage") / "models" / "twostage-rerank"))
    rr = Reranker.load(shipped)
    check_reranker(rr)  # warm
    times = []
    for _ in range(rounds):
        res = check_reranker(rr)
        times.append(res.ms)
    print(
        f"shipped: {res.summary()}; ms over {rounds} rounds: median {np.median(times):.0f}, "
        f"min {min(times):.0f}, max {max(times):.0f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        zero = check_reranker(Reranker.load(broken_head(shipped, Path(tmp) / "zero", None)))
        print(f"head zeroed: {zero.summary()}")
        accs = []
        for seed in range(seeds):
            res = check_reranker(Reranker.load(broken_head(shipped, Path(tmp) / f"h{seed}", seed)))
            accs.append(res.accuracy)
            print(f"head random, seed {seed}: {res.summary()}")
        refused = sum(a < res.threshold for a in accs)
        print(f"random heads: {refused} of {seeds} refused; accuracies {sorted(np.round(accs, 3))}")
        for seed in range(minilm):
            folder = minilm_random_head(Path(tmp) / f"minilm{seed}", seed)
            if folder is None:
                print("all-MiniLM-L6-v2 checkpoint not installed: no MiniLM random heads")
                break
            res = check_reranker(Reranker.load(folder, max_length=128))
            print(f"MiniLM body + new head, seed {seed}: {res.summary()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make")
    mk.add_argument("--out", type=Path, default=DATA / "sanity.jsonl")
    me = sub.add_parser("measure")
    me.add_argument("--seeds", type=int, default=20)
    me.add_argument("--rounds", type=int, default=5)
    me.add_argument("--minilm", type=int, default=5)
    a = ap.parse_args()
    if a.cmd == "make":
        make(a.out)
    else:
        measure(a.seeds, a.rounds, a.minilm)


if __name__ == "__main__":
    main()
