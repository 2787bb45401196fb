"""What a divergence would be with no drift at all, so a reader can tell drift from small windows.

The Jensen-Shannon divergence of a window's concept distribution from the reference is never zero:
with few images per window, sampling alone makes it large (about 0.5 weekly on data without drift).
``js_null`` simulates windows of the same sizes drawn from the pooled data (each concept's summed weight
~ Normal(n * mean, n * variance), clipped at zero, concepts independent) and takes the median divergence;
``js`` well above ``js_null`` is drift, ``js`` near it is what window size alone gives."""
from __future__ import annotations

import numpy as np

from .statistics import js_divergence


def js_null(n: np.ndarray, weight_sum: np.ndarray, present: np.ndarray, weight_sq: np.ndarray | None, ref: int,
            reps: int = 20, seed: int = 0) -> np.ndarray:
    """Median no-drift divergence per window (same window sizes, pooled per-image weight distribution)."""
    n = np.asarray(n, float)
    N = max(float(n.sum()), 1.0)
    tot = weight_sum.sum(axis=0)
    mean = tot / N
    if weight_sq is not None:
        var = np.maximum(weight_sq.sum(axis=0) / N - mean ** 2, 0.0)
    else:  # weight when present ~ its mean (spread ignored): a lower bound on the variance
        p = present.sum(axis=0) / N
        mu = np.where(p > 0, mean / np.maximum(p, 1e-12), 0.0)
        var = mu ** 2 * p * (1 - p)
    keep = np.flatnonzero(tot > 0)
    mean, sd = mean[keep], np.sqrt(var[keep])
    rng = np.random.default_rng(seed)
    out = np.zeros((reps, len(n)))
    for k in range(reps):
        sim = np.maximum(rng.normal(n[:, None] * mean[None, :], np.sqrt(n)[:, None] * sd[None, :]), 0.0)
        ref_sim = np.maximum(rng.normal(n[ref] * mean, np.sqrt(n[ref]) * sd), 0.0)
        out[k] = js_divergence(sim, ref_sim[None, :], axis=1)
    return np.median(out, axis=0)


def by_change(present: np.ndarray, n: np.ndarray, qvals: np.ndarray, ref: int, tested: np.ndarray,
              top: int) -> list[int]:
    """The ``top`` tested concepts that changed most: smallest q-value against the reference in any
    window first, then largest absolute prevalence change (what a reader of a drift report wants first)."""
    if not len(tested) or top <= 0:
        return []
    prev = present[:, tested] / np.maximum(n[:, None], 1)
    change = np.abs(prev - prev[ref][None, :]).max(axis=0)
    q = qvals[:, tested].min(axis=0)
    order = np.lexsort((-change, q))
    return [int(tested[i]) for i in order[:top]]


def window_bounds(start, every: str):
    """[start, end) of the window that begins at ``start`` (a date or datetime)."""
    import datetime as dt

    s = start if isinstance(start, dt.datetime) else dt.datetime(start.year, start.month, start.day)
    if every == "day":
        return s, s + dt.timedelta(days=1)
    if every == "week":
        return s, s + dt.timedelta(days=7)
    months = {"month": 1, "quarter": 3, "year": 12}[every]
    m = s.month - 1 + months
    return s, s.replace(year=s.year + m // 12, month=m % 12 + 1)
