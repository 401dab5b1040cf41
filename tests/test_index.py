"""The HNSW index through its Python API: recall against brute force, upserts, errors that
leave the index untouched, files (save/load/view, damaged files), threads."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import twostage
from twostage import Index, default_ef, errors
from twostage.synthetic import clustered_vectors, queries

MISSING = 2**64 - 1


def brute_force(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k keys (rows of `base` are L2-normalised by the generator)."""
    sims = queries @ base.T
    top = np.argpartition(-sims, k, axis=1)[:, :k]
    order = np.take_along_axis(-sims, top, axis=1).argsort(axis=1)
    return np.take_along_axis(top, order, axis=1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    pairs = zip(found, truth, strict=True)
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in pairs]))


@pytest.fixture(scope="module")
def data50k() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base = clustered_vectors(50_000, 64, seed=1)
    qs = queries(200, 64, seed=1)
    return base, qs, brute_force(base, qs, 10)


# Recall@10 at the default ef (which follows the size: default_ef(50_000, 10)) on 50k
# clustered vectors, against numpy brute force.
# f32/f16 must reach the 0.95. i8 is capped by quantisation (the issue measured
# recall@100 ~0.92 at 1M with PyPI usearch); its floor is 0.85 here, and rescoring with the
# f16 copies must bring it back to the f32 bar.
@pytest.mark.parametrize(
    ("dtype", "rescore", "floor"),
    [("f32", False, 0.95), ("f16", False, 0.95), ("i8", False, 0.85), ("i8", True, 0.95)],
)
def test_recall_at_default_ef(data50k, dtype: str, rescore: bool, floor: float) -> None:
    base, qs, truth = data50k
    index = Index(64, dtype=dtype, rescore=rescore)
    index.add(np.arange(len(base), dtype=np.uint64), base)
    got = recall(index.search(qs, 10).keys, truth)
    print(f"recall@10 {dtype} rescore={rescore}: {got:.4f}")
    assert got >= floor


def test_shards_match_single_graph_recall(data50k) -> None:
    base, qs, truth = data50k
    index = Index(64, shards=4)
    index.add(np.arange(len(base)), base)
    result = index.search(qs, 10)
    assert recall(result.keys, truth) >= 0.95
    # One query alone takes the shard-parallel path; it must agree with the batch path.
    single = index.search(qs[0], 10)
    assert single.keys.tolist() == result.keys[0].tolist()


def test_single_query_shapes_and_padding() -> None:
    index = Index(3)
    index.add([5, 6], np.eye(3, dtype=np.float32)[:2])
    one = index.search(np.array([1, 0, 0], np.float32), k=4)
    assert one.keys.shape == (4,) and one.distances.dtype == np.float32
    assert one.keys.tolist() == [5, 6, MISSING, MISSING]
    assert np.isinf(one.distances[2:]).all()
    assert one.counts.tolist() == [2]
    assert one.to_list() == [(5, pytest.approx(0.0, abs=1e-6)), (6, pytest.approx(1.0))]
    batch = index.search(np.eye(3, dtype=np.float32), k=1)
    assert batch.keys.shape == (3, 1) and batch.keys.dtype == np.uint64


def test_upsert_replaces_and_get_returns_vectors() -> None:
    index = Index(4)
    v = np.eye(4, dtype=np.float32)
    index.add([1, 2, 3], v[:3])
    index.add([2], v[3:4])  # upsert: key 2 now points along axis 3
    assert len(index) == 3
    np.testing.assert_allclose(index.get(2), v[3], atol=1e-6)
    np.testing.assert_allclose(index.get([1, 3]), v[[0, 2]], atol=1e-6)
    assert index.search(v[3], k=1).keys[0] == 2
    assert 2 in index and 99 not in index and "x" not in index


def test_remove_unknown_key_removes_nothing() -> None:
    index = Index(4)
    index.add([1, 2], np.eye(4, dtype=np.float32)[:2])
    with pytest.raises(errors.KeyNotFound, match="7"):
        index.remove([1, 7])
    assert 1 in index and len(index) == 2
    assert index.remove([1, 7], missing_ok=True) == 1
    assert 1 not in index and len(index) == 1


