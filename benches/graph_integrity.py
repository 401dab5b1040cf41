"""Does the HNSW graph keep every vector reachable under parallel adds and updates?

Three measurements on `twostage.Index` (threads 2, cos, f32, M 16, efC 128), each a count
or a recall, not a time (a build's time is printed beside it):

1. **build**: ``--builds`` builds of 4,000 x 32 clustered vectors, added in batches of 200
   on two threads; a vector is *stranded* when a search for itself (ef 256) does not find it
   first. Counts the builds with any stranded vector, and how many each had.
2. **churn**: the scenario of ``tests/test_index.py::test_search_while_other_threads_add_
   and_remove`` without its readers (2,000 keys, then 16 rounds of 250 adds, 125 removes and
   100 upserts), ``--runs`` seeds: the share of the 1,000 untouched keys found first
   (ef 128), and recall@10 (ef 64) of 500 queries against brute force over the live keys;
   beside it the same live keys added in one batch, the graph the churn should match.
3. **turnover**: 5,000 x 64, ten rounds that each move a random 30 % of the keys to new
   vectors (upserts, which reuse the replaced slots), ``--seeds`` seeds: recall@10 (ef 64,
   300 queries) after each round, and the time the upserts took.

To compare two builds of the extension, run this once per build with that build's package
first on ``PYTHONPATH`` (e.g. a copy of ``python/twostage`` with its ``_core*.so``).

    .venv/bin/python benches/graph_integrity.py                 # ~2 min on 2 cores
    .venv/bin/python benches/graph_integrity.py --runs 100 --builds 20 --seeds 6
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import twostage
from twostage import Index
from twostage.machine import machine_info
from twostage.synthetic import clustered_vectors


def recall_at_10(index: Index, keys: np.ndarray, rows: np.ndarray, queries: np.ndarray) -> float:
    """Recall@10 (ef 64) against brute force; rows are unit length, so L2 orders as cos."""
    dist = (queries**2).sum(1)[:, None] - 2 * queries @ rows.T + (rows**2).sum(1)[None]
    truth = keys[np.argsort(dist, axis=1)[:, :10]]
    found = index.search(queries, 10, ef=64).keys.tolist()
    pairs = zip(found, truth.tolist(), strict=True)
    return float(np.mean([len(set(f) & set(t)) / 10 for f, t in pairs]))


def build(builds: int) -> None:
    n, dim, stranded, seconds = 4000, 32, [], 0.0
    for seed in range(builds):
        base = clustered_vectors(n, dim, seed=seed)
        index = Index(dim, threads=2)
        t0 = time.perf_counter()
        for start in range(0, n, 200):
            index.add(np.arange(start, start + 200), base[start : start + 200])
        seconds += time.perf_counter() - t0
        first = index.search(base, 1, ef=256).keys[:, 0]
        stranded.append(int((first != np.arange(n)).sum()))
    bad = sum(s > 0 for s in stranded)
    print(f"- build: {bad} of {builds} builds strand a vector; stranded per build {stranded}")
    print(f"  (mean build time {seconds / builds:.3f} s)")


def churn_once(seed: int) -> tuple[float, float, float]:
    dim = 32
    base = clustered_vectors(6000, dim, seed=seed)
    index = Index(dim, threads=2)
    index.add(np.arange(2000), base[:2000])
    live = {k: k for k in range(2000)}  # key -> row of base
    for start in range(2000, 6000, 250):
        keys = np.arange(start, start + 250)
        index.add(keys, base[start : start + 250])
        live.update((int(k), int(k)) for k in keys)
        index.remove(keys[::2])
        for k in keys[::2]:
            del live[int(k)]
        index.add(np.arange(1000, 1100), base[start : start + 100])
        live.update((1000 + i, start + i) for i in range(100))
    keys = np.array(sorted(live))
    rows = base[[live[k] for k in keys]]
    queries = base[np.random.default_rng(seed).integers(0, 6000, 500)]
    found_self = float((index.search(base[:1000], 5, ef=128).keys[:, 0] == np.arange(1000)).mean())
    churned = recall_at_10(index, keys, rows, queries)
    once = Index(dim, threads=2)
    once.add(keys, rows)
    return found_self, churned, recall_at_10(once, keys, rows, queries)


def churn(runs: int) -> None:
    r = np.array([churn_once(seed) for seed in range(runs)])
    print(
        f"- churn, {runs} runs: untouched keys found first: worst {r[:, 0].min():.4f}, mean "
        f"{r[:, 0].mean():.5f}, runs under 0.995: {int((r[:, 0] < 0.995).sum())}; recall@10 "
        f"{r[:, 1].mean():.4f} (the same keys added once: {r[:, 2].mean():.4f})"
    )


def turnover(seeds: int) -> None:
    n, dim, rounds, curves, seconds = 5000, 64, 10, [], 0.0
    for seed in range(seeds):
        pool = clustered_vectors(n * (1 + rounds), dim, seed=seed)
        rng = np.random.default_rng(seed)
        vectors, unused = pool[:n].copy(), n
        index = Index(dim, threads=2)
        index.add(np.arange(n), vectors)
        queries = pool[rng.integers(0, len(pool), 300)]
        keys = np.arange(n)
        curve = [recall_at_10(index, keys, vectors, queries)]
        for _ in range(rounds):
            moved = rng.choice(n, n * 3 // 10, replace=False)
            vectors[moved] = pool[unused : unused + len(moved)]
            unused += len(moved)
            t0 = time.perf_counter()
            index.add(moved, vectors[moved])
            seconds += time.perf_counter() - t0
            curve.append(recall_at_10(index, keys, vectors, queries))
        curves.append(curve)
    mean = np.mean(curves, axis=0)
    print(f"- turnover, {seeds} seeds: recall@10 by round " + " ".join(f"{x:.4f}" for x in mean))
    print(f"  (upserts of {rounds} rounds: {seconds / seeds:.2f} s per seed)")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--builds", type=int, default=20)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    m = machine_info()
    print(
        f"twostage {twostage.__version__} from {twostage.__file__}; {m['cpu']}, "
        f"nproc {m['nproc']}, Python {m['python']}, {m['date']}, load {m['load_average']}"
    )
    build(args.builds)
    churn(args.runs)
    turnover(args.seeds)


if __name__ == "__main__":
    main()
