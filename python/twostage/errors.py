"""Exceptions raised by twostage.

Every error a caller can act on has its own class, and each also subclasses the builtin a
generic handler would expect (``ValueError`` for bad arguments, ``OSError`` for files), so
``except ValueError`` keeps working for code that does not know twostage's names.

The Rust extension raises these same classes (PyO3's ``import_exception!``), so this pure
Python module is the single definition: import errors from here, never from ``_core``.
"""

from __future__ import annotations


class TwostageError(Exception):
    """Base class of every error twostage raises on purpose."""


# ---- index ----------------------------------------------------------------------------


class DimensionMismatch(TwostageError, ValueError):
    """A vector's length differs from the index's ``dim``."""


class InvalidVector(TwostageError, ValueError):
    """Vectors are unusable: NaN or inf values, wrong rank, or keys/rows that do not pair up."""


class InvalidArgument(TwostageError, ValueError):
    """An argument is out of range or malformed (k <= 0, an unknown metric, bad ef, ...)."""


class DuplicateKey(TwostageError, ValueError):
    """The same key appears twice in one ``add`` call (ambiguous: which vector wins?)."""


class KeyNotFound(TwostageError, KeyError):
    """A key asked for is not in the index."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class CorruptIndex(TwostageError, OSError):
    """An index file is truncated, foreign, from another format version, or fails its checksum."""


class ReadOnlyIndex(TwostageError, RuntimeError):
    """A write was attempted on an index opened with ``Index.view`` (memory-mapped, read-only)."""


class VersionConflict(TwostageError, RuntimeError):
    """``Slot.compare_and_swap`` lost a race: the slot's version is not the one expected."""


# ---- collections (store, manifest, ingest) --------------------------------------------


class CorruptStore(TwostageError, OSError):
    """A document store or collection manifest is unreadable, foreign or from another version."""


class ReadOnlyCollection(InvalidArgument):
    """A write to a collection opened ``read_only=True`` (another process holds the writer lock)."""


class CollectionLocked(TwostageError, OSError):
    """Another process has the collection open for writing (one writer per collection)."""


class EncoderMismatch(TwostageError, ValueError):
    """A collection was opened with an encoder other than the one that embedded its documents."""


class IngestError(TwostageError, ValueError):
    """A corpus line is malformed and the build was told to stop (``on_error="fail"``)."""


class ShardUnavailable(TwostageError, RuntimeError):
    """A shard of a sharded collection (:mod:`twostage.distributed`) died or did not answer a
    write or a read that needs every shard; searches answer without it instead (partial)."""


# ---- models (encoder / reranker / exporter) -------------------------------------------


class ModelError(TwostageError):
    """A model could not be loaded, exported or run."""


class ModelNotFound(ModelError, FileNotFoundError):
    """A model file (weights, tokenizer, config) is missing; the message names it and where."""


class InvalidModel(ModelError, ValueError):
    """A model file exists but is not usable (wrong graph inputs/outputs, bad config)."""


class ProviderUnavailable(ModelError, ValueError):
    """An onnxruntime execution provider was asked for but is not available here."""


__all__ = [
    "CollectionLocked",
    "CorruptIndex",
    "CorruptStore",
    "DimensionMismatch",
    "DuplicateKey",
    "EncoderMismatch",
    "IngestError",
    "InvalidArgument",
    "InvalidModel",
    "InvalidVector",
    "KeyNotFound",
    "ModelError",
    "ModelNotFound",
    "ProviderUnavailable",
    "ReadOnlyCollection",
    "ReadOnlyIndex",
    "ShardUnavailable",
    "TwostageError",
    "VersionConflict",
]
