"""The largest real corpus this machine has: every passage of every shared collection and
training set, de-duplicated by text, as one BEIR-style ``corpus.jsonl`` for ``twostage index
build`` (issue 16's "real text at scale").

Sources: ``../shared/data/*/corpus.jsonl[.gz]`` (SciFact, Cranfield, CISI, CACM, MED, ADI),
``../shared/train/*/corpus.jsonl[.gz]`` (MedQuAD, NQ/QED, PubMedQA, XQuAD-en) and the passages
of the judged-pair sets (SelQA, WikiQA, TrecQA, SemEval-2016 CQA, MEDIQA, LiveQA-med). Each
line keeps where it came from (``metadata.source``); ids are ``<set>:<id>`` (pair sets: their
passage id). The output is for a local benchmark only: several of these sets may not be
redistributed (their PROVENANCE.md), so it is written outside the repository and never shipped.

    .venv/bin/python benches/real_corpus.py --out /tmp/real/corpus.jsonl
    .venv/bin/twostage index build --corpus /tmp/real/corpus.jsonl --out /tmp/real/col
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

SHARED = Path(__file__).resolve().parents[2] / "shared"


def _open(path: Path) -> IO[str]:
    return gzip.open(path, "rt") if path.suffix == ".gz" else path.open()


def passages(shared: Path) -> Iterator[dict[str, Any]]:
    """Every passage, in a fixed order (sorted paths, file order), before de-duplication."""
    corpora = sorted(shared.glob("data/*/corpus.jsonl*")) + sorted(
        shared.glob("train/*/corpus.jsonl*")
    )
    for path in corpora:
        name = path.parent.name
        with _open(path) as f:
            for line in f:
                d = json.loads(line)
                text = " ".join(x for x in (d.get("title"), d.get("text")) if x).strip()
                yield {"_id": f"{name}:{d['_id']}", "text": text, "source": name}
    for path in sorted(shared.glob("train/*/*.jsonl*")):
        if path.name.startswith(("corpus.", "queries.")) or path.parent.name == "qrels":
            continue
        name = f"{path.parent.name}/{path.name.split('.')[0]}"
        with _open(path) as f:
            for i, line in enumerate(f):
                d = json.loads(line)
                text = (d.get("passage") or d.get("answer") or "").strip()
                if text:
                    yield {"_id": f"{name}:{d.get('pid', i)}", "text": text, "source": name}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    seen_text: set[str] = set()
    seen_id: set[str] = set()
    total = kept = chars = 0
    by_source: dict[str, int] = {}
    with args.out.open("w") as out:
        for p in passages(args.shared):
            total += 1
            key = " ".join(p["text"].split()).lower()
            if not key or key in seen_text or p["_id"] in seen_id:
                continue
            seen_text.add(key)
            seen_id.add(p["_id"])
            kept += 1
            chars += len(p["text"])
            by_source[p["source"]] = by_source.get(p["source"], 0) + 1
            line = {"_id": p["_id"], "text": p["text"], "metadata": {"source": p["source"]}}
            out.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"{kept} passages kept of {total} ({total - kept} duplicates), {chars / kept:.0f} chars")
    for name, n in sorted(by_source.items(), key=lambda x: -x[1]):
        print(f"  {name}: {n}")


if __name__ == "__main__":
    main()
