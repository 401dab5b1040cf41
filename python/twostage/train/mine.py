"""Hard-negative mining with the project's own bi-encoder.

For each training query: embed it, search the set's own corpus exactly (a brute-force
dot product over L2-normalised vectors: every corpus here fits in memory), drop the judged
positives, then drop likely *false* negatives: a candidate the bi-encoder scores above
``positive - margin`` is, often enough, an unjudged relevant document, and training the
reranker to push it down teaches it the wrong thing. What is left, best first, are the hard
negatives.

With ``bm25`` the candidates are the bi-encoder's top ``k`` and BM25's top ``k`` (tantivy, as
the lexical first stage), interleaved rank by rank: BM25 brings negatives that share the
query's words but not its meaning, the mistakes a reranker behind a hybrid first stage has
to correct, which the bi-encoder alone never shows it. Every candidate is still judged by
its cosine against the positive's, so the same false-negative filter applies to both.

Pairs sets (judged candidate lists) need no search: a query's candidates judged 0 are its
negatives, ordered by the bi-encoder so the hardest come first. Judged negatives are kept
even when close to the positive (a person said they are not answers), unless
``filter_judged`` asks otherwise.

Output: one JSON line per (query, positive)::

    {"qid", "query", "positive", "negatives": [...], "pos_score", "neg_scores": [...], "source"}

No PyTorch here.

>>> from twostage.train.mine import mine_set  # doctest: +SKIP
>>> cfg = MineConfig(k=50, margin=0.05)
>>> rows = mine_set(load_set("scifact"), Encoder.load("minilm-l6"), cfg)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage.train.data import Judged


@dataclass(frozen=True)
class MineConfig:
    """How many candidates to look at and which to drop.

    ``k``: search depth. ``margin``: drop a candidate whose cosine exceeds the positive's
    minus ``margin`` (a likely false negative). ``keep``: negatives written per row.
    ``skip_top``: also drop the first ``skip_top`` candidates after the positives (another
    common false-negative guard; 0 by default). ``max_queries``: subsample large sets.
    ``bm25``: also take BM25's top ``k`` (BEIR-layout sets; pairs sets have their own lists).
    """

    k: int = 50
    margin: float = 0.05
    keep: int = 30
    skip_top: int = 0
    max_queries: int | None = None
    filter_judged: bool = False
    seed: int = 0
    bm25: bool = False


def select_negatives(
    ranked: list[tuple[str, float]],
    positives: set[str],
    pos_score: float,
    cfg: MineConfig,
) -> list[tuple[str, float]]:
    """Negatives from a ranked candidate list (best first): positives removed, then
    ``skip_top`` candidates, then any within ``cfg.margin`` of ``pos_score`` or above it.

    >>> select_negatives([("p", .9), ("a", .88), ("b", .7), ("c", .5)], {"p"}, .9,
    ...                  MineConfig(margin=.05))
    [('b', 0.7), ('c', 0.5)]
    """
    out = [(d, s) for d, s in ranked if d not in positives]
    out = out[cfg.skip_top :]
    out = [(d, s) for d, s in out if s <= pos_score - cfg.margin]
    return out[: cfg.keep]


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def encode(encoder: Any, texts: list[str], kind: str, batch_size: int = 64) -> np.ndarray:
    """Embed texts in chunks with a docs/s line: float32 [n, dim], L2-normalised."""
    out = np.empty((len(texts), encoder.dim), dtype=np.float32)
    t0 = time.perf_counter()
    step = 2048
    for start in range(0, len(texts), step):
        chunk = texts[start : start + step]
        out[start : start + len(chunk)] = encoder.encode(chunk, batch_size=batch_size, kind=kind)
        done = start + len(chunk)
        rate = done / max(time.perf_counter() - t0, 1e-9)
        _log(f"  encode {kind} texts {done}/{len(texts)} ({rate:.0f}/s)")
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def exact_topk(q: np.ndarray, d: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by dot product for each query row: (indices [n, k], scores [n, k]), best first."""
    k = min(k, d.shape[0])
    idx = np.empty((q.shape[0], k), dtype=np.int64)
    val = np.empty((q.shape[0], k), dtype=np.float32)
    for s in range(0, q.shape[0], 1024):
        sims = q[s : s + 1024] @ d.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        idx[s : s + 1024] = np.take_along_axis(part, order, axis=1)
        val[s : s + 1024] = np.take_along_axis(ps, order, axis=1)
    return idx, val


