"""Deterministic clustered vectors that look like sentence embeddings, for ANN benchmarks.

The model: ``n_clusters`` Gaussian clusters (uneven sizes, uneven spreads) live in a
``subspace_dim``-dimensional subspace; a fixed random orthonormal map lifts them to ``dim``;
isotropic noise over all ``dim`` coordinates is added; every row is L2-normalised.

Why this shape: real bi-encoder embeddings have a low intrinsic dimension (tens), are
clumped by topic, and are unit-norm; uniform random vectors are both unrealistic and
pathologically hard for graph indexes (all distances concentrate), while a few tight
clusters are trivially easy. ``noise`` is the noise norm relative to the signal norm;
``cluster_spread`` is a cluster's std relative to the spread of the centres (1.0: clusters
overlap heavily; 0.6: mostly separate, and HNSW is nearly exact).

Tuning (100k x 384, 1,000 queries, hnswlib M=16 efConstruction=128, cosine, recall@100
against exact; hnswlib searches with max(ef, k), so its ef 32 equals its ef 64):

    n_clusters, subspace_dim, noise, spread   ef=64  ef=128 ef=256 ef=512  top-1 cos
    1000, 48, 0.35, 0.6                       0.974  0.982  0.993  0.998  0.78  (easy)
    1000, 48, 0.35, 0.8  (chosen)             0.937  0.952  0.980  0.994  0.72
    1000, 32, 0.35, 1.0                       0.891  0.920  0.973  0.994  0.72
    1000, 64, 0.35, 1.0                       0.886  0.906  0.952  0.981  0.66

The subspace dimension and the cluster overlap set the difficulty (rows above). The
chosen point has top-1 cosine ~0.72
and 100th-neighbour cosine ~0.52, close to what MiniLM gives on real passage collections;
at 1M the same ef gives lower recall, so the 32..512 sweep spans the 0.95 target.

Determinism: the structure (centres, spreads, weights, projection) depends only on
``seed``; rows are drawn in fixed blocks of ``_BLOCK`` rows, each from its own
``SeedSequence(seed, spawn_key=(stream, block))``, so the output is identical across runs
and machines (NumPy's PCG64 and its normal sampler are stable) and does not depend on
how much memory is free. Base vectors use stream 1, queries stream 2: queries come from the
same distribution but are never copies of base vectors.

>>> import numpy as np
>>> from twostage.synthetic import clustered_vectors, queries
>>> base = clustered_vectors(1000, 64, seed=7)
>>> q = queries(10, 64, seed=7)
>>> base.shape, base.dtype, q.shape
((1000, 64), dtype('float32'), (10, 64))
>>> bool(np.allclose(np.linalg.norm(base, axis=1), 1.0, atol=1e-5))
True
>>> bool(np.array_equal(base, clustered_vectors(1000, 64, seed=7)))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULTS", "GeneratorParams", "clustered_vectors", "queries"]

# Rows per independently seeded block. Fixed (not a tuning knob): changing it changes the data.
_BLOCK = 16384


@dataclass(frozen=True)
class GeneratorParams:
    """The knobs of the generator; ``DEFAULTS`` holds the tuned values."""

    n_clusters: int = 1000
    subspace_dim: int = 48
    noise: float = 0.35
    cluster_spread: float = 0.8
    seed: int = 0


DEFAULTS = GeneratorParams()


@dataclass(frozen=True)
class _Structure:
    centres: np.ndarray  # (n_clusters, subspace_dim) float64
    spreads: np.ndarray  # (n_clusters,) per-cluster std in the subspace
    cdf: np.ndarray  # (n_clusters,) cumulative cluster weights
    basis: np.ndarray  # (subspace_dim, dim) orthonormal rows, float32


def _structure(
    dim: int, n_clusters: int, subspace_dim: int, spread: float, seed: int
) -> _Structure:
    if subspace_dim < 1:
        raise ValueError(f"subspace_dim must be >= 1, got {subspace_dim}")
    subspace_dim = min(subspace_dim, dim)  # so the defaults work for small test dims
    if n_clusters < 1:
        raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xC0FFEE,)))
    centres = rng.standard_normal((n_clusters, subspace_dim))
    # Uneven spreads and Zipf-like sizes: real topics differ in breadth and popularity.
    spreads = spread * rng.uniform(0.5, 1.5, n_clusters)
    weights = 1.0 / np.arange(1, n_clusters + 1) ** 0.5
    weights = weights[rng.permutation(n_clusters)]
    cdf = np.cumsum(weights / weights.sum())
    cdf[-1] = 1.0
    # Orthonormal rows via QR of a Gaussian matrix: a uniformly random subspace.
    q, r = np.linalg.qr(rng.standard_normal((dim, subspace_dim)))
    q *= np.sign(np.diag(r))  # make the factorisation unique, hence deterministic
    return _Structure(centres, spreads, cdf, np.ascontiguousarray(q.T, dtype=np.float32))


def _generate(
    n: int,
    dim: int,
    *,
    stream: int,
    n_clusters: int,
    subspace_dim: int,
    noise: float,
    cluster_spread: float,
    seed: int,
    dtype: npt.DTypeLike,
) -> np.ndarray:
    if n < 0 or dim < 1:
        raise ValueError(f"need n >= 0 and dim >= 1, got n={n}, dim={dim}")
    s = _structure(dim, n_clusters, subspace_dim, cluster_spread, seed)
    subspace_dim = s.basis.shape[0]
    out = np.empty((n, dim), dtype=dtype)
    # Signal coordinates have unit variance per subspace axis; scale so signal and noise norms
    # compare as 1 : noise regardless of dim and subspace_dim.
    sig_scale = np.float32(1.0 / np.sqrt(subspace_dim))
    noise_scale = np.float32(noise / np.sqrt(dim))
    for b, start in enumerate(range(0, n, _BLOCK)):
        m = min(_BLOCK, n - start)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, b)))
        cid = np.searchsorted(s.cdf, rng.random(m), side="right").clip(max=n_clusters - 1)
        z = rng.standard_normal((m, subspace_dim)) * s.spreads[cid, None] + s.centres[cid]
        x = (z.astype(np.float32) * sig_scale) @ s.basis
        x += rng.standard_normal((m, dim), dtype=np.float32) * noise_scale
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[start : start + m] = x
    return out


def clustered_vectors(
    n: int,
    dim: int,
    *,
    n_clusters: int = DEFAULTS.n_clusters,
    subspace_dim: int = DEFAULTS.subspace_dim,
    noise: float = DEFAULTS.noise,
    cluster_spread: float = DEFAULTS.cluster_spread,
    seed: int = DEFAULTS.seed,
    dtype: npt.DTypeLike = np.float32,
) -> np.ndarray:
    """Return ``n`` unit-norm base vectors of width ``dim`` (C-contiguous, ``dtype``).

    Peak memory is the output plus one block (~``_BLOCK * dim * 8`` bytes), so 1M x 384
    float32 needs ~1.5 GB plus ~50 MB.
    """
    return _generate(
        n,
        dim,
        stream=1,
        n_clusters=n_clusters,
        subspace_dim=subspace_dim,
        noise=noise,
        cluster_spread=cluster_spread,
        seed=seed,
        dtype=dtype,
    )


def queries(
    n: int,
    dim: int,
    *,
    n_clusters: int = DEFAULTS.n_clusters,
    subspace_dim: int = DEFAULTS.subspace_dim,
    noise: float = DEFAULTS.noise,
    cluster_spread: float = DEFAULTS.cluster_spread,
    seed: int = DEFAULTS.seed,
    dtype: npt.DTypeLike = np.float32,
) -> np.ndarray:
    """Return ``n`` query vectors from the same distribution as ``clustered_vectors`` with
    the same parameters, drawn from an independent stream (never copies of base rows)."""
    return _generate(
        n,
        dim,
        stream=2,
        n_clusters=n_clusters,
        subspace_dim=subspace_dim,
        noise=noise,
        cluster_spread=cluster_spread,
        seed=seed,
        dtype=dtype,
    )
