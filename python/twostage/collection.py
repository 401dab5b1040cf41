"""A collection: a folder holding documents, their embeddings and the HNSW index over them.

```
DIR/manifest.json   format version, encoder identity, index settings, counts, sequence numbers
DIR/store.sqlite    the source of truth (twostage.store.DocStore, SQLite WAL)
DIR/index.tsidx     a snapshot of the index, derived from the store, with the store sequence
                    number it reflects (recorded in the manifest)
DIR/lexical/        the BM25 index (twostage.lexical, tantivy), also derived from the store;
                    its state.json holds the sequence number it reflects
```

Opening a collection loads the snapshot and replays every change after its sequence number.
A snapshot that is missing or fails its check is rebuilt from the stored embeddings (no
re-encoding), and :attr:`Collection.recovery` says so. Opening with an encoder other than
the one that embedded the documents is refused: its vectors would live in another space.

>>> from twostage import Collection, Document
>>> from twostage.encoder import Encoder
>>> col = Collection.create("docs/", Encoder.load("minilm-l6"))  # doctest: +SKIP
>>> col.add([Document("d1", "HNSW is a graph index.")])  # doctest: +SKIP
>>> col.close()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from twostage._core import Index
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.errors import CorruptIndex, CorruptStore, EncoderMismatch, InvalidArgument
from twostage.lexical import LexicalIndex
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
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._path = path
        self._manifest = manifest
        self._encoder = encoder
        self._store = store
        self._index = index
        self._index_seq = index_seq
        self._lexical = lexical
        self._write_lock = threading.RLock()
        self._closed = False
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
        ef_search: int = 128,
        embedding_dtype: EmbeddingDtype | None = None,
        threads: int | None = None,
        lexical: bool = True,
    ) -> Collection:
        """A new, empty collection in folder ``path`` (created; must not hold one already).

        ``lexical=False`` leaves out the BM25 index (``first_stage="bm25"`` and ``"hybrid"``
        then raise); it costs about as much disk as the text and ~10 ms per write batch.

        ``dtype`` is the index's storage; the store keeps embeddings as ``embedding_dtype``
        (default: f32 for an f32 index, else f16, which is what an f16/i8 index holds anyway).

        >>> col = Collection.create("docs/", Encoder.load("minilm-l6"))  # doctest: +SKIP
        """
        folder = Path(path)
        if (folder / MANIFEST).exists() or (folder / STORE).exists():
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
        )
        folder.mkdir(parents=True, exist_ok=True)
        store = DocStore.create(folder / STORE, dim=encoder.dim, embedding_dtype=emb_dtype)
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
            "embedding_dtype": emb_dtype,
            "documents": 0,
            "seq": 0,
            "index": {"file": INDEX, "seq": 0},
            "lexical": _lexical_identity() if lexical else False,
            "created": now,
            "updated": now,
        }
        lex = LexicalIndex.create(folder / LEXICAL) if lexical else None
        _write_manifest(folder, manifest)
        return cls(folder, manifest, encoder, store, index, 0, None, lex)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        encoder: Encoder | None = None,
        *,
        threads: int | None = None,
    ) -> Collection:
        """Open the collection in ``path``.

        ``encoder`` defaults to the one named in the manifest (loaded from its built-in name
        or folder). An encoder whose fingerprint differs from the manifest's is refused with
        :class:`~twostage.errors.EncoderMismatch`.

        >>> col = Collection.open("docs/")  # doctest: +SKIP
        """
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
        store = DocStore.open(folder / STORE)
        index, index_seq, recovery = _open_index(folder, manifest, store, threads)
        lex, lex_recovery = _open_lexical(folder, manifest, store)
        if lex_recovery is not None:
            recovery = lex_recovery if recovery is None else f"{recovery}; {lex_recovery}"
        col = cls(folder, manifest, encoder, store, index, index_seq, recovery, lex)
        if recovery is not None:
            log.warning("%s: %s", folder, recovery)
            col.flush()
        return col

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
        self, docs: Sequence[Document], *, batch_size: int = 32, meta: dict[str, str] | None = None
    ) -> AddResult:
        """Embed and upsert ``docs``: an id that exists is replaced (its key is kept).

        The batch is validated and embedded before anything is written; the store commits it
        in one transaction, then the index takes the vectors.

        >>> col.add([Document("d1", "new text")]).updated  # doctest: +SKIP
        1
        """
        docs = _check_docs(docs)
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
            self._check_open()
            res = self._store.upsert(docs, vectors, tokens, meta=meta)
            self._index.add(res.keys, vectors)
            if self._lexical is not None:
                self._lexical.upsert(res.keys, [d.content for d in docs], seq=res.seq)
        return AddResult(res.inserted, res.updated + repeats, res.seq)

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete documents by id; returns how many. Unknown ids raise unless ``missing_ok``
        (and then nothing is deleted)."""
        with self._write_lock:
            self._check_open()
            keys = self._store.delete(ids, missing_ok=missing_ok)
            self._index.remove(keys, missing_ok=True)
            if self._lexical is not None and len(keys):
                self._lexical.remove(keys, seq=self._store.seq)
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

    def lexical_search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """BM25 top ``k``: index keys (uint64) and scores (float32), best first.

        Raises :class:`~twostage.errors.InvalidArgument` if the collection was created
        without a lexical index.
        """
        if self._lexical is None:
            raise InvalidArgument(
                f"collection {self._path} has no lexical (BM25) index: it was created with "
                "lexical=False"
            )
        return self._lexical.search(query, k)

    def embed_query(self, query: str) -> np.ndarray:
        """The query's vector, float32 ``[dim]``."""
        return self._encoder.encode([query], kind="query")[0]

    # ---- persistence ----
    def flush(self) -> None:
        """Write an index snapshot and the manifest, so the next open replays nothing."""
        with self._write_lock:
            self._check_open()
            seq = self._store.seq
            self._index.save(self._path / INDEX)
            self._index_seq = seq
            self._manifest.update(
                documents=len(self._store),
                seq=seq,
                index={"file": INDEX, "seq": seq},
                updated=_now(),
            )
            _write_manifest(self._path, self._manifest)

    def close(self) -> None:
        """Snapshot the index if it changed since the last one, then close the store."""
        if self._closed:
            return
        with self._write_lock:
            if self._store.seq != self._index_seq or self._manifest["documents"] != len(self):
                self.flush()
            self._closed = True
            self._store.close()

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
        )
        return out

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidArgument(f"collection {self._path} is closed")


