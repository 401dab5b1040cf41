"""The full measurement of a trained reranker, as TRAINING.md reports it (no PyTorch).

1. **dev**: SciFact *train* queries that training never saw (those held out at mining, and
   those that got no row) -> first stage, reranked at each depth, and the fusion weight
   ``w`` (``logit + w * cosine``) fitted per depth. Nothing is chosen on a test split.
2. **SciFact test**: first stage vs reranked vs fused (with the dev weight), per depth.
3. **out of domain**: the same on every other collection in ``shared/data``.
4. **latency**: ``score_tokens`` for 10/20/50/100 pairs.

``python -m twostage.train report --model DIR --mined MINED --json out.json``
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from twostage.train.data import SHARED
from twostage.train.evaluate import evaluate_collection, fit_fusion, latency, ndcg10, rerank_run
from twostage.train.mine import iter_jsonl

OOD = ("cranfield", "cisi", "cacm", "med", "adi")


def dev_query_ids(mined: Path, shared: Path = SHARED) -> list[str]:
    """SciFact train queries with no row in ``mined/scifact.jsonl``: never trained on."""
    trained = {r["qid"] for r in iter_jsonl([Path(mined) / "scifact.jsonl"])}
    with (shared / "data" / "scifact" / "qrels" / "train.tsv").open(encoding="utf-8") as f:
        qids = {row["query-id"] for row in csv.DictReader(f, delimiter="\t")}
    return sorted(qids - trained)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def report(
    model: str,
    mined: Path,
    *,
    depths: Sequence[int] = (10, 20, 30, 50),
    ood: Sequence[str] = OOD,
    ood_depths: Sequence[int] | None = None,
    cache: Path | None = None,
    max_length: int | None = None,
    shared: Path = SHARED,
    lat_pairs: Sequence[int] = (10, 20, 50, 100),
    rule: str = "linear",
) -> dict[str, Any]:
    from twostage.reranker import Reranker

    rr = Reranker.load(model, max_length=max_length)
    out: dict[str, Any] = {"model": rr.version, "max_length": rr.max_length, "fusion_rule": rule}
    data = shared / "data"

    dev_ids = dev_query_ids(mined, shared)
    dev = evaluate_collection(
        data / "scifact", None, depths=depths, split="train", cache=cache, reranker=rr,
        query_ids=dev_ids, keep=True,
    )  # fmt: skip
    weights = {}
    for d in depths:
        w, table = fit_fusion(dev["_qrels"], dev["_cands"], dev["_logits"], d, rule=rule)
        weights[str(d)] = w
        dev.setdefault("fusion_sweep", {})[str(d)] = table
    dev["fusion_weight"] = weights
    dev["fused"] = {
        str(d): round(
            ndcg10(
                dev["_qrels"], rerank_run(dev["_cands"], dev["_logits"], d, weights[str(d)], rule)
            ),
            4,
        )
        for d in depths
    }
    out["dev"] = {k: v for k, v in dev.items() if not k.startswith("_")}
    _log(json.dumps(out["dev"]))

    out["test"] = {}
    for name in ("scifact", *ood):
        ds = depths if name == "scifact" or ood_depths is None else ood_depths
        res = evaluate_collection(
            data / name, None, depths=ds, split="test", cache=cache, reranker=rr, keep=True
        )
        res["fused"] = {
            str(d): round(
                ndcg10(
                    res["_qrels"],
                    rerank_run(res["_cands"], res["_logits"], d, weights[str(d)], rule),
                ),
                4,
            )
            for d in ds
        }
        out["test"][name] = {k: v for k, v in res.items() if not k.startswith("_")}
        _log(json.dumps(out["test"][name]))
    if lat_pairs:
        out["latency"] = latency(model, lat_pairs, max_length=max_length)
        _log(json.dumps(out["latency"]))
    return out


def markdown(res: dict[str, Any]) -> str:
    """The result as a table: first stage, reranked and fused NDCG@10 per depth."""
    depths = list(res["dev"]["reranked"])
    head = (
        "| collection | first stage | "
        + " | ".join(f"rerank@{d} | fused@{d}" for d in depths)
        + " |"
    )
    lines = [head, "|" + "---|" * (2 + 2 * len(depths))]
    rows = [("scifact train (dev)", res["dev"])] + [
        (f"{k} test", v) for k, v in res["test"].items()
    ]
    for name, r in rows:
        cells = [
            f"{r['reranked'][d]:.4f} | {r['fused'][d]:.4f}" if d in r["reranked"] else "n/a | n/a"
            for d in depths
        ]
        lines.append(f"| {name} | {r['first_stage']:.4f} | " + " | ".join(cells) + " |")
    w = res["dev"]["fusion_weight"]
    lines.append("")
    rule = res.get("fusion_rule", "linear")
    what = "logit + w * cosine" if rule == "linear" else "(1 - w) z(logit) + w z(cosine)"
    lines.append(
        f"fusion weight w ({what}, fitted on dev): "
        + ", ".join(f"depth {d}: {w[d]}" for d in depths)
    )
    if "latency" in res:
        lat = res["latency"]["models"][0]["p50_ms"]
        lines.append(
            "latency (ms, p50, score_tokens): "
            + ", ".join(f"{n} pairs {ms}" for n, ms in lat.items())
        )
    return "\n".join(lines)


__all__ = ["OOD", "dev_query_ids", "markdown", "report"]
