"""Why hard negatives: how often a model already orders a positive above a random document,
against above the first stage's own hardest non-positive candidate.

For each judged query of each collection: its first judged positive, one random corpus
document that is not judged positive (seeded), and the *hard* negative: the highest
dense-ranked candidate that is not judged positive, exactly what the first stage hands the
reranker. Reported per model (the bi-encoder's cosine, the reranker's bare logit): the share
of pairs ordered right, and the mean pairwise softmax loss ``log(1 + exp(s_neg - s_pos))``,
the signal such a pair still carries for training (0 = nothing left to learn).

Diagnostics only: nothing is tuned on these splits. The collections are the ones
``twostage eval`` built (built here on first use).

    .venv/bin/python benches/negatives.py            # SciFact test and Cranfield, ~1 min
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
from twostage.beir import Dataset
from twostage.engine import Engine
from twostage.evaluation import collection_for
from twostage.reranker import Reranker

SHARED = Path(__file__).resolve().parents[2] / "shared"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", nargs="+", default=["scifact", "cranfield"])
    ap.add_argument("--reranker", default="twostage-rerank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benches/out/negatives.json"))
    args = ap.parse_args()
    rr = Reranker.load(args.reranker)
    rng = random.Random(args.seed)
    out = {}
    print("| collection | pairs | model | pos > random | pos > hard | loss random | loss hard |")
    print("|---|---:|---|---:|---:|---:|---:|")
    for name in args.data:
        ds = Dataset.load(SHARED / "data" / name)
        col = collection_for(ds)
        eng = Engine(col)
        ids = list(col.store.ids())
        rows = []
        for qid, text in sorted(ds.queries.items()):
            pos = sorted(d for d, g in ds.qrels[qid].items() if g > 0 and d in col)
            if not pos:
                continue
            judged = set(pos)
            hits = eng.search(text, k=50, rerank=False).hits
            hard = next((h.id for h in hits if h.id not in judged), None)
            rand = rng.choice(ids)
            while rand in judged:
                rand = rng.choice(ids)
            if hard is None:
                continue
            docs = col.get([pos[0], rand, hard])
            texts = [d.content for d in docs]
            qv = col.embed_query(text)
            order = col.store.keys_of([d.id for d in docs])
            dv = col.store.embeddings([order[d.id] for d in docs])
            cos = dv @ qv / np.linalg.norm(dv, axis=1)
            logit = rr.score(text, texts)
            rows.append((cos, logit))
        col.close()
        res = {}
        for model, i in (("bi-encoder cosine", 0), (f"{args.reranker} logit", 1)):
            s = np.array([r[i] for r in rows], dtype=np.float64)
            # The cosine lives on a ~0.1 scale: score it at the temperature contrastive
            # training uses (x20), so its loss reads on the same footing as a logit's.
            scale = 20.0 if i == 0 else 1.0
            d_rand = (s[:, 1] - s[:, 0]) * scale
            d_hard = (s[:, 2] - s[:, 0]) * scale
            res[model] = {
                "pairs": len(rows),
                "above_random": float((d_rand < 0).mean()),
                "above_hard": float((d_hard < 0).mean()),
                "loss_random": float(np.log1p(np.exp(d_rand)).mean()),
                "loss_hard": float(np.log1p(np.exp(d_hard)).mean()),
            }
            r = res[model]
            print(
                f"| {name} | {r['pairs']} | {model} | {r['above_random']:.1%} | "
                f"{r['above_hard']:.1%} | {r['loss_random']:.3f} | {r['loss_hard']:.3f} |"
            )
        out[name] = res
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
