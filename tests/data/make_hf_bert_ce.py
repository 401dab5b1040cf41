"""Generate tests/data/hf-bert-ce/: Hugging Face BERT cross-encoders and PyTorch's logits.

What ``tests/test_hf_layout.py`` checks ``Reranker.load`` against, written by real
``transformers`` (``save_pretrained(safe_serialization=True)``), so the folder layout is what a
user who downloads a BERT-family cross-encoder (e.g. cross-encoder/ms-marco-MiniLM-L-6-v2) has
on disk: ``config.json``, ``model.safetensors``, ``tokenizer.json``, ``tokenizer_config.json``.

* ``labels-1/``: a randomly initialised ``BertForSequenceClassification`` with one label
  (2 layers, hidden 64, 4 heads, intermediate 128, max_position_embeddings 512); the score is
  the logit.
* ``labels-2/``: the same shape with two labels; the score is softmax(logits)[1].
* ``pairs.json``: 12 real (query, passage) pairs (SciFact claims and abstracts from the
  package's 1k sample, plus an empty passage and a non-ASCII one), the ids Hugging Face's
  tokenizer produces for them (``tokenizer(q, p, truncation=True)``: longest-first at the
  tokenizer's ``model_max_length`` of 128), and each model's logits from PyTorch.

The vocabulary is a subset of the real all-MiniLM-L6-v2 WordPiece vocabulary (the tokenizer
shipped with the built-in encoder, python/twostage/models/minilm-l6): the special tokens,
every printable ASCII character with its ``##`` form, and every token of the fixture's
texts, renumbered in the original order.
WordPiece picks the longest match, so the fixture's texts tokenise into the same pieces as
with the full vocabulary; the word-embedding table shrinks from 30,522 rows to 784 and the
folder stays small.

The weights come from transformers' own initialisation (``initializer_range`` 0.2, not 0.02,
so that random pairs get visibly different scores) plus seeded noise on the LayerNorm and
bias parameters (transformers initialises them to 1 and 0, which would leave them untested).

Needs torch, transformers and tokenizers; not run in CI::

    PYTHONPATH=python /tmp/trainenv/bin/python tests/data/make_hf_bert_ce.py

``tests/test_hf_layout.py`` also imports :func:`make` to regenerate into a temporary folder
and compare live, where torch and transformers are installed.
"""

from __future__ import annotations

import argparse
import gzip
import json
import string
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SAMPLE = HERE.parents[1] / "python" / "twostage" / "data"
MAX_LENGTH = 128
SHAPE = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "max_position_embeddings": 512,
    "initializer_range": 0.2,
}


