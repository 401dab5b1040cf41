"""Damage a collection's files in seeded, random ways; count what is detected.

    .venv/bin/python benches/corrupt.py --n 10 --seed 1      # ~3 minutes on 2 cores

A small real collection (the Python documentation's passages) is built once; each trial
copies it, damages one file one way, then does what a user does: open it, search, read
every document, run ``check()``. Outcomes:

* ``detected``: a twostage error (``CorruptStore``, ``CorruptIndex``, ...) whose message
  names the damaged file, or an open that rebuilt derived data and said so
  (``recovery``), after which every document reads back right and the check is clean;
* ``harmless``: nothing reported and nothing wrong (every document reads back with its
  text, the index holds every stored vector as stored, BM25 finds what it found before the
  damage, the check is clean): the damage hit unused bytes;
* ``silent``: nothing reported, yet something is wrong: the outcome this counts against;
* ``crash``: an exception that is not twostage's (a raw ``sqlite3`` or ``OSError``).

Prints a table per kind of damage and writes ``benches/out/corrupt/corrupt-<date>.json``;
exits 1 on any silent or crash outcome.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benches" / "out" / "corrupt"


def _rand_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.randrange(256) for _ in range(n))


def overwrite(name: str, span: int) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        path = folder / name
        data = bytearray(path.read_bytes())
        at = rng.randrange(0, max(1, len(data) - span))
        data[at : at + span] = _rand_bytes(rng, min(span, len(data) - at))
        path.write_bytes(bytes(data))

    return damage


def truncate(name: str) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        path = folder / name
        data = path.read_bytes()
        path.write_bytes(data[: rng.randrange(0, len(data))])

    return damage


def bitflip(name: str) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        path = folder / name
        data = bytearray(path.read_bytes())
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))

    return damage


def replace_by_dir(name: str) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        (folder / name).unlink()
        (folder / name).mkdir()

    return damage


def remove(name: str) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        p = folder / name
        shutil.rmtree(p) if p.is_dir() else p.unlink()

    return damage


def manifest_field(rng_values: list[tuple[str, Any]]) -> Callable[[Path, random.Random], None]:
    def damage(folder: Path, rng: random.Random) -> None:
        path = folder / "manifest.json"
        m = json.loads(path.read_text())
        key, value = rng.choice(rng_values)
        if value is KeyError:
            m.pop(key, None)
        else:
            m[key] = value
        path.write_text(json.dumps(m))

    return damage


def lexical_segment(folder: Path, rng: random.Random) -> None:
    segs = sorted(
        p for p in (folder / "lexical").iterdir() if p.suffix in (".idx", ".term", ".pos", ".store")
    )
    overwrite(str(Path("lexical") / rng.choice(segs).name), 64)(folder, rng)


KINDS: dict[str, Callable[[Path, random.Random], None]] = {
    "store: 4 KiB of garbage": overwrite("store.sqlite", 4096),
    "store: 16 bytes of garbage": overwrite("store.sqlite", 16),
    "store: truncated": truncate("store.sqlite"),
    "store: a bit flipped": bitflip("store.sqlite"),
    "store: a directory": replace_by_dir("store.sqlite"),
    "index: 4 KiB of garbage": overwrite("index.tsidx", 4096),
    "index: truncated": truncate("index.tsidx"),
    "index: a bit flipped": bitflip("index.tsidx"),
    "index: missing": remove("index.tsidx"),
    "index: a directory": replace_by_dir("index.tsidx"),
    "manifest: garbage": overwrite("manifest.json", 32),
    "manifest: bad values": manifest_field(
        [("seq", "abc"), ("documents", -5), ("index", {"seq": 1}), ("dim", 0), ("metric", KeyError)]
    ),
    "lexical: state garbage": overwrite("lexical/state.json", 8),
    "lexical: a segment file damaged": lexical_segment,
    "lexical: missing": remove("lexical"),
}


def trial(
    template: Path,
    work: Path,
    kind: str,
    rng: random.Random,
    truth: dict[str, str],
    bm25_found: dict[str, bool],
) -> dict[str, Any]:
    from twostage import errors
    from twostage.collection import Collection
    from twostage.engine import Engine

    folder = work / "c"
    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(template, folder)
    KINDS[kind](folder, rng)
    out: dict[str, Any] = {"kind": kind}
    try:
        with Collection.open(folder) as col:
            recovery = col.recovery
            wrong = []
            got = col.get(list(truth))
            wrong += [d.id for d in got if d.text != truth[d.id]]
            if len(col) != len(truth):
                wrong.append(f"{len(col)} documents, not {len(truth)}")
            # The index must hold every stored vector as stored (a rebuilt HNSW graph may
            # rank differently, which is not damage); BM25 must find what it found before.
            keys = col.store.keys_of(list(truth))
            karr = np.asarray([keys[i] for i in truth], dtype=np.uint64)
            if not np.array_equal(col.index.get(karr), col.store.embeddings(karr)):
                wrong.append("the index holds other vectors than the store")
            eng = Engine(col, reranker=None)
            for doc_id, found in bm25_found.items():
                hits = eng.search(truth[doc_id][:200], k=5, first_stage="bm25").hits
                if found and doc_id not in [h.id for h in hits]:
                    wrong.append(f"bm25 search misses {doc_id}")
            problems = col.check()
        if recovery is not None and not wrong and not problems:
            out["outcome"], out["said"] = "detected", recovery[:200]
        elif not wrong and not problems:
            out["outcome"] = "harmless"
        else:
            out["outcome"] = "silent"
            out["said"] = f"recovery={recovery!r}; wrong={wrong[:3]}; check={problems[:3]}"
    except errors.TwostageError as e:
        out["outcome"], out["said"] = "detected", f"{type(e).__name__}: {str(e)[:200]}"
    except FileNotFoundError as e:
        out["outcome"], out["said"] = "detected", f"FileNotFoundError: {str(e)[:200]}"
    except Exception as e:  # the outcome this bench looks for
        out["outcome"], out["said"] = "crash", f"{type(e).__name__}: {str(e)[:200]}"
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10, help="trials per kind of damage")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--docs", type=int, default=300)
    ap.add_argument("--json", default=None, help="write the report here too")
    args = ap.parse_args()
    import logging

    from twostage.collection import Collection
    from twostage.encoder import Encoder
    from twostage.stdlib_docs import stdlib_docs

    logging.getLogger("twostage").setLevel(logging.ERROR)  # recoveries are counted, not logged
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory(prefix="twostage-corrupt-") as tmp:
        work = Path(tmp)
        template = work / "template"
        docs = list(stdlib_docs(args.docs))
        with Collection.create(template, Encoder.load("minilm-l6")) as col:
            col.add(docs)
        truth = {d.id: d.text for d in docs}
        from twostage.engine import Engine

        with Collection.open(template, read_only=True) as col:
            eng = Engine(col, reranker=None)
            bm25_found = {
                i: i in [h.id for h in eng.search(truth[i][:200], k=5, first_stage="bm25").hits]
                for i in list(truth)[:: max(1, len(truth) // 20)]
            }
        for kind in KINDS:
            outs = [trial(template, work, kind, rng, truth, bm25_found) for _ in range(args.n)]
            rows.extend(outs)
            tally = {
                o: sum(1 for x in outs if x["outcome"] == o)
                for o in ("detected", "harmless", "silent", "crash")
            }
            print(f"{kind:<34} " + "  ".join(f"{k} {v}" for k, v in tally.items()), flush=True)
            for x in outs:
                if x["outcome"] in ("silent", "crash"):
                    print(f"    {x['outcome']}: {x['said']}")
    bad = [r for r in rows if r["outcome"] in ("silent", "crash")]
    total = {
        o: sum(1 for r in rows if r["outcome"] == o)
        for o in ("detected", "harmless", "silent", "crash")
    }
    print(f"\n{len(rows)} damaged copies: {total}")
    report = {
        "command": " ".join(["python benches/corrupt.py", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"nproc": os.cpu_count()},
        "totals": total,
        "trials": rows,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    path = Path(args.json) if args.json else OUT / f"corrupt-{dt.date.today()}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"report: {path}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
