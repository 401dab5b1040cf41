"""Evaluation for training runs: first stage vs reranked NDCG@10, and reranker latency.

First stage: the project's Encoder and exact search over the whole corpus (the number an
HNSW index approximates). Reranked: the top ``depth`` candidates rescored by a
:class:`~twostage.reranker.Reranker` (int8 ONNX, what serving runs), the rest kept in
first-stage order below them. ``fusion=w`` also reports ``logit + w * cosine``.

NDCG@10 comes from :mod:`twostage.metrics`, the project's one implementation (ir-measures,
trec_eval's definition: gain = relevance grade, log2 discount, ideal from the qrels; ties in
a run broken by document id, as trec_eval does).

No PyTorch here.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from twostage import metrics
from twostage.engine import fuse
from twostage.train.data import load_beir_eval
from twostage.train.mine import encode, exact_topk

Run = Mapping[str, Mapping[str, float]]
Qrels = Mapping[str, Mapping[str, int]]


def ndcg_at_k(qrels: Qrels, run: Run, k: int = 10) -> float:
    """Mean NDCG@k over the queries in ``qrels`` (a query missing from ``run`` scores 0):
    :func:`twostage.metrics.ndcg`.

    >>> ndcg_at_k({"q": {"a": 1}}, {"q": {"b": 2.0, "a": 1.0}}, 10)  # doctest: +ELLIPSIS
    0.6309...
    """
    return metrics.ndcg(qrels, run, k)


def ndcg10(qrels: Qrels, run: Run) -> float:
    """Mean NDCG@10 over the queries in ``qrels``: :func:`twostage.metrics.ndcg10`."""
    return metrics.ndcg10(qrels, run)


def _key(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def first_stage(
    queries: dict[str, str],
    corpus: dict[str, str],
    k: int,
    *,
    encoder: Any = None,
    cache: Path | None = None,
) -> dict[str, list[tuple[str, float]]]:
    """Exact top-k by the encoder's cosine for each query: ``{qid: [(doc, cos), ...]}``."""
    from twostage.encoder import Encoder

    enc = encoder or Encoder.load("minilm-l6")
    pids = sorted(corpus)
    dv = None
    if cache is not None:
        # Keyed by the texts, not only the ids: the same ids with other text (titles only,
        # an edited corpus) must not read vectors cached for different words.
        ident = _key(*(f"{p}\x1f{corpus[p]}" for p in pids), str(len(pids)))
        path = Path(cache) / f"docs-{enc.fingerprint}-{ident}.npy"
        if path.is_file():
            dv = np.load(path)
    if dv is None:
        dv = encode(enc, [corpus[p] for p in pids], "document")
        if cache is not None:
            Path(cache).mkdir(parents=True, exist_ok=True)
            np.save(path, dv)
    qids = sorted(queries)
    qv = encode(enc, [queries[q] for q in qids], "query")
    idx, val = exact_topk(qv, dv, k)
    return {
        q: [(pids[j], float(s)) for j, s in zip(idx[i], val[i], strict=True)]
        for i, q in enumerate(qids)
    }


def rerank_run(
    cands: dict[str, list[tuple[str, float]]],
    logits: dict[str, np.ndarray],
    depth: int,
    fusion: float | None = None,
    rule: str = "linear",
) -> dict[str, dict[str, float]]:
    """A run where the top ``depth`` are ordered by logit (fused with the cosine by
    :func:`twostage.engine.fuse` when ``fusion`` is given), the rest follow in first-stage
    order (scores kept strictly below the reranked ones)."""
    run: dict[str, dict[str, float]] = {}
    for q, lst in cands.items():
        top, rest = lst[:depth], lst[depth:]
        s = logits[q][: len(top)].astype(np.float64)
        if fusion is not None:
            s = fuse(s, np.array([c for _, c in top]), fusion, rule)
        scores = {d: 1000.0 + float(v) for (d, _), v in zip(top, s, strict=True)}
        for i, (d, _) in enumerate(rest):
            scores[d] = -float(i)
        run[q] = scores
    return run


FUSION_GRID = (
    0.0,
    0.5,
    1.0,
    2.0,
    3.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
    50.0,
    75.0,
    100.0,
    150.0,
    200.0,
)
#: For ``rule="z"`` the weight is the cosine's share, in [0, 1].
Z_FUSION_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def score_candidates(
    rr: Any,
    queries: dict[str, str],
    corpus: dict[str, str],
    cands: dict[str, list[tuple[str, float]]],
    depth: int,
) -> dict[str, np.ndarray]:
    """Reranker logits for each query's top ``depth`` candidates."""
    out: dict[str, np.ndarray] = {}
    for q, lst in cands.items():
        docs = [corpus[d] for d, _ in lst[:depth]]
        out[q] = rr.score_tokens(queries[q], rr.tokenize_documents(docs))
    return out


