"""What the second stage adds, per first stage, with fusion weights fitted on dev only.

``collect`` runs the engine's own first stages (dense HNSW, BM25, their reciprocal-rank
fusion) over every judged query of SciFact dev (SciFact *train* queries the reranker never
trained on), SciFact test and the five other shared collections, and scores the union of
each query's top ``--depth`` candidates with the reranker at each ``--lengths`` (pair token
limit). Logits are cached, so a re-run only scores what is new.

``fit`` then, for each first stage, pair length and rerank depth, picks the signal weights
(:mod:`twostage.fusion`, a simplex grid) on SciFact dev alone and reports NDCG@10
(ir-measures) everywhere, with paired tests against the first stage reranked and against
hybrid alone, and the ablation without the reranker (what the logit itself adds)::

    python benches/second_stage.py collect --mined MINED --out ss.pkl
    python benches/second_stage.py fit ss.pkl --json ss-fit.json > ss-fit.md
    python benches/second_stage.py logit ss.pkl     # what the logit alone adds to the defaults

``MINED`` is the mining output (``python -m twostage.train mine --sets scifact --bm25``) that
says which SciFact train queries were trained on (TRAINING.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from twostage import Engine, EngineConfig, rrf
from twostage.beir import Dataset
from twostage.evaluation import collection_for
from twostage.fusion import first_stage_signals, fit_weights, fuse_signals
from twostage.metrics import paired_test, per_query
from twostage.reranker import Reranker
from twostage.train.data import SHARED
from twostage.train.evaluate import ndcg_at_k
from twostage.train.report import OOD, dev_query_ids

STAGES = ("dense", "bm25", "hybrid")
SIGNALS_BY_STAGE = ("reranker", "dense", "bm25", "rank")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def datasets(mined: Path) -> dict[str, Dataset]:
    data = SHARED / "data"
    dev = Dataset.load(data / "scifact", "train")
    keep = set(dev_query_ids(mined))
    dev = dataclasses.replace(
        dev,
        queries={q: t for q, t in dev.queries.items() if q in keep},
        qrels={q: r for q, r in dev.qrels.items() if q in keep},
    )
    out = {"dev": dev, "scifact": Dataset.load(data / "scifact", "test")}
    for c in OOD:
        out[c] = Dataset.load(data / c, "test")
    return out


def collect(a: argparse.Namespace) -> None:
    state: dict[str, Any] = {}
    if a.out.is_file():
        state = pickle.loads(a.out.read_bytes())
    lengths = [int(x) for x in a.lengths.split(",")]
    models = {n: Reranker.load(a.model, max_length=n) for n in lengths}
    for name, ds in datasets(a.mined).items():
        col = collection_for(ds)
        eng = Engine(col, reranker=None, config=EngineConfig(depth=0))
        st = state.setdefault(name, {"qrels": ds.qrels, "queries": {}})
        t0 = time.perf_counter()
        for qid, text in ds.queries.items():
            q = st["queries"].get(qid)
            if q is None:
                vec = col.encoder.encode([text], kind="query")[0]
                dk = eng._retrieve("dense", text, vec, a.candidates)[0]
                lk, ls = col.lexical_search(text, a.candidates)
                hk = rrf([dk, lk], k=a.candidates, c=60.0)[0]
                lists = {"dense": dk.tolist(), "bm25": lk.tolist(), "hybrid": hk.tolist()}
                union = sorted({int(k) for v in lists.values() for k in v})
                sims = eng._similarities(vec, np.asarray(union, dtype=np.uint64))
                assert sims is not None
                docs = col.fetch(np.asarray(union, dtype=np.uint64), tokens=True)
                q = {
                    "text": text,
                    "lists": lists,
                    "dense": dict(zip(union, sims.tolist(), strict=True)),
                    "bm25": dict(zip(lk.tolist(), ls.tolist(), strict=True)),
                    "ids": {k: d.id for k, d in zip(union, docs, strict=True) if d is not None},
                    "tokens": {k: d.tokens for k, d in zip(union, docs, strict=True) if d},
                    "logits": {},
                }
                st["queries"][qid] = q
            for n, rr in models.items():
                have = q["logits"].setdefault(n, {})
                need = sorted(
                    {
                        k
                        for st_name, v in q["lists"].items()
                        if st_name in a.stages.split(",")
                        for k in v[: a.depth]
                        if k not in have
                    }
                )
                if need:
                    tok = q.setdefault("tokens", {})  # an earlier run's query: fetch again
                    miss = [k for k in need if k not in tok]
                    if miss:
                        got = col.fetch(np.asarray(miss, dtype=np.uint64), tokens=True)
                        tok.update({k: d.tokens for k, d in zip(miss, got, strict=True) if d})
                    s = rr.score_tokens(text, [tok.get(k) or [] for k in need])
                    have.update(zip(need, s.tolist(), strict=True))
        col.close()
        _log(f"{name}: {len(ds.queries)} queries, {time.perf_counter() - t0:.0f} s")
        for q in st["queries"].values():
            q.pop("tokens", None)
        tmp = a.out.with_suffix(".tmp")
        tmp.write_bytes(pickle.dumps(state))
        tmp.replace(a.out)


def signals(q: dict[str, Any], keys: list[int], ranks: list[int]) -> dict[str, np.ndarray]:
    """The first-stage signals of ``keys``, built as the engine builds them."""
    return first_stage_signals(keys, [q["dense"][k] for k in keys], q["bm25"], ranks)


def ranking(
    st: dict[str, Any],
    stage: str,
    *,
    cheap: dict[str, float] | None = None,
    length: int = 0,
    depth: int = 0,
    w: dict[str, float] | None = None,
    pool: int = 100,
    steps: list[tuple[int, int, dict[str, float]]] | None = None,
) -> dict[str, list[str]]:
    """The engine's order, query by query: the pool (first ``pool`` candidates) ordered by
    the ``cheap`` fusion (None: first-stage order), then its top ``depth`` by the fusion
    ``w`` of every signal with the reranker's (None: no reranker), ``rank`` being the rank
    in the cheap order; unscored candidates follow in the cheap order.

    ``steps`` replaces (``length``, ``depth``, ``w``) by several such steps in turn, each
    re-ordering the top ``depth`` of the order the previous one left (its ``rank`` signal
    is the rank in that order): a cascade inside the second stage, e.g. the model at 64
    tokens over 50 candidates, then at 128 tokens over the best 15 of those."""
    if steps is None:
        steps = [(length, depth, w)] if w is not None and depth else []
    out: dict[str, list[str]] = {}
    for qid, q in st["queries"].items():
        lst, ids = q["lists"][stage], q["ids"]
        head = lst[:pool]
        order = list(range(len(head)))
        if cheap:
            c = fuse_signals(signals(q, head, order), cheap)
            order = sorted(order, key=lambda i: (-c[i], i))
        for n, d, ws in steps:
            top = order[:d]
            keys = [head[i] for i in top]
            sig = signals(q, keys, list(range(len(top))))
            sig["reranker"] = np.asarray([q["logits"][n][k] for k in keys])
            f = fuse_signals(sig, ws)
            order = [top[i] for i in sorted(range(len(top)), key=lambda i: (-f[i], i))] + order[d:]
        out[qid] = [ids[head[i]] for i in order] + [ids[k] for k in lst[pool:]]
    return out


def as_scores(r: dict[str, list[str]]) -> dict[str, dict[str, float]]:
    return {q: {d: -float(i) for i, d in enumerate(ds)} for q, ds in r.items()}


def fit(a: argparse.Namespace) -> None:
    state = pickle.loads(a.state.read_bytes())
    lengths = [int(x) for x in a.lengths.split(",")]
    depths = [int(x) for x in a.depths.split(",")]
    cols = ["dev", "scifact", *OOD]
    out: dict[str, Any] = {"fits": [], "cheap": {}}
    dev = state["dev"]

    def score(c: str, run: dict[str, list[str]]) -> dict[str, float]:
        return per_query(state[c]["qrels"], run, ("nDCG@10",))["nDCG@10"]

    def fit_on_dev(
        names: tuple[str, ...], depths: list[int] | None = None, **kw: Any
    ) -> dict[str, float]:
        """Weights with the best dev NDCG@10 (the mean over ``depths`` when given)."""
        key = "cheap" if "reranker" not in names else "w"

        def dev_score(w: dict[str, float]) -> float:
            runs = [
                ranking(dev, **{**kw, key: w, **({"depth": d} if depths else {})})
                for d in depths or [0]
            ]
            return float(np.mean([ndcg_at_k(dev["qrels"], as_scores(r)) for r in runs]))

        best, _ = fit_weights("scifact train (dev)", dev_score, names, a.step)
        return best

    base = {s: {c: score(c, ranking(state[c], s)) for c in cols} for s in STAGES}
    out["first_stage"] = {
        s: {c: float(np.mean(list(v.values()))) for c, v in base[s].items()} for s in STAGES
    }

    def row(label: str, stage: str, length: int, depth: int, **kw: Any) -> None:
        r: dict[str, Any] = {
            "stage": stage,
            "length": length,
            "depth": depth,
            "signals": label,
            "weights": kw,
            "ndcg": {},
            "vs_first": {},
            "vs_hybrid": {},
        }
        for c in cols:
            per = score(c, ranking(state[c], stage, length=length, depth=depth, **kw))
            r["ndcg"][c] = float(np.mean(list(per.values())))
            t1 = paired_test(base[stage][c], per, resamples=2000)
            t2 = paired_test(base["hybrid"][c], per, resamples=2000)
            r["vs_first"][c] = [round(t1.delta, 4), round(t1.p_ttest, 4)]
            r["vs_hybrid"][c] = [round(t2.delta, 4), round(t2.p_ttest, 4)]
        out["fits"].append(r)
        _log(
            f"{stage} {label} L{length} d{depth}: {kw} dev {r['ndcg']['dev']:.4f} "
            f"test {r['ndcg']['scifact']:.4f}"
        )

    # One weight set per (first stage, pair length) for every depth: the budget decides how
    # many candidates get scored, so the weights must hold at any depth (per-depth fits on
    # 163 dev queries also jumped between unrelated optima from one depth to the next).
    out["weights"] = {}
    for stage in a.stages.split(","):
        cheap = fit_on_dev(SIGNALS_BY_STAGE[1:], stage=stage)
        out["cheap"][stage] = cheap
        row("cheap fusion alone (no reranker)", stage, 0, 0, cheap=cheap)
        for length in lengths:
            w = fit_on_dev(SIGNALS_BY_STAGE, stage=stage, cheap=cheap, length=length, depths=depths)
            out["weights"][f"{stage}@{length}"] = w
            for depth in depths:
                row("cascade + reranker", stage, length, depth, cheap=cheap, w=w)
            deep = depths[-1]
            w0 = fit_on_dev(SIGNALS_BY_STAGE, stage=stage, length=length, depths=depths)
            row("first-stage order + reranker", stage, length, deep, w=w0)
            row("bare logit", stage, length, deep, w={"reranker": 1.0})
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    print(markdown(out, cols))


def fit_two(a: argparse.Namespace) -> None:
    """A cascade inside the second stage, against the shipped one-length cascade, at equal
    model time: the model at ``--short`` tokens over the cheap order's top ``n1``, then at
    ``--long`` tokens over the best ``n2`` of that order. Every weight is fitted on dev,
    per first stage: the cheap fusion, then the short step's (mean dev NDCG over the plans'
    ``n1``), then the long step's for each plan. ``--json`` writes each stage's weights for
    every plan, in twostage.json's terms (``cheap``, ``weights``, ``refine.weights``)."""
    state = pickle.loads(a.state.read_bytes())
    cols = ["dev", "scifact", *OOD]
    dev = state["dev"]
    short, long_ = a.short, a.long
    plans = [tuple(int(x) for x in p.split(":")) for p in a.plans.split(",")]
    cost = {short: a.cost_short, long_: a.cost_long}
    shipped = Reranker.load(a.model).fusion_signals or {}
    out: dict[str, Any] = {"short": short, "long": long_, "stages": {}}

    def score(c: str, run: dict[str, list[str]]) -> dict[str, float]:
        return per_query(state[c]["qrels"], run, ("nDCG@10",))["nDCG@10"]

    def fit_dev(names: tuple[str, ...], make: Any) -> dict[str, float]:
        def dev_score(w: dict[str, float]) -> float:
            runs = make(w)
            return float(np.mean([ndcg_at_k(dev["qrels"], as_scores(r)) for r in runs]))

        return fit_weights("scifact train (dev)", dev_score, names, a.step)[0]

    def one_stage(stage: str) -> None:
        cheap = fit_dev(SIGNALS_BY_STAGE[1:], lambda w: [ranking(dev, stage, cheap=w)])
        base = {c: score(c, ranking(state[c], stage)) for c in cols}
        hyb = {c: score(c, ranking(state[c], "hybrid")) for c in cols}
        rows: list[tuple[str, float, dict[str, Any]]] = []
        res: dict[str, Any] = {"cheap": cheap, "plans": {}, "ndcg": {}}

        def row(label: str, cost_ms: float, steps: list[Any]) -> None:
            per = {c: score(c, ranking(state[c], stage, cheap=cheap, steps=steps)) for c in cols}
            tests = {c: paired_test(base[c], per[c], resamples=2000) for c in cols}
            rows.append((label, cost_ms, {c: (per[c], tests[c]) for c in cols}))
            res["ndcg"][label] = {c: float(np.mean(list(per[c].values()))) for c in cols}
            _log(f"{stage} {label}: dev {res['ndcg'][label]['dev']:.4f}")

        row("cheap fusion alone", 0.0, [])
        if stage in shipped:
            w_ship = shipped[stage]
            row(
                f"{long_} x 30, the shipped weights {w_ship}",
                30 * cost[long_],
                [(long_, 30, w_ship)],
            )
        w_long = fit_dev(
            SIGNALS_BY_STAGE,
            lambda w: [
                ranking(dev, stage, cheap=cheap, steps=[(long_, d, w)]) for d in (20, 30, 40, 50)
            ],
        )
        for d in sorted({round(n1 * cost[short] / cost[long_]) + n2 for n1, n2 in plans} | {30}):
            row(f"{long_} x {d} {w_long}", d * cost[long_], [(long_, d, w_long)])
        w_short = fit_dev(
            SIGNALS_BY_STAGE,
            lambda w: [ranking(dev, stage, cheap=cheap, steps=[(short, n1, w)]) for n1, _ in plans],
        )
        for n1 in sorted({n1 for n1, _ in plans}):
            row(f"{short} x {n1} {w_short}", n1 * cost[short], [(short, n1, w_short)])
        for n1, n2 in plans:
            first = (short, n1, w_short)
            w2 = fit_dev(
                SIGNALS_BY_STAGE,
                lambda w, first=first, n2=n2: [
                    ranking(dev, stage, cheap=cheap, steps=[first, (long_, n2, w)])
                ],
            )
            res["plans"][f"{n1}:{n2}"] = {"weights": w_short, "refine": w2}
            row(
                f"{short} x {n1}, then {long_} x {n2} {w2}",
                n1 * cost[short] + n2 * cost[long_],
                [first, (long_, n2, w2)],
            )
        out["stages"][stage] = res
        print(f"\n### {stage} first stage\n")
        print(
            f"| {stage}, 100 candidates, then | model ms (2 threads) | " + " | ".join(cols) + " |"
        )
        print("|---|---|" + "---|" * len(cols))
        for label, vals in (("nothing", base), ("hybrid alone", hyb)):
            cells = " | ".join(f"{np.mean(list(vals[c].values())):.4f}" for c in cols)
            print(f"| {label} | 0 | {cells} |")
        for label, ms, r in rows:
            cells = " | ".join(
                f"{np.mean(list(per.values())):.4f}{'*' if t.p_ttest < 0.05 else ''}"
                for per, t in r.values()
            )
            print(f"| {label} | {ms:.0f} | {cells} |")

    for stage in a.stages.split(","):
        one_stage(stage)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


