"""The bi-encoder: texts to unit vectors with onnxruntime and Hugging Face tokenizers.

>>> from twostage.encoder import Encoder
>>> enc = Encoder.load("minilm-l6")  # doctest: +SKIP
>>> enc.encode(["a query"], kind="query").shape  # doctest: +SKIP
(1, 384)
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from twostage._models import ModelFiles, Precision, resolve
from twostage._onnx import Batch, OnnxModel, check_texts, plan_batches
from twostage.errors import InvalidModel

TextKind = Literal["document", "query"]


class Encoder(OnnxModel):
    """A bi-encoder loaded from a folder, a built-in name or a Hugging Face repo id.

    Use :meth:`load`. ``encode`` is the whole pipeline; ``tokenize``, ``batches``, ``run``
    and ``postprocess`` are its stages, for callers that batch across requests.
    """

    @classmethod
    def load(
        cls,
        spec: str | os.PathLike[str] = "minilm-l6",
        *,
        precision: Precision = "int8",
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | str | None = None,
    ) -> Encoder:
        """Load an encoder.

        Args:
            spec: a folder (model.onnx + tokenizer.json + twostage.json, or a Hugging Face
                checkpoint with config.json + model.safetensors), a built-in name
                (``"minilm-l6"``), or a Hugging Face repo id (needs huggingface_hub).
            precision: ``"int8"`` (dynamic, per-channel) or ``"fp32"``.
            max_length: token limit; default and upper bound: the model's own.
            threads: onnxruntime intra-op threads; default: this machine's cores.
            providers: e.g. ``["cuda"]``; default CPU. Unavailable ones raise
                :class:`~twostage.errors.ProviderUnavailable`.

        >>> enc = Encoder.load("minilm-l6", precision="fp32")  # doctest: +SKIP
        """
        files = resolve(spec, "encoder", precision)
        enc = cls(files, max_length=max_length, threads=threads, providers=providers)
        path = Path(os.fspath(spec)).expanduser()
        enc._spec = str(path.resolve()) if path.is_dir() else os.fspath(spec)
        return enc

    def __init__(
        self,
        files: ModelFiles,
        *,
        max_length: int | None = None,
        threads: int | None = None,
        providers: Sequence[str] | str | None = None,
    ) -> None:
        """Internal: use :meth:`load`, which resolves a spec to ``files``."""
        super().__init__(files, max_length=max_length, threads=threads, providers=providers)
        settings = files.settings
        self._pooling = settings["pooling"]
        self._normalize = bool(settings["normalize"])
        self._prefix = {
            "query": str(settings.get("query_prefix", "")),
            "document": str(settings.get("document_prefix", "")),
        }
        self._pad_id = 0  # padded positions are masked out: the id only has to be valid
        self._output, self._dim = self._pick_output(files.onnx)
        self._spec = files.name

    def _pick_output(self, path: os.PathLike[str]) -> tuple[str, int]:
        outs = self._session.get_outputs()
        by_name = {o.name: o for o in outs}
        for name in ("sentence_embedding", "last_hidden_state", "token_embeddings"):
            if name in by_name:
                out = by_name[name]
                break
        else:
            out = outs[0]
        rank = len(out.shape)
        if rank not in (2, 3) or not isinstance(out.shape[-1], int):
            raise InvalidModel(
                f"{path}: expected an output (batch, dim) or (batch, seq, dim); "
                f"outputs found: {[(o.name, o.shape) for o in outs]}"
            )
        if rank == 3 and self._pooling == "none":
            raise InvalidModel(f"{path}: output {out.name} has tokens but pooling is 'none'")
        return out.name, int(out.shape[-1])

    # ---- properties ----
    @property
    def dim(self) -> int:
        """Embedding width."""
        return self._dim

    @property
    def spec(self) -> str:
        """What :meth:`load` was given (a folder as an absolute path): loads it again."""
        return self._spec

    @property
    def normalize(self) -> bool:
        """Whether vectors are L2-normalised (cosine = dot product)."""
        return self._normalize

    def __repr__(self) -> str:
        return (
            f"Encoder(name={self._name!r}, precision={self._precision!r}, dim={self._dim}, "
            f"max_length={self._max_length}, fingerprint={self._fingerprint!r})"
        )

    # ---- stages ----
    def tokenize(self, texts: Sequence[str], kind: TextKind = "document") -> list[list[int]]:
        """Token ids per text, with the query/document prefix, special tokens, truncated."""
        items = check_texts(texts)
        if kind not in self._prefix:
            raise ValueError(f"kind must be 'document' or 'query', not {kind!r}")
        prefix = self._prefix[kind]
        if prefix:
            items = [prefix + t for t in items]
        return [e.ids for e in self._tokenizer.encode_batch(items)]

    def batches(self, token_ids: Sequence[Sequence[int]], batch_size: int = 32) -> list[Batch]:
        """Length-sorted batches padded to their own longest row."""
        return plan_batches(token_ids, batch_size, pad_id=self._pad_id)

    def postprocess(self, raw: np.ndarray, batch: Batch) -> np.ndarray:
        """Pool token outputs where the graph did not, then L2-normalise if the model says so."""
        if raw.ndim == 3:
            mask = batch.attention_mask[:, :, None].astype(np.float32)
            if self._pooling == "cls":
                raw = raw[:, 0]
            else:
                raw = (raw * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
        out = np.asarray(raw, dtype=np.float32)
        if self._normalize:
            out = out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    # ---- the pipeline ----
    def encode(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        kind: TextKind = "document",
        on_batch: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``: float32 ``[len(texts), dim]``, rows in input order.

        ``kind="query"`` applies the model's query prefix (if any). Texts are batched by
        length and padded per batch, so the cost follows the real token counts.
        ``on_batch`` is called with the number of texts of each batch once it is embedded
        (progress).

        >>> Encoder.load("minilm-l6").encode(["hello", "world"]).shape  # doctest: +SKIP
        (2, 384)
        """
        ids = self.tokenize(texts, kind)
        out = np.empty((len(ids), self._dim), dtype=np.float32)
        for batch in self.batches(ids, batch_size):
            out[batch.rows] = self.postprocess(self.run(batch), batch)
            if on_batch is not None:
                on_batch(len(batch.rows))
        return out


__all__ = ["Encoder"]