def fit_fusion(
    qrels: Qrels,
    cands: dict[str, list[tuple[str, float]]],
    logits: dict[str, np.ndarray],
    depth: int,
    grid: Sequence[float] | None = None,
    rule: str = "linear",
) -> tuple[float, dict[str, float]]:
    """The fusion weight with the best NDCG@10 (ties: smaller w): ``w`` in
    ``logit + w * cosine`` (``rule="linear"``), or the cosine's share (``"z"``).

    Fit it on training queries held out from training, never on a test split.
    """
    if grid is None:
        grid = Z_FUSION_GRID if rule == "z" else FUSION_GRID
    table = {str(w): ndcg10(qrels, rerank_run(cands, logits, depth, w, rule)) for w in grid}
    best = max(grid, key=lambda w: (round(table[str(w)], 6), -w))
    return float(best), {k: round(v, 4) for k, v in table.items()}


def evaluate_collection(
    folder: Path,
    model: str | None,
    *,
    depths: Sequence[int] = (10, 20, 50),
    split: str = "test",
    fusion: float | None = None,
    max_length: int | None = None,
    cache: Path | None = None,
    first_k: int = 100,
    reranker: Any = None,
    query_ids: Sequence[str] | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """NDCG@10 of the first stage and of reranking at each depth on one BEIR split.

    ``query_ids`` restricts the queries (e.g. training queries held out as a dev set);
    ``keep`` also returns the candidates, logits and qrels (keys starting with ``_``).
    """
    queries, corpus, qrels = load_beir_eval(Path(folder), split)
    if query_ids is not None:
        keep_ids = set(query_ids)
        queries = {q: t for q, t in queries.items() if q in keep_ids}
        qrels = {q: r for q, r in qrels.items() if q in keep_ids}
    k = max(first_k, *depths)
    cands = first_stage(queries, corpus, k, cache=cache)
    fs_run = {q: {d: s for d, s in lst} for q, lst in cands.items()}
    out: dict[str, Any] = {
        "collection": Path(folder).name,
        "split": split,
        "queries": len(queries),
        "documents": len(corpus),
        "first_stage": round(ndcg10(qrels, fs_run), 4),
    }
    if model is None and reranker is None:
        return out
    from twostage.reranker import Reranker

    rr = reranker or Reranker.load(model or "", max_length=max_length)
    out["model"] = rr.version
    dmax = max(depths)
    t0 = time.perf_counter()
    logits = score_candidates(rr, queries, corpus, cands, dmax)
    out["rerank_seconds"] = round(time.perf_counter() - t0, 1)
    out["reranked"] = {
        str(d): round(ndcg10(qrels, rerank_run(cands, logits, d)), 4) for d in depths
    }
    if fusion is not None:
        out["fusion_weight"] = fusion
        out["fused"] = {
            str(d): round(ndcg10(qrels, rerank_run(cands, logits, d, fusion)), 4) for d in depths
        }
    if keep:
        out.update(_cands=cands, _logits=logits, _qrels=qrels)
        return out
    return _public(out)


def _public(res: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in res.items() if not k.startswith("_")}


def latency(
    models: str | Sequence[str],
    pairs: Sequence[int] = (10, 20, 50, 100),
    *,
    max_length: int | None = None,
    repeats: int = 7,
    threads: int | None = None,
    data: Path | None = None,
) -> dict[str, Any]:
    """p50 and min milliseconds of ``score_tokens`` over N pre-tokenised SciFact abstracts.

    Several models are timed interleaved (each repeat runs every model in turn), so a
    machine whose load changes affects them alike and their ratios stay meaningful. The
    query is tokenised per call, documents are not (as a collection stores them).
    """
    from twostage.reranker import Reranker
    from twostage.train.data import SHARED, read_jsonl

    specs = [models] if isinstance(models, str) else list(models)
    rrs = [Reranker.load(m, max_length=max_length, threads=threads) for m in specs]
    folder = Path(data or SHARED / "data" / "scifact")
    rows = zip(range(max(pairs) * 4), read_jsonl(folder / "corpus.jsonl"), strict=False)
    docs = [r["text"] for _, r in rows]
    toks = [rr.tokenize_documents(docs) for rr in rrs]
    query = "Vitamin D deficiency is associated with a higher risk of respiratory infection."
    for rr, tk in zip(rrs, toks, strict=True):
        rr.score_tokens(query, tk[:32])
    times: list[dict[int, list[float]]] = [{n: [] for n in pairs} for _ in rrs]
    for r in range(repeats):
        for n in pairs:
            off = (r * 37) % max(1, len(docs) - n)
            for k, (rr, tk) in enumerate(zip(rrs, toks, strict=True)):
                t = time.perf_counter()
                rr.score_tokens(query, tk[off : off + n])
                times[k][n].append(1000 * (time.perf_counter() - t))
    out: dict[str, Any] = {"repeats": repeats, "models": []}
    for rr, tm in zip(rrs, times, strict=True):
        out["models"].append(
            {
                "model": rr.version,
                "max_length": rr.max_length,
                "p50_ms": {str(n): round(float(np.median(v)), 1) for n, v in tm.items()},
                "min_ms": {str(n): round(float(np.min(v)), 1) for n, v in tm.items()},
            }
        )
    return out


__all__ = [
    "evaluate_collection",
    "first_stage",
    "fit_fusion",
    "latency",
    "ndcg10",
    "ndcg_at_k",
    "rerank_run",
    "score_candidates",
]
