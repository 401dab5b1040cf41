"""A collection: a folder holding documents, their embeddings and the HNSW index over them.

```
DIR/manifest.json   format version, encoder identity, index settings, counts, sequence numbers,
                    and the store the snapshot came from (its identity, sequence, top key)
DIR/store.sqlite    the source of truth (twostage.store.DocStore, SQLite WAL)
DIR/index.tsidx     a snapshot of the index, derived from the store, with the store sequence
                    number it reflects (recorded in the manifest)
DIR/lexical/        the BM25 index (twostage.lexical, tantivy), also derived from the store;
                    its state.json holds the sequence number it reflects
DIR/writer.lock     held (flock) by the one process that has the collection open for writing
```

Opening a collection loads the snapshot and replays every change after its sequence number.
A snapshot that is missing or fails its check is rebuilt from the stored embeddings (no
re-encoding), and :attr:`Collection.recovery` says so; so is one taken from another store, or
from a later state of this one (a store that went back in time: a lost ``-wal`` file, a
restored backup). Keys are never reissued: the manifest carries the highest key ever issued
and the store is moved past it on open. Opening with an encoder other than the one that
embedded the documents is refused: its vectors would live in another space.

One process writes a collection at a time (:mod:`twostage.lock`); others open it with
``read_only=True`` and see committed changes through :meth:`Collection.refresh`.

>>> from twostage import Collection, Document
>>> from twostage.encoder import Encoder
>>> col = Collection.create("docs/", Encoder.load("minilm-l6"))  # doctest: +SKIP
>>> col.add([Document("d1", "HNSW is a graph index.")])  # doctest: +SKIP
>>> col.close()  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage._core import Index
from twostage.document import Document, DocumentLike, as_document
from twostage.encoder import Encoder
from twostage.errors import (
    CorruptIndex,
    CorruptStore,
    EncoderMismatch,
    InvalidArgument,
    ReadOnlyCollection,
)
from twostage.filters import KeySet, MetadataIndex
from twostage.lexical import LexicalIndex
from twostage.lock import WriterLock
from twostage.store import DocStore, EmbeddingDtype, StoredDoc

log = logging.getLogger("twostage")

FORMAT = "twostage-collection"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
STORE = "store.sqlite"
INDEX = "index.tsidx"
LEXICAL = "lexical"


@dataclass(frozen=True)
class AddResult:
    """What :meth:`Collection.add` did."""

    inserted: int
    updated: int  # ids that already existed (an add is an upsert)
    seq: int


class Collection:
    """Documents, embeddings and an HNSW index in one folder. Thread-safe.

    Use :meth:`create` or :meth:`open`; close with :meth:`close` (or a ``with`` block),
    which writes an index snapshot so the next open needs no replay.
    """

    def __init__(
        self,
        path: Path,
        manifest: dict[str, Any],
        encoder: Encoder,
        store: DocStore,
        index: Index,
        index_seq: int,
        recovery: str | None,
        lexical: LexicalIndex | None = None,
        lock: WriterLock | None = None,
        applied: int | None = None,
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._path = path
        self._manifest = manifest
        self._encoder = encoder
        self._store = store
        self._index = index
        self._index_seq = index_seq
        # The store sequence the live index reflects: what a snapshot may claim. Only this
        # process's own writes (or a replay) move it.
        self._applied = index_seq if applied is None else applied
        self._lexical = lexical
        self._lock = lock
        self._write_lock = threading.RLock()
        self._closed = False
        # Metadata values by key, for filters: built on the first filtered search.
        self._meta: MetadataIndex | None = None
        self.recovery = recovery
        """Why the index was rebuilt or caught up on open, or ``None`` if it was current."""

    # ---- create / open ----
    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        encoder: Encoder,
        *,
        metric: str = "cos",
        dtype: str = "f16",
        shards: int = 1,
        connectivity: int = 16,
        ef_construction: int = 128,
        ef_search: int | None = None,
        rescore: bool = False,
        embedding_dtype: EmbeddingDtype | None = None,
        threads: int | None = None,
        lexical: bool = True,
        meta: dict[str, str] | None = None,
    ) -> Collection:
        """A new, empty collection in folder ``path`` (created; must not hold one already).

        ``meta`` goes into the store with its schema (what a build records about its source),
        so a creation killed at any point leaves either no collection or one that has it.

        ``lexical=False`` leaves out the BM25 index (``first_stage="bm25"`` and ``"hybrid"``
        then raise); it costs about as much disk as the text and ~10 ms per write batch.

        ``ef_search=None`` (the default) lets searches follow the collection's size: the
        index picks ``twostage.default_ef(documents, k)``, measured to keep recall@k at
        0.95 or more (a fixed number is kept as given).

        ``dtype`` is the index's storage; the store keeps embeddings as ``embedding_dtype``
        (default: f32 for an f32 index, else f16, which is what an f16/i8 index holds anyway).
        ``rescore=True`` (with ``dtype="i8"``) keeps f16 copies in the index file and re-scores
        each search's candidates with them: recall@100 0.99 at 1M in 0.56x of an f16 index's
        memory with ``connectivity=12`` (BENCHMARKS.md §1).

        >>> col = Collection.create("docs/", Encoder.load("minilm-l6"))  # doctest: +SKIP
        """
        folder = Path(path)
        if (folder / MANIFEST).exists():
            raise FileExistsError(f"{folder} already holds a collection; open it instead")
        if metric == "cos" and not encoder.normalize:
            log.info("encoder output is not normalised; the cos index normalises on add")
        emb_dtype: EmbeddingDtype = embedding_dtype or ("f32" if dtype == "f32" else "f16")
        index = Index(
            encoder.dim,
            metric=metric,
            dtype=dtype,
            connectivity=connectivity,
            ef_construction=ef_construction,
            ef_search=ef_search,
            shards=shards,
            threads=threads,
            rescore=rescore,
        )
        folder.mkdir(parents=True, exist_ok=True)
        lock = WriterLock.acquire(folder)
        try:
            # The manifest is written last: a folder with a store and no manifest is a
            # creation that was killed, with nothing in it yet. Start it over.
            if (folder / MANIFEST).exists():
                raise FileExistsError(f"{folder} already holds a collection; open it instead")
            _remove_unfinished(folder)
            store = DocStore.create(
                folder / STORE, dim=encoder.dim, embedding_dtype=emb_dtype, meta=meta
            )
        except BaseException:
            lock.release()
            raise
        now = _now()
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "encoder": _encoder_identity(encoder),
            "tokens": {"vocab": encoder.vocab_fingerprint},
            "dim": encoder.dim,
            "metric": index.metric,
            "dtype": index.dtype,
            "shards": index.shards,
            "connectivity": index.connectivity,
            "ef_construction": index.ef_construction,
            "ef_search": index.ef_search,
            "rescore": index.rescore,
            "embedding_dtype": emb_dtype,
            "documents": 0,
            "seq": 0,
            "index": {"file": INDEX, "seq": 0},
            "lexical": _lexical_identity() if lexical else False,
            "store": {"id": store.store_id, "seq": 0, "max_key": 0},
            "created": now,
            "updated": now,
        }
        try:
            lex = LexicalIndex.create(folder / LEXICAL) if lexical else None
            _write_manifest(folder, manifest)
        except BaseException:
            store.close()
            lock.release()
            raise
        return cls(folder, manifest, encoder, store, index, 0, None, lex, lock)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        encoder: Encoder | None = None,
        *,
        threads: int | None = None,
        read_only: bool = False,
        view: bool = False,
    ) -> Collection:
        """Open the collection in ``path``.

        ``encoder`` defaults to the one named in the manifest (loaded from its built-in name
        or folder). An encoder whose fingerprint differs from the manifest's is refused with
        :class:`~twostage.errors.EncoderMismatch`.

        A writable open holds the collection's writer lock until :meth:`close`; another
        writer raises :class:`~twostage.errors.CollectionLocked` naming the holder.
        ``read_only=True`` takes no lock and writes nothing, not even a repaired snapshot
        (repairs then live in memory only); :meth:`refresh` catches it up with what the
        writer committed since.

        ``view=True`` (read-only opens only) memory-maps the index snapshot
        (:meth:`Index.view <twostage.Index.view>`) instead of reading it into memory: the open
        costs milliseconds whatever the index's size, pages load as searches touch them, and
        processes on one machine share them. A view takes no writes, so when the store has
        changes after the snapshot (at open, or at a :meth:`refresh`) the snapshot is loaded
        into memory after all and they are replayed onto it.

        >>> col = Collection.open("docs/")  # doctest: +SKIP
        """
        if view and not read_only:
            raise InvalidArgument("view=True maps the index read-only: it needs read_only=True")
        folder = Path(path)
        manifest = read_manifest(folder)
        want = manifest["encoder"]
        if encoder is None:
            encoder = Encoder.load(
                want["spec"], precision=want["precision"], max_length=want["max_length"]
            )
        got = _encoder_identity(encoder)
        if got["fingerprint"] != want["fingerprint"]:
            raise EncoderMismatch(
                f"{folder} was embedded by encoder {want['name']} ({want['precision']}, "
                f"fingerprint {want['fingerprint']}); the encoder given is {got['name']} "
                f"({got['precision']}, fingerprint {got['fingerprint']}). Its query vectors "
                "would not be comparable to the stored ones: open with the same encoder, or "
                "build a new collection with this one."
            )
        if got["max_length"] != want["max_length"]:
            log.info(
                "encoder max_length %s differs from the build's %s",
                got["max_length"],
                want["max_length"],
            )
        lock = None if read_only else WriterLock.acquire(folder)
        try:
            store = DocStore.open(folder / STORE, read_only=read_only)
            try:
                col = cls._assemble(folder, manifest, encoder, store, threads, lock, view)
            except BaseException:
                store.close()
                raise
        except BaseException:
            if lock is not None:
                lock.release()
            raise
        if col.recovery is not None:
            log.warning("%s: %s", folder, col.recovery)
            if not read_only:
                try:
                    col.flush()
                except BaseException:
                    col._abandon()  # a full disk must not leave the folder locked
                    raise
        return col

    def _abandon(self) -> None:
        """Close without a snapshot and drop the lock (a failed open)."""
        self._closed = True
        self._store.close()
        if self._lock is not None:
            self._lock.release()

    @classmethod
    def _assemble(
        cls,
        folder: Path,
        manifest: dict[str, Any],
        encoder: Encoder,
        store: DocStore,
        threads: int | None,
        lock: WriterLock | None,
        view: bool = False,
    ) -> Collection:
        notes: list[str] = []
        behind = _store_behind(folder, manifest, store)
        if behind is not None:
            notes.append(behind)
        if lock is not None:
            # Keys are never reissued, even when SQLite's own high-water mark went back.
            floor = int((manifest.get("store") or {}).get("max_key", 0))
            if store.raise_key_floor(floor):
                notes.append(f"store's key counter moved up to {floor} (keys are never reused)")
        index, index_seq, applied, recovery = _open_index(
            folder, manifest, store, threads, rebuild=behind is not None, view=view
        )
        lex, lex_recovery = _open_lexical(
            folder, manifest, store, rebuild=behind is not None, read_only=lock is None
        )
        for r in (recovery, lex_recovery):
            if r is not None:
                notes.append(r)
        recovery = "; ".join(notes) or None
        return cls(folder, manifest, encoder, store, index, index_seq, recovery, lex, lock, applied)

    # ---- properties ----
    @property
    def path(self) -> Path:
        """The collection's folder."""
        return self._path

    @property
    def encoder(self) -> Encoder:
        """The encoder that embeds this collection's documents and queries."""
        return self._encoder

    @property
    def index(self) -> Index:
        """The live HNSW index (derived from the store)."""
        return self._index

    @property
    def lexical(self) -> LexicalIndex | None:
        """The BM25 index (derived from the store), or ``None`` if the collection has none."""
        return self._lexical

    @property
    def store(self) -> DocStore:
        """The document store (the source of truth)."""
        return self._store

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the manifest as last written."""
        return json.loads(json.dumps(self._manifest))

    @property
    def vocab_fingerprint(self) -> str:
        """Vocabulary of the stored token ids; a reranker with the same one reuses them."""
        return str(self._manifest["tokens"]["vocab"])

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._store

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        name = self._encoder.name
        return f"Collection({str(self._path)!r}, documents={len(self)}, encoder={name!r})"

    # ---- writes ----
    def add(
        self,
        docs: Sequence[DocumentLike],
        *,
        batch_size: int = 32,
        meta: dict[str, str] | None = None,
    ) -> AddResult:
        """Embed and upsert ``docs``: an id that exists is replaced (its key is kept).

        Each document is a :class:`~twostage.document.Document` or a dict with its keys
        (``id``, ``text``, ``title``, ``metadata``; :meth:`Document.from_dict`). The batch is
        validated and embedded before anything is written; the store commits it in one
        transaction, then the index takes the vectors.

        >>> col.add([Document("d1", "new text")]).updated  # doctest: +SKIP
        1
        >>> col.add([{"id": "d2", "text": "more", "metadata": {"n": 1}}]).inserted  # doctest: +SKIP
        1
        """
        docs = _check_docs(docs)
        self._check_writable()  # before the encoder spends its time on them
        if not docs:
            if meta:
                self._store.set_meta(meta)
            return AddResult(0, 0, self._store.seq)
        contents = [d.content for d in docs]
        vectors = self._encoder.encode(contents, batch_size=batch_size)
        tokens = self._encoder.token_ids(contents)
        return self.add_embedded(docs, vectors, tokens, meta=meta)

    def add_embedded(
        self,
        docs: Sequence[Document],
        vectors: np.ndarray,
        tokens: Sequence[Sequence[int]] | None = None,
        *,
        meta: dict[str, str] | None = None,
    ) -> AddResult:
        """Upsert documents whose embeddings were computed by this collection's encoder.

        For pipelines that embed elsewhere (the ingest pipeline, a GPU box). ``meta`` is
        committed in the same transaction (ingest progress).
        """
        docs = _check_docs(docs)
        # The index takes the vectors as the store keeps them, so that an index rebuilt or
        # caught up from the store holds exactly what the live one holds.
        vectors = np.asarray(vectors, dtype=np.float32)
        if self._store.embedding_dtype == "f16" and np.isfinite(vectors).all():
            vectors = vectors.astype(np.float16).astype(np.float32)
        vectors = np.ascontiguousarray(vectors)
        if self._manifest["metric"] == "cos" and len(vectors):
            norms = np.linalg.norm(vectors, axis=1)
            if (norms == 0).any():
                bad = docs[int(np.flatnonzero(norms == 0)[0])].id
                raise InvalidArgument(f"document {bad!r} has a zero embedding (no cos direction)")
        # A later duplicate in the batch wins, as in the store: keep the last occurrence.
        last = {d.id: i for i, d in enumerate(docs)}
        repeats = len(docs) - len(last)
        if repeats:
            rows = sorted(last.values())
            docs = [docs[i] for i in rows]
            vectors = vectors[rows]
            tokens = None if tokens is None else [tokens[i] for i in rows]
        with self._write_lock:
            self._check_writable()
            res = self._store.upsert(docs, vectors, tokens, meta=meta)
            if self._meta is not None:  # the metadata as the store returns it: through JSON
                self._meta.upsert(
                    res.keys,
                    [
                        None if d.metadata is None else json.loads(json.dumps(d.metadata))
                        for d in docs
                    ],
                )
            self._index.add(res.keys, vectors)
            self._applied = res.seq
            if self._lexical is not None:
                self._lexical.upsert(res.keys, [d.content for d in docs], seq=res.seq)
        return AddResult(res.inserted, res.updated + repeats, res.seq)

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete documents by id; returns how many. Unknown ids raise unless ``missing_ok``
        (and then nothing is deleted)."""
        with self._write_lock:
            self._check_writable()
            keys = self._store.delete(ids, missing_ok=missing_ok)
            if self._meta is not None:
                self._meta.remove(keys)
            self._index.remove(keys, missing_ok=True)
            seq = self._store.seq  # no other process writes: we hold the writer lock
            self._applied = seq
            if self._lexical is not None and len(keys):
                self._lexical.remove(keys, seq=seq)
        return len(keys)

    # ---- reads ----
    def get(self, ids: Sequence[str]) -> list[Document]:
        """Documents by id, in the order asked; an unknown id raises ``KeyNotFound``."""
        return self._store.get(ids)

    def fetch(
        self, keys: Sequence[int] | np.ndarray, *, tokens: bool = True
    ) -> list[StoredDoc | None]:
        """Stored documents by index key (``None`` where one was deleted meanwhile)."""
        return self._store.get_many(keys, tokens=tokens)

    def matching(self, filter: dict[str, Any]) -> KeySet | None:
        """The keys of the documents whose metadata matches ``filter`` (equality; a list
        value matches any of its items; see :mod:`twostage.filters`), or ``None`` when a
        filter value is not JSON and has to be checked document by document.

        The first call builds the metadata index from the store (one pass over its
        metadata column); every write keeps it in step after that.

        >>> col.matching({"lang": "en"}).count  # doctest: +SKIP
        1
        """
        meta = self._meta
        if meta is None:
            with self._write_lock:
                self._check_open()
                if self._meta is None:
                    self._meta = MetadataIndex.build(self._store.metadata())
                meta = self._meta
        return meta.select(filter)

    def lexical_search(
        self, query: str, k: int, *, allowed: KeySet | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top ``k``: index keys (uint64) and scores (float32), best first; only
        ``allowed`` keys (from :meth:`matching`) if given.

        Raises :class:`~twostage.errors.InvalidArgument` if the collection was created
        without a lexical index.
        """
        if self._lexical is None:
            raise InvalidArgument(
                f"collection {self._path} has no lexical (BM25) index: it was created with "
                "lexical=False"
            )
        return self._lexical.search(query, k, allowed=allowed)

    def embed_query(self, query: str) -> np.ndarray:
        """The query's vector, float32 ``[dim]``."""
        return self._encoder.encode([query], kind="query")[0]

    # ---- persistence ----
    def flush(self) -> None:
        """Write an index snapshot and the manifest, so the next open replays nothing.

        The snapshot is labelled with the changes its index applied, the store's identity
        and the highest key the store has issued (a store that later goes back is caught).
        """
        with self._write_lock:
            self._check_writable()
            seq = self._applied
            self._index.save(self._path / INDEX)
            self._index_seq = seq
            self._manifest.update(
                documents=len(self._store),
                seq=seq,
                index={"file": INDEX, "seq": seq},
                store={
                    "id": self._store.store_id,
                    "seq": seq,
                    "max_key": self._store.max_key(),
                },
                updated=_now(),
            )
            _write_manifest(self._path, self._manifest)

    def refresh(self) -> int:
        """Catch up with changes committed since this index last applied one (another
        process's writes, for a read-only open); returns how many changes were applied.

        >>> reader = Collection.open("docs/", read_only=True)  # doctest: +SKIP
        >>> reader.refresh()  # doctest: +SKIP
        3
        """
        with self._write_lock:
            self._check_open()
            if self._store.seq == self._applied:
                return 0
            start = self._applied
            if self._index.read_only:
                # A mapped snapshot takes no writes: the newest snapshot, loaded, takes the
                # replay (it holds at least what the view did: the writer replaces the file
                # before it records it, and replaying a change twice leaves the same index).
                self._index = _open_index(self._path, self._manifest, self._store, None)[0]
            n = 0
            for ch in self._store.changes_since(start):
                if len(ch.keys):
                    self._index.add(ch.keys, ch.vectors)
                    if self._meta is not None:
                        _catch_up_meta(self._meta, self._store, ch.keys)
                if len(ch.deleted):
                    self._index.remove(ch.deleted, missing_ok=True)
                    if self._meta is not None:
                        self._meta.remove(ch.deleted)
                n += len(ch.keys) + len(ch.deleted)
                self._applied = ch.seq
            if self._lexical is not None:
                if self._lock is None and self._lexical.path is not None:
                    self._lexical.reload()  # the writer keeps the one on disk current
                else:  # ours, or one a read-only open rebuilt in memory
                    _catch_up_lexical(self._lexical, self._store, start)
            return n

    @property
    def read_only(self) -> bool:
        """Whether this open may write (it holds the writer lock) or only read."""
        return self._lock is None

    def close(self) -> None:
        """Snapshot the index if it changed since the last one, close the store and drop
        the writer lock."""
        if self._closed:
            return
        with self._write_lock:
            try:
                if self._lock is not None and (
                    self._applied != self._index_seq or self._manifest["documents"] != len(self)
                ):
                    self.flush()
            finally:
                self._closed = True
                self._store.close()
                if self._lock is not None:
                    self._lock.release()

    def check(self, *, full: bool = True) -> list[str]:
        """Look for damage and disagreement: the problems found, ``[]`` when all is sound.

        The store's SQLite ``integrity_check`` (``quick_check`` unless ``full``), the index
        snapshot's checksum, the snapshot against the store it names, every stored key in
        the live index (and nothing else there), and the BM25 index's count and sequence.
        ``twostage index check DIR`` runs it.

        >>> Collection.open("docs/", read_only=True).check()  # doctest: +SKIP
        []
        """
        with self._write_lock:
            self._check_open()
            problems = [f"{STORE}: {p}" for p in self._store.check(full=full)]
            if problems:
                return problems  # nothing else can be trusted to read it
            path = self._path / self._manifest["index"]["file"]
            try:
                Index.read_header(path)
                if full:
                    Index.load(path)  # the checksum covers the whole file
            except FileNotFoundError:
                problems.append(f"{path.name}: missing (the next writable open rebuilds it)")
            except (CorruptIndex, OSError) as e:
                problems.append(f"{path.name}: {e}")
            behind = _store_behind(self._path, self._manifest, self._store)
            if behind is not None:
                problems.append(behind)
            self.refresh()
            stored = 0
            missing: list[int] = []
            for key in self._store.keys():
                stored += 1
                if key not in self._index and len(missing) < 5:
                    missing.append(key)
            if missing:
                problems.append(f"stored keys missing from the index: {missing}")
            if len(self._index) != stored:
                problems.append(f"the index holds {len(self._index)} keys, the store {stored}")
            if self._lexical is not None:
                try:
                    self._lexical.verify()
                except CorruptIndex as e:
                    problems.append(str(e))
                if len(self._lexical) != stored:
                    problems.append(
                        f"{LEXICAL}/: BM25 holds {len(self._lexical)} documents, the store {stored}"
                    )
            return problems

    def info(self) -> dict[str, Any]:
        """The manifest with live counts: documents, sequence number, index size and memory."""
        out = self.manifest
        out.update(
            path=str(self._path),
            documents=len(self._store),
            seq=self._store.seq,
            indexed=len(self._index),
            lexical_indexed=None if self._lexical is None else len(self._lexical),
            index_memory_bytes=self._index.memory_usage,
            hardware_acceleration=self._index.hardware_acceleration,
            # What a top-100 search runs with now (ef_search None: it follows the size).
            search_ef_k100=self._index.search_ef(100),
        )
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"collection {self._path} is closed")

    def _check_writable(self) -> None:
        self._check_open()
        if self._lock is None:
            raise ReadOnlyCollection(
                f"collection {self._path} is open read-only (one writer per collection): send "
                "writes to the process that has it open for writing, or open it without "
                "read_only=True"
            )


