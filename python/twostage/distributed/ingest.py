"""Distributed ingest on Ray Data: a corpus file in, a sharded collection out. Resumable.

The pipeline:

1. **read**: one Ray Data read task streams the corpus with :func:`twostage.sources.read_corpus`
   (BEIR JSONL, plain text or CSV, gzipped or not) and cuts it into chunks by line number
   (lines 1..C, C+1..2C, ...), one row per chunk. A gzip stream cannot be split, so one file
   is one reader; parsing runs at tens of thousands of lines a second, far ahead of encoding.
2. **encode**: an actor pool (``map_batches`` with a callable class, ``concurrency=encoders``;
   each actor ``cpus_per_encoder`` CPUs, or ``gpus_per_encoder`` GPUs with a CUDA provider)
   embeds each chunk whole, in length-sorted batches of ``batch_size``, exactly as
   :func:`twostage.ingest.build` embeds a chunk: the same chunks make the same batches, so
   the same vectors, bit for bit (dynamic int8 quantisation scales each batch by its range).
3. **write**: chunks come back in order; each is split by shard
   (:func:`~twostage.distributed.layout.shard_of`) and sent to the shard's writer actor (one
   per shard: the shard's one writer), which commits its part together with the chunk's
   number in one store transaction.
4. **switch**: when every shard has every chunk, each snapshots its index and marks its
   build complete, and ``shards.json`` is written last (temporary file, fsync, rename): until
   then there is no sharded collection to open, only an interrupted build.

A killed job (the driver, a worker, the node) loses at most the chunks in flight. Run it
again with the same arguments: each shard says which chunk it committed last, reading
resumes after the lowest, and a shard skips what it already has. Since chunk boundaries
depend only on line numbers and each shard commits chunks in order, the resumed build ends
with the same documents, the same keys and the same vectors in every shard as an
uninterrupted one.

>>> import ray; ray.init()  # doctest: +SKIP
>>> from twostage.distributed import ingest
>>> print(ingest("corpus.jsonl.gz", "docs-4/", 4, encoders=2))  # doctest: +SKIP
"""

from __future__ import annotations

import collections
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from twostage.collection import MANIFEST, Collection
from twostage.distributed import require_ray
from twostage.distributed.layout import (
    HASH_RULE,
    LAYOUT,
    check_shards,
    layout_manifest,
    read_layout,
    shard_dir,
    shard_of,
    write_layout,
)
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.errors import CollectionLocked, IngestError, InvalidArgument
from twostage.ingest import MAX_REPORTED_ERRORS, CorpusFormat, OnError
from twostage.progress import Progress
from twostage.sources import count_lines, read_corpus

require_ray()
import pyarrow as pa  # type: ignore[import-untyped]  # noqa: E402  (Ray Data's own)
import ray  # noqa: E402
from ray.data import Datasource, ReadTask  # noqa: E402
from ray.data.block import BlockMetadata  # noqa: E402

#: Chunks a shard writer may have queued before the driver waits for it (memory bound).
MAX_IN_FLIGHT = 4
#: Read tasks per encoder actor: Ray Data gives each read task's chunks to one encoder, so a
#: few per encoder keep them all busy to the end.
SPANS_PER_ENCODER = 4


@dataclass
class ShardedIngestReport:
    """What a distributed build did: counts over all shards, errors, time and rate."""

    collection: str
    source: str
    shards: int
    encoders: int
    lines: int = 0  # lines read (this run and earlier runs of the same build)
    inserted: int = 0  # distinct documents
    updated: int = 0  # duplicate ids: later lines replace earlier ones
    errors: int = 0
    error_lines: list[tuple[int, str]] = field(default_factory=list)  # this run's first few
    resumed_from: int = 0  # the last line every shard had committed before this run
    embedded: int = 0  # documents embedded by this run
    seconds: float = 0.0  # this run
    already_complete: bool = False
    per_shard: list[int] = field(default_factory=list)  # documents in each shard

    @property
    def documents(self) -> int:
        """Distinct documents in the sharded collection from this corpus."""
        return self.inserted

    @property
    def docs_per_s(self) -> float:
        """Documents embedded per second by this run (the whole pipeline's rate)."""
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        if self.already_complete:
            return f"{self.collection}: already built from {self.source}; nothing to do"
        parts = [
            f"{self.collection}: {self.documents} documents in {self.shards} shards "
            f"{self.per_shard} from {self.lines} lines of {self.source}",
            f"  duplicates (upserted): {self.updated}   malformed lines skipped: {self.errors}",
            f"  this run: {self.embedded} embedded in {self.seconds:.1f} s "
            f"({self.docs_per_s:.1f} docs/s, {self.encoders} encoder actors)"
            + (f", resumed after line {self.resumed_from}" if self.resumed_from else ""),
        ]
        parts += [f"  line {line}: {msg}" for line, msg in self.error_lines]
        if self.errors > len(self.error_lines) and self.error_lines:
            parts.append(f"  ... and more malformed lines ({self.errors} in all)")
        return "\n".join(parts)


