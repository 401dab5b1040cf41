"""Turn a trained cross-encoder checkpoint into a servable model folder (no PyTorch).

The graph is the project's own (:func:`twostage.export.build_bert_graph`, fused, classifier
head) and the int8 model comes from its own quantiser (:func:`twostage.export.quantize_int8`).
One step is added for shipping: ``compact=True`` also quantises the word-embedding table
(30,522 x 384 floats: 47 MB, more than all the layers of a small model together) to int8
with one scale per row, and gathers and rescales rows at run time. The quantiser leaves
embedding tables in float32 because they cost no FLOPs; they do cost megabytes, and the
default model must ship inside the package.

>>> export_folder("runs/ce/model", "out/twostage-rerank")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from twostage.errors import InvalidModel
from twostage.export import (
    BertConfig,
    build_bert_graph,
    load_weights,
    quantize_int8,
    save_atomic,
)


def compact_embeddings(model: onnx.ModelProto, max_length: int | None = None) -> onnx.ModelProto:
    """Replace ``EmbedLayerNormalization`` by int8 word embeddings + standard ops.

    Word rows are stored as int8 with a per-row float scale (``row = q * scale``); position
    rows are cut to ``max_length``. The layer-norm output is the same tensor name, so the
    rest of the graph is untouched.
    """
    g = model.graph
    node = next((n for n in g.node if n.op_type == "EmbedLayerNormalization"), None)
    if node is None:
        raise ValueError("graph has no EmbedLayerNormalization node (export with fused=True)")
    ids, types, word_n, pos_n, type_n, gamma_n, beta_n = list(node.input)[:7]
    out = node.output[0]
    if len(node.output) > 1 and node.output[1]:
        used = {i for n in g.node for i in n.input}
        if node.output[1] in used:
            raise ValueError("EmbedLayerNormalization's mask_index output is used elsewhere")
    eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
    inits = {t.name: t for t in g.initializer}
    word = numpy_helper.to_array(inits[word_n]).astype(np.float32)
    pos = numpy_helper.to_array(inits[pos_n]).astype(np.float32)
    if max_length is not None:
        pos = pos[:max_length]
    scale = np.maximum(np.abs(word).max(axis=1), 1e-8) / 127.0
    q = np.clip(np.rint(word / scale[:, None]), -127, 127).astype(np.int8)

    def init(name: str, arr: np.ndarray) -> str:
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    for name in (word_n, pos_n):
        g.initializer.remove(inits[name])
    wq = init("emb.word_q", q)
    ws = init("emb.word_scale", scale.astype(np.float32))
    pt = init("emb.pos", pos)
    axes = init("emb.axes2", np.array([2], dtype=np.int64))
    zero = init("emb.zero", np.array([0], dtype=np.int64))
    new = [
        helper.make_node("Gather", [wq, ids], ["emb.wq_rows"], name="emb.gather_q"),
        helper.make_node(
            "Cast", ["emb.wq_rows"], ["emb.wq_f"], name="emb.cast", to=TensorProto.FLOAT
        ),
        helper.make_node("Gather", [ws, ids], ["emb.ws_rows"], name="emb.gather_s"),
        helper.make_node("Unsqueeze", ["emb.ws_rows", axes], ["emb.ws_col"], name="emb.unsq"),
        helper.make_node("Mul", ["emb.wq_f", "emb.ws_col"], ["emb.word"], name="emb.scale"),
        helper.make_node("Shape", [ids], ["emb.seq"], name="emb.shape", start=1, end=2),
        helper.make_node("Slice", [pt, zero, "emb.seq", zero], ["emb.pos_rows"], name="emb.slice"),
        helper.make_node("Gather", [type_n, types], ["emb.type_rows"], name="emb.gather_t"),
        helper.make_node("Add", ["emb.word", "emb.pos_rows"], ["emb.sum1"], name="emb.add1"),
        helper.make_node("Add", ["emb.sum1", "emb.type_rows"], ["emb.sum2"], name="emb.add2"),
        helper.make_node(
            "LayerNormalization",
            ["emb.sum2", gamma_n, beta_n],
            [out],
            name="emb.ln",
            axis=-1,
            epsilon=eps,
        ),
    ]
    at = list(g.node).index(node)
    g.node.remove(node)
    for k, n in enumerate(new):
        g.node.insert(at + k, n)
    return model


def mean_classifier(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Append the 1-logit classifier to a mean-pooling graph: output ``logits`` [batch, 1]."""
    g = model.graph
    last = g.node[-1]
    if last.op_type != "Identity" or last.output[0] != "sentence_embedding":
        raise ValueError("expected a graph ending in Identity -> sentence_embedding")
    pooled = last.input[0]
    g.node.remove(last)
    w = weights["classifier.weight"].astype(np.float32)  # (1, hidden)
    b = weights["classifier.bias"].astype(np.float32)
    g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(w.T), "head.weight"))
    g.initializer.append(numpy_helper.from_array(b, "head.bias"))
    g.node.extend(
        [
            helper.make_node("MatMul", [pooled, "head.weight"], ["head.mm"], name="head.matmul"),
            helper.make_node("Add", ["head.mm", "head.bias"], ["head.out"], name="head.add"),
            helper.make_node("Identity", ["head.out"], ["logits"], name="output"),
        ]
    )
    del g.output[:]
    g.output.append(
        helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[0]])
    )
    return model


