"""Metadata filters: inside the first stage (twostage.filters) against the check after it.

Two parts, both interleaved per query (the methods in a fresh random order each time), so
machine drift hits every method alike:

1. **SciFact, the engine's first stage** (`Engine._first_stage`, the step that searches and
   fetches the candidates the reranker would read). SciFact's 5,183 documents get synthetic
   metadata: a random 50 %, 1 % and 0.1 % of them carry ``{"s50": true}``, ``{"s1": true}``,
   ``{"s01": true}``. Per filter and first stage (dense, bm25, hybrid), ``n`` = 100
   candidates:
   - ``planned``: the engine as shipped (exact scan of a small set, else the filtered walk;
     BM25 with a key term set, else a longer list cut to the allowed keys);
   - ``walk`` / ``scan`` (dense) and ``termset`` / ``cut`` (bm25): one way forced;
   - ``post``: the check after the search (the engine before filters moved inside it);
   - recall@10 and @100 against the exact filtered answer (the scan for dense, the
     exhaustive BM25 list filtered for bm25, their RRF for hybrid).
2. **Synthetic 100k x 384 (f16, cos, M=16), the index alone**: filtered walk, exact scan,
   and the post-filter emulated at the index level (an unfiltered search widened x4 until
   enough allowed keys come back; no document fetches, so it flatters the old path) over a
   sweep of selectivities: where the scan stops being cheaper than the walk.

Also: the metadata index's build time (SciFact's store, and 1M synthetic rows) and the
time to resolve a filter at 1M keys.

    .venv/bin/python benches/filter.py                       # ~15 min on 2 busy cores
    .venv/bin/python benches/filter.py --skip-synthetic      # SciFact only, ~5 min

The SciFact collection is the one ``twostage eval`` cached (``~/.cache/twostage/eval/
scifact-*``), or ``--scifact DIR``; it is copied, never changed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benches" / "out" / "filter"
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
MISSING = 2**64 - 1
SHARES = {"s50": 0.5, "s1": 0.01, "s01": 0.001}


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def recall(got: list[int], want: list[int], k: int) -> float | None:
    want = want[:k]
    if not want:
        return None
    return len(set(got[:k]) & set(want)) / len(want)


@contextlib.contextmanager
def patched(module: Any, name: str, value: Any) -> Iterator[None]:
    old = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, old)


def machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    from importlib.metadata import version

    return {
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tantivy": version("tantivy"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average": os.getloadavg(),
    }


# ---------------------------------------------------------------- 1. SciFact, the engine


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


def with_metadata(src: Path, seed: int) -> Path:
    """A copy of ``src`` whose documents carry the synthetic filter fields."""
    from twostage.collection import Collection
    from twostage.document import Document

    dst = OUT / f"scifact-meta-{seed}"
    if (dst / "manifest.json").exists():
        return dst
    tmp = OUT / f"scifact-meta-{seed}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    with Collection.open(tmp) as col:
        keys = np.fromiter(col.store.keys(), dtype=np.uint64)
        rng = np.random.default_rng(seed)
        chosen = {
            f: set(rng.choice(keys, math.ceil(s * len(keys)), replace=False).tolist())
            for f, s in SHARES.items()
        }
        stored = col.fetch(keys, tokens=True)
        vecs = col.store.embeddings(keys)
        docs, toks = [], []
        for d in stored:
            assert d is not None
            meta = dict(d.metadata or {})
            meta.update({f: True for f in SHARES if d.key in chosen[f]})
            docs.append(Document(d.id, d.text, d.title, meta))
            toks.append(d.tokens or [])
        col.add_embedded(docs, vecs, toks)
    tmp.rename(dst)
    return dst


def scifact_part(args: argparse.Namespace) -> dict[str, Any]:
    import twostage.engine as engine_mod
    import twostage.lexical as lexical_mod
    from twostage._core import rrf
    from twostage.collection import Collection
    from twostage.config import EngineConfig
    from twostage.engine import Engine
    from twostage.filters import MetadataIndex

    src = find_scifact(args.scifact)
    path = with_metadata(src, args.seed)
    col = Collection.open(path, read_only=True)
    t = time.perf_counter()
    MetadataIndex.build(col.store.metadata())
    build_s = time.perf_counter() - t
    eng = Engine(col, reranker=None, config=EngineConfig())
    ef = eng.config.ef_search
    queries: list[str] = []
    tests = {line.split("\t")[0] for line in (SCIFACT / "qrels" / "test.tsv").open()}
    with open(SCIFACT / "queries.jsonl") as f:
        queries = [q["text"] for line in f if (q := json.loads(line))["_id"] in tests]
    queries = queries[: args.queries]
    qv = col.encoder.encode(queries, kind="query")
    keys_all = np.fromiter(col.store.keys(), dtype=np.uint64)
    n = 100

    def first(mode: str, i: int, filt: dict[str, Any]) -> tuple[list[int], float]:
        t0 = time.perf_counter()
        _, _, _, _, docs, _ = eng._first_stage(
            mode, queries[i], qv[i], n, filt, tokens=True, need_sim=False
        )
        return [d.key for d in docs], (time.perf_counter() - t0) * 1000

    def run(mode: str, how: str) -> Callable[[int, dict[str, Any]], tuple[list[int], float]]:
        def go(i: int, filt: dict[str, Any]) -> tuple[list[int], float]:
            if how == "post":
                with patched(Engine, "_filter_in_index", False):
                    return first(mode, i, filt)
            if how == "walk":
                with patched(engine_mod, "exact_is_cheaper", lambda c, t, w: False):
                    return first(mode, i, filt)
            if how == "scan":
                with patched(engine_mod, "exact_is_cheaper", lambda c, t, w: True):
                    return first(mode, i, filt)
            if how == "termset":
                with patched(lexical_mod, "TERM_SET_FACTOR", math.inf):
                    return first(mode, i, filt)
            if how == "cut":
                with patched(lexical_mod, "TERM_SET_FACTOR", -1.0):
                    return first(mode, i, filt)
            return first(mode, i, filt)

        return go

    # The exact filtered answers, computed once.
    def truth(mode: str, i: int, filt: dict[str, Any]) -> list[int]:
        allowed = col.matching(filt)
        assert allowed is not None
        dense = col.index.search_exact(qv[i], allowed.keys, n)
        d = dense.keys[: int(dense.counts[0])].tolist()
        if mode == "dense":
            return d
        lk, _ = col.lexical_search(queries[i], len(keys_all))
        lex = [k for k in lk.tolist() if k in allowed][:n]
        if mode == "bm25":
            return lex
        fused, _ = rrf([np.asarray(d, np.uint64), np.asarray(lex, np.uint64)], k=n, c=60.0)
        return [int(x) for x in fused.tolist()]

    rng = np.random.default_rng(args.seed)
    methods = {
        "dense": ["planned", "walk", "scan", "post"],
        "bm25": ["planned", "termset", "cut", "post"],
        "hybrid": ["planned", "post"],
    }
    rows = []
    for field, share in SHARES.items():
        filt = {field: True}
        allowed = col.matching(filt)
        assert allowed is not None
        for mode, hows in methods.items():
            want = [truth(mode, i, filt) for i in range(len(queries))]
            fns = {h: run(mode, h) for h in hows}
            for h in hows:  # warm-up
                fns[h](0, filt)
            times: dict[str, list[float]] = {h: [] for h in hows}
            r10: dict[str, list[float]] = {h: [] for h in hows}
            r100: dict[str, list[float]] = {h: [] for h in hows}
            for i in range(len(queries)):
                # A fresh random order per query: a fixed rotation would run one method
                # right after the same other one (the slow post-filter's garbage and evicted
                # caches would land on it) every time.
                for h in rng.permutation(hows).tolist():
                    got, ms = fns[h](i, filt)
                    times[h].append(ms)
                    for store, k in ((r10, 10), (r100, 100)):
                        r = recall(got, want[i], k)
                        if r is not None:
                            store[h].append(r)
            for h in hows:
                rows.append(
                    {
                        "filter": field,
                        "share": share,
                        "allowed": allowed.count,
                        "mode": mode,
                        "method": h,
                        "p50_ms": pct(times[h], 50),
                        "p99_ms": pct(times[h], 99),
                        "recall@10": float(np.mean(r10[h])) if r10[h] else None,
                        "recall@100": float(np.mean(r100[h])) if r100[h] else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
    col.close()
    return {
        "collection": str(src),
        "documents": len(keys_all),
        "queries": len(queries),
        "n": n,
        "ef_search": ef,
        "metadata_build_s": build_s,
        "rows": rows,
    }


# ---------------------------------------------------------------- 2. synthetic, the index


def synthetic_part(args: argparse.Namespace) -> dict[str, Any]:
    from twostage._core import Index
    from twostage.synthetic import clustered_vectors, queries

    dim, n = 384, args.n
    base = clustered_vectors(n, dim, seed=args.seed)
    qs = queries(args.synthetic_queries, dim, seed=args.seed)
    idx = Index(dim, metric="cos", dtype="f16", connectivity=16, ef_construction=128)
    t = time.perf_counter()
    idx.add(np.arange(1, n + 1, dtype=np.uint64), base)
    build_s = time.perf_counter() - t
    del base
    print(f"built {n} in {build_s:.0f} s", flush=True)
    rng = np.random.default_rng(args.seed)
    k, ef = 100, 128
    rows = []
    for share in args.sweep:
        count = max(1, math.ceil(share * n))
        keys = np.sort(rng.choice(np.arange(1, n + 1, dtype=np.uint64), count, replace=False))
        mask = np.zeros(n + 1, dtype=bool)
        mask[keys.astype(np.int64)] = True

        def walk(q: np.ndarray, mask: np.ndarray = mask) -> list[int]:
            r = idx.search(q, k, ef=ef, allowed=mask)
            return r.keys[: int(r.counts[0])].tolist()

        def scan(q: np.ndarray, keys: np.ndarray = keys) -> list[int]:
            r = idx.search_exact(q, keys, k)
            return r.keys[: int(r.counts[0])].tolist()

        def post(q: np.ndarray, mask: np.ndarray = mask, count: int = count) -> list[int]:
            want, ask = min(k, count), max(4 * k, 64)
            while True:
                r = idx.search(q, min(ask, n), ef=ef)
                got = r.keys[: int(r.counts[0])]
                got = got[mask[got.astype(np.int64)]]
                if len(got) >= want or ask >= n:
                    return got[:k].tolist()
                ask *= 4

        hows: dict[str, Callable[[np.ndarray], list[int]]] = {"walk": walk, "scan": scan}
        if share >= args.post_min_share:
            hows["post"] = post
        names = list(hows)
        want = [scan(q) for q in qs]
        times: dict[str, list[float]] = {h: [] for h in names}
        r10: dict[str, list[float]] = {h: [] for h in names}
        r100: dict[str, list[float]] = {h: [] for h in names}
        for h in names:
            hows[h](qs[0])
        for i, q in enumerate(qs):
            for h in rng.permutation(names).tolist():
                t0 = time.perf_counter()
                got = hows[h](q)
                times[h].append((time.perf_counter() - t0) * 1000)
                r10[h].append(recall(got, want[i], 10) or 0.0)
                r100[h].append(recall(got, want[i], 100) or 0.0)
        for h in names:
            rows.append(
                {
                    "share": share,
                    "allowed": count,
                    "method": h,
                    "p50_ms": pct(times[h], 50),
                    "p99_ms": pct(times[h], 99),
                    "recall@10": float(np.mean(r10[h])),
                    "recall@100": float(np.mean(r100[h])),
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return {"n": n, "dim": dim, "dtype": "f16", "k": k, "ef": ef, "build_s": build_s, "rows": rows}


def metadata_part(args: argparse.Namespace) -> dict[str, Any]:
    from twostage.filters import MetadataIndex

    n = args.meta_rows
    rng = np.random.default_rng(args.seed)
    langs = np.array(["en", "fr", "de", "es"])[rng.integers(0, 4, n)].tolist()
    texts = [
        json.dumps({"lang": langs[i], "year": 2000 + i % 20, "s1": i % 100 == 0}) for i in range(n)
    ]
    t = time.perf_counter()
    m = MetadataIndex.build(zip(range(1, n + 1), texts, strict=True))
    build_s = time.perf_counter() - t
    out: dict[str, Any] = {"rows": n, "fields": 3, "build_s": build_s, "bytes": m.memory_usage}
    cases: list[tuple[str, dict[str, Any]]] = [
        ("lang=en (25 %)", {"lang": "en"}),
        ("s1 (1 %)", {"s1": True}),
        ("lang in [en, fr] (50 %)", {"lang": ["en", "fr"]}),
        ("lang=en and year=2003 (1.25 %)", {"lang": "en", "year": 2003}),
    ]
    for name, f in cases:
        ts = []
        for _ in range(30):
            t = time.perf_counter()
            m.select(f)
            ts.append((time.perf_counter() - t) * 1000)
        out[name] = {"p50_ms": pct(ts, 50), "p99_ms": pct(ts, 99)}
    print(json.dumps(out), flush=True)
    return out


def markdown(res: dict[str, Any]) -> str:
    """The tables BENCHMARKS.md shows, from a result file."""

    def f(x: float | None, nd: int = 1) -> str:
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"

    out: list[str] = []
    sc = res.get("scifact")
    if sc:
        out.append(
            f"SciFact ({sc['documents']:,} documents, {sc['queries']} test queries, "
            f"n = {sc['n']} candidates, ef {sc['ef_search'] or 'index default'}); first stage "
            "including the document fetch, ms:\n"
        )
        out.append("| filter (allowed) | first stage | method | p50 | p99 | R@10 | R@100 |")
        out.append("|---|---|---|---:|---:|---:|---:|")
        for r in sc["rows"]:
            out.append(
                f"| {r['filter']} {r['share']:.1%} ({r['allowed']:,}) | {r['mode']} | "
                f"{r['method']} | {f(r['p50_ms'])} | {f(r['p99_ms'])} | "
                f"{f(r['recall@10'], 3)} | {f(r['recall@100'], 3)} |"
            )
        out.append(
            f"\nMetadata index built from the store in {sc['metadata_build_s'] * 1000:.0f} ms.\n"
        )
    syn = res.get("synthetic")
    if syn:
        out.append(
            f"Synthetic {syn['n']:,} x {syn['dim']} {syn['dtype']} (built in "
            f"{syn['build_s']:.0f} s), the index alone, k = {syn['k']}, ef {syn['ef']}, ms:\n"
        )
        out.append("| allowed | method | p50 | p99 | R@10 | R@100 |")
        out.append("|---|---|---:|---:|---:|---:|")
        for r in syn["rows"]:
            out.append(
                f"| {r['share']:.1%} ({r['allowed']:,}) | {r['method']} | {f(r['p50_ms'])} | "
                f"{f(r['p99_ms'])} | {f(r['recall@10'], 3)} | {f(r['recall@100'], 3)} |"
            )
    meta = res.get("metadata")
    if meta:
        out.append(
            f"\nMetadata index from {meta['rows']:,} rows x {meta['fields']} fields: built in "
            f"{meta['build_s']:.1f} s, {meta['bytes'] / 2**20:.1f} MiB of codes; resolving a "
            "filter (p50 / p99 ms): "
            + "; ".join(
                f"{k} {v['p50_ms']:.2f} / {v['p99_ms']:.2f}"
                for k, v in meta.items()
                if isinstance(v, dict)
            )
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scifact", help="a built SciFact collection (default: eval's cache)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--n", type=int, default=100_000, help="synthetic vectors")
    ap.add_argument("--synthetic-queries", type=int, default=200)
    ap.add_argument(
        "--sweep",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001],
    )
    ap.add_argument("--post-min-share", type=float, default=0.001)
    ap.add_argument("--meta-rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-scifact", action="store_true")
    ap.add_argument("--out", default=str(OUT / "filter.json"))
    ap.add_argument("--table", help="print the markdown tables of a result file and exit")
    args = ap.parse_args()
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return
    OUT.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"command": " ".join(sys.argv), "machine": machine()}
    print(json.dumps(res["machine"]), flush=True)
    if not args.skip_scifact:
        res["scifact"] = scifact_part(args)
    res["metadata"] = metadata_part(args)
    if not args.skip_synthetic:
        res["synthetic"] = synthetic_part(args)
    res["machine"]["load_average_end"] = os.getloadavg()
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(markdown(res))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
