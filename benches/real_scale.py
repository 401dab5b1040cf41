"""Real text at scale: the largest real corpus this machine has, grown to 1M, searched with the
collection's own default ef (issue 16).

1. The real part is a collection built with the CLI from ``benches/real_corpus.py``'s output
   (every shared passage, de-duplicated: 100,073 passages):

       .venv/bin/python benches/real_corpus.py --out /work/real/corpus.jsonl
       .venv/bin/twostage index build --corpus /work/real/corpus.jsonl --out /work/real/col

2. It is grown to ``--n-docs`` as ``benches/e2e.py`` grows SciFact: each synthetic document
   reuses a real passage's text and tokens, and its vector is the passage's real embedding
   plus Gaussian noise in that passage's local tangent space (the top r principal directions
   of its 20 nearest real neighbours' offsets, r the local intrinsic dimension by the
   Levina-Bickel MLE), re-normalised. Neighbours come from the real collection's own index
   (an all-pairs product over 100k rows would need 40 GB).
3. Real queries: every query of the shared collections and training sets (de-duplicated,
   ``--queries`` of them drawn with a fixed seed) through ``Engine(col, reranker=None)``,
   dense first stage alone, with nothing set: the ef is the collection's default (it follows
   the collection's size). Reported: first stage (encode + ANN + fetch of 100) p50/p99 against
   the mission's 20 ms, recall@100 against exact search over the stored vectors, build time,
   peak memory, index and store sizes.

    .venv/bin/python benches/real_scale.py --real /work/real/col --work /work/real
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import exact_topk, machine, perturbed, real_corpus
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.engine import Engine

SHARED = Path(__file__).resolve().parents[2] / "shared"
NEIGHBOURS = 20


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def real_queries(n: int, seed: int) -> list[str]:
    seen: dict[str, None] = {}
    for path in sorted(SHARED.glob("*/*/queries.jsonl*")):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt") as f:
            for line in f:
                text = " ".join(str(json.loads(line).get("text", "")).split())
                if text:
                    seen.setdefault(text, None)
    queries = list(seen)
    pick = np.random.default_rng(seed).permutation(len(queries))[:n]
    return [queries[i] for i in sorted(pick)]


def neighbours(col: Collection, emb: np.ndarray, keys: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Each real document's ``NEIGHBOURS`` nearest other real documents (rows) and their
    Euclidean distances, from the collection's own HNSW index at ef 256."""
    row = {k: i for i, k in enumerate(keys)}
    nb = np.empty((len(emb), NEIGHBOURS), np.int64)
    dist = np.empty((len(emb), NEIGHBOURS), np.float32)
    for start in range(0, len(emb), 4096):
        res = col.index.search(emb[start : start + 4096], k=NEIGHBOURS + 1, ef=256)
        for j, found in enumerate(res.keys):
            a = start + j
            rows = [row[int(x)] for x in found if int(x) in row and row[int(x)] != a]
            rows = (rows + rows[-1:] * NEIGHBOURS)[:NEIGHBOURS]
            nb[a] = rows
            dist[a] = np.linalg.norm(emb[rows] - emb[a], axis=1)
    return nb, dist


def intrinsic_dim_knn(dist: np.ndarray) -> float:
    """Levina-Bickel MLE from each point's sorted neighbour distances, averaged as MacKay and
    Ghahramani suggest (the inverse of the mean inverse), as ``benches/e2e.py`` does."""
    r = np.maximum(np.sort(dist, axis=1), 1e-6)
    return float(1.0 / np.mean(np.log(r[:, -1:] / r[:, :-1]).mean(axis=1)))


