"""Benchmark the models layer on this machine; writes benches/out/models.md.

    .venv/bin/python benches/models.py            # full run (a few minutes on 2 cores)
    .venv/bin/python benches/models.py --quick    # smaller samples, for a smoke check

Measures query-encode latency, corpus encode throughput on SciFact passages, cross-encoder
latency by pair count and max length (fp32 vs int8), and achieved GFLOP/s next to two
measured ceilings: a large float32 numpy matmul and onnxruntime's own int8 MatMulInteger.
The cross-encoder is MiniLM-L6-shaped (all-MiniLM-L6-v2 weights plus a random classifier
head): its latency does not depend on what the head learned.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
OUT = ROOT / "benches" / "out"

from twostage._onnx import default_threads, make_session  # noqa: E402
from twostage.encoder import Encoder  # noqa: E402
from twostage.export import load_weights  # noqa: E402
from twostage.reranker import Reranker  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def timeit(
    fn: Callable[[], object], *, min_reps: int, max_reps: int, budget_s: float
) -> np.ndarray:
    """Run ``fn`` after one warm-up until ``budget_s`` passes (within the rep bounds)."""
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_reps and (
        len(times) < min_reps or time.perf_counter() - start < budget_s
    ):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return np.asarray(times)


def pct(t: np.ndarray, q: float) -> float:
    return float(np.percentile(t, q) * 1000)


# ---- FLOP counts ---------------------------------------------------------------------------


def bert_flops(config: dict, batch: int, seq: int) -> float:
    """2 * matmul params per token + 4 * L^2 * h attention per layer (QK^T and AV)."""
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    per_layer_params = 4 * h * h + 2 * h * i
    return batch * n * (2.0 * per_layer_params * seq + 4.0 * seq * seq * h)


# ---- ceilings ------------------------------------------------------------------------------


def numpy_f32_ceiling(size: int, budget: float) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    t = timeit(lambda: a @ b, min_reps=3, max_reps=20, budget_s=budget)
    return 2 * size**3 / float(np.median(t)) / 1e9


def ort_gemm_ceiling(size: int, int8: bool, threads: int, budget: float) -> float:
    """onnxruntime's own GEMM on a one-node model: MatMulInteger (u8 x s8) or MatMul (f32)."""
    rng = np.random.default_rng(0)
    if int8:
        b = rng.integers(-127, 128, (size, size), dtype=np.int8)
        node = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        a = rng.integers(0, 256, (size, size), dtype=np.uint8)
    else:
        b = rng.standard_normal((size, size), dtype=np.float32)
        node = helper.make_node("MatMul", ["a", "b"], ["y"])
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        a = rng.standard_normal((size, size), dtype=np.float32)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("a", a_type, [size, size])],
        [helper.make_tensor_value_info("y", y_type, [size, size])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gemm.onnx"
        onnx.save(model, path)
        sess = make_session(path, threads=threads)
    t = timeit(lambda: sess.run(None, {"a": a}), min_reps=3, max_reps=20, budget_s=budget)
    return 2 * size**3 / float(np.median(t)) / 1e9


# ---- data and models -----------------------------------------------------------------------


def scifact() -> tuple[list[str], list[str]]:
    path = SCIFACT / "corpus.jsonl.gz"
    opener = gzip.open if path.suffix == ".gz" else open
    if not path.is_file():
        path = SCIFACT / "corpus.jsonl"
    with opener(path, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    with open(SCIFACT / "queries.jsonl", encoding="utf-8") as f:
        queries = [json.loads(line)["text"] for line in f]
    return [(d.get("title", "") + " " + d["text"]).strip() for d in docs], queries


def minilm_cross_encoder(folder: Path) -> Path:
    """all-MiniLM-L6-v2's encoder + pooler weights with a random 1-label classifier head."""
    from safetensors.numpy import save_file
    from twostage._models import minilm_checkpoint

    src = minilm_checkpoint()
    if (folder / "model.safetensors").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    w = {"bert." + k: v for k, v in load_weights(src / "model.safetensors").items()}
    rng = np.random.default_rng(0)
    h = w["bert.embeddings.word_embeddings.weight"].shape[1]
    w.setdefault(
        "bert.pooler.dense.weight", (rng.standard_normal((h, h)) * 0.02).astype(np.float32)
    )
    w.setdefault("bert.pooler.dense.bias", np.zeros(h, np.float32))
    w["classifier.weight"] = (rng.standard_normal((1, h)) * 0.02).astype(np.float32)
    w["classifier.bias"] = np.zeros(1, np.float32)
    save_file(w, str(folder / "model.safetensors"))
    config = json.loads((src / "config.json").read_text())
    config.update(architectures=["BertForSequenceClassification"], num_labels=1)
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_bytes((src / "tokenizer.json").read_bytes())
    (folder / "twostage.json").write_text(json.dumps({"kind": "reranker", "max_length": 512}))
    return folder


# ---- the benchmark -------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="small samples (smoke check)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--lengths", default="128,256", help="reranker max lengths, e.g. 128,256,512")
    ap.add_argument("--out", type=Path, default=OUT / "models.md")
    args = ap.parse_args()
    quick, threads = args.quick, args.threads
    budget = 1.0 if quick else 4.0
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    from twostage._models import minilm_checkpoint

    minilm_cfg = json.loads((minilm_checkpoint() / "config.json").read_text())
    load_before = load_avg()
    emit("## Models (encoder, cross-encoder) on CPU")
    emit()
    emit(f"- command: `{' '.join([Path(sys.executable).name, *sys.argv])}`")
    emit(f"- date: {dt.datetime.now().isoformat(timespec='seconds')}")
    emit(f"- machine: `nproc`={os.cpu_count()}, CPU: {cpu_model()}, threads used: {threads}")
    emit(
        f"- onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"python {platform.python_version()}"
    )
    emit(
        f"- load average at start (1/5/15 min): {load_before} "
        "(the cores are shared with other work)"
    )
    emit()

    # ---- ceilings
    emit("### Ceilings (measured here)")
    emit()
    emit("| kernel | size | GFLOP/s (GOP/s for int8) |")
    emit("|---|---|---|")
    size = 1024 if quick else 2048
    f32_np = numpy_f32_ceiling(size, budget)
    f32_ort = ort_gemm_ceiling(size, False, threads, budget)
    i8_ort = ort_gemm_ceiling(size, True, threads, budget)
    emit(f"| numpy float32 matmul | {size}³ | {f32_np:.0f} |")
    emit(f"| onnxruntime float32 MatMul | {size}³ | {f32_ort:.0f} |")
    emit(f"| onnxruntime int8 MatMulInteger (u8 x s8 -> s32) | {size}³ | {i8_ort:.0f} |")
    emit()

    docs, queries = scifact()

    # ---- query encode latency
    emit("### Query encode latency (single short query, SciFact queries in turn)")
    emit()
    emit("| precision | n | p50 ms | p99 ms |")
    emit("|---|---|---|---|")
    encoders = {
        p: Encoder.load("minilm-l6", precision=p, threads=threads) for p in ("fp32", "int8")
    }
    for p, enc in encoders.items():
        it = iter(queries * 10)
        t = timeit(
            lambda enc=enc, it=it: enc.encode([next(it)], kind="query"),
            min_reps=50,
            max_reps=300 if quick else 1000,
            budget_s=budget,
        )
        emit(f"| {p} | {len(t)} | {pct(t, 50):.2f} | {pct(t, 99):.2f} |")
    emit()

    # ---- corpus throughput
    n_docs = 256 if quick else 1024
    sample = docs[:n_docs]
    emit(
        f"### Corpus encode throughput (first {n_docs} SciFact abstracts, "
        "title + text, max 256 tokens)"
    )
    emit()
    emit(
        "| precision | batch | docs/s | real tok/s | padded tok/s "
        "| GFLOP/s (padded) | / int8 ceiling |"
    )
    emit("|---|---|---|---|---|---|---|")
    for p, enc in encoders.items():
        ids = enc.tokenize(sample)
        for bs in (32,) if quick else (16, 32, 64):
            batches = enc.batches(ids, bs)
            flops = sum(bert_flops(minilm_cfg, *b.input_ids.shape) for b in batches)
            padded = sum(b.tokens for b in batches)
            real = sum(len(x) for x in ids)
            t0 = time.perf_counter()
            enc.encode(sample, batch_size=bs)
            dt_s = time.perf_counter() - t0
            emit(
                f"| {p} | {bs} | {n_docs / dt_s:.1f} | {real / dt_s:.0f} | {padded / dt_s:.0f} "
                f"| {flops / dt_s / 1e9:.0f} | {flops / dt_s / 1e9 / i8_ort:.2f} |"
            )
    emit()

    # ---- reranker latency
    ce_dir = minilm_cross_encoder(
        Path(os.environ.get("TWOSTAGE_HOME", Path.home() / ".cache" / "twostage"))
        / "bench"
        / "minilm-l6-ce-random"
    )
    lengths = [int(x) for x in args.lengths.split(",")]
    emit("### Cross-encoder latency (MiniLM-L6-shaped, 1 query vs n SciFact abstracts)")
    emit()
    emit(
        "All pairs of a request in one batch (sorted by length); "
        "pairs fill max_length except short abstracts."
    )
    emit()
    emit(
        "| precision | max_length | pairs | n | p50 ms | p99 ms | mean tokens/pair "
        "| GFLOP/s | / int8 ceiling |"
    )
    emit("|---|---|---|---|---|---|---|---|---|")
    doc_rng = np.random.default_rng(1)
    for p in ("fp32", "int8"):
        for max_len in lengths:
            rr = Reranker.load(ce_dir, precision=p, max_length=max_len, threads=threads)
            doc_ids = rr.tokenize_documents(docs[:2000])
            for n in (10, 20, 50, 100):
                picks = [doc_ids[i] for i in doc_rng.choice(len(doc_ids), n, replace=False)]
                q = queries[n]
                pairs = rr.pack(rr.tokenize_query(q), picks)
                batches = rr.batches(pairs, n)
                flops = sum(bert_flops(minilm_cfg, *b.input_ids.shape) for b in batches)
                t = timeit(
                    lambda rr=rr, q=q, picks=picks, n=n: rr.score_tokens(q, picks, batch_size=n),
                    min_reps=3,
                    max_reps=200,
                    budget_s=budget,
                )
                med = float(np.median(t))
                emit(
                    f"| {p} | {max_len} | {n} | {len(t)} | {pct(t, 50):.1f} | {pct(t, 99):.1f} "
                    f"| {np.mean([len(x) for x in pairs.ids]):.0f} | {flops / med / 1e9:.0f} "
                    f"| {flops / med / 1e9 / i8_ort:.2f} |"
                )
    emit()

    # ---- variants: graph style, batch shape, threads
    emit("### What moves the int8 cross-encoder (100 pairs, max_length 128)")
    emit()
    emit("| variant | p50 ms | GFLOP/s |")
    emit("|---|---|---|")
    rr = Reranker.load(ce_dir, precision="int8", max_length=128, threads=threads)
    doc_ids = rr.tokenize_documents(docs[:100])
    q = queries[0]
    pairs = rr.pack(rr.tokenize_query(q), doc_ids)
    flops = sum(bert_flops(minilm_cfg, *b.input_ids.shape) for b in rr.batches(pairs, 100))

    def gflops(t: np.ndarray) -> float:
        return flops / float(np.median(t)) / 1e9

    for label, kwargs in [
        ("contrib-op graph, 1 batch of 100", {"batch_size": 100}),
        ("contrib-op graph, batches of 25", {"batch_size": 25}),
        ("contrib-op graph, batches of 10", {"batch_size": 10}),
    ]:
        t = timeit(
            lambda kwargs=kwargs: rr.score_tokens(q, doc_ids, **kwargs),
            min_reps=3,
            max_reps=50,
            budget_s=budget,
        )
        emit(f"| {label} | {pct(t, 50):.1f} | {flops / float(np.median(t)) / 1e9:.0f} |")
    if threads > 1:
        rr1 = Reranker.load(ce_dir, precision="int8", max_length=128, threads=1)
        t = timeit(
            lambda: rr1.score_tokens(q, doc_ids, batch_size=100),
            min_reps=3,
            max_reps=50,
            budget_s=budget,
        )
        emit(f"| contrib-op graph, 1 thread | {pct(t, 50):.1f} | {gflops(t):.0f} |")
    feeds = rr.batches(pairs, 100)[0].feeds(["input_ids", "attention_mask", "token_type_ids"])
    for variant, label in [
        ("std-op", "standard-op graph, dynamic int8 (ORT fuses LayerNorm/GELU, not attention)"),
        ("mha", "MatMul QKV + MultiHeadAttention, dynamic int8"),
        ("nbits8", "weight-only 8-bit MatMulNBits (block 32, int8 compute)"),
    ]:
        sess = variant_session(ce_dir, variant, threads)
        if sess is None:
            emit(f"| {label} | not run (onnx-ir not installed) | |")
            continue
        t = timeit(
            lambda sess=sess: sess.run(None, feeds), min_reps=3, max_reps=50, budget_s=budget
        )
        emit(f"| {label} | {pct(t, 50):.1f} | {gflops(t):.0f} |")
    emit()

    # ---- mixed sessions
    emit("### Encoder and cross-encoder sessions used in turn (spinning off)")
    emit()
    enc = encoders["int8"]
    it = iter(queries * 10)
    alone = timeit(
        lambda: enc.encode([next(it)], kind="query"), min_reps=50, max_reps=500, budget_s=budget
    )
    small = doc_ids[:10]

    def mixed() -> None:
        enc.encode([next(it)], kind="query")
        rr.score_tokens(q, small, batch_size=10)

    both = timeit(mixed, min_reps=30, max_reps=300, budget_s=budget)
    rr_alone = timeit(
        lambda: rr.score_tokens(q, small, batch_size=10), min_reps=30, max_reps=300, budget_s=budget
    )
    emit("| measure | p50 ms | p99 ms |")
    emit("|---|---|---|")
    emit(f"| query encode alone | {pct(alone, 50):.2f} | {pct(alone, 99):.2f} |")
    emit(f"| rerank 10 pairs alone | {pct(rr_alone, 50):.2f} | {pct(rr_alone, 99):.2f} |")
    emit(f"| query encode + rerank 10, in turn | {pct(both, 50):.2f} | {pct(both, 99):.2f} |")
    emit()
    emit(f"- load average at end: {load_avg()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {args.out}", file=sys.stderr)


def variant_session(ce_dir: Path, variant: str, threads: int) -> ort.InferenceSession | None:
    """The same cross-encoder in another graph style or quantisation, as a raw session.

    ``std-op``: standard ONNX ops only, dynamic int8. ``mha``: QKV as a plain MatMul plus
    MultiHeadAttention, dynamic int8. ``nbits8``: weight-only 8-bit MatMulNBits (block 32,
    accuracy_level 4 = int8 compute), needs the ``onnx-ir`` package; None when absent.
    """
    from twostage.export import BertConfig, build_bert_graph, quantize_int8, save_atomic

    cache = ce_dir.parent / variant
    q = cache / "model_q.onnx"
    if not q.is_file():
        if variant == "nbits8":
            try:
                from onnxruntime.quantization.matmul_nbits_quantizer import (
                    DefaultWeightOnlyQuantConfig,
                    MatMulNBitsQuantizer,
                )
            except ImportError:
                return None
        cache.mkdir(parents=True, exist_ok=True)
        model = build_bert_graph(
            BertConfig.from_file(ce_dir / "config.json"),
            load_weights(ce_dir / "model.safetensors"),
            head="classifier",
            fused=variant != "std-op",
            attention="mha" if variant == "mha" else "attention",
        )
        save_atomic(model, cache / "model.onnx")
        if variant == "nbits8":
            cfg = DefaultWeightOnlyQuantConfig(
                block_size=32, is_symmetric=True, accuracy_level=4, bits=8
            )
            quantizer = MatMulNBitsQuantizer(onnx.load(cache / "model.onnx"), algo_config=cfg)
            quantizer.process()
            quantizer.model.save_model_to_file(str(q), False)
        else:
            quantize_int8(cache / "model.onnx", q)
    return make_session(q, threads=threads)


if __name__ == "__main__":
    main()
