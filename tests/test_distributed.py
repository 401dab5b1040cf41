"""Sharded collections on a real local Ray cluster (tests/conftest.py's ``ray_cluster``).

SciFact split into 3 shards answers what one collection answers (exact search on both),
through the engine's own second stage; a shard killed while queries run gives marked
partial answers, never an error, and comes back; writes land on the shard that owns each
id; an ingest killed with SIGKILL resumes to the same shards, bit for bit.
"""

from __future__ import annotations

import doctest
import gzip
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("ray", reason="Ray is not installed (the [ray] extra)")

from twostage.beir import Dataset
from twostage.collection import Collection
from twostage.config import EngineConfig
from twostage.distributed import ShardedCollection, ShardedEngine, ingest, layout, shard_of
from twostage.encoder import Encoder
from twostage.engine import Engine, dense_similarities
from twostage.errors import (
    CollectionLocked,
    InvalidArgument,
    KeyNotFound,
    ReadOnlyCollection,
    ShardUnavailable,
)
from twostage.lock import WriterLock
from twostage.reranker import Reranker
from twostage.sources import read_corpus

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SCIFACT = SHARED / "data" / "scifact"
NO_CPU = {"num_cpus": 0}  # the test cluster has 2 CPUs; shards need none reserved


@pytest.fixture(scope="module")
def queries() -> list[str]:
    if not (SCIFACT / "qrels" / "test.tsv").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT}")
    return list(Dataset.load(SCIFACT).queries.values())


@pytest.fixture(scope="module")
def single(scifact_collection: Path) -> Iterator[Collection]:
    with Collection.open(scifact_collection, read_only=True) as col:
        yield col


@pytest.fixture(scope="module")
def sharded(
    scifact_collection: Path, ray_cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ShardedCollection]:
    out = tmp_path_factory.mktemp("sharded") / "scifact-3"
    sc = ShardedCollection.from_collection(scifact_collection, out, 3, actor_options=NO_CPU)
    yield sc
    sc.close()


#: The dense list by brute force, in one collection and in every shard alike.
EXACT = EngineConfig(exact_search=True)


def test_split_copies_every_document_to_its_shard(
    single: Collection, sharded: ShardedCollection
) -> None:
    m = json.loads((sharded.path / layout.LAYOUT).read_text())
    assert (m["shards"], m["hash"], m["shard_dirs"]) == (
        3,
        layout.HASH_RULE,
        ["shard-000", "shard-001", "shard-002"],
    )
    assert m["encoder"]["fingerprint"] == single.manifest["encoder"]["fingerprint"]
    infos = sharded.info()
    assert sum(i["documents"] for i in infos) == len(single) == len(sharded) == 5183
    assert all(1500 < i["documents"] < 1950 for i in infos), [i["documents"] for i in infos]
    # Every shard is a normal collection: sound by its own check, holding only its own ids,
    # each with the source's vector bit for bit.
    assert sharded.check() == {0: [], 1: [], 2: []}
    ids = list(single.store.ids())[::97]
    for s, folder in enumerate(sharded.layout.shard_paths):
        with Collection.open(folder, read_only=True) as shard:
            mine = [i for i in ids if shard_of(i, 3) == s]
            assert mine and all(i in shard for i in mine)
            assert not any(i in shard for i in ids if shard_of(i, 3) != s)
            keys = shard.store.keys_of(mine)
            src = single.store.keys_of(mine)
            np.testing.assert_array_equal(
                shard.store.embeddings([keys[i] for i in mine]),
                single.store.embeddings([src[i] for i in mine]),
            )


def test_three_shards_find_the_exact_top_10_one_collection_finds(
    single: Collection, sharded: ShardedCollection, queries: list[str]
) -> None:
    one = Engine(single, reranker=None, config=EXACT)
    three = ShardedEngine(sharded, reranker=None, config=EXACT, shard_timeout_ms=30_000)
    all_keys = np.fromiter(single.store.keys(), dtype=np.uint64)
    for q in queries[:40]:
        a = one.search(q, k=10, first_stage="dense", rerank=False)
        # Exact search is a scan of every stored vector.
        truth = single.index.search_exact(single.embed_query(q), all_keys, k=10)
        assert [h.id for h in a.hits] == [d.id for d in single.fetch(truth.keys) if d], q
        b = three.search(q, k=10, first_stage="dense", rerank=False)
        assert [(h.id, h.first_stage_score) for h in b.hits] == [
            (h.id, h.first_stage_score) for h in a.hits
        ], q
        assert (b.shards_answered, b.shards_total, b.degraded) == (3, 3, False)
        assert a.shards_total is None  # one collection: no shards to count


