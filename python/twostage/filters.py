"""Metadata filters resolved to key sets before the first stage searches.

``Engine.search(filter={"lang": "en"})`` keeps a document when, for every filter key, its
metadata holds that key with a value equal (Python ``==``) to the filter's value, or to any
item of the filter's value when that is a list. :class:`MetadataIndex` answers this without
reading a document: per metadata field, each document's value as a small integer code, in
an array indexed by the document's key. A filter turns into a boolean mask over keys (one
comparison per field, vectorised) that the first stage applies while it searches:

- few allowed keys (:func:`exact_is_cheaper`: up to ~2,300 of SciFact's 5,183, ~10,000 of
  100k, ~32,000 of 1M): the exact top-k among them, a brute-force scan of their vectors
  (:meth:`twostage._core.Index.search_exact`);
- otherwise: the HNSW walk with the mask checked at each node it reaches
  (``Index.search(allowed=mask)``), which slows as the allowed share shrinks because the walk
  must pass through more disallowed nodes to see ``ef`` allowed ones;
- BM25: a term set of the allowed keys inside the tantivy query for small sets, else a
  wider top list cut to the allowed keys (:meth:`twostage.lexical.LexicalIndex.search`).

Equality is Python's: ``1``, ``1.0`` and ``True`` are equal, lists compare item by item,
objects key by key. Values are compared through a hashable stand-in that is equal exactly
when the values are (:func:`canonical`). A filter value that is not JSON (a tuple, a set, a
numpy scalar, an object key that is not a string) has no stand-in: such a filter is checked
after the search, document by document, as every filter was before (the engine falls back).

The index is in memory, built from the store the first time a collection is filtered (one
pass over the store's metadata column: measured in BENCHMARKS.md) and kept in step with
every add, upsert, delete and :meth:`~twostage.collection.Collection.refresh`. Memory: four
bytes per document per distinct field name, plus one entry per distinct value.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

_LIST = object()  # tags no JSON value can equal
_DICT = object()
ABSENT = 0  # the code of a key without the field (or without metadata, or deleted)


class Unindexable(Exception):
    """A filter value with no hashable stand-in (not a JSON value)."""


def canonical(value: Any) -> Hashable:
    """A hashable stand-in for a JSON value: two stand-ins are equal exactly when the values
    are (``==``), and equal ones hash alike, so a dict keyed by them matches as ``==`` does.

    >>> canonical(1) == canonical(1.0) == canonical(True)
    True
    >>> canonical({"a": [1, 2]}) == canonical({"a": [1.0, 2]})
    True
    >>> canonical(["a"]) == canonical("a")
    False
    """
    t = type(value)
    if t is str or t is int or t is float or t is bool or value is None:
        return value
    if t is list:
        return (_LIST, tuple(canonical(v) for v in value))
    if t is dict:
        if not all(type(k) is str for k in value):
            raise Unindexable(f"an object key that is not a string in {value!r}")
        return (_DICT, frozenset((k, canonical(v)) for k, v in value.items()))
    raise Unindexable(f"{t.__name__} is not a JSON value")


@dataclass
class KeySet:
    """The keys a filter allows: ``mask[key]`` is true for each (keys past its end are not
    allowed), ``count`` how many there are."""

    mask: np.ndarray  # bool, indexed by key
    count: int
    _keys: np.ndarray | None = field(default=None, repr=False)

    @property
    def keys(self) -> np.ndarray:
        """The allowed keys, ascending (uint64)."""
        if self._keys is None:
            self._keys = np.flatnonzero(self.mask).astype(np.uint64)
        return self._keys

    def __contains__(self, key: object) -> bool:
        if not isinstance(key, int | np.integer) or not 0 <= key < len(self.mask):
            return False
        return bool(self.mask[key])

    def __len__(self) -> int:
        return self.count

    @classmethod
    def empty(cls) -> KeySet:
        return cls(np.zeros(0, dtype=bool), 0)


class MetadataIndex:
    """Per metadata field, each key's value as an int32 code (0: absent); thread-safe.

    >>> m = MetadataIndex()
    >>> m.upsert([1, 2, 3], [{"lang": "en"}, {"lang": "fr"}, None])
    >>> m.select({"lang": ["en", "de"]}).keys.tolist()
    [1]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._codes: dict[str, np.ndarray] = {}
        self._values: dict[str, dict[Hashable, int]] = {}
        self._size = 0
        self.version = 0
        """Bumped by every write (a cache of resolved filters is valid for one version)."""

    @classmethod
    def build(cls, rows: Iterable[tuple[int, str | None]], chunk: int = 8192) -> MetadataIndex:
        """From ``(key, metadata JSON)`` rows (the store's column)."""
        m = cls()
        keys: list[int] = []
        metas: list[dict[str, Any] | None] = []
        for key, text in rows:
            keys.append(key)
            metas.append(None if text is None else json.loads(text))
            if len(keys) >= chunk:
                m.upsert(keys, metas)
                keys, metas = [], []
        m.upsert(keys, metas)
        return m

    def _grow(self, top: int) -> None:
        if top < self._size:
            return
        size = max(1024, self._size)
        while size <= top:
            size *= 2
        for name, codes in self._codes.items():
            grown = np.zeros(size, dtype=np.int32)
            grown[: len(codes)] = codes
            self._codes[name] = grown
        self._size = size

    def upsert(
        self, keys: Sequence[int] | np.ndarray, metadata: Sequence[dict[str, Any] | None]
    ) -> None:
        """Set what ``keys`` hold (their metadata as the store returns it: parsed JSON)."""
        if len(keys) != len(metadata):
            raise ValueError(f"{len(keys)} keys for {len(metadata)} metadata values")
        if not len(keys):
            return
        karr = np.asarray(keys, dtype=np.int64)
        with self._lock:
            self._grow(int(karr.max()))
            for column in self._codes.values():
                column[karr] = ABSENT  # a field the new metadata lacks is gone
            # Per field, the keys and codes to write, then one vectorised write each.
            pending: dict[str, tuple[list[int], list[int]]] = {}
            for key, meta in zip(karr.tolist(), metadata, strict=True):
                if not isinstance(meta, dict):
                    continue
                for name, value in meta.items():
                    got = pending.get(name)
                    if got is None:
                        got = pending[name] = ([], [])
                        if name not in self._values:
                            self._values[name] = {}
                            self._codes[name] = np.zeros(self._size, dtype=np.int32)
                    values = self._values[name]
                    try:
                        c = canonical(value)
                    except Unindexable:  # not from JSON; matches nothing a filter can say
                        continue
                    code = values.get(c)
                    if code is None:
                        code = values[c] = len(values) + 1
                    got[0].append(key)
                    got[1].append(code)
            for name, (ks, cs) in pending.items():
                self._codes[name][np.asarray(ks, dtype=np.int64)] = cs
            self.version += 1

    def remove(self, keys: Sequence[int] | np.ndarray) -> None:
        """Forget ``keys`` (deleted)."""
        karr = np.asarray(keys, dtype=np.int64)
        with self._lock:
            karr = karr[karr < self._size]
            for codes in self._codes.values():
                codes[karr] = ABSENT
            self.version += 1

    def select(self, filter: dict[Any, Any]) -> KeySet | None:
        """The keys whose metadata matches ``filter`` (semantics above); ``None`` when a
        filter value is not JSON, which the caller must check document by document."""
        try:
            wanted = [
                (name, [canonical(w) for w in want] if type(want) is list else [canonical(want)])
                for name, want in filter.items()
            ]
        except Unindexable:
            return None
        with self._lock:
            mask: np.ndarray | None = None
            for name, cands in wanted:
                codes = self._codes.get(name) if type(name) is str else None
                if codes is None:
                    return KeySet.empty()
                values = self._values[name]
                hit = sorted({code for c in cands if (code := values.get(c)) is not None})
                if not hit:
                    return KeySet.empty()
                if len(hit) == 1:
                    m = codes == hit[0]
                elif len(hit) <= 8:
                    m = codes == hit[0]
                    for code in hit[1:]:
                        m |= codes == code
                else:
                    lut = np.zeros(len(values) + 1, dtype=bool)
                    lut[hit] = True
                    m = lut[codes]
                if mask is None:
                    mask = m
                else:
                    mask &= m
        if mask is None:  # an empty filter: everything (callers skip filtering then)
            return None
        return KeySet(mask, int(np.count_nonzero(mask)))

    def fields(self) -> dict[str, int]:
        """Field name -> how many distinct values it has held."""
        with self._lock:
            return {name: len(v) for name, v in self._values.items()}

    @property
    def memory_usage(self) -> int:
        """Bytes held by the code arrays (the value tables are not counted)."""
        with self._lock:
            return sum(c.nbytes for c in self._codes.values())


# ---- choosing how to search an allowed set -------------------------------------------------

# The filtered walk keeps going until it has seen `width` (= max(ef, k)) allowed nodes, so it
# reaches about width / share nodes (each with its neighbours' distances); the scan computes
# one distance per allowed key, share * total. They cost the same where
# count^2 = EXACT_FACTOR * width * total; measured at 100k x 384 f16 (benches/filter.py,
# BENCHMARKS.md "Filters"): the walk and the scan tie near 10 % (10,000 keys) at width 128.
EXACT_FACTOR = 8.0


def exact_is_cheaper(count: int, total: int, width: int) -> bool:
    """Whether scanning ``count`` allowed keys exactly costs less than a filtered walk of
    ``width`` (max(ef, k)) over a graph of ``total`` keys.

    >>> exact_is_cheaper(52, 5_183, 128), exact_is_cheaper(2_592, 5_183, 128)
    (True, False)
    >>> exact_is_cheaper(30_000, 1_000_000, 128), exact_is_cheaper(50_000, 1_000_000, 128)
    (True, False)
    """
    return count * count <= EXACT_FACTOR * width * total


__all__ = ["KeySet", "MetadataIndex", "Unindexable", "canonical", "exact_is_cheaper"]
