"""The two-stage search over a sharded collection: the first stage on the shards, the second
stage here, by the engine's own code.

:class:`ShardedEngine` is an :class:`~twostage.engine.Engine` whose first stage
(:meth:`Engine._candidates <twostage.engine.Engine._candidates>`) is the router's
scatter-gather (:meth:`ShardedCollection.first_stage
<twostage.distributed.ShardedCollection.first_stage>`). Everything after it is inherited,
not copied: query encoding and its cache, the cascade's cheap fusion, the reranker within
the budget (in this process, or through a ``scorer=`` such as a Ray Serve deployment), the
final fusion and the hits. A search answers a :class:`~twostage.engine.SearchResponse` as
``Engine.search`` does, with ``shards_answered`` and ``shards_total`` set; an answer without
some shard is ``degraded`` with the reason ``shards: 2 of 3 answered (...)`` first.

>>> import ray; ray.init()  # doctest: +SKIP
>>> from twostage.distributed import ShardedCollection, ShardedEngine
>>> engine = ShardedEngine(ShardedCollection.open("scifact-3/"))  # doctest: +SKIP
>>> resp = engine.search("statins and heart disease", k=10)  # doctest: +SKIP
>>> resp.shards_answered, resp.shards_total, resp.hits[0].id  # doctest: +SKIP
(3, 3, '...')
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.distributed.router import DEFAULT_SHARD_TIMEOUT_S, ShardedCollection
from twostage.encoder import Encoder
from twostage.engine import Candidates, Engine, PairScorer
from twostage.errors import EncoderMismatch, InvalidArgument
from twostage.reranker import Reranker


class ShardedEngine(Engine):
    """Two-stage search over a :class:`ShardedCollection`. Thread-safe.

    Args:
        shards: the sharded collection (its actors answer the first stage).
        encoder: the query encoder; default: the one the manifest names, loaded here. It
            must be the encoder that embedded the shards (same fingerprint).
        reranker, config, scorer: as :class:`~twostage.engine.Engine` takes them.
        shard_timeout_ms: how long a search waits for the shards in each of its two phases
            (the lists, then the documents); a shard that has not answered by then is left
            out of that answer.

    >>> engine = ShardedEngine(sharded, reranker=None, shard_timeout_ms=200)  # doctest: +SKIP
    """

    def __init__(
        self,
        shards: ShardedCollection,
        encoder: Encoder | None = None,
        reranker: Reranker | Literal["default"] | None = "default",
        config: EngineConfig | None = None,
        *,
        scorer: PairScorer | None = None,
        shard_timeout_ms: float = DEFAULT_SHARD_TIMEOUT_S * 1000.0,
    ) -> None:
        if not isinstance(shard_timeout_ms, (int, float)) or not shard_timeout_ms > 0:
            raise InvalidArgument(f"shard_timeout_ms must be > 0, not {shard_timeout_ms!r}")
        m = shards.layout.manifest
        want = m["encoder"]
        if encoder is None:
            encoder = Encoder.load(
                want["spec"], precision=want["precision"], max_length=want["max_length"]
            )
        if encoder.fingerprint != want["fingerprint"]:
            raise EncoderMismatch(
                f"encoder {encoder.name} (fingerprint {encoder.fingerprint}) is not the one "
                f"that embedded {shards.path} ({want['name']}, {want['fingerprint']})"
            )
        self._shards = shards
        self.shard_timeout_ms = float(shard_timeout_ms)
        """How long a search waits for the shards; settable."""
        self._setup(
            encoder,
            m["metric"],
            lexical=bool(m["lexical"]),
            vocab=str(m["tokens"]["vocab"]),
            name=str(shards.path),
            reranker=reranker,
            config=config,
            scorer=scorer,
        )

    @property
    def shards(self) -> ShardedCollection:
        """The sharded collection searched."""
        return self._shards

    @property
    def collection(self) -> Collection:
        """Not one collection: :attr:`shards` is what this engine searches."""
        raise InvalidArgument(
            f"a ShardedEngine searches {self._shards.n_shards} shards, not one collection: "
            "use engine.shards"
        )

    def _catch_up(self) -> None:
        """Nothing: each shard actor follows its own writer."""

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
        return self._shards.first_stage(
            mode,
            query,
            vec,
            n,
            filter,
            metric=self._metric,
            tokens=tokens,
            need_sim=need_sim,
            need_bm25=need_bm25,
            timeout_s=self.shard_timeout_ms / 1000.0,
            ef=self.config.ef_search,
            exact=self.config.exact_search,
            rrf_c=self.config.rrf_c,
        )


__all__ = ["ShardedEngine"]
