"""Where the size-following default ef comes from (``default_ef`` in ``rust/src/index.rs``).

For each kind of data and each size, a twostage f16 index is built with a collection's
settings (cos, M 16, efConstruction 128), 1,000 queries are searched at a sweep of ef, and
recall@k against exact search is recorded for k = 10 and k = 100. The report gives, per
size, the smallest ef whose recall@k reaches the target (0.95), beside what ``default_ef``
picks there and the recall it gets.

Data (``--data``):

- ``clustered``: ``twostage.synthetic``'s clustered vectors and queries (the ANN benchmark's).
- ``tangent``: the recipe of the 1M collection in ``benches/e2e.py``, the data on which a 1M
  collection needed ef 192: every vector is a source vector plus Gaussian noise in that
  source's local tangent space (the top r principal directions of its 20 nearest sources'
  offsets, r = the sources' local intrinsic dimension), re-normalised. The sources are
  5,183 of ``twostage.synthetic``'s clustered vectors (as many as SciFact has abstracts), and
  queries are drawn like the vectors from another random stream; or, with ``--sources DIR``,
  the stored embeddings of a collection (SciFact's, as the e2e benchmark), which are also
  the first vectors of the base, and with ``--queries-from BEIR_DIR`` real queries encoded
  by that collection's encoder (SciFact's 1,109, train and test), as e2e measures. Real
  queries are what makes it hard: perturbed ones sit inside a source's cloud.

    .venv/bin/python benches/ef_rule.py --sizes 10000,100000          # ~5 min on 2 cores
    .venv/bin/python benches/ef_rule.py --data tangent --sizes 10000,100000,1000000 \
        --sources ~/.cache/twostage/eval/scifact-... --queries-from ../shared/data/scifact

Data and ground truth are cached in ``benches/out/cache/``. Not run by CI.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ann  # the ANN benchmark's data, ground truth and recall helpers

ROOT = Path(__file__).resolve().parent.parent
TARGET = 0.95
KS = (10, 100)
EFS = (10, 16, 24, 32, 48, 64, 80, 96, 100, 112, 128, 144, 160, 176, 192, 224, 256, 320, 384, 512)
N_SOURCES = 5183  # SciFact's abstracts: the e2e benchmark's sources
TANGENT_NEIGHBOURS = 20  # as benches/e2e.py


def tangent_data(
    sources: np.ndarray, n: int, seed: int, stream: int, lid_dim: int, bases: np.ndarray
) -> np.ndarray:
    """``n`` rows: each a random source plus noise in its local tangent space (e2e's recipe,
    ``perturbed`` with noise 1.0), drawn in blocks so memory stays small."""
    rng = np.random.default_rng([seed, stream])
    out = np.empty((n, sources.shape[1]), np.float32)
    for at in range(0, n, 65536):
        m = min(65536, n - at)
        src = rng.integers(0, len(sources), m)
        z = rng.standard_normal((m, lid_dim), dtype=np.float32)
        x = sources[src] + np.einsum("nr,nrd->nd", z, bases[src])
        out[at : at + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def intrinsic_dim(emb: np.ndarray, k: int = TANGENT_NEIGHBOURS) -> float:
    """Levina-Bickel MLE of the local intrinsic dimension (as benches/e2e.py)."""
    d2 = np.maximum(2.0 - 2.0 * (emb @ emb.T), 1e-12)
    d2.sort(axis=1)
    r = np.sqrt(d2[:, 1 : k + 1])
    return float(1.0 / np.mean(np.log(r[:, -1:] / r[:, :-1]).mean(axis=1)))


def tangent_bases(emb: np.ndarray, dim: int, k: int = TANGENT_NEIGHBOURS) -> np.ndarray:
    """Per source: the top ``dim`` principal directions of its ``k`` nearest sources'
    offsets, scaled by their spread (as benches/e2e.py)."""
    nb = np.argsort(-(emb @ emb.T), axis=1)[:, 1 : k + 1]
    out = np.empty((len(emb), dim, emb.shape[1]), np.float32)
    for a in range(len(emb)):
        _, s, vt = np.linalg.svd(emb[nb[a]] - emb[a], full_matrices=False)
        out[a] = (s[:dim, None] / np.sqrt(k)) * vt[:dim]
    return out


def load_sources(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    if args.sources:
        from twostage.collection import Collection

        with Collection.open(args.sources, read_only=True) as col:
            ids = list(col.store.ids())
            keys = col.store.keys_of(ids)
            emb = np.asarray(col.store.embeddings([keys[i] for i in ids]), np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        return emb, f"{len(emb)} stored embeddings of {args.sources}"
    syn = ann.load_synthetic()
    emb = syn.clustered_vectors(N_SOURCES, args.dim, seed=args.seed + 1)
    return emb, f"{N_SOURCES} of twostage.synthetic's clustered vectors (seed {args.seed + 1})"


def real_queries(args: argparse.Namespace) -> np.ndarray:
    """Every query of a BEIR folder, encoded one at a time by the sources' encoder."""
    import json

    from twostage.collection import Collection

    texts = [
        str(json.loads(line)["text"])
        for line in (Path(args.queries_from) / "queries.jsonl").read_text().splitlines()
        if line.strip()
    ]
    with Collection.open(args.sources, read_only=True) as col:
        return np.stack([col.encoder.encode([t], kind="query")[0] for t in texts]).astype(
            np.float32
        )