def test_input_conversions_without_surprises() -> None:
    index = Index(4)
    # float64 and lists are converted; int64 keys accepted.
    index.add(np.array([1, 2], dtype=np.int64), [[1.0, 0, 0, 0], [0, 1.0, 0, 0]])
    # A non-contiguous float32 query is converted once, with the same answer.
    q = np.asfortranarray(np.array([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=np.float32))
    assert index.search(q, 1).keys[:, 0].tolist() == [1, 2]


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda ix: ix.add([9], np.ones((1, 5), np.float32)), errors.DimensionMismatch, "dim=4"),
        (lambda ix: ix.add([9], np.ones(4, np.float32)), errors.InvalidVector, "2-D"),
        (
            lambda ix: ix.add([9, 10], np.array([[1, 0, 0, 0], [np.nan, 0, 0, 0]], np.float32)),
            errors.InvalidVector,
            "row 1 column 0 is NaN",
        ),
        (
            lambda ix: ix.add([9], np.array([[np.inf, 0, 0, 0]], np.float32)),
            errors.InvalidVector,
            "inf",
        ),
        (lambda ix: ix.add([9], np.zeros((1, 4), np.float32)), errors.InvalidVector, "all zeros"),
        (lambda ix: ix.add([9, 9], np.ones((2, 4), np.float32)), errors.DuplicateKey, "9"),
        (
            lambda ix: ix.add([9, 10, 11], np.ones((2, 4), np.float32)),
            errors.InvalidVector,
            "3 keys",
        ),
        (lambda ix: ix.add([-1], np.ones((1, 4), np.float32)), errors.InvalidArgument, "non-neg"),
        (
            lambda ix: ix.add([MISSING], np.ones((1, 4), np.float32)),
            errors.InvalidArgument,
            "reserved",
        ),
        (lambda ix: ix.add(["a"], np.ones((1, 4), np.float32)), errors.InvalidArgument, "integers"),
        (lambda ix: ix.search(np.ones(4, np.float32), k=0), errors.InvalidArgument, "k must"),
        (lambda ix: ix.search(np.ones(4, np.float32), k=-3), errors.InvalidArgument, "k must"),
        (lambda ix: ix.search(np.ones(4, np.float32), ef=0), errors.InvalidArgument, "ef must"),
        (
            lambda ix: ix.search(np.ones((300, 4), np.float32), k=1_000_000),
            errors.InvalidArgument,
            "split the batch",
        ),
        (lambda ix: ix.search(np.ones(3, np.float32)), errors.DimensionMismatch, "dim=4"),
        (lambda ix: ix.search(np.ones((1, 1, 4), np.float32)), errors.InvalidVector, "3-D"),
        (lambda ix: ix.search(np.full(4, np.nan, np.float32)), errors.InvalidVector, "NaN"),
        (lambda ix: ix.get([1, 42]), errors.KeyNotFound, "42"),
    ],
)
def test_bad_input_raises_specific_error_and_changes_nothing(call, exc, match) -> None:
    index = Index(4)
    base = np.eye(4, dtype=np.float32)
    index.add([1, 2, 3, 4], base)
    before = index.search(base, k=4)
    with pytest.raises(exc, match=match):
        call(index)
    assert len(index) == 4 and 9 not in index and 10 not in index
    after = index.search(base, k=4)
    assert after.keys.tolist() == before.keys.tolist()
    np.testing.assert_array_equal(after.distances, before.distances)


def test_errors_are_also_builtin_types() -> None:
    assert issubclass(errors.DimensionMismatch, ValueError)
    assert issubclass(errors.CorruptIndex, OSError)
    assert issubclass(errors.KeyNotFound, KeyError)
    with pytest.raises(ValueError):
        Index(4, metric="hamming")
    with pytest.raises(ValueError, match="rescore"):
        Index(4, dtype="f32", rescore=True)
    with pytest.raises(ValueError, match="threads"):
        Index(4, threads=0)


@pytest.mark.parametrize(("shards", "dtype", "rescore"), [(1, "f32", False), (3, "i8", True)])
def test_save_load_view_identical_results(tmp_path: Path, shards, dtype, rescore) -> None:
    base = clustered_vectors(3000, 32, seed=5)
    qs = queries(50, 32, seed=5)
    index = Index(32, dtype=dtype, shards=shards, rescore=rescore)
    index.add(np.arange(3000), base)
    index.remove([0, 1, 2])  # tombstones must survive the round trip too
    path = tmp_path / "ix.tsidx"
    index.save(path)
    want = index.search(qs, 20)
    header = Index.read_header(path)
    assert header["format_version"] == 1
    assert (header["dim"], header["metric"], header["dtype"], header["count"]) == (
        32,
        "cos",
        dtype,
        2997,
    )
    assert header["shards"] == shards and header["size_bytes"] == path.stat().st_size
    for opened in (Index.load(path), Index.view(path)):
        assert len(opened) == 2997 and 0 not in opened
        got = opened.search(qs, 20)
        np.testing.assert_array_equal(got.keys, want.keys)
        np.testing.assert_array_equal(got.distances, want.distances)
    view = Index.view(path)
    assert view.read_only
    with pytest.raises(errors.ReadOnlyIndex, match="read-only"):
        view.add([10_000], base[:1])
    with pytest.raises(errors.ReadOnlyIndex):
        view.remove([5])
    assert len(view) == 2997


