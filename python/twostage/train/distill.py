"""Distillation: a smaller student learns a teacher's score margins (Margin-MSE).

1. :func:`teacher_rows` scores each mined row's positive and its ``neg_pool`` hardest
   negatives with the teacher, any reranker that :class:`~twostage.reranker.Reranker`
   loads (ONNX, so this step needs no PyTorch), and stores them as ``teacher``.
2. :func:`distill` trains the student (``TrainConfig.layers``: e.g. 2 layers taken from
   MiniLM) with ``loss="margin_mse"``: for each (query, positive, negative), the student's
   ``s(q, p) - s(q, n)`` regresses on the teacher's. Every negative in the pool gives a
   training signal, including the ones the teacher finds nearly as good as the positive,
   which a 0/1 label cannot express.

>>> rows = teacher_rows(iter_jsonl([Path("mined/scifact.jsonl")]), "teacher/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from twostage.train.mine import iter_jsonl, write_jsonl


def teacher_rows(
    rows: Iterable[dict[str, Any]], teacher: Any, neg_pool: int = 20, batch_size: int = 32
) -> list[dict[str, Any]]:
    """Rows with ``teacher`` = [score(positive), score(negative_0), ...] for the first
    ``neg_pool`` negatives (the list is cut to match). ``teacher`` is a spec or a Reranker."""
    from twostage.reranker import Reranker

    rr = Reranker.load(teacher) if isinstance(teacher, (str, Path)) else teacher
    out = []
    t0 = time.perf_counter()
    n_pairs = 0
    for i, r in enumerate(rows):
        negs = r["negatives"][:neg_pool]
        scores = rr.score(r["query"], [r["positive"], *negs], batch_size=batch_size)
        out.append({**r, "negatives": negs, "teacher": [round(float(x), 5) for x in scores]})
        n_pairs += 1 + len(negs)
        if (i + 1) % 200 == 0:
            rate = n_pairs / (time.perf_counter() - t0)
            print(f"  teacher: {i + 1} rows, {rate:.0f} pairs/s", file=sys.stderr, flush=True)
    return out


def score_files(mined: list[Path], teacher: Any, out: Path, neg_pool: int = 20) -> list[Path]:
    """Teacher-scored copies of mined files under ``out`` (kept: a rerun reuses them)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for p in mined:
        dst = out / p.name
        if not dst.is_file():
            write_jsonl(teacher_rows(iter_jsonl([p]), teacher, neg_pool), dst)
        paths.append(dst)
    return paths


def distill(cfg: Any, teacher: Any, *, resume: bool = True) -> dict[str, Any]:
    """Score ``cfg.data`` with ``teacher`` (into ``cfg.out/teacher``), then train the
    student described by ``cfg`` with Margin-MSE. Needs PyTorch for the second step."""
    from dataclasses import replace

    from twostage.train.reranker import train

    scored = score_files(list(cfg.data), teacher, Path(cfg.out) / "teacher", cfg.neg_pool)
    run = replace(cfg, data=scored, loss="margin_mse")
    (Path(cfg.out) / "teacher" / "teacher.json").write_text(json.dumps({"teacher": str(teacher)}))
    return train(run, resume=resume)


__all__ = ["distill", "score_files", "teacher_rows"]
