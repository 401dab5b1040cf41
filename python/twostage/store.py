"""The document store: SQLite in WAL mode, the source of truth a collection's index derives from.

Each row holds a document's string id, its u64 index key, title, text, metadata (JSON), its
embedding (f16 or f32 little-endian blob), the reranker-side token ids (so a query never
re-tokenises candidates), and the sequence number of the change that wrote it. Deletes leave
a tombstone with their own sequence number, so an index snapshot taken at sequence ``s`` is
caught up by replaying every change after ``s``.

Readers get a connection per thread (WAL lets them read while one writer commits); writes go
through one connection under a lock, one transaction per batch, so a batch is all or nothing.

Durability: ``synchronous=FULL``, so a write that returned is on disk (the WAL is fsynced at
every commit), across power loss as well as a killed process; it costs one fsync per batch
(BENCHMARKS.md / RELIABILITY.md have the figure). After each commit the store checks that the
files it writes are still the ones in the folder: a ``store.sqlite-wal`` deleted under a live
process would silently swallow every later write, so the store checkpoints what the unlinked
WAL holds into ``store.sqlite`` and reopens. Damage SQLite reports is raised as
:class:`~twostage.errors.CorruptStore` naming the file, never a raw ``sqlite3`` error.

>>> import numpy as np
>>> from twostage.document import Document
>>> store = DocStore.create("store.sqlite", dim=2)  # doctest: +SKIP
>>> store.upsert([Document("a", "text")], np.ones((1, 2), np.float32))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import logging
import os
import sqlite3
import threading
import uuid
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

import numpy as np

from twostage.document import Document
from twostage.errors import CorruptStore, DimensionMismatch, InvalidArgument, KeyNotFound

log = logging.getLogger("twostage")

SCHEMA_VERSION = 1
EmbeddingDtype = Literal["f16", "f32"]
_NP_EMB: dict[str, np.dtype[Any]] = {"f16": np.dtype("<f2"), "f32": np.dtype("<f4")}
_NP_TOK = np.dtype("<u4")
MAX_STORED_TOKENS = 512  # the longest pair any BERT-family reranker reads
# Stores up to this size get SQLite's quick_check on open (about 0.1 s per 100 MiB here);
# bigger ones are checked by `twostage index check` and by every read as it goes.
QUICK_CHECK_BYTES = 256 << 20
_P = ParamSpec("_P")
_R = TypeVar("_R")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS docs (
    key      INTEGER PRIMARY KEY AUTOINCREMENT,
    id       TEXT NOT NULL UNIQUE,
    title    TEXT NOT NULL,
    text     TEXT NOT NULL,
    metadata TEXT,
    emb      BLOB NOT NULL,
    tokens   BLOB,
    seq      INTEGER NOT NULL,
    crc      INTEGER
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


def _guarded(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """Raise SQLite's reports of damage as :class:`CorruptStore` naming the file."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return fn(*args, **kwargs)
        except sqlite3.DatabaseError as e:
            store = args[0]
            assert isinstance(store, DocStore)
            raise store._damage(e) from e

    return wrapper


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

    def __init__(
        self, path: str | os.PathLike[str], *, read_only: bool = False, check: bool = True
    ) -> None:
        """Internal: use :meth:`create` or :meth:`open`."""
        self._path = str(path)
        self.read_only = read_only
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._closed = False
        # Bumped when the writer reconnects (a replaced WAL): readers reconnect too.
        self._generation = 0
        self._broken: str | None = None
        if check:
            _check_header(self._path)
        self._writer = self._connect()
        try:
            self._setup(check)
        except BaseException:
            self.close()  # a refused open leaves no connection behind
            raise

    def _setup(self, check: bool) -> None:
        read_only = self.read_only
        self._files = self._file_ids()
        self._check_schema()
        try:
            self.dim = int(self.get_meta("dim"))
            int(self.get_meta("seq"))
        except (KeyError, ValueError) as e:
            raise CorruptStore(f"{self._path}: unreadable store settings ({e!r})") from None
        dtype = self.get_meta("embedding_dtype")
        if dtype not in _NP_EMB:
            raise CorruptStore(f"{self._path}: unknown embedding dtype {dtype!r}")
        self.embedding_dtype: EmbeddingDtype = dtype  # type: ignore[assignment]
        self._emb_np = _NP_EMB[dtype]
        if check and os.path.getsize(self._path) <= QUICK_CHECK_BYTES:
            problems = self.check(full=False)
            if problems:
                raise CorruptStore(
                    f"{self._path} is damaged (SQLite quick_check: {'; '.join(problems[:3])}). "
                    "Restore it from a backup, or rebuild the collection from its source."
                )
        cols = {r[1] for r in self._writer.execute("PRAGMA table_info(docs)")}
        if "crc" not in cols and not read_only:
            # Stores from before row checksums: rows written from now on carry one.
            self._writer.execute("ALTER TABLE docs ADD COLUMN crc INTEGER")
            cols.add("crc")
        self._crc_col = "crc" if "crc" in cols else "NULL"
        if not read_only and self.get_meta("store_id", "") == "":
            # Stores from before identities existed get one on their first writable open.
            self.set_meta({"store_id": uuid.uuid4().hex})

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        *,
        dim: int,
        embedding_dtype: EmbeddingDtype = "f32",
        meta: dict[str, str] | None = None,
    ) -> DocStore:
        """A new, empty store at ``path`` (refused if a file is already there).

        ``meta`` is written in the same transaction as the schema: a build that records what
        it reads there can never leave a store without that record.
        """
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
                _set_meta(conn, {"store_id": uuid.uuid4().hex, **(meta or {})})
        finally:
            conn.close()
        return cls(path)

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], *, read_only: bool = False, check: bool = True
    ) -> DocStore:
        """An existing store; a file that is not one, or a damaged one, raises
        :class:`CorruptStore`.

        ``check`` runs the cheap checks (the file header; SQLite's quick_check for stores up
        to 256 MiB). ``read_only`` refuses writes (the process does not hold the collection's
        writer lock).
        """
        p = Path(path)
        if p.is_dir():
            raise CorruptStore(f"{path} is a directory, not a document store")
        if not p.is_file():
            raise FileNotFoundError(f"no document store at {path}")
        return cls(path, read_only=read_only, check=check)

    # ---- connections ----
    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so an acknowledged write survives a
            # power cut too (NORMAL survives only a killed process). One fsync per batch.
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.DatabaseError as e:
            raise CorruptStore(f"{self._path}: not a twostage document store ({e})") from e
        return conn

    def _reader(self) -> sqlite3.Connection:
        if self._closed:
            raise InvalidArgument(f"document store {self._path} is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None and getattr(self._local, "generation", 0) != self._generation:
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            self._local.generation = self._generation
        return conn

    def _damage(self, e: sqlite3.DatabaseError) -> Exception:
        """The error for what SQLite reported: damage, or a lock held too long."""
        msg = str(e)
        if isinstance(e, sqlite3.OperationalError) and "locked" in msg:
            return CorruptStore(
                f"{self._path} stayed locked by another connection for over 10 s ({msg})"
            )
        return CorruptStore(
            f"{self._path} is damaged ({msg}): run `twostage index check` on its folder; "
            "restore it from a backup or rebuild the collection from its source"
        )

    def _file_ids(self) -> dict[str, tuple[int, int] | None]:
        """(device, inode) of the database and its WAL as this process opened them."""
        out: dict[str, tuple[int, int] | None] = {}
        for suffix in ("", "-wal"):
            try:
                st = os.stat(self._path + suffix)
                out[suffix] = (st.st_dev, st.st_ino)
            except FileNotFoundError:
                out[suffix] = None
        return out

    def _check_files(self) -> None:
        """After a commit: are the files SQLite writes still the ones in the folder?

        Deleting ``store.sqlite-wal`` under a live process goes unnoticed by SQLite, which
        keeps appending to the unlinked file: every later write would vanish at the next
        open. Copy what the old WAL holds into the database (a checkpoint), then reconnect
        so a new WAL is made. Called under the write lock.
        """
        now = self._file_ids()
        if now == self._files:
            return
        if self._files[""] != now[""]:
            self._broken = (
                f"{self._path} was deleted or replaced while this process had it open; "
                "writes are refused: restart the process"
            )
            raise CorruptStore(self._broken)
        if self._files["-wal"] is None and now["-wal"] is not None:
            self._files = now  # the first write made the WAL
            return
        # The WAL is gone or replaced. Readers holding old snapshots would stop a full
        # checkpoint: reconnect them first (the generation), then wait for them.
        log.warning(
            "%s-wal was deleted or replaced under this process (was %s, now %s): saving "
            "its commits into the database and starting a new one",
            self._path,
            self._files["-wal"],
            now["-wal"],
        )
        self._generation += 1
        busy, frames, done = self._writer.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        if busy or frames != done:
            self._broken = (
                f"{self._path}-wal was deleted under this process and its last writes could "
                f"not be saved into the database ({done} of {frames} pages); writes are "
                "refused: restart the process"
            )
            raise CorruptStore(self._broken)
        self._writer.close()
        self._writer = self._connect()
        self._writer.execute("PRAGMA user_version").fetchone()  # opens (and makes) the WAL
        self._files = self._file_ids()

    def _begin(self) -> sqlite3.Connection:
        """The writer in a new write transaction (under the write lock)."""
        if self.read_only:
            raise InvalidArgument(f"document store {self._path} is open read-only")
        if self._closed:
            raise InvalidArgument(f"document store {self._path} is closed")
        if self._broken is not None:
            raise CorruptStore(self._broken)
        self._writer.execute("BEGIN IMMEDIATE")
        return self._writer

    def _check_schema(self) -> None:
        try:
            row = self._writer.execute("SELECT value FROM meta WHERE name='schema'").fetchone()
        except sqlite3.DatabaseError as e:
            if "malformed" in str(e):
                raise self._damage(e) from e
            raise CorruptStore(f"{self._path}: not a twostage document store ({e})") from e
        if row is None:
            raise CorruptStore(f"{self._path}: no schema version (not a twostage store?)")
        if str(row[0]) != str(SCHEMA_VERSION):
            raise CorruptStore(
                f"{self._path}: store schema {row[0]!r}, this twostage reads {SCHEMA_VERSION}"
            )

    @_guarded
    def check(self, *, full: bool = True) -> list[str]:
        """SQLite's ``integrity_check`` (``full``) or ``quick_check``: the problems found,
        ``[]`` when the file is sound. Also checks the sequence numbers against the rows."""
        pragma = "integrity_check" if full else "quick_check"
        try:
            rows = self._reader().execute(f"PRAGMA {pragma}(20)").fetchall()
        except sqlite3.DatabaseError as e:
            return [str(e)]
        problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
        if problems:
            return problems
        if full:
            bad = []
            cols = f"key,id,title,text,metadata,seq,tokens,emb,{self._crc_col}"
            for r in self._reader().execute(f"SELECT {cols} FROM docs"):
                try:
                    self._verify_row(r)
                except CorruptStore:
                    bad.append(f"{r[1]!r} (key {r[0]})")
            if bad:
                problems.append(f"{len(bad)} document(s) fail their checksum: {', '.join(bad[:5])}")
        top = (
            self._reader()
            .execute(
                "SELECT MAX(m) FROM (SELECT MAX(seq) AS m FROM docs "
                "UNION ALL SELECT MAX(seq) FROM tombstones)"
            )
            .fetchone()[0]
        )
        if top is not None and int(top) > self.seq:
            problems.append(f"a row has change {top}, beyond the store's sequence {self.seq}")
        return problems

    @property
    @_guarded
    def store_id(self) -> str:
        """A random identity made with the store: a snapshot names the store it came from."""
        return self.get_meta("store_id", "")

    @_guarded
    def max_key(self) -> int:
        """The highest key ever issued (AUTOINCREMENT's high-water mark; 0 for none)."""
        row = self._reader().execute("SELECT seq FROM sqlite_sequence WHERE name='docs'").fetchone()
        return 0 if row is None else int(row[0])

    @_guarded
    def raise_key_floor(self, floor: int) -> bool:
        """Never issue a key at or below ``floor`` (a high-water mark kept outside the store,
        since SQLite's own goes back with a lost WAL); True if the mark had to move."""
        if floor <= self.max_key():
            return False
        with self._write_lock:
            c = self._begin()
            try:
                c.execute("DELETE FROM sqlite_sequence WHERE name='docs'")
                c.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('docs', ?)", (floor,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._check_files()
        return True

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
    @_guarded
    def get_meta(self, name: str, default: str | None = None) -> str:
        """A value from the store's key/value table (ingest state, settings)."""
        row = self._reader().execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        if row is None:
            if default is None:
                raise KeyError(name)
            return default
        return str(row[0])

    @_guarded
    def set_meta(self, values: dict[str, str]) -> None:
        """Set several meta values in one transaction."""
        with self._write_lock:
            c = self._begin()
            try:
                _set_meta(c, values)
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._check_files()

    # ---- writes ----
    @_guarded
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
            c = self._begin()
            try:
                seq = int(c.execute("SELECT value FROM meta WHERE name='seq'").fetchone()[0])
                for i, d in enumerate(docs):
                    seq += 1
                    tok = None
                    if tokens is not None:
                        tok = np.asarray(tokens[i][:MAX_STORED_TOKENS], dtype=_NP_TOK).tobytes()
                    meta_json = None if d.metadata is None else json.dumps(d.metadata)
                    emb_blob = blobs[i * row_bytes : (i + 1) * row_bytes]
                    crc = _row_crc(d.id, d.title, d.text, meta_json, emb_blob, tok)
                    row = c.execute("SELECT key FROM docs WHERE id=?", (d.id,)).fetchone()
                    if row is None:
                        cur = c.execute(
                            "INSERT INTO docs(id,title,text,metadata,emb,tokens,seq,crc) "
                            "VALUES (?,?,?,?,?,?,?,?)",
                            (d.id, d.title, d.text, meta_json, emb_blob, tok, seq, crc),
                        )
                        keys[i] = int(cur.lastrowid or 0)
                        inserted += 1
                    else:
                        c.execute(
                            "UPDATE docs SET title=?,text=?,metadata=?,emb=?,tokens=?,seq=?,"
                            "crc=? WHERE key=?",
                            (d.title, d.text, meta_json, emb_blob, tok, seq, crc, row[0]),
                        )
                        keys[i] = row[0]
                        updated += 1
                _set_meta(c, {"seq": str(seq), **(meta or {})})
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            self._check_files()
        return UpsertResult(keys, inserted, updated, seq)

    @_guarded
    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> np.ndarray:
        """Delete by id; returns the freed keys. Unknown ids raise unless ``missing_ok``.

        Nothing is deleted when an id is unknown and ``missing_ok`` is false.
        """
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of strings, not a single string")
        ids = list(dict.fromkeys(ids))
        with self._write_lock:
            c = self._begin()
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
            self._check_files()
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

    @_guarded
    def keys_of(self, ids: Sequence[str]) -> dict[str, int]:
        """Index keys of the ids that exist (unknown ids are absent from the result)."""
        return self._keys_of(self._reader(), list(ids))

    @_guarded
    def get_many(
        self, keys: Sequence[int] | np.ndarray, *, tokens: bool = True
    ) -> list[StoredDoc | None]:
        """Documents by index key, in the order asked; ``None`` where a key is gone."""
        conn = self._reader()
        klist = [int(k) for k in keys]
        rows: dict[int, StoredDoc] = {}
        cols = f"key,id,title,text,metadata,seq,tokens,emb,{self._crc_col}"
        for start in range(0, len(klist), 500):
            part = klist[start : start + 500]
            q = f"SELECT {cols} FROM docs WHERE key IN ({','.join('?' * len(part))})"
            for r in conn.execute(q, part):
                self._verify_row(r)
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

    def _verify_row(self, r: Sequence[Any]) -> None:
        """Row ``(key, id, title, text, metadata, seq, tokens, emb, crc)`` against its CRC."""
        if r[8] is None:
            return  # written before row checksums
        if _row_crc(r[1], r[2], r[3], r[4], r[7], r[6]) != int(r[8]):
            raise CorruptStore(
                f"{self._path} is damaged: document {r[1]!r} (key {r[0]}) fails its checksum. "
                "Run `twostage index check` on its folder; restore the store from a backup or "
                "rebuild the collection from its source"
            )

    @_guarded
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

    @_guarded
    def embeddings(
        self, keys: Sequence[int] | np.ndarray, *, missing_nan: bool = False
    ) -> np.ndarray:
        """Stored embeddings (float32) by key; an unknown key raises :class:`KeyNotFound`,
        or with ``missing_nan`` is a row of NaN (a key deleted since it was searched)."""
        conn = self._reader()
        klist = [int(k) for k in keys]
        found: dict[int, bytes] = {}
        for start in range(0, len(klist), 500):
            part = klist[start : start + 500]
            q = f"SELECT key, emb FROM docs WHERE key IN ({','.join('?' * len(part))})"
            found.update({int(r[0]): r[1] for r in conn.execute(q, part)})
        missing = [k for k in klist if k not in found]
        if missing and not missing_nan:
            raise KeyNotFound(f"unknown key(s): {missing[:5]}")
        out = np.full((len(klist), self.dim), np.nan, dtype=np.float32)
        for i, k in enumerate(klist):
            if k in found:
                out[i] = np.frombuffer(found[k], dtype=self._emb_np)
        return out

    def metadata(
        self, keys: Sequence[int] | np.ndarray | None = None
    ) -> Iterator[tuple[int, str | None]]:
        """``(key, metadata JSON or None)`` of every document (streamed, in key order), or
        of ``keys`` (those that exist). The metadata index (:mod:`twostage.filters`) is
        built and caught up from it."""
        try:
            conn = self._reader()
            if keys is not None:
                klist = [int(k) for k in keys]
                for start in range(0, len(klist), 500):
                    part = klist[start : start + 500]
                    q = f"SELECT key, metadata FROM docs WHERE key IN ({','.join('?' * len(part))})"
                    yield from ((int(r[0]), r[1]) for r in conn.execute(q, part))
                return
            after = -1
            while True:
                rows = conn.execute(
                    "SELECT key, metadata FROM docs WHERE key > ? ORDER BY key LIMIT 8192",
                    (after,),
                ).fetchall()
                if not rows:
                    return
                yield from ((int(r[0]), r[1]) for r in rows)
                after = int(rows[-1][0])
        except sqlite3.DatabaseError as e:
            raise self._damage(e) from e

    def changes_since(self, seq: int, *, chunk: int = 16384) -> Iterator[Changes]:
        """Upserts and deletes after ``seq``, in chunks, for catching an index up.

        Each chunk is read in one snapshot; deletes come with the last chunk (applying them
        after upserts is right because a deleted key is never reused).
        """
        try:
            yield from self._changes_since(seq, chunk)
        except sqlite3.DatabaseError as e:
            raise self._damage(e) from e

    def _changes_since(self, seq: int, chunk: int) -> Iterator[Changes]:
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

    @_guarded
    def __len__(self) -> int:
        row = self._reader().execute("SELECT COUNT(*) FROM docs").fetchone()
        return int(row[0])

    @_guarded
    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        q = "SELECT 1 FROM docs WHERE id=?"
        return self._reader().execute(q, (doc_id,)).fetchone() is not None

    @property
    @_guarded
    def seq(self) -> int:
        """The sequence number of the last committed change."""
        return int(self.get_meta("seq"))

    def keys(self) -> Iterator[int]:
        """Every index key, in order (streamed)."""
        try:
            conn = self._reader()
            after = -1
            while True:
                rows = conn.execute(
                    "SELECT key FROM docs WHERE key > ? ORDER BY key LIMIT 8192", (after,)
                ).fetchall()
                if not rows:
                    return
                yield from (int(r[0]) for r in rows)
                after = int(rows[-1][0])
        except sqlite3.DatabaseError as e:
            raise self._damage(e) from e

    def ids(self) -> Iterator[str]:
        """Every document id, in key order (streamed)."""
        try:
            yield from self._ids()
        except sqlite3.DatabaseError as e:
            raise self._damage(e) from e

    def _ids(self) -> Iterator[str]:
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

    @_guarded
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


def _row_crc(
    doc_id: str, title: str, text: str, meta: str | None, emb: bytes, tok: bytes | None
) -> int:
    """CRC-32 of a row's content: SQLite checks its pages' structure, not what they hold,
    so a flipped bit in a text or a vector would otherwise be served as if it were right."""
    crc = 0
    for part in (doc_id, title, text, meta or "", emb, tok or b""):
        b = part.encode("utf-8", "surrogatepass") if isinstance(part, str) else bytes(part)
        crc = zlib.crc32(len(b).to_bytes(8, "little"), crc)
        crc = zlib.crc32(b, crc)
    return crc


_MAGIC = b"SQLite format 3\x00"


def _check_header(path: str) -> None:
    """The cheap part of the check on open: is this an SQLite file of a plausible length?"""
    try:
        with open(path, "rb") as f:
            head = f.read(100)
        size = os.path.getsize(path)
    except IsADirectoryError:
        raise CorruptStore(f"{path} is a directory, not a document store") from None
    except OSError as e:
        raise CorruptStore(f"{path}: cannot read the document store ({e.strerror})") from e
    if len(head) < 100 or not head.startswith(_MAGIC):
        what = "empty" if size == 0 else "not an SQLite database (its header is wrong)"
        raise CorruptStore(f"{path} is {what}: not a twostage document store")
    page = int.from_bytes(head[16:18], "big")
    page = 65536 if page == 1 else page
    if page < 512 or page & (page - 1):
        raise CorruptStore(f"{path} is damaged: its header names page size {page}")
    if size % page:
        raise CorruptStore(
            f"{path} is damaged: {size} bytes is not a whole number of {page}-byte pages "
            "(truncated or appended to)"
        )
    # The header's page count is valid when its version-valid-for matches the change counter.
    pages = int.from_bytes(head[28:32], "big")
    if head[92:96] == head[24:28] and pages and size < pages * page:
        raise CorruptStore(
            f"{path} is damaged: its header counts {pages} pages, the file holds {size // page}"
            " (truncated)"
        )


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
