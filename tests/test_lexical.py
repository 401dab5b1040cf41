"""The lexical first stage: BM25 on tantivy, kept in step with the store, and hybrid search.

Real tantivy indexes, real SQLite, the MiniLM encoder (int8) over real passages (this
Python's documentation), and SciFact for a quality check against the published BM25 figure.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED
from twostage._core import rrf
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.engine import Engine
from twostage.errors import CorruptIndex, InvalidArgument
from twostage.lexical import LexicalIndex, query_terms
from twostage.reranker import Reranker
from twostage.stdlib_docs import stdlib_docs
from twostage.store import DocStore

SCIFACT = SHARED / "data" / "scifact"


# ---- the index alone ----------------------------------------------------------------------


def test_upsert_replace_remove_and_reopen(tmp_path: Path) -> None:
    lex = LexicalIndex.create(tmp_path / "lex")
    lex.upsert([1, 2, 3], ["graph indexes for ANN", "inverted indexes", "p53 in cancer"], seq=3)
    keys, scores = lex.search("inverted index", 10)
    assert keys.tolist() == [2, 1]  # "indexes" stems to "index": both match, 2 is shorter
    assert scores.dtype == np.float32 and scores[0] > scores[1] > 0
    lex.upsert([2], ["now about cats"], seq=4)  # a replaced text no longer matches its words
    assert lex.search("inverted", 10)[0].tolist() == []
    assert lex.search("cat", 10)[0].tolist() == [2]
    lex.remove([3, 99], seq=5)  # an unknown key is ignored
    assert lex.search("cancer", 10)[0].tolist() == []
    assert len(lex) == 2 and lex.seq == 5
    again = LexicalIndex.open(tmp_path / "lex")
    assert again.seq == 5 and len(again) == 2
    assert again.search("cats", 5)[0].tolist() == [2]


def test_a_repeated_key_in_one_batch_keeps_the_last_text(tmp_path: Path) -> None:
    lex = LexicalIndex.create(tmp_path / "lex")
    lex.upsert([7, 7], ["first version", "second version"], seq=2)
    assert len(lex) == 1
    assert lex.search("first", 5)[0].tolist() == []
    assert lex.search("second", 5)[0].tolist() == [7]


def test_queries_are_words_only(tmp_path: Path) -> None:
    lex = LexicalIndex.create(tmp_path / "lex")
    lex.upsert([1], ["title body AND text"], seq=1)
    assert query_terms("What is THE role of p53?") == ["what", "role", "p53"]
    # Query syntax never reaches tantivy's parser: none of these can fail a search.
    for q in ["title:(x", '"unclosed', "body:text AND", "-text +title", "*", "a^2 ~ [1 TO 2]"]:
        lex.search(q, 5)
    assert lex.search('"body" AND (text)', 5)[0].tolist() == [1]
    assert lex.search("the of and", 5)[0].size == 0  # stop words only: nothing to ask
    assert lex.search("text", 0)[0].size == 0


def test_a_damaged_index_is_refused_with_the_reason(tmp_path: Path) -> None:
    lex = LexicalIndex.create(tmp_path / "lex")
    lex.upsert([1], ["a document"], seq=1)
    (tmp_path / "lex" / "state.json").write_text("{not json")
    with pytest.raises(CorruptIndex, match="unreadable lexical index state"):
        LexicalIndex.open(tmp_path / "lex")
    (tmp_path / "lex" / "state.json").unlink()
    with pytest.raises(CorruptIndex, match=r"state\.json missing"):
        LexicalIndex.open(tmp_path / "lex")


@pytest.mark.skipif(
    not (SCIFACT / "corpus.jsonl.gz").is_file(), reason=f"SciFact not found at {SCIFACT}"
)
def test_bm25_on_scifact_reaches_the_published_figure(tmp_path: Path) -> None:
    """BEIR reports BM25 (Elasticsearch) NDCG@10 0.665 on SciFact test."""
    ir_measures = pytest.importorskip("ir_measures")
    docs = [json.loads(line) for line in gzip.open(SCIFACT / "corpus.jsonl.gz", "rt")]
    lex = LexicalIndex.create(tmp_path / "lex")
    lex.upsert(range(len(docs)), [f"{d['title']}\n\n{d['text']}" for d in docs], seq=1)
    qrels: dict[str, dict[str, int]] = {}
    for line in (SCIFACT / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        q, d, g = line.split("\t")
        qrels.setdefault(q, {})[d] = int(g)
    queries = [json.loads(line) for line in (SCIFACT / "queries.jsonl").read_text().splitlines()]
    run = {}
    for q in queries:
        if q["_id"] in qrels:
            keys, scores = lex.search(q["text"], 100)
            run[q["_id"]] = {docs[k]["_id"]: float(s) for k, s in zip(keys, scores, strict=True)}
    assert len(run) == 300
    ndcg = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10]
    assert ndcg >= 0.665, ndcg


# ---- in a collection ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, encoder: Encoder) -> Path:
    path = tmp_path_factory.mktemp("lexical") / "col"
    with Collection.create(path, encoder) as col:
        col.add(list(stdlib_docs(240))[::2])
    return path


@pytest.fixture()
def col(tmp_path: Path, built: Path, encoder: Encoder) -> Collection:
    shutil.copytree(built, tmp_path / "col")
    return Collection.open(tmp_path / "col", encoder)


def _ids(col: Collection, query: str, k: int = 10) -> list[str]:
    keys, _ = col.lexical_search(query, k)
    return [d.id for d in col.fetch(keys, tokens=False) if d is not None]


def test_the_lexical_index_follows_upserts_and_deletes(col: Collection) -> None:
    assert col.recovery is None and len(col.lexical or []) == len(col)
    col.add([Document("zz1", "Quokkas are small marsupials.", title="quokka")])
    assert _ids(col, "quokka marsupial") == ["zz1"]
    col.add([Document("zz1", "Wombats dig burrows.", title="wombat")])  # upsert: new text
    assert _ids(col, "quokka") == []
    assert _ids(col, "wombats burrow") == ["zz1"]
    col.delete(["zz1"])
    assert _ids(col, "wombat") == []
    assert col.lexical is not None and col.lexical.seq == col.store.seq
    path = col.path
    col.close()
    with Collection.open(path) as again:
        assert again.recovery is None
        assert _ids(again, "wombat") == [] and len(again.lexical or []) == len(again)


def test_changes_the_index_missed_are_replayed_on_open(col: Collection) -> None:
    """A process that died between the store's commit and the BM25 commit loses nothing."""
    path = col.path
    col.close()
    store = DocStore.open(path / "store.sqlite")
    vec = np.zeros((1, store.dim), np.float32)
    vec[0, 0] = 1.0
    store.upsert([Document("late", "Axolotls regrow their limbs.")], vec)
    gone = next(store.ids())
    store.delete([gone])
    store.close()
    with Collection.open(path) as again:
        assert "lexical index was at change" in (again.recovery or "")
        assert "replayed 1 upserts and 1 deletes" in (again.recovery or "")
        assert _ids(again, "axolotl limbs") == ["late"]
        assert gone not in _ids(again, " ".join(query_terms(gone)), 50)
        assert len(again.lexical or []) == len(again)