# ---- helpers ------------------------------------------------------------------------------


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of the collection in ``folder``, checked for format and version."""
    path = folder / MANIFEST
    if not path.is_file():
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
    return m


def index_settings(manifest: dict[str, Any]) -> dict[str, Any]:
    """The index parameters a manifest records, as :meth:`Collection.create` takes them."""
    keys = ("metric", "dtype", "shards", "connectivity", "ef_construction", "ef_search")
    return {k: manifest[k] for k in keys}


def _open_index(
    folder: Path, manifest: dict[str, Any], store: DocStore, threads: int | None
) -> tuple[Index, int, str | None]:
    """Load the snapshot and replay later changes, or rebuild from the store."""
    path = folder / manifest["index"]["file"]
    reason = None
    index = None
    try:
        index = Index.load(path, threads=threads)
        want = (manifest["dim"], manifest["metric"], manifest["dtype"], manifest["shards"])
        got = (index.dim, index.metric, index.dtype, index.shards)
        if got != want:
            reason = (
                f"index file {path.name} has (dim, metric, dtype, shards) {got}, manifest {want}"
            )
            index = None
    except FileNotFoundError:
        reason = f"index file {path.name} is missing"
    except CorruptIndex as e:
        reason = f"index file {path.name} failed its check ({e})"
    if index is None:
        index = Index(manifest["dim"], **index_settings(manifest), threads=threads)
        seq = 0
    else:
        seq = int(manifest["index"]["seq"])
    t0 = time.perf_counter()
    upserts = deletes = 0
    for ch in store.changes_since(seq):
        if len(ch.keys):
            index.add(ch.keys, ch.vectors)
            upserts += len(ch.keys)
        if len(ch.deleted):
            deletes += index.remove(ch.deleted, missing_ok=True)
    took = time.perf_counter() - t0
    if reason is not None:
        reason += f"; rebuilt from {upserts} stored embeddings in {took:.1f} s (no re-encoding)"
    elif upserts or deletes:
        reason = (
            f"index snapshot was at change {seq}; replayed {upserts} upserts and {deletes} "
            f"deletes from the store in {took:.1f} s"
        )
    return index, seq, reason


def _lexical_identity() -> dict[str, Any]:
    from twostage import lexical

    return {"dir": LEXICAL, "kind": "bm25", "library": "tantivy", "analyzer": lexical.ANALYZER}


def _open_lexical(
    folder: Path, manifest: dict[str, Any], store: DocStore
) -> tuple[LexicalIndex | None, str | None]:
    """Open the BM25 index and replay later changes; rebuild it if missing or damaged.

    A manifest from before lexical indexes existed gets one built (and recorded).
    """
    spec = manifest.get("lexical")
    if spec is False:
        return None, None
    path = folder / LEXICAL
    reason = None
    lex = None
    if spec is None:
        reason = "this collection predates lexical indexes: BM25 index built"
        manifest["lexical"] = _lexical_identity()
    else:
        try:
            lex = LexicalIndex.open(path)
        except CorruptIndex as e:
            reason = f"lexical index rebuilt ({e})"
    if lex is None:
        lex = LexicalIndex.create(path)
    start = lex.seq
    if start >= store.seq and reason is None:
        return lex, None
    t0 = time.perf_counter()
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
    lex.remove([], seq=store.seq)  # records the sequence even when nothing was replayed
    took = time.perf_counter() - t0
    if reason is None:
        reason = f"lexical index was at change {start}; replayed {upserts} upserts"
        reason += f" and {deletes} deletes from the store in {took:.1f} s"
    else:
        reason += f" from {upserts} stored documents in {took:.1f} s"
    return lex, reason


def _encoder_identity(encoder: Encoder) -> dict[str, Any]:
    return {
        "name": encoder.name,
        "spec": encoder.spec,
        "precision": encoder.precision,
        "fingerprint": encoder.fingerprint,
        "max_length": encoder.max_length,
        "dim": encoder.dim,
    }


def _check_docs(docs: Sequence[Document]) -> list[Document]:
    if isinstance(docs, Document):
        raise InvalidArgument("docs must be a list of Document, not a single Document")
    out = list(docs)
    for i, d in enumerate(out):
        if not isinstance(d, Document):
            raise InvalidArgument(f"docs[{i}] is {type(d).__name__}, expected Document")
    return out


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / (MANIFEST + ".tmp")
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / MANIFEST)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


__all__ = ["AddResult", "Collection", "read_manifest"]