def dataset(args: argparse.Namespace, kind: str, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """(base, queries, description), cached."""
    syn = ann.load_synthetic()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if kind == "clustered":
        key = ann.data_key(argparse.Namespace(dim=args.dim, seed=args.seed), syn)
        base = ann.cached(
            cache / f"base_n{n}_d{args.dim}_{key}.npy",
            lambda: syn.clustered_vectors(n, args.dim, seed=args.seed),
        )
        qs = ann.cached(
            cache / f"queries_q{args.queries}_d{args.dim}_{key}.npy",
            lambda: syn.queries(args.queries, args.dim, seed=args.seed),
        )
        return base, qs, f"twostage.synthetic clustered vectors (cache key {key})"
    sources, what = load_sources(args)
    h = hashlib.sha256(sources.tobytes())
    h.update(repr((args.seed, TANGENT_NEIGHBOURS, bool(args.sources))).encode())
    key = h.hexdigest()[:12]
    lid = intrinsic_dim(sources)
    r = max(1, round(lid))
    bases: list[np.ndarray] = []

    def make(stream: int, m: int) -> np.ndarray:
        if not bases:
            bases.append(tangent_bases(sources, r))
        return tangent_data(sources, m, args.seed, stream, r, bases[0])

    def make_base() -> np.ndarray:
        if not args.sources:
            return make(1, n)
        # As e2e: the real documents, then perturbed ones.
        return np.concatenate([sources, make(1, n - len(sources))])

    base = ann.cached(cache / f"tangent_base_n{n}_{key}.npy", make_base)
    if args.queries_from:
        qkey = hashlib.sha256(Path(args.queries_from).resolve().as_posix().encode()).hexdigest()
        qs = ann.cached(cache / f"tangent_realq_{key}_{qkey[:8]}.npy", lambda: real_queries(args))
        qdesc = f"{len(qs)} real queries of {args.queries_from}, encoded by the sources' encoder"
    else:
        qs = ann.cached(
            cache / f"tangent_queries_q{args.queries}_{key}.npy", lambda: make(2, args.queries)
        )
        qdesc = f"{len(qs)} queries drawn like the vectors (another stream)"
    desc = (
        f"tangent-space vectors around {what}: local intrinsic dimension {lid:.1f} "
        f"(r = {r}); {qdesc}; cache key {key}"
    )
    return base, qs, desc


def measure(args: argparse.Namespace, kind: str, n: int) -> list[str]:
    import twostage
    from twostage._core import default_ef

    base, qs, desc = dataset(args, kind, n)
    truth = ann.exact_topk(base, qs, max(KS))
    idx = twostage.Index(args.dim, metric="cos", dtype="f16", connectivity=16, ef_construction=128)
    t = time.perf_counter()
    idx.add(np.arange(n, dtype=np.uint64), base)
    build = time.perf_counter() - t
    print(f"{kind} n={n:,}: built in {build:.0f} s", flush=True)
    lines = [f"### {kind}, n = {n:,}", "", f"- data: {desc}", f"- build {build:.0f} s", ""]
    lines += ["| k | ef | recall@k |", "|---:|---:|---:|"]
    summary = []
    for k in KS:
        curve: dict[int, float] = {}
        rule = default_ef(n, k)
        for ef in sorted({e for e in EFS if e >= k} | {rule}):
            res = idx.search(qs, k, ef=ef)
            curve[ef] = ann.recall(res.keys, res.counts, truth[:, :k])
            mark = " (default_ef)" if ef == rule else ""
            lines.append(f"| {k} | {ef}{mark} | {curve[ef]:.4f} |")
        least = next((ef for ef in sorted(curve) if curve[ef] >= TARGET), None)
        summary.append(
            f"| {kind} | {n:,} | {k} | {least if least else f'> {max(curve)}'} | {rule} | "
            f"{curve[rule]:.4f} |"
        )
        print(summary[-1], flush=True)
    return [*summary, "\n".join(lines)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--sizes", default="10000,100000", help="comma-separated index sizes")
    p.add_argument("--data", default="clustered,tangent", help="clustered and/or tangent")
    p.add_argument("--sources", help="tangent data around this collection's embeddings")
    p.add_argument("--queries-from", help="with --sources: a BEIR folder whose queries to encode")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(ROOT / "benches" / "out" / "cache"))
    p.add_argument("--out", default=str(ROOT / "benches" / "out" / "ef_rule.md"))
    args = p.parse_args(argv)
    if args.queries_from and not args.sources:
        p.error("--queries-from needs --sources (its collection's encoder encodes them)")
    rows, details = [], []
    for kind in args.data.split(","):
        for n in (int(s) for s in args.sizes.split(",")):
            *summary, detail = measure(args, kind, n)
            rows += summary
            details.append(detail)
    report = "\n".join(
        [
            f"# Default ef: smallest ef with recall@k >= {TARGET}, and default_ef's pick",
            "",
            "| data | n | k | least ef reaching the target | default_ef | recall at default_ef |",
            "|---|---:|---:|---:|---:|---:|",
            *rows,
            "",
            *details,
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
