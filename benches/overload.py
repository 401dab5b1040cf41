"""Overload test of ``twostage serve`` on loopback: admitted latency and what is shed.

    .venv/bin/python benches/overload.py --duration 20
    .venv/bin/python benches/overload.py --collection benches/out/overload/scifact --quick

Starts the real server process on 127.0.0.1 (``benches/load.py``'s ``Server``: caches off,
a 2-layer 128-wide random cross-encoder, int8) with its overload protection at the
defaults (``max_pending_searches`` = workers x 4, deadline shedding, anonymous caps), then
drives ``/search`` with normal searches (the server's default depth and 150 ms budget) from
1, 8 and 64 concurrent clients, and then 8 normal clients beside 8 abusive ones that send
``depth=1000, budget_ms=60000`` without the token (refused: 422) and beside 8 that ask for
the most the caps allow without the token (``depth=100, budget_ms=1000``: served).

A client that gets 503 or 429 waits the ``Retry-After`` (or ``--backoff-ms``, for clients
that retry sooner) and sends again. Latency figures are of admitted (200) answers only, as
the client sees them; 503s are split by reason from the server's ``twostage_shed_total``
(queue_full: over the admission bound; deadline: the budget passed while the search waited
for a thread). The client shares the machine with the server: figures are for the whole
box, client included.

The clients are lean keep-alive HTTP/1.1 connections on asyncio streams (``--client raw``):
64 httpx ``AsyncClient`` connections in one process cost seconds per request on 2 cores
(``--client httpx`` shows it: the server's own histogram says its answers took < 0.5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from twostage.machine import machine_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
import load  # benches/load.py: collection, models, queries, the server process

OUT = load.ROOT / "benches" / "out" / "overload"


class Conn:
    """One keep-alive HTTP/1.1 connection to the server (JSON bodies, Content-Length)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._r: asyncio.StreamReader | None = None
        self._w: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        """(status, headers (lower-case names), body)."""
        if self._w is None:
            self._r, self._w = await asyncio.open_connection(self.host, self.port)
        assert self._r is not None
        data = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n"
        )
        try:
            self._w.write(head.encode() + data)
            await self._w.drain()
            raw = await self._r.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name:
                    headers[name.strip().lower()] = value.strip()
            payload = await self._r.readexactly(int(headers.get("content-length", "0")))
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            await self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return int(lines[0].split()[1]), headers, payload

    async def close(self) -> None:
        if self._w is not None:
            self._w.close()
            with contextlib.suppress(OSError):
                await self._w.wait_closed()
        self._r = self._w = None


@dataclass
class Group:
    """Clients of one kind in a cell, and what they got."""

    name: str
    clients: int
    body: Callable[[str], dict[str, Any]]
    sent: int = 0
    ok_ms: list[float] = field(default_factory=list, repr=False)
    degraded: int = 0
    s503: int = 0
    s429: int = 0
    s422: int = 0
    errors: int = 0
    seconds: float = 0.0

    def pct(self, q: float) -> float:
        if not self.ok_ms:
            return float("nan")
        xs = sorted(self.ok_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))]

    def row(self) -> dict[str, Any]:
        return {
            "group": self.name,
            "clients": self.clients,
            "sent": self.sent,
            "admitted": len(self.ok_ms),
            "admitted_per_s": len(self.ok_ms) / self.seconds if self.seconds else 0.0,
            "p50_ms": self.pct(0.5),
            "p99_ms": self.pct(0.99),
            "max_ms": max(self.ok_ms, default=float("nan")),
            "degraded": self.degraded,
            "503": self.s503,
            "429": self.s429,
            "422": self.s422,
            "errors": self.errors,
        }


@dataclass
class Cell:
    name: str
    groups: list[Group]
    shed: dict[str, float] = field(default_factory=dict)


def normal(q: str) -> dict[str, Any]:
    return {"query": q, "k": 10}


def abusive(q: str) -> dict[str, Any]:
    return {"query": q, "k": 10, "depth": 1000, "budget_ms": 60000}


def at_caps(q: str) -> dict[str, Any]:
    return {"query": q, "k": 10, "depth": 100, "budget_ms": 1000}


