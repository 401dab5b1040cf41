"""The lexical first stage: BM25 over a collection's documents, on tantivy.

Why tantivy (the Rust search library, through its official Python bindings): it updates in
place (add and delete by key, then commit), which a collection needs to stay in step with
upserts and deletes, and it answers top-k with block-max WAND rather than scoring every
matching document. Measured on SciFact's 300 test queries (BENCHMARKS.md §7): tantivy p50
0.17 ms, bm25s 0.09 ms (a static matrix, rebuilt for any change), SQLite FTS5 3.1 ms (scores
every match, so it grows with the corpus); NDCG@10 0.689 / 0.686 / 0.682.

The index lives in ``DIR/lexical/`` beside the store. It is derived data, like the HNSW
snapshot: ``state.json`` records the store sequence number it reflects, written after each
commit, and a collection replays what came after on open. Replaying twice is harmless
(every write deletes the key before adding it), so a crash between the commit and the
state file only costs a replay.

Text is stemmed by tantivy's ``en_stem`` analyzer (lower case, Snowball English). Queries
keep their word characters only (no query syntax reaches the parser, so no input can make
it fail) and drop the English stop words Lucene's analyzer drops.

>>> lex = LexicalIndex.create("lexical/")  # doctest: +SKIP
>>> lex.upsert([1, 2], ["graph indexes", "inverted indexes"], seq=2)  # doctest: +SKIP
>>> lex.search("inverted index", k=10)  # doctest: +SKIP
(array([2], dtype=uint64), array([0.47], dtype=float32))
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import tantivy

from twostage._memory import release_memory
from twostage.errors import CorruptIndex
from twostage.filters import KeySet

STATE = "state.json"
FORMAT_VERSION = 1
ANALYZER = "en_stem"
# Lucene's (and Elasticsearch's `_english_`) stop words.
STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
)
_WORD = re.compile(r"\w+")
_HEAP = 64 * 1024 * 1024  # tantivy's indexing arena; it flushes a segment when full
_LOCK_WAIT_S = 30.0
# A filter's keys join the query as a term set on the key field while there are at most
# TERM_SET_FACTOR * sqrt(k * documents) of them; beyond that a longer top list is cut to the
# allowed keys. A term set costs about 3.6 µs a key; the cut about 14 µs per listed hit (its
# stored key is read), and it lists ~2k / share hits: equal where count^2 = 4 k documents
# (benches/filter.py, BENCHMARKS.md "Filters").
TERM_SET_FACTOR = 2.0
# Indexes up to this size read every key back on open (about 20 ms per 10k documents here);
# bigger ones rely on `twostage index check` and on each search, which names the damage.
VERIFY_ON_OPEN_DOCS = 200_000


def query_terms(text: str) -> list[str]:
    """The words of ``text`` the lexical index is asked for (lower case, no stop words).

    >>> query_terms("What is THE role of p53 in cancer?")
    ['what', 'role', 'p53', 'cancer']
    """
    return [w for w in _WORD.findall(text.lower()) if w not in STOP_WORDS]


def _schema() -> tantivy.Schema:
    sb = tantivy.SchemaBuilder()
    # The key as a raw (untokenised) term: tantivy-py deletes by term reliably on text
    # fields, and a Python int given for a u64 field's term does not match it.
    sb.add_text_field("key", stored=True, tokenizer_name="raw")
    sb.add_text_field("body", stored=False, tokenizer_name=ANALYZER, index_option="position")
    return sb.build()


class LexicalIndex:
    """BM25 over ``(key, text)`` pairs in a folder. Thread-safe; one writer at a time.

    Use :meth:`create` or :meth:`open`.
    """

    def __init__(self, path: Path | None, index: tantivy.Index, seq: int) -> None:
        """Internal: use :meth:`create`, :meth:`open` or :meth:`in_memory`."""
        # Reloaded by hand (after each commit here, and by `reload` for other processes'):
        # tantivy's default reader polls meta.json on a thread of its own and reloads on a
        # change, taking a lock file in the folder, even after the collection is closed (a
        # CI run's `rmtree` of a just-closed index met a file that appeared under it).
        index.config_reader(reload_policy="Manual")
        self._path = path
        self._index = index
        self._seq = seq
        self._lock = threading.Lock()
        self._collected = False  # orphan files cleared (once per open, by the first writer)

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> LexicalIndex:
        """A new, empty index in folder ``path`` (whatever was there is replaced)."""
        folder = Path(path)
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        index = tantivy.Index(_schema(), path=str(folder), reuse=False)
        lex = cls(folder, index, 0)
        lex._write_state()
        return lex

    @classmethod
    def in_memory(cls) -> LexicalIndex:
        """A new, empty index in RAM (a read-only collection rebuilding a damaged one)."""
        return cls(None, tantivy.Index(_schema()), 0)

    def reload(self) -> None:
        """See what another process committed to this folder since (its state too)."""
        if self._path is None:
            return
        with self._lock:
            self._index.reload()
            try:
                state = json.loads((self._path / STATE).read_text())
                self._seq = max(self._seq, int(state["seq"]))
            except (OSError, ValueError, KeyError, TypeError):
                pass  # a state file being replaced: the next reload reads it

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LexicalIndex:
        """The index in ``path``; a missing or damaged one raises :class:`CorruptIndex`."""
        folder = Path(path)
        state_file = folder / STATE
        try:
            state = json.loads(state_file.read_text())
            seq = int(state["seq"])
            version = int(state["version"])
        except FileNotFoundError:
            raise CorruptIndex(f"{folder}: no lexical index here ({STATE} missing)") from None
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndex(f"{state_file}: unreadable lexical index state ({e})") from e
        if version != FORMAT_VERSION:
            raise CorruptIndex(
                f"{folder}: lexical index format {version}, this twostage reads {FORMAT_VERSION}"
            )
        try:
            index = tantivy.Index.open(str(folder))
            n = index.searcher().num_docs  # opens every segment: damage to one shows here
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # OSError, ValueError, or a panic (pyo3's PanicException)
            raise CorruptIndex(f"{folder}: damaged lexical index ({e})") from e
        lex = cls(folder, index, seq)
        if n <= VERIFY_ON_OPEN_DOCS:
            lex.verify()
        return lex

    @property
    def seq(self) -> int:
        """The store sequence number this index reflects."""
        return self._seq

    @property
    def path(self) -> Path | None:
        """The index folder (``None`` for one in memory)."""
        return self._path

    def __len__(self) -> int:
        return int(self._index.searcher().num_docs)

    # ---- writes ----
    def upsert(self, keys: Sequence[int] | np.ndarray, texts: Sequence[str], *, seq: int) -> None:
        """Index ``texts`` under ``keys`` (replacing what a key held), then commit.

        ``seq`` is the store sequence number the index reflects once this is committed.
        """
        if len(keys) != len(texts):
            raise ValueError(f"{len(keys)} keys for {len(texts)} texts")
        self._write([int(k) for k in keys], list(texts), [], seq)

    def remove(self, keys: Sequence[int] | np.ndarray, *, seq: int) -> None:
        """Delete ``keys`` (unknown keys are ignored), then commit."""
        self._write([], [], [int(k) for k in keys], seq)

    def _write(self, keys: list[int], texts: list[str], removed: list[int], seq: int) -> None:
        if len(set(keys)) != len(keys):  # a later duplicate wins, as in the store
            last = {k: i for i, k in enumerate(keys)}
            keys, texts = list(last), [texts[i] for i in last.values()]
        with self._lock:
            if not keys and not removed:
                self._seq = max(self._seq, seq)
                self._write_state()
                return
            writer = self._writer()
            try:
                for key in (*keys, *removed):
                    writer.delete_documents_by_term("key", str(key))
                for key, text in zip(keys, texts, strict=True):
                    doc = tantivy.Document()
                    doc.add_text("key", str(key))
                    doc.add_text("body", text)
                    writer.add_document(doc)
                writer.commit()
            except BaseException:
                writer.rollback()
                raise
            finally:
                writer.wait_merging_threads()
            self._index.reload()
            self._seq = max(self._seq, seq)
            self._write_state()
        release_memory()

    def _writer(self) -> tantivy.IndexWriter:
        # A writer per batch holds tantivy's lock only while writing, so another process
        # writing the same collection (a CLI `index add` beside a server) is waited for.
        deadline = time.monotonic() + _LOCK_WAIT_S
        while True:
            try:
                writer = self._index.writer(heap_size=_HEAP, num_threads=1)
                break
            except ValueError as e:
                if "lock" not in str(e).lower() or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if not self._collected:
            # A process killed inside a commit leaves files no commit refers to (a deletes
            # file named for the next opstamp): the next commit would fail on them forever
            # (FileAlreadyExists). Found by benches/crashloop.py.
            writer.garbage_collect_files()
            self._collected = True
        return writer

    def _write_state(self) -> None:
        if self._path is None:
            return
        tmp = self._path / (STATE + ".tmp")
        tmp.write_text(json.dumps({"version": FORMAT_VERSION, "seq": self._seq}))
        os.replace(tmp, self._path / STATE)

    # ---- reads ----
    def search(
        self, query: str, k: int, *, allowed: KeySet | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` keys by BM25 (k1 1.2, b 0.75) with their scores, best first.

        A query with no indexable word (only stop words or punctuation) matches nothing.
        With ``allowed`` (a metadata filter's keys, :mod:`twostage.filters`), only those:
        a small set (:data:`TERM_SET_FACTOR`) joins the query as a term set on the key
        field (scored 0, so BM25 scores are unchanged); a larger one cuts a longer top list
        to its keys, asking for as many more as its share of the index says.
        """
        terms = query_terms(query)
        if not terms or k < 1 or (allowed is not None and allowed.count == 0):
            return np.empty(0, np.uint64), np.empty(0, np.float32)
        # Lenient: the terms hold no syntax, but a parse error must never fail a search.
        parsed, _ = self._index.parse_query_lenient(" ".join(terms), ["body"])
        if allowed is not None and allowed.count <= TERM_SET_FACTOR * math.sqrt(k * len(self)):
            among = tantivy.Query.term_set_query(
                self._index.schema, "key", [str(key) for key in allowed.keys.tolist()]
            )
            parsed = tantivy.Query.boolean_query(
                [
                    (tantivy.Occur.Must, parsed),
                    (tantivy.Occur.Must, tantivy.Query.const_score_query(among, 0.0)),
                ]
            )
            allowed = None
        with self._damage_as_corrupt():
            searcher = self._index.searcher()
            if allowed is None:
                return self._top(searcher, parsed, k)
            total = max(int(searcher.num_docs), 1)
            # Enough to hold k allowed keys if they are spread like the rest, and then some.
            ask = min(total, k + int(2 * k * total / allowed.count))
            while True:
                keys, scores = self._top(searcher, parsed, ask)
                keep = np.fromiter(
                    (key in allowed for key in keys.tolist()), dtype=bool, count=len(keys)
                )
                if keep.sum() >= k or ask >= total or len(keys) < ask:
                    return keys[keep][:k], scores[keep][:k]
                ask = min(total, ask * 4)

    @staticmethod
    def _top(
        searcher: tantivy.Searcher, query: tantivy.Query, k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        hits = searcher.search(query, limit=k, count=False).hits
        keys = np.fromiter(
            (int(searcher.doc(addr)["key"][0]) for _, addr in hits),
            dtype=np.uint64,
            count=len(hits),
        )
        scores = np.fromiter((s for s, _ in hits), dtype=np.float32, count=len(hits))
        return keys, scores

    def verify(self) -> int:
        """Read every document's key back (every posting list's segment and the doc store):
        damage the cheap open cannot see shows here. Returns the count read."""
        with self._damage_as_corrupt():
            searcher = self._index.searcher()
            n = int(searcher.num_docs)
            hits = searcher.search(tantivy.Query.all_query(), limit=max(1, n), count=True)
            for _, addr in hits.hits:
                int(searcher.doc(addr)["key"][0])
            return len(hits.hits)

    @contextlib.contextmanager
    def _damage_as_corrupt(self) -> Iterator[None]:
        # A damaged segment makes tantivy panic (pyo3's PanicException, a BaseException)
        # or raise ValueError/OSError: either way the message names the folder.
        try:
            yield
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as e:
            raise CorruptIndex(
                f"{self._path or 'lexical index'}: damaged lexical index ({type(e).__name__}: "
                f"{e}); reopen the collection for writing to rebuild it from the store"
            ) from e


__all__ = ["ANALYZER", "STOP_WORDS", "LexicalIndex", "query_terms"]
