"""The main job on the embedded defaults, end to end on this machine: ``./dev demo``.

1. ANN: builds an index of 100k deterministic clustered 384-d vectors and prints
   recall@10 against exact search and single-query latency (p50/p99).
2. Semantic search: embeds the shipped 1,000-abstract SciFact sample with the built-in
   MiniLM-L6 encoder (int8 ONNX, exported from the packaged safetensors on first use),
   indexes it, and answers a query.

Run ``python -m twostage.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from importlib import resources

import numpy as np

from twostage import Index
from twostage.synthetic import clustered_vectors, queries


def ann_demo(n: int, dim: int = 384, n_queries: int = 200, k: int = 10) -> None:
    print(f"[ann] {n:,} x {dim} clustered vectors (deterministic generator)")
    base = clustered_vectors(n, dim, seed=0)
    qs = queries(n_queries, dim, seed=0)
    t0 = time.perf_counter()
    index = Index(dim, metric="cos", dtype="f16")
    index.add(np.arange(n, dtype=np.uint64), base)
    build = time.perf_counter() - t0
    print(f"[ann] built f16 HNSW (M=16, efC=128) in {build:.1f} s ({n / build:,.0f} vectors/s)")
    sims = qs @ base.T
    exact = np.argpartition(-sims, k, axis=1)[:, :k]
    for ef in (32, 64, 128):
        lat = []
        found = []
        for q in qs:
            t = time.perf_counter()
            r = index.search(q, k, ef=ef)
            lat.append((time.perf_counter() - t) * 1e3)
            found.append(r.keys)
        rec = np.mean([len(set(f) & set(e)) / k for f, e in zip(found, exact, strict=True)])
        p50, p99 = np.percentile(lat, [50, 99])
        print(f"[ann] ef={ef:<4} recall@{k}={rec:.3f}  latency p50={p50:.3f} ms p99={p99:.3f} ms")


def search_demo(query: str, k: int = 5) -> None:
    from twostage.encoder import Encoder

    data = resources.files("twostage") / "data" / "scifact-1k.corpus.jsonl.gz"
    with gzip.open(data.open("rb"), "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    t0 = time.perf_counter()
    encoder = Encoder.load("minilm-l6", precision="int8")
    print(f"[search] loaded {encoder!r} in {time.perf_counter() - t0:.1f} s")
    t0 = time.perf_counter()
    vectors = encoder.encode([f"{d['title']}. {d['text']}" for d in docs], batch_size=32)
    took = time.perf_counter() - t0
    print(
        f"[search] embedded {len(docs):,} SciFact abstracts in {took:.1f} s "
        f"({len(docs) / took:,.0f} docs/s)"
    )
    index = Index(encoder.dim, metric="cos")
    index.add(np.arange(len(docs), dtype=np.uint64), vectors)
    t0 = time.perf_counter()
    qv = encoder.encode([query], kind="query")[0]
    hits = index.search(qv, k)
    took = (time.perf_counter() - t0) * 1e3
    print(f"[search] query: {query!r} ({took:.1f} ms: encode + ANN)")
    for rank, (key, dist) in enumerate(hits.to_list(), start=1):
        d = docs[key]
        print(f"  {rank}. [{1 - dist:.3f}] {d['title'][:100]}  (doc {d['_id']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the ANN demo")
    parser.add_argument(
        "--query", default="Vitamin D deficiency is associated with a higher risk of infection."
    )
    parser.add_argument("--skip-ann", action="store_true")
    args = parser.parse_args(argv)
    if not args.skip_ann:
        ann_demo(args.n)
    search_demo(args.query)


if __name__ == "__main__":
    main()
