"""twostage on Ray, on one machine: what the scatter-gather costs, and ingest on an actor pool.

1. **Scatter-gather overhead.** SciFact (5,183 abstracts) as one collection searched in
   process (``Engine``), and split into 1, 3 and 6 shards (Ray actors on the same machine)
   searched by ``ShardedEngine``. Per query (SciFact's 300 test queries, after a warm-up),
   every engine runs once, in a fresh random order each time (interleaved: load from other
   processes hits every engine alike). Two settings: the **first stage only** (the default
   first stage, hybrid, no reranker) and **the defaults** (the shipped reranker, its depth,
   cascade and 150 ms budget). Reported: p50/p99 of the search's wall time, and of the
   per-query difference to the in-process engine (the router's cost: two Ray round trips
   per search, the merge, and the documents' trip from the shards).
2. **BM25 per shard.** NDCG@10 on SciFact's test queries, one collection against 3 shards,
   each first stage alone: what each shard scoring BM25 with its own statistics costs.
3. **Ingest throughput.** The first ``--ingest-docs`` SciFact abstracts (full 256-token
   limit), built by ``twostage.ingest.build`` in process and by
   ``twostage.distributed.ingest`` into 3 shards with 1 encoder actor (2 threads), 1 (1
   thread) and 2 (1 thread each); runs alternate, each setting ``--repeats`` times.

    .venv/bin/python benches/distributed.py                 # ~10 min on 2 busy cores
    .venv/bin/python benches/distributed.py --skip-ingest   # the overhead only
    .venv/bin/python benches/distributed.py --table benches/out/distributed/distributed.json

The SciFact collection is the one ``twostage eval`` cached (``~/.cache/twostage/eval/
scifact-*``), or ``--scifact DIR``; it is only read. Splits and corpora go to
``benches/out/distributed/``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benches" / "out" / "distributed"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
SHARDS = (1, 3, 6)


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def machine() -> dict[str, Any]:
    from importlib.metadata import version

    from twostage.machine import machine_info

    info = machine_info()
    info.update(
        ray=version("ray"),
        numpy=np.__version__,
        date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )
    return info


def find_scifact(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    for cand in sorted((Path.home() / ".cache" / "twostage" / "eval").glob("scifact-*")):
        with contextlib.suppress(OSError, ValueError, KeyError):
            if json.loads((cand / "manifest.json").read_text())["documents"] == 5183:
                return cand
    out = OUT / "scifact-built"
    if not (out / "manifest.json").exists():
        cmd = [sys.executable, "-m", "twostage", "index", "build", "--no-progress"]
        cmd += ["--corpus", str(SCIFACT / "corpus.jsonl.gz"), "--out", str(out)]
        subprocess.run(cmd, check=True)
    return out


# ---------------------------------------------------------------- 1. scatter-gather


def overhead_part(args: argparse.Namespace) -> dict[str, Any]:
    from twostage.beir import Dataset
    from twostage.collection import Collection
    from twostage.distributed import ShardedCollection, ShardedEngine
    from twostage.distributed.layout import split_collection
    from twostage.engine import Engine
    from twostage.reranker import Reranker

    src = find_scifact(args.scifact)
    queries = list(Dataset.load(SCIFACT).queries.values())[: args.queries + args.warmup]
    opened = []
    for n in SHARDS:
        path = OUT / f"scifact-{n}"
        if not (path / "shards.json").exists():
            shutil.rmtree(path, ignore_errors=True)
            split_collection(src, path, n)
        opened.append(ShardedCollection.open(path, read_only=True, actor_options={"num_cpus": 0}))
    out: dict[str, Any] = {"collection": str(src), "queries": args.queries}
    try:
        with Collection.open(src, read_only=True) as col:
            for setting in ("first stage", "defaults"):
                rr = Reranker.load("twostage-rerank") if setting == "defaults" else None
                engines: dict[str, Any] = {"in-process": Engine(col, reranker=rr)}
                for n, sc in zip(SHARDS, opened, strict=True):
                    engines[f"{n} shard{'s' * (n > 1)}"] = ShardedEngine(
                        sc, reranker=rr, shard_timeout_ms=args.shard_timeout_ms
                    )
                out[setting] = run_interleaved(engines, queries, args, rerank=rr is not None)
                print(table_overhead(setting, out[setting]), flush=True)
    finally:
        for sc in opened:
            sc.close()
    return out


def run_interleaved(
    engines: dict[str, Any], queries: list[str], args: argparse.Namespace, *, rerank: bool
) -> dict[str, Any]:
    rng = random.Random(args.seed)
    wall: dict[str, list[float]] = {name: [] for name in engines}
    first: dict[str, list[float]] = {name: [] for name in engines}
    partial = {name: 0 for name in engines}
    scored: dict[str, list[int]] = {name: [] for name in engines}
    for i, q in enumerate(queries):
        order = list(engines)
        rng.shuffle(order)
        for name in order:
            t = time.perf_counter()
            r = engines[name].search(q, k=10, rerank=rerank)
            took = (time.perf_counter() - t) * 1000
            if i < args.warmup:
                continue
            wall[name].append(took)
            tm = r.timings
            first[name].append(tm.ann + tm.bm25 + tm.fetch)
            partial[name] += int(r.shards_total is not None and r.shards_answered < r.shards_total)
            scored[name].append(r.scored)
    base = np.asarray(wall["in-process"])
    rows = {}
    for name in engines:
        diff = (np.asarray(wall[name]) - base).tolist()
        rows[name] = {
            "p50_ms": pct(wall[name], 50),
            "p99_ms": pct(wall[name], 99),
            "first_stage_p50_ms": pct(first[name], 50),
            "first_stage_p99_ms": pct(first[name], 99),
            "diff_p50_ms": pct(diff, 50),
            "diff_p99_ms": pct(diff, 99),
            "partial_answers": partial[name],
            "mean_scored": float(np.mean(scored[name])) if scored[name] else 0.0,
        }
    return rows


def table_overhead(setting: str, rows: dict[str, Any]) -> str:
    lines = [
        f"\n{setting}: wall time per search (ms), and its difference to the in-process engine "
        "(paired per query)",
        "| engine | p50 | p99 | first stage p50 / p99 | minus in-process p50 / p99 | "
        "partial answers | reranked per answer |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['first_stage_p50_ms']:.1f} / {r['first_stage_p99_ms']:.1f} | "
            f"{r['diff_p50_ms']:+.1f} / {r['diff_p99_ms']:+.1f} | {r['partial_answers']} | "
            f"{r['mean_scored']:.1f} |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- BM25 per shard


def quality_part(args: argparse.Namespace) -> dict[str, Any]:
    """NDCG@10 on SciFact's test queries, one collection against 3 shards (first stage only):
    what each shard scoring BM25 with its own statistics costs."""
    from twostage.beir import Dataset
    from twostage.collection import Collection
    from twostage.distributed import ShardedCollection, ShardedEngine
    from twostage.distributed.layout import split_collection
    from twostage.engine import Engine
    from twostage.metrics import as_run, ndcg10

    src = find_scifact(args.scifact)
    ds = Dataset.load(SCIFACT)
    path = OUT / "scifact-3"
    if not (path / "shards.json").exists():
        shutil.rmtree(path, ignore_errors=True)
        split_collection(src, path, 3)
    out: dict[str, Any] = {}
    with (
        Collection.open(src, read_only=True) as col,
        ShardedCollection.open(path, read_only=True, actor_options={"num_cpus": 0}) as sc,
    ):
        one = Engine(col, reranker=None)
        three = ShardedEngine(sc, reranker=None, shard_timeout_ms=30_000)
        for mode in ("dense", "bm25", "hybrid"):
            runs: dict[str, dict[str, list[str]]] = {"one": {}, "three": {}}
            overlap = 0
            for qid, q in ds.queries.items():
                a = [h.id for h in one.search(q, k=10, first_stage=mode, rerank=False).hits]
                b = [h.id for h in three.search(q, k=10, first_stage=mode, rerank=False).hits]
                runs["one"][qid], runs["three"][qid] = a, b
                overlap += len(set(a) & set(b))
            out[mode] = {
                "ndcg10_one": ndcg10(ds.qrels, as_run(runs["one"])),
                "ndcg10_three": ndcg10(ds.qrels, as_run(runs["three"])),
                "overlap_at_10": overlap / (10 * len(ds.queries)),
            }
    print(table_quality(out), flush=True)
    return out


def table_quality(res: dict[str, Any]) -> str:
    lines = [
        "\nSciFact test, first stage only: one collection against 3 shards",
        "| first stage | NDCG@10 one | NDCG@10 3 shards | top-10 overlap |",
        "|---|---:|---:|---:|",
    ]
    for mode, r in res.items():
        lines.append(
            f"| {mode} | {r['ndcg10_one']:.4f} | {r['ndcg10_three']:.4f} | "
            f"{100 * r['overlap_at_10']:.1f} % |"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------- 2. ingest


def ingest_part(args: argparse.Namespace) -> dict[str, Any]:
    from twostage.distributed import ingest
    from twostage.ingest import build

    OUT.mkdir(parents=True, exist_ok=True)
    corpus = OUT / f"scifact-{args.ingest_docs}.jsonl"
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as f:
        corpus.write_text("".join(next(f) for _ in range(args.ingest_docs)))
    settings: dict[str, dict[str, Any] | None] = {
        "build() in process, 2 threads": None,
        "1 encoder actor, 2 threads": {"encoders": 1, "cpus_per_encoder": 2},
        "1 encoder actor, 1 thread": {"encoders": 1, "cpus_per_encoder": 1},
        "2 encoder actors, 1 thread each": {"encoders": 2, "cpus_per_encoder": 1},
    }
    rates: dict[str, list[float]] = {name: [] for name in settings}
    walls: dict[str, list[float]] = {name: [] for name in settings}
    for rep in range(args.repeats):
        order = list(settings) if rep % 2 == 0 else list(reversed(settings))
        for name in order:
            dst = OUT / "ingest-run"
            shutil.rmtree(dst, ignore_errors=True)
            opts = settings[name]
            t = time.perf_counter()
            if opts is None:
                r = build(corpus, dst, chunk_size=args.chunk_size, progress=False)
                rate = r.docs_per_s
            else:
                r2 = ingest(corpus, dst, 3, chunk_size=args.chunk_size, progress=False, **opts)
                rate = r2.docs_per_s
            wall = time.perf_counter() - t
            rates[name].append(rate)
            walls[name].append(wall)
            print(f"ingest {name}: {rate:.1f} docs/s ({wall:.1f} s)", flush=True)
    shutil.rmtree(OUT / "ingest-run", ignore_errors=True)
    out = {
        "docs": args.ingest_docs,
        "chunk_size": args.chunk_size,
        "settings": {name: {"docs_per_s": rates[name], "wall_s": walls[name]} for name in settings},
    }
    print(table_ingest(out), flush=True)
    return out


def table_ingest(res: dict[str, Any]) -> str:
    lines = [
        f"\ningest: {res['docs']} SciFact abstracts (256 tokens max), chunks of "
        f"{res['chunk_size']}, 3 shards",
        "| setting | docs/s (each run) | median | wall s (median) |",
        "|---|---|---:|---:|",
    ]
    for name, r in res["settings"].items():
        each = ", ".join(f"{x:.1f}" for x in r["docs_per_s"])
        lines.append(
            f"| {name} | {each} | {np.median(r['docs_per_s']):.1f} | {np.median(r['wall_s']):.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scifact", help="a built SciFact collection (default: eval's cache)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--shard-timeout-ms", type=float, default=1000.0)
    ap.add_argument("--ingest-docs", type=int, default=600)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--skip-ingest", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--out", default=str(OUT / "distributed.json"))
    ap.add_argument("--table", help="print the markdown tables of a result file and exit")
    args = ap.parse_args()
    if args.table:
        res = json.loads(Path(args.table).read_text())
        for setting in ("first stage", "defaults"):
            if setting in res.get("overhead", {}):
                print(table_overhead(setting, res["overhead"][setting]))
        if "quality" in res:
            print(table_quality(res["quality"]))
        if "ingest" in res:
            print(table_ingest(res["ingest"]))
        return
    import ray

    res: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine()}
    print(json.dumps(res["machine"]), flush=True)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        if not args.skip_overhead:
            res["overhead"] = overhead_part(args)
        if not args.skip_quality:
            res["quality"] = quality_part(args)
        if not args.skip_ingest:
            res["ingest"] = ingest_part(args)
    finally:
        ray.shutdown()
    res["machine"]["load_average_end"] = list(os.getloadavg())
    OUT.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
