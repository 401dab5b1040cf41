"""Loaders for the supervised sets training uses: BEIR folders and judged-pairs files.

Two layouts (see ``shared/train/PROVENANCE.md``):

* **BEIR**: ``corpus.jsonl[.gz]``, ``queries.jsonl``, ``qrels/<split>.tsv`` (positives only);
  negatives must be mined from the corpus (:mod:`twostage.train.mine`).
* **pairs**: ``<split>.jsonl[.gz]``, one judged candidate per line
  (``qid, query, pid, passage, label``); each query's own candidates are its corpus, and
  the ones judged 0 are trustworthy negatives.

Every known set carries its licence and whether a model trained on it may be redistributed
(:data:`SETS`); :func:`load_set` refuses a test split, so nothing here trains on one.

No PyTorch here: mining and evaluation run without it.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The shared folder next to the repository (``../shared``); ``TWOSTAGE_SHARED`` overrides.
SHARED = Path(os.environ.get("TWOSTAGE_SHARED", Path(__file__).resolve().parents[4] / "shared"))


@dataclass
class Judged:
    """One training set in memory: texts, positives and (for pairs sets) judged negatives.

    ``candidates`` is set for pairs sets: a query's own judged candidate list, which is where
    its negatives come from. BEIR sets leave it empty and mine from ``corpus``.
    """

    name: str
    licence: str
    redistributable: bool
    queries: dict[str, str]
    corpus: dict[str, str]
    positives: dict[str, set[str]]
    negatives: dict[str, set[str]] = field(default_factory=dict)
    candidates: dict[str, list[str]] = field(default_factory=dict)

    @property
    def layout(self) -> str:
        return "pairs" if self.candidates else "beir"

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "layout": self.layout,
            "queries": len(self.positives),
            "positives": sum(len(p) for p in self.positives.values()),
            "documents": len(self.corpus),
            "licence": self.licence,
            "redistributable": self.redistributable,
        }


def _open(path: Path) -> Any:
    if not path.is_file() and Path(str(path) + ".gz").is_file():
        path = Path(str(path) + ".gz")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a ``.jsonl`` or ``.jsonl.gz`` file (either name works)."""
    with _open(path) as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def _doc_text(row: dict[str, Any]) -> str:
    title = (row.get("title") or "").strip()
    text = (row.get("text") or "").strip()
    return f"{title}. {text}" if title and text else title or text


def load_beir(
    folder: Path, split: str, *, name: str = "", licence: str = "", redistributable: bool = False
) -> Judged:
    """A BEIR folder: queries of ``split`` that have a positive, the whole corpus.

    Documents are ``title. text`` (the title alone or the text alone when one is empty).
    """
    folder = Path(folder)
    qrels = folder / "qrels" / f"{split}.tsv"
    if not qrels.is_file():
        raise FileNotFoundError(f"no qrels for split {split!r}: looked for {qrels}")
    positives: dict[str, set[str]] = {}
    with qrels.open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            if int(float(row["score"])) > 0:
                positives.setdefault(row["query-id"], set()).add(row["corpus-id"])
    queries = {
        str(r["_id"]): r["text"] for r in read_jsonl(folder / "queries.jsonl") if r["text"].strip()
    }
    corpus = {str(r["_id"]): _doc_text(r) for r in read_jsonl(folder / "corpus.jsonl")}
    positives = {q: {d for d in ds if d in corpus} for q, ds in positives.items() if q in queries}
    positives = {q: ds for q, ds in positives.items() if ds}
    return Judged(name or folder.name, licence, redistributable, queries, corpus, positives)


def load_pairs(
    files: list[Path],
    *,
    name: str,
    licence: str = "",
    redistributable: bool = False,
    positive: Any = None,
) -> Judged:
    """Judged pairs files: each query's candidates, positives by ``label`` (or ``positive``).

    ``positive(row) -> bool | None`` overrides the label rule; ``None`` means "neither"
    (e.g. a graded "related" answer, kept out of both positives and negatives).
    Queries without a positive are dropped: they give no listwise group.
    """
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    pos: dict[str, set[str]] = {}
    neg: dict[str, set[str]] = {}
    cands: dict[str, list[str]] = {}
    for path in files:
        for row in read_jsonl(path):
            qid, pid = f"{path.name}:{row['qid']}", str(row["pid"])
            query, passage = row["query"].strip(), row["passage"].strip()
            if not query or not passage:
                continue
            verdict = positive(row) if positive else int(row["label"]) > 0
            queries[qid] = query
            corpus[pid] = passage
            cands.setdefault(qid, []).append(pid)
            if verdict is True:
                pos.setdefault(qid, set()).add(pid)
            elif verdict is False:
                neg.setdefault(qid, set()).add(pid)
    pos = {q: p for q, p in pos.items() if p}
    return Judged(name, licence, redistributable, queries, corpus, pos, neg, cands)


