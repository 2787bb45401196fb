"""Synthetic SpLiCE problems shared by tests/test_splice.py and benchmarks/bench_splice.py.

* ``random_dictionary``: i.i.d. Gaussian raw concept embeddings (incoherent after centring).
* ``coherent_dictionary``: CLIP-like raw text embeddings: a strong shared component (raw pairwise
  cosine ~0.6, like CLIP's text cone), low-rank structure with a decaying spectrum, clusters of
  near-synonyms and noise. After SpLiCE's centring the rows stay highly correlated (pairwise cosine
  std ~0.2, near-synonyms above 0.8), which is what makes the Lasso hard.
* ``clip_like_images``: raw image embeddings made of a few concepts plus noise, around an image mean
  of norm ~0.56 (the authors' MSCOCO mean for ViT-B-32 has that norm).
* ``planted_images``: raw embeddings whose centred version is exactly ``normalize(D^T w)`` for a
  given non-negative ``w``.
"""
from __future__ import annotations

import numpy as np


def _unit(a, axis=-1):
    return a / np.linalg.norm(a, axis=axis, keepdims=True)


def random_dictionary(c: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((c, d)) * 3.0).astype(np.float32)


def coherent_dictionary(c: int, d: int, *, rank: int = 32, shared: float = 2.5, cluster: float = 0.6,
                        noise: float = 0.35, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u0 = _unit(rng.standard_normal(d))
    basis = np.linalg.qr(rng.standard_normal((d, min(rank, d))))[0]
    spectrum = 1.0 / np.sqrt(1.0 + np.arange(basis.shape[1]))
    E = shared * u0 + (rng.standard_normal((c, basis.shape[1])) * spectrum) @ basis.T
    n_clusters = max(1, c // 8)
    E += cluster * rng.standard_normal((n_clusters, d))[rng.integers(0, n_clusters, c)] / np.sqrt(d)
    E += noise * rng.standard_normal((c, d)) / np.sqrt(d)
    return (E * 7.0).astype(np.float32)


def image_mean(d: int, norm: float = 0.56, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (_unit(rng.standard_normal(d)) * norm).astype(np.float32)


def clip_like_images(D: np.ndarray, n: int, mean: np.ndarray, *, k: int = 8, noise: float = 0.9,
                     seed: int = 2) -> np.ndarray:
    """Raw embeddings: ``normalize(mean + 0.8 * normalize(sum of k concepts + noise))`` times a random scale.

    ``D`` is the prepared (centred, normalised) dictionary."""
    rng = np.random.default_rng(seed)
    c, d = D.shape
    W = np.zeros((n, c))
    for i in range(n):
        W[i, rng.choice(c, min(k, c), replace=False)] = rng.uniform(0.2, 1.0, min(k, c))
    S = _unit(W @ D.astype(np.float64)) + noise * _unit(rng.standard_normal((n, d)))
    Z = _unit(mean.astype(np.float64) + 0.8 * _unit(S))
    return (Z * rng.uniform(5, 15, (n, 1))).astype(np.float32)


def planted_images(D: np.ndarray, W: np.ndarray, mean: np.ndarray, scale: float = 3.0) -> np.ndarray:
    """Raw embeddings ``x`` with ``normalize(normalize(x) - mean) == normalize(W @ D)`` exactly."""
    target = _unit(np.asarray(W, np.float64) @ D.astype(np.float64))
    m = mean.astype(np.float64)
    b = target @ m
    t = -b + np.sqrt(b * b + 1.0 - m @ m)  # ||m + t * target|| = 1
    return ((m + t[:, None] * target) * scale).astype(np.float32)