def export_folder(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_length: int | None = None,
    fp32: bool = True,
    compact: bool = True,
    extra_settings: dict[str, Any] | None = None,
) -> Path:
    """Write ``model_int8.onnx`` (+ ``model.onnx`` if ``fp32``), ``tokenizer.json`` and
    ``twostage.json`` into ``out`` from a checkpoint folder (config.json + model.safetensors
    + tokenizer.json [+ twostage.json]).
    """
    src, dst = Path(checkpoint), Path(out)
    dst.mkdir(parents=True, exist_ok=True)
    config = BertConfig.from_file(src / "config.json")
    settings: dict[str, Any] = {"kind": "reranker", "max_length": 512}
    if (src / "twostage.json").is_file():
        settings.update(json.loads((src / "twostage.json").read_text(encoding="utf-8")))
    if max_length is not None:
        settings["max_length"] = max_length
    settings.update(extra_settings or {})
    settings["max_length"] = min(int(settings["max_length"]), config.max_position_embeddings)
    weights = load_weights(src / "model.safetensors")
    raw = json.loads((src / "config.json").read_text(encoding="utf-8"))
    if raw.get("twostage_pooling", "cls") == "mean":
        graph = mean_classifier(build_bert_graph(config, weights, head="mean"), weights)
    else:
        graph = build_bert_graph(config, weights, head="classifier")
    with tempfile.TemporaryDirectory(dir=dst) as tmp:
        f32 = Path(tmp) / "model.onnx"
        save_atomic(graph, f32)
        i8 = Path(tmp) / "model_int8.onnx"
        quantize_int8(f32, i8)
        if compact:
            save_atomic(compact_embeddings(onnx.load(str(i8)), settings["max_length"]), i8)
        os.replace(i8, dst / "model_int8.onnx")
        if fp32:
            os.replace(f32, dst / "model.onnx")
    return _finish_folder(src, dst, settings)


def export_encoder_folder(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    max_length: int | None = None,
    fp32: bool = True,
) -> Path:
    """A bi-encoder checkpoint (config.json + model.safetensors + tokenizer.json
    [+ twostage.json]) -> ``model_int8.onnx`` (+ ``model.onnx``), ``tokenizer.json`` and
    ``twostage.json`` in ``out``: the folder :meth:`twostage.encoder.Encoder.load` reads.

    The same graph (``build_bert_graph``, fused, mean head), the same quantiser and the same
    settings as an export on first use (:func:`twostage._models.read_checkpoint`), so the
    files are the ones the cache would hold; ``twostage.json`` records the checkpoint's
    identity (``export``), so the folder has the fingerprint the checkpoint has (collections
    embedded by either open with the other). The word embeddings stay float32 (no
    ``compact``). A checkpoint without ``twostage.json`` is read as a sentence-transformers
    folder (pooling from ``1_Pooling``, normalisation from ``modules.json``, length from
    ``sentence_bert_config.json``): this is how the built-in ``minilm-l6`` was made.
    """
    from twostage._models import EXPORT_RECORD, folder_key, read_checkpoint

    src, dst = Path(checkpoint), Path(out)
    extra = {"max_length": max_length} if max_length is not None else None
    try:
        ck = read_checkpoint(src, "encoder", extra)
    except InvalidModel as exc:
        raise ValueError(f"{src}: not a mean- or cls-pooling encoder checkpoint ({exc})") from exc
    settings = dict(ck.settings)
    if settings["pooling"] not in ("mean", "cls"):
        raise ValueError(f"{src}: not a mean- or cls-pooling encoder checkpoint ({settings})")
    settings["max_length"] = min(int(settings["max_length"]), ck.config.max_position_embeddings)
    dst.mkdir(parents=True, exist_ok=True)
    graph = build_bert_graph(ck.config, load_weights(ck.weights), head=ck.head)
    with tempfile.TemporaryDirectory(dir=dst) as tmp:
        f32 = Path(tmp) / "model.onnx"
        save_atomic(graph, f32)
        quantize_int8(f32, Path(tmp) / "model_int8.onnx")
        os.replace(Path(tmp) / "model_int8.onnx", dst / "model_int8.onnx")
        if fp32:
            os.replace(f32, dst / "model.onnx")
        else:
            (dst / "model.onnx").unlink(missing_ok=True)  # a stale one would be read instead
    _finish_folder(src, dst, settings)
    settings[EXPORT_RECORD] = {"checkpoint": ck.key, "files": folder_key(dst, settings)}
    (dst / "twostage.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return dst


def _finish_folder(src: Path, dst: Path, settings: dict[str, Any]) -> Path:
    """The tokenizer and twostage.json beside the models, every file readable by others."""
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    (dst / "twostage.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    for f in dst.iterdir():
        if f.is_file():
            f.chmod(0o644)  # temp files are created 0600
    return dst


__all__ = ["compact_embeddings", "export_encoder_folder", "export_folder", "mean_classifier"]
