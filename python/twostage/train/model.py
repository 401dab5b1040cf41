"""A plain PyTorch BERT cross-encoder with Hugging Face parameter names.

``BertCrossEncoder`` is ``BertForSequenceClassification`` (1 label) written out: embeddings,
post-LN encoder layers with exact (erf) GELU, tanh pooler over [CLS], linear classifier.
The state dict uses the Hugging Face names (``bert.embeddings...``, ``classifier.weight``),
so :func:`save_checkpoint` writes a folder that the project's exporter
(:mod:`twostage.export`), ``transformers`` and :class:`twostage.reranker.Reranker` all read.

Needs PyTorch (``pip install 'twostage-search[train]'``).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F


@dataclass
class CrossEncoderConfig:
    """The subset of a Hugging Face BERT config this model uses."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    # "cls": BertForSequenceClassification (tanh pooler over [CLS], then the classifier).
    # "mean": the classifier over the masked mean of the last layer (twostage's own head;
    # its ONNX export appends the classifier to the exporter's mean-pooling graph).
    twostage_pooling: str = "cls"

    @classmethod
    def from_json(cls, path: Path) -> CrossEncoderConfig:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in fields})

    def to_hf(self) -> dict[str, Any]:
        """A ``config.json`` for BertForSequenceClassification with one label."""
        arch = "BertForSequenceClassification"
        if self.twostage_pooling == "mean":
            arch = "TwostageMeanPoolCrossEncoder"  # not a transformers class: export it
        return {
            "architectures": [arch],
            "model_type": "bert",
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "num_labels": 1,
            "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0},
            "pad_token_id": 0,
            **asdict(self),
        }


class _Layer(nn.Module):
    def __init__(self, c: CrossEncoderConfig) -> None:
        super().__init__()
        h = c.hidden_size
        self.n_heads = c.num_attention_heads
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(h, h)
        self.value = nn.Linear(h, h)
        self.attn_out = nn.Linear(h, h)
        self.ln1 = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.ffn_in = nn.Linear(h, c.intermediate_size)
        self.ffn_out = nn.Linear(c.intermediate_size, h)
        self.ln2 = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.hidden_dropout_prob)
        self.attn_drop = c.attention_probs_dropout_prob

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        b, s, h = x.shape
        d = h // self.n_heads

        def heads(t: Tensor) -> Tensor:
            return t.view(b, s, self.n_heads, d).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            heads(self.query(x)),
            heads(self.key(x)),
            heads(self.value(x)),
            attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.0,
        )
        ctx = ctx.transpose(1, 2).reshape(b, s, h)
        x = self.ln1(x + self.drop(self.attn_out(ctx)))
        f = self.ffn_out(F.gelu(self.ffn_in(x)))
        return self.ln2(x + self.drop(f))


