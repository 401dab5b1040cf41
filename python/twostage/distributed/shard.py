"""One shard as a Ray actor: a collection folder, held open by the one process that writes it.

The actor opens its shard with :meth:`Collection.open` like any process would: for writing
(it takes the shard's writer lock, so the one-writer rule holds across the cluster: a
second actor, or a ``twostage index add`` on the same folder, is refused by the lock), or
``read_only`` (a search replica: no lock, the index memory-mapped from its snapshot with
``Index.view`` when the snapshot is current, and catching up with the writer's commits as a
read-only engine does). A restarted actor opens the folder again: the snapshot plus a replay
of the changes after it, or, read-only, just a mapping of the snapshot.

Reads run on a small thread pool inside the actor (the index search releases the GIL, the
store reads on per-thread connections), writes on one thread of their own: a query never
waits behind a write's encoding.

The router (:class:`twostage.distributed.ShardedCollection`) calls two read phases per search:
:meth:`ShardActor.query` returns the shard's top lists (keys and scores only), and
:meth:`ShardActor.fetch` the documents of the few candidates that made the merged list.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from twostage.collection import AddResult, Collection
from twostage.distributed import require_ray
from twostage.distributed.layout import shard_of
from twostage.document import Document
from twostage.engine import dense_search, dense_similarities
from twostage.errors import EncoderMismatch, InvalidArgument
from twostage.store import StoredDoc

require_ray()
import ray  # noqa: E402

#: Threads serving reads inside one shard actor (searches and fetches).
READ_THREADS = 4
#: How stale a read-only shard may get behind its writer (one SQLite read per period).
REFRESH_S = 0.5


@dataclass(frozen=True)
class ShardLists:
    """A shard's answer to the query phase: its top lists, under its own (local) keys.

    ``dense_*`` is None when the dense list was not asked for, ``bm25_*`` likewise; the BM25
    scores are the shard's own (its statistics: document frequencies within the shard).
    """

    shard: int
    dense_keys: np.ndarray | None
    dense_distances: np.ndarray | None
    bm25_keys: np.ndarray | None
    bm25_scores: np.ndarray | None
    ann_s: float
    bm25_s: float


@dataclass(frozen=True)
class ShardDocs:
    """A shard's answer to the fetch phase: documents by the keys asked (None where one was
    deleted meanwhile) and, when a query vector came, their dense similarities."""

    docs: list[StoredDoc | None]
    sims: np.ndarray | None


@ray.remote(concurrency_groups={"read": READ_THREADS, "write": 1})  # type: ignore[call-overload]
class ShardActor:
    """Serves and writes one shard's collection folder (see the module's docstring)."""

    def __init__(
        self,
        path: str,
        shard: int,
        n_shards: int,
        fingerprint: str,
        *,
        read_only: bool = False,
        threads: int | None = None,
    ) -> None:
        self._col = Collection.open(path, threads=threads, read_only=read_only, view=read_only)
        got = self._col.manifest["encoder"]["fingerprint"]
        if got != fingerprint:
            self._col.close()
            raise EncoderMismatch(
                f"shard {shard} ({path}) was embedded by encoder fingerprint {got}; the sharded "
                f"collection's manifest says {fingerprint}"
            )
        self._shard = shard
        self._n = n_shards
        self._refreshed = time.monotonic()

    # ---- reads ----
    @ray.method(concurrency_group="read")
    def ping(self) -> int:
        """The shard's number (an actor that answers is alive and has its folder open)."""
        return self._shard

    @ray.method(concurrency_group="read")
    def query(
        self,
        vec: np.ndarray | None,
        text: str,
        n: int,
        dense: bool,
        bm25: bool,
        filter: dict[str, Any] | None,
        ef: int | None,
        exact: bool = False,
    ) -> ShardLists:
        """The shard's top ``n`` dense list (``vec``'s nearest; by brute force if ``exact``)
        and/or BM25 list (``text``), only documents matching ``filter`` if given."""
        self._catch_up()
        col = self._col
        allowed = None
        if filter:
            allowed = col.matching(filter)
            if allowed is None:
                raise InvalidArgument(
                    f"filter {filter!r} has a value that is not JSON: a sharded collection "
                    "resolves filters inside each shard, which needs JSON values"
                )
        dk = dd = bk = bs = None
        t_ann = t_lex = 0.0
        if dense:
            if vec is None:
                raise InvalidArgument("the dense list needs the query vector")
            t = time.perf_counter()
            if (allowed is not None and allowed.count == 0) or len(col.index) == 0:
                dk, dd = np.empty(0, np.uint64), np.empty(0, np.float32)
            else:
                every = self._all_keys if exact else None
                dk, dd = dense_search(col.index, vec, n, ef, allowed, every)
            t_ann = time.perf_counter() - t
        if bm25:
            t = time.perf_counter()
            bk, bs = col.lexical_search(text, n, allowed=allowed)
            t_lex = time.perf_counter() - t
        return ShardLists(self._shard, dk, dd, bk, bs, t_ann, t_lex)

    @ray.method(concurrency_group="read")
    def fetch(self, keys: np.ndarray, tokens: bool, vec: np.ndarray | None = None) -> ShardDocs:
        """Stored documents by local key (with their token ids if ``tokens``), and their
        similarity to ``vec`` from the stored embeddings when it is given (NaN for one
        deleted since the query phase)."""
        docs = self._col.fetch(keys, tokens=tokens)
        sims = None
        if vec is not None:
            emb = self._col.store.embeddings(keys, missing_nan=True)
            sims = dense_similarities(self._col.manifest["metric"], emb, vec)
        return ShardDocs(docs, sims)

    @ray.method(concurrency_group="read")
    def get(self, ids: Sequence[str]) -> list[Document]:
        """Documents by id (an unknown id raises ``KeyNotFound``)."""
        return self._col.get(ids)

    @ray.method(concurrency_group="read")
    def known(self, ids: Sequence[str]) -> list[str]:
        """Which of ``ids`` the shard holds."""
        found = self._col.store.keys_of(list(ids))
        return [i for i in ids if i in found]

    @ray.method(concurrency_group="read")
    def count(self) -> int:
        """Documents in the shard."""
        return len(self._col)

    @ray.method(concurrency_group="read")
    def info(self) -> dict[str, Any]:
        """The shard collection's :meth:`~Collection.info`, with its shard number."""
        out = self._col.info()
        out["shard"] = self._shard
        out["read_only"] = self._col.read_only
        return out

    @ray.method(concurrency_group="write")
    def check(self, full: bool = True) -> list[str]:
        """The shard collection's :meth:`~Collection.check` (on the write thread: it reads
        the whole store and must not race a write)."""
        return self._col.check(full=full)

    # ---- writes (the shard's one writer) ----
    @ray.method(concurrency_group="write")
    def add(self, docs: Sequence[Document], batch_size: int = 32) -> AddResult:
        """Embed and upsert ``docs`` (all owned by this shard)."""
        self._check_owned(d.id for d in docs)
        return self._col.add(docs, batch_size=batch_size)

    @ray.method(concurrency_group="write")
    def add_embedded(
        self,
        docs: Sequence[Document],
        vectors: np.ndarray,
        tokens: Sequence[Sequence[int]] | None = None,
        meta: dict[str, str] | None = None,
    ) -> AddResult:
        """Upsert documents embedded elsewhere, with ``meta`` in the same transaction."""
        self._check_owned(d.id for d in docs)
        return self._col.add_embedded(docs, vectors, tokens, meta=meta)

    @ray.method(concurrency_group="write")
    def delete(self, ids: Sequence[str], missing_ok: bool = False) -> int:
        """Delete by id; how many were deleted."""
        return self._col.delete(ids, missing_ok=missing_ok)

    @ray.method(concurrency_group="write")
    def flush(self) -> None:
        """Snapshot the index (the next open replays nothing)."""
        if not self._col.read_only:
            self._col.flush()

    @ray.method(concurrency_group="write")
    def close(self) -> None:
        """Snapshot and close the collection, releasing the writer lock (the actor is then
        of no further use: the router kills it)."""
        self._col.close()

    # ---- helpers ----
    def _check_owned(self, ids: Any) -> None:
        for doc_id in ids:
            if shard_of(doc_id, self._n) != self._shard:
                raise InvalidArgument(
                    f"document {doc_id!r} belongs to shard {shard_of(doc_id, self._n)}, not "
                    f"{self._shard}: writes go through the router"
                )

    def _all_keys(self) -> np.ndarray:
        return np.fromiter(self._col.store.keys(), dtype=np.uint64)

    def _catch_up(self) -> None:
        if self._col.read_only and time.monotonic() - self._refreshed >= REFRESH_S:
            self._refreshed = time.monotonic()
            self._col.refresh()


__all__ = ["ShardActor", "ShardDocs", "ShardLists"]