def test_the_second_stage_is_the_engines_own(
    single: Collection, sharded: ShardedCollection, queries: list[str]
) -> None:
    """The reranker over the sharded candidates: the same scores and order as one process."""
    rr = Reranker.load("twostage-rerank")
    cfg = EngineConfig(exact_search=True, fusion_weight=0.0, budget_ms=120_000)
    one = Engine(single, reranker=rr, config=cfg)
    three = ShardedEngine(sharded, reranker=rr, config=cfg, shard_timeout_ms=30_000)
    for q in queries[40:45]:
        a = one.search(q, k=10, depth=20, first_stage="dense")
        b = three.search(q, k=10, depth=20, first_stage="dense")
        assert not a.degraded and not b.degraded and b.scored == a.scored == 20
        assert [(h.id, h.score, h.reranked, h.first_stage_rank) for h in b.hits] == [
            (h.id, h.score, h.reranked, h.first_stage_rank) for h in a.hits
        ]
        assert b.reranker_version == rr.version


def test_hybrid_merges_global_lists_and_keeps_each_shards_bm25(
    sharded: ShardedCollection, queries: list[str]
) -> None:
    """The candidates' signals under router keys: each BM25 score is the owning shard's own,
    each similarity the stored embedding's, and the hybrid list is the RRF of the merged
    dense and BM25 lists (checked against the shards searched one by one)."""
    enc = Encoder.load("minilm-l6")
    shards = [Collection.open(p, read_only=True) for p in sharded.layout.shard_paths]
    try:
        for q in queries[45:50]:
            vec = enc.encode([q], kind="query")[0]
            got = sharded.first_stage(
                "hybrid", q, vec, 50, None, metric="cos", tokens=False, need_sim=True,
                need_bm25=True, timeout_s=30.0, exact=True,
            )  # fmt: skip
            assert (got.parts_answered, got.parts_total, got.missing) == (3, 3, None)
            assert got.bm25 is not None and got.sims is not None
            lex = [dict(zip(*(a.tolist() for a in s.lexical_search(q, 50)), strict=True))
                   for s in shards]  # fmt: skip
            bm25 = {k * 3 + s: v for s, d in enumerate(lex) for k, v in d.items()}
            top = sorted(bm25, key=lambda k: (-bm25[k], k))[:50]
            assert got.bm25 == {k: bm25[k] for k in top}
            for d, sim in zip(got.docs, got.sims, strict=True):
                s, key = d.key % 3, d.key // 3
                assert shards[s].fetch([key])[0].id == d.id  # type: ignore[union-attr]
                emb = shards[s].store.embeddings([key])
                # Equal up to float32 rounding: a one-row product sums in another order.
                assert sim == pytest.approx(dense_similarities("cos", emb, vec)[0], rel=1e-6)
    finally:
        for s in shards:
            s.close()


@pytest.fixture(scope="module")
def replicas(sharded: ShardedCollection) -> Iterator[ShardedCollection]:
    """Search replicas of the same shards (read-only, indexes memory-mapped): the ones the
    kill drills end."""
    sc = ShardedCollection.open(sharded.path, read_only=True, actor_options=NO_CPU)
    yield sc
    sc.close()


def _exact_without(single: Collection, q: str, shard: int) -> list[str]:
    """The exact top 10 among the documents of every shard but ``shard``."""
    one = Engine(single, reranker=None, config=EXACT)
    hits = one.search(q, k=100, first_stage="dense", rerank=False).hits
    return [h.id for h in hits if shard_of(h.id, 3) != shard][:10]


