"""How many queries interleaving and an A/B test need to tell two real rankers apart.

Reads two TREC runs (``qid Q0 docid rank score tag``) and BEIR qrels (TSV with a
``query-id corpus-id score`` header; 4-column TREC qrels work too), simulates users with a
click model (twostage.clicks), and for each number of queries reports the share of repeated
experiments in which team-draft interleaving, balanced interleaving and A/B tests on three
click metrics name the ranker with the higher NDCG@10 at p < 0.05.

    python benches/interleaving.py --qrels scifact/qrels/test.tsv \\
        --run-a dense.trec --run-b bm25.trec --name-a dense --name-b bm25 --out out/

Writes ``OUT/interleaving.json`` and ``OUT/interleaving.png`` and prints a Markdown table.
The default (both click models, 500 repetitions, 9 sizes up to 5,000 queries) takes about
10-20 s on two cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from twostage.beir import read_qrels, read_trec
from twostage.clicks import (
    DEFAULT_GRID,
    CascadeModel,
    ClickModel,
    PositionBasedModel,
    SimulationResult,
    simulate,
)

LABELS = {
    "team_draft": "team draft",
    "balanced": "balanced",
    "ab_clicks": "A/B clicks/imp.",
    "ab_any_click": "A/B any click",
    "ab_rr": "A/B RR first click",
}


def make_model(name: str, preset: str, eta: float, gmax: int) -> ClickModel:
    base = CascadeModel.preset(preset, gmax=gmax)
    if name == "cascade":
        return base
    return PositionBasedModel(
        click_nonrelevant=base.click_nonrelevant,
        click_relevant=base.click_relevant,
        eta=eta,
        gmax=gmax,
    )


def table(results: list[SimulationResult], names: tuple[str, str]) -> str:
    grid = results[0].grid
    head = ["method", "model", *[str(n) for n in grid], "queries for 95 %"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        for method, curve in res.curves.items():
            need = res.needed(method)
            cells = [f"{x:.2f}" for x in curve.correct]
            need_s = f"~{need:,.0f}" if need is not None else f"> {grid[-1]:,}"
            lines.append(
                f"| {LABELS[method]} | {res.model} | " + " | ".join(cells) + f" | {need_s} |"
            )
    r = results[0]
    better = names[0] if r.better == "A" else names[1]
    lines.append("")
    lines.append(
        f"NDCG@10 (ir-measures, {r.queries} judged queries): {names[0]} {r.ndcg_a:.4f}, "
        f"{names[1]} {r.ndcg_b:.4f}; better: {better}. Cells: share of {r.reps} experiments "
        f"naming {better} at p < {r.alpha}."
    )
    return "\n".join(lines)


def plot(results: list[SimulationResult], names: tuple[str, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    styles = ["-", "--", ":", "-."]
    colors = dict(zip(LABELS, plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False))
    for i, res in enumerate(results):
        for method, curve in res.curves.items():
            ax.plot(
                res.grid,
                curve.correct,
                styles[i % len(styles)],
                marker="o",
                markersize=3,
                color=colors[method],
                label=f"{LABELS[method]} ({res.model})",
            )
    r = results[0]
    ax.axhline(0.95, color="grey", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("queries (impressions) per experiment")
    ax.set_ylabel(f"share of {r.reps} experiments picking the better ranker (p < {r.alpha})")
    ax.set_title(f"{names[0]} (NDCG@10 {r.ndcg_a:.3f}) vs {names[1]} ({r.ndcg_b:.3f})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qrels", type=Path, required=True)
    ap.add_argument("--run-a", type=Path, required=True)
    ap.add_argument("--run-b", type=Path, required=True)
    ap.add_argument("--name-a", default="A")
    ap.add_argument("--name-b", default="B")
    ap.add_argument("--model", nargs="+", choices=["cascade", "pbm"], default=["cascade", "pbm"])
    ap.add_argument(
        "--preset",
        choices=["perfect", "navigational", "informational", "blind"],
        default="navigational",
        help="click (and, for cascade, stop) probabilities of Hofmann et al. (TOIS 2013); "
        "blind: relevance ignored (a bias check)",
    )
    ap.add_argument("--eta", type=float, default=1.0, help="PBM examination 1/(rank+1)^eta")
    ap.add_argument("--reps", type=int, default=500)
    ap.add_argument("--grid", type=int, nargs="+", default=list(DEFAULT_GRID))
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    started = time.perf_counter()
    qrels = read_qrels(args.qrels)
    run_a, run_b = read_trec(args.run_a), read_trec(args.run_b)
    gmax = max(1, max((g for rel in qrels.values() for g in rel.values()), default=1))
    names = (args.name_a, args.name_b)
    results = []
    for i, name in enumerate(args.model):
        model = make_model(name, args.preset, args.eta, gmax)
        res = simulate(
            qrels,
            run_a,
            run_b,
            model=model,
            grid=sorted(set(args.grid)),
            reps=args.reps,
            k=args.k,
            seed=args.seed + i,
        )
        print(f"{name}: {res.seconds:.1f} s", file=sys.stderr)
        results.append(res)
    args.out.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "names": {"A": names[0], "B": names[1]},
        "inputs": {
            "qrels": str(args.qrels),
            "run_a": str(args.run_a),
            "run_b": str(args.run_b),
        },
        "preset": args.preset,
        "results": [r.to_dict() for r in results],
        "seconds": time.perf_counter() - started,
    }
    (args.out / "interleaving.json").write_text(json.dumps(doc, indent=2) + "\n")
    plot(results, names, args.out / "interleaving.png")
    print(table(results, names))
    print(f"\n{time.perf_counter() - started:.1f} s; wrote {args.out}/interleaving.{{json,png}}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
