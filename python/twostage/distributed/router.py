"""A sharded collection, live: one Ray actor per shard, and the router that talks to them.

Writes go to the shard that owns each id (:func:`~twostage.distributed.layout.shard_of`),
in parallel across shards; each shard actor is its shard's one writer, so the router
serialises nothing. A search is two phases, as Elasticsearch's ``query_then_fetch``:

1. **query**: every shard returns its top-``n`` lists (dense: keys and distances; BM25: keys
   and scores), waited for until a deadline (``ray.wait`` with a timeout);
2. the router merges them with the core's :func:`~twostage.merge_topk` (a total order:
   ties by key) into one top-``n`` per list, and for ``hybrid`` fuses the two *global*
   lists by reciprocal rank (:func:`~twostage.rrf`), as one collection does;
3. **fetch**: the shards holding the merged candidates return their documents (with token
   ids for the reranker, and stored-embedding similarities when the fusion needs them),
   waited for until a deadline of their own (the same timeout again).

A shard that is late, dead or restarting is left out: the answer comes from the others and
says so (:class:`~twostage.engine.Candidates` ``parts_answered``/``missing``; the engine's
response ``shards_answered``, ``shards_total``, ``degraded``). A search never raises for a
shard; a write or a read that needs a given shard raises
:class:`~twostage.errors.ShardUnavailable` naming it.

Keys: each shard numbers its own documents, so the router's key for shard ``s``'s key ``k``
is ``k * n + s`` (unique across shards; the score cache and the signals use it).

BM25 is scored by each shard with its own statistics (document frequencies and lengths
within the shard), as Elasticsearch's default ``query_then_fetch`` does; with shards of a
few thousand documents or more, drawn by hash, they differ little from the global ones.

>>> import ray; ray.init()  # doctest: +SKIP
>>> sharded = ShardedCollection.from_collection("scifact/", "scifact-3/", 3)  # doctest: +SKIP
>>> sharded.add([{"id": "new-1", "text": "a new abstract"}])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from twostage._core import merge_topk, rrf
from twostage.collection import Collection
from twostage.distributed import require_ray
from twostage.distributed.layout import (
    Layout,
    check_shards,
    layout_manifest,
    read_layout,
    shard_dir,
    split_collection,
    write_layout,
)
from twostage.document import Document, DocumentLike, as_document
from twostage.encoder import Encoder
from twostage.engine import Candidates, fill_missing
from twostage.errors import (
    InvalidArgument,
    KeyNotFound,
    ReadOnlyCollection,
    ShardUnavailable,
    TwostageError,
)
from twostage.store import StoredDoc

require_ray()
import ray  # noqa: E402
from ray.exceptions import RayError, RayTaskError  # noqa: E402

from twostage.distributed.shard import ShardActor, ShardDocs, ShardLists  # noqa: E402

#: How long a search waits for the shards by default, in each of its two phases, in seconds.
DEFAULT_SHARD_TIMEOUT_S = 1.0
#: Actor options a shard gets unless told otherwise: spread over the nodes, no CPU reserved
#: (a real cluster sets ``num_cpus``/``memory``/``resources`` to place shards on purpose).
DEFAULT_ACTOR_OPTIONS: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": "SPREAD"}

ActorOptions = Mapping[str, Any] | Callable[[int], Mapping[str, Any]]


@dataclass(frozen=True)
class ShardedAddResult:
    """What :meth:`ShardedCollection.add` did: totals, and each written shard's sequence."""

    inserted: int
    updated: int
    seqs: dict[int, int]  # shard -> its store's sequence number after the write