def test_a_shard_killed_while_queries_run_gives_marked_partial_answers(
    ray_cluster: Any, single: Collection, replicas: ShardedCollection, queries: list[str]
) -> None:
    engine = ShardedEngine(replicas, reranker=None, config=EXACT, shard_timeout_ms=500)
    full = engine.search(queries[0], k=10, first_stage="dense", rerank=False)
    assert full.shards_answered == 3 and not full.degraded
    ray_cluster.kill(replicas.actors[1], no_restart=False)  # max_restarts: it comes back
    partial = full_again = None
    deadline = time.monotonic() + 180
    i = 0
    while full_again is None:
        assert time.monotonic() < deadline, "the killed shard never came back"
        q = queries[i % 20]
        i += 1
        resp = engine.search(q, k=10, first_stage="dense", rerank=False)  # never raises
        assert resp.shards_total == 3
        if resp.shards_answered == 2:
            assert resp.degraded and resp.degraded_reason is not None
            assert resp.degraded_reason.startswith("shards: 2 of 3 answered (shard 1 ")
            assert [h.id for h in resp.hits] == _exact_without(single, q, 1)
            partial = resp
        elif partial is not None:  # back after the restart: whole again
            assert resp.shards_answered == 3 and not resp.degraded
            full_again = resp
    assert partial is not None and full_again is not None
    assert replicas.ping(timeout_s=30) == [True, True, True]


def test_a_dead_shard_never_fails_a_search_and_is_named_by_writes(
    ray_cluster: Any, single: Collection, sharded: ShardedCollection, queries: list[str]
) -> None:
    # A set of its own (the others serve the later tests), ended for good after the kill.
    dead = ShardedCollection.open(sharded.path, read_only=True, actor_options=NO_CPU)
    try:
        ray_cluster.kill(dead.actors[2], no_restart=True)
        deadline = time.monotonic() + 30
        while dead.ping(timeout_s=5)[2]:  # until the kill has landed
            assert time.monotonic() < deadline, "the killed shard still answers"
            time.sleep(0.1)
        engine = ShardedEngine(dead, reranker=None, config=EXACT, shard_timeout_ms=5_000)
        for q in queries[:3]:
            resp = engine.search(q, k=10, first_stage="dense", rerank=False)
            assert (resp.shards_answered, resp.degraded) == (2, True)
            assert "shard 2 is unavailable" in str(resp.degraded_reason)
            assert [h.id for h in resp.hits] == _exact_without(single, q, 2)
        assert dead.ping(timeout_s=5) == [True, True, False]
        with pytest.raises(ShardUnavailable, match="shard 2"):
            len(dead)
        owned = next(i for i in single.store.ids() if shard_of(i, 3) == 2)
        with pytest.raises(ShardUnavailable, match="shard 2"):
            dead.get([owned])
        with pytest.raises(ReadOnlyCollection):
            dead.add([{"id": "x", "text": "replicas take no writes"}])
    finally:
        dead.close()


def test_writes_land_on_the_shard_that_owns_each_id(
    ray_cluster: Any, sharded: ShardedCollection, replicas: ShardedCollection
) -> None:
    topics = [
        "zebrafish fin regrowth after amputation",
        "lithium-ion battery cathode degradation",
        "medieval monastic bookbinding techniques",
        "volcanic ash and jet engine failure",
        "sourdough starter yeast and bacteria balance",
        "orbital decay of low earth satellites",
        "honeybee waggle dance navigation",
        "glacier calving and sea level rise",
        "violin varnish chemistry in Cremona",
    ]
    docs = [{"id": f"routed-{i}", "text": f"A note on {t}."} for i, t in enumerate(topics)]
    owners = {d["id"]: shard_of(d["id"], 3) for d in docs}
    assert set(owners.values()) == {0, 1, 2}  # the ids reach every shard
    before = [i["documents"] for i in sharded.info()]
    res = sharded.add(docs)
    assert (res.inserted, res.updated) == (9, 0) and set(res.seqs) == {0, 1, 2}
    after = [i["documents"] for i in sharded.info()]
    for s in range(3):
        assert after[s] - before[s] == sum(1 for o in owners.values() if o == s)
    for d in docs:
        assert d["id"] in sharded
        with Collection.open(sharded.layout.shard_paths[owners[d["id"]]], read_only=True) as c:
            assert d["id"] in c
    assert [d.id for d in sharded.get(["routed-3", "routed-0"])] == ["routed-3", "routed-0"]
    # Found by search right away; the replicas follow the writers within a refresh period.
    engine = ShardedEngine(sharded, reranker=None, shard_timeout_ms=30_000)
    assert engine.search(docs[4]["text"], k=1, first_stage="dense").hits[0].id == "routed-4"
    follower = ShardedEngine(replicas, reranker=None, shard_timeout_ms=30_000)
    deadline = time.monotonic() + 30
    while follower.search(docs[5]["text"], k=1, first_stage="dense").hits[0].id != "routed-5":
        assert time.monotonic() < deadline, "the replicas did not follow the write"
        time.sleep(0.2)
    # An upsert is an update where the id lives; an unknown id deletes nothing.
    assert sharded.add([{"id": "routed-1", "text": "Rewritten."}]).updated == 1
    with pytest.raises(KeyNotFound):
        sharded.delete(["routed-2", "no-such-id"])
    assert "routed-2" in sharded
    assert sharded.delete([d["id"] for d in docs]) == 9
    assert [i["documents"] for i in sharded.info()] == before
    # A write sent past the router to the wrong shard is refused by the shard.
    wrong = (owners["routed-0"] + 1) % 3
    with pytest.raises(InvalidArgument, match="belongs to shard"):
        ray_cluster.get(sharded.actors[wrong].add.remote([_doc("routed-0")]))