class BertCrossEncoder(nn.Module):
    """BERT + pooler + 1-logit classifier; ``forward(ids, mask, types) -> logits [b]``."""

    def __init__(self, config: CrossEncoderConfig) -> None:
        super().__init__()
        c = config
        self.config = c
        h = c.hidden_size
        self.word = nn.Embedding(c.vocab_size, h)
        self.pos = nn.Embedding(c.max_position_embeddings, h)
        self.typ = nn.Embedding(c.type_vocab_size, h)
        self.emb_ln = nn.LayerNorm(h, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.hidden_dropout_prob)
        self.layers = nn.ModuleList(_Layer(c) for _ in range(c.num_hidden_layers))
        self.pooler = nn.Linear(h, h)
        self.classifier = nn.Linear(h, 1)

    def hidden(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        """The last layer's token states, [batch, seq, hidden]."""
        s = input_ids.shape[1]
        pos = torch.arange(s, device=input_ids.device)
        x = self.word(input_ids) + self.pos(pos)[None] + self.typ(token_type_ids)
        x = self.drop(self.emb_ln(x))
        # Additive mask, as the ONNX graph applies it: padded keys get a large negative.
        mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * -10000.0
        for layer in self.layers:
            x = layer(x, mask)
        return x

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        x = self.hidden(input_ids, attention_mask, token_type_ids)
        if self.config.twostage_pooling == "mean":
            m = attention_mask[:, :, None].to(x.dtype)
            pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        else:
            pooled = torch.tanh(self.pooler(x[:, 0]))
        logits: Tensor = self.classifier(self.drop(pooled))[:, 0]
        return logits


class BiEncoder(nn.Module):
    """A sentence embedder: BERT, the masked mean of the last layer, L2-normalised.

    all-MiniLM-L6-v2's recipe, and what :class:`twostage.encoder.Encoder` runs for a folder
    with ``pooling: mean, normalize: true``. ``forward(ids, mask) -> [batch, hidden]`` unit
    vectors in float32. The BERT part is a :class:`BertCrossEncoder` without its classifier;
    its pooler is kept (a Hugging Face ``BertModel`` has one) but unused.
    """

    def __init__(self, bert: BertCrossEncoder) -> None:
        super().__init__()
        if hasattr(bert, "classifier"):
            del bert.classifier
        for p in bert.pooler.parameters():
            p.requires_grad_(False)
        self.bert = bert

    @property
    def config(self) -> CrossEncoderConfig:
        return self.bert.config

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        x = self.bert.hidden(input_ids, attention_mask, torch.zeros_like(input_ids))
        m = attention_mask[:, :, None].to(x.dtype)
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled.float(), dim=-1)


def load_bi_encoder(
    folder: Path, layers: list[int] | None = None, *, dropout: float = 0.1
) -> BiEncoder:
    """A :class:`BiEncoder` from a BERT checkpoint folder (all-MiniLM-L6-v2's, or one that
    :func:`save_encoder_checkpoint` wrote); ``layers`` as in :func:`load_pretrained`."""
    return BiEncoder(load_pretrained(folder, layers, dropout=dropout))


def save_encoder_checkpoint(
    model: BiEncoder, folder: Path, tokenizer: Path, settings: dict[str, Any]
) -> Path:
    """Write a Hugging Face ``BertModel`` folder: config.json, model.safetensors (no
    ``bert.`` prefix, as sentence-transformers saves it), tokenizer.json and twostage.json
    (``settings``: kind, pooling, normalisation, max length). ``Encoder.load`` reads it."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k.removeprefix("bert."): v for k, v in to_hf_state(model.bert).items()}
    save_file(state, str(folder / "model.safetensors"))
    cfg = {k: v for k, v in asdict(model.config).items() if k != "twostage_pooling"}
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "position_embedding_type": "absolute",
        "pad_token_id": 0,
        **cfg,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if Path(tokenizer).resolve() != (folder / "tokenizer.json").resolve():
        shutil.copy(tokenizer, folder / "tokenizer.json")
    (folder / "twostage.json").write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    return folder


# ---- Hugging Face names <-> this module's names ------------------------------------------

_LAYER_MAP = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "ln1": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense",
    "ffn_out": "output.dense",
    "ln2": "output.LayerNorm",
}
_TOP_MAP = {
    "word": "bert.embeddings.word_embeddings",
    "pos": "bert.embeddings.position_embeddings",
    "typ": "bert.embeddings.token_type_embeddings",
    "emb_ln": "bert.embeddings.LayerNorm",
    "pooler": "bert.pooler.dense",
    "classifier": "classifier",
}


def hf_name(name: str) -> str:
    """This module's parameter name -> the Hugging Face one."""
    mod, _, leaf = name.rpartition(".")
    if mod.startswith("layers."):
        _, i, sub = mod.split(".", 2)
        return f"bert.encoder.layer.{i}.{_LAYER_MAP[sub]}.{leaf}"
    return f"{_TOP_MAP[mod]}.{leaf}"