def test_a_missing_or_damaged_lexical_index_is_rebuilt_from_the_store(col: Collection) -> None:
    path = col.path
    before = _ids(col, "compress data with gzip")
    col.close()
    shutil.rmtree(path / "lexical")
    with Collection.open(path) as again:
        assert "lexical index rebuilt" in (again.recovery or "")
        assert _ids(again, "compress data with gzip") == before
    (path / "lexical" / "state.json").write_text("garbage")
    with Collection.open(path) as again:
        assert "unreadable lexical index state" in (again.recovery or "")
        assert _ids(again, "compress data with gzip") == before


def test_a_collection_from_before_lexical_indexes_gets_one(col: Collection) -> None:
    path = col.path
    col.close()
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["lexical"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    shutil.rmtree(path / "lexical")
    with Collection.open(path) as again:
        assert "predates lexical indexes" in (again.recovery or "")
        assert len(again.lexical or []) == len(again)
    assert json.loads((path / "manifest.json").read_text())["lexical"]["library"] == "tantivy"


def test_without_a_lexical_index_bm25_is_refused_by_name(tmp_path: Path, encoder: Encoder) -> None:
    with Collection.create(tmp_path / "c", encoder, lexical=False) as col:
        col.add([Document("a", "some text")])
        assert col.lexical is None and not (tmp_path / "c" / "lexical").exists()
        with pytest.raises(InvalidArgument, match="no lexical"):
            col.lexical_search("text", 5)
        eng = Engine(col)
        with pytest.raises(InvalidArgument, match="lexical=False"):
            eng.search("text", first_stage="bm25")
        assert eng.search("text").hits[0].id == "a"  # dense still works
    with Collection.open(tmp_path / "c") as again:
        assert again.lexical is None and again.recovery is None


# ---- engine: bm25 and hybrid first stages ---------------------------------------------------


def test_bm25_and_hybrid_first_stages(col: Collection) -> None:
    eng = Engine(col, config=EngineConfig(k=20))
    q = "how do I compress data with gzip"
    bm = eng.search(q, rerank=False, first_stage="bm25")
    keys, scores = col.lexical_search(q, 20)
    assert [h.id for h in bm.hits] == _ids(col, q, 20)
    assert [h.first_stage_score for h in bm.hits] == pytest.approx(scores.tolist())
    assert bm.first_stage == "bm25" and bm.timings.bm25 > 0 and bm.timings.ann == 0
    dense = eng.search(q, rerank=False, first_stage="dense")
    hy = eng.search(q, rerank=False, first_stage="hybrid")
    # Hybrid is the core's reciprocal-rank fusion of the two lists (each 20 deep).
    dkeys = col.store.keys_of([h.id for h in dense.hits])
    lists = [[dkeys[h.id] for h in dense.hits], keys.tolist()]
    fused, fscores = rrf(lists, k=20, c=60.0)
    by_key = {v: k for k, v in col.store.keys_of([h.id for h in hy.hits]).items()}
    assert [by_key[int(k)] for k in fused] == [h.id for h in hy.hits]
    assert [h.first_stage_score for h in hy.hits] == pytest.approx(fscores.tolist())
    assert hy.timings.ann > 0 and hy.timings.bm25 > 0
    with pytest.raises(InvalidArgument, match="first_stage must be one of"):
        eng.search(q, first_stage="sparse")
    with pytest.raises(InvalidArgument, match="first_stage"):
        EngineConfig(first_stage="tfidf")


def test_filters_apply_to_lexical_candidates(col: Collection) -> None:
    eng = Engine(col)
    resp = eng.search(
        "open a file", k=5, rerank=False, first_stage="bm25", filter={"kind": "topic"}
    )
    assert resp.hits and all((h.metadata or {}).get("kind") == "topic" for h in resp.hits)


def test_fusion_reads_the_dense_similarity_whatever_the_first_stage(col: Collection) -> None:
    """Linear fusion (logit + w * cosine, set in the config): for a lexical candidate the
    cosine comes from its stored embedding, so a document scores the same either way."""
    rr = Reranker.load("twostage-rerank", precision="int8")
    cfg = EngineConfig(budget_ms=60_000, fusion_weight=75.0, fusion_rule="linear")
    eng = Engine(col, reranker=rr, config=cfg)
    q = "read a gzip compressed file"
    by_stage = {
        fs: {h.id: h.score for h in eng.search(q, k=10, depth=10, first_stage=fs).hits}
        for fs in ("dense", "bm25")
    }
    common = set(by_stage["dense"]) & set(by_stage["bm25"])
    assert common, "the two first stages share no candidate"
    for doc in common:  # the logit is the same (row-wise); the cosine f16 index vs f32 store
        assert by_stage["bm25"][doc] == pytest.approx(by_stage["dense"][doc], abs=0.1)
