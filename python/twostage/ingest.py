"""Offline batch encoding: a corpus file in, a collection out. Streaming and resumable.

The corpus is read line by line and cut into chunks by line number (lines 1..N, N+1..2N,
...). Each chunk is embedded in length-sorted batches and committed to the store in one
transaction together with the number of the chunk's last line. A run that is killed loses at
most the chunk in flight; run again, it skips the committed lines and goes on. Because chunk
boundaries depend only on line numbers, a resumed build forms the same batches as an
uninterrupted one, and so ends with the same documents and the same vectors, bit for bit
(dynamic int8 quantisation scales each batch by its own range, so batch composition matters).

>>> from twostage.ingest import build
>>> report = build("corpus.jsonl.gz", "docs/")  # doctest: +SKIP
>>> print(report)  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from twostage.collection import MANIFEST, Collection
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.errors import IngestError, InvalidArgument
from twostage.progress import Progress, progress_mode
from twostage.sources import count_lines, read_corpus

OnError = Literal["skip", "fail"]
CorpusFormat = Literal["auto", "jsonl", "text", "csv"]
MAX_REPORTED_ERRORS = 20


@dataclass
class IngestReport:
    """What a build did: counts, errors with their line numbers, time and rate."""

    collection: str
    source: str
    lines: int = 0  # lines read (this run and earlier runs of the same build)
    inserted: int = 0
    updated: int = 0  # duplicate ids: later lines replace earlier ones
    errors: int = 0
    error_lines: list[tuple[int, str]] = field(default_factory=list)  # first few
    resumed_from: int = 0  # last line committed by an earlier, interrupted run
    embedded: int = 0  # documents embedded by this run
    seconds: float = 0.0  # this run
    already_complete: bool = False

    @property
    def documents(self) -> int:
        """Distinct documents in the collection from this corpus."""
        return self.inserted

    @property
    def docs_per_s(self) -> float:
        """Documents embedded per second by this run."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        if self.already_complete:
            return f"{self.collection}: already built from {self.source}; nothing to do"
        parts = [
            f"{self.collection}: {self.documents} documents from {self.lines} lines of "
            f"{self.source}",
            f"  duplicates (upserted): {self.updated}   malformed lines skipped: {self.errors}",
            f"  this run: {self.embedded} embedded in {self.seconds:.1f} s "
            f"({self.docs_per_s:.1f} docs/s)"
            + (f", resumed after line {self.resumed_from}" if self.resumed_from else ""),
        ]
        for line, msg in self.error_lines:
            parts.append(f"  line {line}: {msg}")
        if self.errors > len(self.error_lines):
            parts.append(f"  ... and {self.errors - len(self.error_lines)} more malformed lines")
        return "\n".join(parts)


