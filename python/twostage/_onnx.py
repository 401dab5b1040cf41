"""onnxruntime sessions configured for a small shared machine, and padded input batches.

Several sessions (an encoder and a reranker) live in one process and are used in turn. By
default onnxruntime's intra-op threads spin after each run, so the idle session's threads
burn the cores the busy one needs: two sessions used in turn were measured at 12 ms per
query against 2.2 ms alone. Spinning is therefore off, and thread counts are explicit.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnxruntime as ort

from twostage.errors import InvalidModel, ModelNotFound, ProviderUnavailable

if TYPE_CHECKING:
    from tokenizers import Tokenizer

    from twostage._models import ModelFiles

_ALIASES = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
}


def default_threads() -> int:
    """The cores this process may run on (affinity-aware where the OS says)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_providers(providers: Sequence[str] | str | None) -> list[str]:
    """Map names (``"cuda"`` or ``"CUDAExecutionProvider"``) to available providers.

    ``None`` means CPU. The CPU provider is always appended last as the fallback for ops a
    device provider does not implement. An unavailable provider raises, naming those that are.
    """
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = ort.get_available_providers()
    out: list[str] = []
    for p in providers:
        name = _ALIASES.get(p.lower(), p)
        if name not in available:
            raise ProviderUnavailable(
                f"execution provider {p!r} is not available here; available: {available}"
            )
        if name not in out:
            out.append(name)
    if "CPUExecutionProvider" not in out:
        out.append("CPUExecutionProvider")
    return out


def make_session(
    path: str | os.PathLike[str],
    *,
    threads: int | None = None,
    providers: Sequence[str] | str | None = None,
) -> ort.InferenceSession:
    """An ``InferenceSession`` with ``ORT_ENABLE_ALL``, explicit threads and no spinning.

    >>> sess = make_session("model.onnx", threads=2)  # doctest: +SKIP
    """
    path = Path(path)
    if not path.is_file():
        raise ModelNotFound(f"ONNX model not found: looked for {path}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = threads or default_threads()
    # Sequential execution: the inter-op pool is unused; one thread keeps it from taking cores.
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    opts.log_severity_level = 3  # onnxruntime's shape-merge warnings are noise for these graphs
    chosen = resolve_providers(providers)
    source: str | bytes = str(path)
    disabled: list[str] = []
    if chosen == ["CPUExecutionProvider"]:
        unfused = _unfuse_skip_layernorm(path)
        if unfused is not None:
            source, disabled = unfused, ["SkipLayerNormFusion"]
    try:
        return ort.InferenceSession(
            source, opts, providers=chosen, disabled_optimizers=disabled or None
        )
    except (ProviderUnavailable, ModelNotFound):
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise InvalidModel(f"onnxruntime could not load {path}: {exc}") from exc


def _unfuse_skip_layernorm(path: Path) -> bytes | None:
    """The graph with each ``SkipLayerNormalization`` as ``Add`` (+ ``Add``) +
    ``LayerNormalization``, or None when it has none (or one whose extra outputs are used).

    The same arithmetic, faster on the CPU: onnxruntime 1.32's CPU SkipLayerNormalization
    took 1.56 ms of a 3-layer cross-encoder's 8.9 ms run (one pair, 128 tokens, one thread,
    AMD Zen 4); unfused, the LayerNormalizations and Adds take 0.38 ms and the run 7.3 ms
    (BENCHMARKS.md §10). ``SkipLayerNormFusion`` must then be disabled, or the
    optimiser fuses them back.
    """
    import onnx
    from onnx import helper

    try:
        model = onnx.load(str(path))
    except Exception:
        return None  # onnxruntime's own load reports what is wrong with the file
    nodes = list(model.graph.node)
    if not any(n.op_type == "SkipLayerNormalization" for n in nodes):
        return None
    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import):
        return None  # LayerNormalization is opset 17
    out = []
    for n in nodes:
        if n.op_type != "SkipLayerNormalization":
            out.append(n)
            continue
        extra = [o for i, o in enumerate(n.output) if i not in (0, 3) and o]
        if extra or len(n.input) < 3:
            return None  # mean / inv-std outputs are used: leave the graph alone
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-12)
        x, skip, gamma = n.input[0], n.input[1], n.input[2]
        beta = n.input[3] if len(n.input) > 3 else ""
        bias = n.input[4] if len(n.input) > 4 else ""
        total = n.output[3] if len(n.output) > 3 and n.output[3] else f"{n.output[0]}__sum"
        first = f"{n.output[0]}__skip" if bias else total
        out.append(helper.make_node("Add", [x, skip], [first], name=f"{n.name}__add"))
        if bias:
            out.append(helper.make_node("Add", [first, bias], [total], name=f"{n.name}__bias"))
        ln_in = [total, gamma] + ([beta] if beta else [])
        out.append(
            helper.make_node(
                "LayerNormalization",
                ln_in,
                [n.output[0]],
                name=f"{n.name}__ln",
                axis=-1,
                epsilon=eps,
            )
        )
    del model.graph.node[:]
    model.graph.node.extend(out)
    data: bytes = model.SerializeToString()
    return data