# ---- helpers ------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the collection in ``folder``, checked for format and version."""
    path = folder / MANIFEST
    if not path.is_file():
        if path.is_dir():
            raise CorruptStore(f"{path} is a directory, not a collection manifest")
        if (folder / STORE).exists():
            raise FileNotFoundError(
                f"{folder} is not a twostage collection yet: its creation was interrupted before "
                f"{MANIFEST} was written. Run the same `twostage index build` again to start "
                "it over"
            )
        raise FileNotFoundError(f"{folder} is not a twostage collection: no {MANIFEST}")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CorruptStore(f"{path}: unreadable manifest ({e})") from e
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise CorruptStore(f"{path}: not a twostage collection manifest")
    if m.get("version") != FORMAT_VERSION:
        raise CorruptStore(
            f"{path}: collection format version {m.get('version')}, this twostage reads "
            f"{FORMAT_VERSION}"
        )
    for key in ("encoder", "dim", "metric", "dtype", "shards", "index", "tokens"):
        if key not in m:
            raise CorruptStore(f"{path}: manifest lacks {key!r}")
    _check_manifest_values(path, m)
    return m


def _check_manifest_values(path: Path, m: dict[str, Any]) -> None:
    """Numbers must be numbers: a hand-edited or damaged manifest names its bad field."""

    def whole(where: str, value: Any, low: int = 0) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise CorruptStore(f"{path}: {where} must be a whole number >= {low}, not {value!r}")

    whole("dim", m["dim"], 1)
    whole("shards", m["shards"], 1)
    for key in ("seq", "documents", "connectivity", "ef_construction", "ef_search"):
        # ef_search null: searches follow the index's size (Collection.create's default).
        if key in m and not (key == "ef_search" and m[key] is None):
            whole(key, m[key])
    if not isinstance(m.get("rescore", False), bool):
        raise CorruptStore(f"{path}: rescore must be true or false, not {m['rescore']!r}")
    idx = m["index"]
    if not isinstance(idx, dict) or not isinstance(idx.get("file"), str) or "/" in idx["file"]:
        raise CorruptStore(f"{path}: index must be {{'file': NAME, 'seq': N}}, not {idx!r}")
    whole("index.seq", idx.get("seq"))
    st = m.get("store")
    if st is not None:
        if not isinstance(st, dict) or not isinstance(st.get("id"), str):
            raise CorruptStore(f"{path}: store must be {{'id', 'seq', 'max_key'}}, not {st!r}")
        whole("store.seq", st.get("seq"))
        whole("store.max_key", st.get("max_key"))