def mine_set(
    data: Judged,
    encoder: Any,
    cfg: MineConfig | None = None,
    *,
    vectors: tuple[np.ndarray, np.ndarray] | None = None,
) -> list[dict[str, Any]]:
    """Rows ``{qid, query, positive, negatives, pos_score, neg_scores, source}`` for a set.

    ``vectors`` = (query vectors, document vectors) in ``sorted`` id order skips encoding
    (tests pass their own).
    """
    cfg = cfg or MineConfig()
    qids = sorted(data.positives)
    if cfg.max_queries is not None and len(qids) > cfg.max_queries:
        qids = sorted(random.Random(cfg.seed).sample(qids, cfg.max_queries))
    pids = sorted(data.corpus)
    if vectors is None:
        _log(f"{data.name}: {len(qids)} queries, {len(pids)} documents")
        qv = encode(encoder, [data.queries[q] for q in qids], "query")
        dv = encode(encoder, [data.corpus[p] for p in pids], "document")
    else:
        qv, dv = vectors
    row_of = {p: i for i, p in enumerate(pids)}
    rows: list[dict[str, Any]] = []
    if data.candidates:
        for qi, q in enumerate(qids):
            cand = [p for p in dict.fromkeys(data.candidates[q]) if p not in data.positives[q]]
            judged_neg = data.negatives.get(q, set())
            cand = [p for p in cand if p in judged_neg]
            sims = dv[[row_of[p] for p in cand]] @ qv[qi] if cand else np.zeros(0)
            ranked = sorted(zip(cand, sims.tolist(), strict=True), key=lambda t: -t[1])
            for pos in sorted(data.positives[q]):
                ps = float(dv[row_of[pos]] @ qv[qi])
                if cfg.filter_judged:
                    negs = select_negatives(ranked, data.positives[q], ps, cfg)
                else:
                    negs = ranked[: cfg.keep]
                rows.append(_row(data, q, pos, ps, negs))
    else:
        depth = cfg.k + max(len(p) for p in data.positives.values())
        idx, val = exact_topk(qv, dv, depth)
        lexical = bm25_topk(data, qids, pids, depth) if cfg.bm25 else None
        for qi, q in enumerate(qids):
            n = cfg.k + len(data.positives[q])
            dense = [int(j) for j in idx[qi][:n]]
            if lexical is not None:
                both = interleave(dense, lexical[qi][:n])
                sims = dv[both] @ qv[qi]
                ranked = [(pids[j], float(s)) for j, s in zip(both, sims, strict=True)]
            else:
                ranked = [(pids[j], float(s)) for j, s in zip(dense, val[qi], strict=False)]
            for pos in sorted(data.positives[q]):
                ps = float(dv[row_of[pos]] @ qv[qi])
                negs = select_negatives(ranked, data.positives[q], ps, cfg)
                rows.append(_row(data, q, pos, ps, negs))
    rows = [r for r in rows if r["negatives"]]
    return rows


def interleave(a: list[int], b: list[int]) -> list[int]:
    """Rank by rank, ``a`` first, without repeats.

    >>> interleave([1, 2, 3], [2, 4])
    [1, 2, 4, 3]
    """
    out: dict[int, None] = {}
    for i in range(max(len(a), len(b))):
        for lst in (a, b):
            if i < len(lst):
                out.setdefault(lst[i], None)
    return list(out)


def bm25_topk(data: Judged, qids: list[str], pids: list[str], k: int) -> list[list[int]]:
    """For each query, the rows (indices into ``pids``) of BM25's top ``k``, best first."""
    import tempfile

    from twostage.lexical import LexicalIndex

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="twostage-mine-") as tmp:
        lex = LexicalIndex.create(Path(tmp) / "lexical")
        lex.upsert(np.arange(len(pids), dtype=np.uint64), [data.corpus[p] for p in pids], seq=1)
        out = [[int(j) for j in lex.search(data.queries[q], k)[0]] for q in qids]
    _log(f"  bm25: {len(pids)} documents, {len(qids)} queries ({time.perf_counter() - t0:.1f} s)")
    return out


def _row(
    data: Judged, q: str, pos: str, ps: float, negs: list[tuple[str, float]]
) -> dict[str, Any]:
    return {
        "qid": q,
        "query": data.queries[q],
        "positive": data.corpus[pos],
        "negatives": [data.corpus[d] for d, _ in negs],
        "pos_score": round(ps, 5),
        "neg_scores": [round(s, 5) for _, s in negs],
        "source": data.name,
    }


def split_dev(
    rows: list[dict[str, Any]], fraction: float, seed: int = 0
) -> tuple[list[dict[str, Any]], list[str]]:
    """Hold out ``fraction`` of the queries (all their rows): (training rows, dev query ids).

    The dev queries are for choosing things that must not be chosen on a test split
    (the fusion weight, the depth, the checkpoint).
    """
    qids = sorted({r["qid"] for r in rows})
    dev = set(random.Random(seed).sample(qids, round(len(qids) * fraction)))
    return [r for r in rows if r["qid"] not in dev], sorted(dev)


def write_jsonl(rows: Iterable[dict[str, Any]], path: Path) -> int:
    """Write rows atomically (temp file, then rename); returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def iter_jsonl(paths: Iterable[Path]) -> Iterator[dict[str, Any]]:
    """Rows of several mined files, in order."""
    for p in paths:
        with Path(p).open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)


__all__ = [
    "MineConfig",
    "bm25_topk",
    "encode",
    "exact_topk",
    "interleave",
    "iter_jsonl",
    "mine_set",
    "select_negatives",
    "split_dev",
    "write_jsonl",
]