def _doc(doc_id: str) -> Any:
    from twostage.document import Document

    return Document(doc_id, "text")


# ---- ingest --------------------------------------------------------------------------------


def _wait_until_unlocked(folder: Path, deadline: float) -> None:
    """Wait until no process holds ``folder``'s writer lock (its writer has stopped)."""
    while True:
        try:
            WriterLock.acquire(folder).release()
            return
        except CollectionLocked:
            assert time.monotonic() < deadline, f"{folder} is still locked"
            time.sleep(0.05)


def _chunk_of(store: Path) -> int:
    """The last chunk a shard committed (-1: none yet), read as another process would."""
    try:
        con = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=1)
        try:
            row = con.execute("SELECT value FROM meta WHERE name='ingest.chunk'").fetchone()
        finally:
            con.close()
    except sqlite3.Error:
        return -1
    return int(row[0]) if row else -1


def _shard_state(folder: Path) -> tuple[str, dict[str, int], dict[str, np.ndarray], list[Any]]:
    """Documents and vectors (the store's digest), ids -> keys, the index's vectors, and
    exact answers for a few probe vectors. Each HNSW answer is checked here to hold only
    stored keys at their exact distances; the graph itself is not compared: a resumed
    shard's index may be repaired from the store in other batches than the whole build
    inserted, so its links (and which approximate neighbours a walk reaches) can differ."""
    with Collection.open(folder, read_only=True) as col:
        ids = list(col.store.ids())
        keys = col.store.keys_of(ids)
        vectors = {i: col.index.get(np.array([keys[i]], dtype=np.uint64))[0] for i in ids}
        probes = col.store.embeddings([keys[i] for i in ids[:5]])
        all_keys = np.fromiter(col.store.keys(), dtype=np.uint64)
        answers = []
        for p in probes:
            walk = col.index.search(p, k=10)
            exact = col.index.search_exact(p, walk.keys, k=10)  # the same keys, scanned
            assert walk.to_list() == exact.to_list()
            answers.append(col.index.search_exact(p, all_keys, k=10).to_list())
        return col.store.digest(), keys, vectors, answers


#: The ingest's corpus: SciFact's first abstracts, 11 chunks of 16 lines with the bad line.
DOCS = 175