def index_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The index parameters a manifest records, as :meth:`Collection.create` takes them."""
    keys = ("metric", "dtype", "shards", "connectivity", "ef_construction", "ef_search")
    # Manifests written before re-scoring reached collections have no "rescore": none had it.
    return {**{k: manifest[k] for k in keys}, "rescore": manifest.get("rescore", False)}


def _remove_unfinished(folder: Path) -> None:
    """Clear what a creation killed before its manifest left (under the writer lock)."""
    store = folder / STORE
    if not store.exists():
        return
    try:
        with contextlib.closing(DocStore.open(store, read_only=True)) as s:
            if len(s):
                raise FileExistsError(
                    f"{folder} holds a document store with {len(s)} documents but no "
                    f"{MANIFEST}: it is not a collection this twostage made; move it away"
                )
    except CorruptStore:
        pass  # a creation killed while SQLite made the file: nothing in it to keep
    log.warning("%s: clearing an interrupted creation (an empty store, no manifest)", folder)
    for name in (STORE, STORE + "-wal", STORE + "-shm", INDEX):
        (folder / name).unlink(missing_ok=True)
    if (folder / LEXICAL).is_dir():
        shutil.rmtree(folder / LEXICAL)


def _store_behind(folder: Path, manifest: dict[str, Any], store: DocStore) -> str | None:
    """Why the derived indexes cannot trust the store's sequence numbers, if they can't."""
    snap = int(manifest["index"]["seq"])
    rec = manifest.get("store") or {}
    sid = store.store_id
    if rec.get("id") and sid and rec["id"] != sid:
        return (
            f"{STORE} is not the store the index snapshot was taken from (identity {sid}, "
            f"the snapshot's {rec['id']}): index and BM25 rebuilt from the store"
        )
    if store.seq < snap:
        return (
            f"{STORE} is behind its index snapshot (store at change {store.seq}, snapshot at "
            f"{snap}): its last {snap - store.seq} changes were lost (a deleted "
            f"{STORE}-wal, or a restored backup); index and BM25 rebuilt from the store"
        )
    return None


def _layout(index: Index) -> tuple[Any, ...]:
    return (index.dim, index.metric, index.dtype, index.shards, index.rescore)


def _layout_of(manifest: dict[str, Any]) -> tuple[Any, ...]:
    settings = index_settings(manifest)
    return (manifest["dim"], *(settings[k] for k in ("metric", "dtype", "shards", "rescore")))


def _open_index(
    folder: Path,
    manifest: dict[str, Any],
    store: DocStore,
    threads: int | None,
    *,
    rebuild: bool = False,
    view: bool = False,
) -> tuple[Index, int, int, str | None]:
    """Load the snapshot and replay later changes, or rebuild from the store. ``view``: map
    the snapshot instead when the store has nothing after it.

    Returns the index, the snapshot's sequence, the sequence the index now reflects, and
    why it was rebuilt or caught up (``None`` if the snapshot was current).
    """
    path = folder / manifest["index"]["file"]
    reason = None
    index = None
    if path.is_dir():
        raise CorruptIndex(
            f"{path} is a directory, not an index file: remove it (the next open rebuilds the "
            "index from the store)"
        )
    if view and not rebuild and store.seq == int(manifest["index"]["seq"]):
        with contextlib.suppress(FileNotFoundError, CorruptIndex, OSError):
            mapped = Index.view(path, threads=threads)
            if _layout(mapped) == _layout_of(manifest):
                return mapped, store.seq, store.seq, None
        # Not viewable as it is: the load below says why, and repairs it in memory.
    if not rebuild:
        try:
            index = Index.load(path, threads=threads)
            want, got = _layout_of(manifest), _layout(index)
            if got != want:
                reason = (
                    f"index file {path.name} has (dim, metric, dtype, shards, rescore) {got}, "
                    f"manifest {want}"
                )
                index = None
        except FileNotFoundError:
            reason = f"index file {path.name} is missing"
        except CorruptIndex as e:
            reason = f"index file {path.name} failed its check ({e})"
        except OSError as e:
            reason = f"index file {path.name} is unreadable ({e.strerror or e})"
    if index is None:
        index = Index(manifest["dim"], **index_settings(manifest), threads=threads)
        seq = 0
    else:
        seq = int(manifest["index"]["seq"])
    t0 = time.perf_counter()
    upserts = deletes = 0
    applied = seq
    for ch in store.changes_since(seq):
        if len(ch.keys):
            index.add(ch.keys, ch.vectors)
            upserts += len(ch.keys)
        if len(ch.deleted):
            deletes += index.remove(ch.deleted, missing_ok=True)
        applied = ch.seq
    took = time.perf_counter() - t0
    if rebuild:
        reason = f"index rebuilt from {upserts} stored embeddings in {took:.1f} s"
    elif reason is not None:
        reason += f"; rebuilt from {upserts} stored embeddings in {took:.1f} s (no re-encoding)"
    elif upserts or deletes:
        reason = (
            f"index snapshot was at change {seq}; replayed {upserts} upserts and {deletes} "
            f"deletes from the store in {took:.1f} s"
        )
    return index, seq, applied, reason


def _lexical_identity() -> dict[str, Any]:
    from twostage import lexical

    return {"dir": LEXICAL, "kind": "bm25", "library": "tantivy", "analyzer": lexical.ANALYZER}


def _open_lexical(
    folder: Path,
    manifest: dict[str, Any],
    store: DocStore,
    *,
    rebuild: bool = False,
    read_only: bool = False,
) -> tuple[LexicalIndex | None, str | None]:
    """Open the BM25 index and replay later changes; rebuild it if missing or damaged.

    A manifest from before lexical indexes existed gets one built (and recorded). Read-only,
    nothing on disk changes: a BM25 index that needs a rebuild is built in memory.
    """
    spec = manifest.get("lexical")
    if spec is False:
        return None, None
    path = folder / LEXICAL
    reason = None
    lex = None
    if spec is None:
        reason = "this collection predates lexical indexes: BM25 index built"
        if not read_only:
            manifest["lexical"] = _lexical_identity()
    elif not rebuild:
        try:
            lex = LexicalIndex.open(path)
        except CorruptIndex as e:
            reason = f"lexical index rebuilt ({e})"
        if lex is not None and lex.seq > store.seq:
            reason = (
                f"lexical index was at change {lex.seq}, beyond the store's {store.seq}: rebuilt"
            )
            lex = None
    if read_only and lex is not None:
        if lex.seq < store.seq:
            return lex, f"lexical index is at change {lex.seq}, the store at {store.seq}"
        return lex, None
    if lex is None:
        lex = LexicalIndex.in_memory() if read_only else LexicalIndex.create(path)
        if rebuild:
            reason = "lexical index rebuilt"
    start = lex.seq
    if start >= store.seq and reason is None:
        return lex, None
    t0 = time.perf_counter()
    upserts, deletes = _catch_up_lexical(lex, store, start)
    took = time.perf_counter() - t0
    if reason is None:
        reason = f"lexical index was at change {start}; replayed {upserts} upserts"
        reason += f" and {deletes} deletes from the store in {took:.1f} s"
    else:
        reason += f" from {upserts} stored documents in {took:.1f} s"
    if read_only:
        reason += " (in memory: read-only)"
    return lex, reason


def _catch_up_meta(meta: MetadataIndex, store: DocStore, keys: np.ndarray) -> None:
    """Set the metadata of ``keys`` from the store (a key gone from it since is cleared)."""
    found = dict(store.metadata(keys))
    meta.upsert(
        keys,
        [None if (t := found.get(int(k))) is None else json.loads(t) for k in keys.tolist()],
    )


def _catch_up_lexical(lex: LexicalIndex, store: DocStore, start: int) -> tuple[int, int]:
    """Replay the store's changes after ``start`` into ``lex``: (upserts, deletes)."""
    upserts = deletes = 0
    for ch in store.changes_since(start):
        if len(ch.keys):
            docs = store.get_many(ch.keys, tokens=False)
            live = [(k, d) for k, d in zip(ch.keys.tolist(), docs, strict=True) if d is not None]
            lex.upsert([k for k, _ in live], [d.document().content for _, d in live], seq=ch.seq)
            upserts += len(live)
        if len(ch.deleted):
            lex.remove(ch.deleted, seq=ch.seq)
            deletes += len(ch.deleted)
        lex.remove([], seq=ch.seq)  # records the sequence even when nothing was replayed
    return upserts, deletes


def _encoder_identity(encoder: Encoder) -> dict[str, Any]:
    return {
        "name": encoder.name,
        "spec": encoder.spec,
        "precision": encoder.precision,
        "fingerprint": encoder.fingerprint,
        "max_length": encoder.max_length,
        "dim": encoder.dim,
    }


def _check_docs(docs: Sequence[DocumentLike]) -> list[Document]:
    if isinstance(docs, (Document, dict, str, bytes)):
        raise InvalidArgument(
            f"docs must be a list of documents (Document or dict), not a single "
            f"{type(docs).__name__}"
        )
    return [as_document(d, f"docs[{i}]") for i, d in enumerate(docs)]


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)
    # The rename itself survives a power cut only once the folder's entry is on disk.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["AddResult", "Collection", "read_manifest"]
