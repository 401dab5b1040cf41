"""The main job on the embedded defaults, end to end on this machine: ``./dev demo``.

1. Models: the built-in MiniLM-L6 encoder and the cross-encoder reranker, both shipped in the
   package as int8 ONNX.
2. Corpus: the Python standard library's own documentation on this machine (language
   reference topics and docstrings, read without importing anything), split into passages:
   no download. Indexed with the resumable ingest pipeline into a collection under the cache.
3. Two-stage search for a few questions, printing hits and per-stage timings.

``--ann`` also runs the ANN demo (recall and latency on 100k synthetic vectors).
Run ``python -m twostage.demo --help`` for options.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from twostage import Index
from twostage.synthetic import clustered_vectors, queries

QUESTIONS = [
    "how do I read a gzip compressed file",
    "run a shell command and capture its output",
    "what happens when an exception is raised inside a with statement",
    "sort a list of dictionaries by one key",
    "parse command line options with help messages",
]


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


def write_stdlib_corpus(path: Path, limit: int) -> int:
    """The stdlib documentation passages as BEIR JSONL (written once, then reused)."""
    from twostage.stdlib_docs import stdlib_docs

    if path.is_file():
        with open(path) as f:
            return sum(1 for _ in f)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    n = 0
    with open(tmp, "w") as f:
        for d in stdlib_docs(limit):
            row = {"_id": d.id, "title": d.title, "text": d.text, "metadata": d.metadata}
            f.write(json.dumps(row) + "\n")
            n += 1
    tmp.replace(path)
    return n


def search_demo(passages: int, out: Path | None, questions: list[str], depth: int | None) -> None:
    from twostage._models import cache_home
    from twostage.cli import render
    from twostage.collection import Collection
    from twostage.config import default_reranker
    from twostage.encoder import Encoder
    from twostage.engine import Engine
    from twostage.ingest import build
    from twostage.reranker import Reranker

    t0 = time.perf_counter()
    encoder = Encoder.load("minilm-l6")
    took = time.perf_counter() - t0
    print(f"[models] encoder {encoder.name} ({encoder.precision}) ready in {took:.1f} s")
    name = default_reranker()
    reranker = None
    if name is None:
        print("[models] no shipped reranker in this install: the first stage answers alone")
    else:
        t0 = time.perf_counter()
        reranker = Reranker.load(name)
        print(f"[models] reranker {reranker.version} ready in {time.perf_counter() - t0:.1f} s")

    py = f"py{sys.version_info.major}.{sys.version_info.minor}"
    root = out or cache_home() / "demo"
    corpus = root / f"stdlib-docs-{py}-{passages}.jsonl"
    n = write_stdlib_corpus(corpus, passages)
    print(f"[corpus] {n:,} passages of this Python's own documentation: {corpus}")
    folder = root / f"stdlib-docs-{py}-{passages}"
    report = build(corpus, folder, encoder=encoder, progress=None)
    print("[index] " + str(report).replace("\n", "\n[index] "))

    with Collection.open(folder, encoder) as col:
        engine = Engine(col, reranker=reranker)
        print(f"[engine] defaults: {engine.defaults}")
        for q in questions:
            print()
            print(render(engine.search(q, k=5, depth=depth)))


def main(argv: list[str] | None = None) -> None:
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--passages", type=int, default=2000, help="stdlib passages to index")
    parser.add_argument(
        "--depth", type=int, default=None, help="candidates to rerank (default: the model's)"
    )
    parser.add_argument("--out", type=Path, default=None, help="where the collection goes")
    parser.add_argument("--query", action="append", help="ask this instead (repeatable)")
    parser.add_argument("--ann", action="store_true", help="also run the 100k ANN demo")
    parser.add_argument("--n", type=int, default=100_000, help="vectors in the ANN demo")
    args = parser.parse_args(argv)
    if args.ann:
        ann_demo(args.n)
    search_demo(args.passages, args.out, args.query or QUESTIONS, args.depth)


if __name__ == "__main__":
    main()
