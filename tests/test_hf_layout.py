"""A Hugging Face BERT cross-encoder folder, as ``transformers`` writes it, loads through
``Reranker.load`` and scores as PyTorch does.

The fixture (``tests/data/hf-bert-ce/``, made by ``tests/data/make_hf_bert_ce.py`` with real
torch + transformers; see its README) holds two randomly initialised
``BertForSequenceClassification`` checkpoints (1 and 2 labels) saved with
``save_pretrained(safe_serialization=True)``, their tokenizer, and PyTorch's logits for 12
real (query, passage) pairs. CI has no PyTorch: these tests compare with the stored logits.
Where torch and transformers are installed, the last tests regenerate the fixture and
compare live.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import struct
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from twostage.export import BertConfig, build_bert_graph, load_weights, save_atomic
from twostage.reranker import Reranker

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "hf-bert-ce"
PAIRS: dict[str, Any] = json.loads((FIXTURE / "pairs.json").read_text(encoding="utf-8"))
MODELS = ("labels-1", "labels-2")


def _logits(name: str) -> np.ndarray:
    return np.array([p["logits"][name] for p in PAIRS["pairs"]], dtype=np.float64)


def _expected_scores(name: str) -> np.ndarray:
    """The score a user of the model means: the logit (1 label), P(label 1) (2 labels)."""
    z = _logits(name)
    if z.shape[1] == 1:
        return z[:, 0]
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e[:, 1] / e.sum(axis=1)


def _scores(rr: Reranker) -> np.ndarray:
    return np.array([rr.score(p["query"], [p["passage"]])[0] for p in PAIRS["pairs"]])


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


@pytest.fixture(scope="module", params=MODELS)
def fp32(request: pytest.FixtureRequest) -> tuple[str, Reranker]:
    return request.param, Reranker.load(FIXTURE / request.param, precision="fp32")


# ---- the fixture itself ---------------------------------------------------------------------


def test_fixture_is_a_transformers_folder_and_small() -> None:
    for name in MODELS:
        files = {p.name for p in (FIXTURE / name).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json"} <= files
        cfg = json.loads((FIXTURE / name / "config.json").read_text())
        assert cfg["architectures"] == ["BertForSequenceClassification"]
        assert "transformers_version" in cfg  # written by transformers, not by this project
    size = sum(p.stat().st_size for p in FIXTURE.rglob("*") if p.is_file())
    assert size < 2 * 2**20
    lengths = [len(p["input_ids"]) for p in PAIRS["pairs"]]
    assert max(lengths) == PAIRS["max_length"] == 128 and min(lengths) < 40
    # PyTorch's scores differ from pair to pair: the comparisons below are not vacuous.
    assert _expected_scores("labels-1").std() > 0.2
    assert np.ptp(_expected_scores("labels-2")) > 0.1


def test_label_count_comes_from_the_weights() -> None:
    """transformers (5.x) leaves id2label out of config.json when it is its default of two
    labels; one label is written out. The graph declares what the classifier holds."""
    for name, n in (("labels-1", 1), ("labels-2", 2)):
        folder = FIXTURE / name
        cfg = BertConfig.from_file(folder / "config.json")
        assert cfg.num_labels == n
        graph = build_bert_graph(cfg, load_weights(folder / "model.safetensors"), head="classifier")
        dims = graph.graph.output[0].type.tensor_type.shape.dim
        assert [d.dim_param or d.dim_value for d in dims] == ["batch", n]


# ---- fp32 and int8 against PyTorch's logits ------------------------------------------------------


def test_pairs_pack_as_the_hf_tokenizer_packs_them(fp32: tuple[str, Reranker]) -> None:
    """[CLS] q [SEP] p [SEP] with token types 0/1, truncated at the tokenizer_config's
    model_max_length (128) as ``tokenizer(q, p, truncation=True)`` truncates."""
    _, rr = fp32
    assert rr.max_length == PAIRS["max_length"]
    for p in PAIRS["pairs"]:
        packed = rr.pack(rr.tokenize_query(p["query"]), rr.tokenize_documents([p["passage"]]))
        assert packed.ids[0] == p["input_ids"], p["query"][:40]
        assert packed.type_ids[0] == p["token_type_ids"]


def test_fp32_scores_match_pytorch(fp32: tuple[str, Reranker]) -> None:
    name, rr = fp32
    np.testing.assert_allclose(_scores(rr), _expected_scores(name), atol=1e-4, rtol=0)
    # The raw graph output is the classifier's logits, every label of them.
    pairs = [p["query"] for p in PAIRS["pairs"]], [p["passage"] for p in PAIRS["pairs"]]
    packed = rr.pack(rr.tokenize_query(pairs[0][0]), rr.tokenize_documents([pairs[1][0]]))
    (batch,) = rr.batches(packed)
    np.testing.assert_allclose(rr.run(batch)[0], _logits(name)[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_int8_scores_stay_close_to_pytorch(name: str) -> None:
    """Dynamic int8 (per-channel weights, activations quantised per tensor at run time).

    Its error follows the activations' range, which transformers' random init at
    initializer_range 0.2 makes wide: measured max |d| 0.077 (1 label) and 0.060 (2 labels)
    of the score range, Pearson 0.996 / 0.993, Spearman 0.97 / 0.96 over the 12 pairs. The
    bounds leave room for onnxruntime versions to round differently, and still fail on a
    wrong graph (a missing pooler, swapped token types, labels in the wrong order).
    """
    want = _expected_scores(name)
    got = _scores(Reranker.load(FIXTURE / name, precision="int8"))
    assert np.abs(got - want).max() < 0.15 * np.ptp(want)
    assert np.corrcoef(got, want)[0, 1] > 0.98
    assert _spearman(got, want) > 0.9


# ---- checkpoint variants: bfloat16 weights, tanh GELU ---------------------------------------


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str) -> None:
    """A safetensors file by hand (numpy cannot write bfloat16): F32, or BF16 by truncation."""
    header: dict[str, Any] = {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(tensors[name], dtype=np.float32)
        raw = (arr.view(np.uint32) >> 16).astype("<u2") if dtype == "BF16" else arr.astype("<f4")
        blob = raw.tobytes()
        header[name] = {
            "dtype": dtype,
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(blob)],
        }
        blobs.append(blob)
        offset += len(blob)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _copy_fixture(dst: Path, name: str = "labels-1") -> Path:
    shutil.copytree(FIXTURE / name, dst)
    return dst


def test_bfloat16_checkpoint_loads_and_scores_as_its_float32_widening(tmp_path: Path) -> None:
    from safetensors.numpy import load_file

    src = load_file(str(FIXTURE / "labels-1" / "model.safetensors"))
    bf = _copy_fixture(tmp_path / "bf16")
    _write_safetensors(bf / "model.safetensors", src, "BF16")
    widened = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in src.items()}
    f32 = _copy_fixture(tmp_path / "widened")
    _write_safetensors(f32 / "model.safetensors", widened, "F32")
    got = load_weights(bf / "model.safetensors")
    assert all(got[k.removeprefix("bert.")].dtype == np.float32 for k in src)
    assert all(np.array_equal(got[k.removeprefix("bert.")], widened[k]) for k in src)
    a = _scores(Reranker.load(bf, precision="fp32"))
    np.testing.assert_allclose(a, _scores(Reranker.load(f32, precision="fp32")), atol=1e-6)
    # bfloat16 keeps 8 bits of mantissa: close to PyTorch's float32 scores, not equal.
    assert np.corrcoef(a, _expected_scores("labels-1"))[0, 1] > 0.99


_erf = np.vectorize(math.erf, otypes=[np.float64])


def numpy_forward(folder: Path, ids: list[int], types: list[int]) -> np.ndarray:
    """BertForSequenceClassification on one unpadded pair, in float64: the logits."""
    c = json.loads((folder / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_weights(folder / "model.safetensors").items()}
    n_heads, eps = c["num_attention_heads"], c["layer_norm_eps"]

    def ln(x: np.ndarray, p: str) -> np.ndarray:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + eps) * w[p + ".weight"] + w[p + ".bias"]

    def lin(x: np.ndarray, p: str) -> np.ndarray:
        return x @ w[p + ".weight"].T + w[p + ".bias"]

    def gelu(x: np.ndarray) -> np.ndarray:
        if c["hidden_act"] == "gelu_new":
            return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
        return 0.5 * x * (1 + _erf(x / math.sqrt(2)))

    n = len(ids)
    x = (
        w["embeddings.word_embeddings.weight"][ids]
        + w["embeddings.position_embeddings.weight"][:n]
        + w["embeddings.token_type_embeddings.weight"][types]
    )
    x = ln(x, "embeddings.LayerNorm")
    d = x.shape[1] // n_heads
    for i in range(c["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (
            lin(x, p + f"attention.self.{t}").reshape(n, n_heads, d).transpose(1, 0, 2)
            for t in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 2, 1) / math.sqrt(d)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = ((s / s.sum(-1, keepdims=True)) @ v).transpose(1, 0, 2).reshape(n, -1)
        x = ln(lin(ctx, p + "attention.output.dense") + x, p + "attention.output.LayerNorm")
        x = ln(
            lin(gelu(lin(x, p + "intermediate.dense")), p + "output.dense") + x,
            p + "output.LayerNorm",
        )
    return lin(np.tanh(lin(x[0], "pooler.dense")), "classifier")


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
def test_exact_and_tanh_gelu_match_a_numpy_forward(act: str, tmp_path: Path) -> None:
    """``gelu_new`` (tanh approximation) is exported as such, fused and unfused; ``gelu``
    as erf. Against the stored PyTorch logits this numpy forward is checked first."""
    folder = _copy_fixture(tmp_path / act)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_act"] = act
    (folder / "config.json").write_text(json.dumps(cfg))
    pairs = PAIRS["pairs"]
    ref = np.array([numpy_forward(folder, p["input_ids"], p["token_type_ids"])[0] for p in pairs])
    if act == "gelu":
        np.testing.assert_allclose(ref, _logits("labels-1")[:, 0], atol=1e-5)
    else:  # the approximation does change the scores: the test can tell the two apart
        assert np.abs(ref - _logits("labels-1")[:, 0]).max() > 1e-4
    np.testing.assert_allclose(_scores(Reranker.load(folder, precision="fp32")), ref, atol=1e-4)
    graph = build_bert_graph(
        BertConfig.from_file(folder / "config.json"),
        load_weights(folder / "model.safetensors"),
        head="classifier",
        fused=False,
    )
    save_atomic(graph, tmp_path / "unfused.onnx")
    sess = ort.InferenceSession(str(tmp_path / "unfused.onnx"), providers=["CPUExecutionProvider"])
    for p, want in zip(pairs, ref, strict=True):
        ids = np.array([p["input_ids"]], dtype=np.int64)
        feeds = {
            "input_ids": ids,
            "attention_mask": np.ones_like(ids),
            "token_type_ids": np.array([p["token_type_ids"]], dtype=np.int64),
        }
        assert sess.run(None, feeds)[0][0, 0] == pytest.approx(want, abs=1e-4)


# ---- live: regenerate with torch + transformers ---------------------------------------------

HAS_HF = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
needs_hf = pytest.mark.skipif(
    not HAS_HF,
    reason="needs torch and transformers (stored logits are checked above)",
)


def _maker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_hf_bert_ce", DATA / "make_hf_bert_ce.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@needs_hf
def test_regenerated_fixture_matches_live_pytorch(tmp_path: Path) -> None:
    live = _maker().make(tmp_path / "hf-bert-ce")
    for got, stored in zip(live["pairs"], PAIRS["pairs"], strict=True):
        # Tokenisation is deterministic: the committed ids are what transformers gives today.
        assert got["input_ids"] == stored["input_ids"]
    for name in MODELS:
        rr = Reranker.load(tmp_path / "hf-bert-ce" / name, precision="fp32")
        z = np.array([p["logits"][name] for p in live["pairs"]])
        want = z[:, 0] if z.shape[1] == 1 else np.exp(z[:, 1]) / np.exp(z).sum(axis=1)
        np.testing.assert_allclose(_scores(rr), want, atol=1e-4, rtol=0)


@needs_hf
def test_tanh_gelu_checkpoint_matches_live_transformers(tmp_path: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(3)
    cfg = transformers.BertConfig(
        vocab_size=json.loads((FIXTURE / "labels-1" / "config.json").read_text())["vocab_size"],
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        hidden_act="gelu_new",
        initializer_range=0.2,
        num_labels=1,
    )
    model = transformers.BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(FIXTURE / "labels-1" / f, tmp_path / f)
    rr = Reranker.load(tmp_path, precision="fp32")
    want = []
    with torch.no_grad():
        for p in PAIRS["pairs"]:
            ids = torch.tensor([p["input_ids"]])
            out = model(input_ids=ids, token_type_ids=torch.tensor([p["token_type_ids"]]))
            want.append(float(out.logits[0, 0]))
    np.testing.assert_allclose(_scores(rr), want, atol=1e-4, rtol=0)
