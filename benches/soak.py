"""A soak: mixed search / upsert / delete / swap traffic against the real server for a while;
the server's RSS and the searches' p50/p99 every interval, plotted.

    .venv/bin/python benches/soak.py --minutes 30             # RELIABILITY.md's run
    .venv/bin/python benches/soak.py --minutes 0.3 --interval 9 --small   # the CI's version

The collection is a copy of SciFact (5,183 abstracts) when ``../shared/data/scifact`` is
there, else 1,000 passages of the Python documentation (200 with ``--small``); the server
runs with its defaults (shipped reranker, hybrid first stage, depth and budget from the
model). Traffic, all at once: ``--clients`` search loops (SciFact's queries in turn, a
short pause between), one writer upserting 8 documents every second (new ids and
replacements), a delete every 3 s, a reranker swap (``PUT /models/reranker``, the shipped
model reloaded) every minute.
Every answer that is not 200 is an error (shed 429/503 answers are counted apart).

Prints one line per interval and writes ``benches/out/soak/soak-<date>.json`` and an SVG
plot (RSS and p99 against time) next to it; ``--svg`` puts the plot elsewhere.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from twostage.machine import machine_info

ROOT = Path(__file__).resolve().parents[1]
SCIFACT = ROOT.parent / "shared" / "data" / "scifact"
OUT = ROOT / "benches" / "out" / "soak"
HOST = "127.0.0.1"


def collection(work: Path, small: bool) -> tuple[Path, list[str]]:
    from twostage.collection import Collection
    from twostage.encoder import Encoder

    folder = work / "col"
    if (SCIFACT / "corpus.jsonl.gz").is_file() and not small:
        from twostage.beir import Dataset
        from twostage.evaluation import collection_for

        ds = Dataset.load(SCIFACT)
        with collection_for(ds) as built:  # the eval cache: built once per machine
            src = built.path
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("writer.lock"))
        return folder, list(ds.queries.values())
    from twostage.stdlib_docs import stdlib_docs

    with Collection.create(folder, Encoder.load("minilm-l6")) as col:
        col.add(list(stdlib_docs(200 if small else 1000)))
    return folder, ["read a gzip file", "parse json", "sort a list", "spawn a subprocess"]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


class Traffic:
    def __init__(self, url: str, token: str, queries: list[str]) -> None:
        self.url, self.queries = url, queries
        self.headers = {"authorization": f"Bearer {token}"}
        self.lock = threading.Lock()
        self.lat: list[float] = []
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()

    def count(self, what: str, status: int, body: str = "") -> None:
        with self.lock:
            key = f"{what} {status}"
            self.counts[key] = self.counts.get(key, 0) + 1
            if status not in (200, 429, 503) and len(self.errors) < 20:
                self.errors.append(f"{what} {status}: {body[:200]}")

    def take(self) -> tuple[list[float], dict[str, int]]:
        with self.lock:
            lat, counts = self.lat, self.counts
            self.lat, self.counts = [], {}
        return lat, counts

    def searcher(self, offset: int) -> None:
        i = offset
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self.stop.is_set():
                q = self.queries[i % len(self.queries)]
                i += 1
                t0 = time.perf_counter()
                try:
                    r = c.post("/search", json={"query": q})
                except httpx.TransportError as e:
                    self.count("search", 0, str(e))
                    continue
                ms = (time.perf_counter() - t0) * 1000.0
                if r.status_code == 200:
                    with self.lock:
                        self.lat.append(ms)
                self.count("search", r.status_code, r.text)
                self.stop.wait(0.05)

    def writer(self) -> None:
        n = 0
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=60) as c:
            while not self.stop.is_set():
                # A rolling window of 400 soak ids: new ones, replacements, deletes.
                docs = [
                    {
                        "id": f"soak-{(n * 8 + j) % 400}",
                        "title": f"Soak note {n}",
                        "text": f"Soak write {n}.{j}: a note on cell biology and protein folding.",
                        "metadata": {"n": n},
                    }
                    for j in range(8)
                ]
                try:
                    r = c.post("/documents", json={"documents": docs})
                    self.count("upsert", r.status_code, r.text)
                    if n % 3 == 2:
                        r = c.delete(f"/documents/soak-{(n * 8 - 3) % 400}")
                        # An id already deleted in an earlier lap answers 404: expected.
                        self.count("delete", 200 if r.status_code == 404 else r.status_code, r.text)
                except httpx.TransportError as e:
                    self.count("write", 0, str(e))
                n += 1
                self.stop.wait(1.0)

    def swapper(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=120) as c:
            while not self.stop.wait(60.0):
                try:
                    r = c.put("/models/reranker", json={"name": "twostage-rerank"})
                    self.count("swap", r.status_code, r.text)
                except httpx.TransportError as e:
                    self.count("swap", 0, str(e))


def svg(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Two stacked line charts: RSS (MiB) and search p50/p99 (ms) against minutes."""
    w, h, pad = 720, 200, 48
    xs = [r["t_min"] for r in rows]
    xmax = max(xs) or 1.0

    def chart(y0: int, series: list[tuple[str, list[float], str]], unit: str) -> str:
        vals = [v for _, s, _ in series for v in s if v == v]
        top = max(vals) * 1.15 if vals else 1.0
        out = [f'<text x="{pad}" y="{y0 - 8}" font-size="13">{unit}</text>']
        out.append(
            f'<rect x="{pad}" y="{y0}" width="{w - 2 * pad}" height="{h - 40}" '
            'fill="none" stroke="#999"/>'
        )
        for frac in (0, 0.5, 1):
            y = y0 + (h - 40) * (1 - frac)
            out.append(
                f'<text x="{pad - 6}" y="{y + 4:.0f}" font-size="10" text-anchor="end">'
                f"{top * frac:.0f}</text>"
            )
            x = pad + (w - 2 * pad) * frac
            out.append(
                f'<text x="{x:.0f}" y="{y0 + h - 26}" font-size="10" text-anchor="middle">'
                f"{xmax * frac:.1f} min</text>"
            )
        for name, s, color in series:
            pts = " ".join(
                f"{pad + (w - 2 * pad) * x / xmax:.1f},{y0 + (h - 40) * (1 - v / top):.1f}"
                for x, v in zip(xs, s, strict=True)
                if v == v
            )
            out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2"/>')
            n = sum(1 for line in out if "<polyline" in line)
            out.append(
                f'<text x="{w - pad + 4}" y="{y0 + 14 * n}" font-size="11" '
                f'fill="{color}">{name}</text>'
            )
        return "\n".join(out)

    body = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 40}" height="{2 * h + 60}">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{pad}" y="20" font-size="14">{title}</text>',
        chart(50, [("RSS", [r["rss_mb"] for r in rows], "#1f77b4")], "server RSS (MiB)"),
        chart(
            50 + h + 10,
            [
                ("p99", [r["p99_ms"] for r in rows], "#d62728"),
                ("p50", [r["p50_ms"] for r in rows], "#2ca02c"),
            ],
            "search latency (ms) per interval; x: minutes",
        ),
        "</svg>",
    ]
    path.write_text("\n".join(body))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--interval", type=float, default=60.0, help="seconds per reported row")
    ap.add_argument("--clients", type=int, default=2, help="search loops")
    ap.add_argument(
        "--small", action="store_true", help="200 stdlib passages, not SciFact (the CI's run)"
    )
    ap.add_argument("--json", default=None)
    ap.add_argument("--svg", default=None)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="twostage-soak-") as tmp:
        work = Path(tmp)
        folder, queries = collection(work, args.small)
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = int(s.getsockname()[1])
        token = secrets.token_urlsafe(16)
        log = (work / "server.log").open("w")
        cmd = [sys.executable, "-m", "twostage", "serve", str(folder), "--host", HOST]
        cmd += ["--port", str(port), "--log-level", "warning"]
        proc = subprocess.Popen(
            cmd, env=dict(os.environ, TWOSTAGE_TOKEN=token), stdout=log, stderr=subprocess.STDOUT
        )
        url = f"http://{HOST}:{port}"
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.close()
                print((work / "server.log").read_text()[-3000:], file=sys.stderr)
                return 1
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        traffic = Traffic(url, token, queries)
        threads = [
            threading.Thread(target=traffic.searcher, args=(i * 97,)) for i in range(args.clients)
        ]
        threads += [
            threading.Thread(target=traffic.writer),
            threading.Thread(target=traffic.swapper),
        ]
        for th in threads:
            th.start()
        rows: list[dict[str, Any]] = []
        t_start = time.monotonic()
        end = t_start + args.minutes * 60.0
        print(f"{'min':>5} {'rss MiB':>8} {'searches':>9} {'p50':>7} {'p99':>7} {'errors':>7}")
        try:
            while time.monotonic() < end:
                time.sleep(min(args.interval, max(0.0, end - time.monotonic())))
                lat, counts = traffic.take()
                errors = sum(
                    n for k, n in counts.items() if not k.endswith((" 200", " 429", " 503"))
                )
                shed = sum(n for k, n in counts.items() if k.endswith((" 429", " 503")))
                row = {
                    "t_min": round((time.monotonic() - t_start) / 60.0, 2),
                    "rss_mb": round(rss_mb(proc.pid), 1),
                    "searches": len(lat),
                    "p50_ms": round(statistics.median(lat), 1) if lat else float("nan"),
                    "p99_ms": round(pct(lat, 0.99), 1),
                    "errors": errors,
                    "shed": shed,
                    "counts": counts,
                }
                rows.append(row)
                print(
                    f"{row['t_min']:>5} {row['rss_mb']:>8} {row['searches']:>9} "
                    f"{row['p50_ms']:>7} {row['p99_ms']:>7} {errors:>7}",
                    flush=True,
                )
        finally:
            traffic.stop.set()
            for th in threads:
                th.join()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        # A 500 says "the server log has the details": keep them, the folder goes away.
        server_errors = [
            block
            for block in (work / "server.log").read_text(errors="replace").split("\nERROR")
            if "Traceback" in block
        ]
        from twostage.collection import Collection

        with Collection.open(folder, read_only=True) as col:
            problems = col.check()
    first, last = rows[0]["rss_mb"], rows[-1]["rss_mb"]
    half = rows[len(rows) // 2]["rss_mb"]
    report = {
        "command": " ".join(["python benches/soak.py", *(sys.argv[1:] if argv is None else argv)]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "rows": rows,
        "errors": sum(r["errors"] for r in rows),
        "error_samples": traffic.errors,
        "server_tracebacks": [b[-4000:] for b in server_errors[:5]],
        "rss_first_mb": first,
        "rss_half_mb": half,
        "rss_last_mb": last,
        "check": problems,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    path = Path(args.json) if args.json else OUT / f"soak-{stamp}.json"
    path.write_text(json.dumps(report, indent=2))
    plot = Path(args.svg) if args.svg else path.with_suffix(".svg")
    svg(rows, plot, f"twostage soak {stamp}: {machine_info()['cpu']}, {os.cpu_count()} cores")
    print(
        f"errors {report['errors']}, RSS {first} -> {half} -> {last} MiB, check {problems or 'ok'}"
    )
    print(f"report: {path}  plot: {plot}")
    for block in report["server_tracebacks"]:
        print("server log:", block, sep="\n", file=sys.stderr)
    return 1 if report["errors"] or problems else 0


if __name__ == "__main__":
    sys.exit(main())