def _liveqa_positive(row: dict[str, Any]) -> bool | None:
    # Grades 1 Incorrect, 2 Related, 3 Incomplete, 4 Excellent: >= 3 relevant (the task's own
    # rule), 1 a negative, 2 ("related") neither, so it is never pushed down as a negative.
    score = int(row["score"])
    return True if score >= 3 else (False if score <= 1 else None)


@dataclass(frozen=True)
class SetInfo:
    """Where a set lives, its licence, and whether a derived model may be shipped."""

    folder: str
    layout: str
    licence: str
    redistributable: bool
    files: tuple[str, ...] = ()
    split: str = "train"


#: Sets under ``shared/train`` (and SciFact train under ``shared/data``) by name.
SETS: dict[str, SetInfo] = {
    "scifact": SetInfo("data/scifact", "beir", "CC BY 4.0", True),
    "xquad": SetInfo("train/squad-xquad-en", "beir", "CC BY-SA 4.0", True),
    "qed": SetInfo("train/nq-qed-dev", "beir", "CC BY-SA 4.0 (Wikipedia CC BY-SA 3.0)", True),
    "pubmedqa": SetInfo("train/pubmedqa-labeled", "beir", "MIT", True),
    "medquad": SetInfo("train/medquad", "beir", "CC BY 4.0", True),
    "liveqa-med": SetInfo(
        "train/medquad", "pairs", "CC BY 4.0", True, ("liveqa-med-judged.jsonl.gz",)
    ),
    "selqa": SetInfo(
        "train/selqa", "pairs", "Apache-2.0 (Wikipedia text CC BY-SA)", True, ("dev", "test")
    ),
    # Research-only or no stated licence: experiments only, never in the shipped default.
    "wikiqa": SetInfo(
        "train/wikiqa",
        "pairs",
        "Microsoft Research Data License (research only)",
        False,
        ("train",),
    ),
    "trecqa": SetInfo("train/trecqa", "pairs", "none stated (TREC)", False, ("train",)),
    "mediqa-qa": SetInfo(
        "train/mediqa", "pairs", "none stated", False, ("qa-train1-liveqamed", "qa-train2-alexa")
    ),
}

#: The sets whose licences allow shipping a model trained on them.
REDISTRIBUTABLE = tuple(n for n, s in SETS.items() if s.redistributable)


def load_set(name: str, shared: Path | None = None) -> Judged:
    """Load a known training set by name (see :data:`SETS`). Never a test split of ``shared/data``.

    SciFact loads ``qrels/train.tsv`` only; its test split is for reporting.
    """
    try:
        info = SETS[name]
    except KeyError:
        raise ValueError(f"unknown set {name!r}; known: {sorted(SETS)}") from None
    root = Path(shared or SHARED) / info.folder
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} not found (set TWOSTAGE_SHARED)")
    if info.layout == "beir":
        return load_beir(
            root, info.split, name=name, licence=info.licence, redistributable=info.redistributable
        )
    files = [root / (f if f.endswith(".gz") else f + ".jsonl") for f in info.files]
    rule = _liveqa_positive if name == "liveqa-med" else None
    return load_pairs(
        files, name=name, licence=info.licence, redistributable=info.redistributable, positive=rule
    )


def load_beir_eval(
    folder: Path, split: str = "test"
) -> tuple[dict[str, str], dict[str, str], dict[str, dict[str, int]]]:
    """(queries, corpus, qrels) of a BEIR split for evaluation: graded qrels kept as given."""
    folder = Path(folder)
    qrels: dict[str, dict[str, int]] = {}
    with (folder / "qrels" / f"{split}.tsv").open(encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            qrels.setdefault(row["query-id"], {})[row["corpus-id"]] = int(float(row["score"]))
    queries = {str(r["_id"]): r["text"] for r in read_jsonl(folder / "queries.jsonl")}
    queries = {q: t for q, t in queries.items() if q in qrels}
    corpus = {str(r["_id"]): _doc_text(r) for r in read_jsonl(folder / "corpus.jsonl")}
    return queries, corpus, qrels


__all__ = [
    "REDISTRIBUTABLE",
    "SETS",
    "SHARED",
    "Judged",
    "SetInfo",
    "load_beir",
    "load_beir_eval",
    "load_pairs",
    "load_set",
    "read_jsonl",
]