def test_damaged_files_raise_corrupt_index_naming_the_file(tmp_path: Path) -> None:
    index = Index(8)
    index.add(np.arange(100), clustered_vectors(100, 8, seed=1))
    path = tmp_path / "ix.tsidx"
    index.save(path)
    good = path.read_bytes()
    cases = {
        "truncated": good[: len(good) - 100],
        "checksum": good[:300] + bytes([good[300] ^ 0xFF]) + good[301:],
        "not a twostage index": b"PK\x03\x04" + b"\0" * 200,
        "header checksum": good[:16] + b"\x09" + good[17:],
        "format version": good[:8] + (99).to_bytes(4, "little") + good[12:],
        "trailing": good + b"extra",
    }
    for reason, blob in cases.items():
        path.write_bytes(blob)
        for opener in (Index.load, Index.view):
            with pytest.raises(errors.CorruptIndex) as info:
                opener(path)
            assert str(path) in str(info.value) and reason in str(info.value), str(info.value)
    with pytest.raises(FileNotFoundError, match=r"missing\.tsidx"):
        Index.load(tmp_path / "missing.tsidx")


def test_save_is_atomic_and_replaces(tmp_path: Path) -> None:
    path = tmp_path / "ix.tsidx"
    a = Index(4)
    a.add([1], np.eye(4, dtype=np.float32)[:1])
    a.save(path)
    a.add([2], np.eye(4, dtype=np.float32)[1:2])
    a.save(path)
    assert len(Index.load(path)) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ix.tsidx"]


def test_search_while_other_threads_add_and_remove() -> None:
    dim = 32
    base = clustered_vectors(6000, dim, seed=3)
    index = Index(dim, threads=2)
    index.add(np.arange(2000), base[:2000])
    stable = set(range(1000))  # never touched by the writers
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            for start in range(2000, 6000, 250):
                keys = np.arange(start, start + 250)
                index.add(keys, base[start : start + 250])
                index.remove(keys[::2])
                index.add(np.arange(1000, 1100), base[start : start + 100])  # upserts
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)
        finally:
            stop.set()

    self_hits = [0, 0]  # [queries whose own key came first, queries]

    def reader() -> None:
        rng = np.random.default_rng()
        try:
            while not stop.is_set():
                picked = rng.integers(0, 1000, 8)
                result = index.search(base[picked], 5, ef=128)
                assert (result.counts == 5).all(), result.counts
                assert (result.keys != MISSING).all()
                assert all(len(set(row)) == 5 for row in result.keys.tolist()), "duplicate key"
                self_hits[0] += int((result.keys[:, 0] == picked).sum())
                self_hits[1] += len(picked)
                single = index.search(base[picked[0]], 3)
                assert single.counts[0] == 3 and MISSING not in single.keys
        except BaseException as e:  # pragma: no cover - reported below
            failures.append(e)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not failures, failures
    # While writers churn the graph (upserts reuse freed slots), a walk can transiently
    # miss: measured 93-100% self-hits per run here. After the writes, it must be exact.
    assert self_hits[1] > 0 and self_hits[0] >= 0.9 * self_hits[1], self_hits
    # After the writes: every untouched vector is intact, and the graph still finds them all.
    # (Before the vendored usearch formed a node's own links on every level before linking
    # others to it, parallel adds stranded a few: 1 to 4 of 100 runs of this churn found
    # under 99.5 %, one CI run 98.6 %. Since, 0 misses in 350 runs, 150 beside a CPU hog.)
    np.testing.assert_allclose(index.get(np.arange(1000)), base[:1000], atol=1e-6)
    after = index.search(base[:1000], 5, ef=128)
    missed = np.flatnonzero(after.keys[:, 0] != np.arange(1000))
    print(f"self-hits during churn {self_hits}, after: {1000 - len(missed)} of 1000")
    assert len(missed) == 0, f"untouched keys no longer found first: {missed.tolist()}"
    assert len(index) == 2000 + 16 * 125
    assert all(k in index for k in stable)


def test_a_parallel_build_leaves_no_vector_unreachable() -> None:
    """Adds on two threads must link every vector into the graph, as one thread does.

    A node's links used to be formed level by level, each followed by the links to it: a
    concurrent add could reach it on an upper level, meet its still-empty lower list, link
    only to it, and lose that link when the list was formed. That stranded a vector in 15 of
    20 such builds (connectivity 16, 4,000 vectors in batches of 200); none since.
    """
    n, dim = 4000, 32
    for seed in range(6):
        base = clustered_vectors(n, dim, seed=seed)
        index = Index(dim, threads=2)
        for start in range(0, n, 200):
            index.add(np.arange(start, start + 200), base[start : start + 200])
        first = index.search(base, 1, ef=256).keys[:, 0]
        stranded = np.flatnonzero(first != np.arange(n))
        assert len(stranded) == 0, f"seed {seed}: keys not found first {stranded.tolist()}"


