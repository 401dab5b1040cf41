"""What ``synchronous=FULL`` costs: store commits under FULL and NORMAL, interleaved.

    .venv/bin/python benches/durability.py                 # ~1 minute
    .venv/bin/python benches/durability.py --dir /data/x   # on the disk that will hold data

The store commits each batch in one transaction. In WAL mode NORMAL fsyncs only at
checkpoints (a killed process loses nothing, a power cut may lose the last commits); FULL
also fsyncs the WAL at every commit, so an acknowledged write survives a power cut. The
cost is one fsync per batch, so it is measured per batch size: upserts of 1 and 32
documents (MiniLM's 384-dim f16 embeddings, 1 KB of text each), FULL and NORMAL taking
turns batch by batch, median and p99 of the commit time. The encoder's share of an
ingest (about 20 ms a document here) is the yardstick.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--dir", default=None, help="where the stores go (default: a temp folder)")
    ap.add_argument("--batches", type=int, default=200)
    args = ap.parse_args()
    from twostage.document import Document
    from twostage.store import DocStore

    text = "Soluble proteins fold into their native structure. " * 20
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stores = {}
        for mode in ("FULL", "NORMAL"):
            s = DocStore.create(Path(tmp) / f"{mode}.sqlite", dim=384, embedding_dtype="f16")
            s._writer.execute(f"PRAGMA synchronous={mode}")
            stores[mode] = s
        print(f"{'batch':>6} {'mode':>7} {'median ms':>10} {'p99 ms':>8} {'per doc ms':>11}")
        for size in (1, 32):
            times: dict[str, list[float]] = {m: [] for m in stores}
            for b in range(args.batches):
                for mode, s in stores.items():  # interleaved: same disk state for both
                    docs = [Document(f"{size}-{b}-{i}", text) for i in range(size)]
                    vec = rng.standard_normal((size, 384)).astype(np.float32)
                    t0 = time.perf_counter()
                    s.upsert(docs, vec)
                    times[mode].append((time.perf_counter() - t0) * 1000.0)
            for mode, ts in times.items():
                med = statistics.median(ts)
                p99 = sorted(ts)[int(0.99 * (len(ts) - 1))]
                print(f"{size:>6} {mode:>7} {med:>10.2f} {p99:>8.2f} {med / size:>11.3f}")
        for s in stores.values():
            s.close()
    print(f"(nproc {os.cpu_count()}, {args.batches} batches each, folder {args.dir or 'tmp'})")


if __name__ == "__main__":
    main()
