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

from typing import TYPE_CHECKING, Any

from twostage import errors
from twostage._core import Index, SearchResult, Slot, default_ef, merge_topk, rerank_order, rrf
from twostage.document import Document

if TYPE_CHECKING:
    from twostage.collection import Collection
    from twostage.config import EngineConfig
    from twostage.encoder import Encoder
    from twostage.engine import Engine, SearchResponse
    from twostage.reranker import Reranker

__version__ = "0.1.0"

__all__ = [
    "Collection",
    "Document",
    "Encoder",
    "Engine",
    "EngineConfig",
    "Index",
    "Reranker",
    "SearchResponse",
    "SearchResult",
    "Slot",
    "__version__",
    "default_ef",
    "errors",
    "merge_topk",
    "rerank_order",
    "rrf",
]

# The model classes (and what uses them) pull in onnxruntime and tokenizers (~0.5 s to
# import); load them on first use so that `import twostage` stays cheap for index-only users.
_LAZY = {
    "Collection": "twostage.collection",
    "Encoder": "twostage.encoder",
    "Engine": "twostage.engine",
    "EngineConfig": "twostage.config",
    "Reranker": "twostage.reranker",
    "SearchResponse": "twostage.engine",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'twostage' has no attribute {name!r}")