def logit_adds(a: argparse.Namespace) -> None:
    """What the model's logit adds on its own: the model's twostage.json pipeline (cheap
    order, its steps) against the same cheap order with no model, query by query, paired t
    and randomisation tests. The weights are the shipped ones, fitted on dev; nothing is fitted
    here. The gain of the whole second stage over hybrid alone includes the cheap fusion of
    the first-stage signals; this is the part only the cross-encoder brings."""
    state = pickle.loads(a.state.read_bytes())
    model = Reranker.load(a.model)
    cheap_all, weights = model.fusion_cheap, model.fusion_signals
    if not cheap_all or not weights:
        raise SystemExit(f"{a.model}: no signals fusion with cheap weights in its twostage.json")
    stage = a.stage
    d = model.defaults
    steps = [(int(d.get("max_length", model.max_length)), int(d["depth"]), weights[stage])]
    refine = model.fusion_refine
    if refine is not None:
        steps.append((refine.max_length, refine.depth, refine.weights[stage]))
    have = next(iter(state["dev"]["queries"].values()))["logits"]
    if missing := [n for n, _, _ in steps if n not in have]:
        raise SystemExit(f"{a.state}: no logits at {missing} tokens (collect --lengths)")
    cols = ["dev", "scifact", *OOD]
    rows: dict[str, list[str]] = {
        "hybrid alone": [],
        "cheap fusion alone": [],
        "the model's steps": [],
    }
    delta: list[str] = []
    for c in cols:
        st = state[c]
        runs = (
            ranking(st, "hybrid"),
            ranking(st, stage, cheap=cheap_all[stage]),
            ranking(st, stage, cheap=cheap_all[stage], steps=steps),
        )
        per = [per_query(st["qrels"], r, ("nDCG@10",))["nDCG@10"] for r in runs]
        means = [float(np.mean(list(q.values()))) for q in per]
        for row, m in zip(rows.values(), means, strict=True):
            row.append(f"{m:.4f}")
        t = paired_test(per[1], per[2], resamples=a.resamples)
        delta.append(f"{means[2] - means[1]:+.4f} ({t.p_ttest:.3f} / {t.p_randomization:.3f})")
    rows["the logit's part: Δ (p t-test / p randomisation)"] = delta
    steps_s = ", then ".join(f"{d} at {n} tokens" for n, d, _ in steps)
    print(f"\n### What {model.version}'s logit adds over the {stage} signals ({steps_s})\n")
    print("| | " + " | ".join(cols) + " |")
    print("|---|" + "---|" * len(cols))
    for label, row in rows.items():
        print(f"| {label} | " + " | ".join(row) + " |")


