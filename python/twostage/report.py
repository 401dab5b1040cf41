"""The evaluation report: Markdown tables and the depth curves (PNG, matplotlib).

For each dataset: every configuration's metrics with its paired test against its first
stage; per first stage and reranker, the depth table (NDCG@10, Recall@depth, p50/p99
latency, whether it fits the budget) and the depth curve, the plot a user reads to choose
the rerank depth. matplotlib is imported only here (the ``eval`` extra).

It reads :mod:`twostage.results` and nothing that runs searches: :mod:`twostage.evaluation`
imports it, never the other way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twostage.metrics import MEASURES
from twostage.results import DatasetResult, Evaluation, short_name

_LABEL = {"RR@10": "MRR@10", "AP@100": "MAP@100"}


def write_report(ev: Evaluation, out: Path) -> Path:
    """Write ``out/report.md`` and one ``out/<dataset>-depth.png`` per dataset."""
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# twostage evaluation", ""]
    if ev.command:
        lines += ["```bash", ev.command, "```", ""]
    m = ev.machine
    lines += [
        f"Machine: {_text(m.get('cpu'))}, {_text(m.get('nproc'))} cores, onnxruntime "
        f"{_text(m.get('onnxruntime'))}, Python {_text(m.get('python'))}, "
        f"{_text(m.get('date'))} (load average at the end {_fmt_load(m.get('load_average'))}).",
        "",
        "Metrics: ir-measures (pytrec_eval). p: paired t-test / paired randomization test "
        "(10,000 sign flips) on per-query NDCG@10 against the configuration's own first stage; "
        "**bold** where both are below 0.05.",
        "",
    ]
    lines += _summary(ev)
    for ds in ev.datasets:
        lines += _dataset_section(ds, ev)
        png = _plot(ds, out)
        if png is not None:
            lines += [f"![depth curve, {ds.name}]({png.name})", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt_load(load: Any) -> str:
    return "n/a" if not load else " / ".join(f"{x:.1f}" for x in load)


def _text(v: Any) -> str:
    """A value for prose: ``n/a`` for a missing one, never ``None``."""
    return "n/a" if v is None or v == "" else str(v)


def _summary(ev: Evaluation) -> list[str]:
    """NDCG@10 per dataset: each first stage, and the best reranked depth that fits."""
    head = ["dataset", "queries", *ev.first_stages]
    for rr in ev.rerankers:
        head += [f"{fs}+{rr} (depth within budget)" for fs in ev.first_stages]
    lines = ["## Summary (NDCG@10)", "", _row(head), _row(["---"] * len(head))]
    for ds in ev.datasets:
        table = ds.table()
        cells = [ds.name, str(ds.queries)]
        cells += [f"{table[fs]['nDCG@10']:.4f}" for fs in ev.first_stages]
        for rr in ev.rerankers:
            for fs in ev.first_stages:
                cells.append(_best_within_budget(ds, fs, rr))
        lines.append(_row(cells))
    return [*lines, ""]


def _best_within_budget(ds: DatasetResult, fs: str, rr: str) -> str:
    fit = ds.affordable_depth(rr, fs)
    if fit is None:
        return "none fits" if ds.latency.get(rr) else "n/a"
    best = max(
        (c for c in ds.configs if c.first_stage == fs and c.reranker == rr and c.depth <= fit),
        key=lambda c: c.metrics["nDCG@10"],
        default=None,
    )
    return "n/a" if best is None else f"{best.metrics['nDCG@10']:.4f} (@{best.depth})"


def _dataset_section(ds: DatasetResult, ev: Evaluation) -> list[str]:
    lines = [
        f"## {ds.name} ({ds.split}: {ds.queries} queries, {ds.documents:,} documents)",
        "",
    ]
    if ds.collection:
        how = "the user's collection, reused" if ds.collection_reused else "built and cached"
        lines += [f"Collection: `{ds.collection}` ({how}), encoder {_text(ds.encoder)}.", ""]
    if ds.ignore_self:
        lines += [
            "Each query's own document (same id) is left out of its rankings, as BEIR does "
            f"for collections whose queries are documents ({ds.self_matches:,} queries "
            "have one).",
            "",
        ]
    runs = {c.run_file for c in ds.configs if c.run_file}
    if runs and len(runs) < len(ds.configs):
        lines += [
            f"Run files: {len(runs)} for {len(ds.configs)} configurations (configurations "
            "that rank alike share one file; see results.json).",
            "",
        ]
    head = ["configuration", *(_LABEL.get(m, m) for m in MEASURES), "Δ NDCG@10", "p (t / rand)"]
    lines += [_row(head), _row(["---"] * len(head))]
    vs = {c["b"]: c for c in ds.comparisons if c["kind"] == "reranking"}
    for c in ds.configs:
        cells = [f"`{c.name}`", *(f"{c.metrics[m]:.4f}" for m in MEASURES)]
        cmp = vs.get(c.name)
        if cmp is None:
            cells += ["", ""]
        else:
            p = f"{cmp['p_ttest']:.3g} / {cmp['p_randomization']:.3g}"
            sig = cmp["p_ttest"] < 0.05 and cmp["p_randomization"] < 0.05
            cells += [f"{cmp['delta']:+.4f}", f"**{p}**" if sig else p]
        lines.append(_row(cells))
    lines.append("")
    others = [c for c in ds.comparisons if c["kind"] != "reranking"]
    if others:
        lines += ["Paired comparisons (NDCG@10, B minus A):", ""]
        lines += [_row(["A", "B", "Δ", "B wins / losses", "p (t / rand)"]), _row(["---"] * 5)]
        for o in others:
            p = f"{o['p_ttest']:.3g} / {o['p_randomization']:.3g}"
            lines.append(
                _row([o["a"], o["b"], f"{o['delta']:+.4f}", f"{o['wins']} / {o['losses']}", p])
            )
        lines.append("")
    for rr, stages in ds.latency.items():
        for fs, lat in stages.items():
            fit = ds.affordable_depth(rr, fs)
            lines += [
                f"Depth curve, `{fs}` + `{rr}` (latency: {int(next(iter(lat.values()))['n'])} "
                f"queries, no budget, caches off; budget {ds.budget_ms:.0f} ms; Recall@depth: "
                "of the candidates the cross-encoder scored):",
                "",
                _row(["depth", "NDCG@10", "Recall@depth", "p50 ms", "p99 ms", "fits"]),
                _row(["---"] * 6),
            ]
            for d in sorted(lat):
                c = next(x for x in ds.configs if x.name == f"{fs}+{short_name(rr)}@{d}")
                lines.append(
                    _row(
                        [
                            str(d),
                            f"{c.metrics['nDCG@10']:.4f}",
                            f"{c.metrics[f'R@{d}']:.4f}",
                            f"{lat[d]['p50']:.1f}",
                            f"{lat[d]['p99']:.1f}",
                            "yes" if lat[d]["p99"] <= ds.budget_ms else "no",
                        ]
                    )
                )
            lines += [
                "",
                f"Deepest depth within {ds.budget_ms:.0f} ms at p99: "
                + (f"**{fit}**" if fit is not None else "**none** of the measured depths"),
                "",
            ]
    return lines


def _plot(ds: DatasetResult, out: Path) -> Path | None:
    """Top: NDCG@10 (solid) and Recall@depth (dashed) against depth, each first stage's
    NDCG@10 alone dotted. Bottom, same x: p50 and p99 latency with the budget line."""
    series = sorted({(c.first_stage, c.reranker) for c in ds.configs if c.reranker})
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, (ax, lat_ax) = plt.subplots(
        2, 1, figsize=(7.5, 7), dpi=110, sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    table = ds.table()
    depths: set[int] = set()
    for i, (fs, rr) in enumerate(series):
        assert rr is not None
        col = colors[i % len(colors)]
        cfgs = sorted(
            (c for c in ds.configs if c.first_stage == fs and c.reranker == rr),
            key=lambda c: c.depth,
        )
        xs = [c.depth for c in cfgs]
        depths.update(xs)
        name = f"{fs} + {short_name(rr)}" if len(ds.latency) > 1 else fs
        ax.plot(xs, [c.metrics["nDCG@10"] for c in cfgs], "o-", color=col, label=f"{name}: NDCG@10")
        ax.plot(xs, [c.metrics[f"R@{c.depth}"] for c in cfgs], "s--", color=col, alpha=0.5)
        ax.axhline(table[fs]["nDCG@10"], color=col, lw=0.8, ls=":")
        lat = ds.latency.get(rr, {}).get(fs)
        if lat:
            ls = sorted(lat)
            lat_ax.plot(ls, [lat[d]["p50"] for d in ls], "o:", color=col, label=f"{name} p50")
            lat_ax.plot(ls, [lat[d]["p99"] for d in ls], "v-", color=col, label=f"{name} p99")
    lat_ax.axhline(
        ds.budget_ms, color="black", lw=1, ls="-.", label=f"{ds.budget_ms:.0f} ms budget"
    )
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(sorted(depths)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([str(d) for d in sorted(depths)])
    ax.set_ylabel("NDCG@10 (solid)  /  Recall@depth (dashed)")
    ax.set_title(
        f"{ds.name} ({ds.split}, {ds.queries} queries): rerank depth vs quality and latency\n"
        "dotted: the first stage alone",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("end-to-end ms (no budget)")
    lat_ax.set_xlabel("rerank depth (candidates scored)")
    lat_ax.grid(alpha=0.3, which="both")
    lat_ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.tight_layout()
    path = out / f"{ds.name}-depth.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


__all__ = ["write_report"]
