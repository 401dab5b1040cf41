"""Load test of ``twostage serve`` on loopback: throughput, p50/p99, errors; writes a table.

    .venv/bin/python benches/load.py --quick                   # ~3 minutes on 2 cores
    .venv/bin/python benches/load.py --collection benches/out/load/scifact --duration 10

Starts the real server process (``python -m twostage serve``) on 127.0.0.1 twice, with and
without cross-request batching, and for each drives ``/search`` from 1, 4, 16, 64 concurrent
clients (an asyncio + httpx keep-alive client in this process), with reranking on and off;
then the same with the reranker swapped every few seconds through ``PUT /models/reranker``.
Each cell is bounded in time (``--duration``) and in requests (``--max-requests``).

The collection is SciFact (5,183 abstracts, MiniLM-L6 int8) when ``../shared/data/scifact``
is there (built once into benches/out/load/), else 2,000 stdlib-doc passages; queries are
SciFact's (or stdlib questions) in turn. The server's query and score caches are off
(``TWOSTAGE_*_CACHE_SIZE=0``) so every request pays for its encode and its reranking. The
reranker is a 2-layer, 128-wide BERT cross-encoder with random weights (int8): its cost is
a real model's of that shape; its scores mean nothing. The client shares the 2 cores with the
server: figures are for this whole box, client included.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
OUT = ROOT / "benches" / "out" / "load"
HOST = "127.0.0.1"  # loopback only: nothing here ever sends to another address

STDLIB_QUESTIONS = [
    "how do I read a gzip file",
    "parse json from a string",
    "spawn a subprocess and read its output",
    "regular expression named groups",
    "sort a list of dictionaries by a key",
    "what does the with statement do",
    "format a date as ISO 8601",
    "compute a sha256 hash of a file",
]


@dataclass
class Cell:
    """One measured configuration."""

    batching: bool
    rerank: bool
    clients: int
    swapping: bool = False
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    degraded: int = 0
    torn: int = 0  # answers whose hits name more than one reranker version
    swaps_ok: int = 0
    swaps_failed: int = 0
    swap_ms: list[float] = field(default_factory=list)
    batch_pairs_mean: float | None = None
    batch_requests_mean: float | None = None

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


# ---- fixtures: collection, models, queries ---------------------------------------------------


def collection(arg: str | None, quick: bool) -> Path:
    """The collection folder: given, or SciFact (else stdlib docs) built once under OUT."""
    if arg:
        return Path(arg)
    from twostage.encoder import Encoder
    from twostage.ingest import build

    if SCIFACT.is_dir():
        path = OUT / "scifact"
        if not (path / "manifest.json").is_file():
            print(f"building {path} from SciFact (once; a few minutes on 2 cores)", flush=True)
            build(
                SCIFACT / "corpus.jsonl.gz", path, encoder=Encoder.load("minilm-l6"), progress=False
            )
        return path
    path = OUT / "stdlib"
    if not (path / "manifest.json").is_file():
        from twostage.collection import Collection
        from twostage.stdlib_docs import stdlib_docs

        with Collection.create(path, Encoder.load("minilm-l6")) as col:
            col.add(list(stdlib_docs(500 if quick else 2000)))
    return path


def models(root: Path) -> tuple[str, str]:
    """Two random cross-encoders of one shape (2 layers, 128 wide) under ``root``."""
    sys.path.insert(0, str(ROOT / "tests"))
    import tinyce

    tinyce.CE_CONFIG = {**tinyce.CE_CONFIG, "hidden_size": 128, "intermediate_size": 512}
    names = ("ce-a", "ce-b")
    for seed, name in enumerate(names, start=1):
        if not (root / name / "config.json").is_file():
            tinyce.random_cross_encoder(root / name, seed=seed)
    return names


def queries() -> list[str]:
    path = SCIFACT / "queries.jsonl"
    if path.is_file():
        with path.open(encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f if line.strip()][:300]
    return STDLIB_QUESTIONS


# ---- the server process ----------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class Server:
    """``twostage serve`` in a child process on loopback, stopped with SIGTERM."""

    def __init__(self, col: Path, root: Path, reranker: str, batching: bool, args: Any) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.token = secrets.token_urlsafe(24)
        env = dict(os.environ)
        env.update(
            TWOSTAGE_TOKEN=self.token,
            TWOSTAGE_QUERY_CACHE_SIZE="0",
            TWOSTAGE_SCORE_CACHE_SIZE="0",
        )
        cmd = [
            sys.executable, "-m", "twostage", "serve", str(col), "--host", HOST,
            "--port", str(self.port), "--model-root", str(root), "--reranker", str(root / reranker),
            "--precision", "int8", "--depth", str(args.depth), "--budget-ms", str(args.budget_ms),
            "--log-level", "warning", "--workers", str(args.workers),
            "--no-sanity-check",  # random models (mechanics and speed only)
        ]  # fmt: skip
        if not batching:
            cmd.append("--no-batching")
        else:
            cmd += args.batch_args.split()
        self.log = (OUT / f"server-{'batch' if batching else 'nobatch'}.log").open("w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the server exited ({self.proc.returncode}); see {self.log.name}"
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError("the server was not ready in time")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def batch_figures(text: str) -> tuple[float, float, float, float]:
    """Sums and counts of the batch-size histograms in a /metrics scrape."""
    vals = {}
    for line in text.splitlines():
        for name in (
            "twostage_rerank_batch_pairs_sum",
            "twostage_rerank_batch_pairs_count",
            "twostage_rerank_batch_requests_sum",
            "twostage_rerank_batch_requests_count",
        ):
            if line.startswith(name + " "):
                vals[name] = float(line.split()[-1])
    get = vals.get
    return (
        get("twostage_rerank_batch_pairs_sum", 0.0),
        get("twostage_rerank_batch_pairs_count", 0.0),
        get("twostage_rerank_batch_requests_sum", 0.0),
        get("twostage_rerank_batch_requests_count", 0.0),
    )


# ---- the load ------------------------------------------------------------------------------


async def run_cell(
    srv: Server, cell: Cell, qs: list[str], args: Any, swap_to: tuple[str, str] | None
) -> None:
    """Drive ``cell.clients`` concurrent clients for the cell's time (and swap, if asked)."""
    duration = args.swap_duration if swap_to is not None else args.duration
    limits = httpx.Limits(max_connections=cell.clients, max_keepalive_connections=cell.clients)
    async with httpx.AsyncClient(base_url=srv.url, timeout=60, limits=limits) as client:
        before = batch_figures((await client.get("/metrics")).text)
        stop_at = time.perf_counter() + duration
        budget = [args.max_requests]
        counter = [0]

        async def worker(n: int) -> None:
            while time.perf_counter() < stop_at and budget[0] > 0:
                budget[0] -= 1
                q = qs[counter[0] % len(qs)]
                counter[0] += 1
                body = {"query": q, "k": 10, "rerank": cell.rerank}
                t0 = time.perf_counter()
                try:
                    r = await client.post("/search", json=body)
                except httpx.HTTPError:
                    cell.errors += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                if r.status_code != 200:
                    cell.errors += 1
                    continue
                data = r.json()
                cell.requests += 1
                cell.latencies_ms.append(ms)
                cell.degraded += bool(data["degraded"])
                versions = {h["reranker_version"] for h in data["hits"] if h["reranked"]}
                cell.torn += len(versions) > 1 or (
                    bool(versions) and versions != {data["reranker_version"]}
                )

        async def swapper() -> None:
            assert swap_to is not None
            i = 0
            headers = {"Authorization": f"Bearer {srv.token}"}
            # Its own connection: the clients keep every pooled one busy.
            async with httpx.AsyncClient(base_url=srv.url, timeout=60, headers=headers) as admin:
                while time.perf_counter() + args.swap_every < stop_at:
                    await asyncio.sleep(args.swap_every)
                    name = swap_to[i % 2]
                    i += 1
                    t0 = time.perf_counter()
                    r = await admin.put("/models/reranker", json={"path": name})
                    cell.swap_ms.append((time.perf_counter() - t0) * 1000.0)
                    if r.status_code == 200:
                        cell.swaps_ok += 1
                    else:
                        cell.swaps_failed += 1

        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker(n)) for n in range(cell.clients)]
        if swap_to is not None:
            tasks.append(asyncio.create_task(swapper()))
        await asyncio.gather(*tasks)
        cell.seconds = time.perf_counter() - t0
        after = batch_figures((await client.get("/metrics")).text)
        dp, dc, dr, drc = (a - b for a, b in zip(after, before, strict=True))
        if dc:
            cell.batch_pairs_mean = dp / dc
        if drc:
            cell.batch_requests_mean = dr / drc


