"""The clustered-vector generator: shape, dtype, unit norm, determinism, independence."""

from __future__ import annotations

import numpy as np
import pytest
from twostage.synthetic import _BLOCK, clustered_vectors, queries


def test_shape_dtype_norm() -> None:
    x = clustered_vectors(500, 32, seed=1)
    assert x.shape == (500, 32)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert clustered_vectors(0, 8).shape == (0, 8)
    assert clustered_vectors(10, 8, dtype=np.float16).dtype == np.float16


def test_deterministic_across_calls() -> None:
    a = clustered_vectors(300, 48, seed=3)
    b = clustered_vectors(300, 48, seed=3)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, clustered_vectors(300, 48, seed=4))


def test_prefix_stable_across_blocks() -> None:
    # Blocks are seeded independently, so full blocks do not depend on n.
    long = clustered_vectors(_BLOCK + 17, 8, seed=5, n_clusters=10)
    short = clustered_vectors(_BLOCK, 8, seed=5, n_clusters=10)
    assert np.array_equal(long[:_BLOCK], short)


def test_queries_same_distribution_not_copies() -> None:
    base = clustered_vectors(2000, 64, seed=0)
    q = queries(100, 64, seed=0)
    assert q.shape == (100, 64)
    assert np.array_equal(q, queries(100, 64, seed=0))
    sims = q @ base.T
    assert sims.max() < 0.999  # never a copy of a base row
    # Same distribution: queries are as close to the base as base rows are to each other.
    own = base[:100] @ base[100:].T
    assert abs(np.sort(sims, axis=1)[:, -1].mean() - np.sort(own, axis=1)[:, -1].mean()) < 0.05


def test_clustered_not_uniform() -> None:
    # Nearest neighbours are much closer than random pairs: the data has structure.
    x = clustered_vectors(2000, 128, seed=2)
    s = x[:200] @ x[200:].T
    assert np.sort(s, axis=1)[:, -1].mean() > s.mean() + 0.3


def test_bad_params() -> None:
    with pytest.raises(ValueError):
        clustered_vectors(10, 8, n_clusters=0)
    with pytest.raises(ValueError):
        clustered_vectors(10, 8, subspace_dim=0)
    with pytest.raises(ValueError):
        clustered_vectors(-1, 8)
