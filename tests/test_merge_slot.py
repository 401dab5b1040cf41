"""merge_topk / rrf / rerank_order against plain-Python oracles (hypothesis), and the Slot
under many reader threads and one swapper."""

from __future__ import annotations

import gc
import math
import threading
import weakref

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twostage import Slot, errors, merge_topk, rerank_order, rrf

scores = st.one_of(
    st.integers(-3, 3).map(lambda x: x / 2),  # ties on purpose
    st.floats(width=32, allow_nan=True, allow_infinity=True),
)
ranked = st.lists(st.tuples(st.integers(0, 30), scores), max_size=25)


def oracle_merge(lists, k, higher):
    def rank(entry):
        key, s = entry
        if math.isnan(s):
            return (1, 0.0, key)
        return (0, -s if higher else s, key)

    best: dict[int, float] = {}
    for lst in lists:
        for key, s in lst:
            if key not in best or rank((key, s)) < rank((key, best[key])):
                best[key] = s
    return sorted(best.items(), key=rank)[:k]


@settings(max_examples=300, deadline=None)
@given(st.lists(ranked, max_size=6), st.integers(0, 40), st.booleans())
def test_merge_topk_matches_oracle(lists, k, higher) -> None:
    arg = [([key for key, _ in lst], [s for _, s in lst]) for lst in lists]
    keys, got = merge_topk(arg, k, higher_is_better=higher)
    want = oracle_merge(
        [[(key, float(np.float32(s))) for key, s in lst] for lst in lists], k, higher
    )
    assert keys.tolist() == [key for key, _ in want]
    np.testing.assert_array_equal(got, np.array([s for _, s in want], dtype=np.float32))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(0, 25), max_size=20), max_size=5), st.integers(0, 30))
def test_rrf_matches_oracle(lists, k) -> None:
    fused: dict[int, float] = {}
    for lst in lists:
        seen: set[int] = set()
        for rank, key in enumerate(lst, start=1):
            if key not in seen:
                seen.add(key)
                fused[key] = fused.get(key, 0.0) + 1.0 / (60 + rank)
    want = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    keys, got = rrf(lists, k)
    assert keys.tolist() == [key for key, _ in want]
    np.testing.assert_allclose(got, [s for _, s in want], rtol=1e-6)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_rerank_order_matches_oracle(data) -> None:
    n = data.draw(st.integers(0, 40))
    candidates = data.draw(st.lists(st.integers(0, 10_000), min_size=n, max_size=n, unique=True))
    picked = data.draw(
        st.lists(st.sampled_from(candidates), unique=True) if candidates else st.just([])
    )
    scored = {key: data.draw(scores) for key in picked}
    order = rerank_order(candidates, scored).tolist()
    real = {key: float(np.float32(s)) for key, s in scored.items() if not math.isnan(s)}
    pos = {key: i for i, key in enumerate(candidates)}
    want = sorted(real, key=lambda key: (-real[key], pos[key])) + [
        key for key in candidates if key not in real
    ]
    assert [candidates[i] for i in order] == want


def test_rerank_order_refuses_mixed_up_inputs() -> None:
    with pytest.raises(errors.KeyNotFound, match="99"):
        rerank_order([1, 2, 3], {99: 1.0})
    with pytest.raises(errors.InvalidArgument, match="twice"):
        rerank_order([1, 1], {})
    with pytest.raises(errors.InvalidArgument, match="2 keys but 1"):
        merge_topk([([1, 2], [0.5])], 3)
    with pytest.raises(errors.InvalidArgument, match="c must"):
        rrf([[1]], 3, c=float("nan"))


class Model:
    """Carries its own version, so a torn (version, object) pair is detectable."""

    def __init__(self, version: int) -> None:
        self.version = version


def test_slot_many_readers_one_swapper() -> None:
    slot = Slot(Model(1))
    stop = threading.Event()
    problems: list[str] = []
    reads = [0] * 8

    def reader(i: int) -> None:
        last = 0
        while not stop.is_set():
            version, model = slot.get()
            if model.version != version:
                problems.append(f"torn read: slot version {version}, object {model.version}")
            if version < last:
                problems.append(f"version went back from {last} to {version}")
            last = version
            reads[i] += 1

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for v in range(2, 1001):
        assert slot.swap(Model(v)) == v
    stop.set()
    for t in threads:
        t.join()
    assert not problems, problems[:5]
    assert all(r > 0 for r in reads)
    assert slot.version == 1000


def test_slot_releases_old_object_after_last_reader() -> None:
    slot = Slot(Model(1))
    _, held = slot.get()
    ref = weakref.ref(held)
    slot.swap(Model(2))
    gc.collect()
    assert ref() is not None, "a reader still holds version 1"
    del held
    gc.collect()
    assert ref() is None, "version 1 should be freed once its last reader let go"
    assert slot.get()[1].version == 2


def test_slot_compare_and_swap() -> None:
    slot = Slot("a")
    assert slot.compare_and_swap(1, "b") == 2
    with pytest.raises(errors.VersionConflict, match=r"expected version 1.*holds version 2"):
        slot.compare_and_swap(1, "c")
    assert slot.get() == (2, "b")
