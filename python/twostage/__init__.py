"""twostage: two-stage semantic search.

A bi-encoder and an HNSW index fetch candidates in milliseconds; a cross-encoder reranks
them; the reranker can be swapped while the service runs.

>>> import numpy as np, twostage
>>> index = twostage.Index(dim=4, metric="cos")
>>> index.add([1, 2], np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
2
>>> result = index.search(np.array([1, 0.1, 0, 0], dtype=np.float32), k=2)
>>> result.keys.tolist()
[1, 2]
"""

from __future__ import annotations

from twostage import errors
from twostage._core import Index, SearchResult, Slot, merge_topk, rerank_order, rrf

__version__ = "0.1.0"

__all__ = [
    "Index",
    "SearchResult",
    "Slot",
    "__version__",
    "errors",
    "merge_topk",
    "rerank_order",
    "rrf",
]