def tangent_bases(emb: np.ndarray, nb: np.ndarray, r: int) -> np.ndarray:
    """Per real document, the top ``r`` principal directions of its neighbours' offsets,
    scaled by their spread: [n, r, dim] (z @ B ~ the local spread)."""
    out = np.empty((len(emb), r, emb.shape[1]), np.float32)
    for a in range(len(emb)):
        _, s, vt = np.linalg.svd(emb[nb[a]] - emb[a], full_matrices=False)
        out[a] = (s[:r, None] / np.sqrt(nb.shape[1])) * vt[:r]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--real", type=Path, required=True, help="the CLI-built real collection")
    ap.add_argument("--work", type=Path, required=True, help="where the grown collection goes")
    ap.add_argument("--n-docs", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--noise", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=25_000)
    ap.add_argument("--ef", type=int, default=None, help="search ef (default: the collection's)")
    ap.add_argument("--out", type=Path, default=None, help="JSON results")
    args = ap.parse_args()

    encoder = Encoder.load("minilm-l6")
    t0 = time.perf_counter()
    with Collection.open(args.real, encoder, read_only=True) as real:
        ids, titles, texts, emb, tokens = real_corpus(real)
        by_id = real.store.keys_of(ids)
        keys = [by_id[i] for i in ids]
        n_real = len(ids)
        folder = args.work / f"grown-{args.n_docs}"
        record = folder / "real-scale-build.json"
        vec_path = folder / "vectors_f16.npy"
        if not record.is_file():  # (else the grown collection is there already)
            nb, dist = neighbours(real, emb, keys)
    if not record.is_file():
        lid = intrinsic_dim_knn(dist)
        # At most NEIGHBOURS - 1 directions are defined by NEIGHBOURS offsets.
        r = min(max(1, round(lid)), NEIGHBOURS - 1)
        basis = tangent_bases(emb, nb, r)
        prep_s = time.perf_counter() - t0
        print(f"{n_real} real passages; local intrinsic dim {lid:.1f} -> r {r}; {prep_s:.0f} s")
        if folder.exists():
            raise SystemExit(f"{folder} holds an unfinished build: remove it first")
        rng = np.random.default_rng(args.seed)
        n_syn = args.n_docs - n_real
        vectors = np.empty((args.n_docs, emb.shape[1]), np.float16)
        vectors[:n_real] = emb
        t0 = time.perf_counter()
        col = Collection.create(folder, encoder)
        col.add_embedded(
            [Document(i, x, t) for i, t, x in zip(ids, titles, texts, strict=True)], emb, tokens
        )
        order = np.resize(rng.permutation(n_real), n_syn)
        for start in range(0, n_syn, args.batch):
            src = order[start : start + args.batch]
            vec = perturbed(emb, src, args.noise, rng, basis)
            docs = [Document(f"syn-{start + j}", texts[s], titles[s]) for j, s in enumerate(src)]
            col.add_embedded(docs, vec, [tokens[s] for s in src.tolist()])
            vectors[n_real + start : n_real + start + len(src)] = vec
            el = time.perf_counter() - t0
            print(f"  {n_real + start + len(src):,} docs, {el:.0f} s", flush=True)
        col.close()
        build_s = time.perf_counter() - t0
        np.save(vec_path, vectors)
        record.write_text(
            json.dumps({"build_s": build_s, "peak_rss_mib": rss_mib(), "lid": lid, "r": r})
        )
    built = json.loads(record.read_text())
    vectors = np.load(vec_path, mmap_mode="r")

    queries = real_queries(args.queries, args.seed)
    with Collection.open(folder, encoder, read_only=True) as col:
        info = col.info()
        engine = Engine(col, reranker=None, config=EngineConfig(ef_search=args.ef))
        for q in queries[:20]:  # warm: sessions, caches of the OS
            engine.search(q, k=100, rerank=False, first_stage="dense")
        row = {d: i for i, d in enumerate(ids)}
        totals, anns, found = [], [], []
        for q in queries:
            resp = engine.search(q, k=100, rerank=False, first_stage="dense")
            totals.append(resp.timings.total)
            anns.append(resp.timings.ann)
            found.append({row[h.id] if h.id in row else n_real + int(h.id[4:]) for h in resp.hits})
        # Each query alone, as the engine encodes it: the int8 encoder's activation scale is
        # per batch, so a batched query vector differs (cosine ~0.99) and so would its truth.
        qv = np.vstack([encoder.encode([q], kind="query") for q in queries])
    truth = exact_topk(np.asarray(vectors), qv, 100)
    recall = float(
        np.mean([len(f & set(t.tolist())) / 100 for f, t in zip(found, truth, strict=True)])
    )
    q = np.quantile
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load": os.getloadavg(),
        "documents": args.n_docs,
        "real": n_real,
        "queries": len(queries),
        "ef_search_k100": args.ef or info.get("search_ef_k100"),
        "index": {
            k: info.get(k)
            for k in ("dtype", "connectivity", "ef_construction", "index_memory_bytes")
        },
        "store_bytes": (folder / "store.sqlite").stat().st_size,
        "build": built,
        "first_stage_ms": {
            "p50": float(q(totals, 0.5)),
            "p99": float(q(totals, 0.99)),
            "max": max(totals),
        },
        "ann_ms": {"p50": float(q(anns, 0.5)), "p99": float(q(anns, 0.99))},
        "recall_at_100": recall,
        "mean_first_stage_ms": statistics.mean(totals),
    }
    print(json.dumps(result, indent=1, default=str))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
