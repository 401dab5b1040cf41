"""DocStore and Collection: the store is the truth, the index is derived and recoverable.

Real encoder (MiniLM int8), real SQLite, real text (the Python documentation's own passages).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from twostage.collection import Collection
from twostage.document import Document
from twostage.encoder import Encoder
from twostage.errors import (
    CorruptStore,
    DimensionMismatch,
    EncoderMismatch,
    InvalidArgument,
    KeyNotFound,
)
from twostage.stdlib_docs import stdlib_docs
from twostage.store import DocStore


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder.load("minilm-l6")


@pytest.fixture(scope="module")
def passages() -> list[Document]:
    return list(stdlib_docs(120))


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, encoder: Encoder, passages: list[Document]
) -> Path:
    """Embedded once per module; each test gets its own copy of the folder."""
    path = tmp_path_factory.mktemp("template") / "col"
    with Collection.create(path, encoder) as c:
        c.add(passages)
    return path


@pytest.fixture()
def col(tmp_path: Path, encoder: Encoder, built: Path) -> Collection:
    shutil.copytree(built, tmp_path / "col")
    return Collection.open(tmp_path / "col", encoder)


def top_ids(c: Collection, query: str, k: int = 5) -> list[str]:
    res = c.index.search(c.embed_query(query), k)
    return [d.id for d in c.fetch(res.keys) if d is not None]


def test_add_get_search(col: Collection, passages: list[Document]) -> None:
    assert len(col) == len(passages) == len(col.index)
    got = col.get([passages[3].id, passages[0].id])
    assert got == [passages[3], passages[0]]
    # A passage's own text finds it first: the vectors were stored under the right keys.
    for d in passages[:10]:
        assert top_ids(col, d.content, 1) == [d.id]


def test_upsert_keeps_key_and_replaces_text_and_vector(
    col: Collection, passages: list[Document]
) -> None:
    target = passages[7]
    key = col.store.keys_of([target.id])[target.id]
    new = Document(target.id, "SQLite write-ahead logging lets readers run beside a writer.")
    res = col.add([new])
    assert (res.inserted, res.updated) == (0, 1)
    assert col.store.keys_of([target.id])[target.id] == key
    assert col.get([target.id]) == [new]
    assert top_ids(col, new.text, 1) == [target.id]
    assert len(col) == len(passages)


def test_duplicate_ids_in_one_batch_last_wins(col: Collection) -> None:
    a = Document("dup", "first version about threads")
    b = Document("dup", "second version about regular expressions")
    res = col.add([a, b])
    assert (res.inserted, res.updated) == (1, 1)
    assert col.get(["dup"]) == [b]


def test_delete(col: Collection, passages: list[Document]) -> None:
    victim = passages[2]
    assert col.delete([victim.id]) == 1
    assert victim.id not in col
    assert victim.id not in top_ids(col, victim.content, 10)
    with pytest.raises(KeyNotFound, match="unknown"):
        col.get([victim.id])
    # An unknown id fails the whole call and deletes nothing.
    with pytest.raises(KeyNotFound, match="nothing deleted"):
        col.delete([passages[4].id, "no-such-id"])
    assert passages[4].id in col
    assert col.delete([passages[4].id, "no-such-id"], missing_ok=True) == 1
    assert len(col) == len(col.index) == len(passages) - 2


def test_bad_input_changes_nothing(col: Collection, encoder: Encoder) -> None:
    before = (col.store.digest(), len(col.index), col.store.seq)
    docs = [Document("x1", "one"), Document("x2", "two")]
    with pytest.raises(DimensionMismatch):
        col.add_embedded(docs, np.ones((2, 10), np.float32))
    with pytest.raises(DimensionMismatch):
        col.add_embedded(docs, np.ones((3, encoder.dim), np.float32))
    nan = np.ones((2, encoder.dim), np.float32)
    nan[1, 5] = np.nan
    with pytest.raises(InvalidArgument, match=r"x2.*not finite"):
        col.add_embedded(docs, nan)
    with pytest.raises(InvalidArgument, match="zero embedding"):
        col.add_embedded(docs, np.zeros((2, encoder.dim), np.float32))
    with pytest.raises(InvalidArgument, match="not a single Document"):
        col.add(docs[0])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="text and title are both empty"):
        Document("e", "  ")
    assert (col.store.digest(), len(col.index), col.store.seq) == before


def test_reopen_after_close_replays_nothing(col: Collection, encoder: Encoder) -> None:
    path, before = col.path, top_ids(col, "open a file and read lines")
    col.close()
    again = Collection.open(path, encoder)
    assert again.recovery is None
    assert top_ids(again, "open a file and read lines") == before
    again.close()


def test_reopen_without_close_replays_changes(
    col: Collection, encoder: Encoder, passages: list[Document]
) -> None:
    col.flush()
    col.add([Document("late", "An entry added after the last snapshot, about zip archives.")])
    col.delete([passages[0].id])
    # No close: the process "dies" here (the kernel drops its writer lock); the store has
    # both changes, the snapshot has neither.
    assert col._lock is not None
    col._lock.release()
    again = Collection.open(col.path, encoder)
    assert again.recovery is not None
    assert "replayed 1 upserts and 1 deletes" in again.recovery
    assert "late" in again and passages[0].id not in again
    assert len(again.index) == len(again)
    assert top_ids(again, "An entry added after the last snapshot, about zip archives.", 1) == [
        "late"
    ]
    again.close()


@pytest.mark.parametrize("damage", ["missing", "garbage", "truncated", "flipped"])
def test_bad_index_file_is_rebuilt_from_stored_embeddings(
    col: Collection, encoder: Encoder, damage: str
) -> None:
    def vectors(c: Collection) -> dict[str, np.ndarray]:
        keys = c.store.keys_of(list(c.store.ids()))
        return {i: c.index.get(np.array([k], dtype=np.uint64))[0] for i, k in keys.items()}

    before = vectors(col)
    col.close()
    index = col.path / "index.tsidx"
    data = index.read_bytes()
    if damage == "missing":
        index.unlink()
    elif damage == "garbage":
        index.write_bytes(b"not an index at all" * 10)
    elif damage == "truncated":
        index.write_bytes(data[: len(data) // 2])
    else:
        flipped = bytearray(data)
        flipped[len(data) - 100] ^= 0x01
        index.write_bytes(bytes(flipped))
    again = Collection.open(col.path, encoder)
    assert again.recovery is not None
    assert "rebuilt from 120 stored embeddings" in again.recovery
    assert ("missing" in again.recovery) == (damage == "missing")
    # The same vectors under the same keys (the graph itself may differ: HNSW inserts in
    # parallel), and a passage's own text still finds it.
    after = vectors(again)
    assert after.keys() == before.keys()
    for i in before:
        np.testing.assert_array_equal(after[i], before[i], err_msg=i)
    for d in again.get(list(before)[:5]):
        assert top_ids(again, d.content, 1) == [d.id]
    again.close()
    # The rebuilt snapshot was written: the next open is clean.
    third = Collection.open(col.path, encoder)
    assert third.recovery is None
    third.close()


def test_other_encoder_is_refused(col: Collection, twostage_home: Path) -> None:
    col.close()
    fp32 = Encoder.load("minilm-l6", precision="fp32")
    with pytest.raises(EncoderMismatch, match=r"fingerprint.*not be comparable"):
        Collection.open(col.path, fp32)


def test_default_encoder_comes_from_the_manifest(col: Collection) -> None:
    col.close()
    again = Collection.open(col.path)
    assert again.encoder.fingerprint == col.encoder.fingerprint
    again.close()


def test_manifest(col: Collection) -> None:
    col.close()
    m = json.loads((col.path / "manifest.json").read_text())
    assert m["format"] == "twostage-collection" and m["version"] == 1
    assert m["encoder"]["name"] == "minilm-l6" and m["encoder"]["fingerprint"]
    assert (m["dim"], m["metric"], m["dtype"], m["shards"]) == (384, "cos", "f16", 1)
    assert m["rescore"] is False and m["connectivity"] == 16
    assert m["documents"] == 120 and m["seq"] == m["index"]["seq"] == 120


QUERIES = ["how do I sort a list", "open a file for reading", "regular expressions", "thread pool"]


def distance_error(c: Collection) -> float:
    """The largest gap between a search's distances and the cosine distances of the stored
    (f16) embeddings: what the index's own arithmetic adds."""
    worst = 0.0
    for q in QUERIES:
        v = c.embed_query(q).astype(np.float64)
        res = c.index.search(v.astype(np.float32), 10)
        keys, dist = np.asarray(res.keys).ravel(), np.asarray(res.distances).ravel()
        e = c.store.embeddings(keys).astype(np.float64)
        exact = 1 - (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (v / np.linalg.norm(v))
        worst = max(worst, float(np.abs(exact - dist).max()))
    return worst


def test_i8_with_f16_rescoring(tmp_path: Path, encoder: Encoder, passages: list[Document]) -> None:
    """An i8 collection that keeps f16 copies answers with the stored embeddings' exact
    distances, keeps that through a reopen and a read-only view, and says so in its manifest;
    a plain i8 collection's distances carry the quantisation error."""
    with Collection.create(tmp_path / "plain", encoder, dtype="i8") as c:
        c.add(passages)
        assert distance_error(c) > 1e-3
    with Collection.create(tmp_path / "r", encoder, dtype="i8", rescore=True, connectivity=12) as c:
        c.add(passages)
        assert c.index.rescore and distance_error(c) < 1e-4
    m = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert (m["dtype"], m["rescore"], m["connectivity"]) == ("i8", True, 12)
    for opts in ({}, {"read_only": True}, {"read_only": True, "view": True}):
        with Collection.open(tmp_path / "r", encoder, **opts) as again:
            assert again.index.rescore and again.info()["rescore"], opts
            assert again.index.read_only == opts.get("view", False), opts  # really mapped
            assert distance_error(again) < 1e-4, opts
    # Re-scoring corrects i8 only: refused before anything is written.
    with pytest.raises(InvalidArgument, match="rescore"):
        Collection.create(tmp_path / "f16", encoder, dtype="f16", rescore=True)
    assert not (tmp_path / "f16").exists()


def test_manifest_rescore_must_be_a_boolean(col: Collection) -> None:
    col.close()
    manifest = col.path / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "rescore": "yes"}))
    with pytest.raises(CorruptStore, match="rescore must be true or false, not 'yes'"):
        Collection.open(col.path)