def check_inputs(session: ort.InferenceSession, path: str | os.PathLike[str]) -> list[str]:
    """The input names to feed; refuses graphs that need anything but BERT-style inputs."""
    names = [i.name for i in session.get_inputs()]
    known = {"input_ids", "attention_mask", "token_type_ids"}
    if "input_ids" not in names or "attention_mask" not in names or set(names) - known:
        raise InvalidModel(
            f"{path}: expected inputs input_ids, attention_mask (and optionally "
            f"token_type_ids); the graph has {names}"
        )
    return names


@dataclass(frozen=True)
class Batch:
    """A padded batch: ``rows`` says which input positions its rows came from."""

    rows: np.ndarray  # int64 [b]
    input_ids: np.ndarray  # int64 [b, seq]
    attention_mask: np.ndarray  # int64 [b, seq]
    token_type_ids: np.ndarray  # int64 [b, seq]

    def feeds(self, names: Sequence[str]) -> dict[str, np.ndarray]:
        """Only the inputs the graph declares (some exports drop token_type_ids)."""
        all_ = {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "token_type_ids": self.token_type_ids,
        }
        return {n: all_[n] for n in names}

    @property
    def tokens(self) -> int:
        """Padded token count (what the model computes over)."""
        return int(self.input_ids.size)


def pad(
    rows: Sequence[int],
    ids: Sequence[Sequence[int]],
    type_ids: Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
) -> Batch:
    """Pad to the longest sequence in this batch (dynamic padding, never a fixed length)."""
    n = len(ids)
    seq = max((len(s) for s in ids), default=0)
    input_ids = np.full((n, seq), pad_id, dtype=np.int64)
    mask = np.zeros((n, seq), dtype=np.int64)
    types = np.zeros((n, seq), dtype=np.int64)
    for i, s in enumerate(ids):
        input_ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
        if type_ids is not None:
            types[i, : len(s)] = type_ids[i]
    return Batch(np.asarray(rows, dtype=np.int64), input_ids, mask, types)


