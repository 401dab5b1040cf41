"""An index's memory and recall as a collection opens it, each in a fresh process.

``ann.py`` measures the opened index in the process that built it, where memory freed by
the build may still be held by the allocator. Here each index (f16, and i8 with f16
re-scoring) is built once, saved, then opened alone in a new process: its own memory
(RssAnon), its mapped file pages (RssFile), and recall@100 and single-query latency at
each ef, on ``ann.py``'s cached data (run ``ann.py --n N`` first). ``--variants`` names each
index as ``dtype:M`` (``i8+rescore`` is i8 with f16 re-scoring; M the HNSW connectivity)::

    .venv/bin/python benches/ann_reopen.py --n 1000000 --efs 512,768,1024
    .venv/bin/python benches/ann_reopen.py --variants f16:16,i8+rescore:16,i8+rescore:12
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benches" / "out" / "cache"
KEY = "d384_d07fa7b7df39"  # ann.py's cache key for dim 384, seed 0, the current generator
VARIANTS = {"f16": ("f16", False), "i8+rescore": ("i8", True)}


def rss(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def variants(spec: str) -> list[tuple[str, str, bool, int]]:
    """``f16:16,i8+rescore:12`` -> (file stem, dtype, rescore, M) per index."""
    out = []
    for item in spec.split(","):
        name, _, m = item.partition(":")
        dtype, rescore = VARIANTS[name]
        out.append((f"{name}-M{m or 16}", dtype, rescore, int(m or 16)))
    return out


def build(a: argparse.Namespace, out: Path) -> None:
    import twostage

    x = np.ascontiguousarray(np.load(CACHE / f"base_n{a.n}_{KEY}.npy", mmap_mode="r"))
    for name, dtype, rescore, m in variants(a.variants):
        idx = twostage.Index(
            384, metric="cos", dtype=dtype, connectivity=m, ef_construction=128,
            shards=1, threads=2, rescore=rescore,
        )  # fmt: skip
        t = time.perf_counter()
        idx.add(np.arange(x.shape[0], dtype=np.uint64), x)
        print(f"{name}: built in {time.perf_counter() - t:.1f} s", flush=True)
        idx.save(out / f"{name}.tsidx")
        del idx


def opened(a: argparse.Namespace, path: Path) -> None:
    import twostage

    q = np.load(CACHE / f"queries_q1000_{KEY}.npy")
    gt = np.load(CACHE / f"gt_n{a.n}_q1000_k100_{KEY}.npy")
    anon, mapped = rss("RssAnon"), rss("RssFile")
    idx = twostage.Index.load(path)
    own, file = (rss("RssAnon") - anon) / 2**20, (rss("RssFile") - mapped) / 2**20
    print(f"{path.stem}: own {own:.0f} MiB, mapped {file:.0f} MiB", flush=True)
    for ef in (int(e) for e in a.efs.split(",")):
        keys = idx.search(q, 100, ef=ef).keys
        rec = np.mean([len(set(keys[i]) & set(gt[i])) / 100 for i in range(len(q))])
        ts = []
        for v in q:
            t = time.perf_counter()
            idx.search(v, 100, ef=ef)
            ts.append(time.perf_counter() - t)
        p50, p99 = np.percentile(ts, [50, 99]) * 1000
        print(f"{path.stem}: ef {ef} recall@100 {rec:.4f} p50 {p50:.3f} ms p99 {p99:.3f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--efs", default="512,768,1024")
    ap.add_argument("--variants", default="f16:16,i8+rescore:16", help="dtype:M per index")
    ap.add_argument("--open", type=Path, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.open:
        opened(a, a.open)
        return
    for f in (f"base_n{a.n}_{KEY}.npy", f"gt_n{a.n}_q1000_k100_{KEY}.npy"):
        if not (CACHE / f).is_file():
            ap.error(f"{CACHE / f} is missing: run benches/ann.py --n {a.n} first")
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        build(a, Path(tmp))
        for name, *_ in variants(a.variants):
            cmd = [sys.executable, __file__, "--n", str(a.n), "--efs", a.efs]
            subprocess.run([*cmd, "--open", str(Path(tmp) / f"{name}.tsidx")], check=True)


if __name__ == "__main__":
    main()
