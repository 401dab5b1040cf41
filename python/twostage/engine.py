"""The two-stage search: encode, HNSW candidates, fetch, rerank within a deadline, merge.

The first stage is dense (the bi-encoder and the HNSW index), lexical (``"bm25"``, the
collection's tantivy index) or ``"hybrid"``: both lists fused by reciprocal rank
(the core's :func:`~twostage.rrf`) before reranking.

>>> from twostage import Collection, Engine, Reranker
>>> reranker = Reranker.load("twostage-rerank")  # doctest: +SKIP
>>> engine = Engine(Collection.open("docs/"), reranker=reranker)  # doctest: +SKIP
>>> resp = engine.search("how do I read a gzip file", k=5)  # doctest: +SKIP
>>> [(h.id, h.reranked) for h in resp.hits]  # doctest: +SKIP

The reranker sits in the core's :class:`~twostage.Slot`: :meth:`Engine.swap_reranker` replaces
it atomically, and each search reads the slot once, so every score in one answer comes from
one model version. The deadline: candidates are scored in first-stage order, batch by batch;
before each batch the engine predicts its cost from measured throughput and stops when it
would overrun ``budget_ms``. Whatever was not scored keeps its first-stage order after the
scored ones, and the answer says ``degraded``. A reranker that raises, hangs past the
deadline (its run is cancelled) or returns non-finite scores gives the same fallback: never
an error, never an empty answer.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, Literal, Protocol, TypeVar

import numpy as np
import onnxruntime as ort

from twostage._core import Index, Slot, rerank_order, rrf
from twostage._onnx import Batch, pad
from twostage.collection import Collection
from twostage.config import (
    DEFAULT_BUDGET_MS,
    DEFAULT_CANDIDATES,
    DEFAULT_DEPTH,
    DEFAULT_FIRST_STAGE,
    DEFAULT_RERANKER,
    FIRST_STAGES,
    EngineConfig,
    fusion_problem,
)
from twostage.document import check_json_unicode, check_unicode
from twostage.encoder import Encoder
from twostage.errors import EncoderMismatch, InvalidArgument, InvalidModel
from twostage.filters import KeySet, exact_is_cheaper
from twostage.fusion import first_stage_signals, fuse_signals
from twostage.reranker import Pairs, Refine, Reranker
from twostage.store import StoredDoc

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """A bounded, thread-safe LRU map with hit and miss counters."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: K) -> V | None:
        """The value, refreshed as most recent, or ``None`` (counted as a miss)."""
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: K, value: V) -> None:
        """Insert, evicting the least recently used entries past the size."""
        if self._size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def stats(self) -> dict[str, int]:
        """``size``, ``capacity``, ``hits``, ``misses``."""
        with self._lock:
            return {
                "size": len(self._data),
                "capacity": self._size,
                "hits": self.hits,
                "misses": self.misses,
            }

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True)
class Hit:
    """One result.

    ``score`` is the final score, the one hits are ordered by: when ``reranked``, the
    reranker's output fused with the first-stage signals as the model or the config says
    (:func:`fuse`, :mod:`twostage.fusion`, :attr:`EngineConfig.fusion_weight`), else the
    first-stage score; the scales differ, so compare scores only among hits with the same
    ``reranked``. ``reranker_score`` is the cross-encoder's own output (a one-label head's
    logit, else P(relevant)), before any fusion; None when not reranked.
    ``first_stage_rank`` counts from 1, as every interface shows it (the CLI, the page, the
    JSON). ``first_stage_score`` is the
    first stage's own score: the dense similarity (``1 - distance`` for cos/ip,
    ``-distance`` for l2), BM25, or the reciprocal-rank fusion score (hybrid). Fusion always
    uses the dense similarity, computed from the stored embedding for lexical candidates.
    """

    id: str
    score: float
    first_stage_score: float
    first_stage_rank: int  # rank among the first-stage candidates, from 1 (the top one)
    reranked: bool
    reranker_version: str | None  # the model that scored it (None when not reranked)
    title: str
    snippet: str
    metadata: dict[str, Any] | None = None
    reranker_score: float | None = None  # the model's own score, before any fusion


@dataclass(frozen=True)
class Timings:
    """Milliseconds per stage; ``total`` is the wall time of the whole search."""

    encode: float = 0.0
    ann: float = 0.0
    bm25: float = 0.0  # the BM25 search (bm25 and hybrid first stages)
    fetch: float = 0.0
    rerank: float = 0.0
    total: float = 0.0


@dataclass(frozen=True)
class SearchResponse:
    """Hits, per-stage timings, and how the answer was made."""

    query: str
    hits: list[Hit]
    timings: Timings
    degraded: bool  # the reranker did not score every candidate it was asked to
    degraded_reason: str | None
    reranker_version: str | None  # the one version that scored this answer (None: not reranked)
    first_stage: str  # "dense", "bm25" or "hybrid"
    candidates: int  # first-stage candidates considered for reranking
    scored: int  # candidates with a reranker score (cached ones included)
    cached_scores: int  # of those, from the score cache
    query_cached: bool  # the query vector came from the cache
    notes: list[str] = field(default_factory=list)
    # A sharded first stage (twostage.distributed): the shards that answered in time, of all;
    # fewer is a partial answer, ``degraded`` with the reason first. None: one collection.
    shards_answered: int | None = None
    shards_total: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (for ``--json`` and the HTTP layer)."""
        return asdict(self)


@dataclass(frozen=True)
class Defaults:
    """What a search uses when it does not say: the config's value, else the reranker's
    measured one (its twostage.json ``defaults``), else :mod:`twostage.config`'s."""

    first_stage: str
    depth: int
    budget_ms: float
    candidates: int  # the cascade's pool (see EngineConfig.candidates)


@dataclass(frozen=True)
class Candidates:
    """A first stage's answer as the second stage reads it: what :meth:`Engine._candidates`
    returns, from the engine's own collection or (a subclass) from somewhere else, such as
    :mod:`twostage.distributed`'s shards.

    ``docs`` are the candidates in first-stage order, their keys unique among them (the
    score cache and the BM25 signal look them up by key); ``scores`` their first-stage
    scores; ``sims`` their dense similarities when the search made them or was asked to;
    ``bm25`` the lexical list's scores by key when it ran. A first stage made of parts
    (shards) says how many answered (``parts_answered`` of ``parts_total``) and, when not
    all did, why (``missing``): the answer is then ``degraded``, never an error.
    """

    scores: np.ndarray
    sims: np.ndarray | None
    docs: list[StoredDoc]
    bm25: dict[int, float] | None
    ann_s: float = 0.0
    bm25_s: float = 0.0
    parts_answered: int | None = None
    parts_total: int | None = None
    missing: str | None = None


