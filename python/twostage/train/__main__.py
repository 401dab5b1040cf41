"""``python -m twostage.train COMMAND``: mine, reranker, distill, encoder, encoder-eval, export,
evaluate, report, latency.

See TRAINING.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _repeat(items: list[str]) -> dict[str, int]:
    out = {}
    for it in items:
        name, _, n = it.partition("=")
        out[name] = int(n or 1)
    return out


def cmd_mine(a: argparse.Namespace) -> None:
    from twostage.encoder import Encoder
    from twostage.train.data import REDISTRIBUTABLE, load_set
    from twostage.train.mine import MineConfig, mine_set, split_dev, write_jsonl

    names = list(REDISTRIBUTABLE) if a.sets == "redistributable" else a.sets.split(",")
    enc = Encoder.load(a.encoder, precision=a.precision, threads=a.threads)
    caps = _repeat(a.max_queries) if a.max_queries else {}
    dev = {k: float(v) for k, _, v in (d.partition("=") for d in a.dev or [])}
    a.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    for name in names:
        data = load_set(name, a.shared)
        cfg = MineConfig(
            k=a.k,
            margin=a.margin,
            keep=a.keep,
            skip_top=a.skip_top,
            max_queries=caps.get(name),
            seed=a.seed,
            bm25=a.bm25,
        )
        rows = mine_set(data, enc, cfg)
        if name in dev:
            rows, dev_qids = split_dev(rows, dev[name], a.seed)
            (a.out / "dev").mkdir(exist_ok=True)
            (a.out / "dev" / f"{name}.qids.json").write_text(json.dumps(dev_qids))
        n = write_jsonl(rows, a.out / f"{name}.jsonl")
        negs = sum(len(r["negatives"]) for r in rows)
        summary[name] = {**data.summary(), "rows": n, "negatives": negs}
        print(json.dumps(summary[name]), flush=True)
    (a.out / "mined_summary.json").write_text(json.dumps(summary, indent=2))


def _train_config(a: argparse.Namespace) -> Any:
    from twostage.train.reranker import TrainConfig

    data = sorted(a.data.glob("*.jsonl")) if a.data.is_dir() else [a.data]
    if a.sets:
        data = [p for p in data if p.stem in a.sets.split(",")]
    return TrainConfig(
        data=data,
        out=a.out,
        init=a.init,
        layers=_ints(a.layers) if a.layers else None,
        steps=a.steps,
        batch=a.batch,
        negatives=a.negatives,
        neg_pool=a.neg_pool,
        max_length=a.max_length,
        lr=a.lr,
        head_lr_mult=a.head_lr_mult,
        pooling=a.pooling,
        seed=a.seed,
        bf16=a.bf16,
        threads=a.threads,
        save_every=a.save_every,
        max_minutes=a.max_minutes,
        stop_at=a.stop_at,
        repeat=_repeat(a.repeat or []),
        device=a.device,
        freeze_embeddings=not a.train_embeddings,
        loss=getattr(a, "loss", "listwise"),
        negatives_from=getattr(a, "negatives_from", "hard"),
    )


def cmd_reranker(a: argparse.Namespace) -> None:
    from twostage.train.reranker import train

    print(json.dumps(train(_train_config(a), resume=not a.no_resume), indent=2))


def cmd_distill(a: argparse.Namespace) -> None:
    from twostage.train.distill import distill

    a.layers = a.student_layers
    cfg = _train_config(a)
    print(json.dumps(distill(cfg, a.teacher, resume=not a.no_resume), indent=2))


def _data_files(data: Path, sets: str | None) -> list[Path]:
    files = sorted(data.glob("*.jsonl")) if data.is_dir() else [data]
    if sets:
        files = [p for p in files if p.stem in sets.split(",")]
    return files


def cmd_encoder(a: argparse.Namespace) -> None:
    from twostage.train.encoder import REEMBED_NOTE, EncoderTrainConfig, train_encoder

    cfg = EncoderTrainConfig(
        data=_data_files(a.data, a.sets),
        out=a.out,
        init=a.init,
        layers=_ints(a.layers) if a.layers else None,
        steps=a.steps,
        batch=a.batch,
        negatives=a.negatives,
        neg_pool=a.neg_pool,
        max_length=a.max_length,
        query_max_length=a.query_max_length,
        scale=a.scale,
        lr=a.lr,
        warmup=a.warmup,
        seed=a.seed,
        bf16=a.bf16,
        threads=a.threads,
        save_every=a.save_every,
        max_minutes=a.max_minutes,
        stop_at=a.stop_at,
        repeat=_repeat(a.repeat or []),
        device=a.device,
        freeze_embeddings=not a.train_embeddings,
    )
    info = train_encoder(cfg, resume=not a.no_resume, progress=not a.no_progress)
    print(json.dumps(info, indent=2))
    print(REEMBED_NOTE.format(folder=info["encoder"]))


def cmd_encoder_eval(a: argparse.Namespace) -> None:
    from twostage.train.data import SHARED
    from twostage.train.encoder import evaluate_encoder
    from twostage.train.report import dev_query_ids

    qids = None
    if a.dev:
        if a.split != "train":
            raise SystemExit("--dev selects held-out *train* queries: use it with --split train")
        qids = dev_query_ids(a.dev, a.shared or SHARED)
    results: list[dict[str, Any]] = []
    per = []
    for spec in a.encoder:
        res = evaluate_encoder(
            spec,
            a.data,
            split=a.split,
            query_ids=qids,
            precision=a.precision,
            cache=a.cache,
            threads=a.threads,
            keep=True,
        )
        per.append(res.pop("_per_query"))
        print(json.dumps(res), flush=True)
        results.append(res)
    if len(per) > 1:
        from twostage.metrics import paired_test

        # Each encoder against the first: paired t and randomization tests over the queries.
        for res, p in zip(results[1:], per[1:], strict=True):
            res["vs_first"] = {
                m: {
                    k: (float(f"{v:.3g}") if k.startswith("p_") else round(v, 4))
                    if isinstance(v, float)
                    else v
                    for k, v in asdict(paired_test(per[0][m], p[m], m)).items()
                }
                for m in p
            }
            print(json.dumps({"encoder": res["encoder"], "vs": results[0]["encoder"],
                              **res["vs_first"]}), flush=True)  # fmt: skip
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2))


def cmd_export(a: argparse.Namespace) -> None:
    from twostage.train.export import export_encoder_folder, export_folder

    settings = a.checkpoint / "twostage.json"
    if settings.is_file():
        kind = json.loads(settings.read_text())["kind"]
    else:  # a sentence-transformers folder is a bi-encoder (e.g. all-MiniLM-L6-v2)
        kind = "encoder" if (a.checkpoint / "modules.json").is_file() else "reranker"
    if kind == "encoder":
        out = export_encoder_folder(
            a.checkpoint, a.out, max_length=a.max_length, fp32=not a.int8_only
        )
    else:
        out = export_folder(a.checkpoint, a.out, max_length=a.max_length, fp32=not a.int8_only)
    print(out)


def cmd_evaluate(a: argparse.Namespace) -> None:
    from twostage.train.evaluate import evaluate_collection

    res = evaluate_collection(
        a.data,
        a.model,
        depths=_ints(a.depths),
        split=a.split,
        fusion=a.fusion,
        max_length=a.max_length,
        cache=a.cache,
    )
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))


def cmd_latency(a: argparse.Namespace) -> None:
    from twostage.train.evaluate import latency

    res = latency(a.model, _ints(a.pairs), max_length=a.max_length, repeats=a.repeats)
    print(json.dumps(res, indent=2))


def cmd_report(a: argparse.Namespace) -> None:
    from twostage.train.report import markdown, report

    res = report(
        a.model,
        a.mined,
        depths=_ints(a.depths),
        ood_depths=_ints(a.ood_depths) if a.ood_depths else None,
        cache=a.cache,
        max_length=a.max_length,
        rule=a.fusion_rule,
    )
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    print(markdown(res))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m twostage.train", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    m = sub.add_parser("mine", help="hard negatives from each set's own corpus (no PyTorch)")
    m.add_argument(
        "--sets",
        default="redistributable",
        help="comma-separated names from twostage.train.data.SETS, or 'redistributable'",
    )
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--shared", type=Path, default=None, help="the shared/ folder")
    m.add_argument("--encoder", default="minilm-l6")
    m.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("-k", type=int, default=50)
    m.add_argument("--margin", type=float, default=0.05)
    m.add_argument("--keep", type=int, default=30)
    m.add_argument("--skip-top", type=int, default=0)
    m.add_argument("--bm25", action="store_true", help="also mine BM25's top k (BEIR sets)")
    m.add_argument("--max-queries", nargs="*", help="NAME=N caps, e.g. medquad=2000")
    m.add_argument(
        "--dev",
        nargs="*",
        default=["scifact=0.2"],
        help="NAME=FRACTION of queries held out (their ids go to OUT/dev/)",
    )
    m.add_argument("--seed", type=int, default=0)
    m.set_defaults(fn=cmd_mine)

    def training_args(r: argparse.ArgumentParser) -> None:
        r.add_argument("--data", type=Path, required=True, help="mined .jsonl or a folder of them")
        r.add_argument("--sets", default=None, help="only these files (stems) from --data")
        r.add_argument("--out", type=Path, required=True)
        r.add_argument("--init", type=Path, default=None, help="BERT folder (default MiniLM-L6)")
        r.add_argument("--steps", type=int, default=1000)
        r.add_argument("--batch", type=int, default=4)
        r.add_argument("--negatives", type=int, default=7)
        r.add_argument("--neg-pool", type=int, default=20)
        r.add_argument("--max-length", type=int, default=192)
        r.add_argument("--lr", type=float, default=7e-5)
        r.add_argument("--head-lr-mult", type=float, default=10.0)
        r.add_argument("--pooling", default="mean", choices=["mean", "cls"])
        r.add_argument("--seed", type=int, default=0)
        r.add_argument("--bf16", action="store_true", help="bfloat16 autocast (AVX512-BF16/AMX)")
        r.add_argument("--threads", type=int, default=2)
        r.add_argument("--save-every", type=int, default=200)
        r.add_argument("--max-minutes", type=float, default=None)
        r.add_argument(
            "--stop-at", type=int, default=None, help="stop at this step (schedule: --steps)"
        )
        r.add_argument("--repeat", nargs="*", help="NAME=N: repeat a source's rows N times")
        r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
        r.add_argument("--train-embeddings", action="store_true", help="also train word embeddings")
        r.add_argument("--no-resume", action="store_true")

    r = sub.add_parser("reranker", help="train a cross-encoder (listwise) on mined JSONL")
    training_args(r)
    r.add_argument("--layers", default=None, help="keep these layers, e.g. 0,1,2")
    r.add_argument(
        "--loss",
        default="listwise",
        choices=["listwise", "pointwise"],
        help="softmax over each group, or binary cross-entropy per pair",
    )
    r.add_argument(
        "--negatives-from",
        default="hard",
        choices=["hard", "random"],
        help="the mined negatives, or any passage of the row's source (an ablation)",
    )
    r.set_defaults(fn=cmd_reranker)

    d = sub.add_parser("distill", help="train a smaller student on a teacher's margins")
    training_args(d)
    d.add_argument("--teacher", required=True, help="teacher reranker (folder or built-in)")
    d.add_argument("--student-layers", default="0,1", help="MiniLM layers for the student")
    d.set_defaults(fn=cmd_distill)

    b = sub.add_parser(
        "encoder",
        help="fine-tune the bi-encoder (MNRL: in-batch + mined negatives) and export it",
        description=(
            "Fine-tune a bi-encoder on mined JSONL with the multiple-negatives ranking loss "
            "and export RUN/encoder (ONNX int8 + fp32). A new encoder means re-embedding the "
            "corpus: build a new collection with `twostage index build --encoder RUN/encoder`."
        ),
    )
    b.add_argument("--data", type=Path, required=True, help="mined .jsonl or a folder of them")
    b.add_argument("--sets", default=None, help="only these files (stems) from --data")
    b.add_argument("--out", type=Path, required=True)
    b.add_argument("--init", type=Path, default=None, help="BERT folder (default MiniLM-L6)")
    b.add_argument("--layers", default=None, help="keep these layers, e.g. 0,1,2 (default all)")
    b.add_argument("--steps", type=int, default=1000)
    b.add_argument("--batch", type=int, default=32, help="(query, positive) rows per step")
    b.add_argument("--negatives", type=int, default=1, help="mined hard negatives per row")
    b.add_argument("--neg-pool", type=int, default=10, help="drawn from this many hardest")
    b.add_argument("--max-length", type=int, default=256, help="document tokens")
    b.add_argument("--query-max-length", type=int, default=64)
    b.add_argument("--scale", type=float, default=20.0, help="1 / temperature")
    b.add_argument("--lr", type=float, default=2e-5)
    b.add_argument("--warmup", type=float, default=0.1, help="fraction of --steps")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--bf16", action="store_true", help="bfloat16 autocast (AVX512-BF16/AMX)")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--save-every", type=int, default=50)
    b.add_argument("--max-minutes", type=float, default=None)
    b.add_argument(
        "--stop-at", type=int, default=None, help="stop at this step (schedule: --steps)"
    )
    b.add_argument("--repeat", nargs="*", help="NAME=N: repeat a source's rows N times")
    b.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda")
    b.add_argument("--train-embeddings", action="store_true", help="also train word embeddings")
    b.add_argument("--no-resume", action="store_true")
    b.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    b.set_defaults(fn=cmd_encoder)

    ee = sub.add_parser(
        "encoder-eval",
        help="NDCG@10 and Recall@100 of encoders: exact search over a BEIR split (no PyTorch)",
    )
    ee.add_argument("--data", type=Path, required=True, help="a BEIR folder (shared/data/scifact)")
    ee.add_argument("--encoder", nargs="+", default=["minilm-l6"], help="built-in names or folders")
    ee.add_argument("--split", default="test")
    ee.add_argument(
        "--dev",
        type=Path,
        default=None,
        help="a mining output: only SciFact train queries without a row in it (--split train)",
    )
    ee.add_argument("--shared", type=Path, default=None, help="the shared/ folder (for --dev)")
    ee.add_argument("--precision", default="int8", choices=["int8", "fp32"])
    ee.add_argument("--cache", type=Path, default=None, help="folder for corpus vectors")
    ee.add_argument("--threads", type=int, default=None, help="onnxruntime threads")
    ee.add_argument("--json", type=Path, default=None)
    ee.set_defaults(fn=cmd_encoder_eval)

    e = sub.add_parser(
        "export",
        help="checkpoint folder -> ONNX folder (a reranker: int8 compact; an encoder: int8)",
    )
    e.add_argument("checkpoint", type=Path)
    e.add_argument("out", type=Path)
    e.add_argument("--max-length", type=int, default=None)
    e.add_argument("--int8-only", action="store_true", help="ship model_int8.onnx only")
    e.set_defaults(fn=cmd_export)

    v = sub.add_parser("evaluate", help="first stage vs reranked NDCG@10 on a BEIR collection")
    v.add_argument(
        "--data", type=Path, required=True, help="a BEIR folder (e.g. shared/data/scifact)"
    )
    v.add_argument("--model", default=None, help="reranker spec (folder or built-in name)")
    v.add_argument("--split", default="test")
    v.add_argument("--depths", default="10,20,50")
    v.add_argument("--fusion", type=float, default=None, help="also report logit + w * cosine")
    v.add_argument("--max-length", type=int, default=None)
    v.add_argument("--cache", type=Path, default=None, help="folder for corpus vectors")
    v.add_argument("--json", type=Path, default=None)
    v.set_defaults(fn=cmd_evaluate)

    t = sub.add_parser("latency", help="time scoring N pairs with rerankers (SciFact texts)")
    t.add_argument("--model", required=True, nargs="+", help="one or more (timed interleaved)")
    t.add_argument("--repeats", type=int, default=7)
    t.add_argument("--pairs", default="10,20,50,100")
    t.add_argument("--max-length", type=int, default=None)
    t.set_defaults(fn=cmd_latency)

    rp = sub.add_parser("report", help="dev fusion fit, SciFact test + other collections, latency")
    rp.add_argument("--model", required=True)
    rp.add_argument("--mined", type=Path, required=True, help="the mining output (for dev queries)")
    rp.add_argument("--depths", default="10,20,50")
    rp.add_argument("--ood-depths", default="10,20", help="depths for the other collections")
    rp.add_argument(
        "--fusion-rule",
        default="linear",
        choices=["linear", "z"],
        help="linear: logit + w * cosine; z: (1 - w) z(logit) + w z(cosine), per query",
    )
    rp.add_argument("--max-length", type=int, default=None)
    rp.add_argument("--cache", type=Path, default=None)
    rp.add_argument("--json", type=Path, default=None)
    rp.set_defaults(fn=cmd_report)

    a = p.parse_args(argv)
    a.fn(a)


if __name__ == "__main__":
    main()