def ingest(
    corpus: str | os.PathLike[str],
    out: str | os.PathLike[str],
    n_shards: int,
    *,
    encoder: str = "minilm-l6",
    precision: str = "int8",
    max_length: int | None = None,
    format: CorpusFormat = "auto",
    id_field: str = "_id",
    text_field: str = "text",
    title_field: str = "title",
    delimiter: str = ",",
    on_error: OnError = "skip",
    chunk_size: int = 1024,
    batch_size: int = 32,
    encoders: int = 1,
    cpus_per_encoder: float = 1.0,
    gpus_per_encoder: float = 0.0,
    dtype: str = "f16",
    lexical: bool = True,
    writer_options: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> ShardedIngestReport:
    """Build (or resume building) a sharded collection of ``n_shards`` in ``out`` from the
    corpus file ``corpus``, on the Ray cluster this process is connected to.

    Args:
        corpus: BEIR-style JSONL, plain text or CSV, gzipped or not (as
            :func:`twostage.ingest.build` reads it); every node running the read task must
            see the path (a shared file system on a cluster).
        out: the top folder; each shard's folder goes inside it (``shard-000``...). The
            writer actors open them by this path.
        n_shards: how many shards.
        encoder, precision, max_length: the encoder each encoder actor loads (a built-in
            name, or a folder every node sees).
        encoders: encoder actors (``map_batches(concurrency=...)``).
        cpus_per_encoder: CPUs each encoder actor reserves, and its onnxruntime threads.
        gpus_per_encoder: GPUs each reserves (> 0 runs it on onnxruntime's CUDA provider).
        chunk_size: lines per chunk: the unit of batching, of commit and of resume.
        writer_options: Ray actor options for the shard writers (a mapping, or a function
            of the shard number), e.g. to pin each to the node holding its folder.
        on_chunk: called with each chunk's last line once every shard committed it.

    Other arguments as :func:`twostage.ingest.build` takes them. Raises
    :class:`~twostage.errors.IngestError` when ``out`` holds a build of another corpus or
    with other options, or at a malformed line with ``on_error="fail"`` (what was committed
    stays).

    >>> ingest("corpus.jsonl", "docs-3/", 3, encoders=2, chunk_size=256)  # doctest: +SKIP
    """
    check_shards(n_shards)
    if on_error not in ("skip", "fail"):
        raise InvalidArgument(f"on_error must be 'skip' or 'fail', not {on_error!r}")
    if chunk_size < 1 or batch_size < 1 or encoders < 1:
        raise InvalidArgument("chunk_size, batch_size and encoders must be >= 1")
    if cpus_per_encoder < 0 or gpus_per_encoder < 0:
        raise InvalidArgument("cpus_per_encoder and gpus_per_encoder must be >= 0")
    src = Path(corpus).expanduser().resolve()
    if not src.is_file():
        raise FileNotFoundError(f"corpus not found: {corpus}")
    top = Path(out).resolve()
    stat = src.stat()
    options = json.dumps(
        {
            "format": format,
            "id_field": id_field,
            "text_field": text_field,
            "title_field": title_field,
            "delimiter": delimiter,
            "chunk_size": chunk_size,
            "batch_size": batch_size,
            "shards": n_shards,
            "hash": HASH_RULE,
            "encoder": [encoder, precision, max_length],
        },
        sort_keys=True,
    )
    identity = {
        "ingest.source": str(src),
        "ingest.signature": f"{stat.st_size}:{stat.st_mtime_ns}",
        "ingest.options": options,
    }
    t0 = time.perf_counter()
    report = ShardedIngestReport(str(top), str(src), n_shards, encoders)
    if (top / LAYOUT).exists():
        return _finished(top, identity, report)
    if (top / MANIFEST).exists():
        raise IngestError(f"{top} holds a single collection; build the sharded one elsewhere")
    top.mkdir(parents=True, exist_ok=True)

    spec = {"spec": encoder, "precision": precision, "max_length": max_length}
    settings = {"dtype": dtype, "lexical": lexical}
    writers = [
        _ShardWriter.options(**_options(writer_options, i)).remote(  # type: ignore[attr-defined]
            str(top / shard_dir(i)), i, n_shards, spec, settings, identity
        )
        for i in range(n_shards)
    ]
    try:
        states = ray.get([w.state.remote() for w in writers])
        done = min(s["chunk"] for s in states)  # the last chunk every shard has
        report.resumed_from = min(s["line"] for s in states)
        report.lines = report.resumed_from
        total = count_lines(src)  # where the spans cut the file (and the progress total)
        bar = Progress(
            "index build", total, unit="lines", initial=report.resumed_from, progress=progress
        )
        try:
            _run(
                src,
                writers,
                report,
                bar,
                chunks=(done + 1, -(-total // chunk_size)),
                spans=encoders * SPANS_PER_ENCODER,
                read={
                    "format": format,
                    "id_field": id_field,
                    "text_field": text_field,
                    "title_field": title_field,
                    "delimiter": delimiter,
                },
                chunk_size=chunk_size,
                encode={
                    **spec,
                    "batch_size": batch_size,
                    "threads": max(int(cpus_per_encoder), 1),
                    "gpu": gpus_per_encoder > 0,
                },
                pool={
                    "concurrency": encoders,
                    "num_cpus": cpus_per_encoder,
                    "num_gpus": gpus_per_encoder,
                },
                on_error=on_error,
                on_chunk=on_chunk,
            )
        finally:
            bar.close()
        finals = ray.get([w.finish.remote(report.lines) for w in writers])
    finally:
        for w in writers:
            ray.kill(w, no_restart=True)
    report.inserted = sum(f["inserted"] for f in finals)
    report.updated = sum(f["updated"] for f in finals)
    report.errors = sum(f["errors"] for f in finals)
    report.per_shard = [f["documents"] for f in finals]
    manifest = layout_manifest(finals[0]["manifest"], n_shards)
    manifest["source"] = {"ingest": str(src), "documents": sum(report.per_shard)}
    write_layout(top, manifest)  # the switch: from here on it is a sharded collection
    report.seconds = time.perf_counter() - t0
    return report


def _run(
    src: Path,
    writers: list[Any],
    report: ShardedIngestReport,
    bar: Progress,
    *,
    chunks: tuple[int, int],
    spans: int,
    read: dict[str, Any],
    chunk_size: int,
    encode: dict[str, Any],
    pool: dict[str, Any],
    on_error: str,
    on_chunk: Callable[[int], None] | None,
) -> None:
    """Stream the chunks through the encoder pool and hand each to the shard writers."""
    ctx = ray.data.DataContext.get_current()
    # Writers take chunks in line order: the same order, the same keys, on every run.
    was = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = bar.mode == "bar"
    try:
        source = _Chunks(str(src), chunk_size, chunks[0], chunks[1], spans, read)
        if not source.spans:
            return  # every chunk is committed: only the finish is left
        ds = ray.data.read_datasource(
            source,
            override_num_blocks=len(source.spans),
            num_cpus=0,  # I/O and parsing: it must never wait for the encoders' CPUs
        ).map_batches(
            _Encode,
            fn_constructor_kwargs=encode,
            batch_size=1,  # one chunk per call: its batches are the ones build() makes
            batch_format="pyarrow",
            zero_copy_batch=True,
            **pool,
        )
        n_sh = len(writers)
        inflight: dict[int, collections.deque[Any]] = {s: collections.deque() for s in range(n_sh)}
        pending: collections.deque[tuple[list[Any], int]] = collections.deque()
        for row in ds.iter_rows():
            chunk = int(row["chunk"])
            last_line = int(row["last_line"])
            docs = [Document(*d) for d in json.loads(row["docs"])]
            errors = [tuple(e) for e in json.loads(row["errors"])]
            repeats = collections.Counter(shard_of(i, n_sh) for i in json.loads(row["repeats"]))
            if errors and on_error == "fail":
                line, msg = errors[0]
                raise IngestError(f"{src}:{line}: {msg}")
            for line, msg in errors:
                if len(report.error_lines) < MAX_REPORTED_ERRORS:
                    report.error_lines.append((int(line), str(msg)))
                    bar.write(f"line {line}: {msg} (skipped)")
            vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(len(docs), -1)
            lengths = np.frombuffer(row["token_lengths"], dtype=np.int32)
            flat = np.frombuffer(row["tokens"], dtype=np.int32)
            bounds = np.concatenate([[0], np.cumsum(lengths)])
            tokens = [flat[bounds[i] : bounds[i + 1]].tolist() for i in range(len(docs))]
            parts: dict[int, list[int]] = {s: [] for s in range(n_sh)}
            for i, d in enumerate(docs):
                parts[shard_of(d.id, n_sh)].append(i)
            refs = []
            for s, rows in parts.items():
                q = inflight[s]
                while len(q) >= MAX_IN_FLIGHT:
                    ray.get(q.popleft())  # a writer's error surfaces here
                # Every shard hears of every chunk (maybe with nothing for it): its committed
                # chunk number then says where a resumed run starts, for all shards alike.
                ref = writers[s].commit.remote(
                    chunk,
                    last_line,
                    [docs[i] for i in rows],
                    vectors[rows],
                    [tokens[i] for i in rows],
                    len(errors) if s == chunk % n_sh else 0,
                    repeats[s],
                )
                q.append(ref)
                refs.append(ref)
            pending.append((refs, last_line))
            report.embedded += len(docs)
            report.lines = last_line
            while pending and _committed(pending[0][0]):
                _, line = pending.popleft()
                bar.advance_to(line)
                if on_chunk is not None:
                    on_chunk(line)
        for q in inflight.values():
            ray.get(list(q))
        for _, line in pending:
            bar.advance_to(line)
            if on_chunk is not None:
                on_chunk(line)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = was


def _committed(refs: list[Any]) -> bool:
    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
    if len(ready) == len(refs):
        ray.get(refs)
        return True
    return False


def _finished(
    top: Path, identity: dict[str, str], report: ShardedIngestReport
) -> ShardedIngestReport:
    """A build whose manifest exists: done if it is this corpus's, else refused."""
    layout = read_layout(top)
    with Collection.open(layout.shard_paths[0], read_only=True) as c:
        got = {k: c.store.get_meta(k, "") for k in identity}
    if got != identity:
        raise IngestError(
            f"{top} was built from {got['ingest.source'] or 'something else'} (signature "
            f"{got['ingest.signature']}, options {got['ingest.options']}); this run reads "
            f"{identity['ingest.source']} (signature {identity['ingest.signature']}, options "
            f"{identity['ingest.options']}). Build into a new folder."
        )
    report.already_complete = True
    return report


def _options(
    opts: Mapping[str, Any] | Callable[[int], Mapping[str, Any]] | None, i: int
) -> dict[str, Any]:
    out: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
    if opts is not None:
        out.update(opts(i) if callable(opts) else opts)
    return out


# ---- the read ---------------------------------------------------------------------------


class _Chunks(Datasource):  # type: ignore[misc]
    """The corpus from chunk ``start`` on, one row per chunk of ``chunk_size`` lines, read
    by ``spans`` tasks, each a run of consecutive chunks.

    Ray Data hands each read task's output to one encoder actor, so the chunks are cut into
    several spans (a few per encoder) to keep every encoder busy. A span's reader skips the
    lines before it without parsing them (``read_corpus(first_line=...)``).
    """

    def __init__(
        self,
        path: str,
        chunk_size: int,
        start: int,
        end: int,
        spans: int,
        read: dict[str, Any],
    ) -> None:
        self._path = path
        self._chunk = chunk_size
        self.spans = _spans(start, end, spans)
        self._read = read

    def estimate_inmemory_data_size(self) -> int | None:
        return os.path.getsize(self._path)

    def get_read_tasks(
        self, parallelism: int, per_task_row_limit: int | None = None, data_context: Any = None
    ) -> list[ReadTask]:
        size = os.path.getsize(self._path) // max(len(self.spans), 1)
        return [
            ReadTask(
                _reader(self._path, self._chunk, a, b, self._read),
                BlockMetadata(
                    num_rows=b - a, size_bytes=size, exec_stats=None, input_files=(self._path,)
                ),
            )
            for a, b in self.spans
        ]


def _spans(start: int, end: int, spans: int) -> list[tuple[int, int]]:
    """Chunks ``start..end-1`` cut into at most ``spans`` runs of near-equal length."""
    n = max(end - start, 0)
    spans = max(min(spans, n), 1) if n else 0
    cuts = [start + (n * i) // spans for i in range(spans + 1)] if spans else []
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _reader(
    path: str, chunk_size: int, first: int, end: int, read: dict[str, Any]
) -> Callable[[], Iterator[pa.Table]]:
    def read_fn() -> Iterator[pa.Table]:
        yield from _chunk_tables(path, chunk_size, first, end, read)

    return read_fn


def _chunk_tables(
    path: str, chunk_size: int, first: int, end: int, read: dict[str, Any]
) -> Iterator[pa.Table]:
    """Chunks ``first..end-1`` as one-row tables: the chunk's number, its last line (the
    chunk's boundary; the file's last record for the file's last chunk), its documents and
    its malformed lines."""
    docs: list[list[Any]] = []
    errors: list[list[Any]] = []
    current = -1
    last_record = 0

    def table(last_line: int) -> pa.Table:
        return pa.table(
            {
                "chunk": [current],
                "last_line": [last_line],
                "docs": [json.dumps(docs)],
                "errors": [json.dumps(errors)],
            }
        )

    at_eof = True
    for rec in read_corpus(path, first_line=first * chunk_size + 1, **read):
        chunk = (rec.line - 1) // chunk_size
        if chunk >= end:
            at_eof = False
            break
        if chunk != current:
            if current >= 0:
                yield table((current + 1) * chunk_size)
            current, docs, errors = chunk, [], []
        last_record = rec.line
        if rec.doc is None:
            errors.append([rec.line, rec.error])
        else:
            d = rec.doc
            docs.append([d.id, d.text, d.title, d.metadata])
    if current >= 0:
        yield table(last_record if at_eof else (current + 1) * chunk_size)


# ---- the encode -------------------------------------------------------------------------


class _Encode:
    """One encoder actor of the pool: embeds a chunk whole, as ``build()`` does."""

    def __init__(
        self,
        spec: str,
        precision: str,
        max_length: int | None,
        batch_size: int,
        threads: int,
        gpu: bool,
    ) -> None:
        self._encoder = Encoder.load(
            spec,
            precision=precision,  # type: ignore[arg-type]
            max_length=max_length,
            threads=threads,
            providers=["cuda"] if gpu else None,
        )
        self._batch = batch_size

    def __call__(self, batch: pa.Table) -> pa.Table:
        out: dict[str, list[Any]] = {
            "chunk": [],
            "last_line": [],
            "docs": [],
            "errors": [],
            "repeats": [],
            "vectors": [],
            "tokens": [],
            "token_lengths": [],
        }
        for row in batch.to_pylist():
            raw = json.loads(row["docs"])
            docs = [Document(*d) for d in raw]
            # Later duplicates win within a chunk, as build() dedupes before it encodes.
            last = {d.id: i for i, d in enumerate(docs)}
            keep = sorted(last.values())
            docs = [docs[i] for i in keep]
            contents = [d.content for d in docs]
            if contents:
                vectors = self._encoder.encode(contents, batch_size=self._batch)
                tokens = self._encoder.token_ids(contents)
            else:
                vectors = np.empty((0, self._encoder.dim), dtype=np.float32)
                tokens = []
            lengths = np.asarray([len(t) for t in tokens], dtype=np.int32)
            flat = np.asarray([x for t in tokens for x in t], dtype=np.int32)
            out["chunk"].append(row["chunk"])
            out["last_line"].append(row["last_line"])
            out["docs"].append(json.dumps([raw[i] for i in keep]))
            out["errors"].append(row["errors"])
            dropped = sorted(set(range(len(raw))) - set(keep))
            out["repeats"].append(json.dumps([raw[i][0] for i in dropped]))
            out["vectors"].append(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
            out["tokens"].append(flat.tobytes())
            out["token_lengths"].append(lengths.tobytes())
        return pa.table(out)


# ---- the write --------------------------------------------------------------------------

#: How long a writer waits for a shard's lock held by a writer of a killed job (its process
#: ends moments after the job's, when Ray notices that its owner died).
LOCK_WAIT_S = 60.0


def _open_when_free(folder: Path) -> Collection:
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            return Collection.open(folder)
        except CollectionLocked:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)


@ray.remote
class _ShardWriter:
    """One shard's writer during a build: creates or reopens its folder, commits chunks in
    order with the ingest progress in the same transaction, and finishes the build."""

    def __init__(
        self,
        path: str,
        shard: int,
        n_shards: int,
        spec: dict[str, Any],
        settings: dict[str, Any],
        identity: dict[str, str],
    ) -> None:
        folder = Path(path)
        self._shard = shard
        self._n = n_shards
        if (folder / MANIFEST).exists():
            col = _open_when_free(folder)
            got = {k: col.store.get_meta(k, "") for k in identity}
            if got != identity:
                col.close()
                raise IngestError(
                    f"{folder} was being built from {got['ingest.source'] or 'something else'} "
                    f"(signature {got['ingest.signature']}, options {got['ingest.options']}); "
                    f"this run reads {identity['ingest.source']} (signature "
                    f"{identity['ingest.signature']}, options {identity['ingest.options']}). "
                    "Build into a new folder."
                )
        else:
            enc = Encoder.load(
                spec["spec"], precision=spec["precision"], max_length=spec["max_length"]
            )
            col = Collection.create(
                folder,
                enc,
                dtype=settings["dtype"],
                lexical=settings["lexical"],
                meta={
                    **identity,
                    "ingest.complete": "0",
                    "ingest.chunk": "-1",
                    "ingest.line": "0",
                    "ingest.inserted": "0",
                    "ingest.updated": "0",
                    "ingest.errors": "0",
                },
            )
        self._col = col
        get = col.store.get_meta
        self._chunk = int(get("ingest.chunk", "-1"))
        self._line = int(get("ingest.line", "0"))
        self._counts = {k: int(get(f"ingest.{k}", "0")) for k in ("inserted", "updated", "errors")}

    def state(self) -> dict[str, int]:
        """The last chunk and line this shard committed."""
        return {"chunk": self._chunk, "line": self._line}

    def commit(
        self,
        chunk: int,
        last_line: int,
        docs: list[Document],
        vectors: np.ndarray,
        tokens: list[list[int]],
        errors: int,
        repeats: int,
    ) -> int:
        """Commit this shard's part of ``chunk`` (skipped if it has it already)."""
        if chunk <= self._chunk:
            return self._chunk  # committed by an earlier run
        fresh = len(docs) - len(self._col.store.keys_of([d.id for d in docs]))
        c = self._counts
        c["inserted"] += fresh
        c["updated"] += len(docs) - fresh + repeats
        c["errors"] += errors
        meta = {
            "ingest.chunk": str(chunk),
            "ingest.line": str(last_line),
            "ingest.inserted": str(c["inserted"]),
            "ingest.updated": str(c["updated"]),
            "ingest.errors": str(c["errors"]),
        }
        if docs:
            self._col.add_embedded(docs, vectors, tokens, meta=meta)
        else:
            self._col.add([], meta=meta)
        self._chunk, self._line = chunk, last_line
        return chunk

    def finish(self, lines: int) -> dict[str, Any]:
        """Mark the build complete, snapshot the index, close; the shard's counts and
        manifest."""
        self._col.add([], meta={"ingest.complete": "1", "ingest.line": str(lines)})
        out = {
            **self._counts,
            "documents": len(self._col),
            "manifest": None,
        }
        self._col.close()
        out["manifest"] = json.loads((self._col.path / MANIFEST).read_text())
        return out


__all__ = ["ShardedIngestReport", "ingest"]
