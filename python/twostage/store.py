"""The document store: SQLite in WAL mode, the source of truth a collection's index derives from.

Each row holds a document's string id, its u64 index key, title, text, metadata (JSON), its
embedding (f16 or f32 little-endian blob), the reranker-side token ids (so a query never
re-tokenises candidates), and the sequence number of the change that wrote it. Deletes leave
a tombstone with their own sequence number, so an index snapshot taken at sequence ``s`` is
caught up by replaying every change after ``s``.

Readers get a connection per thread (WAL lets them read while one writer commits); writes go
through one connection under a lock, one transaction per batch, so a batch is all or nothing.

>>> import numpy as np
>>> from twostage.document import Document
>>> store = DocStore.create("store.sqlite", dim=2)  # doctest: +SKIP
>>> store.upsert([Document("a", "text")], np.ones((1, 2), np.float32))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from twostage.document import Document
from twostage.errors import CorruptStore, DimensionMismatch, InvalidArgument, KeyNotFound

SCHEMA_VERSION = 1
EmbeddingDtype = Literal["f16", "f32"]
_NP_EMB: dict[str, np.dtype[Any]] = {"f16": np.dtype("<f2"), "f32": np.dtype("<f4")}
_NP_TOK = np.dtype("<u4")
MAX_STORED_TOKENS = 512  # the longest pair any BERT-family reranker reads

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    key      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    title    TEXT NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT,
    emb      BLOB NOT NULL,
    tokens   BLOB,
    seq      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_seq ON docs(seq);
CREATE TABLE IF NOT EXISTS tombstones (
    key INTEGER PRIMARY KEY,
    id  TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tombstones_seq ON tombstones(seq);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class StoredDoc:
    """A document as stored, with its index key, token ids and the sequence of its last change."""

    key: int
    id: str
    title: str
    text: str
    metadata: dict[str, Any] | None
    tokens: list[int] | None
    seq: int

    def document(self) -> Document:
        """The user-facing :class:`~twostage.document.Document`."""
        return Document(self.id, self.text, self.title, self.metadata)


@dataclass(frozen=True)
class UpsertResult:
    """What a batch upsert did: keys in input order, how many rows were new or replaced."""

    keys: np.ndarray  # uint64, one per input document
    inserted: int
    updated: int
    seq: int  # the store's sequence number after the batch


@dataclass(frozen=True)
class Changes:
    """Everything after a sequence number: upserted keys with their vectors, deleted keys."""

    keys: np.ndarray  # uint64
    vectors: np.ndarray  # float32 [n, dim]
    deleted: np.ndarray  # uint64
    seq: int


class DocStore:
    """SQLite-backed documents, embeddings and change sequence numbers.

    Use :meth:`create` or :meth:`open`. Thread-safe: any thread may read, writes serialise.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._path = str(path)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._closed = False
        self._writer = self._connect()
        self._check_schema()
        self.dim = int(self.get_meta("dim"))
        dtype = self.get_meta("embedding_dtype")
        if dtype not in _NP_EMB:
            raise CorruptStore(f"{self._path}: unknown embedding dtype {dtype!r}")
        self.embedding_dtype: EmbeddingDtype = dtype  # type: ignore[assignment]
        self._emb_np = _NP_EMB[dtype]

    @classmethod
    def create(
        cls, path: str | os.PathLike[str], *, dim: int, embedding_dtype: EmbeddingDtype = "f32"
    ) -> DocStore:
        """A new, empty store at ``path`` (refused if a file is already there)."""
        if dim < 1:
            raise InvalidArgument(f"dim must be >= 1, not {dim}")
        if embedding_dtype not in _NP_EMB:
            raise InvalidArgument(
                f"embedding_dtype must be 'f16' or 'f32', not {embedding_dtype!r}"
            )
        if Path(path).exists():
            raise FileExistsError(f"a file already exists at {path}")
        conn = sqlite3.connect(str(path))
        try:
            with conn:
                conn.executescript(_SCHEMA)
                _init_meta(conn, dim, embedding_dtype)
        finally:
            conn.close()
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> DocStore:
        """An existing store; a file that is not one raises :class:`CorruptStore`."""
        if not Path(path).is_file():
            raise FileNotFoundError(f"no document store at {path}")
        return cls(path)

    # ---- connections ----
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a killed process loses nothing committed; a power cut may
            # lose the last transactions but never corrupts the file.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.DatabaseError as e:
            raise CorruptStore(f"{self._path}: not a twostage document store ({e})") from e
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise InvalidArgument(f"document store {self._path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    def _check_schema(self) -> None:
        try:
            row = self._writer.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        except sqlite3.DatabaseError as e:
            raise CorruptStore(f"{self._path}: not a twostage document store ({e})") from e
        if row is None:
            raise CorruptStore(f"{self._path}: no schema version (not a twostage store?)")
        if int(row[0]) != SCHEMA_VERSION:
            raise CorruptStore(
                f"{self._path}: store schema {row[0]}, this twostage reads {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        """Close the writer (and this thread's reader); further use raises."""
        if self._closed:
            return
        self._closed = True
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
        self._writer.close()

    @property
    def path(self) -> str:
        """Where the SQLite file lives."""
        return self._path

    # ---- meta ----
    def get_meta(self, name: str, default: str | None = None) -> str:
        """A value from the store's key/value table (ingest state, settings)."""
        row = self._reader().execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        if row is None:
            if default is None:
                raise KeyError(name)
            return default
        return str(row[0])

    def set_meta(self, values: dict[str, str]) -> None:
        """Set several meta values in one transaction."""
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                _set_meta(self._writer, values)
                self._writer.execute("COMMIT")
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise

    # ---- writes ----
    def upsert(
        self,
        docs: Sequence[Document],
        embeddings: np.ndarray,
        tokens: Sequence[Sequence[int]] | None = None,
        *,
        meta: dict[str, str] | None = None,
    ) -> UpsertResult:
        """Insert or replace ``docs`` with their embeddings (and reranker token ids).

        All in one transaction, together with ``meta`` (the ingest pipeline records its
        progress there, so progress and data commit together). A document id seen earlier in
        the same batch is replaced by the later one. An existing id keeps its index key.
        """
        emb = np.asarray(embeddings)
        if emb.ndim != 2 or emb.shape[0] != len(docs):
            raise DimensionMismatch(
                f"embeddings shape {emb.shape} does not match {len(docs)} documents"
            )
        if emb.shape[1] != self.dim:
            raise DimensionMismatch(
                f"embeddings have dim {emb.shape[1]}, the store holds {self.dim}"
            )
        if not np.isfinite(emb).all():
            bad = int(np.flatnonzero(~np.isfinite(emb).all(axis=1))[0])
            raise InvalidArgument(f"embedding of document {docs[bad].id!r} is not finite")
        if tokens is not None and len(tokens) != len(docs):
            raise InvalidArgument(f"{len(tokens)} token lists for {len(docs)} documents")
        for d in docs:
            if not isinstance(d, Document):
                raise InvalidArgument(f"expected Document, got {type(d).__name__}")
        stored = emb.astype(self._emb_np)
        if not np.isfinite(stored).all():
            bad = int(np.flatnonzero(~np.isfinite(stored).all(axis=1))[0])
            raise InvalidArgument(
                f"embedding of document {docs[bad].id!r} overflows {self.embedding_dtype} "
                "(values beyond ±65504): create the collection with embedding_dtype='f32'"
            )
        blobs = stored.tobytes()
        row_bytes = self.dim * self._emb_np.itemsize
        keys = np.empty(len(docs), dtype=np.uint64)
        inserted = updated = 0
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                seq = int(c.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0])
                for i, d in enumerate(docs):
                    seq += 1
                    tok = None
                    if tokens is not None:
                        tok = np.asarray(tokens[i][:MAX_STORED_TOKENS], dtype=_NP_TOK).tobytes()
                    meta_json = None if d.metadata is None else json.dumps(d.metadata)
                    emb_blob = blobs[i * row_bytes : (i + 1) * row_bytes]
                    row = c.execute("SELECT key FROM docs WHERE id=?", (d.id,)).fetchone()
                    if row is None:
                        cur = c.execute(
                            "INSERT INTO docs(id,title,text,metadata,emb,tokens,seq) "
                            "VALUES (?,?,?,?,?,?,?)",
                            (d.id, d.title, d.text, meta_json, emb_blob, tok, seq),
                        )
                        keys[i] = int(cur.lastrowid or 0)
                        inserted += 1
                    else:
                        c.execute(
                            "UPDATE docs SET title=?,text=?,metadata=?,emb=?,tokens=?,seq=? "
                            "WHERE key=?",
                            (d.title, d.text, meta_json, emb_blob, tok, seq, row[0]),
                        )
                        keys[i] = row[0]
                        updated += 1
                _set_meta(c, {"seq": str(seq), **(meta or {})})
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return UpsertResult(keys, inserted, updated, seq)

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> np.ndarray:
        """Delete by id; returns the freed keys. Unknown ids raise unless ``missing_ok``.

        Nothing is deleted when an id is unknown and ``missing_ok`` is false.
        """
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of strings, not a single string")
        ids = list(dict.fromkeys(ids))
        with self._write_lock:
            c = self._writer
            c.execute("BEGIN IMMEDIATE")
            try:
                found = self._keys_of(c, ids)
                missing = [i for i in ids if i not in found]
                if missing and not missing_ok:
                    raise KeyNotFound(
                        f"{len(missing)} unknown document id(s), nothing deleted: "
                        f"{', '.join(map(repr, missing[:5]))}"
                    )
                seq = int(c.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0])
                keys = []
                for doc_id, key in found.items():
                    seq += 1
                    c.execute("DELETE FROM docs WHERE key=?", (key,))
                    c.execute(
                        "INSERT OR REPLACE INTO tombstones(key,id,seq) VALUES (?,?,?)",
                        (key, doc_id, seq),
                    )
                    keys.append(key)
                _set_meta(c, {"seq": str(seq)})
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return np.asarray(keys, dtype=np.uint64)

    # ---- reads ----
    @staticmethod
    def _keys_of(conn: sqlite3.Connection, ids: Sequence[str]) -> dict[str, int]:
        out: dict[str, int] = {}
        for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
            part = ids[start : start + 500]
            q = f"SELECT id, key FROM docs WHERE id IN ({','.join('?' * len(part))})"
            out.update({r[0]: int(r[1]) for r in conn.execute(q, part)})
        return out

    def keys_of(self, ids: Sequence[str]) -> dict[str, int]:
        """Index keys of the ids that exist (unknown ids are absent from the result)."""
        return self._keys_of(self._reader(), list(ids))

    def get_many(
        self, keys: Sequence[int] | np.ndarray, *, tokens: bool = True
    ) -> list[StoredDoc | None]:
        """Documents by index key, in the order asked; ``None`` where a key is gone."""
        conn = self._reader()
        klist = [int(k) for k in keys]
        rows: dict[int, StoredDoc] = {}
        cols = "key,id,title,text,metadata,seq" + (",tokens" if tokens else "")
        for start in range(0, len(klist), 500):
            part = klist[start : start + 500]
            q = f"SELECT {cols} FROM docs WHERE key IN ({','.join('?' * len(part))})"
            for r in conn.execute(q, part):
                tok = None
                if tokens and r[6] is not None:
                    tok = np.frombuffer(r[6], dtype=_NP_TOK).tolist()
                rows[int(r[0])] = StoredDoc(
                    int(r[0]),
                    r[1],
                    r[2],
                    r[3],
                    None if r[4] is None else json.loads(r[4]),
                    tok,
                    int(r[5]),
                )
        return [rows.get(k) for k in klist]

    def get(self, ids: Sequence[str]) -> list[Document]:
        """Documents by id, in the order asked; an unknown id raises :class:`KeyNotFound`."""
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of strings, not a single string")
        ids = list(ids)
        keys = self.keys_of(ids)
        missing = [i for i in ids if i not in keys]
        if missing:
            raise KeyNotFound(f"unknown document id(s): {', '.join(map(repr, missing[:5]))}")
        got = self.get_many([keys[i] for i in ids], tokens=False)
        return [g.document() for g in got if g is not None]

    def embeddings(self, keys: Sequence[int] | np.ndarray) -> np.ndarray:
        """Stored embeddings (float32) by key; an unknown key raises :class:`KeyNotFound`."""
        conn = self._reader()
        klist = [int(k) for k in keys]
        found: dict[int, bytes] = {}
        for start in range(0, len(klist), 500):
            part = klist[start : start + 500]
            q = f"SELECT key, emb FROM docs WHERE key IN ({','.join('?' * len(part))})"
            found.update({int(r[0]): r[1] for r in conn.execute(q, part)})
        missing = [k for k in klist if k not in found]
        if missing:
            raise KeyNotFound(f"unknown key(s): {missing[:5]}")
        out = np.empty((len(klist), self.dim), dtype=np.float32)
        for i, k in enumerate(klist):
            out[i] = np.frombuffer(found[k], dtype=self._emb_np)
        return out

    def changes_since(self, seq: int, *, chunk: int = 16384) -> Iterator[Changes]:
        """Upserts and deletes after ``seq``, in chunks, for catching an index up.

        Each chunk is read in one snapshot; deletes come with the last chunk (applying them
        after upserts is right because a deleted key is never reused).
        """
        conn = self._reader()
        conn.execute("BEGIN")  # one read snapshot for the whole walk
        try:
            last = int(conn.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0])
            after_key = -1
            while True:
                rows = conn.execute(
                    "SELECT key, emb FROM docs WHERE seq > ? AND key > ? ORDER BY key LIMIT ?",
                    (seq, after_key, chunk),
                ).fetchall()
                keys = np.fromiter((r[0] for r in rows), dtype=np.uint64, count=len(rows))
                vecs = np.empty((len(rows), self.dim), dtype=np.float32)
                for i, r in enumerate(rows):
                    vecs[i] = np.frombuffer(r[1], dtype=self._emb_np)
                done = len(rows) < chunk
                deleted = np.empty(0, dtype=np.uint64)
                if done:
                    dk = conn.execute("SELECT key FROM tombstones WHERE seq > ?", (seq,)).fetchall()
                    deleted = np.asarray([r[0] for r in dk], dtype=np.uint64)
                yield Changes(keys, vecs, deleted, last)
                if done:
                    return
                after_key = int(rows[-1][0])
        finally:
            conn.execute("COMMIT")

    def __len__(self) -> int:
        row = self._reader().execute("SELECT COUNT(*) FROM docs").fetchone()
        return int(row[0])

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        q = "SELECT 1 FROM docs WHERE id=?"
        return self._reader().execute(q, (doc_id,)).fetchone() is not None

    @property
    def seq(self) -> int:
        """The sequence number of the last committed change."""
        return int(self.get_meta("seq"))

    def ids(self) -> Iterator[str]:
        """Every document id, in key order (streamed)."""
        conn = self._reader()
        after = -1
        while True:
            rows = conn.execute(
                "SELECT key, id FROM docs WHERE key > ? ORDER BY key LIMIT 4096", (after,)
            ).fetchall()
            if not rows:
                return
            yield from (r[1] for r in rows)
            after = int(rows[-1][0])

    def digest(self) -> str:
        """A hash of every document, embedding and token list, by id: equal stores, equal digest.

        Keys and sequence numbers are left out: two stores built in different orders hold the
        same collection when their documents and vectors agree.
        """
        import hashlib

        h = hashlib.sha256()
        conn = self._reader()
        for r in conn.execute(
            "SELECT id, title, text, COALESCE(metadata, ''), emb, COALESCE(tokens, x'') "
            "FROM docs ORDER BY id"
        ):
            for part in r:
                b = part.encode() if isinstance(part, str) else bytes(part)
                h.update(len(b).to_bytes(8, "little"))
                h.update(b)
        return h.hexdigest()


def _init_meta(conn: sqlite3.Connection, dim: int, embedding_dtype: str) -> None:
    _set_meta(
        conn,
        {
            "schema": str(SCHEMA_VERSION),
            "dim": str(dim),
            "embedding_dtype": embedding_dtype,
            "seq": "0",
        },
    )


def _set_meta(conn: sqlite3.Connection, values: dict[str, str]) -> None:
    conn.executemany(
        "INSERT INTO meta(name, value) VALUES (?, ?) "
        "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
        [(k, str(v)) for k, v in values.items()],
    )


__all__ = ["Changes", "DocStore", "StoredDoc", "UpsertResult"]