def test_a_killed_ingest_resumes_to_the_same_shards(ray_cluster: Any, tmp_path: Path) -> None:
    if not (SCIFACT / "corpus.jsonl.gz").is_file():
        pytest.skip(f"SciFact not found at {SCIFACT}")
    with gzip.open(SCIFACT / "corpus.jsonl.gz", "rt") as f:
        lines = [next(f) for _ in range(DOCS)]
    lines.insert(100, "not json\n")  # a malformed line: reported, skipped, counted once
    corpus = tmp_path / "corpus.jsonl.gz"
    corpus.write_bytes(gzip.compress("".join(lines).encode(), mtime=0))
    opts: dict[str, Any] = {"chunk_size": 16, "max_length": 128, "progress": False}

    whole = ingest(corpus, tmp_path / "whole", 3, **opts)
    assert (whole.documents, whole.errors, whole.lines) == (DOCS, 1, DOCS + 1)
    assert sum(whole.per_shard) == DOCS

    out = tmp_path / "killed"
    address = ray_cluster.get_runtime_context().gcs_address
    script = (
        "import ray, sys\n"
        f"ray.init(address={address!r}, log_to_driver=False)\n"
        "from twostage.distributed import ingest\n"
        f"ingest({str(corpus)!r}, {str(out)!r}, 3, chunk_size=16, max_length=128, "
        "progress=False)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script], env={**os.environ})
    stores = [out / layout.shard_dir(s) / "store.sqlite" for s in range(3)]
    deadline = time.monotonic() + 300
    while min(_chunk_of(s) for s in stores) < 4:  # five chunks (80 lines) in every shard
        assert proc.poll() is None, "the ingest finished (or failed) before it could be killed"
        assert time.monotonic() < deadline, "the ingest made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # The shard writers are Ray actors of the killed driver: they may commit a chunk already
    # sent to them until Ray stops them (a CI run read 4 here, then resumed after 5). What
    # was committed is settled once each has let go of its shard's writer lock.
    for s in range(3):
        _wait_until_unlocked(out / layout.shard_dir(s), deadline)
    committed = [_chunk_of(s) for s in stores]
    assert min(committed) >= 4 and max(committed) < (DOCS + 1) // 16, committed
    with pytest.raises(FileNotFoundError, match="interrupted"):
        ShardedCollection.open(out)

    resumed = ingest(corpus, out, 3, **opts)
    assert resumed.resumed_from == 16 * (min(committed) + 1)
    assert resumed.embedded == DOCS - resumed.resumed_from + (resumed.resumed_from > 100)
    assert (resumed.documents, resumed.errors, resumed.per_shard) == (
        whole.documents,
        whole.errors,
        whole.per_shard,
    )
    for s in range(3):
        a = _shard_state(tmp_path / "whole" / layout.shard_dir(s))
        b = _shard_state(out / layout.shard_dir(s))
        assert a[0] == b[0], f"shard {s}: documents or vectors differ"
        assert a[1] == b[1], f"shard {s}: keys differ"
        assert a[2].keys() == b[2].keys()
        for i in a[2]:
            np.testing.assert_array_equal(a[2][i], b[2][i], err_msg=i)
        assert a[3] == b[3], f"shard {s}: exact answers differ"
    assert ingest(corpus, out, 3, **opts).already_complete


def test_a_new_sharded_collection_starts_empty_and_reopens(
    ray_cluster: Any, tmp_path: Path
) -> None:
    sc = ShardedCollection.create(
        tmp_path / "new",
        Encoder.load("minilm-l6"),
        2,
        collection_options={"lexical": False},
        actor_options=NO_CPU,
    )
    try:
        assert len(sc) == 0 and sc.check() == {0: [], 1: []}
        texts = ["graph index search", "inverted index bm25", "cross-encoder reranking"]
        sc.add([{"id": f"d{i}", "text": t} for i, t in enumerate(texts)])
        engine = ShardedEngine(sc, reranker=None)
        assert engine.defaults.first_stage == "dense"  # no BM25 here: the default follows
        assert engine.search("rerank with a cross-encoder", k=1).hits[0].id == "d2"
        with pytest.raises(InvalidArgument, match="needs a lexical index"):
            engine.search("bm25", first_stage="bm25")
    finally:
        sc.close()
    with ShardedCollection.open(tmp_path / "new", actor_options=NO_CPU) as again:
        assert len(again) == 3


def test_read_corpus_from_a_later_line_is_the_tail_of_the_whole(tmp_path: Path) -> None:
    """What each ingest read span reads: from its first line on, the same records."""
    rows = [json.dumps({"_id": f"d{i}", "text": f"passage {i}"}) for i in range(40)]
    rows[7] = "{broken"
    jsonl = tmp_path / "c.jsonl.gz"
    jsonl.write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    text = tmp_path / "c.txt"
    text.write_text("\n".join(f"line {i}" if i % 5 else "" for i in range(40)) + "\n")
    csv = tmp_path / "c.csv"
    csv.write_text("id,text\n" + "".join(f'd{i},"row\n{i}"\n' for i in range(20)))
    for path in (jsonl, text, csv):
        whole = list(read_corpus(path))
        for first in (1, 2, 8, 23, 41):
            assert list(read_corpus(path, first_line=first)) == [
                r for r in whole if r.line >= first
            ], (path.name, first)
    with pytest.raises(InvalidArgument, match="first_line"):
        read_corpus(text, first_line=0)


def test_layout_doctests() -> None:
    assert doctest.testmod(layout).failed == 0
