"""The reranker on Ray Serve replicas against in-process: pairs/s and p50/p99 of depth-30 searches.

    .venv/bin/python benches/distributed_serving.py              # ~4 minutes on 2 cores
    .venv/bin/python benches/distributed_serving.py --queries 16 --concurrency 1,4 --rounds 2

Every configuration answers the same SciFact test queries through one
:class:`~twostage.engine.Engine` over the first ``--docs`` SciFact abstracts (MiniLM-L6 int8,
built once into benches/out/distributed_serving/): the shipped ``twostage-rerank`` (128
tokens) scores the top 30 of the hybrid first stage, with a budget long enough that every
pair is scored (the figures are costs, not cut-offs), the score cache off and the query
vectors cached (so a search is its first stage and its rerank). Configurations:

* ``in-process``: the engine's own row-wise path, 2 threads (``twostage search``);
* ``in-process batcher``: the server's cross-request Batcher, 2 workers (``twostage serve``);
* ``ray NrxMt batcher``: :class:`~twostage.distributed.serving.RayScorer` over N replicas of
  M threads each, the project's Batcher inside each replica (what the library ships);
* ``ray NrxMt serve.batch``: the same replicas batching with Serve's ``@serve.batch``
  (:class:`ServeBatchReplica` below: requests grouped by version, one padded run per group);
* ``split2``: the scorer sends a search's pairs as 2 calls (round-robin halves).

Each cell runs ``--queries`` searches from ``--concurrency`` threads, and once more from the
most threads at ``--budget-ms`` (150, the model's default): a deadline 4 callers cannot all
meet on 2 cores, where what counts is how many pairs each way scores by it and whether
answers come back on time. The cells run in
rounds, every configuration in turn (interleaved), so background load hits them alike. All
deployments are up for the whole run: Ray is started with more logical CPUs than the 2 cores
so they fit at once, and a replica runs exactly its ``threads`` onnxruntime threads. Figures
are for this whole box: the driver's threads, the engine's first stage, Serve's proxyless
handles and the replicas share the 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from twostage._onnx import pad
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.distributed.serving import (
    RayScorer,
    ReplicaConfig,
    RerankerReplica,
    Scaling,
    ScoreReply,
    ScoreRequest,
    shutdown,
)
from twostage.encoder import Encoder
from twostage.engine import Engine, PairScorer, _Cancel
from twostage.reranker import Reranker
from twostage.server.batching import Batcher

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
OUT = ROOT / "benches" / "out" / "distributed_serving"
DEPTH = 30


class ServeBatchReplica(RerankerReplica):
    """The alternative measured: Serve's ``@serve.batch`` instead of the Batcher. Requests
    that arrive within ``max_wait_ms`` (up to 4 requests) form one batch;
    each version's pairs run as one padded run (row by row on the model's threads, as the
    shipped model runs on a CPU); a request whose deadline passed before the run is
    answered ``budget``. It has no deadline-aware admission: a request joins whatever batch
    forms, however long."""

    def __init__(self, config: ReplicaConfig, cpus: float = 1.0) -> None:
        super().__init__(config, cpus)
        self._batched.set_max_batch_size(4)
        self._batched.set_batch_wait_timeout_s(config.max_wait_ms / 1000.0)

    async def score(self, request: ScoreRequest) -> ScoreReply:
        reply: ScoreReply = await self._batched(request)
        return reply

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.002)
    async def _batched(self, requests: list[ScoreRequest]) -> list[ScoreReply]:
        held = self._slot.get()[1]
        replies: list[ScoreReply | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.version, []).append(i)
        loop = asyncio.get_running_loop()
        transit = self._config.transit_ms / 1000.0
        for version, idx in groups.items():
            rr = held.find(version)
            if rr is None:
                for i in idx:
                    replies[i] = ScoreReply(None, {}, "reranker failed: no such model", self.id)
                continue
            now = time.time()
            live = [i for i in idx if requests[i].deadline - transit > now]
            for i in idx:
                if i not in live:
                    n = len(requests[i].ids)
                    replies[i] = ScoreReply(rr.version, {}, f"budget: {n} of {n}", self.id)
            if not live:
                continue
            rows = [(i, j) for i in live for j in range(len(requests[i].ids))]
            batch = pad(
                list(range(len(rows))),
                [requests[i].ids[j] for i, j in rows],
                [requests[i].type_ids[j] for i, j in rows],
            )
            latest = max(requests[i].deadline for i in live) - transit - now
            cancel = _Cancel(latest)
            try:
                with cancel:
                    raw = await loop.run_in_executor(None, rr.run, batch, cancel.options)
                scores = rr.postprocess(raw).tolist()
            except Exception as e:
                for i in live:
                    replies[i] = ScoreReply(rr.version, {}, f"reranker failed: {e}", self.id)
                continue
            by_req: dict[int, dict[int, float]] = {i: {} for i in live}
            for (i, j), s in zip(rows, scores, strict=True):
                by_req[i][j] = s
            for i in live:
                replies[i] = ScoreReply(rr.version, by_req[i], None, self.id)
        return [r for r in replies if r is not None]


@dataclass
class Config:
    name: str
    scorer: Callable[[], PairScorer | None]
    cells: dict[tuple[int, float | None], list[dict[str, Any]]] = field(default_factory=dict)


def build_collection(docs: int, encoder: Encoder) -> Path:
    folder = OUT / f"scifact-{docs}"
    if (folder / "manifest.json").is_file():
        return folder
    rows = []
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == docs:
                break
    from twostage.document import Document

    with Collection.create(folder, encoder) as col:
        col.add([Document(id=r["_id"], text=r["text"], title=r.get("title", "")) for r in rows])
    return folder


def queries(n: int) -> list[str]:
    qrels = SCIFACT / "qrels" / "test.tsv"
    ids = {line.split("\t")[0] for line in qrels.read_text().splitlines()[1:]}
    out = []
    for line in (SCIFACT / "queries.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row["_id"] in ids:
            out.append(row["text"])
    return out[:n]


def run_cell(
    engine: Engine, qs: list[str], concurrency: int, budget_ms: float | None
) -> dict[str, Any]:
    """``qs`` from ``concurrency`` threads; ``budget_ms`` None: long enough for every pair."""
    lat: list[float] = []
    rerank: list[float] = []
    scored = 0
    degraded = 0
    versions: set[str | None] = set()

    def one(q: str) -> None:
        nonlocal scored, degraded
        r = engine.search(q, k=10, depth=DEPTH, budget_ms=budget_ms or 30_000)
        lat.append(r.timings.total)
        rerank.append(r.timings.rerank)
        scored += r.scored
        degraded += r.degraded
        # One version per answer, whatever was cut.
        assert {h.reranker_version for h in r.hits if h.reranked} <= {r.reranker_version}
        versions.add(r.reranker_version)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, qs))
    wall = time.perf_counter() - t0
    if budget_ms is None:  # the figures are costs: every pair scored
        assert degraded == 0 and scored == DEPTH * len(qs), (degraded, scored)
        assert len(versions) == 1
    return {"wall": wall, "lat": lat, "rerank": rerank, "pairs": scored, "degraded": degraded}


def pct(xs: list[float], p: float) -> float:
    return float(np.percentile(np.asarray(xs), p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=24, help="searches per cell per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", default="1,4")
    ap.add_argument(
        "--budget-ms",
        type=float,
        default=150.0,
        help="also run the highest concurrency at this budget (the model's default): how "
        "many pairs each way scores by a deadline it cannot meet for all",
    )
    ap.add_argument("--out", type=Path, default=OUT / "result.json")
    ap.add_argument(
        "--granularity",
        action="store_true",
        help="instead: pairs one 1-thread replica scores by a deadline, by batch size",
    )
    a = ap.parse_args()
    if a.granularity:
        granularity(a.rounds)
        return
    if not (SCIFACT / "corpus.jsonl.gz").is_file():
        sys.exit(f"SciFact not found at {SCIFACT}")
    levels = [int(c) for c in a.concurrency.split(",")]
    OUT.mkdir(parents=True, exist_ok=True)
    encoder = Encoder.load("minilm-l6")
    folder = build_collection(a.docs, encoder)
    col = Collection.open(folder, encoder, read_only=True)
    qs = queries(a.queries)

    import ray

    # Logical CPUs so every deployment is up at once; threads are set explicitly.
    ray.init(num_cpus=16, include_dashboard=False, log_to_driver=False, namespace="bench")
    serve.start(proxy_location="Disabled")
    rr = Reranker.load("twostage-rerank", threads=2)
    apps: list[str] = []

    def deploy(name: str, replicas: int, threads: int, cls: type = RerankerReplica) -> Any:
        scaling = Scaling(replicas, replica_cpus=1.0, max_ongoing_requests=16)
        cfg = ReplicaConfig(reranker="twostage-rerank", threads=threads, sanity_check=False)
        dep = serve.deployment(cls, name="reranker", **scaling.deployment_options())
        handle = serve.run(dep.bind(cfg, float(threads)), name=name, route_prefix=None)
        apps.append(name)
        return handle

    t0 = time.perf_counter()
    h1b = deploy("r1-batcher", 1, 2)
    h1s = deploy("r1-servebatch", 1, 2, ServeBatchReplica)
    h2b = deploy("r2-batcher", 2, 1)
    h2s = deploy("r2-servebatch", 2, 1, ServeBatchReplica)
    deploy_s = time.perf_counter() - t0
    batcher = Batcher(max_pairs=16, max_wait_ms=2.0, workers=2)
    configs = [
        Config("in-process", lambda: None),
        Config("in-process batcher", lambda: batcher),
        Config("ray 1r x 2t batcher", lambda: RayScorer(h1b)),
        Config("ray 1r x 2t serve.batch", lambda: RayScorer(h1s)),
        Config("ray 2r x 1t batcher", lambda: RayScorer(h2b)),
        Config("ray 2r x 1t serve.batch", lambda: RayScorer(h2s)),
        Config("ray 2r x 1t batcher split2", lambda: RayScorer(h2b, split=2)),
    ]
    cfg = EngineConfig(score_cache_size=0, first_stage="hybrid")
    engines = {c.name: Engine(col, reranker=rr, config=cfg, scorer=c.scorer()) for c in configs}
    for e in engines.values():  # warm: every query vector cached, each replica's first runs
        for q in qs:
            e.search(q, k=10, rerank=False)
        for q in qs[:8]:
            e.search(q, k=10, depth=DEPTH, budget_ms=30_000)
    load0 = os.getloadavg()
    cells: list[tuple[int, float | None]] = [(c, None) for c in levels]
    if a.budget_ms:
        cells.append((max(levels), a.budget_ms))
    for rnd in range(a.rounds):
        for c, budget in cells:
            for conf in configs:
                res = run_cell(engines[conf.name], qs, c, budget)
                conf.cells.setdefault((c, budget), []).append(res)
                print(
                    f"round {rnd} c={c} budget={budget} {conf.name:28s} "
                    f"{res['pairs'] / res['wall']:7.1f} pairs/s  p50 {pct(res['lat'], 50):6.1f} "
                    f"ms  p99 {pct(res['lat'], 99):6.1f} ms  scored {res['pairs']}",
                    flush=True,
                )
    load1 = os.getloadavg()
    table = []
    for conf in configs:
        for (c, budget), runs in conf.cells.items():
            lat = [x for r in runs for x in r["lat"]]
            rer = [x for r in runs for x in r["rerank"]]
            rates = [r["pairs"] / r["wall"] for r in runs]
            table.append(
                {
                    "config": conf.name,
                    "concurrency": c,
                    "budget_ms": budget,
                    "searches": len(lat),
                    "scored_share": round(sum(r["pairs"] for r in runs) / (DEPTH * len(lat)), 3),
                    "degraded": sum(r["degraded"] for r in runs),
                    "over_budget_50ms": sum(x > budget + 50 for x in lat) if budget else None,
                    "pairs_per_s_median": round(statistics.median(rates), 1),
                    "pairs_per_s_rounds": [round(x, 1) for x in rates],
                    "p50_ms": round(pct(lat, 50), 1),
                    "p99_ms": round(pct(lat, 99), 1),
                    "rerank_p50_ms": round(pct(rer, 50), 1),
                    "rerank_p99_ms": round(pct(rer, 99), 1),
                }
            )
    import ray as _ray

    result = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": _cpu(),
            "cores": os.cpu_count(),
            "load_start": load0,
            "load_end": load1,
        },
        "versions": {
            "python": platform.python_version(),
            "ray": _ray.__version__,
            "reranker": rr.version,
        },
        "docs": a.docs,
        "depth": DEPTH,
        "deploy_s": round(deploy_s, 1),
        "table": table,
    }
    a.out.write_text(json.dumps(result, indent=1))
    print()
    print(
        "| configuration | callers | budget ms | pairs/s | p50 ms | p99 ms | rerank p50 | "
        "rerank p99 | pairs scored | > budget + 50 ms |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    order = {cell: i for i, cell in enumerate(cells)}
    for row in sorted(
        table,
        key=lambda r: (order[(r["concurrency"], r["budget_ms"])], configs_index(configs, r)),
    ):
        over = row["over_budget_50ms"]
        print(
            f"| {row['config']} | {row['concurrency']} | {row['budget_ms'] or '-'} | "
            f"{row['pairs_per_s_median']} | {row['p50_ms']} | {row['p99_ms']} | "
            f"{row['rerank_p50_ms']} | {row['rerank_p99_ms']} | "
            f"{100 * row['scored_share']:.0f} % | {'-' if over is None else over} |"
        )
    print(f"\nload average {load0} -> {load1}; written to {a.out}")
    batcher.close()
    for name in apps:
        shutdown(name)
    serve.shutdown()
    ray.shutdown()


def granularity(rounds: int) -> None:
    """30 SciFact pairs, one replica of 1 thread, batches of 2, 4 and 16 pairs: how many are
    scored by 80, 150 and 300 ms (a batch's scores come back when it ends)."""
    import ray

    ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False, namespace="bench")
    serve.start(proxy_location="Disabled")
    from twostage.distributed.serving import reranker_app

    rr = Reranker.load("twostage-rerank")
    docs = []
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            row = json.loads(line)
            docs.append(f"{row.get('title', '')}. {row['text']}")
            if len(docs) == DEPTH:
                break
    pairs = rr.pack(rr.tokenize_query(queries(1)[0]), rr.token_ids(docs))
    sizes = (2, 4, 16)
    scorers = {}
    for n in sizes:
        cfg = ReplicaConfig(reranker="twostage-rerank", threads=1, max_pairs=n, sanity_check=False)
        app = reranker_app(cfg, Scaling(1, replica_cpus=1.0))
        scorers[n] = RayScorer(serve.run(app, name=f"g{n}", route_prefix=None))
        for _ in range(3):
            scorers[n].score_pairs(rr, pairs, time.perf_counter() + 10, 0.0)
    got: dict[tuple[int, int], list[int]] = {}
    for _ in range(rounds):
        for n in sizes:
            for budget in (80, 150, 300):
                t0 = time.perf_counter()
                scores, _ = scorers[n].score_pairs(rr, pairs, t0 + budget / 1000, 0.0)
                got.setdefault((n, budget), []).append(len(scores))
    print("| pairs a batch | scored by 80 ms | by 150 ms | by 300 ms |")
    print("|---:|---|---|---|")
    for n in sizes:
        cells = [", ".join(map(str, got[(n, b)])) for b in (80, 150, 300)]
        print(f"| {n} | " + " | ".join(cells) + " |")
    print(f"load average {os.getloadavg()}")
    for n in sizes:
        shutdown(f"g{n}")
    serve.shutdown()
    ray.shutdown()


def configs_index(configs: list[Config], row: dict[str, Any]) -> int:
    return [c.name for c in configs].index(row["config"])


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


if __name__ == "__main__":
    main()