async def warm(srv: Server, qs: list[str]) -> None:
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        for q in qs[:5]:
            await c.post("/search", json={"query": q, "k": 10})


def table(cells: list[Cell]) -> str:
    rows = [
        "| batching | rerank | clients | swapping | requests | req/s | p50 ms | p99 ms | errors "
        "| degraded | pairs/run | requests/run |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        swap = f"{c.swaps_ok} swaps" + (f", {c.swaps_failed} refused" if c.swaps_failed else "")
        if c.swap_ms:
            swap += f" ({statistics.fmean(c.swap_ms) / 1000:.1f} s each)"
        rows.append(
            f"| {'on' if c.batching else 'off'} | {'on' if c.rerank else 'off'} | {c.clients} "
            f"| {swap if c.swapping else '-'} | {c.requests} | {c.rps:.1f} | {c.pct(0.5):.1f} "
            f"| {c.pct(0.99):.1f} | {c.errors + c.torn} "
            f"| {100.0 * c.degraded / max(c.requests, 1):.0f}% "
            f"| {c.batch_pairs_mean or 0:.1f} | {c.batch_requests_mean or 0:.2f} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--collection", default=None, help="collection folder (default: SciFact)")
    ap.add_argument("--clients", default="1,4,16,64", help="concurrency levels")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per cell")
    ap.add_argument("--max-requests", type=int, default=5000, help="requests per cell at most")
    ap.add_argument("--depth", type=int, default=50, help="candidates reranked per search")
    ap.add_argument("--budget-ms", type=float, default=1000.0, help="each search's deadline")
    ap.add_argument("--workers", type=int, default=4, help="server search threads")
    ap.add_argument("--swap-every", type=float, default=2.0, help="seconds between swaps")
    ap.add_argument("--swap-duration", type=float, default=12.0, help="seconds per swap cell")
    ap.add_argument("--swap-clients", default="4,16", help="concurrency levels while swapping")
    ap.add_argument(
        "--batch-args",
        default="",
        help="extra serve options for the batching server, e.g. '--batch-max-pairs 16'",
    )
    ap.add_argument("--no-swap", action="store_true", help="skip the swapping cells")
    ap.add_argument("--modes", default="on,off", help="batching modes to run: on,off")
    ap.add_argument("--quick", action="store_true", help="3 s cells (a smoke run)")
    ap.add_argument("--out", default=str(OUT / "load.md"))
    args = ap.parse_args()
    if args.quick:
        args.duration = min(args.duration, 3.0)
        args.swap_duration = min(args.swap_duration, 6.0)
    OUT.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.clients.split(",")]
    swap_levels = [] if args.no_swap else [int(x) for x in args.swap_clients.split(",") if x]
    col = collection(args.collection, args.quick)
    root = OUT / "models"
    names = models(root)
    qs = queries()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = dt.datetime.now(dt.timezone.utc)
    cells: list[Cell] = []
    for batching in [m == "on" for m in args.modes.split(",")]:
        srv = Server(col, root, names[0], batching, args)
        try:
            srv.wait_ready()
            asyncio.run(warm(srv, qs))
            for rerank in (True, False):
                for n in levels:
                    cell = Cell(batching=batching, rerank=rerank, clients=n)
                    asyncio.run(run_cell(srv, cell, qs, args, None))
                    cells.append(cell)
                    print(table([cell]).splitlines()[-1], flush=True)
            for n in swap_levels:
                cell = Cell(batching=batching, rerank=True, clients=n, swapping=True)
                asyncio.run(run_cell(srv, cell, qs, args, names))
                cells.append(cell)
                print(table([cell]).splitlines()[-1], flush=True)
        finally:
            srv.stop()
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cmd = "python benches/load.py " + " ".join(sys.argv[1:])
    docs = json.loads((col / "manifest.json").read_text())["documents"]
    text = (
        f"# Load: twostage serve on loopback ({started:%Y-%m-%d %H:%M} UTC)\n\n"
        f"Command: `{cmd}`  \n"
        f"Collection: {col} ({docs} documents); "
        f"{len(qs)} queries in turn; k=10, depth={args.depth}, budget {args.budget_ms:.0f} ms; "
        f"reranker 2x128 BERT (random weights, int8); caches off; {args.workers} search threads; "
        f"{args.duration:.0f} s or {args.max_requests} requests per cell "
        f"({args.swap_duration:.0f} s with a swap every {args.swap_every:.1f} s).  \n"
        f"Load average before / after: {load_before} / {load_after} (nproc {os.cpu_count()}).  \n"
        "errors = non-200 answers + torn answers (hits of more than one model version); "
        "degraded = answers that hit the budget and kept first-stage order for the rest; "
        "pairs/run and requests/run: reranker batch sizes from the server's /metrics.\n\n"
        + table(cells)
        + "\n"
    )
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(
        json.dumps(
            [
                {
                    **{k: v for k, v in asdict(c).items() if k != "latencies_ms"},
                    "rps": c.rps,
                    "p50_ms": c.pct(0.5),
                    "p99_ms": c.pct(0.99),
                    "mean_ms": statistics.fmean(c.latencies_ms) if c.latencies_ms else None,
                }
                for c in cells
            ],
            indent=1,
        )
    )
    print(text)
    bad = sum(c.errors + c.torn for c in cells)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