def test_recall_holds_as_a_collection_is_updated() -> None:
    """Upserts reuse the slots of replaced vectors; the graph must not decay with them.

    Each round moves a random 30 % of 5,000 keys to new vectors (ten rounds: three full
    turnovers). Reusing a slot drops the node's old links; the vendored usearch re-links its
    old neighbours among themselves first. Without that, recall@10 fell by 0.031 on average
    over these three seeds; with it, by 0.012-0.014 (six runs beside a CPU hog).
    """
    n, dim, drops = 5000, 64, []
    for seed in range(3):
        pool = clustered_vectors(n * 4, dim, seed=seed)
        rng = np.random.default_rng(seed)
        vectors, unused = pool[:n].copy(), n
        index = Index(dim, threads=2)
        index.add(np.arange(n), vectors)
        qs = pool[rng.integers(0, len(pool), 300)]
        fresh = recall(index.search(qs, 10, ef=64).keys, brute_force(vectors, qs, 10))
        for _ in range(10):
            keys = rng.choice(n, n * 3 // 10, replace=False)
            vectors[keys] = pool[unused : unused + len(keys)]
            unused += len(keys)
            index.add(keys, vectors[keys])
        drops.append(fresh - recall(index.search(qs, 10, ef=64).keys, brute_force(vectors, qs, 10)))
    print(f"recall@10 drops after three turnovers: {drops}")
    assert float(np.mean(drops)) <= 0.02, drops


def test_search_releases_the_gil() -> None:
    """While one thread runs a long batch search, another Python thread keeps running."""
    base = clustered_vectors(20_000, 64, seed=9)
    index = Index(64, threads=1)
    index.add(np.arange(20_000), base)
    qs = queries(4000, 64, seed=9)
    ticks = 0
    done = threading.Event()

    def spin() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1

    t = threading.Thread(target=spin)
    t.start()
    try:
        before = ticks
        index.search(qs, 50, ef=256)
        during = ticks - before
    finally:
        done.set()
        t.join()
    assert during > 1000, f"the other thread advanced only {during} ticks during the search"


def test_default_ef_follows_the_size_and_a_set_ef_wins(tmp_path: Path) -> None:
    """The rule's mechanics (its recall is BENCHMARKS.md §2's business): without ef_search
    an index searches with default_ef(its size, k), which grows with both; a set ef_search,
    or an ef passed to the call, wins; both settings survive save/load/view."""
    sizes = [0, 10_000, 100_000, 1_000_000, 10_000_000]
    for k in (1, 10, 100):
        efs = [default_ef(n, k) for n in sizes]
        assert efs == sorted(efs) and efs[0] >= k, efs
        assert efs[-1] > efs[0], f"k={k}: the default does not follow the size ({efs})"
    assert default_ef(100_000, 10) <= default_ef(100_000, 100)
    base = clustered_vectors(2000, 16, seed=3)
    auto, fixed = Index(16), Index(16, ef_search=300)
    assert (auto.ef_search, fixed.ef_search) == (None, 300)
    for index in (auto, fixed):
        index.add(np.arange(2000), base)
    assert auto.search_ef(100) == default_ef(2000, 100)
    assert fixed.search_ef(100) == fixed.search_ef(1) == 300
    # A search that names no ef is the search at search_ef(k) (the walk is deterministic).
    qs = queries(50, 16, seed=3)
    for index in (auto, fixed):
        for k in (1, 10, 100):
            got, named = index.search(qs, k), index.search(qs, k, ef=index.search_ef(k))
            np.testing.assert_array_equal(got.keys, named.keys)
            np.testing.assert_array_equal(got.distances, named.distances)
    for index in (auto, fixed):
        index.save(tmp_path / "ix.tsidx")
        assert Index.read_header(tmp_path / "ix.tsidx")["ef_search"] == index.ef_search
        for opened in (Index.load(tmp_path / "ix.tsidx"), Index.view(tmp_path / "ix.tsidx")):
            assert opened.ef_search == index.ef_search
            assert opened.search_ef(100) == index.search_ef(100)
    with pytest.raises(errors.InvalidArgument, match="ef_search"):
        Index(16, ef_search=0)


def test_module_constants() -> None:
    assert twostage._core.MISSING_KEY == MISSING
    assert twostage._core.usearch_version.startswith("2.")
