"""twostage on Ray: sharded collections, reranker replicas with the same hot swap, and
distributed ingest, behind the same Python and HTTP API as one process.

Optional: ``pip install 'twostage-search[ray]'``. Nothing outside this package imports Ray,
so the rest of twostage neither needs nor loads it.
"""

from __future__ import annotations


def require_ray() -> None:
    """Raise a clear ImportError naming the extra when Ray is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "twostage.distributed needs Ray: pip install 'twostage-search[ray]'"
        ) from e
