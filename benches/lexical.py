"""The lexical first stage: twostage's tantivy BM25 against bm25s and SQLite FTS5, side by side.

Why this bench: the BM25 library was chosen by speed (and by whether it can be updated in
place). All three index SciFact (title + abstract) and answer its 300 test queries, top 100,
one at a time, the three interleaved per query (order rotated) so load drift hits each alike:

* **twostage** (``twostage.lexical.LexicalIndex``: tantivy, ``en_stem``, Lucene stop words,
  block-max WAND top-k; add/delete in place);
* **bm25s** (scipy sparse matrix of precomputed BM25 weights, PyStemmer English, its English
  stop words; static: any change means re-indexing);
* **SQLite FTS5** (``porter unicode61``, the same stop words as twostage, ``bm25()``; scores
  every matching row).

``--scale N`` also repeats the corpus N times (new ids, the same texts) to see how each query
cost grows with the corpus: at N copies every posting list is N times longer.
The qrels only hold for the unscaled corpus, so NDCG@10 and Recall@100 come from it.

    .venv/bin/pip install -r requirements-bench.txt
    .venv/bin/python benches/lexical.py --scale 20        # ~2 min; prints a Markdown table
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import re
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared"


def load(folder: Path) -> tuple[list[str], list[str], dict[str, str], dict[str, dict[str, int]]]:
    ids, texts = [], []
    with gzip.open(folder / "corpus.jsonl.gz", "rt") as f:
        for line in f:
            d = json.loads(line)
            ids.append(d["_id"])
            texts.append(f"{d.get('title', '')}\n\n{d['text']}")
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    queries = {}
    for line in (folder / "queries.jsonl").read_text().splitlines():
        q = json.loads(line)
        if q["_id"] in qrels:
            queries[q["_id"]] = q["text"]
    return ids, texts, queries, qrels


class Twostage:
    name = "twostage (tantivy)"

    def __init__(self, texts: list[str], tmp: Path) -> None:
        from twostage.lexical import LexicalIndex

        self.lex = LexicalIndex.create(tmp / "tantivy")
        step = 50_000
        for start in range(0, len(texts), step):
            part = texts[start : start + step]
            self.lex.upsert(range(start, start + len(part)), part, seq=start + len(part))

    def search(self, q: str, k: int) -> list[int]:
        return self.lex.search(q, k)[0].tolist()


class Bm25s:
    name = "bm25s"

    def __init__(self, texts: list[str], tmp: Path) -> None:
        import bm25s
        import Stemmer

        self.bm25s = bm25s
        self.stemmer = Stemmer.Stemmer("english")
        tok = bm25s.tokenize(texts, stopwords="en", stemmer=self.stemmer, show_progress=False)
        self.index = bm25s.BM25()
        self.index.index(tok, show_progress=False)

    def search(self, q: str, k: int) -> list[int]:
        tok = self.bm25s.tokenize([q], stopwords="en", stemmer=self.stemmer, show_progress=False)
        if not tok.vocab:
            return []
        docs, _ = self.index.retrieve(tok, k=k, show_progress=False)
        return [int(d) for d in docs[0]]


class Fts5:
    name = "SQLite FTS5"

    def __init__(self, texts: list[str], tmp: Path) -> None:
        from twostage.lexical import STOP_WORDS

        self.stop = STOP_WORDS
        self.conn = sqlite3.connect(tmp / "fts.sqlite")
        self.conn.execute("CREATE VIRTUAL TABLE f USING fts5(body, tokenize='porter unicode61')")
        with self.conn:
            self.conn.executemany(
                "INSERT INTO f(rowid, body) VALUES (?, ?)", ((i, t) for i, t in enumerate(texts))
            )

    def search(self, q: str, k: int) -> list[int]:
        terms = [w for w in re.findall(r"\w+", q.lower()) if w not in self.stop]
        if not terms:
            return []
        match = " OR ".join(f'"{w}"' for w in terms)
        rows = self.conn.execute(
            "SELECT rowid FROM f WHERE f MATCH ? ORDER BY bm25(f) LIMIT ?", (match, k)
        )
        return [int(r[0]) for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "scifact")
    ap.add_argument("--scale", type=int, default=20, help="also time at N copies (0: skip)")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--out", type=Path, default=Path("benches/out/lexical.json"))
    args = ap.parse_args()
    from twostage.metrics import aggregate, per_query

    ids, texts, queries, qrels = load(args.data)
    sizes = [1] + ([args.scale] if args.scale > 1 else [])
    results: dict[str, dict[str, dict[str, float]]] = {}
    for n in sizes:
        corpus = texts * n
        with tempfile.TemporaryDirectory() as tmp:
            systems = []
            for cls in (Twostage, Bm25s, Fts5):
                t0 = time.perf_counter()
                systems.append(cls(corpus, Path(tmp)))
                results.setdefault(cls.name, {})[f"index_s@{len(corpus)}"] = {
                    "v": time.perf_counter() - t0
                }
            runs: dict[str, dict[str, dict[str, float]]] = {s.name: {} for s in systems}
            lat: dict[str, list[float]] = {s.name: [] for s in systems}
            for s in systems:  # warm
                s.search("warm up the caches", args.k)
            for i, (qid, text) in enumerate(sorted(queries.items())):
                order = systems[i % 3 :] + systems[: i % 3]
                for s in order:
                    t0 = time.perf_counter()
                    got = s.search(text, args.k)
                    lat[s.name].append((time.perf_counter() - t0) * 1000)
                    if n == 1:
                        runs[s.name][qid] = {ids[d]: float(args.k - r) for r, d in enumerate(got)}
            for s in systems:
                a = np.asarray(lat[s.name])
                row = {"p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99))}
                if n == 1:
                    m = aggregate(per_query(qrels, runs[s.name], ("nDCG@10", "R@100")))
                    row["ndcg10"] = m["nDCG@10"]
                    row["r100"] = m["R@100"]
                results[s.name][f"docs={len(corpus)}"] = row
    machine = {
        "cpu": platform.processor(),
        "nproc": os.cpu_count(),
        "python": sys.version.split()[0],
        "date": time.strftime("%Y-%m-%d"),
        "load": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                machine["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    n0 = len(texts)
    head = "| library | NDCG@10 | R@100 | index s | p50 ms | p99 ms |"
    cols = [f"docs={n0}"] + ([f"docs={n0 * args.scale}"] if args.scale > 1 else [])
    if len(cols) > 1:
        head += f" index s x{args.scale} | p50 ms x{args.scale} | p99 ms x{args.scale} |"
    print(f"machine: {machine}")
    print(head)
    print("|" + " --- |" * (head.count("|") - 1))
    for name, r in results.items():
        base = r[cols[0]]
        cells = [
            name,
            f"{base['ndcg10']:.4f}",
            f"{base['r100']:.4f}",
            f"{r[f'index_s@{n0}']['v']:.2f}",
            f"{base['p50_ms']:.2f}",
            f"{base['p99_ms']:.2f}",
        ]
        if len(cols) > 1:
            big = r[cols[1]]
            cells += [
                f"{r[f'index_s@{n0 * args.scale}']['v']:.1f}",
                f"{big['p50_ms']:.2f}",
                f"{big['p99_ms']:.2f}",
            ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
