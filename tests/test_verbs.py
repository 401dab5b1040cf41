"""The ecosystem's verbs: Reranker.predict / rank (sentence-transformers' CrossEncoder),
Collection.add with dicts, Engine.search_many (one encoder call for the batch).

The reranker is a small random cross-encoder (tests/tinyce.py, fp32): its scores mean nothing,
but they are real onnxruntime outputs and a pair scores the same in any batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tinyce import random_cross_encoder
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.engine import Engine
from twostage.errors import InvalidArgument
from twostage.reranker import Reranker
from twostage.stdlib_docs import stdlib_docs

QUERY = "how do I read a gzip compressed file"
DOCS = [
    "The gzip module reads and writes gzip-compressed files.",
    "A bird in the hand is worth two in the bush.",
    "json.loads deserializes a str containing a JSON document.",
    "The gzip module reads and writes gzip-compressed files.",  # a tie with the first
]


@pytest.fixture(scope="module")
def rr(tmp_path_factory: pytest.TempPathFactory) -> Reranker:
    folder = random_cross_encoder(tmp_path_factory.mktemp("ce") / "ce", seed=1)
    return Reranker.load(folder, precision="fp32")


# ---- Reranker.predict and rank --------------------------------------------------------------


def test_predict_is_score_per_pair(rr: Reranker) -> None:
    pairs = [(QUERY, d) for d in DOCS] + [("parse json", DOCS[2]), ("parse json", DOCS[1])]
    got = rr.predict(pairs)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32 and got.shape == (6,)
    np.testing.assert_allclose(got[:4], rr.score(QUERY, DOCS), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        got[4:], rr.score("parse json", [DOCS[2], DOCS[1]]), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(rr.predict(pairs, batch_size=1), got, rtol=1e-5, atol=1e-5)
    one = rr.predict((QUERY, DOCS[0]))  # one pair alone: one float
    assert isinstance(one, float) and one == pytest.approx(float(got[0]), abs=1e-5)
    assert rr.predict([(QUERY, d) for d in DOCS[:1]]).shape == (1,)
    assert rr.predict([]).shape == (0,)
    assert rr.predict([[QUERY, DOCS[0]]]).shape == (1,)  # lists as pairs, as JSON gives them


def test_predict_refuses_what_is_not_pairs(rr: Reranker) -> None:
    with pytest.raises(TypeError, match="not a string"):
        rr.predict("q")  # type: ignore[call-overload]
    with pytest.raises(TypeError, match=r"pairs\[1\]"):
        rr.predict([(QUERY, "d"), (QUERY,)])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="expected str"):
        rr.predict([(QUERY, 3)])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="batch_size"):
        rr.predict([(QUERY, "d")], batch_size=0)


def test_rank_orders_by_score_with_ids_and_texts(rr: Reranker) -> None:
    scores = rr.score(QUERY, DOCS)
    ranked = rr.rank(QUERY, DOCS)
    assert [r["corpus_id"] for r in ranked] == sorted(
        range(len(DOCS)), key=lambda i: (-float(scores[i]), i)
    )
    assert [r["score"] for r in ranked] == sorted((float(s) for s in scores), reverse=True)
    assert all(set(r) == {"corpus_id", "score"} for r in ranked)
    # Equal texts, equal scores: the input order stays.
    ids = [r["corpus_id"] for r in ranked]
    assert ids.index(0) < ids.index(3)
    with_text = rr.rank(QUERY, DOCS, top_k=2, return_documents=True)
    assert len(with_text) == 2
    assert all(r["text"] == DOCS[r["corpus_id"]] for r in with_text)
    assert [r["corpus_id"] for r in with_text] == ids[:2]
    assert rr.rank(QUERY, [], top_k=3) == []
    assert len(rr.rank(QUERY, DOCS, top_k=10)) == len(DOCS)
    with pytest.raises(ValueError, match="top_k"):
        rr.rank(QUERY, DOCS, top_k=0)
    with pytest.raises(TypeError):
        rr.rank(QUERY, "one string")


# ---- Collection.add with dicts ----------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


@pytest.fixture(scope="module")
def col(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Iterator[Collection]:
    with Collection.create(tmp_path_factory.mktemp("verbs") / "col", encoder) as c:
        c.add(list(stdlib_docs(120)))
        yield c


def test_add_takes_dicts_and_documents(tmp_path: Path, encoder: Encoder) -> None:
    with Collection.create(tmp_path / "c", encoder) as c:
        res = c.add(
            [
                {"id": "d1", "text": "HNSW is a graph index.", "title": "ANN"},
                Document("d2", "BM25 is a ranking function."),
                {"id": "d3", "text": "tantivy", "metadata": {"lang": "en", "n": 3}},
                {"id": "d4", "title": "only a title"},
            ]
        )
        assert res.inserted == 4
        d1, d3, d4 = c.get(["d1", "d3", "d4"])
        assert (d1.title, d1.text, d1.metadata) == ("ANN", "HNSW is a graph index.", None)
        assert d3.metadata == {"lang": "en", "n": 3} and d4.title == "only a title"
        assert c.add([{"id": "d1", "text": "replaced"}]).updated == 1
        assert c.get(["d1"])[0].text == "replaced"
        for bad, match in [
            ({"id": "x", "text": "t", "body": "?"}, r"unknown keys \['body'\]"),
            ({"_id": "x", "id": "y", "text": "t"}, "both 'id' and '_id'"),
            ({"text": "no id"}, "needs an 'id'"),
            ({"id": "x"}, "both empty"),
            ({"id": 7, "text": "t"}, "non-empty string"),
            ({"id": "x", "text": "t", "metadata": [1]}, "metadata must be a dict"),
        ]:
            with pytest.raises(InvalidArgument, match=match):
                c.add([Document("ok", "fine"), bad])
        assert len(c) == 4  # a bad item refuses the whole batch, nothing written
        with pytest.raises(InvalidArgument, match=r"docs\[0\] is str"):
            c.add(["just text"])  # type: ignore[list-item]
        with pytest.raises(InvalidArgument, match="not a single dict"):
            c.add({"id": "x", "text": "t"})  # type: ignore[arg-type]
        assert Document.from_dict({"id": "a", "text": "b"}) == Document("a", "b")
        # A BEIR corpus line as it is: "_id" is the id.
        assert Document.from_dict({"_id": "a", "title": "t", "text": "b"}) == Document(
            "a", "b", "t"
        )
        with pytest.raises(InvalidArgument, match="both 'id' and '_id'"):
            Document.from_dict({"_id": "a", "id": "b", "text": "c"})


# ---- Engine.search_many ------------------------------------------------------------------------


class CountingEncoder:
    """Counts the collection encoder's calls (and the texts in each) through a wrapper."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, encoder: Encoder) -> None:
        self.calls: list[int] = []
        real = encoder.encode

        def encode(texts: Any, *args: Any, **kwargs: Any) -> np.ndarray:
            self.calls.append(len(texts))
            return real(texts, *args, **kwargs)

        monkeypatch.setattr(encoder, "encode", encode)