def shed_counts(text: str) -> dict[str, float]:
    """``twostage_shed_total`` by reason (searches) from a /metrics scrape."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('twostage_shed_total{kind="search"'):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.split()[-1])
    return out


async def run_cell(srv: load.Server, cell: Cell, qs: list[str], args: argparse.Namespace) -> None:
    total = sum(g.clients for g in cell.groups)
    limits = httpx.Limits(max_connections=total + 1, max_keepalive_connections=total + 1)
    async with httpx.AsyncClient(base_url=srv.url, timeout=120, limits=limits) as client:
        before = shed_counts((await client.get("/metrics")).text)
        stop_at = time.perf_counter() + args.duration
        counter = [0]

        async def post(
            conn: Conn | None, body: dict[str, Any]
        ) -> tuple[int, dict[str, str], bytes]:
            if conn is None:
                r = await client.post("/search", json=body)
                return r.status_code, dict(r.headers), r.content
            return await conn.post("/search", body)

        async def worker(g: Group) -> None:
            conn = Conn(load.HOST, srv.port) if args.client == "raw" else None
            while time.perf_counter() < stop_at:
                q = qs[counter[0] % len(qs)]
                counter[0] += 1
                g.sent += 1
                t0 = time.perf_counter()
                try:
                    status, headers, payload = await post(conn, g.body(q))
                except (httpx.HTTPError, OSError, asyncio.IncompleteReadError):
                    g.errors += 1
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                if status == 200:
                    g.ok_ms.append(ms)
                    g.degraded += bool(json.loads(payload)["degraded"])
                elif status in (503, 429):
                    if status == 503:
                        g.s503 += 1
                    else:
                        g.s429 += 1
                    wait = float(headers.get("retry-after", "1"))
                    if args.backoff_ms is not None:
                        wait = min(wait, args.backoff_ms / 1000.0)
                    await asyncio.sleep(wait)
                elif status == 422:
                    g.s422 += 1
                    # An abuser that insists, at the pace of the others.
                    await asyncio.sleep((args.backoff_ms or 100.0) / 1000.0)
                else:
                    g.errors += 1
            if conn is not None:
                await conn.close()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(g) for g in cell.groups for _ in range(g.clients)))
        took = time.perf_counter() - t0
        for g in cell.groups:
            g.seconds = took
        after = shed_counts((await client.get("/metrics")).text)
        cell.shed = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in set(after) | set(before)}


def table(cells: list[Cell]) -> str:
    rows = [
        "| cell | group | clients | sent | admitted (200) | admitted/s | p50 ms | p99 ms | max ms "
        "| degraded | 503 | 429 | 422 | errors | 503 reasons (cell) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for c in cells:
        reasons = ", ".join(f"{k} {v:.0f}" for k, v in sorted(c.shed.items()) if v) or "-"
        for g in c.groups:
            r = g.row()
            rows.append(
                f"| {c.name} | {r['group']} | {r['clients']} | {r['sent']} | {r['admitted']} "
                f"| {r['admitted_per_s']:.1f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} "
                f"| {r['max_ms']:.0f} | {100.0 * r['degraded'] / max(r['admitted'], 1):.0f}% "
                f"| {r['503']} | {r['429']} | {r['422']} | {r['errors']} | {reasons} |"
            )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--collection", default=None, help="collection folder (default: SciFact)")
    ap.add_argument("--clients", default="1,8,64", help="concurrency levels of normal searches")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per cell")
    ap.add_argument("--depth", type=int, default=50, help="the server's default depth")
    ap.add_argument("--budget-ms", type=float, default=150.0, help="the server's default budget")
    ap.add_argument("--workers", type=int, default=4, help="server search threads")
    ap.add_argument(
        "--backoff-ms",
        type=float,
        default=None,
        help="wait this long after a 503/429 (at most Retry-After; default: Retry-After)",
    )
    ap.add_argument("--client", choices=["raw", "httpx"], default="raw", help="the HTTP client")
    ap.add_argument("--abusers", type=int, default=8, help="abusive clients in the abuse cells")
    ap.add_argument("--beside", type=int, default=8, help="normal clients in the abuse cells")
    ap.add_argument("--quick", action="store_true", help="5 s cells (a smoke run)")
    ap.add_argument("--out", default=str(OUT / "overload.md"))
    args = ap.parse_args()
    args.batch_args = ""  # load.Server's: the server's own batching defaults
    if args.quick:
        args.duration = min(args.duration, 5.0)
    OUT.mkdir(parents=True, exist_ok=True)
    load.OUT.mkdir(parents=True, exist_ok=True)
    col = load.collection(args.collection, args.quick)
    root = load.OUT / "models"
    names = load.models(root)
    qs = load.queries()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    started = dt.datetime.now(dt.timezone.utc)
    cells: list[Cell] = [
        Cell(f"{n} normal", [Group("normal", n, normal)]) for n in map(int, args.clients.split(","))
    ]
    cells.append(
        Cell(
            "abuse",
            [Group("normal", args.beside, normal), Group("abusive", args.abusers, abusive)],
        )
    )
    cells.append(
        Cell(
            "at the caps",
            [Group("normal", args.beside, normal), Group("at caps", args.abusers, at_caps)],
        )
    )
    srv = load.Server(col, root, names[0], True, args)
    try:
        srv.wait_ready()
        asyncio.run(load.warm(srv, qs))
        for cell in cells:
            asyncio.run(run_cell(srv, cell, qs, args))
            print("\n".join(table([cell]).splitlines()[2:]), flush=True)
    finally:
        srv.stop()
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    cmd = "python benches/overload.py " + " ".join(sys.argv[1:])
    backoff = (
        "wait Retry-After"
        if args.backoff_ms is None
        else f"wait {args.backoff_ms:.0f} ms (clients that retry sooner than Retry-After)"
    )
    docs = json.loads((col / "manifest.json").read_text())["documents"]
    text = (
        f"# Overload: twostage serve on loopback ({started:%Y-%m-%d %H:%M} UTC)\n\n"
        f"Command: `{cmd}`  \n"
        f"Machine: nproc {os.cpu_count()}, {machine_info()['cpu']}; load average before / after: "
        f"{load_before} / {load_after}.  \n"
        f"Collection: {col} ({docs} documents); {len(qs)} queries in turn; k=10; server "
        f"defaults depth {args.depth}, budget {args.budget_ms:.0f} ms; {args.workers} search "
        f"threads (admission bound {args.workers * 4}); reranker 2x128 BERT (random weights, "
        f"int8); caches off; {args.duration:.0f} s per cell; {args.client} client; after a "
        f"503: {backoff}. normal: the server's defaults, no token; abusive: depth 1000, "
        "budget 60000 ms, no token; at caps: depth 100, budget 1000 ms, no token. Latencies "
        "of admitted (200) answers.\n\n" + table(cells) + "\n"
    )
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(
        json.dumps(
            [
                {"cell": c.name, "shed": c.shed, "groups": [g.row() for g in c.groups]}
                for c in cells
            ],
            indent=1,
        )
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
