"""Type stubs for the Rust extension. Checked against the compiled module by
``python -m mypy.stubtest twostage._core`` in CI, so they cannot drift."""

from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any, Literal, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "MISSING_KEY",
    "Index",
    "SearchResult",
    "Slot",
    "default_ef",
    "merge_topk",
    "rerank_order",
    "rrf",
    "usearch_version",
]

MISSING_KEY: int
usearch_version: str

_Keys = npt.ArrayLike
_Vectors = npt.ArrayLike
_Path = str | PathLike[str]

@final
class SearchResult:
    """Results of ``Index.search``: ``keys``, ``distances`` and per-row ``counts``."""

    @property
    def keys(self) -> npt.NDArray[np.uint64]: ...
    @property
    def distances(self) -> npt.NDArray[np.float32]: ...
    @property
    def counts(self) -> npt.NDArray[np.uint64]: ...
    def to_list(self, row: int = 0) -> list[tuple[int, float]]: ...
    def __len__(self) -> int: ...

@final
class Index:
    """Approximate nearest-neighbour index (HNSW, via usearch) over u64 keys."""

    def __new__(
        cls,
        dim: int,
        metric: Literal["cos", "ip", "l2"] | str = "cos",
        dtype: Literal["f32", "f16", "i8"] | str = "f32",
        connectivity: int = 16,
        ef_construction: int = 128,
        ef_search: int | None = None,
        shards: int = 1,
        threads: int | None = None,
        rescore: bool = False,
        oversample: int = 3,
    ) -> Index: ...
    def add(self, keys: _Keys, vectors: _Vectors) -> int: ...
    def remove(self, keys: _Keys, *, missing_ok: bool = False) -> int: ...
    def get(self, keys: int | _Keys) -> npt.NDArray[np.float32]: ...
    def search(
        self,
        queries: _Vectors,
        k: int = 10,
        *,
        ef: int | None = None,
        allowed: npt.NDArray[np.bool_] | npt.NDArray[np.uint8] | _Keys | None = None,
    ) -> SearchResult: ...
    def search_exact(self, queries: _Vectors, keys: _Keys, k: int = 10) -> SearchResult: ...
    def save(self, path: _Path) -> None: ...
    @staticmethod
    def load(path: _Path, *, threads: int | None = None) -> Index: ...
    @staticmethod
    def view(path: _Path, *, threads: int | None = None) -> Index: ...
    @staticmethod
    def read_header(path: _Path) -> dict[str, Any]: ...
    def __len__(self) -> int: ...
    def __contains__(self, key: object, /) -> bool: ...
    @property
    def dim(self) -> int: ...
    @property
    def metric(self) -> str: ...
    @property
    def dtype(self) -> str: ...
    @property
    def connectivity(self) -> int: ...
    @property
    def ef_construction(self) -> int: ...
    @property
    def ef_search(self) -> int | None: ...
    def search_ef(self, k: int = 10) -> int: ...
    @property
    def shards(self) -> int: ...
    @property
    def rescore(self) -> bool: ...
    @property
    def read_only(self) -> bool: ...
    @property
    def memory_usage(self) -> int: ...
    @property
    def hardware_acceleration(self) -> str: ...

@final
class Slot:
    """One Python object with a version, replaced atomically; reads are lock-free."""

    def __new__(cls, obj: Any) -> Slot: ...
    def get(self) -> tuple[int, Any]: ...
    def swap(self, obj: Any) -> int: ...
    def compare_and_swap(self, expected_version: int, obj: Any) -> int: ...
    @property
    def version(self) -> int: ...

def default_ef(n: int, k: int = 10) -> int: ...
def merge_topk(
    lists: Sequence[tuple[Sequence[int] | npt.ArrayLike, Sequence[float] | npt.ArrayLike]],
    k: int,
    *,
    higher_is_better: bool = True,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]: ...
def rrf(
    lists: Sequence[Sequence[int] | npt.ArrayLike], k: int, c: float = 60.0
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]: ...
def rerank_order(
    candidates: Sequence[int] | npt.ArrayLike, scored: Mapping[int, float]
) -> npt.NDArray[np.int64]: ...