class PairScorer(Protocol):
    """Scores packed pairs for the engine somewhere else: a queue shared by many requests.

    The server's cross-request batcher (``twostage.server.batching.Batcher``) is one. It
    must score only with ``rr`` (one model version per answer), stop scoring by
    ``deadline`` (a ``time.perf_counter()`` value), and never raise for a model failure.
    """

    def score_pairs(
        self, rr: Reranker, pairs: Pairs, deadline: float, per_token: float
    ) -> tuple[dict[int, float], str | None]:
        """Scores by pair index for the pairs scored in time, and why any were not.

        ``per_token`` is the engine's predicted cost (seconds per padded token), a seed for
        the scorer's own estimate. The reason starts with ``budget``, ``timeout``,
        ``reranker failed`` or ``reranker returned non-finite`` as the engine's own do.
        """
        ...


def fuse(logits: np.ndarray, sims: np.ndarray, w: float, rule: str = "linear") -> np.ndarray:
    """The score reranked candidates are ordered by: the reranker's beside the first stage's.

    ``linear``: ``logit + w * similarity``. ``z``: ``(1 - w) * z(logit) + w * z(similarity)``,
    each standardised over this query's scored candidates, so ``w`` (in [0, 1]) does not
    depend on how widely a model's logits spread in one domain or another.

    >>> fuse(np.array([2.0, 0.0, 1.0]), np.array([0.5, 0.7, 0.6]), 0.25, "z").round(2).tolist()
    [0.61, -0.61, 0.0]
    """
    if rule == "linear":
        return logits + w * sims
    if rule != "z":
        raise InvalidArgument(fusion_problem(rule, w) or f"unknown fusion rule {rule!r}")

    def z(x: np.ndarray) -> np.ndarray:
        return (x - x.mean()) / (x.std() + 1e-6)

    return (1.0 - w) * z(logits) + w * z(sims)


class _Cancel:
    """Cancels an onnxruntime run when the deadline passes (a hung or slow model)."""

    def __init__(self, seconds: float) -> None:
        self.options = ort.RunOptions()
        self._seconds = max(seconds, 0.0)
        self._timer = threading.Timer(self._seconds, self._fire)
        self._timer.daemon = True
        self.fired = False

    def _fire(self) -> None:
        self.fired = True
        self.options.terminate = True

    def __enter__(self) -> _Cancel:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def run(self, rr: Reranker, batch: Batch) -> np.ndarray:
        """``rr.run(batch)`` on a thread of its own, waited for until the cancel time at most
        (instead of the timer: use one or the other).

        onnxruntime reads the terminate flag between graph nodes only: on a loaded CPU a
        cancelled batched run went on for 100-400 ms after it. At the cancel time this fires,
        raises (``concurrent.futures.TimeoutError``) and the run ends on its own thread.
        """
        done: Future[np.ndarray] = Future()

        def work() -> None:
            try:
                done.set_result(rr.run(batch, self.options))
            except BaseException as e:  # handed to the waiting caller, whatever it is
                done.set_exception(e)

        threading.Thread(target=work, name="twostage-run", daemon=True).start()
        try:
            return done.result(timeout=self._seconds)
        except FutureTimeout:
            self._fire()
            raise