QUERIES = [
    "read a gzip compressed file",
    "sort a list of dictionaries by a key",
    "parse command line options",
    "what does the assert statement do",
    "run a shell command and capture its output",
]


def test_search_many_is_search_per_query_with_one_encoder_call(
    col: Collection, rr: Reranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = EngineConfig(budget_ms=1e9, first_stage="hybrid")
    one = Engine(col, reranker=rr, config=cfg)
    expect = [one.search(q, k=5) for q in QUERIES]
    many = Engine(col, reranker=rr, config=cfg)  # a fresh query cache
    counter = CountingEncoder(monkeypatch, col.encoder)
    got = many.search_many(QUERIES, k=5)
    assert counter.calls == [len(QUERIES)]  # one call, every query in it
    assert [r.query for r in got] == QUERIES
    for a, b in zip(expect, got, strict=True):
        assert [h.id for h in a.hits] == [h.id for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-5)
        assert b.reranker_version == rr.version and not b.query_cached
        assert b.timings.encode > 0 and b.timings.total >= b.timings.encode
    # Cached now: no encoder call; a repeated query is encoded once.
    again = many.search_many([*QUERIES[:2], "brand new question", "brand new question"], k=3)
    assert counter.calls == [len(QUERIES), 1]
    assert [r.query_cached for r in again] == [True, True, False, True]


def test_search_many_checks_every_query_first_and_follows_the_arguments(
    col: Collection, rr: Reranker, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = Engine(col, reranker=rr, config=EngineConfig(budget_ms=1e9))
    counter = CountingEncoder(monkeypatch, col.encoder)
    with pytest.raises(InvalidArgument, match="empty"):
        eng.search_many(["fine question", "   "])
    with pytest.raises(InvalidArgument, match="list of strings"):
        eng.search_many("one string")
    assert counter.calls == []  # refused before any work
    assert eng.search_many([]) == []
    # BM25 alone without a reranker needs no query vector at all.
    lexical = eng.search_many(QUERIES[:3], k=4, first_stage="bm25", rerank=False)
    assert counter.calls == [] and all(r.first_stage == "bm25" for r in lexical)
    assert all(len(r.hits) <= 4 and not any(h.reranked for h in r.hits) for r in lexical)
    assert sum(len(r.hits) for r in lexical) > 0
    dense = eng.search_many(QUERIES[:3], k=2, depth=0, first_stage="dense")
    assert counter.calls == [3] and all(len(r.hits) == 2 for r in dense)
    assert all(r.reranker_version is None for r in dense)