def plan_batches(
    ids: Sequence[Sequence[int]],
    batch_size: int,
    type_ids: Sequence[Sequence[int]] | None = None,
    pad_id: int = 0,
) -> list[Batch]:
    """Sort by length and cut into batches, so each batch pads only to similar lengths."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}")
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out.append(
            pad(
                rows,
                [ids[i] for i in rows],
                None if type_ids is None else [type_ids[i] for i in rows],
                pad_id,
            )
        )
    return out


def check_texts(texts: object, what: str = "texts") -> list[str]:
    """A list of strings, or a TypeError naming the first bad position."""
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, not a single {type(texts).__name__}")
    try:
        items = list(texts)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, not {type(texts).__name__}") from None
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise TypeError(f"{what}[{i}] is {type(t).__name__}, expected str")
    return items


class OnnxModel:
    """What the encoder and the reranker share: a resolved model's identity, its tokenizer,
    one onnxruntime session, and the run stage. Subclasses pick the output and the rest."""

    #: Smallest max_length a subclass accepts (a pair needs room for its special tokens).
    MIN_LENGTH = 1
    #: Run each row of a batch alone (CPU only): see :meth:`run`.
    ROW_WISE = False

    def __init__(
        self,
        files: ModelFiles,
        *,
        max_length: int | None,
        threads: int | None,
        providers: Sequence[str] | str | None,
    ) -> None:
        from twostage._models import load_tokenizer  # _models imports the exporter: defer

        model_max = int(files.settings["max_length"])
        if max_length is not None and not self.MIN_LENGTH <= max_length <= model_max:
            raise ValueError(f"max_length must be in {self.MIN_LENGTH}..{model_max} for this model")
        self._max_length = max_length or model_max
        self._name = files.name
        self._precision = files.precision
        self._fingerprint = files.fingerprint
        self._tokenizer: Tokenizer = load_tokenizer(files.tokenizer, self._max_length)
        self._tokenizer_path = files.tokenizer
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, not {threads}")
        # Row-wise: `threads` single-threaded runs at once, each one row, instead of one run
        # over a padded batch that all threads share (see `run`).
        self._workers = 0
        if self.ROW_WISE and resolve_providers(providers) == ["CPUExecutionProvider"]:
            self._workers = threads or default_threads()
            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="twostage-rows")
        session_threads = 1 if self._workers else threads
        self._session = make_session(files.onnx, threads=session_threads, providers=providers)
        self._inputs = check_inputs(self._session, files.onnx)
        self._output = ""  # set by the subclass once it has checked the graph's outputs

    @property
    def max_length(self) -> int:
        """Token limit, special tokens included; longer input is truncated."""
        return self._max_length

    @property
    def fingerprint(self) -> str:
        """Hash of weights, tokenizer, export settings and precision: same value, same output."""
        return self._fingerprint

    @property
    def name(self) -> str:
        """The spec's short name (built-in name or folder name)."""
        return self._name

    @property
    def precision(self) -> str:
        """``"int8"`` or ``"fp32"``."""
        return self._precision

    @functools.cached_property
    def vocab_fingerprint(self) -> str:
        """Hash of the tokenizer's vocabulary and normalisation: equal value, equal token ids.

        Token ids stored at ingest are reused by a reranker whose value matches.
        """
        import hashlib
        import json

        full = json.loads(self._tokenizer.to_str())
        parts = {k: full.get(k) for k in ("model", "normalizer", "pre_tokenizer", "added_tokens")}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids without special tokens or prefixes, truncated to ``max_length``."""
        items = check_texts(texts)
        return [e.ids for e in self._tokenizer.encode_batch(items, add_special_tokens=False)]

    def run(self, batch: Batch, options: ort.RunOptions | None = None) -> np.ndarray:
        """One onnxruntime call: the graph's raw output for ``batch``.

        ``options`` lets a caller cancel a run in flight (``options.terminate = True`` from
        another thread): the call then raises instead of finishing.
        """
        if not self._workers:
            feeds = batch.feeds(self._inputs)
            out: np.ndarray = self._session.run([self._output], feeds, options)[0]
            return out
        # Row-wise. Dynamic int8 quantisation takes one activation scale per tensor, so in a
        # batched run a row's output depends on its batch-mates (up to 1.7 logits measured);
        # alone, without padding, a row gets the same output in any batch. It is also faster
        # on a small CPU: two one-thread runs side by side scored 100 pairs in 406 ms against
        # 445 ms for 2-thread batches of 16 (AMD Zen 4, BENCHMARKS.md §10).
        lengths = batch.attention_mask.sum(axis=1).tolist()
        feeds_all = batch.feeds(self._inputs)
        rows = [
            {k: v[i : i + 1, : max(int(n), 1)] for k, v in feeds_all.items()}
            for i, n in enumerate(lengths)
        ]
        if not rows:
            return np.zeros((0, 1), dtype=np.float32)
        if len(rows) == 1 or self._workers == 1:
            parts = [self._run_row(r, options) for r in rows]
        else:
            parts = [
                f.result() for f in [self._pool.submit(self._run_row, r, options) for r in rows]
            ]
        return np.concatenate(parts, axis=0)

    def _run_row(self, feeds: dict[str, np.ndarray], options: ort.RunOptions | None) -> np.ndarray:
        out: np.ndarray = self._session.run([self._output], feeds, options)[0]
        return out

    def submit(
        self,
        ids: Sequence[int],
        type_ids: Sequence[int] | None = None,
        options: ort.RunOptions | None = None,
    ) -> Future[np.ndarray]:
        """Run one row on the model's own threads (row-wise models): a future of the graph's
        raw output for it, shaped ``(1, ...)``. A caller keeps ``workers`` rows in flight and
        decides before each next one whether it still fits its deadline."""
        if not self._workers:
            raise RuntimeError(f"{self._name} does not run row-wise (a device provider)")
        feeds = pad([0], [ids], None if type_ids is None else [type_ids]).feeds(self._inputs)
        return self._pool.submit(self._run_row, feeds, options)

    @property
    def workers(self) -> int:
        """Rows run at once (row-wise models), else 0."""
        return self._workers

    @property
    def row_wise(self) -> bool:
        """Rows run one at a time (and ``threads`` of them at once): batch-invariant output."""
        return bool(self._workers)
