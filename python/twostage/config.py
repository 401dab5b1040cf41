"""Settings, with defaults from ``TWOSTAGE_*`` environment variables read here and only here.

>>> from twostage.config import EngineConfig
>>> EngineConfig(depth=50, budget_ms=120).depth
50
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

from twostage.errors import InvalidArgument


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidArgument(f"environment variable {name}={raw!r} is not an integer") from None


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise InvalidArgument(f"environment variable {name}={raw!r} is not a number") from None


def _env_opt_int(name: str) -> int | None:
    return _env_int(name, 0) if os.environ.get(name) else None


def _env_opt_float(name: str) -> float | None:
    return _env_float(name, 0.0) if os.environ.get(name) else None


FIRST_STAGES = ("dense", "bm25", "hybrid")
#: The defaults when neither the config nor the reranker's twostage.json ``defaults`` say:
#: the one place they are written (the CLI, ``Engine``, the server and the page read them
#: through :meth:`twostage.engine.Engine.defaults`). This module sits below all of them.
DEFAULT_FIRST_STAGE = "hybrid"
#: The reranker ``Engine(collection)``, ``twostage search``/``eval``/``serve`` and the demo
#: load unless told otherwise (:func:`default_reranker`).
DEFAULT_RERANKER = "twostage-rerank"
DEFAULT_DEPTH = 50
DEFAULT_BUDGET_MS = 150.0
DEFAULT_CANDIDATES = 100
FUSION_RULES = ("linear", "z")


def default_reranker() -> str | None:
    """:data:`DEFAULT_RERANKER` if this install has its files, else None (the first stage
    answers alone): what every interface loads when the user names no reranker.

    >>> default_reranker() in (DEFAULT_RERANKER, None)
    True
    """
    from twostage._models import BUILTINS  # tokenizers: imported only when asked

    built = BUILTINS.get(DEFAULT_RERANKER)
    try:
        return DEFAULT_RERANKER if built is not None and built.source().exists() else None
    except Exception:  # a missing optional package: no such default here
        return None


def fusion_problem(rule: object, weight: float | None) -> str | None:
    """What is wrong with a fusion (rule, weight) pair, or None: one check for the engine's
    config and a model's twostage.json."""
    if rule not in FUSION_RULES:
        return f"fusion rule must be one of {', '.join(FUSION_RULES)}, not {rule!r}"
    if rule == "z" and weight is not None and not 0.0 <= float(weight) <= 1.0:
        return f"with fusion rule 'z' the weight is the similarity's share, 0..1, not {weight}"
    return None


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """How :class:`~twostage.engine.Engine` searches by default, and the limits it enforces.

    Each default can be set by an environment variable named after the field in upper
    case with a ``TWOSTAGE_`` prefix, e.g. ``TWOSTAGE_BUDGET_MS=120``.
    """

    k: int = field(default_factory=lambda: _env_int("TWOSTAGE_K", 10))
    #: Candidates the reranker may score. None: the reranker's measured default
    #: (``defaults`` in its twostage.json), else :data:`DEFAULT_DEPTH`.
    depth: int | None = field(default_factory=lambda: _env_opt_int("TWOSTAGE_DEPTH"))
    #: The whole search's deadline. None: the reranker's default, else :data:`DEFAULT_BUDGET_MS`.
    budget_ms: float | None = field(default_factory=lambda: _env_opt_float("TWOSTAGE_BUDGET_MS"))
    #: The cascade's pool: first-stage candidates ordered by the reranker's cheap fusion of
    #: first-stage signals (twostage.json ``fusion.cheap``) before the reranker scores the
    #: top ``depth`` of that order. None: the reranker's default, else
    #: :data:`DEFAULT_CANDIDATES`. Unused by a reranker without cheap weights.
    candidates: int | None = None
    #: Pairs per reranker call for a batched reranker (a device provider): smaller batches
    #: follow the deadline more closely. A row-wise (CPU) reranker runs pair by pair, each
    #: started only if predicted to end in time, and does not use it.
    rerank_batch_size: int = field(
        default_factory=lambda: _env_int("TWOSTAGE_RERANK_BATCH_SIZE", 16)
    )
    #: HNSW search width (None: the index's own: its ef_search, or by default one that
    #: follows its size, ``Index.search_ef``).
    ef_search: int | None = None
    #: The dense list by brute force over every stored vector instead of the HNSW walk:
    #: exact, the ground truth for tests and recall figures, O(documents) per search.
    exact_search: bool = False
    query_cache_size: int = field(
        default_factory=lambda: _env_int("TWOSTAGE_QUERY_CACHE_SIZE", 4096)
    )
    score_cache_size: int = field(
        default_factory=lambda: _env_int("TWOSTAGE_SCORE_CACHE_SIZE", 100_000)
    )
    snippet_chars: int = 300
    max_query_chars: int = field(default_factory=lambda: _env_int("TWOSTAGE_MAX_QUERY_CHARS", 2048))
    max_k: int = 1000
    max_depth: int = 1000
    #: How long past the deadline a running reranker batch may go before it is cancelled.
    #: onnxruntime stops a cancelled run at the next graph node, so the overshoot is also
    #: bounded by one node of one batch: keep ``rerank_batch_size`` modest.
    cancel_grace_ms: float = 10.0
    #: A fixed reranker cost per token (ms; real tokens for a row-wise reranker) for the
    #: deadline, instead of the one measured at warm-up and updated after each batch: for
    #: predictable cut-offs.
    rerank_ms_per_token: float | None = None
    #: Reranked hits are ordered by the reranker score fused with the first-stage similarity
    #: (:func:`twostage.engine.fuse`): ``score + fusion_weight * similarity`` ("linear"), or
    #: standardised per query with ``fusion_weight`` the similarity's share in [0, 1] ("z").
    #: None: the reranker's own setting (its twostage.json ``fusion``), else 0 / "linear".
    fusion_weight: float | None = None
    fusion_rule: str | None = None
    #: Where candidates come from: "dense" (bi-encoder + HNSW), "bm25" (the collection's
    #: lexical index) or "hybrid" (both, fused by reciprocal rank). None: the reranker's
    #: default, else :data:`DEFAULT_FIRST_STAGE` (dense where the collection has no BM25).
    first_stage: str | None = field(
        default_factory=lambda: os.environ.get("TWOSTAGE_FIRST_STAGE") or None
    )
    #: The reciprocal-rank fusion constant for "hybrid": score = sum 1 / (rrf_c + rank).
    rrf_c: float = 60.0

    def __post_init__(self) -> None:
        if self.fusion_rule is not None:
            if self.fusion_weight is None:
                raise InvalidArgument(
                    "EngineConfig.fusion_rule needs fusion_weight (a weight means something "
                    "only under its rule; without both, the reranker's own pair applies)"
                )
            problem = fusion_problem(self.fusion_rule, self.fusion_weight)
            if problem:
                raise InvalidArgument(f"EngineConfig.fusion_rule: {problem}")
        if self.first_stage is not None and self.first_stage not in FIRST_STAGES:
            raise InvalidArgument(
                f"EngineConfig.first_stage must be one of {', '.join(FIRST_STAGES)}, "
                f"not {self.first_stage!r}"
            )
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "exact_search":
                if not isinstance(value, bool):
                    raise InvalidArgument(
                        f"EngineConfig.exact_search must be a bool, not {value!r}"
                    )
                continue
            if value is None or f.name in ("first_stage", "fusion_rule"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InvalidArgument(f"EngineConfig.{f.name} must be a number, not {value!r}")
            if value < 0:
                raise InvalidArgument(f"EngineConfig.{f.name} must be >= 0, not {value}")
        for name in ("k", "rerank_batch_size", "max_query_chars", "max_k"):
            if getattr(self, name) < 1:
                raise InvalidArgument(f"EngineConfig.{name} must be >= 1")
        if self.ef_search is not None and self.ef_search < 1:
            raise InvalidArgument("EngineConfig.ef_search must be >= 1")
        if self.k > self.max_k or max(self.depth or 0, self.candidates or 0) > self.max_depth:
            raise InvalidArgument("EngineConfig: k and depth must be within max_k and max_depth")


__all__ = [
    "DEFAULT_BUDGET_MS",
    "DEFAULT_CANDIDATES",
    "DEFAULT_DEPTH",
    "DEFAULT_FIRST_STAGE",
    "DEFAULT_RERANKER",
    "FIRST_STAGES",
    "EngineConfig",
    "default_reranker",
]