def _sample() -> tuple[dict[str, str], dict[str, dict[str, str]], list[tuple[str, str]]]:
    with gzip.open(SAMPLE / "scifact-1k.corpus.jsonl.gz", "rt", encoding="utf-8") as f:
        corpus = {str(r["_id"]): r for r in map(json.loads, f)}
    lines = (SAMPLE / "scifact-1k.queries.jsonl").read_text(encoding="utf-8").splitlines()
    queries = {str(r["_id"]): r["text"] for r in map(json.loads, lines)}
    qrels = []
    for line in (SAMPLE / "scifact-1k.qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        q, d, s = line.split("\t")
        if int(s) > 0 and d in corpus and q in queries:
            qrels.append((q, d))
    return queries, corpus, sorted(qrels, key=lambda t: (int(t[0]), t[1]))


def fixture_pairs() -> list[dict[str, str]]:
    """12 (query, passage) pairs of varied lengths: what the fixture scores."""
    queries, corpus, qrels = _sample()

    def doc(d: str) -> dict[str, str]:
        return corpus[d]

    def sentences(text: str, n: int) -> str:
        return ". ".join(text.split(". ")[:n]).rstrip(".") + "."

    (q1, d1), (q2, d2), (q3, d3), (q4, d4), (q5, d5), (q6, d6) = qrels[:6]
    # A passage that is no positive of q1 (the first qrel of another query).
    d_other = next(d for q, d in qrels if q != q1 and d != d1)
    long_query = " ".join(queries[q] for q, _ in qrels[6:12])  # about 90 tokens
    pairs = [
        (queries[q1], doc(d1)["title"]),  # short: a title
        (queries[q2], sentences(doc(d2)["text"], 1)),  # one sentence
        (queries[q3], sentences(doc(d3)["text"], 3)),  # a few sentences
        (queries[q4], f"{doc(d4)['title']}. {doc(d4)['text']}"),  # full abstract: > 128 tokens
        (queries[q5], f"{doc(d5)['title']}. {doc(d5)['text']}"),
        (queries[q6], doc(d6)["title"]),
        (queries[q1], f"{doc(d_other)['title']}. {doc(d_other)['text']}"),  # a negative
        (queries[q2], doc(d_other)["title"]),
        (queries[q3], ""),  # an empty passage: [CLS] q [SEP] [SEP]
        (queries[q4], "Café, naïve, résumé: ünïcödé and Greek \u03b1-helix, \u03b2-sheet."),
        (long_query, f"{doc(d1)['title']}. {doc(d1)['text']}"),  # both sides long
        ("vitamin d", sentences(doc(d5)["text"], 2)),  # a two-word query
    ]
    return [{"query": q, "passage": p} for q, p in pairs]


def small_tokenizer(texts: list[str]) -> Any:
    """The MiniLM tokenizer with its vocabulary cut to what ``texts`` and ASCII need."""
    from tokenizers import Tokenizer

    full_path = HERE.parents[1] / "python" / "twostage" / "models" / "minilm-l6" / "tokenizer.json"
    full = Tokenizer.from_file(str(full_path))
    full.no_truncation()
    full.no_padding()
    vocab: dict[str, int] = full.get_vocab()
    keep = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"}
    for ch in string.printable.strip():
        keep |= {ch, "##" + ch}
    for enc in full.encode_batch(texts, add_special_tokens=False):
        keep |= set(enc.tokens)
    keep &= set(vocab)
    order = sorted(keep, key=lambda t: vocab[t])  # [PAD] stays id 0
    new_id = {t: i for i, t in enumerate(order)}
    raw = json.loads(full_path.read_text(encoding="utf-8"))
    raw["model"]["vocab"] = new_id
    raw["truncation"] = None
    raw["padding"] = None
    for tok in raw.get("added_tokens", []):
        tok["id"] = new_id[tok["content"]]
    post = raw.get("post_processor") or {}
    for spec in (post.get("special_tokens") or {}).values():
        spec["ids"] = [new_id[t] for t in spec["tokens"]]
    small = Tokenizer.from_str(json.dumps(raw))
    # Same pieces as the full vocabulary for every fixture text (WordPiece is longest-match).
    for a, b in zip(
        full.encode_batch(texts, add_special_tokens=False),
        small.encode_batch(texts, add_special_tokens=False),
        strict=True,
    ):
        assert a.tokens == b.tokens, (a.tokens, b.tokens)
    return small


def _model(vocab_size: int, num_labels: int, seed: int) -> Any:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=vocab_size, num_labels=num_labels, **SHAPE)
    model = BertForSequenceClassification(cfg).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith(".bias"):
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def make(out: Path) -> dict[str, Any]:
    """Write both model folders and pairs.json into ``out``; returns pairs.json's content."""
    import tokenizers
    import torch
    import transformers
    from transformers import BertTokenizerFast

    pairs = fixture_pairs()
    texts = [t for p in pairs for t in (p["query"], p["passage"]) if t]
    small = small_tokenizer(texts)
    out.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "generated_by": "tests/data/make_hf_bert_ce.py",
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
        },
        "max_length": MAX_LENGTH,
        "models": {},
        "pairs": [dict(p) for p in pairs],
    }
    for folder, num_labels, seed in (("labels-1", 1, 0), ("labels-2", 2, 1)):
        dst = out / folder
        dst.mkdir(parents=True, exist_ok=True)
        tok = BertTokenizerFast(tokenizer_object=small, model_max_length=MAX_LENGTH)
        tok.save_pretrained(dst)
        model = _model(small.get_vocab_size(), num_labels, seed)
        model.save_pretrained(dst, safe_serialization=True)
        # Exactly what a transformers user runs: the saved folder, the tokenizer's defaults.
        tok = transformers.AutoTokenizer.from_pretrained(dst)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(dst).eval()
        enc = tok(
            [p["query"] for p in pairs],
            [p["passage"] for p in pairs],
            truncation=True,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            logits = model(**enc).logits.double().numpy()
        result["models"][folder] = {"num_labels": num_labels, "seed": seed}
        for i, p in enumerate(result["pairs"]):
            n = int(enc["attention_mask"][i].sum())
            ids = enc["input_ids"][i, :n].tolist()
            types = enc["token_type_ids"][i, :n].tolist()
            if "input_ids" in p:
                assert p["input_ids"] == ids and p["token_type_ids"] == types
            p["input_ids"], p["token_type_ids"] = ids, types
            p.setdefault("logits", {})[folder] = [round(float(v), 7) for v in logits[i]]
    (out / "pairs.json").write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE / "hf-bert-ce")
    a = p.parse_args()
    res = make(a.out)
    lens = [len(p["input_ids"]) for p in res["pairs"]]
    print(f"wrote {a.out}: {len(lens)} pairs, lengths {lens}")
    for name in res["models"]:
        print(name, [p["logits"][name] for p in res["pairs"]])


if __name__ == "__main__":
    main()