class ShardedCollection:
    """A collection split into shards by id hash, each a Ray actor. Thread-safe.

    Use :meth:`open`, :meth:`create` or :meth:`from_collection` (Ray must be initialised:
    ``ray.init()``, or ``ray.init(address="auto")`` on a cluster). Close with :meth:`close`
    (or a ``with`` block): each shard snapshots its index and drops its writer lock, and the
    actors end. :class:`~twostage.distributed.ShardedEngine` searches one.

    >>> sharded = ShardedCollection.open("scifact-3/")  # doctest: +SKIP
    >>> len(sharded), sharded.n_shards  # doctest: +SKIP
    (5183, 3)
    """

    def __init__(self, layout: Layout, actors: list[Any], read_only: bool) -> None:
        """Internal: use :meth:`open`, :meth:`create` or :meth:`from_collection`."""
        self._layout = layout
        self._actors = actors
        self._read_only = read_only
        self._closed = False

    # ---- create / open ----
    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        read_only: bool = False,
        actor_options: ActorOptions | None = None,
        max_restarts: int = -1,
        threads: int | None = None,
        start_timeout_s: float = 300.0,
    ) -> ShardedCollection:
        """Start one actor per shard of the sharded collection in ``path`` and wait until
        each has its folder open.

        Args:
            path: the top folder (``shards.json``). Each actor opens its shard folder by
                this path: on a cluster, a path every node sees (a shared file system), or
                pin each shard to the node holding its folder with ``actor_options``.
            read_only: search replicas (no writer lock, the index memory-mapped; they follow
                what the writer commits). Writes then raise.
            actor_options: Ray actor options for every shard (a mapping), or per shard (a
                function of the shard number), e.g. ``{"num_cpus": 1, "memory": 2 << 30}``
                or ``lambda i: {"resources": {f"shard-{i}": 1}}``; merged over
                :data:`DEFAULT_ACTOR_OPTIONS`.
            max_restarts: how often Ray restarts a shard actor that dies (-1: always);
                a restarted actor opens its folder again.
            threads: index threads per shard (default: the node's cores).
            start_timeout_s: how long to wait for the shards to open.

        A shard already open for writing elsewhere (another actor, a ``twostage index
        add``) refuses the open with :class:`~twostage.errors.CollectionLocked` naming it.
        """
        layout = read_layout(path)
        fingerprint = layout.encoder["fingerprint"]
        actors = []
        for i, folder in enumerate(layout.shard_paths):
            opts = dict(DEFAULT_ACTOR_OPTIONS)
            if actor_options is not None:
                opts.update(actor_options(i) if callable(actor_options) else actor_options)
            opts.setdefault("max_restarts", max_restarts)
            actors.append(
                ShardActor.options(**opts).remote(  # type: ignore[attr-defined]
                    str(folder.resolve()),
                    i,
                    layout.n_shards,
                    fingerprint,
                    read_only=read_only,
                    threads=threads,
                )
            )
        out = cls(layout, actors, read_only)
        try:
            out._all({a.ping.remote(): i for i, a in enumerate(actors)}, "open", start_timeout_s)
        except BaseException:
            out._kill()
            raise
        return out

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        encoder: Encoder,
        n_shards: int,
        *,
        collection_options: Mapping[str, Any] | None = None,
        **open_options: Any,
    ) -> ShardedCollection:
        """A new, empty sharded collection of ``n_shards`` in ``path`` (each shard made by
        :meth:`Collection.create` with ``collection_options``: metric, dtype, lexical, ...),
        opened (``open_options`` as :meth:`open` takes them).

        >>> ShardedCollection.create("docs-4/", Encoder.load("minilm-l6"), 4)  # doctest: +SKIP
        """
        check_shards(n_shards)
        top = Path(path)
        top.mkdir(parents=True, exist_ok=True)
        if any(top.iterdir()):
            raise FileExistsError(f"{top} is not empty: a new sharded collection needs its own")
        manifest = None
        for i in range(n_shards):
            with Collection.create(top / shard_dir(i), encoder, **(collection_options or {})) as c:
                c.flush()  # an (empty) index snapshot: the actor's open has nothing to rebuild
                manifest = c.manifest
        assert manifest is not None
        write_layout(top, layout_manifest(manifest, n_shards))
        return cls.open(top, **open_options)

    @classmethod
    def from_collection(
        cls,
        source: str | os.PathLike[str] | Collection,
        path: str | os.PathLike[str],
        n_shards: int,
        **open_options: Any,
    ) -> ShardedCollection:
        """Shard the collection ``source`` (a folder, or an open :class:`Collection`, whose
        folder is read) into ``n_shards`` under ``path`` by copying its stored embeddings
        (nothing is re-encoded: :func:`~twostage.distributed.layout.split_collection`), then
        open it. A ``path`` that already holds the split is opened as it is.

        >>> ShardedCollection.from_collection("scifact/", "scifact-3/", 3)  # doctest: +SKIP
        """
        src = source.path if isinstance(source, Collection) else Path(source)
        try:
            layout = read_layout(path)
        except FileNotFoundError:
            layout = split_collection(src, path, n_shards)
        if layout.n_shards != n_shards:
            raise InvalidArgument(
                f"{path} already holds {layout.n_shards} shards, not {n_shards}: split into "
                "another folder"
            )
        return cls.open(path, **open_options)

    # ---- properties ----
    @property
    def path(self) -> Path:
        """The top folder."""
        return self._layout.path

    @property
    def layout(self) -> Layout:
        """The top manifest (shard count, hash rule, encoder, shard folders)."""
        return self._layout

    @property
    def n_shards(self) -> int:
        """How many shards."""
        return self._layout.n_shards

    @property
    def actors(self) -> list[Any]:
        """The shard actors' handles, in shard order (for ``ray.kill`` in a drill)."""
        return list(self._actors)

    @property
    def read_only(self) -> bool:
        """Whether the shards are search replicas (writes raise)."""
        return self._read_only

    def shard_of(self, doc_id: str) -> int:
        """The shard that owns ``doc_id``."""
        return self._layout.shard_of(doc_id)

    def __len__(self) -> int:
        return sum(self._all({a.count.remote(): i for i, a in enumerate(self._actors)}, "count"))

    def __contains__(self, doc_id: object) -> bool:
        if not isinstance(doc_id, str):
            return False
        s = self.shard_of(doc_id)
        return bool(self._one(s, self._actors[s].known.remote([doc_id]), "read"))

    def __enter__(self) -> ShardedCollection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ShardedCollection({str(self.path)!r}, shards={self.n_shards})"

    # ---- writes ----
    def add(self, docs: Sequence[DocumentLike], *, batch_size: int = 32) -> ShardedAddResult:
        """Embed and upsert ``docs``, each in the shard that owns its id (the shards write in
        parallel). Raises :class:`~twostage.errors.ShardUnavailable` naming the shards whose
        part did not commit (the others' did: upserts are idempotent, so send it again)."""
        self._check_writable()
        if isinstance(docs, (Document, dict, str, bytes)):
            raise InvalidArgument(
                f"docs must be a list of documents, not a single {type(docs).__name__}"
            )
        parts = self._split([as_document(d, f"docs[{i}]") for i, d in enumerate(docs)])
        refs = {self._actors[s].add.remote(part, batch_size): s for s, part in parts.items()}
        got = self._all_by_shard(refs, "add")
        return ShardedAddResult(
            inserted=sum(r.inserted for r in got.values()),
            updated=sum(r.updated for r in got.values()),
            seqs={s: r.seq for s, r in got.items()},
        )

    def delete(self, ids: Sequence[str], *, missing_ok: bool = False) -> int:
        """Delete documents by id; returns how many. Unknown ids raise
        :class:`~twostage.errors.KeyNotFound` unless ``missing_ok`` (and then nothing is
        deleted)."""
        self._check_writable()
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of strings, not a single string")
        parts = self._split(list(ids))
        if not missing_ok:
            refs = {self._actors[s].known.remote(part): s for s, part in parts.items()}
            known = {i for found in self._all_by_shard(refs, "read").values() for i in found}
            unknown = [i for i in ids if i not in known]
            if unknown:
                raise KeyNotFound(f"unknown document id(s): {', '.join(map(repr, unknown[:5]))}")
        refs = {self._actors[s].delete.remote(part, True): s for s, part in parts.items()}
        return sum(self._all_by_shard(refs, "delete").values())

    def flush(self) -> None:
        """Every shard snapshots its index (the next open replays nothing)."""
        self._all({a.flush.remote(): i for i, a in enumerate(self._actors)}, "flush")

    # ---- reads ----
    def get(self, ids: Sequence[str]) -> list[Document]:
        """Documents by id, in the order asked; an unknown id raises ``KeyNotFound``."""
        if isinstance(ids, str):
            raise InvalidArgument("ids must be a list of strings, not a single string")
        ids = list(ids)
        parts = self._split(ids)
        refs = {self._actors[s].get.remote(part): s for s, part in parts.items()}
        by_id = {d.id: d for docs in self._all_by_shard(refs, "read").values() for d in docs}
        return [by_id[i] for i in ids]

    def info(self) -> list[dict[str, Any]]:
        """Each shard's :meth:`Collection.info` (documents, sequence, index size...)."""
        return self._all({a.info.remote(): i for i, a in enumerate(self._actors)}, "read")

    def check(self, *, full: bool = True) -> dict[int, list[str]]:
        """Each shard's :meth:`Collection.check`: problems by shard, ``[]`` where sound."""
        refs = {a.check.remote(full): i for i, a in enumerate(self._actors)}
        return self._all_by_shard(refs, "check")

    def ping(self, timeout_s: float = 1.0) -> list[bool]:
        """Which shards answer within ``timeout_s`` (alive, folder open)."""
        refs = {a.ping.remote(): i for i, a in enumerate(self._actors)}
        got, _ = _gather(refs, time.perf_counter() + timeout_s)
        return [i in got for i in range(self.n_shards)]

    # ---- the first stage ----
    def first_stage(
        self,
        mode: str,
        query: str,
        vec: np.ndarray | None,
        n: int,
        filter: dict[str, Any] | None,
        *,
        metric: str,
        tokens: bool,
        need_sim: bool,
        need_bm25: bool,
        timeout_s: float = DEFAULT_SHARD_TIMEOUT_S,
        ef: int | None = None,
        exact: bool = False,
        rrf_c: float = 60.0,
    ) -> Candidates:
        """The top ``n`` candidates over every shard that answers each phase within
        ``timeout_s``, as :meth:`Engine._candidates <twostage.engine.Engine._candidates>`
        returns them from one collection (the module's docstring has the phases)."""
        deadline = time.perf_counter() + timeout_s
        n_sh = self.n_shards
        want_dense = mode != "bm25"
        want_bm25 = mode != "dense" or need_bm25
        refs = {
            a.query.remote(
                vec if want_dense else None, query, n, want_dense, want_bm25, filter, ef, exact
            ): s
            for s, a in enumerate(self._actors)
        }
        lists: dict[int, ShardLists]
        lists, missing = _gather(refs, deadline, user_errors=True)
        dk = dd = bk = bs = None
        if want_dense:
            dk, dd = merge_topk(
                [
                    (_global(a.dense_keys, s, n_sh), a.dense_distances)
                    for s, a in lists.items()
                    if a.dense_keys is not None and a.dense_distances is not None
                ],
                n,
                higher_is_better=False,
            )
        if want_bm25:
            bk, bs = merge_topk(
                [
                    (_global(a.bm25_keys, s, n_sh), a.bm25_scores)
                    for s, a in lists.items()
                    if a.bm25_keys is not None and a.bm25_scores is not None
                ],
                n,
            )
        dists = None
        if mode == "dense":
            assert dk is not None and dd is not None
            keys, dists = dk, dd
            scores = _similarity(metric, dd).astype(np.float32)
        elif mode == "bm25":
            assert bk is not None and bs is not None
            keys, scores = bk, bs
        else:
            assert dk is not None and bk is not None
            keys, scores = rrf([dk, bk], k=n, c=rrf_c)
        bm25 = None
        if want_bm25:
            assert bk is not None and bs is not None
            bm25 = dict(zip(bk.tolist(), bs.tolist(), strict=True))
        t_ann = max((a.ann_s for a in lists.values()), default=0.0)
        t_lex = max((a.bm25_s for a in lists.values()), default=0.0)

        # The fetch phase: documents of the merged candidates, from the shards holding them.
        sim_vec = vec if need_sim and dists is None else None
        by_shard: dict[int, list[int]] = {}
        for row, key in enumerate(keys.tolist()):
            by_shard.setdefault(key % n_sh, []).append(row)
        frefs = {
            self._actors[s].fetch.remote(
                np.asarray([int(keys[r]) // n_sh for r in rows], dtype=np.uint64),
                tokens,
                sim_vec,
            ): s
            for s, rows in by_shard.items()
        }
        # The fetch phase gets its own wait: a late shard in the query phase must not leave
        # the ones that answered no time to send their documents.
        fetched, lost = _gather(frefs, time.perf_counter() + timeout_s)
        missing.update(lost)
        docs: list[StoredDoc | None] = [None] * len(keys)
        sims_all = np.full(len(keys), np.nan, dtype=np.float32) if sim_vec is not None else None
        for s, rows in by_shard.items():
            part: ShardDocs | None = fetched.get(s)
            if part is None:
                continue
            for j, r in enumerate(rows):
                d = part.docs[j]
                # Router keys: the shard's key is unique only within its shard.
                docs[r] = None if d is None else replace(d, key=int(keys[r]))
            if sims_all is not None and part.sims is not None:
                sims_all[rows] = part.sims
        rows_ok = [r for r, d in enumerate(docs) if d is not None]
        sims = None
        if dists is not None:
            sims = _similarity(metric, dists[rows_ok])
        elif sims_all is not None:
            sims = fill_missing(sims_all[rows_ok])
        reason = None
        if missing:
            what = "; ".join(f"shard {s} {why}" for s, why in sorted(missing.items()))
            reason = f"shards: {n_sh - len(missing)} of {n_sh} answered ({what})"
        return Candidates(
            scores=np.asarray(scores)[rows_ok],
            sims=sims,
            docs=[d for d in docs if d is not None],
            bm25=bm25,
            ann_s=t_ann,
            bm25_s=t_lex,
            parts_answered=n_sh - len(missing),
            parts_total=n_sh,
            missing=reason,
        )

    # ---- lifecycle ----
    def close(self) -> None:
        """Snapshot and close every shard (dropping the writer locks), then end the actors.
        A shard that is down is ended as it is (its next open replays from its store)."""
        if self._closed:
            return
        self._closed = True
        refs = {a.close.remote(): i for i, a in enumerate(self._actors)}
        _gather(refs, time.perf_counter() + 120.0)
        self._kill()

    def _kill(self) -> None:
        for a in self._actors:
            ray.kill(a, no_restart=True)

    # ---- helpers ----
    def _check_writable(self) -> None:
        if self._closed:
            raise InvalidArgument(f"sharded collection {self.path} is closed")
        if self._read_only:
            raise ReadOnlyCollection(
                f"sharded collection {self.path} is open read-only (search replicas): send "
                "writes to the ShardedCollection that opened it for writing"
            )

    def _split(self, items: Sequence[Any]) -> dict[int, list[Any]]:
        """Items (documents or ids) grouped by owning shard, in their order."""
        parts: dict[int, list[Any]] = {}
        for item in items:
            doc_id = item.id if isinstance(item, Document) else item
            if not isinstance(doc_id, str):
                raise InvalidArgument(f"document ids are strings, not {doc_id!r}")
            parts.setdefault(self.shard_of(doc_id), []).append(item)
        return parts

    def _all_by_shard(
        self, refs: dict[Any, int], what: str, timeout_s: float | None = None
    ) -> dict[int, Any]:
        """Every shard's answer, or :class:`ShardUnavailable` naming those without one (an
        error a shard raised on purpose, a twostage error, is raised as it is)."""
        deadline = None if timeout_s is None else time.perf_counter() + timeout_s
        got, missing = _gather(refs, deadline, user_errors=True, any_twostage=True)
        if missing:
            what_ = "; ".join(f"shard {s} {why}" for s, why in sorted(missing.items()))
            raise ShardUnavailable(
                f"{what} on {self.path}: {len(missing)} of {len(refs)} shards did not answer "
                f"({what_}); a restarting shard comes back by itself: try again"
            )
        return got

    def _all(self, refs: dict[Any, int], what: str, timeout_s: float | None = None) -> list[Any]:
        got = self._all_by_shard(refs, what, timeout_s)
        return [got[s] for s in sorted(got)]

    def _one(self, shard: int, ref: Any, what: str) -> Any:
        return self._all_by_shard({ref: shard}, what)[shard]


def _gather(
    refs: dict[Any, int],
    deadline: float | None,
    *,
    user_errors: bool = False,
    any_twostage: bool = False,
) -> tuple[dict[int, Any], dict[int, str]]:
    """Answers by shard that came by ``deadline`` (a ``perf_counter`` value; None: no limit),
    and why the others did not. ``user_errors``: an ``InvalidArgument`` a shard raised (bad
    input, the same for every shard) is raised here; ``any_twostage``: any twostage error."""
    if not refs:
        return {}, {}
    timeout = None if deadline is None else max(deadline - time.perf_counter(), 0.0)
    ready, late = ray.wait(list(refs), num_returns=len(refs), timeout=timeout)
    got: dict[int, Any] = {}
    missing: dict[int, str] = {}
    for ref in ready:
        s = refs[ref]
        try:
            got[s] = ray.get(ref)
        except RayTaskError as e:
            cause = e.cause
            if isinstance(cause, TwostageError) and (
                any_twostage or (user_errors and isinstance(cause, InvalidArgument))
            ):
                raise cause from None
            missing[s] = f"failed: {type(cause).__name__}: {cause}"
        except RayError as e:
            missing[s] = f"is unavailable ({type(e).__name__}: died or restarting)"
    for ref in late:
        missing[refs[ref]] = "is late (no answer by the deadline)"
    return got, missing


def _global(keys: np.ndarray, shard: int, n_shards: int) -> np.ndarray:
    """Router keys of a shard's local keys: ``key * n + shard``."""
    return keys.astype(np.uint64) * np.uint64(n_shards) + np.uint64(shard)


def _similarity(metric: str, distances: np.ndarray) -> np.ndarray:
    """First-stage similarity from distances, as the engine computes it."""
    d = np.asarray(distances, dtype=np.float64)
    return np.asarray(-d if metric == "l2" else 1.0 - d, dtype=np.float64)


__all__ = ["DEFAULT_SHARD_TIMEOUT_S", "ShardedAddResult", "ShardedCollection"]
