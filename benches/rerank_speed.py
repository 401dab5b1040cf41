"""The reranker's cost per pair on this CPU, and against its int8 FLOP floor.

100 (query, SciFact abstract) pairs, scored by the shipped ``twostage-rerank``, in rounds
with every variant timed in turn (interleaved), medians and p99 over the rounds:

* ``batched``: the old way, one onnxruntime run over length-sorted padded batches of 16 with
  2 intra-op threads (scores depend on batch-mates: dynamic int8 scales per tensor);
* ``row-wise``: what ``Reranker`` does on the CPU now, one pair per run, 2 runs at a time
  on 1 thread each (batch-invariant), with the SkipLayerNormalization nodes unfused;
* ``row-wise, fused SLN``: the same with the graph as the file has it;
* ``row-wise @ L``: pair lengths 64 and 96 instead of 128.

The floor: a BERT layer of hidden size h and FFN size 4h costs 4h^2 + 8h^2 = 12 h^2
multiply-adds (24 h^2 ops) per token in its matrix products, plus 2 L h multiply-adds per
token for attention over L tokens. At the CPU's measured int8 ceiling (``--peak-tops``,
tera-ops/s for the 2 cores; 0.8 for the quiet Zen 4 here, DESIGN.md) that is the least
time a pair can take::

    python benches/rerank_speed.py --rounds 15     # BENCHMARKS.md, "The second stage"
    python benches/rerank_speed.py --encoder       # the same graph change on the encoder

``--openvino`` adds onnxruntime's OpenVINO execution provider (the ``onnxruntime-openvino``
wheel, which replaces ``onnxruntime``: use a separate environment) on the same file, row-wise
and in batches, and for ``--encoder`` beside the CPU provider::

    python3.11 -m venv /tmp/ov && /tmp/ov/bin/pip install onnxruntime-openvino numpy \
        tokenizers onnx safetensors tqdm tantivy
    PYTHONPATH=python /tmp/ov/bin/python benches/rerank_speed.py --openvino --rounds 7
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import numpy as np
import onnxruntime as ort
from twostage._onnx import make_session, pad
from twostage.reranker import Reranker
from twostage.train.data import SHARED

QUERY = "vitamin D supplementation reduces the risk of fractures in the elderly"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--pairs", type=int, default=100)
    ap.add_argument("--peak-tops", type=float, default=0.8)
    ap.add_argument("--encoder", action="store_true", help="encoder docs/s, SLN fused vs not")
    ap.add_argument("--openvino", action="store_true", help="add the OpenVINO EP's variants")
    a = ap.parse_args()
    if a.openvino and "OpenVINOExecutionProvider" not in ort.get_available_providers():
        ap.error(
            "--openvino: this onnxruntime has no OpenVINO EP (pip install onnxruntime-openvino)"
        )
    if a.encoder:
        encoder_speed(a.rounds, openvino=a.openvino)
        return
    docs: list[str] = []
    with gzip.open(SHARED / "data" / "scifact" / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            docs.append(f"{row.get('title', '')}. {row['text']}")
            if len(docs) == a.pairs:
                break
    path = str(resources.files("twostage") / "models" / "twostage-rerank" / "model_int8.onnx")
    rr = Reranker.load("twostage-rerank", max_length=128)
    q = rr.tokenize_query(QUERY)
    d = rr.tokenize_documents(docs)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fused1 = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    opts2 = ort.SessionOptions()
    opts2.intra_op_num_threads = 2
    opts2.add_session_config_entry("session.intra_op.allow_spinning", "0")
    fused2 = ort.InferenceSession(path, opts2, providers=["CPUExecutionProvider"])
    unfused1 = make_session(path, threads=1)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    pool = ThreadPoolExecutor(2)

    def packed(length: int) -> tuple[list[list[int]], list[list[int]]]:
        rr._max_length = length  # the pair budget only; the model is the same
        p = rr.pack(q, d)
        rr._max_length = 128
        return p.ids, p.type_ids

    def rows(sess: ort.InferenceSession, length: int) -> None:
        ids, types = packed(length)

        def one(i: int) -> None:
            sess.run(None, pad([0], [ids[i]], [types[i]]).feeds(names))

        list(pool.map(one, range(len(ids))))

    def batched16(sess: ort.InferenceSession) -> None:
        ids, types = packed(128)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        for s in range(0, len(order), 16):
            r = order[s : s + 16]
            sess.run(None, pad(r, [ids[i] for i in r], [types[i] for i in r]).feeds(names))

    variants = {
        "batched (16 pairs/run, 2 threads, fused SLN)": lambda: batched16(fused2),
        "row-wise, fused SLN (2 x 1 thread)": lambda: rows(fused1, 128),
        "row-wise (shipped: 2 x 1 thread, unfused SLN) @128": lambda: rows(unfused1, 128),
        "row-wise @96": lambda: rows(unfused1, 96),
        "row-wise @64": lambda: rows(unfused1, 64),
    }
    if a.openvino:
        ov1, ov2 = openvino_session(path, 1), openvino_session(path, 2)
        variants["OpenVINO EP, row-wise (2 x 1 thread)"] = lambda: rows(ov1, 128)
        variants["OpenVINO EP, batched (16 pairs/run, 2 threads)"] = lambda: batched16(ov2)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for f in variants.values():
        f()  # warm-up
    for _ in range(a.rounds):
        for k, f in variants.items():
            t = time.perf_counter()
            f()
            times[k].append((time.perf_counter() - t) * 1000)
    h, layers = 384, 3
    print(f"| variant | {a.pairs} pairs p50 ms | p99 ms | ms/pair | share of the int8 floor |")
    print("|---|---|---|---|---|")
    for k, v in times.items():
        length = 96 if "@96" in k else 64 if "@64" in k else 128
        ids, _ = packed(length)
        toks = sum(len(x) for x in ids)
        ops = layers * toks * 2 * (12 * h * h + 2 * length * h)  # GEMMs + attention
        floor_ms = ops / (a.peak_tops * 1e12) * 1000
        p50 = float(np.median(v))
        print(
            f"| {k} | {p50:.0f} | {np.percentile(v, 99):.0f} | {p50 / a.pairs:.2f} | "
            f"{floor_ms / p50:.0%} (floor {floor_ms:.0f} ms) |"
        )


def openvino_session(path: str, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # the nodes OpenVINO leaves to the CPU provider: shapes
    options = {"device_type": "CPU", "num_of_threads": str(threads)}
    return ort.InferenceSession(path, opts, providers=[("OpenVINOExecutionProvider", options)])


def encoder_speed(rounds: int, n: int = 256, openvino: bool = False) -> None:
    """MiniLM-L6 int8 (2 threads, batches of 32, SciFact abstracts at up to 256 tokens):
    the graph as exported (SkipLayerNormalization fused) against the session twostage
    makes (unfused), interleaved."""
    from twostage._models import resolve
    from twostage.encoder import Encoder

    docs: list[str] = []
    with gzip.open(SHARED / "data" / "scifact" / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            docs.append(f"{row.get('title', '')}. {row['text']}")
            if len(docs) == n:
                break
    enc = Encoder.load("minilm-l6")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    path = str(resolve("minilm-l6", "encoder", "int8").onnx)
    sessions = {
        "fused SLN (the file as is)": ort.InferenceSession(
            path, opts, providers=["CPUExecutionProvider"]
        ),
        "unfused SLN (twostage's session)": enc._session,
    }
    if openvino:
        sessions["OpenVINO EP (2 threads)"] = openvino_session(path, 2)
    times: dict[str, list[float]] = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, sess in sessions.items():
            enc._session = sess
            t = time.perf_counter()
            enc.encode(docs, batch_size=32)
            times[k].append(time.perf_counter() - t)
    for k, v in times.items():
        print(f"| {k} | {n / float(np.median(v)):.0f} docs/s |")


if __name__ == "__main__":
    main()