def test_corrupt_manifest_and_store_are_named(col: Collection, tmp_path: Path) -> None:
    col.close()
    manifest = col.path / "manifest.json"
    good = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(CorruptStore, match="unreadable manifest"):
        Collection.open(col.path)
    manifest.write_text(json.dumps({**json.loads(good), "version": 99}))
    with pytest.raises(CorruptStore, match="format version 99"):
        Collection.open(col.path)
    manifest.write_text(good)
    (col.path / "store.sqlite").write_bytes(b"this is not a database" * 100)
    for extra in ("store.sqlite-wal", "store.sqlite-shm"):
        (col.path / extra).unlink(missing_ok=True)
    with pytest.raises(CorruptStore, match="not a twostage document store"):
        Collection.open(col.path)
    with pytest.raises(FileNotFoundError, match=r"no manifest\.json"):
        Collection.open(tmp_path / "nowhere")
    with pytest.raises(FileExistsError, match="already holds a collection"):
        Collection.create(col.path, col.encoder)


def test_store_changes_since_and_digest(tmp_path: Path) -> None:
    s = DocStore.create(tmp_path / "a.sqlite", dim=3)
    docs = [Document(f"d{i}", f"text {i}") for i in range(5)]
    vecs = np.arange(15, dtype=np.float32).reshape(5, 3) + 1
    s.upsert(docs, vecs)
    mark = s.seq
    s.upsert([Document("d1", "changed")], vecs[1:2] * 2)
    s.delete(["d3"])
    ch = list(s.changes_since(mark))
    assert [int(k) for c in ch for k in c.keys] == [2]
    np.testing.assert_array_equal(ch[-1].vectors, vecs[1:2] * 2)
    assert [int(k) for k in ch[-1].deleted] == [4]
    # The same documents written in another order give the same digest.
    t = DocStore.create(tmp_path / "b.sqlite", dim=3)
    rows = [0, 4, 2, 1]
    t.upsert(
        [docs[i] if i != 1 else Document("d1", "changed") for i in rows],
        np.stack([vecs[i] if i != 1 else vecs[1] * 2 for i in rows]),
    )
    assert s.digest() == t.digest()
    t.upsert([Document("d4", "text 4!")], vecs[4:5])
    assert s.digest() != t.digest()
    # The sqlite file is an ordinary database a user can inspect.
    con = sqlite3.connect(tmp_path / "a.sqlite")
    assert con.execute("SELECT COUNT(*) FROM docs").fetchone()[0] == 4
    con.close()
