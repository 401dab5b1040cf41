"""Compare score-fusion rules for a trained reranker, each fitted on SciFact dev queries only.

Scores the dense first stage's top DEPTH once per collection (SciFact train queries held
out at mining = dev, SciFact test, Cranfield, CISI, CACM, MED, ADI), caches the logits in
a pickle, then for each depth ≤ DEPTH and each rule picks the weight on dev and reports
NDCG@10 everywhere, with the worst change against the first stage out of domain:

* linear: logit + w * cosine (the engine's "linear");
* z:      (1 - w) z(logit) + w z(cosine), per query (the engine's "z");
* rank:   1 / (60 + reranker rank) + w / (60 + first-stage rank).

Run from a folder holding the mining output ``mined/`` (for the dev query ids)::

    python benches/fusion_rules.py MODEL OUT.pkl 50      # TRAINING.md, "fusion rules"
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

import numpy as np
from twostage.reranker import Reranker
from twostage.train.data import SHARED
from twostage.train.evaluate import evaluate_collection, ndcg10, rerank_run
from twostage.train.report import OOD, dev_query_ids

GRIDS = {
    "linear": [0, 5, 10, 20, 30, 50, 75, 100, 150, 200],
    "z": [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "rank": [0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3],
}


def score_all(model: str, depth: int) -> dict[str, Any]:
    rr = Reranker.load(model)
    data = SHARED / "data"
    common: dict[str, Any] = dict(reranker=rr, depths=(depth,), cache=Path("cache"), keep=True)
    res = {
        "dev": evaluate_collection(
            data / "scifact", None, split="train", query_ids=dev_query_ids(Path("mined")), **common
        ),
        "scifact": evaluate_collection(data / "scifact", None, **common),
    }
    for c in OOD:
        res[c] = evaluate_collection(data / c, None, **common)
    keys = ("_cands", "_logits", "_qrels", "first_stage")
    return {name: {k: r[k] for k in keys} for name, r in res.items()}


def ndcg(res: dict[str, Any], col: str, depth: int, rule: str, w: float) -> float:
    r = res[col]
    if rule != "rank":  # the engine's own rules, as the training report applies them
        return ndcg10(r["_qrels"], rerank_run(r["_cands"], r["_logits"], depth, w, rule))
    run = {}
    for q, lst in r["_cands"].items():
        top, rest = lst[:depth], lst[depth:]
        lg = r["_logits"][q][: len(top)]
        s = 1 / (60 + np.argsort(np.argsort(-lg))) + w / (60 + np.arange(len(top)))
        scores = {d: 1000 + float(v) for (d, _), v in zip(top, s, strict=True)}
        scores.update({d: -float(i) for i, (d, _) in enumerate(rest)})
        run[q] = scores
    return ndcg10(r["_qrels"], run)


def main() -> None:
    model, out, depth = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    if not out.exists():
        out.write_bytes(pickle.dumps(score_all(model, depth)))
    res = pickle.loads(out.read_bytes())
    cols = ["dev", "scifact", *OOD]
    print("first stage", {c: res[c]["first_stage"] for c in cols})
    for d in sorted({10, 20, depth} & set(range(depth + 1))):
        for rule, grid in GRIDS.items():
            dev = {w: ndcg(res, "dev", d, rule, w) for w in grid}
            best = max(grid, key=lambda w: (round(dev[w], 4), w))
            row = {c: round(ndcg(res, c, d, rule, best), 4) for c in cols}
            worst = min(row[c] - res[c]["first_stage"] for c in OOD)
            print(f"depth {d} {rule} w={best}", row, f"worst OOD delta {worst:+.4f}")


if __name__ == "__main__":
    main()