def to_hf_state(model: BertCrossEncoder) -> dict[str, np.ndarray]:
    """float32 numpy weights under Hugging Face names.

    A mean-pooling cross-encoder has no pooler: its weights are left out, so a loader that
    would apply BertForSequenceClassification's [CLS] head fails loudly instead of scoring
    wrong. (A bi-encoder's BERT, which has no classifier, keeps its pooler.)
    """
    mean = model.config.twostage_pooling == "mean" and hasattr(model, "classifier")
    return {
        hf_name(k): v.detach().float().cpu().numpy().copy()
        for k, v in model.state_dict().items()
        if not (mean and k.startswith("pooler."))
    }


def load_pretrained(
    folder: Path,
    layers: list[int] | None = None,
    *,
    seed: int = 0,
    dropout: float = 0.1,
    pooling: str | None = None,
) -> BertCrossEncoder:
    """A cross-encoder from a BERT checkpoint folder (config.json + model.safetensors).

    ``pooling`` (default: the folder's ``twostage_pooling``, else ``"cls"``) picks the head.
    ``layers`` picks which encoder layers to keep, in order (e.g. ``[0, 1, 2]``: a 3-layer
    student from the bottom of a 6-layer model); default all. Missing pooler or classifier
    weights (a bi-encoder has no classifier) are initialised from ``seed``.
    """
    from safetensors.numpy import load_file

    folder = Path(folder)
    c = CrossEncoderConfig.from_json(folder / "config.json")
    n_src = c.num_hidden_layers
    layers = list(range(n_src)) if layers is None else list(layers)
    if not layers or any(not 0 <= i < n_src for i in layers):
        raise ValueError(f"layers must be indices in 0..{n_src - 1}, got {layers}")
    c.num_hidden_layers = len(layers)
    c.hidden_dropout_prob = c.attention_probs_dropout_prob = dropout
    if pooling is not None:
        if pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', not {pooling!r}")
        c.twostage_pooling = pooling
    torch.manual_seed(seed)
    model = BertCrossEncoder(c)
    nn.init.normal_(model.classifier.weight, std=0.02)
    nn.init.zeros_(model.classifier.bias)
    src = {}
    for k, v in load_file(str(folder / "model.safetensors")).items():
        src[k if k.startswith(("bert.", "classifier.")) else "bert." + k] = v
    state = {}
    for name in model.state_dict():
        key = hf_name(name)
        if name.startswith("layers."):
            i = int(name.split(".")[1])
            key = key.replace(f"layer.{i}.", f"layer.{layers[i]}.", 1)
        if key in src:
            state[name] = torch.from_numpy(np.asarray(src[key], dtype=np.float32).copy())
    missing = [n for n in model.state_dict() if n not in state]
    unexpected_missing = [n for n in missing if not n.startswith(("classifier.", "pooler."))]
    if unexpected_missing:
        raise ValueError(f"{folder}: weights missing for {unexpected_missing[:5]}")
    model.load_state_dict(state, strict=False)
    return model


def load_checkpoint_folder(folder: Path) -> BertCrossEncoder:
    """A model saved by :func:`save_checkpoint` (or any 1-label BERT cross-encoder)."""
    return load_pretrained(folder, dropout=0.0)


def save_checkpoint(
    model: BertCrossEncoder, folder: Path, tokenizer: Path, settings: dict[str, Any] | None = None
) -> Path:
    """Write config.json + model.safetensors (HF layout) + tokenizer.json [+ twostage.json]."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(to_hf_state(model), str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config.to_hf(), indent=2))
    if Path(tokenizer).resolve() != (folder / "tokenizer.json").resolve():
        shutil.copy(tokenizer, folder / "tokenizer.json")
    if settings is not None:
        (folder / "twostage.json").write_text(json.dumps(settings, indent=2, sort_keys=True))
    return folder


__all__ = [
    "BertCrossEncoder",
    "BiEncoder",
    "CrossEncoderConfig",
    "hf_name",
    "load_bi_encoder",
    "load_checkpoint_folder",
    "load_pretrained",
    "save_checkpoint",
    "save_encoder_checkpoint",
    "to_hf_state",
]