def markdown(out: dict[str, Any], cols: list[str]) -> str:
    lines = [
        "| first stage | tokens | depth | signals | "
        + " | ".join(cols)
        + " | worst Δ vs its first stage |",
        "|---|---|---|---|" + "---|" * (len(cols) + 1),
    ]
    for s in STAGES:
        v = out["first_stage"][s]
        lines.append(f"| {s} alone | | | | " + " | ".join(f"{v[c]:.4f}" for c in cols) + " | |")
    for r in out["fits"]:
        worst = min(r["vs_first"][c][0] for c in cols[1:])
        cells = []
        for c in cols:
            p = r["vs_first"][c][1]
            mark = "*" if p < 0.05 else ""
            cells.append(f"{r['ndcg'][c]:.4f}{mark}")
        lines.append(
            f"| {r['stage']} | {r['length']} | {r['depth']} | {r['signals']} | "
            + " | ".join(cells)
            + f" | {worst:+.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(required=True)
    c = sub.add_parser("collect")
    c.add_argument("--mined", type=Path, required=True)
    c.add_argument("--out", type=Path, required=True)
    c.add_argument("--model", default="twostage-rerank")
    c.add_argument("--lengths", default="64,96,128")
    c.add_argument("--depth", type=int, default=64, help="reranker-scored top of each list")
    c.add_argument("--candidates", type=int, default=100)
    c.add_argument("--stages", default=",".join(STAGES), help="lists whose top gets scored")
    c.set_defaults(fn=collect)
    f = sub.add_parser("fit")
    f.add_argument("state", type=Path)
    f.add_argument("--depths", default="20,30,40,50")
    f.add_argument("--lengths", default="96,128")
    f.add_argument("--step", type=float, default=0.1)
    f.add_argument("--json", default=None)
    f.add_argument("--stages", default=",".join(STAGES), help="first stages to fit")
    f.set_defaults(fn=fit)
    t = sub.add_parser("fit-two", help="a two-length cascade inside the second stage")
    t.add_argument("state", type=Path)
    t.add_argument("--short", type=int, default=64)
    t.add_argument("--long", type=int, default=128)
    t.add_argument("--plans", default="40:15,50:15,50:10,60:10", help="n1:n2,...")
    t.add_argument("--cost-short", type=float, default=1.73, help="ms a pair, 2 threads")
    t.add_argument("--cost-long", type=float, default=3.42, help="ms a pair, 2 threads")
    t.add_argument("--step", type=float, default=0.1)
    t.add_argument("--model", default="twostage-rerank", help="for its shipped weights' row")
    t.add_argument("--stages", default="hybrid", help="first stages to fit, e.g. dense,bm25,hybrid")
    t.add_argument("--json", default=None)
    t.set_defaults(fn=fit_two)
    g = sub.add_parser("logit", help="what the model's logit adds over its cheap fusion")
    g.add_argument("state", type=Path)
    g.add_argument(
        "--model", default="twostage-rerank", help="the model whose logits were collected"
    )
    g.add_argument("--stage", default="hybrid")
    g.add_argument("--resamples", type=int, default=5000)
    g.set_defaults(fn=logit_adds)
    a = ap.parse_args()
    a.fn(a)


if __name__ == "__main__":
    main()
