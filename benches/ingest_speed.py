"""Ingest speed: where the bi-encoder's time goes and what each batching choice buys.

Embeds the same sample of SciFact abstracts (the issue's "SciFact-length passages") with the
shipped MiniLM-L6 int8 encoder under several variants, in turn within each round (rounds
interleave the variants, so load drift hits them alike), and prints docs/s per variant with
its share of the int8 FLOP floor on this machine:

- ``sorted-bN``: what ``Encoder.encode`` does (length-sorted batches of N, each padded to its
  own longest row), one session with 2 intra-op threads;
- ``unsorted-b32``: batches in input order, padded to their longest row;
- ``fixed-b32``: every batch padded to the model's full 256 tokens (fixed shapes);
- ``2x1t-b32``: two one-thread sessions side by side (two Python threads: onnxruntime releases
  the GIL), each on half of the batches: what the reranker does row-wise;
- ``2proc-b32``: two processes with one one-thread session each, half of the texts each
  (start-up and model load excluded: both are timed from a barrier).

The floor: per document, the int8 ops of the encoder at its real token count (sorted/
unsorted/fixed: at the padded count actually computed), ``2 * 12 h^2`` a token a layer for the
weight matrices plus ``4 L h`` for attention, at ``--ceiling`` TOP/s (the quiet int8 GEMM
ceiling of 2 Zen 4 cores measured in BENCHMARKS.md §5 is 0.8).

    .venv/bin/python benches/ingest_speed.py --docs 512 --rounds 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import multiprocessing as mp
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from twostage._onnx import Batch, pad
from twostage.encoder import Encoder

SCIFACT = Path(__file__).resolve().parents[2] / "shared" / "data" / "scifact" / "corpus.jsonl.gz"
LAYERS, HIDDEN = 6, 384  # all-MiniLM-L6-v2


def load_texts(n: int) -> list[str]:
    texts = []
    with gzip.open(SCIFACT, "rt") as f:
        for line in f:
            d = json.loads(line)
            texts.append(f"{d.get('title', '')} {d.get('text', '')}".strip())
            if len(texts) == n:
                break
    return texts


def ops(padded_lengths: list[int]) -> float:
    """int8 ops (multiply-adds x 2) the encoder computes over rows of these lengths."""
    per_token = 24 * HIDDEN * HIDDEN
    return float(sum(L * LAYERS * (per_token + 4 * L * HIDDEN) for L in padded_lengths))


def chunks(batches: list[Batch], parts: int) -> list[list[Batch]]:
    return [batches[i::parts] for i in range(parts)]


def run_all(enc: Encoder, batches: list[Batch]) -> None:
    for b in batches:
        enc.postprocess(enc.run(b), b)


def _proc(texts: list[str], batch: int, barrier: object, out: object) -> None:
    enc = Encoder.load("minilm-l6", threads=1)
    ids = enc.tokenize(texts)
    batches = enc.batches(ids, batch)
    run_all(enc, batches[:1])  # warm
    barrier.wait()  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    run_all(enc, batches)
    out.put(time.perf_counter() - t0)  # type: ignore[attr-defined]


def two_processes(texts: list[str], batch: int) -> float:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(3), ctx.Queue()
    half = len(texts) // 2
    procs = [
        ctx.Process(target=_proc, args=(part, batch, barrier, out))
        for part in (texts[:half], texts[half:])
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    times = [out.get(), out.get()]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return max(wall, *times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ceiling", type=float, default=0.8, help="int8 TOP/s of this machine")
    ap.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = ap.parse_args()

    texts = load_texts(args.docs)
    enc2 = Encoder.load("minilm-l6", threads=2)
    ones = [Encoder.load("minilm-l6", threads=1) for _ in range(2)]
    ids = enc2.tokenize(texts)
    real = [len(s) for s in ids]
    full = enc2.max_length

    def sorted_b(n: int) -> list[Batch]:
        return enc2.batches(ids, n)

    unsorted = [
        pad(list(range(i, min(i + 32, len(ids)))), ids[i : i + 32]) for i in range(0, len(ids), 32)
    ]
    fixed = [_to_length(b, full) for b in unsorted]

    def side_by_side(batches: list[Batch]) -> None:
        parts = zip(ones, chunks(batches, 2), strict=True)
        ts = [threading.Thread(target=run_all, args=part) for part in parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    variants: dict[str, tuple[Callable[[], float], list[int]]] = {}

    def timed(fn: Callable[[], None]) -> Callable[[], float]:
        def go() -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        return go

    for n in (16, 32, 64, 128):
        bs = sorted_b(n)
        variants[f"sorted-b{n}"] = (
            timed(lambda bs=bs: run_all(enc2, bs)),
            [b.input_ids.shape[1] for b in bs for _ in range(len(b.rows))],
        )
    variants["unsorted-b32"] = (
        timed(lambda: run_all(enc2, unsorted)),
        [b.input_ids.shape[1] for b in unsorted for _ in range(len(b.rows))],
    )
    variants["fixed-b32"] = (timed(lambda: run_all(enc2, fixed)), [full] * len(ids))
    b32 = sorted_b(32)
    variants["2x1t-b32"] = (
        timed(lambda: side_by_side(b32)),
        [b.input_ids.shape[1] for b in b32 for _ in range(len(b.rows))],
    )
    variants["2proc-b32"] = (
        lambda: two_processes(texts, 32),
        variants["sorted-b32"][1],
    )

    for _name, (fn, _) in variants.items():  # warm every path once
        if _name != "2proc-b32":
            fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(args.rounds):
        order = list(variants)[r % len(variants) :] + list(variants)[: r % len(variants)]
        for name in order:
            times[name].append(variants[name][0]())
    cpu = _cpu()
    floor_real = ops(real) / (args.ceiling * 1e12)
    print(
        f"\n{len(texts)} SciFact abstracts, mean {statistics.mean(real):.0f} tokens "
        f"(max {max(real)}; {sum(x >= full for x in real)} truncated at {full}); "
        f"{cpu}; onnxruntime {ort.__version__}; load {os.getloadavg()[0]:.1f}"
    )
    print(
        f"floor at the real token counts: {floor_real:.2f} s = "
        f"{len(texts) / floor_real:.0f} docs/s at {args.ceiling} TOP/s int8\n"
    )
    print("| variant | docs/s (median of rounds) | best | padded tokens/doc | share of the floor |")
    print("|---|---:|---:|---:|---:|")
    rows = []
    for name, (_, lengths) in variants.items():
        med = statistics.median(times[name])
        floor = ops(lengths) / (args.ceiling * 1e12)
        rows.append(
            {
                "variant": name,
                "docs_per_s": len(texts) / med,
                "best_docs_per_s": len(texts) / min(times[name]),
                "padded_tokens": statistics.mean(lengths),
                "share_of_floor": floor / med,
                "seconds": times[name],
            }
        )
        print(
            f"| {name} | {len(texts) / med:.1f} | {len(texts) / min(times[name]):.1f} | "
            f"{statistics.mean(lengths):.0f} | {floor / med:.0%} |"
        )
    if args.out:
        args.out.write_text(json.dumps({"cpu": cpu, "docs": len(texts), "rows": rows}, indent=1))


def _to_length(b: Batch, length: int) -> Batch:
    n, seq = b.input_ids.shape
    grow = np.zeros((n, length - seq), dtype=np.int64)
    return Batch(
        b.rows,
        np.concatenate([b.input_ids, grow], axis=1),
        np.concatenate([b.attention_mask, grow], axis=1),
        np.concatenate([b.token_type_ids, grow], axis=1),
    )


def _cpu() -> str:
    name, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    have = [f for f in ("avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16") if f in flags]
    return f"{os.cpu_count()} cores, {name} ({', '.join(have) or 'no VNNI/AMX'})"


if __name__ == "__main__":
    main()