def build(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    encoder: Encoder | None = None,
    format: CorpusFormat = "auto",
    id_field: str = "_id",
    text_field: str = "text",
    title_field: str = "title",
    delimiter: str = ",",
    on_error: OnError = "skip",
    chunk_size: int = 1024,
    batch_size: int = 32,
    snapshot_every: int = 100_000,
    dtype: str = "f16",
    shards: int = 1,
    connectivity: int = 16,
    rescore: bool = False,
    progress: bool | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> IngestReport:
    """Build (or resume building) the collection in ``out`` from the corpus file ``corpus``.

    Args:
        corpus: BEIR-style JSONL (``.jsonl``/``.jsonl.gz``), plain text (one document per
            line) or CSV; see :func:`twostage.sources.read_corpus` for the field options.
        out: the collection folder. If it holds an interrupted build of the same corpus, the
            build resumes; a finished one is left as it is.
        encoder: defaults to the built-in ``minilm-l6`` (int8).
        on_error: ``"skip"`` reports a malformed line with its number and goes on;
            ``"fail"`` stops at it (what was committed stays; fix the line and restart with
            a new ``out``).
        chunk_size: lines per commit: the most a kill can lose.
        snapshot_every: documents between index snapshots (replay on open covers the rest).
        dtype, shards, connectivity, rescore: the index's settings, as
            :meth:`Collection.create` takes them (a resumed build keeps the first run's).
        progress: ``False``: silent. Otherwise (the default) progress on stderr per
            encoded batch: a bar on a terminal, elsewhere a line every
            ``$TWOSTAGE_PROGRESS_INTERVAL`` seconds (10) with docs/s and the time left.
        on_chunk: called with the last committed line after each chunk (tests, UIs).

    >>> build("corpus.jsonl", "docs/", on_error="fail")  # doctest: +SKIP
    """
    if on_error not in ("skip", "fail"):
        raise InvalidArgument(f"on_error must be 'skip' or 'fail', not {on_error!r}")
    if chunk_size < 1 or batch_size < 1:
        raise InvalidArgument("chunk_size and batch_size must be >= 1")
    src = Path(corpus).expanduser().resolve()
    if not src.is_file():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    folder = Path(out)
    stat = src.stat()
    signature = f"{stat.st_size}:{stat.st_mtime_ns}"
    options = json.dumps(
        {
            "format": format,
            "id_field": id_field,
            "text_field": text_field,
            "title_field": title_field,
            "delimiter": delimiter,
            "chunk_size": chunk_size,
            "batch_size": batch_size,
        },
        sort_keys=True,
    )
    t0 = time.perf_counter()
    report = IngestReport(collection=str(folder), source=str(src))

    if (folder / MANIFEST).exists():
        col = Collection.open(folder, encoder)
        store = col.store
        if store.get_meta("ingest.source", "") == "":
            col.close()
            raise IngestError(
                f"{folder} holds a collection that was not built from a corpus file; add "
                "documents to it with `twostage index add` instead"
            )
        same = (
            store.get_meta("ingest.source") == str(src)
            and store.get_meta("ingest.signature") == signature
            and store.get_meta("ingest.options") == options
        )
        complete = store.get_meta("ingest.complete") == "1"
        _restore(report, store.get_meta)
        if complete and same:
            col.close()
            report.already_complete = True
            return report
        if not same:
            what = "was built" if complete else "was being built"
            msg = (
                f"{folder} {what} from {store.get_meta('ingest.source')} "
                f"(signature {store.get_meta('ingest.signature')}, options "
                f"{store.get_meta('ingest.options')}); this run reads {src} (signature "
                f"{signature}, options {options}). Build into a new folder, or add documents "
                "with `twostage index add`."
            )
            col.close()
            raise IngestError(msg)
        report.resumed_from = report.lines
    else:
        encoder = encoder or Encoder.load("minilm-l6")
        # What the build reads goes in with the store's schema: killed at any point, the
        # folder holds either no collection or one that knows its source (it resumes).
        col = Collection.create(
            folder,
            encoder,
            dtype=dtype,
            shards=shards,
            connectivity=connectivity,
            rescore=rescore,
            meta={
                "ingest.source": str(src),
                "ingest.signature": signature,
                "ingest.options": options,
                "ingest.complete": "0",
                "ingest.line": "0",
                "ingest.inserted": "0",
                "ingest.updated": "0",
                "ingest.errors": "0",
            },
        )

    bar = _progress(src, report.resumed_from, progress)
    chunk: list[Document] = []
    chunk_end = 0  # the last line number the chunk being filled may hold
    last_seen = report.resumed_from
    since_snapshot = 0
    try:
        records = read_corpus(
            src,
            format=format,
            id_field=id_field,
            text_field=text_field,
            title_field=title_field,
            delimiter=delimiter,
        )
        for rec in records:
            if rec.line <= report.resumed_from:
                continue
            last_seen = rec.line
            if rec.line > chunk_end:
                if chunk_end:
                    since_snapshot += _commit(
                        col, chunk, chunk_end, report, batch_size, on_batch=bar.update
                    )
                    if on_chunk is not None:
                        on_chunk(chunk_end)
                    bar.advance_to(report.lines)
                chunk = []
                chunk_end = ((rec.line - 1) // chunk_size + 1) * chunk_size
                if since_snapshot >= snapshot_every:
                    col.flush()
                    since_snapshot = 0
            if rec.doc is None:
                if on_error == "fail":
                    raise IngestError(f"{src}:{rec.line}: {rec.error}")
                report.errors += 1
                if len(report.error_lines) < MAX_REPORTED_ERRORS:
                    report.error_lines.append((rec.line, str(rec.error)))
                    bar.write(f"line {rec.line}: {rec.error} (skipped)")
                continue
            chunk.append(rec.doc)
        _commit(col, chunk, last_seen, report, batch_size, complete=True, on_batch=bar.update)
        bar.advance_to(report.lines)
        col.flush()
    finally:
        bar.close()
        col.close()
    report.seconds = time.perf_counter() - t0
    return report


def _commit(
    col: Collection,
    docs: list[Document],
    last_line: int,
    report: IngestReport,
    batch_size: int,
    *,
    complete: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Embed one chunk and commit it with the ingest progress, in one transaction.

    ``on_batch`` hears of each encoded batch (its size), so progress moves within a chunk.
    """
    last = {d.id: i for i, d in enumerate(docs)}
    repeats = len(docs) - len(last)
    docs = [docs[i] for i in sorted(last.values())]
    fresh = len(docs) - len(col.store.keys_of([d.id for d in docs]))
    report.inserted += fresh
    report.updated += len(docs) - fresh + repeats
    report.lines = last_line
    report.embedded += len(docs)
    meta = {
        "ingest.line": str(last_line),
        "ingest.inserted": str(report.inserted),
        "ingest.updated": str(report.updated),
        "ingest.errors": str(report.errors),
        "ingest.complete": "1" if complete else "0",
    }
    _embed_and_add(col, docs, batch_size, meta=meta, on_batch=on_batch)
    return len(docs)


def _embed_and_add(
    col: Collection,
    docs: list[Document],
    batch_size: int,
    *,
    meta: dict[str, str] | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """``col.add`` with a callback per encoded batch (the same vectors: the same encoder
    call with the same batches)."""
    if not docs:
        col.add(docs, meta=meta)
        return
    contents = [d.content for d in docs]
    vectors = col.encoder.encode(contents, batch_size=batch_size, on_batch=on_batch)
    col.add_embedded(docs, vectors, col.encoder.token_ids(contents), meta=meta)


def _restore(report: IngestReport, get: Callable[[str, str], str]) -> None:
    report.lines = int(get("ingest.line", "0"))
    report.inserted = int(get("ingest.inserted", "0"))
    report.updated = int(get("ingest.updated", "0"))
    report.errors = int(get("ingest.errors", "0"))


def _progress(src: Path, initial: int, progress: bool | None) -> Progress:
    total = None
    if progress_mode(progress) != "off":
        # A damaged gzip stream: no total, and read_corpus raises its OSError after the
        # records before the damage (which get indexed), as it would without progress.
        with contextlib.suppress(OSError):
            total = count_lines(src)
    return Progress("index build", total, unit="docs", initial=initial, progress=progress)


@dataclass
class ReembedReport:
    """What a re-embedding did: the new generation's counts, time and rate."""

    source: str
    collection: str
    encoder: str
    documents: int = 0  # in the new collection at the end
    embedded: int = 0  # by this run
    resumed: int = 0  # already there from an interrupted earlier run
    seconds: float = 0.0

    def __str__(self) -> str:
        rate = self.embedded / self.seconds if self.seconds > 0 else 0.0
        line = (
            f"{self.collection}: {self.documents} documents of {self.source} re-embedded with "
            f"{self.encoder}; this run embedded {self.embedded} in {self.seconds:.1f} s "
            f"({rate:.1f} docs/s)"
        )
        if self.resumed:
            line += f", {self.resumed} were already there"
        return (
            line + f"\n  {self.source} is untouched: serve {self.collection} in its place "
            "(queries must be embedded by the encoder that embedded the documents)"
        )


def reembed(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    encoder: Encoder,
    *,
    chunk_size: int = 1024,
    batch_size: int = 32,
    progress: bool | None = None,
) -> ReembedReport:
    """A new generation of the collection in ``source``: every document, embedded by ``encoder``.

    A new encoder changes every stored vector, so, unlike a reranker swap, it needs a new
    collection. ``out`` gets the same documents (ids, text, titles, metadata) and the same
    index settings; ``source`` is only read, and keeps serving until ``out`` replaces it.
    An interrupted run resumes: run it again and documents already in ``out`` are skipped.
    Writes to ``source`` after its documents were copied are not carried over (and a resumed
    run does not re-copy a document already in ``out``): pause writes while it runs.

    >>> print(reembed("docs/", "docs-v2/", Encoder.load("my-encoder/")))  # doctest: +SKIP
    """
    from twostage.collection import index_settings, read_manifest

    src_dir, out_dir = Path(source), Path(out)
    if src_dir.resolve() == out_dir.resolve():
        raise InvalidArgument("re-embedding writes a new collection: --out must be another folder")
    m = read_manifest(src_dir)
    if m["encoder"]["fingerprint"] == encoder.fingerprint:
        raise InvalidArgument(
            f"{src_dir} is already embedded by {encoder.name} ({encoder.precision}, "
            f"fingerprint {encoder.fingerprint}): nothing to re-embed"
        )
    t0 = time.perf_counter()
    with Collection.open(src_dir, read_only=True) as src:
        if (out_dir / MANIFEST).exists():
            dst = Collection.open(out_dir, encoder)  # refuses a different encoder
        else:
            dst = Collection.create(
                out_dir,
                encoder,
                **index_settings(m),
                embedding_dtype=m["embedding_dtype"],
                lexical=bool(m.get("lexical")),
            )
        report = ReembedReport(str(src_dir), str(out_dir), f"{encoder.name} ({encoder.precision})")
        with dst:
            bar = Progress("re-embed", len(src), unit="docs", progress=progress)
            ids: list[str] = []
            seen = 0

            def flush() -> None:
                nonlocal seen
                todo = [i for i in ids if i not in dst]
                report.resumed += len(ids) - len(todo)
                if todo:
                    _embed_and_add(dst, src.get(todo), batch_size, on_batch=bar.update)
                    report.embedded += len(todo)
                seen += len(ids)
                bar.advance_to(seen)
                ids.clear()

            for doc_id in src.store.ids():
                ids.append(doc_id)
                if len(ids) >= chunk_size:
                    flush()
            flush()
            bar.close()
            report.documents = len(dst)
    report.seconds = time.perf_counter() - t0
    return report


__all__ = ["IngestReport", "ReembedReport", "build", "reembed"]
