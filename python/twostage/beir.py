"""BEIR-layout test collections and TREC run files: what evaluation reads and writes.

A BEIR folder holds ``corpus.jsonl[.gz]``, ``queries.jsonl`` and ``qrels/<split>.tsv``; a
:class:`Dataset` is one split's judged queries and their qrels (the corpus is streamed by the
ingest pipeline). Run files are TREC's six columns (``qid Q0 doc rank score tag``), gzipped
when the name ends in ``.gz``, read back by every TREC tool (ir-measures, trec_eval via zcat).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from twostage.errors import InvalidArgument
from twostage.metrics import Qrels, Ranking

log = logging.getLogger("twostage")


@dataclass(frozen=True)
class Dataset:
    """A BEIR-layout test collection: the judged queries of one split and their qrels."""

    name: str
    path: Path
    split: str
    corpus: Path
    queries: dict[str, str]
    qrels: Qrels

    @classmethod
    def load(cls, folder: str | os.PathLike[str], split: str = "test") -> Dataset:
        """Read ``folder``'s queries and ``qrels/<split>.tsv`` (the corpus is streamed later).

        Raises ``FileNotFoundError`` naming what is missing, ``InvalidArgument`` for a
        malformed qrels row.
        """
        path = Path(folder)
        corpus = next(
            (path / n for n in ("corpus.jsonl", "corpus.jsonl.gz") if (path / n).is_file()),
            None,
        )
        if corpus is None:
            raise FileNotFoundError(f"{path}: no corpus.jsonl or corpus.jsonl.gz (BEIR layout)")
        qrels_file = path / "qrels" / f"{split}.tsv"
        if not qrels_file.is_file():
            have = sorted(p.stem for p in (path / "qrels").glob("*.tsv"))
            raise FileNotFoundError(f"{qrels_file} not found (splits here: {have or 'none'})")
        qrels = read_qrels(qrels_file)
        queries: dict[str, str] = {}
        with _open_text(path / "queries.jsonl") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                    qid, text = str(row["_id"]), str(row["text"])
                except (ValueError, KeyError, TypeError) as e:
                    raise InvalidArgument(f"{path / 'queries.jsonl'} line {n}: {e}") from e
                if qid in qrels:
                    queries[qid] = text
        missing = [q for q in qrels if q not in queries]
        if missing:
            log.warning("%s: %d judged queries have no text: %s", path, len(missing), missing[:5])
            qrels = {q: r for q, r in qrels.items() if q in queries}
        if not qrels:
            raise InvalidArgument(f"{qrels_file}: no judged query has a text in queries.jsonl")
        return cls(path.resolve().name, path, split, corpus, queries, qrels)


def read_qrels(path: str | os.PathLike[str]) -> Qrels:
    """Qrels as ``{q: {doc: grade}}``: BEIR TSV (``query-id corpus-id score``, with a
    header) or TREC (``qid 0 doc grade``)."""
    qrels: Qrels = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = line.rstrip("\r\n").split("\t") if "\t" in line else line.split()
            if not row or not row[0] or (n == 1 and row[0] == "query-id"):
                continue
            if len(row) == 4:  # TREC: qid iteration doc grade
                row = [row[0], row[2], row[3]]
            if len(row) != 3:
                raise InvalidArgument(
                    f"{path} line {n}: expected 'qid doc grade' (BEIR) or 'qid 0 doc grade' (TREC)"
                )
            try:
                grade = int(float(row[2]))
            except ValueError:
                raise InvalidArgument(
                    f"{path} line {n}: grade {row[2]!r} is not a number"
                ) from None
            qrels.setdefault(row[0], {})[row[1]] = grade
    return qrels


def write_trec(
    ranking: Mapping[str, Sequence[str]], path: str | os.PathLike[str], tag: str
) -> None:
    """Write ``ranking`` as a TREC run (``qid Q0 doc rank score tag``), scores by rank;
    gzipped when ``path`` ends in ``.gz`` (deterministic bytes: no name or time inside).

    The score is ``len(list) - rank``, so every tool that re-sorts by score (trec_eval
    breaks ties by document id) reads exactly this order.
    """
    if not tag or any(c.isspace() for c in tag):
        raise InvalidArgument(f"run tag must be one word, not {tag!r}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp")
    with _open_out(tmp, gz=str(path).endswith(".gz")) as f:
        for qid in sorted(ranking):
            docs = ranking[qid]
            for rank, doc in enumerate(docs, 1):
                f.write(f"{qid} Q0 {doc} {rank} {len(docs) - rank + 1} {tag}\n")
    os.replace(tmp, path)


def read_trec(path: str | os.PathLike[str]) -> Ranking:
    """A TREC run file (``.gz`` too) as ``{qid: [doc, ...]}``, ordered by score (ties by
    the rank column)."""
    rows: dict[str, list[tuple[float, int, str]]] = {}
    with _open_text(Path(path)) as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InvalidArgument(f"{path} line {n}: expected 6 fields, got {len(parts)}")
            try:
                rank, score = int(parts[3]), float(parts[4])
            except ValueError:
                raise InvalidArgument(f"{path} line {n}: rank/score are not numbers") from None
            rows.setdefault(parts[0], []).append((-score, rank, parts[2]))
    return {q: [d for *_, d in sorted(r)] for q, r in rows.items()}


def _open_text(path: Path) -> Any:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


@contextlib.contextmanager
def _open_out(path: Path, *, gz: bool) -> Iterator[IO[str]]:
    if not gz:
        with path.open("w", encoding="utf-8") as f:
            yield f
        return
    # No file name and mtime 0 in the header: the same ranking gives the same bytes.
    with (
        path.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as z,
        io.TextIOWrapper(z, encoding="utf-8") as f,
    ):
        yield f


def corpus_ids(path: str | os.PathLike[str]) -> Iterator[str]:
    """The ``_id`` of each line of a BEIR corpus (``.jsonl`` or ``.jsonl.gz``), in file
    order; lines that are blank or not JSON objects with an ``_id`` are skipped."""
    with _open_text(Path(path)) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and "_id" in row:
                yield str(row["_id"])


__all__ = ["Dataset", "corpus_ids", "read_qrels", "read_trec", "write_trec"]
