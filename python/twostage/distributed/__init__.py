"""twostage on Ray: sharded collections, reranker replicas with the same hot swap, and
distributed ingest, behind the same Python and HTTP API as one process.

Optional: ``pip install 'twostage-search[ray]'``. Nothing outside this package imports Ray,
so the rest of twostage neither needs nor loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the real names for type checkers; at run time, loaded on first use
    from twostage.distributed.engine import ShardedEngine
    from twostage.distributed.ingest import ShardedIngestReport, ingest
    from twostage.distributed.layout import shard_of, split_collection
    from twostage.distributed.router import ShardedAddResult, ShardedCollection


def require_ray() -> None:
    """Raise a clear ImportError naming the extra when Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "twostage.distributed needs Ray: pip install 'twostage-search[ray]'"
        ) from e


# Sharded collections and their engine import Ray: loaded on first use, so that importing
# this package (for require_ray, say) stays cheap.
_LAZY = {
    "ShardedAddResult": "twostage.distributed.router",
    "ShardedCollection": "twostage.distributed.router",
    "ShardedEngine": "twostage.distributed.engine",
    "ShardedIngestReport": "twostage.distributed.ingest",
    "ingest": "twostage.distributed.ingest",
    "shard_of": "twostage.distributed.layout",
    "split_collection": "twostage.distributed.layout",
}


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'twostage.distributed' has no attribute {name!r}")


__all__ = [
    "ShardedAddResult",
    "ShardedCollection",
    "ShardedEngine",
    "ShardedIngestReport",
    "ingest",
    "require_ray",
    "shard_of",
    "split_collection",
]