class Engine:
    """Two-stage search over a :class:`~twostage.collection.Collection`. Thread-safe.

    Args:
        collection: the documents and index (its encoder embeds the queries).
        encoder: optional; if given it must be the collection's encoder (same fingerprint).
        reranker: a :class:`~twostage.reranker.Reranker`; ``"default"`` (the default): the
            shipped ``twostage-rerank``; ``None``: first stage only (until
            :meth:`swap_reranker`).
        config: defaults for ``k``, ``depth``, ``budget_ms``, batch size, cache sizes, limits.
        scorer: optional :class:`PairScorer` that runs the reranker's batches instead of the
            searching thread (a server shares one across requests); ``None``: run them here.

    Over a collection opened ``read_only=True``, searches follow the process that writes it:
    at most every :attr:`REFRESH_S` seconds a search first applies what it committed since.

    >>> resp = engine.search("query", k=10, depth=50, budget_ms=120)  # doctest: +SKIP
    >>> resp.timings.total, resp.degraded  # doctest: +SKIP
    """

    #: How stale a read-only collection's index may get (one SQLite read per period).
    REFRESH_S = 0.5
    # Filters resolve to key sets the search applies as it goes (False: the old way, checked
    # after the search, widening it until enough match; kept for benches/filter.py).
    _filter_in_index = True

    def __init__(
        self,
        collection: Collection,
        encoder: Encoder | None = None,
        reranker: Reranker | Literal["default"] | None = "default",
        config: EngineConfig | None = None,
        *,
        scorer: PairScorer | None = None,
    ) -> None:
        if encoder is not None and encoder.fingerprint != collection.encoder.fingerprint:
            raise EncoderMismatch(
                f"encoder {encoder.name} (fingerprint {encoder.fingerprint}) is not the one "
                f"that embedded {collection.path} ({collection.encoder.fingerprint})"
            )
        self._col = collection
        self._setup(
            collection.encoder,
            collection.manifest["metric"],
            lexical=collection.lexical is not None,
            vocab=collection.vocab_fingerprint,
            name=str(collection.path),
            reranker=reranker,
            config=config,
            scorer=scorer,
        )

    def _setup(
        self,
        encoder: Encoder,
        metric: str,
        *,
        lexical: bool,
        vocab: str,
        name: str,
        reranker: Reranker | Literal["default"] | None,
        config: EngineConfig | None,
        scorer: PairScorer | None,
    ) -> None:
        """What an engine holds whatever answers its first stage: the query encoder, the
        metric, whether BM25 exists, the stored tokens' vocabulary, the reranker slot and
        caches. A subclass whose first stage is elsewhere (:meth:`_candidates`) calls this
        instead of ``__init__``."""
        if isinstance(reranker, str):
            if reranker != "default":
                raise InvalidArgument(
                    f"reranker must be a Reranker, None or 'default', not {reranker!r} "
                    "(load a model with Reranker.load)"
                )
            reranker = Reranker.load(DEFAULT_RERANKER)
        self._encoder = encoder
        self.config = config or EngineConfig()
        self._metric = metric
        self._has_lexical = lexical
        self._vocab = vocab
        self._name = name
        self._query_cache: LRUCache[str, np.ndarray] = LRUCache(self.config.query_cache_size)
        # (model version, pair length, query, document key, document seq) -> logit
        self._score_cache: LRUCache[tuple[str, int, str, int, int], float] = LRUCache(
            self.config.score_cache_size
        )
        # Measured reranker cost per padded token, by model version: predicts batch time.
        self._cost: dict[str, float] = {}
        self._cost_lock = threading.Lock()
        self._sane: set[str] = set()  # reranker versions that passed the sanity check
        if reranker is not None:
            self._warm(reranker)
        self._slot = Slot(reranker)
        self._refreshed = time.monotonic()
        self.scorer = scorer
        """Where reranker batches run (``None``: in the searching thread); settable."""

    # ---- the reranker slot ----
    @property
    def reranker(self) -> Reranker | None:
        """The reranker searches use now."""
        obj: Reranker | None = self._slot.get()[1]
        return obj

    @property
    def reranker_generation(self) -> int:
        """Increments on every swap."""
        return self._slot.version

    def swap_reranker(self, reranker: Reranker | None, *, sanity_check: bool = True) -> int:
        """Install ``reranker`` atomically; returns the new slot generation.

        The new model must rank the shipped sanity set (:mod:`twostage.sanity`, 240 judged
        pairs, ~1 s) better than chance, else :class:`~twostage.errors.InvalidModel` names its
        accuracy and nothing changes; ``sanity_check=False`` installs it anyway (a model for
        another language or domain, say). A version that passed once is not checked again.
        It is then warmed (one batch, which also measures its speed for the deadline), so the
        first search after the swap does not pay for it. Searches already running finish with
        the model they started with.

        >>> engine.swap_reranker(Reranker.load("path/to/cross-encoder"))  # doctest: +SKIP
        """
        if reranker is not None:
            if not isinstance(reranker, Reranker):
                raise InvalidArgument(f"expected a Reranker, got {type(reranker).__name__}")
            if sanity_check and reranker.version not in self._sane:
                from twostage.sanity import check_reranker

                result = check_reranker(reranker)
                if not result.passed:
                    raise InvalidModel(
                        f"reranker {reranker.version} ranks the sanity set no better than "
                        f"chance ({result.summary()}); sanity_check=False installs it anyway"
                    )
                self._sane.add(reranker.version)
            self._warm(reranker)
        generation: int = self._slot.swap(reranker)
        return generation

    def _warm(self, rr: Reranker) -> None:
        """Score a small real batch (loads kernels on every thread), then measure the cost
        per token the deadline predicts with: a second batch, or for a row-wise model one
        pair on one thread."""
        q = rr.tokenize_query("how are the candidates ordered")
        doc = rr.token_ids(["a cross-encoder reads the query and the passage together " * 6])[0]
        pairs = rr.pack(q, [doc] * 8)
        batch = pad(list(range(len(pairs))), pairs.ids, pairs.type_ids)
        raw = rr.run(batch)
        t0 = time.perf_counter()
        if rr.row_wise:
            rr.submit(pairs.ids[0], pairs.type_ids[0]).result()
            per_token = (time.perf_counter() - t0) / len(pairs.ids[0])
        else:
            rr.run(batch)
            per_token = (time.perf_counter() - t0) / batch.tokens
        _ = rr.vocab_fingerprint  # computed once here, not inside a search's budget
        if not np.isfinite(rr.postprocess(raw)).all():
            raise InvalidArgument(
                f"reranker {rr.version} gives non-finite scores on a warm-up batch"
            )
        with self._cost_lock:
            self._cost[rr.version] = per_token

    @property
    def defaults(self) -> Defaults:
        """The first stage, depth and budget a search gets when it does not say (with the
        reranker installed now)."""
        return self._defaults_for(self._slot.get()[1])

    def _defaults_for(self, rr: Reranker | None) -> Defaults:
        cfg = self.config
        model = rr.defaults if rr is not None else {}
        stage = cfg.first_stage or model.get("first_stage") or DEFAULT_FIRST_STAGE
        if cfg.first_stage is None and stage != "dense" and not self._has_lexical:
            stage = "dense"  # a default, not a request: follow what the collection has
        depth = cfg.depth if cfg.depth is not None else model.get("depth", DEFAULT_DEPTH)
        budget = cfg.budget_ms if cfg.budget_ms is not None else model.get("budget_ms")
        pool = cfg.candidates if cfg.candidates is not None else model.get("candidates")
        return Defaults(
            first_stage=stage,
            depth=int(depth),
            budget_ms=float(DEFAULT_BUDGET_MS if budget is None else budget),
            candidates=int(DEFAULT_CANDIDATES if pool is None else pool),
        )

    # ---- search ----
    def search(
        self,
        query: str,
        k: int | None = None,
        depth: int | None = None,
        budget_ms: float | None = None,
        rerank: bool = True,
        filter: dict[str, Any] | None = None,
        first_stage: str | None = None,
        candidates: int | None = None,
    ) -> SearchResponse:
        """Top-``k`` hits for ``query``: ``depth`` first-stage candidates, reranked in budget.

        Args:
            query: the question (non-empty, at most ``config.max_query_chars`` characters).
            k: hits to return (default ``config.k``).
            depth: first-stage candidates the reranker may score (default ``config.depth``);
                0 returns the first stage alone.
            budget_ms: the whole search's deadline (default ``config.budget_ms``); 0 leaves
                no time to rerank, so the answer is the first stage, ``degraded``.
            rerank: ``False`` returns the first stage alone.
            filter: metadata equality, e.g. ``{"lang": "en"}``; a list value matches any of
                its items. The first stage searches only the matching documents
                (:mod:`twostage.filters`); none matching is an empty answer.
            first_stage: ``"dense"``, ``"bm25"`` or ``"hybrid"`` (default
                ``config.first_stage``). bm25 and hybrid need the collection's lexical index.
            candidates: the cascade's pool (default :attr:`defaults`): first-stage
                candidates ordered by the reranker's cheap fusion before it scores the top
                ``depth``; unused by a reranker without cheap weights.
        """
        return self._search(query, k, depth, budget_ms, rerank, filter, first_stage, candidates)

    def search_many(
        self,
        queries: Sequence[str],
        k: int | None = None,
        depth: int | None = None,
        budget_ms: float | None = None,
        rerank: bool = True,
        filter: dict[str, Any] | None = None,
        first_stage: str | None = None,
        candidates: int | None = None,
    ) -> list[SearchResponse]:
        """:meth:`search` for each of ``queries``, with the same arguments: the answers in
        the queries' order.

        The query vectors come from one encoder call for all the queries not in the query
        cache, each query run alone inside it (no padding, its own int8 activation scales):
        the vectors are bit for bit those :meth:`search` computes, so an answer does not
        depend on the other queries of the batch. (Padded batches of queries change the
        vectors, cosine ~0.99 to the one-query vector, and were no faster on a 2-core CPU:
        64 queries in 650 ms against 320-480 ms this way.) Then each search runs as
        :meth:`search` does, one after the other, each within its own ``budget_ms``, which
        counts its share of that call (as ``timings.encode``). Every query is checked before
        any work is done: one bad query raises and nothing runs.

        >>> resps = engine.search_many(["read a gzip file", "sort a list"], k=5)  # doctest: +SKIP
        >>> [r.hits[0].id for r in resps]  # doctest: +SKIP
        ['gzip.open', 'list.sort']
        """
        if isinstance(queries, (str, bytes)) or not isinstance(queries, Sequence):
            raise InvalidArgument(
                f"queries must be a list of strings, not {type(queries).__name__}"
            )
        queries = list(queries)
        for query in queries:
            _check_query(query, self.config.max_query_chars)
        rr = self._slot.get()[1]
        mode = self._defaults_for(rr).first_stage if first_stage is None else first_stage
        # bm25 alone needs no vector, but a reranker's fusion may read the dense similarity.
        need_vec = mode != "bm25" or (rerank and depth != 0 and rr is not None)
        prepared: dict[str, tuple[np.ndarray, bool, float]] = {}
        if need_vec:
            todo: list[str] = []
            for query in dict.fromkeys(queries):
                vec = self._query_cache.get(query)
                if vec is None:
                    todo.append(query)
                else:
                    prepared[query] = (vec, True, 0.0)
            if todo:
                t = time.perf_counter()
                vecs = self._encoder.encode(todo, kind="query", batch_size=1)
                share = (time.perf_counter() - t) / len(todo)
                for query, vec in zip(todo, vecs, strict=True):
                    self._query_cache.put(query, vec)
                    prepared[query] = (vec, False, share)
        out: list[SearchResponse] = []
        for query in queries:
            prep = prepared.get(query)
            out.append(
                self._search(
                    query, k, depth, budget_ms, rerank, filter, first_stage, candidates, prep
                )
            )
            if prep is not None:  # a repeated query: its vector is now a cached one
                prepared[query] = (prep[0], True, 0.0)
        return out

    def _search(
        self,
        query: str,
        k: int | None,
        depth: int | None,
        budget_ms: float | None,
        rerank: bool,
        filter: dict[str, Any] | None,
        first_stage: str | None,
        candidates: int | None,
        prepared: tuple[np.ndarray, bool, float] | None = None,
    ) -> SearchResponse:
        """:meth:`search`; ``prepared``: the query vector, whether it came from the cache,
        and this query's share (seconds) of the batched encoder call that made it."""
        t0 = time.perf_counter()
        shared_s = prepared[2] if prepared is not None else 0.0
        cfg = self.config
        rr = self._slot.get()[1]  # one model for the whole answer
        dflt = self._defaults_for(rr)
        k = cfg.k if k is None else k
        depth = dflt.depth if depth is None else depth
        budget = dflt.budget_ms if budget_ms is None else budget_ms
        _check_query(query, cfg.max_query_chars)
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= cfg.max_k:
            raise InvalidArgument(f"k must be an integer in 1..{cfg.max_k}, not {k!r}")
        if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= cfg.max_depth:
            raise InvalidArgument(f"depth must be an integer in 0..{cfg.max_depth}, not {depth!r}")
        if not isinstance(budget, (int, float)) or math.isnan(budget) or budget < 0:
            raise InvalidArgument(f"budget_ms must be a number >= 0, not {budget!r}")
        if filter is not None and not isinstance(filter, dict):
            raise InvalidArgument(f"filter must be a dict of metadata values, not {filter!r}")
        if filter:
            check_json_unicode(filter, "filter")
        if candidates is not None and (
            isinstance(candidates, bool)
            or not isinstance(candidates, int)
            or not 0 <= candidates <= cfg.max_depth
        ):
            raise InvalidArgument(
                f"candidates must be an integer in 0..{cfg.max_depth}, not {candidates!r}"
            )
        mode = dflt.first_stage if first_stage is None else first_stage
        if mode not in FIRST_STAGES:
            raise InvalidArgument(
                f"first_stage must be one of {', '.join(FIRST_STAGES)}, not {mode!r}"
            )
        if mode != "dense" and not self._has_lexical:
            raise InvalidArgument(
                f"first_stage={mode!r} needs a lexical index; collection {self._name} "
                "was created without one (lexical=False)"
            )
        self._catch_up()
        deadline = t0 + budget / 1000.0 - shared_s
        want_rerank = rerank and depth > 0 and rr is not None
        # The weight and its rule go together: the config's pair, else the model's.
        w, rule = cfg.fusion_weight, cfg.fusion_rule or "linear"
        signal_w: dict[str, float] | None = None
        if rr is not None and w is None:
            if rr.fusion_rule == "signals":
                w, signal_w = 0.0, (rr.fusion_signals or {}).get(mode)
            else:
                w, rule = rr.fusion_weight, rr.fusion_rule
        if not want_rerank:
            w, signal_w = 0.0, None
        notes: list[str] = []
        if signal_w and signal_w.get("bm25") and not self._has_lexical:
            notes.append("no lexical index: fused without the BM25 signal")
            signal_w = {n: v for n, v in signal_w.items() if n != "bm25"}
        need_sim = bool(w) or bool(signal_w and signal_w.get("dense"))
        need_bm25 = bool(signal_w and signal_w.get("bm25"))
        # The cascade: a pool of first-stage candidates is ordered by a cheap fusion of the
        # first-stage signals (microseconds), and the reranker scores the top `depth` of that
        # order, as far as the budget goes. Without cheap weights the pool is `depth` long and
        # the order the first stage's.
        cheap_w = (rr.fusion_cheap or {}).get(mode) if want_rerank and signal_w and rr else None
        if cheap_w and cheap_w.get("bm25") and not self._has_lexical:
            cheap_w = {n: v for n, v in cheap_w.items() if n != "bm25"} or None
        pool_n = dflt.candidates if candidates is None else candidates
        pool = max(pool_n, depth) if cheap_w else depth
        if cheap_w and cheap_w.get("dense"):
            need_sim = True
        if cheap_w and cheap_w.get("bm25"):
            need_bm25 = True

        vec: np.ndarray | None = None
        query_cached = False
        if prepared is not None:  # search_many encoded it with the other queries
            vec, query_cached = prepared[0], prepared[1]
        elif mode != "bm25" or need_sim:  # bm25 needs the vector only to fuse with it
            vec = self._query_cache.get(query)
            query_cached = vec is not None
            if vec is None:
                vec = self._encoder.encode([query], kind="query")[0]
                self._query_cache.put(query, vec)
        t_enc = time.perf_counter()

        n = max(k, pool) if want_rerank else k
        cands = self._candidates(
            mode,
            query,
            vec,
            n,
            filter,
            tokens=want_rerank,
            need_sim=need_sim,
            need_bm25=need_bm25,
            deadline=deadline,
        )
        first_arr, sims, docs, bm25 = cands.scores, cands.sims, cands.docs, cands.bm25
        t_ann, t_lex = cands.ann_s, cands.bm25_s
        t_fetch = time.perf_counter()

        first = first_arr.tolist()
        if need_sim and sims is None:
            notes.append("a candidate was deleted during the search: no score fusion")
            w, signal_w = 0.0, None
        scored: dict[int, float] = {}
        cached = 0
        degraded_reason: str | None = None
        rr_version: str | None = None
        cand = min(pool, len(docs)) if want_rerank else 0
        # `order_` is the order candidates are scored in and unscored ones are listed in;
        # `crank[pos]` a candidate's rank in it (the fusion's "rank" signal).
        order_ = list(range(len(docs)))
        if cheap_w and cand > 1:
            head = list(range(cand))
            c = fuse_signals(self._signals(head, docs, sims, bm25, None), cheap_w)
            order_ = sorted(head, key=lambda i: (-c[i], i)) + order_[cand:]
        crank = {p: r for r, p in enumerate(order_)}
        # A second step inside the second stage (the model's `fusion.refine`): the best of
        # the fused order are scored again with longer pairs. Its time is set aside before
        # the first step starts, so the first step cannot spend it.
        refine = rr.fusion_refine if want_rerank and signal_w and rr is not None else None
        if refine is not None and rr is not None:
            if refine.max_length <= rr.max_length or mode not in refine.weights:
                refine = None
        if want_rerank:
            assert rr is not None
            rr_version = rr.version
            todo = order_[: min(depth, cand)]
            step_deadline = deadline
            if refine is not None:
                now = time.perf_counter()
                keep = self._refine_reserve(rr, refine.max_length, min(refine.depth, len(todo)))
                step_deadline = max(deadline - keep, now + (deadline - now) / 2)
            got, cached, degraded_reason = self._rerank(
                rr, query, [docs[p] for p in todo], step_deadline
            )
            scored = {todo[i]: v for i, v in got.items()}
        elif rerank and depth > 0 and rr is None:
            notes.append("no reranker installed: first-stage order")

        final = scored
        shown = dict(scored)  # the logit each hit reports: the refine step's where it ran
        if signal_w and scored:  # the model read beside every first-stage signal
            by_rank = sorted(scored, key=crank.__getitem__)
            sig = self._signals(by_rank, docs, sims, bm25, [crank[p] for p in by_rank])
            sig["reranker"] = np.asarray([scored[p] for p in by_rank], dtype=np.float64)
            fused = fuse_signals(sig, {n: v for n, v in signal_w.items() if n in sig})
            final = dict(zip(by_rank, fused.tolist(), strict=True))
            if refine is not None and len(final) > 1 and time.perf_counter() < deadline:
                assert rr is not None
                final, logits, why = self._refine(
                    rr, refine, mode, query, docs, sims, bm25, final, crank, deadline
                )
                shown.update(logits)
                if why and degraded_reason is None:
                    degraded_reason = f"refine: {why}"
        elif w and sims is not None and scored:  # the model is read beside the similarity
            pos_ = np.fromiter(scored, dtype=np.int64, count=len(scored))
            fused = fuse(
                np.fromiter(scored.values(), dtype=np.float64, count=len(scored)),
                np.asarray(sims, dtype=np.float64)[pos_],
                float(w),
                rule,
            )
            final = dict(zip(scored, fused.tolist(), strict=True))
        t_rr = time.perf_counter()
        base = np.asarray(order_, dtype=np.uint64)
        order = base[rerank_order(base, final)] if final else base
        hits = []
        for pos in order[:k]:
            pos = int(pos)
            d = docs[pos]
            s = final.get(pos)
            hits.append(
                Hit(
                    id=d.id,
                    score=float(s) if s is not None else first[pos],
                    first_stage_score=first[pos],
                    first_stage_rank=pos + 1,
                    reranked=s is not None,
                    reranker_version=rr_version if s is not None else None,
                    title=d.title,
                    snippet=_snippet(d.text, cfg.snippet_chars),
                    metadata=d.metadata,
                    reranker_score=shown.get(pos),
                )
            )
        t_end = time.perf_counter()
        ms = 1000.0
        if cands.missing is not None:  # a partial first stage comes first among the reasons
            degraded_reason = "; ".join(r for r in (cands.missing, degraded_reason) if r)
        return SearchResponse(
            query=query,
            hits=hits,
            timings=Timings(
                encode=(t_enc - t0 + shared_s) * ms,
                ann=t_ann * ms,
                bm25=t_lex * ms,
                fetch=(t_fetch - t_enc - t_ann - t_lex) * ms,
                rerank=(t_rr - t_fetch) * ms,
                total=(t_end - t0 + shared_s) * ms,
            ),
            degraded=degraded_reason is not None,
            degraded_reason=degraded_reason,
            reranker_version=rr_version if scored else None,
            first_stage=mode,
            candidates=cand,
            scored=len(scored),
            cached_scores=cached,
            query_cached=query_cached,
            notes=notes,
            shards_answered=cands.parts_answered,
            shards_total=cands.parts_total,
        )

    def _catch_up(self) -> None:
        """Over a collection opened read-only, apply what its writer committed since the
        last search, at most every :attr:`REFRESH_S` seconds."""
        if self._col.read_only and time.monotonic() - self._refreshed >= self.REFRESH_S:
            self._refreshed = time.monotonic()
            self._col.refresh()

    def _candidates(
        self,
        mode: str,
        query: str,
        vec: np.ndarray | None,
        n: int,
        filter: dict[str, Any] | None,
        *,
        tokens: bool,
        need_sim: bool,
        need_bm25: bool,
        deadline: float,
    ) -> Candidates:
        """The first stage: the top ``n`` candidates for the second stage, with the token ids
        of their texts if ``tokens``, their dense similarities if ``need_sim`` and the BM25
        list's scores if ``need_bm25`` (the cascade's signals). The one seam between the
        stages: a subclass answers it from elsewhere (:class:`twostage.distributed.ShardedEngine`
        from shards) and everything after it, the cascade, the reranker within ``deadline``
        (a ``time.perf_counter()`` value) and the hits, is this class's own."""
        scores, sims, t_ann, t_lex, docs, bm25 = self._first_stage(
            mode, query, vec, n, filter, tokens=tokens, need_sim=need_sim, need_bm25=need_bm25
        )
        return Candidates(scores, sims, docs, bm25, t_ann, t_lex)

    def _first_stage(
        self,
        mode: str,
        query: str,
        vec: np.ndarray | None,
        n: int,
        filter: dict[str, Any] | None,
        *,
        tokens: bool,
        need_sim: bool,
        need_bm25: bool = False,
    ) -> tuple[
        np.ndarray, np.ndarray | None, float, float, list[StoredDoc], dict[int, float] | None
    ]:
        """Top-n candidates: (first-stage scores, similarities or None, ANN seconds, BM25
        seconds, documents, BM25 score by key or None).

        A filter resolves to the keys it allows (:mod:`twostage.filters`), which the search
        applies as it goes: an exact scan when they are few, the filtered HNSW walk
        otherwise, the BM25 list restricted to them. A filter value that is not JSON (or
        ``_filter_in_index`` off) is checked after the search instead, widening it until n
        match."""
        total = len(self._col.index)  # the store's count, without a COUNT(*) per search
        t = time.perf_counter()
        allowed = self._col.matching(filter) if filter and self._filter_in_index else None
        t_ann = t_lex = 0.0
        if filter:  # resolving the filter counts as first-stage time
            if mode == "bm25":
                t_lex = time.perf_counter() - t
            else:
                t_ann = time.perf_counter() - t
        post = bool(filter) and allowed is None
        ask = min(max(4 * n, 64), max(total, 1)) if post else n
        while True:
            keys, scores, dists, dt_ann, dt_lex, bm25 = self._retrieve(
                mode, query, vec, max(ask, 1), need_bm25, allowed
            )
            t_ann += dt_ann
            t_lex += dt_lex
            got = self._col.fetch(keys, tokens=tokens)  # ids only if reranking
            rows = [
                i
                for i, d in enumerate(got)
                # None: deleted between the search and the fetch.
                if d is not None and (filter is None or _matches(d.metadata, filter))
            ][:n]
            if not post or len(rows) >= n or ask >= total:
                break
            ask = min(ask * 4, total)
        docs = [d for d in (got[i] for i in rows) if d is not None]
        first = scores[rows]
        sims: np.ndarray | None = None
        if dists is not None:
            sims = np.asarray([_similarity(self._metric, float(x)) for x in dists[rows]])
        elif need_sim and vec is not None:
            sims = self._similarities(vec, keys[rows])
        return first, sims, t_ann, t_lex, docs, bm25

    def _retrieve(
        self,
        mode: str,
        query: str,
        vec: np.ndarray | None,
        ask: int,
        need_bm25: bool = False,
        allowed: KeySet | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, float, float, dict[int, float] | None]:
        """(keys, first-stage scores, dense distances if dense, ANN s, BM25 s, BM25 score
        by key when the lexical list was run), only ``allowed`` keys if given."""
        t_ann = t_lex = 0.0
        dkeys = dd = None
        if mode != "bm25":
            assert vec is not None
            t = time.perf_counter()
            every = self._all_keys if self.config.exact_search else None
            dkeys, dd = dense_search(
                self._col.index, vec, ask, self.config.ef_search, allowed, every
            )
            t_ann = time.perf_counter() - t
            if mode == "dense":
                sim = np.asarray([_similarity(self._metric, float(x)) for x in dd], np.float32)
                bm25 = None
                if need_bm25:  # the lexical list only as a signal for fusion
                    t = time.perf_counter()
                    lk, ls = self._col.lexical_search(query, ask, allowed=allowed)
                    t_lex = time.perf_counter() - t
                    bm25 = dict(zip(lk.tolist(), ls.tolist(), strict=True))
                return dkeys, sim, dd, t_ann, t_lex, bm25
        t = time.perf_counter()
        lkeys, lscores = self._col.lexical_search(query, ask, allowed=allowed)
        t_lex = time.perf_counter() - t
        bm25 = dict(zip(lkeys.tolist(), lscores.tolist(), strict=True))
        if mode == "bm25":
            return lkeys, lscores, None, t_ann, t_lex, bm25
        assert dkeys is not None
        fused, fscores = rrf([dkeys, lkeys], k=ask, c=self.config.rrf_c)
        return fused, fscores, None, t_ann, t_lex, bm25

    @staticmethod
    def _signals(
        positions: Sequence[int],
        docs: Sequence[StoredDoc],
        sims: np.ndarray | None,
        bm25: dict[int, float] | None,
        ranks: Sequence[int] | None,
    ) -> dict[str, np.ndarray]:
        """The first-stage signals (:mod:`twostage.fusion`) of candidates at ``positions``;
        ``rank`` is their rank in ``ranks`` (default: the first stage's)."""
        return first_stage_signals(
            [docs[p].key for p in positions],
            None if sims is None else np.asarray(sims)[list(positions)],
            bm25,
            positions if ranks is None else ranks,
        )

    def _all_keys(self) -> np.ndarray:
        """Every document's key (the exact search's scan list)."""
        return np.fromiter(self._col.store.keys(), dtype=np.uint64)

    def _similarities(self, vec: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """The dense similarity of lexical candidates, from their stored embeddings. A
        candidate deleted since it was fetched gets the lowest similarity of the others (a
        fusion weighting the dense signal needs one for every candidate)."""
        emb = self._col.store.embeddings(keys, missing_nan=True)
        return fill_missing(dense_similarities(self._metric, emb, vec))

    def _refine_reserve(self, rr: Reranker, length: int, n: int) -> float:
        """Seconds to set aside for the refine step: ``n`` pairs of ``length`` tokens at the
        model's measured cost, ``rr.workers`` at a time (0 until a pair has been timed)."""
        fixed = self.config.rerank_ms_per_token
        with self._cost_lock:
            per_token = self._cost.get(rr.version, 0.0) if fixed is None else fixed / 1000.0
        return per_token * length * math.ceil(n / max(1, rr.workers)) + _RESERVE_S

    def _refine(
        self,
        rr: Reranker,
        refine: Refine,
        mode: str,
        query: str,
        docs: Sequence[StoredDoc],
        sims: np.ndarray | None,
        bm25: dict[int, float] | None,
        final: dict[int, float],
        crank: dict[int, int],
        deadline: float,
    ) -> tuple[dict[int, float], dict[int, float], str | None]:
        """The refine step: the best ``refine.depth`` of the fused order scored again at
        ``refine.max_length`` tokens, fused with ``refine.weights`` (``rank``: the rank in
        the fused order) and placed first, in that order; the rest keep theirs. Returns the
        new final scores, the refined logits by position, and why it stopped short (None)."""
        ranked = sorted(final, key=lambda p: (-final[p], crank[p]))
        top = ranked[: refine.depth]
        long_rr = rr.at_length(refine.max_length)
        got, _, why = self._rerank(
            long_rr, query, [docs[p] for p in top], deadline, one_anyway=False
        )
        if not got:
            return final, {}, why
        by = sorted(got)  # indices into `top`, which is in rank order: index = rank
        keys = [top[i] for i in by]
        sig = self._signals(keys, docs, sims, bm25, by)
        sig["reranker"] = np.asarray([got[i] for i in by], dtype=np.float64)
        fused = fuse_signals(sig, {n: v for n, v in refine.weights[mode].items() if n in sig})
        # Refined candidates above every other: their fused score lifted past the rest's.
        rest = [v for p, v in final.items() if p not in set(keys)]
        lift = (max(rest) - float(fused.min()) + 1.0) if rest else 0.0
        out = dict(final)
        out.update({p: f + lift for p, f in zip(keys, fused.tolist(), strict=True)})
        return out, {p: got[i] for p, i in zip(keys, by, strict=True)}, why

    def _rerank(
        self,
        rr: Reranker,
        query: str,
        docs: Sequence[StoredDoc],
        deadline: float,
        one_anyway: bool = True,
    ) -> tuple[dict[int, float], int, str | None]:
        """Scores by candidate position; stops before a batch that would miss the deadline.
        ``one_anyway``: with time left but no pair predicted to fit, score one rather than
        none (the refine step, which has the first step's scores, does not)."""
        scored: dict[int, float] = {}
        if time.perf_counter() >= deadline:
            # Even cached scores are not used: a spent budget means "first stage now".
            return scored, 0, f"budget: spent before reranking; {len(docs)} candidates not scored"
        todo: list[int] = []
        version = rr.version
        for pos, d in enumerate(docs):
            s = self._score_cache.get((version, rr.max_length, query, d.key, d.seq))
            if s is None:
                todo.append(pos)
            else:
                scored[pos] = s
        cached = len(scored)
        if not todo:
            return scored, cached, None
        try:
            q_ids = rr.tokenize_query(query)
            reuse = rr.vocab_fingerprint == self._vocab
            doc_ids: list[Sequence[int]] = []
            need_text = [p for p in todo if not reuse or docs[p].tokens is None]
            fresh = dict(
                zip(
                    need_text,
                    rr.token_ids([docs[p].document().content for p in need_text]),
                    strict=True,
                )
            )
            for p in todo:
                tok = fresh.get(p)
                doc_ids.append(tok if tok is not None else docs[p].tokens or [])
            pairs = rr.pack(q_ids, doc_ids)
        except Exception as e:  # a broken tokenizer must not fail the search
            return scored, cached, f"reranker failed: {type(e).__name__}: {e}"
        bs = self.config.rerank_batch_size
        fixed = self.config.rerank_ms_per_token
        with self._cost_lock:
            per_token = self._cost.get(version, 0.0) if fixed is None else fixed / 1000.0
        scorer = self.scorer
        if scorer is None and rr.row_wise:
            return self._rerank_rows(
                rr, query, docs, todo, pairs, scored, deadline, per_token, one_anyway
            )
        if scorer is not None:
            got, reason = scorer.score_pairs(rr, pairs, deadline, per_token)
            for i, s in got.items():
                pos = todo[i]
                scored[pos] = s
                d = docs[pos]
                self._score_cache.put((version, rr.max_length, query, d.key, d.seq), s)
            return scored, cached, reason
        start = 0
        while start < len(todo):
            rows = list(range(start, min(start + bs, len(todo))))
            # Shrink the batch to what the budget is predicted to hold, so a slow machine
            # still scores its best candidates (and keeps measuring the model's real speed).
            width = max(len(pairs.ids[i]) for i in rows)
            now = time.perf_counter()
            left_s = deadline - now - _RESERVE_S
            fit = int(left_s / (per_token * width)) if per_token > 0 else len(rows)
            if fit < 1 and not scored and now < deadline and one_anyway:
                fit = 1  # some time left, nothing scored: one pair rather than none
            if fit < 1:
                left = len(todo) - start
                return scored, cached, f"budget: {left} of {len(docs)} candidates not scored"
            rows = rows[:fit]
            start += len(rows)
            batch = pad(rows, [pairs.ids[i] for i in rows], [pairs.type_ids[i] for i in rows])
            t = time.perf_counter()
            # Past the deadline plus a grace period the run is cancelled, and not waited for.
            cancel = _Cancel(deadline - t + self.config.cancel_grace_ms / 1000.0)
            try:
                scores = rr.postprocess(cancel.run(rr, batch))
            except Exception as e:
                if cancel.fired:
                    return scored, cached, "timeout: reranker run cancelled at the deadline"
                return scored, cached, f"reranker failed: {type(e).__name__}: {e}"
            took = time.perf_counter() - t
            if fixed is None:
                with self._cost_lock:  # moving average: one slow batch does not stall many
                    prev = self._cost.get(version, took / batch.tokens)
                    self._cost[version] = 0.7 * prev + 0.3 * took / batch.tokens
                    per_token = self._cost[version]
            if not np.isfinite(scores).all():
                return scored, cached, "reranker returned non-finite scores"
            for i, s in zip(rows, scores.tolist(), strict=True):
                pos = todo[i]
                scored[pos] = s
                d = docs[pos]
                self._score_cache.put((version, rr.max_length, query, d.key, d.seq), s)
        return scored, cached, None

    def _rerank_rows(
        self,
        rr: Reranker,
        query: str,
        docs: Sequence[StoredDoc],
        todo: list[int],
        pairs: Pairs,
        scored: dict[int, float],
        deadline: float,
        per_token: float,
        one_anyway: bool = True,
    ) -> tuple[dict[int, float], int, str | None]:
        """Row-wise scoring, pipelined: ``rr.workers`` pairs in flight, and before each next
        pair the check that it is predicted to end in time (``per_token``: one pair on one
        thread). No batch barrier: a free thread takes the next pair at once."""
        cached = len(scored)
        version = rr.version
        fixed = self.config.rerank_ms_per_token is not None
        inflight: dict[Future[np.ndarray], tuple[int, float]] = {}
        nxt = 0
        reason: str | None = None
        stop = False
        # Past the deadline plus a grace period every run in flight is cancelled.
        now = time.perf_counter()
        cancel = _Cancel(deadline - now + self.config.cancel_grace_ms / 1000.0)
        with cancel:
            while inflight or (nxt < len(todo) and not stop):
                while not stop and nxt < len(todo) and len(inflight) < rr.workers:
                    now = time.perf_counter()
                    i = nxt
                    cost = per_token * len(pairs.ids[i])
                    # Predicted to end late: stop, unless nothing is scored or running yet
                    # and some time is left (then one pair rather than none).
                    if now + cost > deadline - _RESERVE_S and (
                        scored or inflight or now >= deadline or not one_anyway
                    ):
                        stop = True
                        break
                    fut = rr.submit(pairs.ids[i], pairs.type_ids[i], cancel.options)
                    inflight[fut] = (i, time.perf_counter())
                    nxt += 1
                if not inflight:
                    break
                done, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
                for fut in done:
                    i, t = inflight.pop(fut)
                    took = time.perf_counter() - t
                    try:
                        s = float(rr.postprocess(fut.result())[0])
                    except Exception as e:
                        stop = True
                        if reason is None:
                            reason = (
                                "timeout: reranker run cancelled at the deadline"
                                if cancel.fired
                                else f"reranker failed: {type(e).__name__}: {e}"
                            )
                        continue
                    if not math.isfinite(s):
                        stop = True
                        reason = reason or "reranker returned non-finite scores"
                        continue
                    if not fixed:
                        with self._cost_lock:  # one pair on one thread, per token
                            prev = self._cost.get(version, took / len(pairs.ids[i]))
                            per_token = 0.8 * prev + 0.2 * took / len(pairs.ids[i])
                            self._cost[version] = per_token
                    pos = todo[i]
                    scored[pos] = s
                    d = docs[pos]
                    self._score_cache.put((version, rr.max_length, query, d.key, d.seq), s)
        if reason is None and nxt < len(todo):
            reason = f"budget: {len(todo) - nxt} of {len(docs)} candidates not scored"
        return scored, cached, reason

    # ---- introspection ----
    @property
    def collection(self) -> Collection:
        """The collection searched."""
        return self._col

    def cache_stats(self) -> dict[str, dict[str, int]]:
        """Hit and miss counters of the query-vector and score caches."""
        return {"query": self._query_cache.stats(), "scores": self._score_cache.stats()}


#: Kept free at the end of the budget for what follows the reranker (fusion, the hits).
_RESERVE_S = 0.001


def dense_search(
    index: Index,
    vec: np.ndarray,
    k: int,
    ef: int | None,
    allowed: KeySet | None,
    all_keys: Callable[[], np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The dense list: the top ``k`` (keys, distances) for the query vector, only ``allowed``
    keys if given (an exact scan when they are few, else the filtered HNSW walk). With
    ``all_keys`` (the index's keys, when asked) the search is exact: a scan of every vector
    (or every allowed one)."""
    k = max(min(k, len(index)), 1)
    if allowed is None:
        if all_keys is not None:
            res = index.search_exact(vec, all_keys(), k=k)
        else:
            res = index.search(vec, k=k, ef=ef)
    elif all_keys is not None or exact_is_cheaper(
        allowed.count, len(index), max(k, ef or index.search_ef(k))
    ):
        res = index.search_exact(vec, allowed.keys, k=k)
    else:
        res = index.search(vec, k=k, ef=ef, allowed=allowed.mask)
    count = int(res.counts[0]) if res.counts.ndim else int(res.counts)
    return res.keys[:count], res.distances[:count]


def dense_similarities(metric: str, emb: np.ndarray, vec: np.ndarray) -> np.ndarray:
    """The similarity of each row of ``emb`` (stored embeddings, float32 ``[n, dim]``) to the
    query vector, as the first stage scores under ``metric``; NaN for a NaN row (a document
    deleted since it was searched)."""
    q = np.asarray(vec, dtype=np.float32)
    if metric == "l2":
        sims = -((emb - q) ** 2).sum(axis=1)
    else:
        sims = emb @ q
        if metric == "cos":
            norms = np.linalg.norm(emb, axis=1) * max(float(np.linalg.norm(q)), 1e-12)
            sims = sims / np.maximum(norms, 1e-12)
    return np.asarray(sims)


def fill_missing(sims: np.ndarray) -> np.ndarray:
    """NaN similarities (candidates deleted meanwhile) set to the lowest of the others: a
    fusion weighting the dense signal needs one for every candidate."""
    gone = np.isnan(sims)
    if gone.any():
        sims[gone] = sims[~gone].min() if not gone.all() else 0.0
    return sims


def _check_query(query: object, limit: int) -> None:
    if not isinstance(query, str):
        raise InvalidArgument(f"query must be a string, not {type(query).__name__}")
    if not query.strip():
        raise InvalidArgument("query is empty")
    if len(query) > limit:
        raise InvalidArgument(f"query is {len(query)} characters; the limit is {limit}")
    check_unicode(query, "query")


def _similarity(metric: str, distance: float) -> float:
    return float(-distance if metric == "l2" else 1.0 - distance)


def _matches(metadata: dict[str, Any] | None, filter: dict[str, Any]) -> bool:
    if not filter:
        return True
    if metadata is None:
        return False
    for key, want in filter.items():
        if key not in metadata:
            return False
        have = metadata[key]
        if isinstance(want, list):
            if have not in want:
                return False
        elif have != want:
            return False
    return True


def _snippet(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit)
    return text[: cut if cut > limit // 2 else limit] + " …"


__all__ = [
    "Candidates",
    "Defaults",
    "Engine",
    "Hit",
    "LRUCache",
    "PairScorer",
    "SearchResponse",
    "Timings",
]
